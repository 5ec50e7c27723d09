"""Two processes (torchrun, gloo) reach the weights one process reaches on the concatenated batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests/distributed/finetune_worker.py"


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _run([sys.executable, WORKER, str(one), "8"], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*torchrun, WORKER, str(two), "4"], tmp_path)
    a, b = load_file(one), load_file(two)
    init = dict(
        __import__("tests.tiny_models", fromlist=["tiny_model"]).tiny_model("bert").named_parameters()
    )
    moved = [n for n in a if not torch.equal(a[n], init[n].detach())]
    assert len(moved) > len(a) // 2, "training moved the weights"
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5, rtol=1e-4), (name, (a[name] - b[name]).abs().max())
