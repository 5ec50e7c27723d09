"""Per-step overhead of FineTuningTrainer (layer-wise LR groups + strategy bookkeeping) over ``transformers.Trainer``.

Command (from the repository root; about 2 minutes on 2 idle CPU cores at ~0.27 s a step, 4-5 minutes when other
jobs share the cores)::

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

Each step is timed by two TrainerCallbacks, one registered before the callbacks the trainer adds
(``on_step_begin``) and one after all of them (``on_step_end``), so the StrategyCallback's hooks, the forward,
backward, clipping, ``optimizer.step()`` and the scheduler step are inside the timed span;
``optimizer.step()`` alone is timed too (``on_pre_optimizer_step`` to ``on_optimizer_step``). The first
``--warmup`` steps of every run are dropped.

Interleaving (``--interleave step``, default): each round builds a fresh pair of trainers on copies of the same
initial model and trains them in two threads that take optimizer steps strictly in turn (plain, ours, plain,
ours, ...; a trainer holds the turn from one ``on_step_begin`` to its next, so only one of them runs at a time), so
both see the same outside load step by step; who goes first alternates between rounds (keep ``--rounds`` even).
``--interleave run`` alternates whole runs instead (plain, ours, ours, plain, ...), which is coarser: load from
other processes that changes between runs then lands in the ratio. The figure is
the ratio of the medians over all kept steps::

    llrd_step_ratio = median step time (ours) / median step time (plain)      target <= 1.05

The median of the per-step paired ratios (ours step i / plain step i) is printed as well (``paired_ratio_median``;
the sturdier figure when outside load switches mid-round and the step times become bimodal, which can move one
median and not the other), and the cost of what
only FineTuningTrainer does per step (StrategyCallback hooks, PhasedLR.step) timed alone over 2,000 calls.
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
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import torch  # noqa: E402
from record import write_record  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_metatransfer.data import load_ha_intents, minilm_path  # noqa: E402
from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer  # noqa: E402


class Turnstile:
    """Lets two trainers, each in its own thread, take optimizer steps in turn: A, B, A, B, ...

    A trainer holds the turn from one ``on_step_begin`` to its next one (its step, then the post-step work and the
    next batch's loading), so nothing of one trainer runs while the other's step is timed, and consecutive steps
    of the two see the same outside load. With ``None`` (``--interleave run``) it never blocks.
    """

    def __init__(self, names: tuple[str, str] | None) -> None:
        self.names = names
        self.cond = threading.Condition()
        self.turn = names[0] if names else None
        self.holding: set[str] = set()
        self.done: set[str] = set()

    def _other(self, me: str) -> str:
        return self.names[1] if me == self.names[0] else self.names[0]

    def next_turn(self, me: str) -> None:
        """Hand the turn over if ``me`` holds it, then wait for it (or for the other trainer to finish)."""
        if not self.names:
            return
        with self.cond:
            if me in self.holding:
                self.holding.discard(me)
                self.turn = self._other(me)
                self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == me or self._other(me) in self.done)
            self.holding.add(me)

    def finish(self, me: str) -> None:
        if self.names:
            with self.cond:
                self.holding.discard(me)
                self.done.add(me)
                self.turn = self._other(me)
                self.cond.notify_all()


class StepBegin(TrainerCallback):
    """Registered before the trainer's own callbacks: starts the step's clock."""

    def __init__(self, name: str, record: dict, turnstile: Turnstile) -> None:
        self.name, self.record, self.turnstile = name, record, turnstile

    def on_step_begin(self, args, state, control, **kwargs):
        self.turnstile.next_turn(self.name)
        self.record["begin"] = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.record["opt"].append(time.perf_counter() - self.record["opt_begin"])

    def on_train_end(self, args, state, control, **kwargs):
        self.turnstile.finish(self.name)


class StepEnd(TrainerCallback):
    """Registered after every other callback (the StrategyCallback included): stops the step's clock."""

    def __init__(self, name: str, record: dict, turnstile: Turnstile) -> None:
        self.name, self.record, self.turnstile = name, record, turnstile

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.record["opt_begin"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.record["step"].append(time.perf_counter() - self.record["begin"])


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


def build_trainer(name: str, base, data, args, out_dir: str, record: dict, turnstile: Turnstile) -> Trainer:
    model = copy.deepcopy(base)
    begin, end = StepBegin(name, record, turnstile), StepEnd(name, record, turnstile)
    if name == "plain":
        model.accepts_loss_kwargs = False  # as FineTuningTrainer does (pitfalls: gradient doubling)
        if args.mode == "surgical":  # the same parameters train as under surgical_blocks=["all"]
            for p in model.bert.embeddings.parameters():
                p.requires_grad_(False)
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common_kwargs(args, out_dir)),
            train_dataset=data,
            callbacks=[begin],
        )
    else:
        strategy: dict = {"layerwise_lr_decay": args.decay}
        if args.mode == "unfreeze":
            # Stage 0 (step 0) trains the head only; from step 1 on every one of the 8 groups trains.
            strategy.update(gradual_unfreezing=True, unfreeze_interval_steps=1, unfreeze_groups_per_stage=100)
        else:
            strategy.update(surgical_blocks=["all"])
        trainer = FineTuningTrainer(
            model=model,
            args=FineTuningConfig(**common_kwargs(args, out_dir), **strategy),
            train_dataset=data,
            callbacks=[begin],  # FineTuningTrainer appends its StrategyCallback after this one
        )
    trainer.add_callback(end)  # after every other callback
    trainer.remove_callback(
        PrinterCallback
    )  # the end-of-training metrics line; outside the timed span anyway
    return trainer


def run_round(order: tuple[str, str], base, data, args, out_dir: str) -> dict[str, dict]:
    turnstile = Turnstile(order if args.interleave == "step" else None)
    records = {name: {"begin": None, "step": [], "opt_begin": None, "opt": []} for name in order}
    # Built in the main thread, one after the other (AcceleratorState is a process-wide singleton).
    trainers = {n: build_trainer(n, base, data, args, out_dir, records[n], turnstile) for n in order}
    if args.interleave == "step":
        errors: list[BaseException] = []

        def train(name: str) -> None:
            try:
                trainers[name].train()
            except BaseException as exc:  # surfaced below; never leave the other thread waiting
                errors.append(exc)
                turnstile.finish(name)

        threads = [threading.Thread(target=train, args=(n,)) for n in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    else:
        for name in order:
            trainers[name].train()
    for name, trainer in trainers.items():
        records[name]["groups"] = len(trainer.optimizer.param_groups)
        records[name]["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        records[name]["trainer"] = trainer
    return records


def bookkeeping_us(trainer: Trainer, repeats: int = 2000) -> dict[str, float]:
    """Microseconds per step of what only FineTuningTrainer does: StrategyCallback hooks and PhasedLR.step().

    Called on a trainer that has finished training (its state, optimizer and scheduler are those of the run).
    """
    from hf_metatransfer.finetune.callbacks import StrategyCallback

    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StrategyCallback))
    args, state, control = trainer.args, trainer.state, trainer.control
    start = time.perf_counter()
    for _ in range(repeats):
        callback.on_step_begin(args, state, control)
        callback.on_pre_optimizer_step(args, state, control)
        callback.on_step_end(args, state, control)
    hooks = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        trainer.lr_scheduler.step()
    sched = (time.perf_counter() - start) / repeats
    return {"strategy_callback_us": hooks * 1e6, "scheduler_step_us": sched * 1e6}


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
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, mode {args.mode}, "
        f"interleave {args.interleave}"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per trainer, first {args.warmup} steps of each run dropped"
    )

    kept = {name: {"step": [], "opt": []} for name in ("plain", "ours")}
    paired: list[float] = []
    per_round: list[float] = []
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for r in range(args.rounds):
            order = ("plain", "ours") if r % 2 == 0 else ("ours", "plain")  # who goes first alternates
            records = run_round(order, base, data, args, out_dir)
            for name, rec in records.items():
                kept[name]["step"] += rec["step"][args.warmup :]
                kept[name]["opt"] += rec["opt"][args.warmup :]
                info[name] = {"param_groups": rec["groups"], "trainable": rec["trainable"]}
            p_steps, o_steps = records["plain"]["step"][args.warmup :], records["ours"]["step"][args.warmup :]
            paired += [o / p for o, p in zip(o_steps, p_steps)]
            per_round.append(statistics.median(o_steps) / statistics.median(p_steps))
            print(
                f"round {r}: plain {statistics.median(p_steps) * 1e3:7.1f} ms/step, "
                f"ours {statistics.median(o_steps) * 1e3:7.1f} ms/step, ratio {per_round[-1]:.3f}"
            )

            last = records

    med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in kept.items()}
    book = bookkeeping_us(last["ours"]["trainer"])
    ratio = med["ours"]["step"] / med["plain"]["step"]
    opt_ratio = med["ours"]["opt"] / med["plain"]["opt"]
    paired_median = statistics.median(paired)
    for name, label in (("plain", "plain Trainer    "), ("ours", "FineTuningTrainer")):
        print(
            f"{label}: median {med[name]['step'] * 1e3:.1f} ms/step, optimizer.step {med[name]['opt'] * 1e3:.1f} ms "
            f"({info[name]['param_groups']} param groups, {info[name]['trainable'] / 1e6:.2f}M trainable at the end)"
        )
    print(
        f"ratio of medians ours/plain: {ratio:.3f} (target <= 1.05) over {len(kept['ours']['step'])} steps each"
    )
    print(f"median of paired step ratios: {paired_median:.3f}; per round {[round(x, 3) for x in per_round]}")
    print(
        f"optimizer.step ratio: {opt_ratio:.3f}; StrategyCallback hooks {book['strategy_callback_us']:.1f} us/step, "
        f"PhasedLR.step {book['scheduler_step_us']:.1f} us/step (timed alone, {2000} calls)"
    )
    verdict = "met" if ratio <= 1.05 else "MISSED"
    print(f"target llrd_step_ratio <= 1.05: {verdict}")
    result = {
        "llrd_step_ratio": round(ratio, 4),
        "plain_step_s": round(med["plain"]["step"], 5),
        "ours_step_s": round(med["ours"]["step"], 5),
        "steps": len(kept["ours"]["step"]),
        "paired_ratio_median": round(paired_median, 4),
        "optimizer_step_ratio": round(opt_ratio, 4),
        "strategy_callback_us": round(book["strategy_callback_us"], 1),
        "scheduler_step_us": round(book["scheduler_step_us"], 1),
        "per_round_ratios": [round(x, 4) for x in per_round],
        "param_groups": {k: v["param_groups"] for k, v in info.items()},
        "mode": args.mode,
        "interleave": args.interleave,
    }
    print(json.dumps(result))
    if args.record:
        write_record(args.record, result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds (a fresh pair of trainers each)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="steps dropped at the start of every run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--decay", type=float, default=0.8, help="layerwise_lr_decay of ours")
    parser.add_argument("--mode", choices=("unfreeze", "surgical"), default="unfreeze")
    parser.add_argument(
        "--interleave",
        choices=("step", "run"),
        default="step",
        help="step: the two trainers alternate optimizer steps (lock-step threads); run: whole runs alternate",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="also write the result with its provenance (command, commit, versions, threads, load) to PATH, "
        "e.g. benchmarks/results/finetune_overhead_cpu.json",
    )
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
