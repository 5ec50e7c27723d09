"""Pre-trained against from scratch across training-set sizes (the lecture's Figure 5, Howard & Ruder 2018).

The same architecture is fine-tuned the same way from the pre-trained checkpoint and from a random initialisation
of its config, on nested training sets from a handful of examples a class to every available one, and scored on
a fixed held-out test set per seed. The paired difference (scratch minus pre-trained error, same seed, same data)
shows where pre-training helps most and whether it stops helping at the smallest sizes.

With ``inits`` including ``"self-pretrained"`` it is also the self-pre-training experiment (Krishna et al. 2023):
the random initialisation is first pre-trained with masked-LM on the downstream training text alone (no labels,
no test rows), then fine-tuned the same way.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    DataCollatorForLanguageModeling,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from ..finetune import FineTuningConfig, FineTuningTrainer
from ..hub.plots import figure
from .common import markdown_table, mean_ci, paired, pct

INITS = ("pretrained", "scratch", "self-pretrained")
MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class SizesArguments:
    """The pre-trained-vs-scratch experiment: training-set sizes, the test set and the fine-tuning recipe."""

    train_sizes: list[int] = field(
        default_factory=lambda: [1, 4, 16, 64, 0],
        metadata={"help": "Labelled examples a class; 0 means every row of the class outside the test set."},
    )
    test_per_class: int = field(default=20, metadata={"help": "Held-out test rows a class (fixed per seed)."})
    min_rows_per_class: int = field(
        default=84,
        metadata={"help": "Classes with fewer rows are left out (need the largest size + the test rows)."},
    )
    max_classes: int = field(
        default=0, metadata={"help": "Keep only the this many largest classes (0: all)."}
    )
    epochs: float = field(
        default=3.0, metadata={"help": "Epochs of fine-tuning, within [min_steps, step_cap]."}
    )
    min_steps: int = field(default=30, metadata={"help": "Fewest optimizer steps of a run (tiny sets)."})
    step_cap: int = field(default=80, metadata={"help": "Most optimizer steps of a run (the cost bound)."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate of the body, every initialisation."}
    )
    scratch_learning_rate: float | None = field(
        default=None,
        metadata={"help": "A different learning rate for the non-Hub inits (scratch, self-pretrained)."},
    )
    head_learning_rate: float | None = field(
        default=1e-3,
        metadata={"help": "Learning rate of the new head, every initialisation (None: the body's)."},
    )
    inits: list[str] = field(
        default_factory=lambda: ["pretrained", "scratch"],
        metadata={"help": f"Initialisations compared, of {list(INITS)} (self-pretrained: masked-LM on the "
                  "downstream training text first)."},
    )  # fmt: skip
    mlm_steps: int = field(
        default=300, metadata={"help": "Masked-LM steps of self-pre-training (once a seed)."}
    )
    mlm_learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of self-pre-training."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Tokens masked in self-pre-training."})
    warmup: float = field(default=0.1, metadata={"help": "Warmup steps, or a fraction of the steps if < 1."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})

    def __post_init__(self) -> None:
        if not self.train_sizes or any(n < 0 for n in self.train_sizes):
            raise ValueError(
                f"train_sizes={self.train_sizes}: give sizes >= 1 a class (0 for the whole set)."
            )
        largest = max(self.train_sizes)
        if self.min_rows_per_class < largest + self.test_per_class:
            raise ValueError(
                f"min_rows_per_class={self.min_rows_per_class} cannot hold the largest size {largest} plus "
                f"test_per_class={self.test_per_class}: raise it to at least {largest + self.test_per_class}."
            )
        unknown = [i for i in self.inits if i not in INITS]
        if unknown or not self.inits:
            raise ValueError(f"Unknown inits {unknown} (or none): use any of {list(INITS)}.")
        if not 1 <= self.min_steps <= self.step_cap:
            raise ValueError(f"Need 1 <= min_steps ({self.min_steps}) <= step_cap ({self.step_cap}).")


def scratch_like(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture and config as ``model``, every weight freshly initialised (seeded)."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(model.config)


def self_pretrained_like(model: nn.Module, text: datasets.Dataset, tokenizer: Any, args: SizesArguments,
                         seed: int) -> tuple[nn.Module, float]:  # fmt: skip
    """``model``'s architecture, randomly initialised, then masked-LM pre-trained on ``text`` (token ids only).

    Returns the classifier (body from the masked LM, head and pooler fresh) and the mean masked-LM training loss.
    """
    if tokenizer is None or tokenizer.mask_token is None:
        raise ValueError("Self-pre-training masks tokens: pass a tokenizer that has a mask token.")
    torch.manual_seed(seed)
    mlm = AutoModelForMaskedLM.from_config(model.config)
    with tempfile.TemporaryDirectory() as out:
        config = TrainingArguments(
            output_dir=out, max_steps=args.mlm_steps, learning_rate=args.mlm_learning_rate,
            per_device_train_batch_size=args.batch_size, warmup_steps=args.warmup, weight_decay=args.weight_decay,
            lr_scheduler_type="linear", seed=seed, data_seed=seed, save_strategy="no", logging_strategy="no",
            report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        )  # fmt: skip
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability, seed=seed)
        trainer = Trainer(model=mlm, args=config, train_dataset=text, data_collator=collator)
        trainer.remove_callback(PrinterCallback)
        loss = trainer.train().training_loss
    classifier = scratch_like(model, seed)
    # The masked LM's encoder has no pooler: the classifier keeps its fresh one (strict=False).
    classifier.base_model.load_state_dict(mlm.base_model.state_dict(), strict=False)
    return classifier, float(loss)


def select_classes(labels: np.ndarray, args: SizesArguments) -> list[int]:
    """Label ids with at least ``min_rows_per_class`` rows (the ``max_classes`` largest if set), in id order."""
    counts = np.bincount(labels)
    kept = [c for c in np.argsort(-counts, kind="stable") if counts[c] >= args.min_rows_per_class]
    if args.max_classes:
        kept = kept[: args.max_classes]
    if len(kept) < 2:
        raise ValueError(
            f"Only {len(kept)} classes have min_rows_per_class={args.min_rows_per_class} rows (largest class: "
            f"{counts.max()}): lower min_rows_per_class and the largest train size, or load more rows a class."
        )
    return sorted(int(c) for c in kept)


def split_rows(labels: np.ndarray, classes: list[int], args: SizesArguments, seed: int
               ) -> tuple[list[int], list[int], dict[int, list[int]]]:  # fmt: skip
    """The seed's test rows, every other row, and per size the training rows (nested: each extends the smaller)."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    pools = []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(labels == c)).tolist()
        test += rows[: args.test_per_class]
        pools.append(rows[args.test_per_class :])
    train = {n: sorted(r for pool in pools for r in (pool[:n] if n else pool)) for n in args.train_sizes}
    return sorted(test), sorted(r for pool in pools for r in pool), train


def steps_for(num_rows: int, args: SizesArguments) -> int:
    return min(args.step_cap, max(args.min_steps, math.ceil(args.epochs * num_rows / args.batch_size)))


def fine_tune_error(model: nn.Module, train: datasets.Dataset, test: datasets.Dataset, steps: int, lr: float,
                    args: SizesArguments, seed: int, tokenizer: Any | None) -> dict[str, float]:  # fmt: skip
    """Fine-tune ``model`` for ``steps`` AdamW steps and return its test error and training loss."""
    with tempfile.TemporaryDirectory() as out:
        config = FineTuningConfig(
            output_dir=out, max_steps=steps, learning_rate=lr, head_learning_rate=args.head_learning_rate,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128, warmup_steps=args.warmup, weight_decay=args.weight_decay,
            lr_scheduler_type="linear", seed=seed, data_seed=seed, save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = FineTuningTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        loss = trainer.train().training_loss
        logits = trainer.predict(test).predictions
    error = float((np.asarray(logits).argmax(-1) != np.asarray(test["labels"])).mean())
    return {"error": error, "train_loss": float(loss)}


def run_pretrained_vs_scratch(
    model_init: Callable[[int], nn.Module],
    data: datasets.Dataset,
    args: SizesArguments,
    *,
    seeds: list[int],
    label_column: str = "label",
    tokenizer: Any | None = None,
) -> dict[str, Any]:
    """Test error of each of ``args.inits`` (pre-trained, re-initialised, self-pre-trained) per size and seed.

    ``data`` holds token ids (``input_ids``, and ``attention_mask`` if padded by a tokenizer) and an integer
    ``label_column``; ``model_init(num_labels)`` loads the pre-trained classifier. ``tokenizer`` pads batches
    (without one, rows must be of equal length) and masks tokens for self-pre-training. Errors are fractions;
    CIs are Student-t 95% over seeds.
    """
    missing = [c for c in ("input_ids", label_column) if c not in data.column_names]
    if missing:
        raise ValueError(f"data lacks the columns {missing} (it has {data.column_names}): tokenize it first.")
    start = time.perf_counter()
    labels = np.asarray(data[label_column])
    classes = select_classes(labels, args)
    new_label = {c: i for i, c in enumerate(classes)}
    columns = [c for c in MODEL_COLUMNS if c in data.column_names]
    per_seed = []
    for seed in seeds:
        test_rows, pool_rows, train_rows = split_rows(labels, classes, args, seed)

        def subset(rows: list[int]) -> datasets.Dataset:
            part = data.select(rows).select_columns([*columns, label_column])
            return part.map(lambda b: {"labels": [new_label[y] for y in b]}, input_columns=label_column,
                            batched=True, remove_columns=[label_column])  # fmt: skip

        test = subset(test_rows)
        runs, seed_info = [], {}
        self_state = None
        if "self-pretrained" in args.inits:  # once a seed, on the text of every non-test row: no labels
            text = subset(pool_rows).remove_columns("labels")
            model, seed_info["mlm_loss"] = self_pretrained_like(
                model_init(len(classes)), text, tokenizer, args, seed
            )
            self_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        for size, rows in train_rows.items():
            train = subset(rows)
            steps = steps_for(len(train), args)
            for init in args.inits:
                torch.manual_seed(seed)  # the head's initialisation, the same for every init
                model = model_init(len(classes))
                lr = args.learning_rate
                if init != "pretrained":
                    model = scratch_like(model, seed)
                    lr = args.scratch_learning_rate or lr
                if init == "self-pretrained":
                    model.load_state_dict(self_state)
                result = fine_tune_error(model, train, test, steps, lr, args, seed, tokenizer)
                runs.append({"init": init, "size": size, "train_rows": len(train), "steps": steps, **result})
        per_seed.append({"seed": seed, **seed_info, "runs": runs})
    rows, diffs = summarise(per_seed, args.train_sizes, args.inits)
    return {"num_classes": len(classes), "test_rows": len(classes) * args.test_per_class, "seeds": list(seeds),
            "rows": rows, "paired": diffs, "per_seed": per_seed,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def summarise(
    per_seed: list[dict[str, Any]], sizes: list[int], inits: list[str]
) -> tuple[list[dict], list[dict]]:
    """Mean error and CI per (init, size); for every pair of inits, ``b - a`` error paired by seed, per size."""

    def errors(init: str, size: int) -> list[float]:
        return [r["error"] for s in per_seed for r in s["runs"] if r["init"] == init and r["size"] == size]

    def rows_of(size: int) -> float:
        return float(np.mean([r["train_rows"] for s in per_seed for r in s["runs"] if r["size"] == size]))

    rows = []
    for size in sizes:
        for init in inits:
            mean, ci = mean_ci(errors(init, size))
            rows.append({"init": init, "size": size, "train_rows": rows_of(size), "error": mean, "ci95": ci})
    diffs = []
    for a, b in combinations(inits, 2):
        for size in sizes:
            diff, ci = paired(errors(b, size), errors(a, size))
            diffs.append(
                {"pair": f"{b} - {a}", "size": size, "train_rows": rows_of(size), "diff": diff, "ci95": ci}
            )
    return rows, diffs


def sizes_table(result: dict[str, Any]) -> str:
    """Error % by size for each initialisation, then the paired differences (positive: the second is better)."""
    by = {(r["init"], r["size"]): r for r in result["rows"]}
    inits = list(dict.fromkeys(r["init"] for r in result["rows"]))
    sizes = list(dict.fromkeys(r["size"] for r in result["rows"]))
    pairs = list(dict.fromkeys(d["pair"] for d in result["paired"]))
    diff = {(d["pair"], d["size"]): d for d in result["paired"]}
    body = [[size or "all", f"{by[(inits[0], size)]['train_rows']:.0f}"]
            + [pct((by[(i, size)]["error"], by[(i, size)]["ci95"])) for i in inits]
            + [pct((diff[(p, size)]["diff"], diff[(p, size)]["ci95"])) for p in pairs] for size in sizes]  # fmt: skip
    header = [
        "examples a class",
        "train rows",
        *(f"{i} error %" for i in inits),
        *(f"{p} (paired)" for p in pairs),
    ]
    return markdown_table(header, body)


def plot_sizes(result: dict[str, Any], path: str | Path) -> bool:
    """Test error against training rows (log x) for each initialisation, 95% CI bars; False without matplotlib."""
    fig = figure((6, 3.6))
    if fig is None:
        return False
    ax = fig.add_subplot()
    for init in dict.fromkeys(r["init"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["init"] == init), key=lambda r: r["train_rows"])
        ax.errorbar([r["train_rows"] for r in rows], [100 * r["error"] for r in rows],
                    yerr=[100 * r["ci95"] for r in rows], marker="o", capsize=3, label=init)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(f"labelled training examples ({result['num_classes']} classes)")
    ax.set_ylabel("test error %")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path)
    return True
