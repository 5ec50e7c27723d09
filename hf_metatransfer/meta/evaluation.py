"""Meta-testing: adapt to each test episode, score its queries, mean accuracy with a 95% Student-t CI and adaptation
time.

The non-meta baselines run through the same harness on the same episodes: nearest class centroid on frozen
features, a linear probe on frozen features, fine-tuning, LP-FT, and fine-tuning from a prototype-initialised head
(Proto-MAML style); the fine-tuning methods can choose their LR per episode by cross-validation on the support set.
Each is an object with ``predict(model, support, query) -> query logits`` like the meta-learning algorithms.
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..block_replay import Replay, replay_lower_blocks
from ..episodes.collate import micro_batches
from ..episodes.episode import Episode
from ..episodes.user import UserEpisodes
from ..stats import confidence_interval
from .algorithms import Batch, ProtoNets, model_inputs


@dataclass
class MetaTestResult:
    method: str
    accuracy: float
    ci95: float
    seconds_per_episode: float
    episodes: int
    per_episode: list[float]
    #: how the method adapts (solver, steps, LRs, regularisation): a figure means little without it
    settings: str = ""
    #: the header of a table of ``row()`` lines
    TABLE_HEADER: ClassVar[str] = (
        "| method | settings | accuracy (%) +- 95% CI | adaptation s/episode | episodes |\n|---|---|---|---|---|"
    )

    def row(self) -> str:
        return (f"| {self.method} | {self.settings} | {100 * self.accuracy:.1f} +- {100 * self.ci95:.1f} | "
                f"{self.seconds_per_episode:.3f} | {self.episodes} |")  # fmt: skip


class NearestCentroid(ProtoNets):
    """Class centroids of frozen, mean-pooled, L2-normalised embeddings; the nearest by cosine wins."""

    name = "nearest-centroid"
    settings = "frozen model, nothing trained: nearest class centroid of L2-normalised mean-pooled embeddings"

    def embed(self, model: nn.Module, weights, batch: Batch) -> torch.Tensor:
        return F.normalize(super().embed(model, weights, batch), dim=-1)


class LinearProbe(NearestCentroid):
    """Logistic regression (L-BFGS, scikit-learn, via ``fit_probe``) on the frozen embeddings of the support set."""

    name = "linear-probe"

    def __init__(self, C: float = 10.0) -> None:
        super().__init__()
        self.C = C

    @property
    def settings(self) -> str:
        """Stated in results: C = 10 on standardised features is not scikit-learn's default probe."""
        return (f"frozen model: logistic regression, C={self.C:g} on standardised L2-normalised mean-pooled "
                "embeddings (scikit-learn L-BFGS, max_iter 1000)")  # fmt: skip

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        from ..finetune.linear_probe import fit_probe

        with torch.no_grad():
            s = self.embed(model, self.weights(model), support).cpu()
            q = self.embed(model, self.weights(model), query).cpu()
        labels = support["labels"].cpu()
        weight, bias = fit_probe(s, labels, int(labels.max()) + 1, C=self.C)
        return q @ weight.T + bias


#: the body LRs ``lr="cv"`` chooses from: 4x apart, around FineTune's fixed default of 5e-5
CV_LRS = (1e-5, 5e-5, 2e-4)


def stratified_folds(labels: torch.Tensor, folds: int) -> list[torch.Tensor]:
    """Held-out indices of ``min(folds, smallest class)`` folds: every example held out once, and every fold leaves
    at least one example of each class in training (so the fold's classifier still has every class).

    The i-th example of class c goes to fold ``(i + c) % folds``: deterministic, and the fold sizes stay even.
    """
    labels = labels.cpu()
    counts = torch.bincount(labels)
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("Cross-validation needs at least 2 support examples of every class.")
    fold_of = torch.empty_like(labels)
    for c in labels.unique().tolist():
        where = (labels == c).nonzero().squeeze(1)
        fold_of[where] = (torch.arange(len(where)) + c) % folds
    return [(fold_of == f).nonzero().squeeze(1) for f in range(folds)]


def _rows(batch: Batch, index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index.to(v.device)] for k, v in batch.items()}


class SupportTuned(ABC):
    """A method that trains a copy of the model on the support set, with a body LR that is fixed or chosen per
    episode by cross-validation over the support set: a LR tuned on test episodes would flatter the method, and
    one LR for every episode fits few of them.

    ``lr``: a number, ``"cv"`` (choose from ``CV_LRS``) or a list of candidate LRs. The choice maximises the
    held-out accuracy over ``cv_folds`` stratified folds (``stratified_folds``: each support example held out once),
    ties broken by lower held-out cross-entropy, then by the order of the grid; the method then trains on the whole
    support with it. An episode with a class of a single support example has nothing to hold out: it falls back to
    ``fallback_lr``, and ``settings`` says how often. ``chosen_lrs`` and ``cv_scores`` (``{lr: (accuracy, loss)}``)
    keep each cross-validated episode's choice and its evidence.

    ``body_blocks``: train only the top that many transformer blocks (``None``: the whole body, embeddings
    included). The blocks below then run once an episode and their output is replayed at every step
    (``replay_lower_blocks``), so a step costs the top blocks only; the embeddings stay frozen, so the depth
    itself trains every block but them (a multilingual vocabulary's embedding matrix can hold most of the
    parameters: 96M of multilingual-e5-small's 118M, all updated by every AdamW step).

    ``micro_batch_size``: each full-batch step accumulates its gradient over length-sorted micro-batches of at most
    that many support examples (``micro_batches``): the same step, without the pad tokens of padding every text
    to the episode's longest (``benchmarks/block_replay.py`` times both; ``None``: the support in one batch, which
    a GPU with memory to spare may run faster).

    ``autocast_dtype``: the steps' forward passes run under ``torch.autocast`` in that dtype (``torch.bfloat16``:
    mixed precision, the weights and AdamW's state stay in float32). A GPU, or a CPU with bfloat16 instructions
    (avx512_bf16, AMX), runs them faster; elsewhere it is slower. ``None`` (default): float32.
    """

    def __init__(self, lr: float | str | Sequence[float], head_lr: float, steps: int, cv_folds: int,
                 fallback_lr: float, body_blocks: int | None = None, micro_batch_size: int | None = 16,
                 autocast_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        if isinstance(lr, str):
            if lr != "cv":
                raise ValueError(f'lr={lr!r}: give a number, "cv" (choose from {CV_LRS}) or a list of LRs.')
            lr = CV_LRS
        self.grid: tuple[float, ...] | None = None if isinstance(lr, int | float) else tuple(lr)
        if self.grid is not None and not self.grid:
            raise ValueError('lr=[]: an empty grid has no LR to choose; give candidate LRs or lr="cv".')
        for what, value in [("lr", v) for v in self.grid or (lr,)] + [("head_lr", head_lr),
                                                                      ("fallback_lr", fallback_lr)]:  # fmt: skip
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{what}={value!r}: a learning rate is a finite number >= 0.")
        if steps < 0:
            raise ValueError(f"steps={steps}: the number of AdamW steps is >= 0.")
        if cv_folds < 2:
            raise ValueError(f"cv_folds={cv_folds}: cross-validation needs at least 2 folds.")
        if body_blocks is not None and body_blocks < 1:
            raise ValueError(
                f"body_blocks={body_blocks}: the number of top blocks to train, >= 1 (None: all)."
            )
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(
                f"micro_batch_size={micro_batch_size}: >= 1, or None for the support in one batch."
            )
        self.body_blocks, self.micro_batch_size, self.autocast_dtype = (
            body_blocks,
            micro_batch_size,
            autocast_dtype,
        )
        self.lr = fallback_lr if self.grid is not None else float(lr)
        self.head_lr, self.steps, self.cv_folds, self.fallback_lr = head_lr, steps, cv_folds, fallback_lr
        self.chosen_lrs: list[float] = []
        self.cv_scores: list[dict[float, tuple[float, float]]] = []
        self.fallbacks = 0

    def trainable_body(self, tuned: nn.Module) -> set[str]:
        """Names of the body parameters that train: every trainable one, or those of the top ``body_blocks``
        blocks (the model's own head, part of the layer map's top, is left to the method)."""
        if self.body_blocks is None:
            return {n for n, p in tuned.named_parameters() if p.requires_grad}
        from ..layers import build_layer_map
        from .fast_weights import fast_weight_names

        layer_map = build_layer_map(tuned)
        top = set(fast_weight_names(tuned, "top_k", top_k=self.body_blocks, layer_map=layer_map))
        return top - set(layer_map.head.param_names)

    def training_steps(self, tuned: nn.Module, chunks: list[Batch]) -> AbstractContextManager[Replay]:
        """Where the steps on the support's micro-batches run: with ``body_blocks``, the frozen blocks below replay
        their output (``Replay.select`` names the micro-batch)."""
        if self.body_blocks is None:
            return nullcontext(Replay(len(chunks)))
        return replay_lower_blocks(tuned, self.body_blocks, [model_inputs(c) for c in chunks])

    def train_on_support(self, tuned: nn.Module, support: Batch, optimizer: torch.optim.Optimizer,
                         loss: Callable[[Batch], torch.Tensor]) -> None:  # fmt: skip
        """``steps`` full-batch steps of ``optimizer`` on ``loss`` (a mean over the rows of the batch it is given),
        the gradient of each accumulated over the support's micro-batches."""
        chunks = micro_batches(support, self.micro_batch_size)
        rows = len(support["labels"])
        device = support["labels"].device.type
        with self.training_steps(tuned, chunks) as replay:
            for _ in range(self.steps):
                optimizer.zero_grad()
                for i, chunk in enumerate(chunks):
                    replay.select(i)
                    with torch.autocast(
                        device, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
                    ):
                        value = loss(chunk).float() * (len(chunk["labels"]) / rows)
                    value.backward()
                optimizer.step()

    def _body_settings(self) -> str:
        if self.body_blocks is None:
            body = "the whole body"
        else:
            body = (f"the top {self.body_blocks} block(s), embeddings frozen (any frozen block below runs once an "
                    "episode, its output replayed at each step)")  # fmt: skip
        if self.micro_batch_size is not None:
            body += f", gradients accumulated over length-sorted micro-batches of <= {self.micro_batch_size}"
        if self.autocast_dtype is not None:
            body += f", forward under {str(self.autocast_dtype).removeprefix('torch.')} autocast"
        return body

    @abstractmethod
    def fit_predict(self, model: nn.Module, support: Batch, query: Batch, lr: float) -> torch.Tensor:
        """Train a copy of ``model`` on ``support`` with body LR ``lr``; the query logits."""

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        return self.fit_predict(model, support, query, self.choose_lr(model, support))

    def choose_lr(self, model: nn.Module, support: Batch) -> float:
        """The fixed LR, or the grid's best by cross-validation on ``support`` (recorded in ``chosen_lrs``)."""
        if self.grid is None:
            return self.lr
        labels = support["labels"]
        if int(torch.bincount(labels.cpu()).min()) < 2:
            self.fallbacks += 1
            return self.fallback_lr
        folds = stratified_folds(labels, self.cv_folds)
        scores = {}
        for lr in self.grid:
            correct, loss = 0.0, 0.0
            for held_out in folds:
                train = torch.ones(len(labels), dtype=torch.bool)
                train[held_out] = False
                val = _rows(support, held_out)
                logits = self.fit_predict(model, _rows(support, train.nonzero().squeeze(1)), val, lr)
                correct += (logits.argmax(-1) == val["labels"]).sum().item()
                loss += F.cross_entropy(logits.float(), val["labels"], reduction="sum").item()
            scores[lr] = (correct / len(labels), loss / len(labels))
        best = max(self.grid, key=lambda lr: (scores[lr][0], -scores[lr][1]))  # max() keeps the first of ties
        self.chosen_lrs.append(best)
        self.cv_scores.append(scores)
        return best

    def _lr_settings(self) -> str:
        """The LR part of ``settings``: the fixed LRs, or the grid, how it is chosen and what was chosen so far."""
        if self.grid is None:
            return f"LR {self.lr:g} body / {self.head_lr:g} head"
        folds = f"{self.cv_folds}-fold" + ("" if self.cv_folds == 2 else " (at most K-fold)")
        text = (f"body LR chosen per episode from {{{', '.join(f'{lr:g}' for lr in self.grid)}}} by {folds} "
                "stratified cross-validation on the support set (held-out accuracy, ties by loss), then trained on "
                f"the whole support; head LR {self.head_lr:g}")  # fmt: skip
        if self.chosen_lrs:
            tally = ", ".join(
                f"{lr:g} x{self.chosen_lrs.count(lr)}" for lr in self.grid if lr in self.chosen_lrs
            )
            text += f"; chosen: {tally}"
        if self.fallbacks:
            text += (f"; {self.fallbacks} episode(s) fell back to LR {self.fallback_lr:g}: a class had 1 support "
                     "example, none to hold out (K = 1)")  # fmt: skip
        return text


class FineTune(SupportTuned):
    """Fine-tune a copy of the model on the support set (AdamW, ``steps`` full-batch steps), then predict.

    With ``lp_ft`` the head is first fitted by a linear probe on frozen features (LP-FT). ``lr="cv"`` or a list
    chooses the body LR per episode, ``body_blocks`` trains only the top blocks, ``micro_batch_size`` bounds the
    rows a forward holds, ``autocast_dtype`` runs the steps in mixed precision (see ``SupportTuned``).
    ``transductive`` (a ``TransductivePrototypes``): the queries are scored by it on the tuned encoder instead of by
    the trained head (transductive: it reads the query batch).
    """

    def __init__(self, steps: int = 20, lr: float | str | Sequence[float] = 5e-5, head_lr: float = 1e-2,
                 lp_ft: bool = False, probe_C: float = 1.0, cv_folds: int = 2, fallback_lr: float = 5e-5,
                 transductive: ProtoNets | None = None, body_blocks: int | None = None,
                 micro_batch_size: int | None = 16, autocast_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__(
            lr, head_lr, steps, cv_folds, fallback_lr, body_blocks, micro_batch_size, autocast_dtype
        )
        self.lp_ft, self.probe_C, self.transductive = lp_ft, probe_C, transductive
        self.name = (("lp-ft" if lp_ft else "fine-tuning") + (" + transductive" if transductive else "")
                     + (", cv lr" if self.grid is not None else ""))  # fmt: skip

    @property
    def settings(self) -> str:
        """Stated in results, so the figures compare with another paper's fine-tuning."""
        probe = (f"head first fitted by logistic regression, C={self.probe_C:g} on its standardised inputs; "
                 if self.lp_ft else "")  # fmt: skip
        scored = (
            ""
            if self.transductive is None
            else f"; queries scored on the tuned encoder by: {self.transductive.settings}"
        )
        return (f"{probe}{self.steps} full-batch AdamW steps (weight decay 0.01) of head and "
                f"{self._body_settings()} on the support set, {self._lr_settings()}, dropout off{scored}")  # fmt: skip

    def fit_predict(self, model: nn.Module, support: Batch, query: Batch, lr: float) -> torch.Tensor:
        tuned = self.tune(model, support, lr)
        if self.transductive is not None:
            return self.transductive.predict(tuned, support, query)
        with torch.no_grad():
            return tuned(**model_inputs(query)).logits

    def tune(self, model: nn.Module, support: Batch, lr: float) -> nn.Module:
        """A copy of ``model`` (LP-FT: probed, then) fine-tuned on ``support`` with body LR ``lr``."""
        from ..finetune.linear_probe import find_probe_layer, fit_probe
        from ..layers import build_layer_map

        tuned = copy.deepcopy(model).train(False)
        layer_map = build_layer_map(tuned)
        head = set(layer_map.head.param_names)
        if self.lp_ft:
            name, layer = find_probe_layer(tuned, layer_map)
            captured = []
            handle = layer.register_forward_hook(lambda m, a, o: captured.append(a[0].detach()))
            with torch.no_grad():
                tuned(**model_inputs(support))
            handle.remove()
            weight, bias = fit_probe(captured[0], support["labels"].cpu(), layer.out_features, C=self.probe_C)
            with torch.no_grad():
                layer.weight.copy_(weight.to(layer.weight))
                if layer.bias is not None and bias is not None:
                    layer.bias.copy_(bias.to(layer.bias))
        body = self.trainable_body(tuned) - head
        for n, p in tuned.named_parameters():
            p.requires_grad_(n in head or n in body)
        groups = [
            {"params": [p for n, p in tuned.named_parameters() if n in head], "lr": self.head_lr},
            {"params": [p for n, p in tuned.named_parameters() if n in body], "lr": lr},
        ]
        loss = lambda batch: F.cross_entropy(tuned(**model_inputs(batch)).logits, batch["labels"])  # noqa: E731
        self.train_on_support(tuned, support, torch.optim.AdamW(groups), loss)
        return tuned.eval()


class ProtoHeadFineTune(SupportTuned):
    """Proto-MAML-style fine-tuning (Triantafillou et al. 2020): a linear head on the mean-pooled embeddings,
    initialised from the support prototypes so that before any step its logits are the prototype classifier's, then
    trained with the body on the support set (``steps`` full-batch AdamW steps, dropout off); predicts the queries.

    The head starts where nearest-centroid already is, instead of at random (fine-tuning) or at a probe fitted on
    frozen features (LP-FT), so the first steps refine a good classifier. For squared Euclidean distance,
    ``-||q - c||^2 = 2 c.q - ||c||^2 - ||q||^2``: ``W_c = 2 c_c``, ``b_c = -||c_c||^2`` gives those logits up to
    ``||q||^2``, a constant per query. ``normalize`` (default) L2-normalises the embeddings as ``NearestCentroid``
    does, the geometry sentence encoders are trained for (then ``||q||^2 = 1`` and the logits are nearest-centroid's
    plus 1); ``normalize=False`` matches ``ProtoNets``' raw embeddings, for an encoder meta-trained by it. The head
    is built here, so any model ``NearestCentroid`` takes works (its own classification head, if any, is unused).
    ``body_blocks``, ``micro_batch_size`` and ``autocast_dtype``: see ``SupportTuned``. ``head_lr`` is 10x below
    ``FineTune``'s: the head starts at a good classifier, and on unit-norm embeddings its weights are ~0.1, so AdamW
    steps of 1e-2 would leave the prototypes within a few steps.
    """

    def __init__(self, steps: int = 20, lr: float | str | Sequence[float] = 5e-5, head_lr: float = 1e-3,
                 normalize: bool = True, body_blocks: int | None = None, cv_folds: int = 2,
                 fallback_lr: float = 5e-5, micro_batch_size: int | None = 16,
                 autocast_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__(
            lr, head_lr, steps, cv_folds, fallback_lr, body_blocks, micro_batch_size, autocast_dtype
        )
        self.normalize = normalize
        self.name = "proto-head-ft" + (", cv lr" if self.grid is not None else "")

    @property
    def settings(self) -> str:
        space = "L2-normalised" if self.normalize else "raw (unnormalised)"
        return (f"linear head on {space} mean-pooled embeddings initialised from the support prototypes "
                f"(W = 2c, b = -||c||^2: the nearest-prototype logits), then {self.steps} full-batch AdamW steps "
                f"(weight decay 0.01) of head and {self._body_settings()} on the support set, "
                f"{self._lr_settings()}, dropout off")  # fmt: skip

    def _embed(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        pooled = ProtoNets.pooled(model, ProtoNets.weights(model), batch)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def fit_predict(self, model: nn.Module, support: Batch, query: Batch, lr: float) -> torch.Tensor:
        tuned = copy.deepcopy(model).train(False)
        labels = support["labels"]
        body = self.trainable_body(tuned)
        for n, p in tuned.named_parameters():
            p.requires_grad_(n in body)
        with torch.no_grad():
            s = self._embed(tuned, support)
            centroids = torch.stack([s[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
        weight = nn.Parameter(2 * centroids)
        bias = nn.Parameter(-centroids.pow(2).sum(-1))
        optimizer = torch.optim.AdamW([
            {"params": [weight, bias], "lr": self.head_lr},
            {"params": [p for n, p in tuned.named_parameters() if n in body], "lr": lr},
        ])  # fmt: skip
        loss = lambda batch: F.cross_entropy(self._embed(tuned, batch) @ weight.T + bias, batch["labels"])  # noqa: E731
        self.train_on_support(tuned, support, optimizer, loss)
        with torch.no_grad():
            return self._embed(tuned, query) @ weight.T + bias


def meta_test(
    model: nn.Module,
    method,
    episodes: Iterable[Episode] | UserEpisodes,
    collate: Callable[[Episode], dict] | None = None,
    *,
    name: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_seconds: float | None = None,
) -> MetaTestResult:
    """Adapt ``method`` to every episode and score its queries: mean accuracy, 95% CI, seconds an episode.

    Episodes hold row numbers, so ``collate`` must read the data they index; ``user_episodes(...)`` carry theirs.
    With ``max_seconds`` it stops after the episode that reaches that much wall time (at least one episode is
    scored): a slow method on a shared machine gives a figure on fewer episodes instead of holding everything up;
    ``result.episodes`` says how many.
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(
            f"max_seconds={max_seconds}: give a positive time budget in seconds, or None for no limit."
        )
    if isinstance(episodes, UserEpisodes):
        if collate is not None and collate is not episodes.collate:
            raise ValueError("These user episodes index their own tokenised texts and carry the collator that "
                             "reads them: call meta_test(model, method, episodes) without collate.")  # fmt: skip
        collate = episodes.collate
    elif collate is None:
        raise ValueError("meta_test needs collate=... to turn episodes (row numbers) into tensors: an "
                         "EpisodeCollator over the tokenised data they index, or build the episodes with "
                         "hf_metatransfer.episodes.user_episodes(...), which carry their own.")  # fmt: skip
    model.eval()
    accuracies, seconds, began = [], 0.0, time.perf_counter()
    episodes = list(episodes)
    for episode in tqdm(episodes, desc=f"Meta-testing {name or method.name}", disable=not progress):
        if accuracies and max_seconds is not None and time.perf_counter() - began >= max_seconds:
            break
        batch = collate(episode)
        support = {k: v.to(device) for k, v in batch["support"].items()}
        query = {k: v.to(device) for k, v in batch["query"].items()}
        start = time.perf_counter()
        logits = method.predict(model, support, query)
        seconds += time.perf_counter() - start
        accuracies.append((logits.argmax(-1).cpu() == query["labels"].cpu()).float().mean().item())
    mean, half = confidence_interval(accuracies)
    return MetaTestResult(
        name or method.name, mean, half, seconds / max(len(accuracies), 1), len(accuracies), accuracies,
        settings=getattr(method, "settings", ""),
    )  # fmt: skip
