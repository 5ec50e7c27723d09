"""Meta-training across processes: tasks/s with 2 processes against 1, on the same episodes, with the LR trajectory
and the final weights compared.

Command (from the repository root; about 5 minutes on 2 idle CPU cores)::

    python benchmarks/meta_scaling.py [--algorithm fomaml] [--steps 8] [--meta-batch 8]

Model: all-MiniLM-L6-v2 (``minilm_path()``) with a fresh 5-way head (seeded). Tasks: 5-way 5-shot 10-query episodes
of the English Home Assistant intents (``ha_intents_tasks(languages=["en"], cap_per_intent=50)``, meta-train
split, ``max_length=32``), ``meta_batch_size`` 8, AdamW at 1e-4 with 2 warmup steps and a cosine decay (a schedule
that a per-process scheduler would visibly run twice as fast), dropout off, eager attention.

The same ``MetaTrainer`` run is launched twice, each in a fresh interpreter with one intra-op thread a process:
``python meta_scaling.py --worker`` (1 process) and ``torchrun --standalone --nproc_per_node 2 ... --worker``
(2 processes, gloo; each adapts to half of every meta-batch, the meta-gradients are all-reduced). A process times
every meta-step; tasks/s is ``meta_batch / median step time`` over the steps after the first (warm-up). The
scaling efficiency is ``(tasks/s with 2) / (tasks/s with 1) / 2``; target >= 0.8 on 2 idle cores.

The summary comes first; the last line is one JSON object with ``scaling_efficiency_2proc``,
``lr_trajectory_equal`` and ``weights_max_abs_diff``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument(
        "--algorithm", default="fomaml", help="Meta-learning algorithm (MetaTrainingConfig.algorithm)."
    )
    p.add_argument("--steps", type=int, default=8, help="Meta-steps of each run (the first is warm-up).")
    p.add_argument("--meta-batch", type=int, default=8, help="Tasks a meta-step, over all processes.")
    p.add_argument("--worker", metavar="OUT_DIR", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One meta-training run (under torchrun or alone); the main process writes timings and LRs to OUT_DIR."""
    import torch

    from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig
    from hf_metatransfer.recipes.finetune import EMBEDDED, ModelArguments
    from hf_metatransfer.recipes.meta_train import EpisodeArguments, setup_episodes

    torch.set_num_threads(1)
    ep = EpisodeArguments(languages=["en"], n_way=5, k_shot=5, q_query=10, cap_per_intent=50, max_length=32)
    setup = setup_episodes(ModelArguments(model_name_or_path=EMBEDDED), ep, seed=0)
    model = setup.load_model(ModelArguments(model_name_or_path=EMBEDDED), ep.n_way, seed=0)
    model.set_attn_implementation("eager")
    config = MetaTrainingConfig(
        output_dir=args.worker, algorithm=args.algorithm, meta_batch_size=args.meta_batch, max_steps=args.steps,
        learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=2, eval_steps=0, save_steps=0,
        logging_steps=1, disable_tqdm=True, overwrite_output_dir=True,
    )  # fmt: skip
    trainer = MetaTrainer(model, config, setup.sampler(ep, "train", 0), setup.collate)
    times = []
    step = trainer.meta_step

    def timed(s: int) -> dict:
        start = time.perf_counter()
        logs = step(s)
        times.append(time.perf_counter() - start)
        return logs

    trainer.meta_step = timed
    state = trainer.train()
    if trainer.accelerator.is_main_process:
        record = {"processes": trainer.accelerator.num_processes, "step_seconds": times,
                  "lrs": [h["lr"] for h in state.log_history], "losses": [h["loss"] for h in state.log_history]}  # fmt: skip
        Path(args.worker, "timing.json").write_text(json.dumps(record))


def launch(out: Path, processes: int, args: argparse.Namespace) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", str(out), "--algorithm", args.algorithm,
              "--steps", str(args.steps), "--meta-batch", str(args.meta_batch)]  # fmt: skip
    prefix = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([*prefix, *script], cwd=ROOT, env=env, check=True)
    return json.loads((out / "timing.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.worker:
        worker(args)
        return {}
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: launch(Path(tmp, f"p{n}"), n, args) for n in (1, 2)}
        one, two = (load_file(Path(tmp, f"p{n}", "model.safetensors")) for n in (1, 2))
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
    tasks_per_s = {n: args.meta_batch / statistics.median(r["step_seconds"][1:]) for n, r in runs.items()}
    efficiency = tasks_per_s[2] / tasks_per_s[1] / 2
    lr_equal = len(runs[1]["lrs"]) == len(runs[2]["lrs"]) and all(
        abs(a - b) <= 1e-12 for a, b in zip(runs[1]["lrs"], runs[2]["lrs"]))  # fmt: skip
    print(f"{args.algorithm}, meta-batch {args.meta_batch}, {args.steps} steps, 1 thread a process")
    for n, r in runs.items():
        print(f"  {n} process(es): {tasks_per_s[n]:.2f} tasks/s (median step {statistics.median(r['step_seconds'][1:]):.2f} s)"
              f", LRs {[f'{x:.2e}' for x in r['lrs']]}")  # fmt: skip
    print(f"  scaling efficiency {efficiency:.2f} (target >= 0.8); LR trajectories equal: {lr_equal}; "
          f"final weights max |diff| {diff:.2e}")  # fmt: skip
    result = {"algorithm": args.algorithm, "meta_batch": args.meta_batch, "steps": args.steps,
              "tasks_per_s_1proc": round(tasks_per_s[1], 3), "tasks_per_s_2proc": round(tasks_per_s[2], 3),
              "scaling_efficiency_2proc": round(efficiency, 3), "lr_trajectory_equal": lr_equal,
              "weights_max_abs_diff": diff, "lrs_1proc": runs[1]["lrs"], "lrs_2proc": runs[2]["lrs"],
              "losses_1proc": runs[1]["losses"], "losses_2proc": runs[2]["losses"]}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
