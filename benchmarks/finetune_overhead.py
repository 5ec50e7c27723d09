"""Per-step overhead of FineTuningTrainer (layer-wise LR groups + strategy bookkeeping) over ``transformers.Trainer``.

Command (from the repository root, about 2-3 minutes on 2 CPU cores)::

    PYTHONPATH=/work/main python benchmarks/finetune_overhead.py

What it measures: all-MiniLM-L6-v2 with a fresh 10-class head, English Home Assistant intents (the 10 first
intents with the most rows) tokenised to ``max_length=32``, batch 16, on CPU. Two trainers run the same
optimizer (the Trainer's default, fused AdamW), the same data order, the same linear schedule and gradient
clipping:

* plain: ``transformers.Trainer`` (2 param groups: decay / no decay);
* ours: ``FineTuningTrainer`` with ``layerwise_lr_decay=0.8`` (16 param groups: 8 depths x decay / no decay) and
  the ``StrategyCallback`` doing its per-step work. ``--mode unfreeze`` (default): gradual unfreezing with one
  stage per step and every group unfrozen from step 1 on, so the callback recomputes the trainable mask every
  step while the same parameters as in the plain run train. ``--mode surgical``: ``surgical_blocks=['all']``,
  which trains the blocks and the head but not the embeddings; the plain run then freezes the embeddings too,
  so both update the same parameters.

Each step is timed by two TrainerCallbacks, one registered before every callback the trainer adds
(``on_step_begin``) and one after them (``on_step_end``), so the strategy callback's hooks are inside the timed
span; ``step_to_step`` (one ``on_step_begin`` to the next, data loading and logging included) is reported
too. The first ``--warmup`` steps of every run are dropped. The two trainers alternate in ``--rounds`` rounds
(plain, ours, plain, ours, ...; each round builds a fresh copy of the same initial model), and the figure is
the ratio of the medians over all kept steps::

    llrd_step_ratio = median step time (ours) / median step time (plain)      target <= 1.05

Every figure is a ratio measured within one process, because other jobs may share the cores.
The last line of output is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_metatransfer.data import load_ha_intents, minilm_path  # noqa: E402
from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer  # noqa: E402


class StepBegin(TrainerCallback):
    def __init__(self, record: dict) -> None:
        self.record = record

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.record["opt"].append(time.perf_counter() - self.record["opt_begin"])

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.record["begin"] is not None:
            self.record["step_to_step"].append(now - self.record["begin"])
        self.record["begin"] = now


class StepEnd(TrainerCallback):
    def __init__(self, record: dict) -> None:
        self.record = record

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.record["opt_begin"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.record["step"].append(time.perf_counter() - self.record["begin"])


def new_record() -> dict:
    return {"begin": None, "step": [], "step_to_step": [], "opt_begin": None, "opt": []}


def build_data(num_classes: int, max_length: int, tokenizer):
    ds = load_ha_intents(languages=["en"], cap_per_intent=200, slots="fill")
    counts = Counter(ds["label"])
    chosen = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:num_classes])
    remap = {old: new for new, old in enumerate(chosen)}
    ds = ds.filter(lambda row: row["label"] in remap)
    ds = ds.map(lambda row: {"labels": remap[row["label"]]}, remove_columns=["label", "intent", "lang"])
    ds = ds.map(
        lambda batch: tokenizer(batch["text"], truncation=True, padding="max_length", max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    return ds


def common_kwargs(args, out_dir: str) -> dict:
    return dict(
        output_dir=out_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-5,
        lr_scheduler_type="linear",
        warmup_steps=0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )


def run_plain(base, data, args, out_dir: str) -> dict:
    model = copy.deepcopy(base)
    model.accepts_loss_kwargs = False  # as FineTuningTrainer does (pitfalls: gradient doubling)
    if args.mode == "surgical":
        for p in model.bert.embeddings.parameters():
            p.requires_grad_(False)
    record = new_record()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**common_kwargs(args, out_dir)),
        train_dataset=data,
        callbacks=[StepBegin(record)],
    )
    trainer.add_callback(StepEnd(record))
    trainer.train()
    record["groups"] = len(trainer.optimizer.param_groups)
    record["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return record


def run_ours(base, data, args, out_dir: str) -> dict:
    model = copy.deepcopy(base)
    strategy = {"layerwise_lr_decay": args.decay}
    if args.mode == "unfreeze":
        # Stage 0 (step 0) trains the head only; from step 1 on every one of the 8 groups trains.
        strategy.update(gradual_unfreezing=True, unfreeze_interval_steps=1, unfreeze_groups_per_stage=100)
    else:
        strategy.update(surgical_blocks=["all"])
    record = new_record()
    trainer = FineTuningTrainer(
        model=model,
        args=FineTuningConfig(**common_kwargs(args, out_dir), **strategy),
        train_dataset=data,
        callbacks=[StepBegin(record)],  # FineTuningTrainer appends its StrategyCallback after this one
    )
    trainer.add_callback(StepEnd(record))  # after the StrategyCallback
    trainer.train()
    record["groups"] = len(trainer.optimizer.param_groups)
    record["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return record


def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def main(args: argparse.Namespace) -> dict:
    hf_logging.set_verbosity_error()
    logging.getLogger("hf_metatransfer").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup >= args.steps:
        raise SystemExit("--warmup must be smaller than --steps")
    torch.manual_seed(args.seed)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = build_data(args.num_classes, args.max_length, tokenizer)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=args.num_classes)
    print(
        f"all-MiniLM-L6-v2, {args.num_classes}-class head, {len(data)} rows, max_length {args.max_length}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, mode {args.mode}"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per trainer, first {args.warmup} steps of each run dropped"
    )

    keys = ("step", "step_to_step", "opt")
    kept = {name: {k: [] for k in keys} for name in ("plain", "ours")}
    per_round = []
    groups = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for r in range(args.rounds):
            order = ("plain", "ours") if r % 2 == 0 else ("ours", "plain")  # ABBA: no position bias
            medians = {}
            for name in order:
                runner = run_plain if name == "plain" else run_ours
                rec = runner(base, data, args, out_dir)
                for k in keys:
                    # step_to_step has one entry fewer (no interval before the first step).
                    skip = args.warmup if k != "step_to_step" else args.warmup - 1
                    kept[name][k] += rec[k][max(skip, 0) :]
                groups[name] = rec["groups"]
                medians[name] = statistics.median(rec["step"][args.warmup :])
                print(
                    f"round {r}: {name:5s} median step {medians[name] * 1e3:7.1f} ms, optimizer.step "
                    f"{_median_ms(rec['opt'][args.warmup :]):6.1f} ms ({rec['groups']} param groups, "
                    f"{rec['trainable'] / 1e6:.2f}M trainable at the end)"
                )
            per_round.append(medians["ours"] / medians["plain"])

    med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in kept.items()}
    ratio = med["ours"]["step"] / med["plain"]["step"]
    s2s_ratio = med["ours"]["step_to_step"] / med["plain"]["step_to_step"]
    opt_ratio = med["ours"]["opt"] / med["plain"]["opt"]
    spread = statistics.quantiles(per_round, n=4) if len(per_round) >= 2 else [per_round[0]] * 3
    print(
        f"plain Trainer     : median {med['plain']['step'] * 1e3:.1f} ms/step, optimizer.step "
        f"{med['plain']['opt'] * 1e3:.1f} ms ({groups['plain']} param groups)"
    )
    print(
        f"FineTuningTrainer : median {med['ours']['step'] * 1e3:.1f} ms/step, optimizer.step "
        f"{med['ours']['opt'] * 1e3:.1f} ms ({groups['ours']} param groups)"
    )
    print(f"ratio ours/plain  : {ratio:.3f} (target <= 1.05) over {len(kept['ours']['step'])} steps each")
    print(
        f"per-round ratios  : {[round(x, 3) for x in per_round]} (quartiles {[round(x, 3) for x in spread]}: "
        "the spread is the noise of other load on the cores)"
    )
    print(f"step-to-step ratio: {s2s_ratio:.3f} (data loading and every callback included)")
    print(f"optimizer.step ratio: {opt_ratio:.3f} ({groups['ours']} vs {groups['plain']} param groups)")
    result = {
        "llrd_step_ratio": round(ratio, 4),
        "plain_step_s": round(med["plain"]["step"], 5),
        "ours_step_s": round(med["ours"]["step"], 5),
        "steps": len(kept["ours"]["step"]),
        "step_to_step_ratio": round(s2s_ratio, 4),
        "optimizer_step_ratio": round(opt_ratio, 4),
        "per_round_ratios": [round(x, 4) for x in per_round],
        "param_groups": groups,
        "mode": args.mode,
    }
    print(json.dumps(result))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of (plain, ours), alternating order")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="steps dropped at the start of every run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--decay", type=float, default=0.8, help="layerwise_lr_decay of ours")
    parser.add_argument("--mode", choices=("unfreeze", "surgical"), default="unfreeze")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
