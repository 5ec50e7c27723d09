"""Shipped offline metrics: values against scikit-learn / sacrebleu, loading paths, Trainer hook."""

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import evaluate
import numpy as np
import pytest
import sacrebleu
from sklearn.metrics import accuracy_score, f1_score

from hf_metatransfer.metrics import (
    METRIC_NAMES,
    CallableMetric,
    compute_metrics_fn,
    load_metric,
    metric_path,
)

HYPS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "he read the book because he was interested in world history",
    "it is raining cats and dogs today",
    "the weather is nice",
]
REFS_A = [
    "the cat is sitting on the mat",
    "the quick brown fox jumped over the lazy dog",
    "he was interested in world history because he read the book",
    "it rains heavily today",
    "the weather is lovely today",
]
REFS_B = [
    "there is a cat on the mat",
    "a fast brown fox leaps over a lazy dog",
    "he read the book since he liked world history",
    "it is pouring today",
    "nice weather",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the Hub fails loudly: these metrics must load offline."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline metrics test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 4, size=200)
    # Imbalanced, partly wrong predictions: macro, micro and weighted F1 all differ.
    preds = np.where(rng.random(200) < 0.7, refs, rng.choice([0, 0, 0, 1], size=200))
    return preds, refs


def test_names_and_paths():
    assert set(METRIC_NAMES) == {"accuracy", "f1", "bleu", "chrf"}
    for name in METRIC_NAMES:
        folder = Path(metric_path(name))
        assert folder.is_dir() and (folder / f"{name}.py").is_file()
    assert metric_path("macro_f1") == metric_path("F1") == metric_path("f1")


def test_module_files_respect_evaluate_import_scanner():
    """evaluate parses imports line by line; multi-name imports or unknown libraries would break loading."""
    from evaluate.loading import get_imports

    for name in METRIC_NAMES:
        script = Path(metric_path(name)) / f"{name}.py"
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert len(node.names) == 1, f"{script}:{node.lineno} imports several names on one line"
        imports = get_imports(str(script))
        assert all(kind == "library" for kind, *_ in imports)
        assert {lib for _, lib, *_ in imports} <= {"datasets", "evaluate", "sklearn", "sacrebleu"}


def test_accuracy_by_path_matches_sklearn(labels):
    preds, refs = labels
    metric = evaluate.load(metric_path("accuracy"))
    assert isinstance(metric, evaluate.EvaluationModule)
    result = metric.compute(predictions=preds, references=refs)
    assert result == {"accuracy": pytest.approx(accuracy_score(refs, preds))}
    assert 0.5 < result["accuracy"] < 1.0
    counts = metric.compute(predictions=preds, references=refs, normalize=False)
    assert counts["accuracy"] == int((preds == refs).sum())


def test_f1_is_macro_by_default_and_accepts_average(labels):
    preds, refs = labels
    metric = load_metric("f1")
    macro = f1_score(refs, preds, average="macro")
    assert macro != pytest.approx(f1_score(refs, preds, average="micro"))
    assert metric.compute(predictions=preds, references=refs)["f1"] == pytest.approx(macro)
    weighted = metric.compute(predictions=preds, references=refs, average="weighted")["f1"]
    assert weighted == pytest.approx(f1_score(refs, preds, average="weighted"))
    per_class = metric.compute(predictions=preds, references=refs, average=None)["f1"]
    assert per_class == pytest.approx(list(f1_score(refs, preds, average=None)))
    assert len(per_class) == 4


def test_bleu_matches_sacrebleu_corpus_score():
    metric = load_metric("bleu")
    single = metric.compute(predictions=HYPS, references=REFS_A)
    assert single["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS_A]).score)
    multi = metric.compute(
        predictions=HYPS, references=[list(pair) for pair in zip(REFS_A, REFS_B, strict=True)]
    )
    assert multi["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS_A, REFS_B]).score)
    assert 0 < single["bleu"] < multi["bleu"] < 100
    # Variable number of references per segment: sacrebleu pads missing ones with None.
    ragged = [[a, b] if i % 2 else [a] for i, (a, b) in enumerate(zip(REFS_A, REFS_B, strict=True))]
    padded_b = [b if i % 2 else None for i, b in enumerate(REFS_B)]
    expected = sacrebleu.corpus_bleu(HYPS, [REFS_A, padded_b]).score
    assert metric.compute(predictions=HYPS, references=ragged)["bleu"] == pytest.approx(expected)
    upper = [h.upper() for h in HYPS]
    lowered = metric.compute(predictions=upper, references=REFS_A, lowercase=True)["bleu"]
    assert lowered == pytest.approx(single["bleu"])
    assert metric.compute(predictions=upper, references=REFS_A)["bleu"] < single["bleu"]


def test_chrf_matches_sacrebleu_corpus_score():
    metric = load_metric("chrf")
    single = metric.compute(predictions=HYPS, references=REFS_A)
    assert single["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS_A]).score)
    multi = metric.compute(predictions=HYPS, references=[[a, b] for a, b in zip(REFS_A, REFS_B, strict=True)])
    assert multi["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS_A, REFS_B]).score)
    plus = metric.compute(predictions=HYPS, references=REFS_A, word_order=2)["chrf"]
    assert plus == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS_A], word_order=2).score)
    assert plus != pytest.approx(single["chrf"])
    assert 0 < single["chrf"] < 100


def test_load_metric_short_names_and_loaded_module():
    for name in ("accuracy", "f1", "macro_f1", "bleu", "chrf"):
        module = load_metric(name)
        assert isinstance(module, evaluate.EvaluationModule)
        assert module.name == ("f1" if name == "macro_f1" else name)
    already = evaluate.load(metric_path("accuracy"))
    assert load_metric(already) is already


def test_load_metric_user_callable():
    def exact(predictions, references):
        return {"exact": float(np.mean(np.asarray(predictions) == np.asarray(references)))}

    def error_rate(predictions, references):
        return float(np.mean(np.asarray(predictions) != np.asarray(references)))

    wrapped = load_metric(exact)
    assert isinstance(wrapped, CallableMetric)
    assert wrapped.compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 0]) == {"exact": 0.5}
    assert load_metric(error_rate).compute(predictions=[1, 2, 3, 4], references=[1, 0, 0, 0]) == {
        "error_rate": 0.75
    }
    with pytest.raises(TypeError, match="expected dict or float"):
        load_metric(lambda p, r: "oops").compute(predictions=[1], references=[1])


USER_MODULE = """
import datasets
import evaluate


class MeanAbsoluteError(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="mean absolute error",
            citation="",
            features=datasets.Features(
                {"predictions": datasets.Value("float32"), "references": datasets.Value("float32")}
            ),
        )

    def _compute(self, predictions, references, scale=1.0):
        errors = [abs(p - r) for p, r in zip(predictions, references)]
        return {"mae": scale * sum(errors) / len(errors)}
"""


def test_load_metric_user_module_dir(tmp_path):
    folder = tmp_path / "my_mae"
    folder.mkdir()
    (folder / "my_mae.py").write_text(textwrap.dedent(USER_MODULE))
    for spec in (str(folder), folder, str(folder) + os.sep, str(folder / "my_mae.py")):
        module = load_metric(spec)
        assert isinstance(module, evaluate.EvaluationModule)
        result = module.compute(predictions=[1.0, 2.0, 4.0], references=[1.5, 2.0, 1.0], scale=2.0)
        assert result["mae"] == pytest.approx(2.0 * (0.5 + 0.0 + 3.0) / 3)

    empty = tmp_path / "no_script"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no_script\.py"):
        load_metric(empty)


def test_unknown_metric_error_lists_names_and_how_to_plug_in():
    with pytest.raises(ValueError) as info:
        load_metric("rouge")
    message = str(info.value)
    assert "'rouge'" in message
    for name in METRIC_NAMES:
        assert name in message
    assert "evaluate.Metric" in message and "evaluate.EvaluationModule" in message and "callable" in message
    with pytest.raises(ValueError, match="Shipped metrics"):
        metric_path("does_not_exist")
    with pytest.raises(ValueError, match="Unknown metric"):
        compute_metrics_fn(["accuracy", "nope"])


def test_compute_metrics_fn_on_logits(labels):
    from transformers import EvalPrediction

    _, refs = labels
    logits = np.random.default_rng(1).normal(size=(len(refs), 4)).astype(np.float32)
    logits[np.arange(len(refs))[::3], refs[::3]] += 3.0  # make a third clearly right
    preds = logits.argmax(-1)

    def n_correct(predictions, references):
        return {"n_correct": int((np.asarray(predictions) == np.asarray(references)).sum())}

    compute = compute_metrics_fn(["accuracy", "macro_f1", n_correct])
    result = compute(EvalPrediction(predictions=logits, label_ids=refs))
    assert set(result) == {"accuracy", "f1", "n_correct"}
    assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert result["f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert result["n_correct"] == int((preds == refs).sum())
    # Models that return extra outputs give a tuple; plain (logits, labels) tuples work too.
    assert compute(((logits, np.zeros((len(refs), 2))), refs)) == result


def test_compute_metrics_fn_token_classification_ignores_padding():
    labels = np.array([[0, 1, 2, -100], [2, 2, -100, -100]])
    logits = np.zeros((2, 4, 3))
    pred_ids = np.array([[0, 2, 2, 1], [2, 1, 0, 0]])
    np.put_along_axis(logits, pred_ids[..., None], 1.0, axis=-1)
    result = compute_metrics_fn("accuracy")((logits, labels))
    assert result["accuracy"] == pytest.approx(3 / 5)  # positions with -100 do not count


def test_compute_metrics_fn_rejects_duplicate_keys():
    compute = compute_metrics_fn(["f1", lambda p, r: {"f1": 0.0}])
    with pytest.raises(ValueError, match="'f1'"):
        compute((np.eye(3), np.array([0, 1, 2])))


def test_shipped_metrics_load_with_empty_cache_offline(tmp_path):
    """Fresh interpreter, empty HF_HOME, offline flags: every shipped metric loads and computes."""
    script = textwrap.dedent(
        """
        import json
        from hf_metatransfer.metrics import METRIC_NAMES, load_metric
        out = {}
        for name in METRIC_NAMES:
            if name in ("bleu", "chrf"):
                kwargs = {"predictions": ["a b c d"], "references": [["a b c d"]]}
            else:
                kwargs = {"predictions": [0, 1, 1], "references": [0, 1, 1]}
            out.update(load_metric(name).compute(**kwargs))
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    env.pop("HF_MODULES_CACHE", None)
    env.pop("HF_METRICS_CACHE", None)
    repo_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert scores == {"accuracy": 1.0, "f1": 1.0, "bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
