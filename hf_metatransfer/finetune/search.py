"""Cross-validated hyperparameter search over any :class:`FineTuningConfig` field.

``Trainer.hyperparameter_search`` needs ``model_init`` (which :class:`FineTuningTrainer` does not take) and
scores on a single eval set; on the small datasets where strategy choices matter most, one split is too noisy
to rank candidates. Here every candidate is scored by k-fold cross-validation with a fresh model per fold.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import tempfile
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
    """
    if method not in ("grid", "optuna"):
        raise ValueError(f"method={method!r}: use 'grid' or 'optuna'.")
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

        def score(params: dict[str, Any]) -> float:
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
            mean = float(np.mean(fold_scores))
            trials.append(
                {
                    "params": params,
                    "fold_scores": fold_scores,
                    "mean": mean,
                    "std": float(np.std(fold_scores)),
                }
            )
            progress.update()
            progress.set_postfix({metric: _best(trials, greater_is_better)["mean"]})
            return mean

        if method == "grid":
            for params in grid:
                score(params)
        else:
            optuna = _import_optuna()
            study = optuna.create_study(
                direction="maximize" if greater_is_better else "minimize",
                sampler=optuna.samplers.TPESampler(seed=seed),
            )
            study.optimize(lambda trial: score(_suggest(trial, space)), n_trials=n_trials)

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


def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for name, values in space.items():
        if isinstance(values, tuple):
            kind, low, high = values
            if kind == "int":
                params[name] = trial.suggest_int(name, low, high)
            else:
                params[name] = trial.suggest_float(name, low, high, log=kind == "log")
        elif all(isinstance(v, _OPTUNA_PRIMITIVES) for v in values):
            params[name] = trial.suggest_categorical(name, values)
        else:  # e.g. surgical_blocks lists: optuna stores primitives only, so it picks among their reprs
            choices = {repr(v): v for v in values}
            params[name] = choices[trial.suggest_categorical(name, list(choices))]
    return params


def _import_optuna():
    try:
        import optuna
    except ImportError as err:
        raise ImportError("method='optuna' needs optuna: pip install 'hf-metatransfer[search]'.") from err
    return optuna
