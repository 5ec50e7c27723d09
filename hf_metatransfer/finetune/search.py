"""Cross-validated hyperparameter search over any :class:`FineTuningConfig` field.

``Trainer.hyperparameter_search`` needs ``model_init`` (which :class:`FineTuningTrainer` does not take) and
scores on a single eval set; on the small datasets where strategy choices matter most, one split is too noisy
to rank candidates. Here every candidate is scored by k-fold cross-validation with a fresh model per fold.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PrinterCallback, set_seed

from .config import FineTuningConfig
from .trainer import FineTuningTrainer

logger = logging.getLogger(__name__)

#: Settings of every inner (per fold) run: fold models are thrown away, so nothing is saved, pushed or reported,
#: and the search's own progress bar replaces the trainer's.
INNER_RUN_OVERRIDES: dict[str, Any] = {
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "push_to_hub": False,
    "report_to": "none",
    "disable_tqdm": True,
}
RANGE_KINDS = ("log", "float", "int")
_SCORE_KEYS = ("fold_scores", "mean", "std")
_OPTUNA_PRIMITIVES = (type(None), bool, int, float, str)


@dataclasses.dataclass
class SearchResult:
    """Outcome of :func:`cross_validated_search`.

    ``trials`` holds one dict per candidate: ``params``, ``fold_scores`` (one per fold), ``mean`` and ``std``
    (population std over folds, as scikit-learn reports it).
    """

    best_params: dict[str, Any]
    best_score: float
    trials: list[dict[str, Any]]
    metric: str
    greater_is_better: bool

    def best_config(self, config: FineTuningConfig) -> FineTuningConfig:
        """``config`` with the best parameters, e.g. to retrain on all the data."""
        return dataclasses.replace(config, **self.best_params)

    def to_dataframe(self):
        """One row per trial: the parameters, ``mean``, ``std`` and ``fold_scores`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("SearchResult.to_dataframe needs pandas: pip install pandas.") from err
        return pd.DataFrame(
            [
                {**t["params"], "mean": t["mean"], "std": t["std"], "fold_scores": t["fold_scores"]}
                for t in self.trials
            ]
        )


def kfold_indices(
    labels: Sequence[Any], k: int, seed: int = 0, stratified: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs; the held-out parts are disjoint and cover ``range(len(labels))``.

    Stratified (each fold keeps the class proportions, so a rare class is not missing from a fold) when
    ``stratified`` and the labels are categorical (int, bool or str); real-valued or per-token labels fall
    back to plain shuffled k-fold. The order is fixed by ``seed``.
    """
    n = len(labels)
    if k < 2:
        raise ValueError(f"k={k}: cross-validation needs k >= 2 folds.")
    if k > n:
        raise ValueError(f"k={k} folds but only {n} examples.")
    if stratified and all(isinstance(y, (int, str, np.integer, np.str_)) for y in labels):
        counts = Counter(labels)
        label, smallest = min(counts.items(), key=lambda item: item[1])
        if smallest < k:
            raise ValueError(
                f"k={k} folds but label {label!r} has only {smallest} example(s): every fold needs one of each "
                f"class. Use k <= {smallest} or stratified=False."
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(n), np.asarray(labels)))
    return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n)))


def cross_validated_search(
    model_init: Callable[[], PreTrainedModel],
    config: FineTuningConfig,
    train_dataset: datasets.Dataset,
    space: dict[str, Any],
    *,
    k: int = 5,
    method: Literal["grid", "optuna"] = "grid",
    n_trials: int = 10,
    metric: str = "eval_loss",
    greater_is_better: bool | None = None,
    compute_metrics: Callable[[Any], dict[str, Any]] | None = None,
    data_collator: Callable | None = None,
    processing_class: Any = None,
    seed: int = 0,
    label_column: str = "labels",
    stratified: bool = True,
    storage: str | None = None,
    study_name: str | None = None,
) -> SearchResult:
    """Score candidate values of ``FineTuningConfig`` fields by k-fold cross-validation and return the best.

    ``space`` maps field names to a list of values (every combination for ``method="grid"``, categorical
    choices for ``"optuna"``) or, for optuna only, a range ``("log" | "float" | "int", low, high)``. Each
    candidate is ``dataclasses.replace(config, **params)``, so the config's own validation applies. Each fold
    trains ``model_init()`` (called after ``set_seed(config.seed)``, so every candidate starts from the same
    weights) on the other folds and is scored by ``trainer.evaluate()`` on the held-out fold; the held-out fold
    is also the trainer's eval_dataset during training (``lp_patience``, ``eval_strategy``). ``metric`` is an
    ``evaluate()`` key, with or without the ``eval_`` prefix; ``greater_is_better`` defaults to False for
    losses and True otherwise, as in ``TrainingArguments``. Inner runs use :data:`INNER_RUN_OVERRIDES` in a
    temporary folder; retrain on all the data with ``result.best_config(config)``.

    ``storage`` (optuna only) shares the search between processes or machines: a database URL
    (``sqlite:///study.db``, ``postgresql://...``) or the path of a journal file (any string that is not a URL).
    Every call with the same ``storage`` and ``study_name`` joins one study; together they finish exactly
    ``n_trials`` trials (a finished study runs none), each call waits for the trials still running elsewhere and
    returns the whole study's result, so every worker reports the same best configuration.
    """
    if method not in ("grid", "optuna"):
        raise ValueError(f"method={method!r}: use 'grid' or 'optuna'.")
    if storage is not None and method != "optuna":
        raise ValueError(
            f"storage={storage!r} shares an optuna study between workers: use method='optuna' (a grid search "
            "runs in one process)."
        )
    if (storage is None) != (study_name is None):
        raise ValueError(
            "storage=... and study_name=... go together: every worker that gives the same storage and study name "
            "joins one study."
        )
    if method == "optuna" and n_trials < 1:
        raise ValueError(f"n_trials={n_trials}: optuna search needs n_trials >= 1.")
    _check_space(space, method)
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    if greater_is_better is None:
        greater_is_better = not metric.endswith("loss")
    if stratified and label_column not in train_dataset.column_names:
        raise ValueError(
            f"label_column={label_column!r} is not a column of the dataset ({train_dataset.column_names}): "
            "name the label column, or pass stratified=False."
        )
    labels = list(train_dataset[label_column]) if stratified else range(len(train_dataset))
    folds = kfold_indices(labels, k, seed, stratified)
    trainer_kwargs = dict(
        compute_metrics=compute_metrics, data_collator=data_collator, processing_class=processing_class
    )
    grid = (
        [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
        if method == "grid"
        else []
    )
    for params in grid:  # a bad combination fails here, before any training
        _candidate(config, params, Path("unused"))
    trials: list[dict[str, Any]] = []
    progress = tqdm(
        total=len(grid) if method == "grid" else n_trials, desc=f"cv {method} search", unit="trial"
    )

    with tempfile.TemporaryDirectory(prefix="cv_search_") as tmp, progress:

        def score(params: dict[str, Any]) -> dict[str, Any]:
            trial_dir = Path(tmp) / f"trial-{len(trials)}"
            fold_scores = [
                _fit_and_score(
                    model_init,
                    _candidate(config, params, trial_dir / f"fold-{i}"),
                    train_dataset.select(train_idx),
                    train_dataset.select(held_out_idx),
                    metric,
                    trainer_kwargs,
                )
                for i, (train_idx, held_out_idx) in enumerate(folds)
            ]
            trial = {
                "params": params,
                "fold_scores": fold_scores,
                "mean": float(np.mean(fold_scores)),
                "std": float(np.std(fold_scores)),
            }
            trials.append(trial)
            progress.update()
            progress.set_postfix({metric: _best(trials, greater_is_better)["mean"]})
            return trial

        def objective(trial: Any) -> float:
            scored = score(_suggest(trial, space))
            for key in _SCORE_KEYS:  # in the study, so that every worker sees every trial's scores
                trial.set_user_attr(key, scored[key])
            return scored["mean"]

        if method == "grid":
            for params in grid:
                score(params)
        else:
            optuna = _import_optuna()
            direction = "maximize" if greater_is_better else "minimize"
            if storage is None:
                sampler = optuna.samplers.TPESampler(seed=seed)
                study = optuna.create_study(direction=direction, sampler=sampler)
                study.optimize(objective, n_trials=n_trials)
            else:
                study = _optimize_shared(optuna, storage, study_name, direction, objective, n_trials, seed)
            trials = _study_trials(study, space)

    best = _best(trials, greater_is_better)
    return SearchResult(
        best_params=best["params"],
        best_score=best["mean"],
        trials=trials,
        metric=metric,
        greater_is_better=greater_is_better,
    )


def _check_space(space: dict[str, Any], method: str) -> None:
    if not space:
        raise ValueError("The search space is empty: map at least one FineTuningConfig field to its values.")
    known = {f.name for f in dataclasses.fields(FineTuningConfig) if f.init}
    for name, values in space.items():
        if name not in known:
            raise ValueError(f"{name!r} is not a FineTuningConfig field. Fields: {', '.join(sorted(known))}.")
        if name == "output_dir" or name in INNER_RUN_OVERRIDES:
            raise ValueError(f"{name!r} is set by the search for its inner runs and cannot be searched.")
        if isinstance(values, tuple):
            if method == "grid":
                raise ValueError(
                    f"{name}: grid search needs a list of values; ranges {values!r} are for method='optuna'."
                )
            if len(values) != 3 or values[0] not in RANGE_KINDS:
                raise ValueError(
                    f"{name}: a range is (kind, low, high) with kind in {RANGE_KINDS}, got {values!r}."
                )
        elif not isinstance(values, list) or not values:
            raise ValueError(
                f"{name}: give a non-empty list of values (or, for optuna, a range), got {values!r}."
            )


def _candidate(config: FineTuningConfig, params: dict[str, Any], output_dir: Path) -> FineTuningConfig:
    return dataclasses.replace(config, **params, **INNER_RUN_OVERRIDES, output_dir=str(output_dir))


def _fit_and_score(
    model_init: Callable[[], PreTrainedModel],
    config: FineTuningConfig,
    train: datasets.Dataset,
    held_out: datasets.Dataset,
    metric: str,
    trainer_kwargs: dict[str, Any],
) -> float:
    set_seed(config.seed)
    trainer = FineTuningTrainer(
        model=model_init(), args=config, train_dataset=train, eval_dataset=held_out, **trainer_kwargs
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm would print every log; the search shows progress
    trainer.train()
    results = trainer.evaluate()
    # The trainer and its callbacks reference each other: collect the cycle so the fold's model is freed now.
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if metric not in results:
        raise ValueError(
            f"metric={metric!r} is not in evaluate()'s output {sorted(results)}; metrics other than the loss "
            "need compute_metrics=... (e.g. hf_metatransfer.metrics.compute_metrics_fn())."
        )
    return float(results[metric])


def _best(trials: list[dict[str, Any]], greater_is_better: bool) -> dict[str, Any]:
    """The best trial; NaN means (diverged runs) rank last."""
    sign = 1.0 if greater_is_better else -1.0
    return max(trials, key=lambda t: -math.inf if math.isnan(t["mean"]) else sign * t["mean"])


def _open_storage(optuna, storage: str):
    """A database URL, else a journal file: one file that concurrent processes append to under a lock."""
    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # optuna < 4.0 names the file backend JournalFileStorage
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def _optimize_shared(
    optuna,
    storage: str,
    study_name: str,
    direction: str,
    objective: Callable[[Any], float],
    n_trials: int,
    seed: int,
):
    """Join (or create) the study and run trials until it holds ``n_trials``, however many workers share it.

    ``study.optimize(n_trials=...)`` counts one worker's trials and ``MaxTrialsCallback`` stops only after a
    trial ends, so concurrent workers overshoot. Trial numbers are unique across workers instead: a trial
    numbered ``n_trials`` or more lost the race for the last slot and goes back to WAITING unrun (a later search
    with a larger ``n_trials`` runs it). Returns once no other worker is still running one of the trials.
    """
    state = optuna.trial.TrialState
    backend = _open_storage(optuna, storage)
    study = optuna.create_study(
        storage=backend,
        study_name=study_name,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"Study {study_name!r} in {storage} was created to {study.direction.name.lower()} its metric, this "
            f"search would {direction} it (greater_is_better): give this search its own study_name."
        )
    study_id = backend.get_study_id_from_name(study_name)
    while _has_free_slot(study, n_trials, state):
        trial = study.ask()
        if trial.number >= n_trials:
            trial_id = backend.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            backend.set_trial_state_values(trial_id, state.WAITING)
            break
        # TPE draws at suggest time: a seed per trial number keeps workers from repeating each other's draws.
        study.sampler = optuna.samplers.TPESampler(seed=seed + trial.number)
        try:
            value = objective(trial)
        except BaseException:
            study.tell(trial, state=state.FAIL)
            raise
        study.tell(trial, value)
    waiting_for: list[int] = []
    while running := [
        t.number for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)) if t.number < n_trials
    ]:
        if running != waiting_for:
            logger.warning(
                "Waiting for trial(s) %s of study %r, running in other workers. If a worker died, fail its trial: "
                "optuna.load_study(study_name=..., storage=...).tell(number, state=TrialState.FAIL).",
                running,
                study_name,
            )
            waiting_for = running
        time.sleep(1.0)
    return study


def _has_free_slot(study, n_trials: int, state) -> bool:
    """Trials are numbered 0, 1, ... across workers: a slot is free below ``n_trials`` or in a WAITING trial."""
    trials = study.get_trials(deepcopy=False)
    return len(trials) < n_trials or any(t.state == state.WAITING and t.number < n_trials for t in trials)


def _study_trials(study, space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every scored trial of the study, whichever worker ran it (a NaN mean fails the optuna trial: kept)."""
    return [
        {"params": _decode(t.params, space), **{key: t.user_attrs[key] for key in _SCORE_KEYS}}
        for t in study.get_trials(deepcopy=False)
        if "mean" in t.user_attrs
    ]


def _decode(optuna_params: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """Config values from a trial's params: :func:`_suggest` stores non-primitive choices by their repr."""
    return {
        name: {repr(v): v for v in space[name]}[value] if _by_repr(space[name]) else value
        for name, value in optuna_params.items()
    }


def _by_repr(values: Any) -> bool:
    return not isinstance(values, tuple) and not all(isinstance(v, _OPTUNA_PRIMITIVES) for v in values)


def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for name, values in space.items():
        if isinstance(values, tuple):
            kind, low, high = values
            if kind == "int":
                params[name] = trial.suggest_int(name, low, high)
            else:
                params[name] = trial.suggest_float(name, low, high, log=kind == "log")
        elif _by_repr(values):  # e.g. surgical_blocks lists: optuna stores primitives only, so picks a repr
            choices = {repr(v): v for v in values}
            params[name] = choices[trial.suggest_categorical(name, list(choices))]
        else:
            params[name] = trial.suggest_categorical(name, values)
    return params


def _import_optuna():
    try:
        import optuna
    except ImportError as err:
        raise ImportError("method='optuna' needs optuna: pip install 'hf-metatransfer[search]'.") from err
    return optuna
