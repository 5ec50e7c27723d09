"""Every launcher the README names shards the meta-batch: each rank gets disjoint task ids whose union is the
meta-batch, one rank is the main process, the LR follows one trajectory whatever the number of processes, and the
weights equal one process's. Each run is a subprocess on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests/distributed/meta_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
META_BATCH, LR = 4, 1e-2
SCHEDULE = ["--lr_scheduler_type", "cosine", "--warmup_steps", "2", "--max_steps", "6"]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(cmd: list[str], timeout: int = 300) -> None:
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def reports(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name in x:
        assert torch.allclose(x[name], y[name], atol=1e-5, rtol=1e-4), (name, (x[name] - y[name]).abs().max())


def expected_lrs(kind: str, steps: int = 6, warmup: int = 2) -> list[float]:
    """The LR each step used, from the formulas (transformers' schedules), not from the code under test."""
    lrs = []
    for s in range(steps):
        if s < warmup:
            lrs.append(LR * s / warmup)
            continue
        progress = (s - warmup) / (steps - warmup)
        lrs.append(LR * (0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress))
    return lrs


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """One process, cosine and linear schedules with warmup."""
    out = {}
    for kind in ("cosine", "linear"):
        folder = tmp_path_factory.mktemp(f"one-{kind}")
        run([sys.executable, WORKER, str(folder), "fomaml", *SCHEDULE[:1], kind, *SCHEDULE[2:]])
        out[kind] = folder
    return out


def test_one_process_follows_the_schedule_formula(reference):
    for kind, folder in reference.items():
        (report,) = reports(folder)
        assert report["lrs"] == pytest.approx(expected_lrs(kind), abs=1e-12), kind
        assert report["task_ids"] == list(range(6 * META_BATCH))


def launch_two_nodes(out: Path, args: list[str]) -> None:
    """Two torchrun agents, one process each, meeting through c10d rendezvous on 127.0.0.1 like two hosts."""
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen(
            torchrun(
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "meta-two-hosts",
                WORKER,
                str(out),
                *args,
            ),
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for agent in agents:
        _, err = agent.communicate(timeout=300)
        assert agent.returncode == 0, err[-4000:]


LAUNCHERS = {
    "torchrun": lambda out, args: run(
        torchrun("--standalone", "--nproc_per_node", "2", WORKER, str(out), *args)
    ),
    # the shipped multi-GPU config; on a machine without GPUs it runs CPU processes (gloo)
    "accelerate-launch": lambda out, args: run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            "recipes/accelerate_configs/multi_gpu.yaml",
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--main_process_port",
            free_port(),
            WORKER,
            str(out),
            *args,
        ]
    ),  # fmt: skip
    "torchrun-two-nodes": launch_two_nodes,
    "notebook-launcher": lambda out, args: run(
        [sys.executable, "tests/distributed/notebook_worker.py", str(out), *args]
    ),  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launcher_shards_tasks_and_matches_one_process(tmp_path, reference, launcher):
    LAUNCHERS[launcher](tmp_path, ["fomaml", *SCHEDULE])
    ranks = reports(tmp_path)
    assert [r["process_index"] for r in ranks] == [0, 1]
    assert all(r["num_processes"] == 2 for r in ranks)
    assert sum(r["is_main"] for r in ranks) == 1, "exactly one main process"
    ids = [set(r["task_ids"]) for r in ranks]
    assert not ids[0] & ids[1], "ranks saw the same task"
    assert ids[0] | ids[1] == set(range(6 * META_BATCH)), "the union of the ranks' tasks is the meta-batch"
    for r in ranks:
        assert r["lrs"] == pytest.approx(expected_lrs("cosine"), abs=1e-12)
    assert_same_weights(tmp_path, reference["cosine"])


@pytest.mark.slow
def test_linear_schedule_two_processes_match_one(tmp_path, reference):
    run(torchrun("--standalone", "--nproc_per_node", "2", WORKER, str(tmp_path), "fomaml", "--lr_scheduler_type",
                 "linear", *SCHEDULE[2:]))  # fmt: skip
    for r in reports(tmp_path):
        assert r["lrs"] == pytest.approx(expected_lrs("linear"), abs=1e-12)
    assert_same_weights(tmp_path, reference["linear"])


@pytest.mark.slow
def test_elastic_restart_after_a_killed_worker_ends_with_the_uninterrupted_weights(tmp_path):
    steps = ["--max_steps", "6", "--save_steps", "2", "--lr_scheduler_type", "linear", "--warmup_steps", "2"]
    run([sys.executable, WORKER, str(tmp_path / "uninterrupted"), "fomaml", *steps])
    out = tmp_path / "elastic"
    run(torchrun("--standalone", "--nproc_per_node", "2", "--max-restarts", "1", WORKER, str(out), "fomaml", *steps,
                 "--kill_at_step", "3"))  # fmt: skip
    resumed = reports(out)[1]
    # rank 1's share (odd positions) of steps 2-5 only: the restart resumed from checkpoint-2, not from scratch
    assert resumed["task_ids"] == list(range(2 * META_BATCH + 1, 6 * META_BATCH, 2))
    assert resumed["lrs"] == pytest.approx(expected_lrs("linear"), abs=1e-12)
    assert_same_weights(out, tmp_path / "uninterrupted")


def test_the_shipped_accelerate_configs_load_and_sharding_engines_are_the_ones_meta_training_refuses():
    from accelerate.commands.config.config_args import load_config_from_file

    types = {p.stem: str(load_config_from_file(str(p)).distributed_type).split(".")[-1]
             for p in sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))}  # fmt: skip
    assert types == {"deepspeed_zero2": "DEEPSPEED", "fsdp": "FSDP", "multi_gpu": "MULTI_GPU",
                     "multi_node": "MULTI_GPU"}  # fmt: skip
