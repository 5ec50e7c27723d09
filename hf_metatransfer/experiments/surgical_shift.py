"""Surgical fine-tuning by kind of shift (Lee et al. 2022): which block to tune depends on where the shift is.

A source model is fine-tuned on English intents; then, per shift, a few labelled target examples adapt a copy of
it with only one part trainable (the first / middle / last block, the head alone), all of it, or all of it under
Auto-RGN. The shifts: **input-level** (the same English intents with character noise), **feature-level** (the
same intents in another language) and **output-level** (clean English with the labels permuted). Lee et al.
find the first blocks best for input-level shifts, middle ones for feature-level, and the last layer for
output-level shifts; Auto-RGN should pick the right place by itself.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers import PrinterCallback

from ..finetune import FineTuningConfig, FineTuningTrainer
from ..hub.plots import figure
from ..layers import build_layer_map
from .common import markdown_table, mean_ci, paired, pct

SHIFTS = ("input", "feature", "output")
CHOICES = ("none", "first", "middle", "last", "head", "all", "auto-rgn")
BLOCK_CHOICES = ("first", "middle", "last")


@dataclass
class SurgicalArguments:
    """The surgical-shift experiment: data per shift, the source model and the target fine-tuning."""

    shift_language: str = field(default="de", metadata={"help": "Language of the feature-level shift."})
    noise_rate: float = field(
        default=0.15, metadata={"help": "Characters corrupted, input-level shift (0-1)."}
    )
    choices: list[str] = field(
        default_factory=lambda: list(CHOICES), metadata={"help": f"Of {list(CHOICES)}."}
    )
    source_per_class: int = field(
        default=40, metadata={"help": "English rows a class to train the source model."}
    )
    target_per_class: int = field(
        default=16, metadata={"help": "Labelled target rows a class for adaptation."}
    )
    shift_test_per_class: int = field(default=20, metadata={"help": "Target test rows a class."})
    shift_max_classes: int = field(default=12, metadata={"help": "The this many largest classes (0: all)."})
    source_steps: int = field(
        default=60, metadata={"help": "AdamW steps of the source fine-tuning (all weights)."}
    )
    target_steps: int = field(default=30, metadata={"help": "AdamW steps of each target adaptation."})
    shift_batch_size: int = field(default=16, metadata={"help": "Batch size of source and target training."})
    # Large for 30 steps: at 1e-4 / 1e-3 the head alone cannot be rewritten into a label permutation in time.
    shift_learning_rate: float = field(default=5e-4, metadata={"help": "LR of the trainable blocks."})
    shift_head_learning_rate: float = field(default=1e-2, metadata={"help": "LR of the head when it trains."})

    def __post_init__(self) -> None:
        unknown = [c for c in self.choices if c not in CHOICES]
        if unknown or not self.choices:
            raise ValueError(f"Unknown choices {unknown} (or none): use any of {list(CHOICES)}.")
        if not 0 <= self.noise_rate <= 1:
            raise ValueError(
                f"noise_rate={self.noise_rate} is a fraction of characters: use a value in [0, 1]."
            )


def char_noise(text: str, rate: float, rng: random.Random) -> str:
    """Each letter, with probability ``rate``, is substituted, deleted, or swapped with the next character."""
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            kind = rng.randrange(3)
            if kind == 0:
                out.append(rng.choice("abcdefghijklmnopqrstuvwxyz"))
            elif kind == 2 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
        else:
            out.append(c)
        i += 1
    return "".join(out)


def derangement(n: int, rng: random.Random) -> list[int]:
    """A permutation of ``range(n)`` with no fixed point: every class gets another class's label."""
    while True:
        perm = rng.sample(range(n), n)
        if all(p != i for i, p in enumerate(perm)):
            return perm


def select_classes(data: datasets.Dataset, args: SurgicalArguments, source: str) -> list[int]:
    """Labels with enough source rows (source + target + test) and enough shift-language rows (target + test)."""
    need_src = args.source_per_class + args.target_per_class + args.shift_test_per_class
    need_tgt = args.target_per_class + args.shift_test_per_class
    labels, langs = np.asarray(data["label"]), np.asarray(data["lang"])
    for lang in (source, args.shift_language):
        if lang not in set(langs.tolist()):
            raise ValueError(
                f"Language {lang!r} is not in the data ({sorted(set(langs.tolist()))}): load it."
            )
    src = np.bincount(labels[langs == source], minlength=labels.max() + 1)
    tgt = np.bincount(labels[langs == args.shift_language], minlength=labels.max() + 1)
    ok = [c for c in np.argsort(-src, kind="stable") if src[c] >= need_src and tgt[c] >= need_tgt]
    ok = ok[: args.shift_max_classes or None]
    if len(ok) < 2:
        raise ValueError(
            f"Only {len(ok)} classes have {need_src} {source!r} rows and {need_tgt} {args.shift_language!r} rows: "
            "lower source_per_class / target_per_class / shift_test_per_class, or load more rows a class."
        )
    return sorted(int(c) for c in ok)


def shift_splits(data: datasets.Dataset, classes: list[int], args: SurgicalArguments, source: str, seed: int
                 ) -> dict[str, tuple[list[str], list[int]]]:  # fmt: skip
    """Texts and labels (0..C-1) of ``source`` training, its clean test and, per shift, target training and test."""
    rng = random.Random(seed)
    new = {c: i for i, c in enumerate(classes)}
    by: dict[tuple[str, int], list[str]] = {}
    for text, label, lang in zip(data["text"], data["label"], data["lang"]):
        if label in new and lang in (source, args.shift_language):
            by.setdefault((lang, label), []).append(text)
    s, t, q = args.source_per_class, args.target_per_class, args.shift_test_per_class
    parts: dict[str, tuple[list[str], list[int]]] = {}

    def add(name: str, lang: str, start: int, count: int) -> None:
        texts, labels = parts.setdefault(name, ([], []))
        for c in classes:
            rows = by[(lang, c)]
            texts += rows[start : start + count]
            labels += [new[c]] * len(rows[start : start + count])

    for c in classes:
        rng.shuffle(by[(source, c)])
        rng.shuffle(by[(args.shift_language, c)])
    add("source", source, 0, s)
    for split, start, count in (("train", s, t), ("test", s + t, q)):
        add(f"clean/{split}", source, start, count)
        add(f"feature/{split}", args.shift_language, start - s, count)
    perm = derangement(len(classes), rng)
    for split in ("train", "test"):
        texts, labels = parts[f"clean/{split}"] if split == "test" else parts.pop(f"clean/{split}")
        parts[f"input/{split}"] = ([char_noise(x, args.noise_rate, rng) for x in texts], labels)
        parts[f"output/{split}"] = (texts, [perm[y] for y in labels])
    return parts


def trainer_for(model: nn.Module, train: datasets.Dataset, choice: str, steps: int, args: SurgicalArguments,
                seed: int, tokenizer: Any, out: str) -> FineTuningTrainer:  # fmt: skip
    """A FineTuningTrainer whose trainable part is ``choice`` (a block, the head, everything, or Auto-RGN)."""
    strategy: dict[str, Any] = {}
    if choice in BLOCK_CHOICES:
        strategy = {"surgical_blocks": [choice], "surgical_train_head": False}
    elif choice == "head":
        strategy = {"surgical_blocks": [], "surgical_train_head": True}
    elif choice == "auto-rgn":
        strategy = {"auto_rgn": True, "auto_rgn_interval_steps": 1}
    config = FineTuningConfig(
        output_dir=out, max_steps=steps, learning_rate=args.shift_learning_rate,
        head_learning_rate=args.shift_head_learning_rate, per_device_train_batch_size=args.shift_batch_size,
        per_device_eval_batch_size=128, warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="linear", seed=seed,
        data_seed=seed, save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, **strategy,
    )  # fmt: skip
    trainer = FineTuningTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    return trainer


def accuracy(trainer: FineTuningTrainer, test: datasets.Dataset) -> float:
    logits = trainer.predict(test).predictions
    return float((np.asarray(logits).argmax(-1) == np.asarray(test["labels"])).mean())


def changed_depths(model: nn.Module, before: dict[str, torch.Tensor]) -> list[int]:
    """Depths of the layer map (0 embeddings, blocks, top = head) with any weight not bit-identical to ``before``."""
    params = dict(model.named_parameters())
    return sorted(g.depth for g in build_layer_map(model)
                  if any(not torch.equal(params[n].detach(), before[n]) for n in g.param_names))  # fmt: skip


def rgn_profile(trainer: FineTuningTrainer) -> dict[int, float]:
    """Auto-RGN's last per-tensor LR weights, averaged per depth: where it chose to train."""
    scales = trainer.phase_scheduler.scales
    depth_of = {n: g.depth for g in trainer.layer_map for n in g.param_names}
    per: dict[int, list[float]] = {}
    for group, scale in zip(trainer.optimizer.param_groups, scales):
        for name in group["param_names"]:
            per.setdefault(depth_of[name], []).append(float(scale))
    return {d: float(np.mean(v)) for d, v in sorted(per.items())}


def run_surgical_shift(
    model_init: Callable[[int], nn.Module],
    data: datasets.Dataset,
    tokenizer: Any,
    args: SurgicalArguments,
    *,
    seeds: list[int],
    source_language: str = "en",
    max_length: int = 32,
) -> dict[str, Any]:
    """Target accuracy of every tuning choice under every shift, per seed, from one source model per seed.

    ``data`` has ``text``, integer ``label`` and ``lang`` columns. Besides accuracies, each run records which
    depths of the layer map changed (so a surgical run is checked to leave the rest bit-identical), and Auto-RGN
    runs its per-depth weights.
    """
    start = time.perf_counter()
    classes = select_classes(data, args, source_language)

    def encode(texts: list[str], labels: list[int]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({**tokenizer(texts, truncation=True, max_length=max_length),
                                           "labels": labels})  # fmt: skip

    per_seed = []
    for seed in seeds:
        parts = {k: encode(*v) for k, v in shift_splits(data, classes, args, source_language, seed).items()}
        torch.manual_seed(seed)
        source = model_init(len(classes))
        with tempfile.TemporaryDirectory() as out:
            trainer = trainer_for(
                source, parts["source"], "all", args.source_steps, args, seed, tokenizer, out
            )
            trainer.train()
            state = {n: t.detach().clone() for n, t in source.state_dict().items()}
            source_accuracy = accuracy(trainer, parts["clean/test"])  # in distribution, before any shift
            runs = []
            for shift in SHIFTS:
                test = parts[f"{shift}/test"]
                for choice in args.choices:
                    if choice == "none":  # the source model as it is
                        runs.append({"shift": shift, "choice": choice, "accuracy": accuracy(trainer, test),
                                     "changed_depths": []})  # fmt: skip
                        continue
                    model = model_init(len(classes))
                    model.load_state_dict(state)
                    tuner = trainer_for(model, parts[f"{shift}/train"], choice, args.target_steps, args, seed,
                                        tokenizer, out)  # fmt: skip
                    tuner.train()
                    run = {"shift": shift, "choice": choice, "accuracy": accuracy(tuner, test),
                           "changed_depths": changed_depths(model, state)}  # fmt: skip
                    if choice == "auto-rgn":
                        run["rgn_by_depth"] = rgn_profile(tuner)
                    runs.append(run)
        per_seed.append({"seed": seed, "source_accuracy": source_accuracy, "runs": runs})
    rows = summarise(per_seed, args.choices)
    source_mean = mean_ci([s["source_accuracy"] for s in per_seed])
    return {"num_classes": len(classes), "num_blocks": build_layer_map(source).num_blocks, "seeds": list(seeds),
            "source_accuracy": source_mean[0], "source_ci95": source_mean[1], "rows": rows, "per_seed": per_seed,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def summarise(per_seed: list[dict[str, Any]], choices: list[str]) -> list[dict[str, Any]]:
    """Mean accuracy and CI over seeds per (shift, choice), and each choice minus full fine-tuning (paired)."""
    rows = []
    for shift in SHIFTS:
        acc = {c: [r["accuracy"] for s in per_seed for r in s["runs"] if r["shift"] == shift and r["choice"] == c]
               for c in choices}  # fmt: skip
        for choice in choices:
            mean, ci = mean_ci(acc[choice])
            row = {"shift": shift, "choice": choice, "accuracy": mean, "ci95": ci}
            if "all" in acc and choice != "all":
                row["minus_all"], row["minus_all_ci95"] = paired(acc[choice], acc["all"])
            rows.append(row)
    return rows


def auto_rgn_choice(result: dict[str, Any]) -> dict[str, int | None]:
    """Per shift, the block (0-based) to which Auto-RGN gave the largest mean LR weight over seeds."""
    out: dict[str, int | None] = {}
    for shift in SHIFTS:
        profiles = [r["rgn_by_depth"] for s in result["per_seed"] for r in s["runs"]
                    if r["shift"] == shift and "rgn_by_depth" in r]  # fmt: skip
        blocks = range(1, result["num_blocks"] + 1)  # depth 0 is the embeddings, the top depth the head
        means = {
            d: np.mean([p[d] for p in profiles if d in p]) for d in blocks if any(d in p for p in profiles)
        }
        out[shift] = max(means, key=means.get) - 1 if means else None
    return out


def surgical_table(result: dict[str, Any]) -> str:
    """Accuracy % per tuning choice (rows) and shift (columns); the best choice per shift is starred."""
    by = {(r["shift"], r["choice"]): r for r in result["rows"]}
    choices = list(dict.fromkeys(r["choice"] for r in result["rows"]))
    best = {s: max(choices, key=lambda c: by[(s, c)]["accuracy"]) for s in SHIFTS}
    body = [[c] + [pct((by[(s, c)]["accuracy"], by[(s, c)]["ci95"])) + (" *" if best[s] == c else "")
                   for s in SHIFTS] for c in choices]  # fmt: skip
    picks = auto_rgn_choice(result)
    note = ", ".join(f"{s}: block {b}" for s, b in picks.items() if b is not None)
    body.insert(0, ["source model, clean test (no shift)", pct((result["source_accuracy"], result["source_ci95"])),
                    "", ""])  # fmt: skip
    table = markdown_table(["tuned", *(f"{s}-level shift" for s in SHIFTS)], body)
    return table + (
        f"\nAuto-RGN's largest weight ({result['num_blocks']} blocks, 0 = first): {note}" if note else ""
    )


def plot_surgical(result: dict[str, Any], path: str | Path) -> bool:
    """Grouped bars: accuracy per shift for each tuning choice, 95% CI over seeds; False without matplotlib."""
    fig = figure((7, 3.6))
    if fig is None:
        return False
    choices = list(dict.fromkeys(r["choice"] for r in result["rows"]))
    by = {(r["shift"], r["choice"]): r for r in result["rows"]}
    ax = fig.add_subplot()
    width = 0.8 / len(choices)
    for i, choice in enumerate(choices):
        xs = [j + (i - (len(choices) - 1) / 2) * width for j in range(len(SHIFTS))]
        ax.bar(xs, [100 * by[(s, choice)]["accuracy"] for s in SHIFTS], width,
               yerr=[100 * by[(s, choice)]["ci95"] for s in SHIFTS], capsize=2, label=choice)  # fmt: skip
    ax.set_xticks(range(len(SHIFTS)), [f"{s}-level" for s in SHIFTS])
    ax.set_ylabel("target test accuracy %")
    ax.set_ylim(0, 105)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small"
    )  # beside the axes: bars stay visible
    fig.savefig(path)
    return True
