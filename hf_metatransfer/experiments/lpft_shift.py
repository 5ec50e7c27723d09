"""LP vs FT vs LP-FT in and out of distribution (Kumar et al. 2022), the shift being a change of language.

A classifier is trained on the source language only (LP: a logistic-regression head on frozen features; FT: every
weight from a fresh head; LP-FT: the probe's head, then the same FT) and tested on held-out source rows (ID) and on
the same intents in other languages (OOD). Kumar et al. find FT ahead in distribution but behind out of it, and
LP-FT ahead of both out of distribution: FT from a random head distorts the features the OOD data relies on.
"""

from __future__ import annotations

import logging
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PrinterCallback

from ..finetune import FineTuningConfig, FineTuningTrainer
from ..hub.plots import figure
from ..pooling import MeanPoolBertForSequenceClassification
from .common import markdown_table, mean_ci, paired

METHODS = ("LP", "FT", "LP-FT")
PAIRS = (("LP-FT", "FT"), ("LP", "FT"), ("LP-FT", "LP"))
POOLINGS = ("mean", "pooler")
OOD_SEED = 1234  # the OOD test rows: the same for every seed

logger = logging.getLogger(__name__)


@dataclass
class LpftShiftArguments:
    """The LP / FT / LP-FT experiment: data sizes, the shift's languages and the FT hyperparameters."""

    lpft_shots: int = field(default=16, metadata={"help": "Source-language training rows per intent."})
    id_test: int = field(default=400, metadata={"help": "Held-out source-language test rows (per seed)."})
    ood_langs: list[str] = field(
        default_factory=lambda: ["de", "fr", "es", "ru", "zh-CN"],
        metadata={"help": "Languages of the OOD tests."},
    )
    ood_per_lang: int = field(default=200, metadata={"help": "OOD test rows per language."})
    min_id_test: int = field(
        default=24, metadata={"help": "An intent needs lpft_shots + this many source rows."}
    )
    min_ood_per_intent: int = field(
        default=10, metadata={"help": "... and this many rows in every OOD language."}
    )
    lpft_epochs: float = field(
        default=10.0, metadata={"help": "Epochs of FT (and of the FT phase of LP-FT)."}
    )
    lr: float = field(default=1e-4, metadata={"help": "Learning rate of FT, and of LP-FT's FT phase."})
    lpft_lr: float | None = field(
        default=None, metadata={"help": "A different learning rate for LP-FT's FT phase."}
    )
    lpft_warmup: float = field(default=0.1, metadata={"help": "Warmup: steps, or a fraction of them if < 1."})
    lpft_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of FT and LP-FT."})
    lpft_batch_size: int = field(default=16, metadata={"help": "Training batch size of FT and LP-FT."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the accuracy evaluations."})
    pooling: str = field(
        default="mean",
        metadata={
            "help": "mean: head on mean-pooled states; pooler: AutoModelForSequenceClassification's pooler."
        },
    )
    train_word_embeddings: bool = field(
        default=False,
        metadata={"help": "Train the word embeddings too (frozen by default: slow, no OOD gradient)."},
    )
    text_prefix: str = field(
        default="query: ", metadata={"help": "Prepended to every input (e5's query prefix)."}
    )

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is unknown: use one of {POOLINGS}.")
        if not self.ood_langs:
            raise ValueError("ood_langs is empty: the OOD accuracy needs at least one other language.")


def lpft_model_loader(path: str | Path, pooling: str, revision: str = "main") -> Callable[[int], nn.Module]:
    """``model_init(num_labels)``: mean pooling puts the head where e5 was trained; 'pooler' is the stock model."""
    cls = MeanPoolBertForSequenceClassification if pooling == "mean" else AutoModelForSequenceClassification

    def model_init(num_labels: int) -> nn.Module:
        return cls.from_pretrained(path, revision=revision, num_labels=num_labels)

    return model_init


def round_robin(rows_by_class: dict[int, list[int]], n: int, rng: random.Random) -> list[int]:
    """Up to ``n`` rows, taken one class at a time (shuffled within each class): as balanced as the data allows."""
    queues = {c: rng.sample(rows, len(rows)) for c, rows in rows_by_class.items()}
    out: list[int] = []
    while len(out) < n and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(out) < n:
                out.append(queues[c].pop())
    return out


def rows_by_language(data: datasets.Dataset, args: LpftShiftArguments, source: str
                     ) -> tuple[list[str], dict[str, dict[int, list[int]]]]:  # fmt: skip
    """The kept intent names (label k = names[k]) and, per language, row indices by label."""
    rows: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (lang, intent) in enumerate(zip(data["lang"], data["intent"], strict=True)):
        rows[lang][intent].append(i)
    names = sorted(
        intent
        for intent, idx in rows[source].items()
        if len(idx) >= args.lpft_shots + args.min_id_test
        and all(len(rows[lang].get(intent, ())) >= args.min_ood_per_intent for lang in args.ood_langs)
    )
    if len(names) < 2:
        raise ValueError(
            f"Only {len(names)} intents pass the size filters: lower min_ood_per_intent / min_id_test."
        )
    return names, {
        lang: {k: rows[lang][name] for k, name in enumerate(names)} for lang in [source, *args.ood_langs]
    }


@torch.no_grad()
def accuracy(
    model: nn.Module, data: datasets.Dataset, collator: DataCollatorWithPadding, batch_size: int
) -> float:
    """Accuracy in percent; rows sorted by length so that batches carry little padding."""
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    correct = 0
    for start in range(0, len(order), batch_size):
        batch = collator([data[i] for i in order[start : start + batch_size]])
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return 100.0 * correct / len(data)


def evaluate_all(model: nn.Module, id_test: datasets.Dataset, ood_tests: dict[str, datasets.Dataset],
                 collator: DataCollatorWithPadding, batch_size: int) -> dict[str, Any]:  # fmt: skip
    """ID accuracy, OOD accuracy (the mean over languages) and OOD accuracy by language."""
    by_lang = {lang: accuracy(model, data, collator, batch_size) for lang, data in ood_tests.items()}
    return {"id": accuracy(model, id_test, collator, batch_size), "ood": statistics.fmean(by_lang.values()),
            "ood_by_lang": by_lang}  # fmt: skip


def trainer_config(args: LpftShiftArguments, seed: int, out: str, lp_ft: bool) -> FineTuningConfig:
    """FT and LP-FT share every hyperparameter but the probe (and ``lpft_lr`` when set)."""
    return FineTuningConfig(
        output_dir=out, lp_ft=lp_ft, linear_probe="logistic",
        learning_rate=args.lpft_lr if lp_ft and args.lpft_lr is not None else args.lr,
        num_train_epochs=args.lpft_epochs, per_device_train_batch_size=args.lpft_batch_size,
        per_device_eval_batch_size=args.eval_batch_size, warmup_steps=args.lpft_warmup,
        weight_decay=args.lpft_weight_decay, lr_scheduler_type="linear", seed=seed, data_seed=seed,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0,
    )  # fmt: skip


def fmt(r: dict[str, Any]) -> str:
    """One progress line: ID, OOD, training accuracy and OOD by language."""
    langs = " ".join(f"{lang} {acc:5.1f}" for lang, acc in r["ood_by_lang"].items())
    return f"ID {r['id']:5.1f}  OOD {r['ood']:5.1f}  train {r['train']:5.1f}  [{langs}]"


def run_seed(model_init: Callable[[int], nn.Module], args: LpftShiftArguments, seed: int,
             encode: Callable[[list[int], dict[int, list[int]]], datasets.Dataset], source_rows: dict[int, list[int]],
             ood_tests: dict[str, datasets.Dataset], collator: DataCollatorWithPadding, tokenizer: Any
             ) -> dict[str, Any]:  # fmt: skip
    """LP, LP-FT and FT on one seed's training sample and ID test (the same rows for all three methods)."""
    rng = random.Random(seed)
    train_idx: list[int] = []
    rest: dict[int, list[int]] = {}
    for c, idx in source_rows.items():
        shuffled = rng.sample(idx, len(idx))
        train_idx += shuffled[: args.lpft_shots]
        rest[c] = shuffled[args.lpft_shots :]
    id_idx = round_robin(rest, args.id_test, rng)
    train, id_test = encode(train_idx, source_rows), encode(id_idx, source_rows)
    result: dict[str, Any] = {"seed": seed, "train_rows": train_idx, "id_rows": id_idx}
    with tempfile.TemporaryDirectory() as out:
        # LP-FT first: its probe, evaluated before FT starts, is the LP result.
        for method in ("LP-FT", "FT"):
            start = time.perf_counter()
            torch.manual_seed(
                seed
            )  # the head's initialisation (the same for FT and for LP-FT before its probe)
            model = model_init(len(source_rows))
            if not args.train_word_embeddings:
                model.get_input_embeddings().weight.requires_grad_(False)
            result["frozen"] = [n for n, p in model.named_parameters() if not p.requires_grad]
            trainer = FineTuningTrainer(
                model=model,
                args=trainer_config(args, seed, out, method == "LP-FT"),
                train_dataset=train,
                data_collator=collator,
                processing_class=tokenizer,
            )
            trainer.remove_callback(PrinterCallback)  # keeps stdout to the table and the JSON line
            if method == "LP-FT":
                probe = trainer.run_linear_probe()
                result["LP"] = evaluate_all(model, id_test, ood_tests, collator, args.eval_batch_size)
                result["LP"].update(train=100 * probe["train_accuracy"], C=probe["C"], steps=trainer.state.global_step,
                                    seconds=time.perf_counter() - start)  # fmt: skip
                logger.info("seed %d LP     %s  (C=%.3g)", seed, fmt(result["LP"]), probe["C"])
            train_out = trainer.train()
            result[method] = evaluate_all(model, id_test, ood_tests, collator, args.eval_batch_size)
            result[method].update(train=accuracy(model, train, collator, args.eval_batch_size),
                                  train_loss=train_out.training_loss, steps=trainer.state.global_step,
                                  seconds=time.perf_counter() - start)  # fmt: skip
            logger.info(
                "seed %d %-6s %s  loss %.3f", seed, method, fmt(result[method]), train_out.training_loss
            )
            del trainer, model
    return result


def summarise(per_seed: list[dict[str, Any]], ood_langs: list[str]) -> dict[str, Any]:
    """Per method: mean and 95% CI over seeds; per pair of methods: the paired (same seed) differences."""
    summary: dict[str, Any] = {}
    for method in METHODS:
        rows = [r[method] for r in per_seed]
        id_mean, id_ci = mean_ci([r["id"] for r in rows])
        ood_mean, ood_ci = mean_ci([r["ood"] for r in rows])
        summary[method] = {
            "id": round(id_mean, 2), "ood": round(ood_mean, 2), "id_ci": round(id_ci, 2), "ood_ci": round(ood_ci, 2),
            "ood_by_lang": {lang: round(statistics.fmean(r["ood_by_lang"][lang] for r in rows), 2)
                            for lang in ood_langs},
            "train": round(statistics.fmean(r["train"] for r in rows), 2),
        }  # fmt: skip
    summary["paired"] = {}
    for a, b in PAIRS:
        d_id = paired([r[a]["id"] for r in per_seed], [r[b]["id"] for r in per_seed])
        d_ood = paired([r[a]["ood"] for r in per_seed], [r[b]["ood"] for r in per_seed])
        summary["paired"][f"{a} - {b}"] = {"id": round(d_id[0], 2), "ood": round(d_ood[0], 2),
                                           "id_ci": round(d_id[1], 2), "ood_ci": round(d_ood[1], 2)}  # fmt: skip
    return summary


def run_lpft_shift(
    model_init: Callable[[int], nn.Module],
    data: datasets.Dataset,
    tokenizer: Any,
    args: LpftShiftArguments,
    *,
    seeds: list[int],
    source_language: str = "en",
    max_length: int = 32,
    encoder: str = "",
) -> dict[str, Any]:
    """LP, FT and LP-FT per seed, trained on ``source_language`` and tested on it (ID) and ``args.ood_langs``.

    ``data`` has ``text``, ``intent`` and ``lang`` columns (as :func:`hf_metatransfer.data.load_ha_intents`).
    ``model_init(num_labels)`` builds a fresh classifier; it runs after ``torch.manual_seed(seed)``. Accuracies are
    in percent; ``per_seed`` keeps every seed's runs and the rows of ``data`` they trained and tested on.
    """
    start = time.perf_counter()
    names, by_lang = rows_by_language(data, args, source_language)
    collator = DataCollatorWithPadding(tokenizer)

    def encode(indices: list[int], by_class: dict[int, list[int]]) -> datasets.Dataset:
        label_of = {i: c for c, rows in by_class.items() for i in rows}
        enc = tokenizer([args.text_prefix + t for t in data.select(indices)["text"]], truncation=True,
                        max_length=max_length)  # fmt: skip
        return datasets.Dataset.from_dict({**enc, "labels": [label_of[i] for i in indices]})

    rng = random.Random(OOD_SEED)
    ood_rows = {lang: round_robin(by_lang[lang], args.ood_per_lang, rng) for lang in args.ood_langs}
    ood_tests = {lang: encode(idx, by_lang[lang]) for lang, idx in ood_rows.items()}
    logger.info(
        "%d intents; OOD rows %s", len(names), ", ".join(f"{k} {len(v)}" for k, v in ood_rows.items())
    )
    per_seed = [{**run_seed(model_init, args, seed, encode, by_lang[source_language], ood_tests, collator, tokenizer),
                 "ood_rows": ood_rows} for seed in seeds]  # fmt: skip
    return {
        **summarise(per_seed, args.ood_langs),
        "seeds": list(seeds), "encoder": encoder, "classes": len(names), "intents": names,
        "train_examples": len(names) * args.lpft_shots, "id_test": args.id_test, "ood_langs": list(args.ood_langs),
        "ood_per_lang": args.ood_per_lang, "frozen": per_seed[0]["frozen"], "epochs": args.lpft_epochs,
        "lr": args.lr, "lpft_lr": args.lpft_lr if args.lpft_lr is not None else args.lr, "pooling": args.pooling,
        "per_seed": per_seed, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def lpft_shift_table(result: dict[str, Any]) -> str:
    """Accuracy % per method (ID, OOD, train, OOD by language), then the paired differences and Kumar et al."""
    langs = result["ood_langs"]
    rows = []
    for method in METHODS:
        r = result[method]
        rows.append([method, f"{r['id']:.1f} +- {r['id_ci']:.1f}", f"{r['ood']:.1f} +- {r['ood_ci']:.1f}",
                     f"{r['train']:.1f}", *(f"{r['ood_by_lang'][lang]:.1f}" for lang in langs)])  # fmt: skip
    words = "word embeddings FROZEN" if result["frozen"] else "word embeddings TRAINED"
    lrs = f"lr {result['lr']}" + (
        f" (FT), {result['lpft_lr']} (LP-FT)" if result["lpft_lr"] != result["lr"] else ""
    )
    lines = [
        f"LP vs FT vs LP-FT: {result['classes']} intents x {result['train_examples'] // result['classes']} shots "
        f"({result['train_examples']} rows); ID: {result['id_test']} held-out rows; OOD: {result['ood_per_lang']} "
        f"rows each of {', '.join(langs)}; {len(result['seeds'])} seeds; encoder {result['encoder'] or '?'}, "
        f"{result['pooling']} pooling; {result['epochs']} epochs, {lrs}; {words}.",
        "Accuracy %, mean +- 95% CI half-width over seeds:",
        "",
        markdown_table(["method", "ID", "OOD (mean)", "train", *langs], rows),
        "",
        "Paired differences (same seed, same data), points:",
    ]
    lines += [f"  {name:<11} ID {d['id']:+6.2f} +- {d['id_ci']:.2f}   OOD {d['ood']:+6.2f} +- {d['ood_ci']:.2f}"
              for name, d in result["paired"].items()]  # fmt: skip
    lines.append("Kumar et al. 2022 (ImageNet-style shifts): FT - LP about +2 ID / -7 OOD; LP-FT - FT about +1 ID / "
                 "+10 OOD.")  # fmt: skip
    return "\n".join(lines)


def plot_lpft_shift(result: dict[str, Any], path: str | Path) -> bool:
    """Grouped bars: ID and OOD accuracy per method, 95% CI over seeds; False without matplotlib."""
    fig = figure((5.5, 3.4))
    if fig is None:
        return False
    ax = fig.add_subplot()
    width = 0.38
    for i, (key, label) in enumerate((("id", "in distribution"), ("ood", "out of distribution"))):
        xs = [j + (i - 0.5) * width for j in range(len(METHODS))]
        ax.bar(xs, [result[m][key] for m in METHODS], width, yerr=[result[m][f"{key}_ci"] for m in METHODS],
               capsize=3, label=label)  # fmt: skip
    ax.set_xticks(range(len(METHODS)), METHODS)
    ax.set_ylabel("test accuracy %")
    ax.set_ylim(0, 118)  # room above the bars for the legend
    ax.set_title(f"OOD: {', '.join(result['ood_langs'])}", fontsize="small")
    ax.legend(loc="upper center", ncols=2, fontsize="small")
    fig.savefig(path)
    return True
