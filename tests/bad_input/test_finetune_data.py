"""Bad finetune data: refused before any model is loaded, naming the problem and the fix, nothing written;
rows without text or label dropped with a count, and the run trains on the rest."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
import transformers as T

from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.data import minilm_path
from hf_metatransfer.finetune import FineTuningConfig
from hf_metatransfer.recipes import finetune
from hf_metatransfer.recipes.finetune import DataArguments, ModelArguments, cli, load_splits
from tests.test_recipe_finetune import tiny_checkpoint  # noqa: F401 - the fixture

CLASSES = ("music", "timer", "weather")
TRAINING = ["--num_train_epochs", "1", "--save_strategy", "no", "--use_cpu", "true", "--report_to", "none",
            "--disable_tqdm", "true"]  # fmt: skip


def rows(per_class: int = 8, classes: tuple[str, ...] = CLASSES) -> list[dict]:
    return [{"text": f"{label} example {i}", "label": label} for label in classes for i in range(per_class)]


def jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def raw(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def latin1(records: list[dict]) -> bytes:
    """JSON lines with an 'é' in every text, saved as latin-1."""
    return "".join(
        json.dumps(dict(r, text="café " + r["text"]), ensure_ascii=False) + "\n" for r in records
    ).encode("latin-1")


def latin1_csv(records: list[dict]) -> bytes:
    return b"text,label\n" + "".join(f"café {r['text']},{r['label']}\n" for r in records).encode("latin-1")


def json_rows(records: list[dict], *extra: str) -> Callable[[Path], list[str]]:
    """Flags for ``records`` written as JSON lines into the test's data folder."""
    return lambda folder: [
        "--dataset_name",
        "json",
        "--data_files",
        jsonl(folder / "d.jsonl", records),
        *extra,
    ]


def builder_data(builder: str, name: str, content: bytes | None = None) -> Callable[[Path], list[str]]:
    """Flags for a ``builder`` file ``name`` in the test's data folder (``content`` None: not written)."""
    return lambda d: ["--dataset_name", builder, "--data_files", raw(d / name, content) if content is not None
                      else str(d / name)]  # fmt: skip


def run_args(tmp_path: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "out"),
            "--train_examples_per_class", "2", "--validation_examples_per_class", "1",
            *TRAINING, *extra]  # fmt: skip


def data_args(tmp_path: Path, *extra: str) -> DataArguments:
    argv = ["--output_dir", str(tmp_path / "out"), "--train_examples_per_class", "2",
            "--validation_examples_per_class", "1", *extra]  # fmt: skip
    return parse_args((ModelArguments, DataArguments, FineTuningConfig), argv)[1]


def forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, loading a tokenizer or model fails the test: refusals must come before either."""

    def loaded(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded before the data was refused")

    monkeypatch.setattr(finetune.AutoTokenizer, "from_pretrained", loaded)
    monkeypatch.setattr(finetune.AutoModelForSequenceClassification, "from_pretrained", loaded)


ONE_CLASS_BIG = rows(30, ("music",)) + rows(5, ("timer", "weather"))
# id: (the data flags given the test's data folder, the error, phrases naming the problem and the fix)
REFUSED = {
    "json without --data_files": (lambda d: ["--dataset_name", "json"], ValueError,
                                  ("no --data_files were given", "--data_files path.jsonl")),
    "csv without --data_files": (lambda d: ["--dataset_name", "csv"], ValueError,
                                 ("no --data_files were given", "--data_files path.csv")),
    "parquet without --data_files": (lambda d: ["--dataset_name", "parquet"], ValueError,
                                     ("no --data_files were given", "--data_files path.parquet")),
    "missing file": (builder_data("json", "nope.jsonl"), FileNotFoundError,
                     ("nope.jsonl: no such file", "Check the path")),
    "glob matching nothing": (builder_data("csv", "*.csv"), FileNotFoundError,
                              ("*.csv: no file matches", "Check the path")),
    "0-byte file": (builder_data("json", "e.jsonl", b""), ValueError,
                    ("e.jsonl is empty (0 bytes)", "put examples in it")),
    "whitespace-only file": (builder_data("json", "w.jsonl", b"\n  \n"), ValueError,
                             ("w.jsonl has no rows (only whitespace)", "put examples in it")),
    "csv with only its header": (builder_data("csv", "h.csv", b"text,label\n"), ValueError,
                                 ("hold no rows", "give files with examples")),
    "latin-1 csv": (builder_data("csv", "l.csv", latin1_csv(rows())), ValueError,
                    ("l.csv is not valid utf-8: byte 14 (line 2) is b'\\xe9'", "Re-save the file as UTF-8",
                     "--data_encoding")),
    "latin-1 jsonl": (builder_data("json", "l.jsonl", latin1(rows())), ValueError,
                      ("l.jsonl is not valid utf-8: byte 13 (line 1)", "Re-save the file as UTF-8",
                       "--data_encoding")),
    "unknown --data_encoding": (json_rows(rows(), "--data_encoding", "utf-9"), ValueError,
                                ("--data_encoding 'utf-9' is not an encoding", "utf-8, latin-1")),
    "--data_encoding with parquet": (
        lambda d: builder_data("parquet", "d.parquet")(d) + ["--data_encoding", "cp1252"], ValueError,
        ("--data_encoding applies to csv/json/text files", "leave it out")),
    "malformed json": (builder_data("json", "bad.jsonl", b'{"text": "a", "label": \n'), ValueError,
                       ("could not be read as json", "Fix the file")),
    "int text": (json_rows([dict(r, text=i) for i, r in enumerate(rows())]), ValueError,
                 ("Column 'text' holds Value('int64'), not text", "set --text_column")),
    "list text": (json_rows([dict(r, text=[r["text"]]) for r in rows()]), ValueError,
                  ("Column 'text' holds List(", "set --text_column")),
    "list labels": (json_rows([dict(r, label=[r["label"]]) for r in rows()]), ValueError,
                    ("needs one class (a name or an id) a row", "Set --label_column")),
    "fractional float labels": (json_rows([dict(r, label=0.5 + i % 3) for i, r in enumerate(rows())]),
                                ValueError,
                                ("float labels that are not whole numbers (row 0: 0.5, 24 rows in all)",
                                 "Map them to class ids")),
    "every text blank": (json_rows([dict(r, text=" ") for r in rows()]), ValueError,
                         ("No rows left: all 24 rows have a null or blank 'text'", "Check --text_column")),
    "every label null": (json_rows([dict(r, label=None) for r in rows()]), ValueError,
                         ("No rows left", "or no 'label'", "Check --text_column and --label_column")),
    "a single class": (json_rows(rows(classes=("music",))), ValueError,
                       ("single class ('music', 8 rows)", "at least 2 classes", "Set --label_column")),
    "every class too small": (json_rows(rows(), "--train_examples_per_class", "16"), ValueError,
                              ("would leave 0 class(es)", "{'music': 8, 'timer': 8, 'weather': 8}",
                               "Lower --train_examples_per_class (now 16)", "at most 8")),
    "one class left": (json_rows(ONE_CLASS_BIG, "--train_examples_per_class", "8"), ValueError,
                       ("would leave 1 class(es)", "at most 5 (the second-largest class)")),
    "small classes with --small_classes error": (
        json_rows(rows(), "--train_examples_per_class", "8", "--small_classes", "error"), ValueError,
        ("3 classes have fewer than", "= 10 examples", "Lower the counts")),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_data_is_refused_before_the_model(case, tmp_path, tiny_checkpoint, monkeypatch, refused):
    flags, error, phrases = REFUSED[case]
    (tmp_path / "data").mkdir()
    argv = run_args(tmp_path, tiny_checkpoint, *flags(tmp_path / "data"))
    forbid_loading(monkeypatch)
    with refused(error, *phrases, folders=(tmp_path / "out", tiny_checkpoint)):
        cli(argv)


@pytest.mark.parametrize("head_labels", [2, 5])
def test_head_of_another_size_is_refused_before_the_model(head_labels, tmp_path, monkeypatch, refused):
    checkpoint = classifier(tmp_path / "classifier", head_labels)
    argv = run_args(
        tmp_path, checkpoint, "--dataset_name", "json", "--data_files", jsonl(tmp_path / "d.jsonl", rows())
    )
    phrases = (f"has a classification head for {head_labels} labels",
               "the data has 3 classes (music, timer, weather)",
               "--ignore_mismatched_sizes true", "base model")  # fmt: skip
    forbid_loading(monkeypatch)
    with refused(ValueError, *phrases, folders=(tmp_path / "out", checkpoint)):
        cli(argv)


def test_blank_and_null_rows_are_dropped_with_a_count(tmp_path, caplog):
    records = rows()
    records[1]["text"], records[3]["text"], records[9]["text"] = "", "  \t", None
    records[20]["label"] = None
    files = jsonl(tmp_path / "d.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_metatransfer.finetune"):
        splits = load_splits(data_args(tmp_path, "--dataset_name", "json", "--data_files", files), seed=0)
    dropped = (
        "Dropped 4 of 24 rows: 3 with a null or blank 'text' (rows 1, 3, 9); 1 with a null or blank 'label'"
    )
    assert f"{dropped} (rows 20). Row numbers count from 0" in caplog.text
    texts = [t for split in splits.values() for t in split["text"]]
    assert len(texts) == 20 and all(t and t.strip() for t in texts)


def test_many_dropped_rows_show_the_first_few(tmp_path, caplog):
    records = rows() + [{"text": "", "label": "timer"}] * 7
    files = jsonl(tmp_path / "d.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_metatransfer.finetune"):
        load_splits(data_args(tmp_path, "--dataset_name", "json", "--data_files", files), seed=0)
    assert "7 with a null or blank 'text' (rows 24, 25, 26, 27, 28, ...)" in caplog.text


def test_class_label_minus_one_is_no_label(tmp_path, caplog):
    """Hub datasets mark unlabelled rows (a hidden test split) with -1: dropped, not a crash in bincount."""
    features = datasets.Features(
        text=datasets.Value("string"), label=datasets.ClassLabel(names=list(CLASSES))
    )
    records = [dict(r, label=CLASSES.index(r["label"])) for r in rows()] + [{"text": "hidden", "label": -1}]
    files = str(tmp_path / "d.parquet")
    datasets.Dataset.from_list(records, features=features).to_parquet(files)
    with caplog.at_level(logging.WARNING, logger="hf_metatransfer.finetune"):
        splits = load_splits(data_args(tmp_path, "--dataset_name", "parquet", "--data_files", files), seed=0)
    assert "1 with a null or blank 'label' (rows 24)" in caplog.text
    assert splits["train"].features["label"].names == list(CLASSES)


def test_whole_number_float_labels_are_read_as_class_ids(tmp_path, caplog):
    records = [dict(r, label=float(CLASSES.index(r["label"]))) for r in rows()]
    files = jsonl(tmp_path / "d.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_metatransfer.finetune"):
        splits = load_splits(data_args(tmp_path, "--dataset_name", "json", "--data_files", files), seed=0)
    assert "Column 'label' holds whole-number floats: read as int class ids" in caplog.text
    assert splits["train"].features["label"].names == ["0", "1", "2"]


@pytest.mark.parametrize("builder, content", [("csv", latin1_csv(rows())), ("json", latin1(rows()))])
def test_data_encoding_reads_a_latin1_file(builder, content, tmp_path):
    files = raw(tmp_path / f"d.{builder}", content)
    argv = ["--dataset_name", builder, "--data_files", files, "--data_encoding", "latin-1"]
    splits = load_splits(data_args(tmp_path, *argv), seed=0)
    assert all(t.startswith("café ") for t in splits["train"]["text"])


def test_run_with_blank_rows_trains_on_the_rest(tmp_path, tiny_checkpoint):
    records = (
        rows() + [{"text": "", "label": label} for label in CLASSES] + [{"text": None, "label": "music"}]
    )
    results = cli(run_args(tmp_path, tiny_checkpoint, "--dataset_name", "json", "--data_files",
                           jsonl(tmp_path / "d.jsonl", records)))  # fmt: skip
    assert results["train_examples"] == 3 * 2 and results["test_examples"] == 24 - 3 * 2 - 3 * 1
    assert (tmp_path / "out" / "results.json").exists()


def test_head_of_another_size_is_reinitialised_when_asked(tmp_path):
    checkpoint = classifier(tmp_path / "classifier", 2)
    cli(run_args(tmp_path, checkpoint, "--dataset_name", "json", "--data_files", jsonl(tmp_path / "d.jsonl", rows()),
                 "--ignore_mismatched_sizes", "true"))  # fmt: skip
    saved = T.AutoConfig.from_pretrained(tmp_path / "out")
    assert saved.num_labels == 3 and saved.id2label == dict(enumerate(CLASSES))


def classifier(path: Path, num_labels: int) -> Path:
    """A tiny checkpoint that already has a sequence-classification head of ``num_labels``."""
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    cfg = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=20, max_position_embeddings=64,
                       num_labels=num_labels)  # fmt: skip
    T.BertForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
