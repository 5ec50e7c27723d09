"""The fast linear probe: the LP of LP-FT (Kumar et al. 2022) without a training loop.

Features are extracted once from the frozen model (the input of the head's final linear layer), that layer is
fitted on them by L-BFGS logistic regression (scikit-learn) or closed-form ridge regression, and the result is
loaded into the layer in place. Fine-tuning then starts from a head that already fits the frozen features, so the
first updates do not distort the pretrained features to make up for a random head.

Both solvers fit on standardised features (L-BFGS converges far better, and ``C`` means the same for every
model) and fold the scaling back into the weight and bias: the loaded layer consumes the raw features and gives the
same predictions as the fitted estimator.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import default_data_collator

from hf_metatransfer.layers import LayerMap, build_layer_map, unwrap_model

logger = logging.getLogger(__name__)

Solver = Literal["logistic", "lstsq"]

#: Inverse regularisation strengths tried by ``C="auto"`` (on standardised features).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))

_LABEL_KEYS = ("labels", "label", "label_ids")
# The position of the token a model pools is written into its logits as two base-256 digits: integers up to 256
# are exact even in bfloat16, so sequences up to 65,536 tokens decode exactly.
_POSITION_BASE = 256


def find_probe_layer(model: nn.Module, layer_map: LayerMap | None = None) -> tuple[str, nn.Linear]:
    """The head's last ``nn.Linear`` with ``config.num_labels`` outputs: the layer a linear probe fits.

    Registration order puts a PEFT ``modules_to_save`` copy (the trainable one) after its frozen original.
    """
    layer_map = layer_map if layer_map is not None else build_layer_map(model)
    head = set(layer_map.head.param_names)
    inner = unwrap_model(model)
    num_labels = getattr(getattr(inner, "config", None), "num_labels", None)
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module.out_features != num_labels:
            continue
        if any(f"{name}.{p}" in head for p, _ in module.named_parameters(recurse=False)):
            found = (name, module)
    if found is None:
        raise ValueError(
            f"{type(inner).__name__} has no linear layer in its head with config.num_labels={num_labels} outputs; "
            "a linear probe needs a sequence-classification model (e.g. AutoModelForSequenceClassification)."
        )
    return found


def _forward_columns(model: nn.Module) -> set[str]:
    """Input names the model's forward takes by name, plus the label columns (as Trainer keeps them)."""
    params = inspect.signature(unwrap_model(model).forward).parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named | set(_LABEL_KEYS)


def _pop_labels(batch: dict[str, Any]) -> torch.Tensor:
    for key in _LABEL_KEYS:
        if key in batch:
            return torch.as_tensor(batch.pop(key)).long()
    raise ValueError(f"The dataset has no label column: expected one of {_LABEL_KEYS}, got {sorted(batch)}.")


def _pooled_positions(logits: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Decode the token positions the model pooled from logits the position hook wrote."""
    digits = logits[:, :2].double()
    positions = digits[:, 0] + _POSITION_BASE * digits[:, 1]
    if not torch.equal(positions, positions.round()) or positions.min() < 0 or positions.max() >= seq_len:
        raise ValueError(
            "The model does not pick one token's output of the probe layer per example (it mixes positions), "
            "so the probe layer's input cannot be read as one feature vector per example."
        )
    return positions.long()


def extract_features(
    model: nn.Module,
    dataset: Iterable[dict[str, Any]],
    data_collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    layer_map: LayerMap | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe layer's inputs (float32, CPU, ``[n, d]``) and the labels (``[n]``), in dataset order.

    A forward hook reads the features, so whatever the head does before its last layer (RoBERTa's dense + tanh,
    BERT's pooler) is part of the frozen feature map. Decoder models apply their ``score`` layer to every token and
    pool afterwards; the hook then writes each token's position into the layer's output, and the model's own
    pooling (last non-pad token, either padding side) tells which token's features it used.
    """
    name, layer = find_probe_layer(model, layer_map)
    collate = data_collator or default_data_collator
    keep = _forward_columns(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        collate_fn=lambda rows: collate([{k: v for k, v in row.items() if k in keep} for row in rows]),
    )

    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if captured:
            raise RuntimeError("The probe layer ran twice in one forward; its input is not one feature map.")
        x = args[0]
        captured.append(x.detach())
        if x.dim() == 2:
            return None
        positions = torch.arange(x.shape[1], device=output.device).expand(x.shape[:2])
        encoded = torch.zeros_like(output)
        encoded[..., 0] = positions % _POSITION_BASE
        encoded[..., 1] = positions // _POSITION_BASE
        return encoded

    modes = {m: m.training for m in model.modules()}
    handle = layer.register_forward_hook(hook)
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="Linear probe: extracting features", leave=False):
                labels.append(_pop_labels(batch))
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                captured.clear()
                outputs = model(**inputs)
                if not captured:
                    raise RuntimeError(f"The probe layer {name} did not run (are the adapters disabled?).")
                x = captured[0]
                if x.dim() == 3:
                    logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
                    x = x[
                        torch.arange(x.shape[0], device=x.device),
                        _pooled_positions(logits, x.shape[1]).to(x.device),
                    ]
                elif x.dim() != 2:
                    raise ValueError(
                        f"The probe layer's input has shape {tuple(x.shape)}; expected 2 or 3 dims."
                    )
                features.append(x.float().cpu())
    finally:
        handle.remove()
        for module, training in modes.items():
            module.train(training)
    return torch.cat(features), torch.cat(labels)


#: a feature whose std is below this fraction of the largest feature std is constant (rounding noise)
NEGLIGIBLE_STD = 1e-6


def _standardised_fit(
    x: np.ndarray,
    y: np.ndarray,
    num_labels: int,
    solver: Solver,
    c: float,
    fit_intercept: bool,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fit on standardised features, then fold the scaling into weight and bias (float64).

    BLAS is held to one thread: on matrices this small, OpenBLAS's threads fight any other load on the cores and a
    fit took 100x longer (benchmarks/fast_linear_probe.py: 341 s against 4.5 s for the same 36 fits).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_standardised(x, y, num_labels, solver, c, fit_intercept, max_iter)


def _fit_standardised(
    x: np.ndarray,
    y: np.ndarray,
    num_labels: int,
    solver: Solver,
    c: float,
    fit_intercept: bool,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    scaler = StandardScaler(with_mean=fit_intercept).fit(x)
    # A feature that is constant up to rounding (all-MiniLM-L6-v2's mean-pooled features have one with std 6.5e-33)
    # escapes scikit-learn's zero-variance check; dividing by its std gives weights of 1e30 that any change of the
    # features (fine-tuning the body after the probe, fp16) turns into inf logits. Such features are left unscaled.
    scaler.scale_[scaler.scale_ <= NEGLIGIBLE_STD * scaler.scale_.max()] = 1.0
    xs = scaler.transform(x)
    if solver == "logistic":
        w, b = _fit_logistic(xs, y, num_labels, c, fit_intercept, max_iter)
    else:
        w, b = _fit_ridge(torch.from_numpy(xs), torch.from_numpy(y), num_labels, c, fit_intercept)
    weight = w / torch.from_numpy(scaler.scale_)
    if b is None:
        return weight, None
    return weight, b - weight @ torch.from_numpy(scaler.mean_)


def _fit_logistic(
    xs: np.ndarray, y: np.ndarray, num_labels: int, c: float, fit_intercept: bool, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multinomial L-BFGS logistic regression, laid out as a ``num_labels``-row linear layer.

    scikit-learn fits one sigmoid vector for two classes; rows ``-w/2`` and ``+w/2`` give the same probabilities
    under softmax. Classes absent from the data get a zero row whose bias sits below every other logit on the
    training features, so the layer never predicts them there (as scikit-learn never does), yet fine-tuning can
    still raise them.
    """
    clf = LogisticRegression(C=c, fit_intercept=fit_intercept, max_iter=max_iter).fit(xs, y)
    coef = torch.from_numpy(clf.coef_)
    intercept = torch.from_numpy(np.atleast_1d(clf.intercept_).astype(np.float64))
    if len(clf.classes_) == 2:
        coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
    rows = torch.from_numpy(clf.classes_).long()
    weight = torch.zeros(num_labels, xs.shape[1], dtype=torch.float64)
    weight[rows] = coef
    if not fit_intercept:
        return weight, None
    bias = torch.full(
        (num_labels,), (torch.from_numpy(xs) @ coef.T + intercept).min().item() - 1.0, dtype=torch.float64
    )
    bias[rows] = intercept
    return weight, bias


def _fit_ridge(
    x: torch.Tensor, y: torch.Tensor, num_labels: int, c: float, fit_intercept: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge regression onto one-hot targets, ``(X'X + I/C) W = X'Y`` on centred X and Y (penalty as sklearn's)."""
    targets = torch.nn.functional.one_hot(y.long(), num_labels).double()
    x_mean = x.mean(0) if fit_intercept else torch.zeros(x.shape[1], dtype=x.dtype)
    y_mean = targets.mean(0) if fit_intercept else torch.zeros(num_labels, dtype=x.dtype)
    xc, yc = x - x_mean, targets - y_mean
    gram = xc.T @ xc + torch.eye(x.shape[1], dtype=x.dtype) / c
    weight = torch.linalg.solve(gram, xc.T @ yc).T
    return weight, (y_mean - weight @ x_mean) if fit_intercept else None


def _as_numpy(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(features).detach().cpu().double().numpy()
    y = torch.as_tensor(labels).detach().cpu().long().numpy()
    if num_labels < 2:
        raise ValueError(f"A linear probe needs a classification head (num_labels >= 2), got {num_labels}.")
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"Expected features [n, d] and labels [n], got {x.shape} and {y.shape}.")
    if y.min() < 0 or y.max() >= num_labels:
        raise ValueError(f"Labels must lie in 0..{num_labels - 1}, got {y.min()}..{y.max()}.")
    if len(np.unique(y)) < 2:
        raise ValueError("A linear probe needs examples of at least two classes.")
    return x, y


def _solver(solver: str) -> Solver:
    if solver not in ("logistic", "lstsq"):
        raise ValueError(f"Unknown solver {solver!r}: use 'logistic' or 'lstsq'.")
    return solver  # type: ignore[return-value]


def select_C(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    solver: Solver = "logistic",
    fit_intercept: bool = True,
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    max_iter: int = 1000,
) -> float:
    """``C`` by stratified k-fold CV: best held-out accuracy, ties to the lower held-out loss of the fit's objective.

    Few-shot sets tie on accuracy often; the loss (cross-entropy, or squared error for ``lstsq``) then prefers a
    calibrated head, which is what LP-FT wants fine-tuning to start from. Falls back to ``C=1`` when a class has a
    single example.
    """
    x, y = _as_numpy(features, labels, num_labels)
    solver = _solver(solver)
    n_splits = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    if n_splits < 2:
        warnings.warn(
            "A class has a single example: no cross-validation possible, using C=1.0.", stacklevel=2
        )
        return 1.0
    splits = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0).split(x, y))
    scores: dict[float, tuple[float, float]] = {}
    for c in Cs:
        accuracy, loss = 0.0, 0.0
        for train, val in splits:
            weight, bias = _standardised_fit(
                x[train], y[train], num_labels, solver, c, fit_intercept, max_iter
            )
            logits = torch.from_numpy(x[val]) @ weight.T + (0 if bias is None else bias)
            target = torch.from_numpy(y[val])
            accuracy += (logits.argmax(-1) == target).double().mean().item() / n_splits
            if solver == "logistic":
                loss += torch.nn.functional.cross_entropy(logits, target).item() / n_splits
            else:
                onehot = torch.nn.functional.one_hot(target, num_labels).double()
                loss += ((logits - onehot) ** 2).sum(-1).mean().item() / n_splits
        scores[float(c)] = (accuracy, -loss)
    best = max(scores, key=scores.__getitem__)
    logger.info(
        "Linear probe: picked C=%.3g by %d-fold CV (accuracy %.4f); tried %s",
        best,
        n_splits,
        scores[best][0],
        {f"{c:.3g}": round(s[0], 4) for c, s in scores.items()},
    )
    return best


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    solver: Solver = "logistic",
    C: float | Literal["auto"] = 1.0,
    max_iter: int = 1000,
    fit_intercept: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``[num_labels, d]`` and bias ``[num_labels]`` (None without intercept), float32, for raw features.

    ``solver="logistic"``: scikit-learn multinomial logistic regression (L-BFGS), penalty ``||W||^2 / (2C)``.
    ``solver="lstsq"``: closed-form ridge regression onto one-hot targets, the same penalty. ``C="auto"`` runs
    :func:`select_C` (which logs the ``C`` it picked).
    """
    x, y = _as_numpy(features, labels, num_labels)
    solver = _solver(solver)
    if C == "auto":
        C = select_C(features, labels, num_labels, solver, fit_intercept, max_iter=max_iter)
    weight, bias = _standardised_fit(x, y, num_labels, solver, float(C), fit_intercept, max_iter)
    return weight.float(), None if bias is None else bias.float()


def fast_linear_probe(
    model: nn.Module,
    train_dataset: Iterable[dict[str, Any]],
    data_collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None,
    *,
    solver: Solver = "logistic",
    C: float | Literal["auto"] = "auto",
    batch_size: int = 64,
    layer_map: LayerMap | None = None,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Extract features, fit the probe layer on them and load the fit into the model in place.

    Only the probe layer's weight (and bias) change; a layer without bias (decoder ``score`` layers) is fitted
    without intercept. Returns ``{"layer", "train_accuracy", "C", "seconds", "num_examples", "solver"}``, where
    ``train_accuracy`` is that of the loaded layer (in its own dtype) on the training features.
    """
    start = time.perf_counter()
    layer_map = layer_map if layer_map is not None else build_layer_map(model)
    name, layer = find_probe_layer(model, layer_map)
    num_labels = layer.out_features
    solver = _solver(solver)
    features, labels = extract_features(model, train_dataset, data_collator, batch_size, layer_map=layer_map)
    fit_intercept = layer.bias is not None
    if C == "auto":
        C = select_C(features, labels, num_labels, solver, fit_intercept, max_iter=max_iter)
    weight, bias = fit_probe(features, labels, num_labels, solver, C, max_iter, fit_intercept)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    logits = features @ layer.weight.detach().float().cpu().T
    if layer.bias is not None:
        logits += layer.bias.detach().float().cpu()
    return {
        "layer": name,
        "train_accuracy": (logits.argmax(-1) == labels).float().mean().item(),
        "C": float(C),
        "seconds": time.perf_counter() - start,
        "num_examples": len(labels),
        "solver": solver,
    }
