"""Tests of the cross-validated hyperparameter search on a tiny random BERT (CPU, seconds)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers as T

from hf_metatransfer.finetune import FineTuningConfig
from hf_metatransfer.finetune.search import SearchResult, _open_storage, cross_validated_search, kfold_indices

T.logging.set_verbosity_error()

N = 40
ROOT = Path(__file__).resolve().parents[1]
#: A cheap optuna space for the shared-study tests (two floats: every trial draws distinct values).
SPACE = {"learning_rate": ("log", 1e-4, 1e-2), "layerwise_lr_decay": ("float", 0.5, 1.0)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 16-wide model gains nothing from intra-op threads, which spin and crawl when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset() -> datasets.Dataset:
    return toy_dataset()


def toy_dataset() -> datasets.Dataset:
    """The label is a function of the first token (which BERT's pooler reads), so the task is learnable."""
    rng = np.random.default_rng(0)
    first = rng.integers(2, 64, N)
    input_ids = np.concatenate([first[:, None], rng.integers(2, 64, (N, 5))], axis=1)
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "labels": (first >= 33).astype(int).tolist()}
    )


class ModelInit:
    """Counts its calls and keeps weak references to the models it built."""

    def __init__(self) -> None:
        self.models: list[weakref.ref] = []

    def __call__(self) -> T.PreTrainedModel:
        cfg = T.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=20,
            num_labels=2,
        )
        model = T.BertForSequenceClassification(cfg)
        self.models.append(weakref.ref(model))
        return model

    @property
    def calls(self) -> int:
        return len(self.models)


def _config(max_steps: int = 2, **kwargs) -> FineTuningConfig:
    return FineTuningConfig(
        output_dir="unused", max_steps=max_steps, per_device_train_batch_size=8, use_cpu=True, **kwargs
    )


# -- folds -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_indices_are_disjoint_and_cover(k, stratified):
    labels = [0] * 30 + [1] * 10
    folds = kfold_indices(labels, k, seed=0, stratified=stratified)
    assert len(folds) == k
    held_out = np.concatenate([test for _, test in folds])
    assert sorted(held_out.tolist()) == list(range(len(labels)))
    for train, test in folds:
        assert not set(train) & set(test)
        assert len(train) + len(test) == len(labels)


def test_kfold_indices_stratify_and_follow_the_seed():
    labels = ["a"] * 32 + ["b"] * 8
    for _, test in kfold_indices(labels, 4, seed=0, stratified=True):
        assert sorted(labels[i] for i in test) == ["a"] * 8 + ["b"] * 2
    same = kfold_indices(labels, 4, seed=0)
    other = kfold_indices(labels, 4, seed=1)
    assert all((a[1] == b[1]).all() for a, b in zip(kfold_indices(labels, 4, seed=0), same, strict=True))
    assert any((a[1] != b[1]).any() for a, b in zip(same, other, strict=True))


def test_kfold_indices_fall_back_to_kfold_for_real_valued_labels():
    folds = kfold_indices([0.1 * i for i in range(10)], 5, seed=0, stratified=True)
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("labels", "k", "match"),
    [
        ([0, 1] * 5, 1, "k >= 2"),
        ([0, 1] * 2, 5, "only 4 examples"),
        ([0] * 8 + [1] * 2, 3, "label 1 has only 2"),
    ],
)
def test_kfold_indices_errors(labels, k, match):
    with pytest.raises(ValueError, match=match):
        kfold_indices(labels, k, seed=0)


def test_small_class_is_fine_unstratified():
    assert len(kfold_indices([0] * 8 + [1] * 2, 3, seed=0, stratified=False)) == 3


# -- search ----------------------------------------------------------------------------------------------
def test_grid_search_visits_every_combination_and_a_zero_lr_loses(dataset):
    init = ModelInit()
    space = {"learning_rate": [0.0, 1e-2], "layerwise_lr_decay": [0.8, 1.0]}
    result = cross_validated_search(init, _config(max_steps=10), dataset, space, k=2)

    assert init.calls == 4 * 2
    assert [t["params"] for t in result.trials] == [
        {"learning_rate": lr, "layerwise_lr_decay": d} for lr in (0.0, 1e-2) for d in (0.8, 1.0)
    ]
    for trial in result.trials:
        assert len(trial["fold_scores"]) == 2
        assert trial["mean"] == pytest.approx(np.mean(trial["fold_scores"]))
        assert trial["std"] == pytest.approx(np.std(trial["fold_scores"]))
    means = [t["mean"] for t in result.trials]
    assert result.metric == "eval_loss" and result.greater_is_better is False
    assert result.best_score == min(means)
    assert result.best_params == result.trials[int(np.argmin(means))]["params"]
    assert result.best_params["learning_rate"] == 1e-2
    assert max(means) == means[0]  # learning_rate 0.0 never moves from the initial loss

    best = result.best_config(_config())
    assert isinstance(best, FineTuningConfig)
    assert (best.learning_rate, best.layerwise_lr_decay) == (1e-2, result.best_params["layerwise_lr_decay"])

    pd = pytest.importorskip("pandas")
    frame = result.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    assert {"learning_rate", "layerwise_lr_decay", "mean", "std", "fold_scores"} <= set(frame.columns)


def test_models_are_freed_between_folds(dataset):
    init = ModelInit()
    cross_validated_search(init, _config(max_steps=1), dataset, {"learning_rate": [1e-3]}, k=3)
    gc.collect()
    assert init.calls == 3
    assert all(ref() is None for ref in init.models)


def test_optuna_runs_n_trials_in_the_space(dataset):
    pytest.importorskip("optuna")
    init = ModelInit()
    space = {
        "learning_rate": ("log", 1e-4, 1e-2),
        "lp_max_steps": ("int", 1, 3),
        "surgical_blocks": [["last"], None],
    }
    result = cross_validated_search(
        init, _config(lp_ft=True, lp_max_steps=1), dataset, space, k=2, method="optuna", n_trials=3, seed=0
    )
    assert isinstance(result, SearchResult)
    assert len(result.trials) == 3 and init.calls == 3 * 2
    for trial in result.trials:
        params = trial["params"]
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert params["lp_max_steps"] in (1, 2, 3)
        assert params["surgical_blocks"] in (["last"], None)
    assert result.best_score == min(t["mean"] for t in result.trials)


def test_metric_name_prefix_and_direction(dataset):
    def accuracy(eval_pred) -> dict[str, float]:
        return {"accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}

    result = cross_validated_search(
        ModelInit(), _config(max_steps=1), dataset, {"learning_rate": [1e-3]}, k=2, metric="accuracy",
        compute_metrics=accuracy,
    )  # fmt: skip
    assert result.metric == "eval_accuracy" and result.greater_is_better is True
    assert all(0.0 <= s <= 1.0 for s in result.trials[0]["fold_scores"])


def test_missing_metric_names_the_available_ones(dataset):
    with pytest.raises(ValueError, match=r"'eval_accuracy' is not in evaluate\(\)'s output \[.*'eval_loss'"):
        cross_validated_search(
            ModelInit(), _config(max_steps=1), dataset, {"learning_rate": [1e-3]}, k=2, metric="eval_accuracy"
        )


@pytest.mark.parametrize(
    ("space", "kwargs", "match"),
    [
        ({}, {}, "space is empty"),
        (
            {"learning_rat": [1e-3]},
            {},
            r"'learning_rat' is not a FineTuningConfig field\. Fields: .*learning_rate",
        ),
        ({"output_dir": ["a"]}, {}, "set by the search"),
        ({"learning_rate": ("log", 1e-4, 1e-2)}, {}, "grid search needs a list"),
        ({"learning_rate": ("exp", 1e-4, 1e-2)}, {"method": "optuna"}, "kind in"),
        ({"learning_rate": 1e-3}, {}, "non-empty list"),
        ({"learning_rate": []}, {}, "non-empty list"),
        ({"learning_rate": [1e-3]}, {"k": 1}, "k >= 2"),
        ({"learning_rate": [1e-3]}, {"k": 21}, "has only 20"),
        ({"learning_rate": [1e-3]}, {"label_column": "label"}, "not a column"),
        ({"learning_rate": [1e-3]}, {"method": "random"}, "use 'grid' or 'optuna'"),
        ({"layerwise_lr_decay": [1.0, 1.5]}, {}, "decay"),
        ({"learning_rate": [1e-3]}, {"storage": "s.log", "study_name": "s"}, "use method='optuna'"),
        ({"learning_rate": [1e-3]}, {"method": "optuna", "storage": "s.log"}, "go together"),
        ({"learning_rate": [1e-3]}, {"method": "optuna", "study_name": "s"}, "go together"),
    ],
)
def test_errors_come_before_any_training(dataset, space, kwargs, match):
    init = ModelInit()
    balanced = dataset.map(lambda _, i: {"labels": i % 2}, with_indices=True)
    with pytest.raises(ValueError, match=match):
        cross_validated_search(init, _config(), balanced, space, **kwargs)
    assert init.calls == 0


# -- shared optuna study ---------------------------------------------------------------------------------
def _shared_search(init: ModelInit, storage: str, n_trials: int, **kwargs) -> SearchResult:
    return cross_validated_search(
        init, _config(max_steps=1), toy_dataset(), SPACE, k=2, method="optuna", n_trials=n_trials, seed=0,
        storage=storage, study_name="cv", **kwargs,
    )  # fmt: skip


def test_two_workers_on_a_journal_file_finish_exactly_n_trials(tmp_path):
    optuna = pytest.importorskip("optuna")
    journal = str(tmp_path / "study.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / f"worker-{i}.json" for i in range(2)]
    logs = [out.with_suffix(".log") for out in outs]  # files, not pipes: a full pipe would block a worker
    workers = []
    for out, log in zip(outs, logs, strict=True):
        cmd = [sys.executable, "tests/distributed/search_worker.py", journal, "5", str(out)]
        with log.open("w") as f:
            workers.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=300) == 0, log.read_text()[-3000:]

    study = optuna.load_study(study_name="cv", storage=_open_storage(optuna, journal))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert sorted(t.number for t in finished) == list(range(5))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    # A worker that lost the race for the last slot leaves its trial WAITING, never run.
    assert all(t.state == optuna.trial.TrialState.WAITING and t.number >= 5 for t in study.trials[5:])
    a, b = (json.loads(out.read_text()) for out in outs)
    assert a == b, "both workers report the whole study"
    assert len(a["trials"]) == 5
    assert len({json.dumps(params, sort_keys=True) for params in a["trials"]}) == 5, "seeded per trial number"


def test_a_trial_past_n_trials_goes_back_unrun(tmp_path, monkeypatch):
    """Another worker takes the last slot between this worker's check and its ask: nothing runs past n_trials."""
    optuna = pytest.importorskip("optuna")
    journal = str(tmp_path / "study.log")
    ask = optuna.study.Study.ask

    def ask_after_another_worker(study, *args, **kwargs):
        monkeypatch.setattr(optuna.study.Study, "ask", ask)
        other = optuna.load_study(study_name="cv", storage=_open_storage(optuna, journal))
        trial = other.ask()
        trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        for key, value in {"fold_scores": [0.5, 0.5], "mean": 0.5, "std": 0.0}.items():
            trial.set_user_attr(key, value)
        other.tell(trial, 0.5)
        return ask(study, *args, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "ask", ask_after_another_worker)
    init = ModelInit()
    result = _shared_search(init, journal, n_trials=1)
    assert init.calls == 0 and len(result.trials) == 1 and result.best_score == 0.5
    state = optuna.trial.TrialState
    study = optuna.load_study(study_name="cv", storage=_open_storage(optuna, journal))
    assert [t.state for t in study.trials] == [state.COMPLETE, state.WAITING]

    grown = _shared_search(init, journal, n_trials=2)  # a larger search runs the waiting trial, nothing more
    assert init.calls == 2 and len(grown.trials) == 2
    study = optuna.load_study(study_name="cv", storage=_open_storage(optuna, journal))
    assert [t.state for t in study.trials] == [state.COMPLETE, state.COMPLETE]


def test_sqlite_storage_resumes_without_running_past_n_trials(tmp_path):
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    init = ModelInit()
    first = _shared_search(init, url, n_trials=2)
    assert init.calls == 2 * 2 and len(first.trials) == 2

    again = ModelInit()
    resumed = _shared_search(again, url, n_trials=2)
    assert again.calls == 0, "a finished study runs no new trial"
    assert resumed.trials == first.trials and resumed.best_params == first.best_params
    assert len(optuna.load_study(study_name="cv", storage=url).trials) == 2

    with pytest.raises(ValueError, match="give this search its own study_name"):
        _shared_search(again, url, n_trials=2, metric="accuracy")
    assert again.calls == 0
