"""Meta-train a tiny BERT for a few steps under any launcher (or alone); each process reports what it saw.

Usage: meta_worker.py OUT_DIR ALGORITHM [options]   (ALGORITHM "protonets-projection": ProtoNets, 8-d projection)

Every process writes ``OUT_DIR/rank-<i>.json``: how many processes it saw, whether it was the main one, the task
ids it was handed and the LR of every step it took, so a test can check that the launcher really sharded the work.
``--kill_at_step S`` makes the process of rank 1 kill itself (SIGKILL) when asked for step S's tasks, in the first
attempt of an elastic launch only: torchrun then restarts the workers, which resume from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig
from tests.meta_fixtures import tiny_bert, token_episodes


class RecordingSampler:
    """The training sampler, noting the task ids this process asks for (and killing it on request)."""

    def __init__(self, sampler, meta_batch_size: int, kill_at_step: int | None) -> None:
        self.sampler, self.meta_batch_size, self.kill_at_step = sampler, meta_batch_size, kill_at_step
        self.task_ids: list[int] = []

    def batch(self, ids):
        ids = list(ids)
        first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
        step = ids[0] // self.meta_batch_size if ids else -1
        if self.kill_at_step is not None and first_attempt and int(os.environ.get("RANK", "0")) == 1:
            if step == self.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
        self.task_ids += ids
        return self.sampler.batch(ids)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("out_dir")
    p.add_argument("algorithm")
    p.add_argument("--lr_scheduler_type", default="constant")
    p.add_argument("--warmup_steps", type=float, default=0)
    p.add_argument("--max_steps", type=int, default=3)
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--kill_at_step", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    train, _, collate = token_episodes()
    projection_dim = 8 if args.algorithm == "protonets-projection" else 0
    # ProtoNets' distances ignore a shift shared by all embeddings (the last LayerNorm's bias): its gradient is
    # float noise, which AdamW normalises into full-LR steps that differ with the order of summation. SGD keeps
    # noise as noise, so 1 and 2 processes compare to fp tolerance.
    optim = "sgd" if args.algorithm.startswith("protonets") else "adamw_torch"
    config = MetaTrainingConfig(
        output_dir=args.out_dir, algorithm=args.algorithm.removesuffix("-projection"), inner_steps=2, inner_lr=0.3,
        meta_batch_size=4, max_steps=args.max_steps, learning_rate=1e-2, optim=optim, eval_steps=0, save_steps=args.save_steps,
        disable_tqdm=True, projection_dim=projection_dim, lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps, logging_steps=1,
    )  # fmt: skip
    sampler = RecordingSampler(train, config.meta_batch_size, args.kill_at_step)
    trainer = MetaTrainer(tiny_bert(), config, sampler, collate)
    state = trainer.train()
    report = {
        "num_processes": trainer.accelerator.num_processes, "process_index": trainer.accelerator.process_index,
        "is_main": trainer.accelerator.is_main_process, "task_ids": sampler.task_ids,
        "lrs": [h["lr"] for h in state.log_history if "lr" in h], "steps": [h["step"] for h in state.log_history],
    }  # fmt: skip
    Path(args.out_dir, f"rank-{trainer.accelerator.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
