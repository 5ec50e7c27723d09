"""Metrics that load offline.

``evaluate.load("accuracy")`` fetches its script from the Hub and fails without network, so the
package ships its own evaluate modules (one folder per metric, next to this file) and loads them by
path. Users can plug in their own evaluate module folder, a loaded module, or a plain function.

``evaluate`` is imported lazily: it takes seconds to import and is only needed when a metric is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRIC_NAMES", "CallableMetric", "compute_metrics_fn", "load_metric", "metric_path"]

#: Short names of the evaluate modules shipped in this folder.
METRIC_NAMES: tuple[str, ...] = ("accuracy", "f1", "bleu", "chrf")
# The shipped f1 module is macro-averaged by default, so "macro_f1" is just another name for it.
_ALIASES: dict[str, str] = {"macro_f1": "f1", "macro-f1": "f1"}

_METRICS_DIR = Path(__file__).resolve().parent

MetricFn = Callable[[Any, Any], Mapping[str, Any] | float]
MetricLike = Union[str, "os.PathLike[str]", "evaluate.EvaluationModule", MetricFn]


def _unknown_metric_error(metric: object) -> ValueError:
    aliases = ", ".join(f"{alias!r} -> {name!r}" for alias, name in _ALIASES.items())
    return ValueError(
        f"Unknown metric {metric!r}. Shipped metrics: {', '.join(METRIC_NAMES)} (aliases: {aliases}). "
        "To use your own metric, pass the path to an evaluate module folder DIR that contains DIR/<DIR name>.py "
        "defining an evaluate.Metric subclass, an already loaded evaluate.EvaluationModule "
        "(e.g. evaluate.load('<hub id>') when online), or a callable (predictions, references) -> dict | float."
    )


def _canonical_name(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in METRIC_NAMES else None


def metric_path(name: str) -> str:
    """Folder of a shipped evaluate module, ready for ``evaluate.load(metric_path(name))`` offline."""
    canonical = _canonical_name(name)
    if canonical is None:
        raise _unknown_metric_error(name)
    return str(_METRICS_DIR / canonical)


class CallableMetric:
    """Gives a plain ``fn(predictions, references)`` the ``compute(...) -> dict`` interface of evaluate.

    A float result is returned as ``{name: value}`` so every metric yields a dict that can be merged.
    """

    def __init__(self, fn: MetricFn, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def compute(self, *, predictions: Any, references: Any, **kwargs: Any) -> dict[str, Any]:
        result = self.fn(predictions, references, **kwargs)
        if isinstance(result, Mapping):
            return dict(result)
        if isinstance(result, (int, float, np.number)):
            return {self.name: float(result)}
        raise TypeError(
            f"Metric function {self.name!r} returned {type(result).__name__}; expected dict or float."
        )

    def __repr__(self) -> str:
        return f"CallableMetric({self.name!r})"


def load_metric(metric: MetricLike, **load_kwargs: Any) -> evaluate.EvaluationModule | CallableMetric:
    """Resolve a metric spec to an object with ``compute(predictions=..., references=...) -> dict``.

    Accepts a shipped short name ("accuracy", "f1"/"macro_f1", "bleu", "chrf"), the path to a user's
    evaluate module folder (or its .py file), a loaded ``evaluate.EvaluationModule`` (returned as is) or
    a callable ``(predictions, references) -> dict | float`` (wrapped in :class:`CallableMetric`).
    ``load_kwargs`` are passed to ``evaluate.load`` for names and paths. Never touches the Hub.
    """
    import evaluate

    if isinstance(metric, evaluate.EvaluationModule):
        return metric
    if isinstance(metric, (str, os.PathLike)):
        canonical = _canonical_name(metric) if isinstance(metric, str) else None
        if canonical is not None:
            return evaluate.load(metric_path(canonical), **load_kwargs)
        path = os.path.normpath(os.fspath(metric))  # evaluate derives the script name from the basename
        if os.path.isdir(path):
            script = os.path.join(path, os.path.basename(path) + ".py")
            if not os.path.isfile(script):
                raise ValueError(
                    f"Metric folder {path!r} must contain {os.path.basename(path)}.py defining an evaluate.Metric."
                )
            return evaluate.load(path, **load_kwargs)
        if os.path.isfile(path) and path.endswith(".py"):
            return evaluate.load(path, **load_kwargs)
        raise _unknown_metric_error(metric)
    if callable(metric):
        return CallableMetric(metric)
    raise _unknown_metric_error(metric)


def compute_metrics_fn(
    metrics: MetricLike | Sequence[MetricLike] = ("accuracy", "f1"),
    *,
    ignore_index: int = -100,
) -> Callable[[Any], dict[str, Any]]:
    """Build a ``compute_metrics(eval_pred)`` for ``transformers.Trainer`` on classification outputs.

    Metrics are loaded once, here, so a bad name fails before training rather than at the first eval.
    Logits are reduced with argmax over the last axis (already-reduced class ids are used as is); if the
    model returns a tuple, its first element is taken as the logits. Positions whose label equals
    ``ignore_index`` (padding in token classification) are dropped. Returns one merged dict of all
    metrics; two metrics producing the same key raise instead of silently overwriting each other.
    """
    specs = (
        [metrics] if isinstance(metrics, (str, os.PathLike)) or not isinstance(metrics, Sequence) else metrics
    )
    loaded = [load_metric(spec) for spec in specs]
    if not loaded:
        raise ValueError("compute_metrics_fn needs at least one metric.")

    def compute_metrics(eval_pred: Any) -> dict[str, Any]:
        if hasattr(eval_pred, "predictions"):
            logits, labels = eval_pred.predictions, eval_pred.label_ids
        else:
            logits, labels = eval_pred[0], eval_pred[1]
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits, labels = np.asarray(logits), np.asarray(labels)
        preds = logits.argmax(axis=-1) if logits.ndim == labels.ndim + 1 else logits
        if preds.shape != labels.shape:
            raise ValueError(
                f"Predictions of shape {preds.shape} do not match labels of shape {labels.shape}."
            )
        keep = labels.reshape(-1) != ignore_index
        preds, labels = preds.reshape(-1)[keep].astype(np.int64), labels.reshape(-1)[keep].astype(np.int64)

        results: dict[str, Any] = {}
        for metric in loaded:
            for key, value in metric.compute(predictions=preds, references=labels).items():
                if key in results:
                    raise ValueError(
                        f"Two metrics both returned {key!r}; wrap one in a callable that returns a distinct key."
                    )
                results[key] = value
        return results

    return compute_metrics
