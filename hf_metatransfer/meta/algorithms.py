"""MAML, first-order MAML, Reptile, ANIL, ProtoNets and Meta-SGD behind one interface, on torch.func.

Each algorithm turns one task (support and query batches of an episode) into a gradient for the meta-parameters
(``task_gradient``) and adapts to a task for meta-testing (``predict``). The model is any Hub sequence classifier
whose head is N-way; its parameters stay untouched during the inner loop: adapted (fast) weights are tensors
passed to ``torch.func.functional_call``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..pooling import mean_pool
from .compat import masks_traced_under_functorch
from .fast_weights import fast_weight_names

logger = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "protonets", "metasgd")
# cross_entropy: N-way classification; mse: regression; lm: the model's own token loss on ``labels`` (-100 where
# ignored), for sequence-to-sequence and causal LMs (translation tasks).
TASK_LOSSES = ("cross_entropy", "mse", "lm")


@dataclass
class TaskResult:
    """A task's contribution: gradients by parameter name (None if skipped), and what to log.

    From ``batch_task_gradient``: the means over the tasks that were kept, and ``skipped``, how many tasks of the
    batch had a non-finite loss or gradient and were left out (``grads`` is None only if every task was).
    """

    grads: dict[str, torch.Tensor] | None
    loss: float
    accuracy: float
    skipped: int = 0


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """Everything in a batch but the labels goes to the model's forward."""
    return {k: v for k, v in batch.items() if k != "labels"}


class MetaAlgorithm:
    """Shared inner loop: ``inner_steps`` of SGD on the support loss over the fast weights.

    ``loss_scale`` (set by the trainer before each meta-step) multiplies every loss the algorithm
    differentiates, and the gradients are divided by it right after: under fp16 autocast small gradients
    then survive the fp16 backward. Returned gradients, inner-loop updates and reported losses are unscaled;
    a scale too large for fp16 gives inf gradients, and those tasks are skipped. ``vmap_fallbacks`` counts
    the calls of ``batch_task_gradient`` whose vmap path failed and ran one task at a time.
    """

    name = "base"
    second_order = False

    def __init__(self, inner_steps: int = 1, inner_lr: float = 0.01, fast_weights: str = "all", top_k: int = 1,
                 loss: str = "cross_entropy"):  # fmt: skip
        if inner_steps < 0 or inner_lr < 0:
            raise ValueError("inner_steps and inner_lr must be >= 0.")
        if loss not in TASK_LOSSES:
            raise ValueError(f"loss must be one of {TASK_LOSSES}: 'cross_entropy' (classification), 'mse' "
                             "(regression) or 'lm' (token loss of a seq2seq or causal LM, e.g. translation).")  # fmt: skip
        self.inner_steps, self.inner_lr, self.loss_type = inner_steps, inner_lr, loss
        self.fast_weights, self.top_k = fast_weights, top_k
        self.fast: list[str] = []
        self.shift_labels = False  # causal LMs: logits at t predict the label at t + 1 (token accuracy)
        self.loss_scale = 1.0
        self.vmap_fallbacks = 0
        self._vmap_errors_logged: set[tuple[str, str]] = set()

    @property
    def settings(self) -> str:
        """How it adapts to a task, for results tables and cards (a figure means little without it)."""
        fast = f"top {self.top_k} blocks" if self.fast_weights == "top_k" else self.fast_weights
        steps = f"{self.inner_steps} inner SGD step{'s' * (self.inner_steps != 1)}"
        return f"{steps} ({self._rate}) on the support set, fast weights: {fast}"

    @property
    def _rate(self) -> str:
        return f"LR {self.inner_lr:g}"

    # -- set-up --------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Resolve the fast weights of ``model`` (call once, before training)."""
        self.fast = fast_weight_names(model, self.fast_weights, top_k=self.top_k)
        config = getattr(model, "config", None)
        self.shift_labels = config is not None and not getattr(config, "is_encoder_decoder", False)

    def meta_parameters(self) -> list[nn.Parameter]:
        """Parameters the algorithm adds to the model's (Meta-SGD's inner LRs)."""
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        return None

    # -- functional pieces ---------------------------------------------------------------------------------
    @staticmethod
    def weights(model: nn.Module) -> dict[str, torch.Tensor]:
        return {**dict(model.named_parameters()), **dict(model.named_buffers())}

    def logits(self, model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The model's outputs (``.logits`` of a transformers model, or the tensor a plain module returns)."""
        out = functional_call(model, dict(weights), args=(), kwargs=model_inputs(batch))
        return out.logits if hasattr(out, "logits") else out

    def loss(
        self, model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_type == "lm":
            out = functional_call(model, dict(weights), args=(), kwargs=dict(batch))
            return out.loss, out.logits
        logits = self.logits(model, weights, batch)
        if self.loss_type == "mse":
            return F.mse_loss(logits.reshape(batch["labels"].shape), batch["labels"]), logits
        return F.cross_entropy(logits, batch["labels"]), logits

    def inner_lrs(self) -> list[float | torch.Tensor]:
        return [self.inner_lr] * len(self.fast)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to differentiate: times ``loss_scale`` (no op at 1.0: fp32 results stay bit-identical)."""
        return loss if self.loss_scale == 1.0 else loss * self.loss_scale

    def _unscaled(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        """A gradient of a ``_scaled`` loss, divided back (a graph op when it is differentiated again)."""
        return grad if grad is None or self.loss_scale == 1.0 else grad / self.loss_scale

    def adapt(
        self, model: nn.Module, support: Batch, *, create_graph: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Weights after the inner loop; with ``create_graph`` the result stays differentiable (second order)."""
        create_graph = self.second_order if create_graph is None else create_graph
        weights = self.weights(model)
        fast = {n: weights[n] for n in self.fast}
        for _ in range(self.inner_steps):
            loss, _ = self.loss(model, {**weights, **fast}, support)
            grads = torch.autograd.grad(
                self._scaled(loss), list(fast.values()), create_graph=create_graph, allow_unused=True
            )
            fast = {
                n: p if g is None else p - lr * self._unscaled(g if create_graph else g.detach())
                for (n, p), g, lr in zip(fast.items(), grads, self.inner_lrs())
            }
        return {**weights, **fast}

    # -- the two entry points ------------------------------------------------------------------------------
    def task_gradient(self, model: nn.Module, support: Batch, query: Batch) -> TaskResult:
        """Outer gradient of the query loss after adaptation, for every trainable and meta parameter."""
        adapted = self.adapt(model, support)
        loss, logits = self.loss(model, adapted, query)
        return self._result(model, loss, logits, query)

    def batch_task_gradient(self, model: nn.Module, tasks: Sequence[tuple[Batch, Batch]]) -> TaskResult:
        """Mean of the tasks' ``task_gradient`` over the finite ones; ``skipped`` counts the others.

        MAML-style algorithms (plain inner loop, no meta-parameters) run all tasks at once under
        ``torch.func.vmap`` when their support and query batches have the same shapes once padded to the
        meta-batch's longest sequence; otherwise tasks run one by one. If vmap fails (the architecture, or the
        transformers workaround of ``compat``), this call's tasks run one by one and the next call tries vmap
        again; out-of-memory errors are raised, not hidden behind a slower path.
        """
        if len(tasks) > 1 and self._vmap_applies():
            stacked = _stack_tasks(tasks)
            if stacked is not None:
                try:
                    return self._vmap_task_gradients(model, *stacked)
                except Exception as error:  # noqa: BLE001 - any failure under vmap: this call loops
                    if _out_of_memory(error):
                        raise
                    self._vmap_fell_back(model, error)
        return self._loop_task_gradients(model, tasks)

    def _vmap_fell_back(self, model: nn.Module, error: Exception) -> None:
        """Count the fallback; warn once per distinct error, as the same failure comes back every step."""
        self.vmap_fallbacks += 1
        key = (type(error).__name__, str(error)[:300])
        level = logging.DEBUG if key in self._vmap_errors_logged else logging.WARNING
        self._vmap_errors_logged.add(key)
        logger.log(level, "%s: batching tasks with torch.func.vmap failed on %s (%s: %s); this meta-batch "
                   "runs one task at a time.", self.name, type(model).__name__, *key)  # fmt: skip

    def _loop_task_gradients(self, model: nn.Module, tasks: Sequence[tuple[Batch, Batch]]) -> TaskResult:
        total: dict[str, torch.Tensor] | None = None
        ok, skipped, loss, accuracy = 0, 0, 0.0, 0.0
        for support, query in tasks:
            result = self.task_gradient(model, support, query)
            if result.grads is None:
                skipped += 1
                continue
            ok += 1
            loss, accuracy = loss + result.loss, accuracy + result.accuracy
            if total is None:
                total = {n: g.clone() for n, g in result.grads.items()}
            else:
                for n, g in result.grads.items():
                    total[n] += g
        if total is None:
            return TaskResult(None, float("nan"), float("nan"), skipped)
        return TaskResult({n: g / ok for n, g in total.items()}, loss / ok, accuracy / ok, skipped)

    def _vmap_applies(self) -> bool:
        """The vmap path reproduces ``MetaAlgorithm.task_gradient`` with scalar inner LRs, nothing else."""
        return (type(self).task_gradient is MetaAlgorithm.task_gradient
                and type(self).adapt is MetaAlgorithm.adapt and not self.meta_parameters()
                and all(isinstance(lr, (int, float)) for lr in self.inner_lrs()))  # fmt: skip

    def _vmap_task_gradients(self, model: nn.Module, supports: dict, queries: dict) -> TaskResult:
        """All tasks at once: ``vmap`` over tasks of (inner loop by ``torch.func.grad``, outer gradient)."""
        from torch.func import grad, vmap

        trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        constants = {n: t.detach() for n, t in self.weights(model).items() if n not in trainable}
        fast_names = [n for n in self.fast if n in trainable]
        lrs = dict(zip(self.fast, self.inner_lrs()))
        steps, second_order = self.inner_steps, self.second_order

        def query_loss(weights: dict, query: dict):
            loss, logits = self.loss(model, {**constants, **weights}, query)
            return self._scaled(loss), (loss, logits)

        def adapt(params: dict, support: dict) -> dict:
            fast = {n: params[n] for n in fast_names}

            def support_loss(fast_now: dict):
                return self._scaled(self.loss(model, {**constants, **params, **fast_now}, support)[0])

            for _ in range(steps):
                g = grad(support_loss)(fast)
                fast = {n: fast[n] - lrs[n] * self._unscaled(g[n]) for n in fast_names}
            return {**params, **fast}

        def one_task(params: dict, support: dict, query: dict):
            if second_order:  # differentiate through the inner loop
                grads, aux = grad(lambda p: query_loss(adapt(p, support), query), has_aux=True)(params)
            else:  # first order: the query gradient at the adapted weights (d adapted / d params as identity)
                grads, aux = grad(query_loss, has_aux=True)(adapt(params, support), query)
            return {n: self._unscaled(g) for n, g in grads.items()}, aux

        with masks_traced_under_functorch():
            grads, (losses, logits) = vmap(one_task, in_dims=(None, 0, 0), randomness="different")(
                trainable, supports, queries
            )
        finite = torch.isfinite(losses)
        for g in grads.values():
            finite &= torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
        ok = int(finite.sum())
        skipped = len(finite) - ok
        if not ok:
            return TaskResult(None, float("nan"), float("nan"), skipped)
        mean = {n: g[finite].mean(0) for n, g in grads.items()}
        accuracies = [
            self._accuracy(logits[i], queries["labels"][i]) for i in range(len(finite)) if finite[i]
        ]
        return TaskResult(mean, losses[finite].mean().item(), sum(accuracies) / ok, skipped)

    @torch.no_grad()
    def _accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        if self.loss_type == "mse":
            return float("nan")
        if self.loss_type == "lm":  # token accuracy over the labelled (target) tokens
            if self.shift_labels:
                logits, labels = logits[:, :-1], labels[:, 1:]
            scored = labels != -100
            return (logits.argmax(-1)[scored] == labels[scored]).float().mean().item()
        return (logits.argmax(-1) == labels).float().mean().item()

    def _result(self, model: nn.Module, loss: torch.Tensor, logits: torch.Tensor, query: Batch) -> TaskResult:
        if not torch.isfinite(loss):
            return TaskResult(None, float("nan"), float("nan"))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        extra = [(f"meta.{i}", p) for i, p in enumerate(self.meta_parameters())]
        params = named + extra
        grads = torch.autograd.grad(self._scaled(loss), [p for _, p in params], allow_unused=True)
        out = {n: torch.zeros_like(p) if g is None else self._unscaled(g) for (n, p), g in zip(params, grads)}
        if not all(torch.isfinite(g).all() for g in out.values()):
            return TaskResult(None, float("nan"), float("nan"))
        return TaskResult(out, loss.item(), self._accuracy(logits, query["labels"]))

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        """Query logits after adapting to the support set (meta-testing)."""
        adapted = self.adapt(model, support, create_graph=False)
        with torch.no_grad():
            return self.logits(model, adapted, query)


class MAML(MetaAlgorithm):
    """Finn et al. 2017: backpropagate through the inner loop (second order)."""

    name = "maml"
    second_order = True


class FOMAML(MetaAlgorithm):
    """First-order MAML: the query gradient at the adapted weights, the inner loop's Jacobian dropped."""

    name = "fomaml"


class ANIL(MAML):
    """Raghu et al. 2020: the inner loop adapts the head only; the body is learned in the outer loop."""

    name = "anil"

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, fast_weights: str = "head", top_k: int = 1,
                 loss: str = "cross_entropy"):  # fmt: skip
        super().__init__(inner_steps, inner_lr, fast_weights, top_k, loss)


class MetaSGD(MAML):
    """Li et al. 2017: a learned inner LR for every fast-weight element, meta-learned with the initialisation."""

    name = "metasgd"

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        params = dict(model.named_parameters())
        self.lrs = nn.ParameterList(
            nn.Parameter(torch.full_like(params[n], self.inner_lr, requires_grad=True)) for n in self.fast
        )

    def meta_parameters(self) -> list[nn.Parameter]:
        return list(self.lrs)

    @property
    def _rate(self) -> str:
        return f"learned per-parameter LRs from {self.inner_lr:g}"

    def inner_lrs(self) -> list[torch.Tensor]:
        return list(self.lrs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"inner_lr.{n}": p.detach() for n, p in zip(self.fast, self.lrs)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in zip(self.fast, self.lrs):
                p.copy_(state[f"inner_lr.{n}"])


class Reptile(MetaAlgorithm):
    """Nichol et al. 2018: SGD on the task, then move the initialisation towards the adapted weights.

    The task's "gradient" is (theta - phi) / (inner_steps x inner_lr), so an outer SGD step of LR eps moves theta by
    eps x mean(phi - theta) / (steps x lr), the usual Reptile update rescaled to be LR-comparable with MAML.
    Support and query are both trained on, as in Reptile's own few-shot protocol.
    """

    name = "reptile"

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.01, fast_weights: str = "all", top_k: int = 1,
                 loss: str = "cross_entropy"):  # fmt: skip
        super().__init__(inner_steps, inner_lr, fast_weights, top_k, loss)

    def task_gradient(self, model: nn.Module, support: Batch, query: Batch) -> TaskResult:
        both = _cat(support, query)
        adapted = self.adapt(model, both, create_graph=False)
        with torch.no_grad():
            loss, logits = self.loss(model, adapted, query)
        if not torch.isfinite(loss):
            return TaskResult(None, float("nan"), float("nan"))
        scale = 1.0 / max(self.inner_steps * self.inner_lr, 1e-12)
        grads = {
            n: ((p - adapted[n]) * scale).detach() if n in self.fast else torch.zeros_like(p)
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        return TaskResult(grads, loss.item(), self._accuracy(logits, query["labels"]))


class ProtoNets(MetaAlgorithm):
    """Snell et al. 2017: class prototypes are the mean support embeddings; query logits are -squared distances.

    Embeddings are the mean-pooled last hidden states of the model's backbone; there is no inner loop, and the
    head is unused. ``projection_dim`` > 0 adds a learned linear map of the embeddings, meta-learned with the
    encoder and saved as the algorithm's state. It starts as a seeded orthogonal projection scaled to keep
    expected distances, so at ``projection_dim`` = the hidden size it starts exactly as no projection.
    """

    name = "protonets"

    def __init__(self, inner_steps: int = 0, inner_lr: float = 0.0, fast_weights: str = "all", top_k: int = 1,
                 loss: str = "cross_entropy", projection_dim: int = 0):  # fmt: skip
        if loss != "cross_entropy":
            raise ValueError("ProtoNets classifies: loss must be 'cross_entropy'.")
        if projection_dim < 0:
            raise ValueError(f"projection_dim={projection_dim}: use 0 (no projection) or the projected size.")
        super().__init__(0, 0.0, fast_weights, top_k)
        self.projection_dim = projection_dim
        self.projection: nn.Linear | None = None

    @property
    def settings(self) -> str:
        projection = f", a learned {self.projection_dim}-d projection" if self.projection_dim else ""
        return f"no inner loop: nearest class prototype (mean support embedding){projection}"

    def setup(self, model: nn.Module) -> None:
        self.fast = []
        if not self.projection_dim:
            return
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is None:
            raise ValueError(
                "A ProtoNets projection needs the embedding size: the model has no config.hidden_size."
            )
        self.projection = nn.Linear(hidden, self.projection_dim)
        with torch.no_grad():  # the same start in every process: a fixed generator, not the global RNG
            square = torch.empty(max(hidden, self.projection_dim), max(hidden, self.projection_dim))
            nn.init.orthogonal_(square, generator=torch.Generator().manual_seed(0))
            scale = (hidden / self.projection_dim) ** 0.5 if self.projection_dim < hidden else 1.0
            self.projection.weight.copy_(scale * square[: self.projection_dim, :hidden])
            self.projection.bias.zero_()
        param = next(model.parameters())
        self.projection.to(device=param.device, dtype=param.dtype)

    def meta_parameters(self) -> list[nn.Parameter]:
        return [] if self.projection is None else list(self.projection.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.projection is None:
            return {}
        return {f"projection.{n}": p.detach() for n, p in self.projection.named_parameters()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if self.projection is None:
            if any(k.startswith("projection.") for k in state):
                raise ValueError("This ProtoNets state has a learned projection: build ProtoNets(projection_dim="
                                 f"{state['projection.weight'].shape[0]}) and call setup(model) before loading it.")  # fmt: skip
            return
        with torch.no_grad():
            for n, p in self.projection.named_parameters():
                p.copy_(state[f"projection.{n}"])

    @staticmethod
    def pooled(model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The masked mean of the last hidden states: the embedding before any projection."""
        out = functional_call(
            model, dict(weights), args=(), kwargs={**model_inputs(batch), "output_hidden_states": True}
        )
        return mean_pool(out.hidden_states[-1], batch["attention_mask"])

    def embed(self, model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        pooled = self.pooled(model, weights, batch)
        return pooled if self.projection is None else self.projection(pooled)

    def prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One row a class: the mean support embedding of classes ``0 .. max(labels)``."""
        n_way = int(labels.max()) + 1
        return torch.stack([embeddings[labels == c].mean(0) for c in range(n_way)])

    def query_logits(
        self, model: nn.Module, weights: Mapping[str, torch.Tensor], support: Batch, query: Batch
    ) -> torch.Tensor:
        s, q = self.embed(model, weights, support), self.embed(model, weights, query)
        return -torch.cdist(q, self.prototypes(s, support["labels"])).pow(2)

    def task_gradient(self, model: nn.Module, support: Batch, query: Batch) -> TaskResult:
        logits = self.query_logits(model, self.weights(model), support, query)
        return self._result(model, F.cross_entropy(logits, query["labels"]), logits, query)

    def batch_task_gradient(self, model: nn.Module, tasks: Sequence[tuple[Batch, Batch]]) -> TaskResult:
        """One embedding pass over every task's support and query rows (padded to the longest), per-task
        prototypes and losses, one backward of their mean. A non-finite task sends the batch to the per-task loop
        (rows share the backward, so its inf/NaN would reach every gradient), which skips and counts it."""
        if len(tasks) < 2:
            return self._loop_task_gradients(model, tasks)
        batches = [b for task in tasks for b in task]
        if any(set(b) != set(batches[0]) for b in batches) or "attention_mask" not in batches[0]:
            return self._loop_task_gradients(model, tasks)
        width = max(_seq_len(b) for b in batches)
        padded = [_pad_batch(b, width) for b in batches]
        everything = {k: torch.cat([b[k] for b in padded]) for k in padded[0] if k != "labels"}
        embeddings = self.embed(model, self.weights(model), everything).split(
            [len(b["labels"]) for b in batches]
        )
        losses, logits = [], []
        for i, (support, query) in enumerate(tasks):
            s, q = embeddings[2 * i], embeddings[2 * i + 1]
            logits.append(-torch.cdist(q, self.prototypes(s, support["labels"])).pow(2))
            losses.append(F.cross_entropy(logits[-1], query["labels"]))
        loss = torch.stack(losses)
        if not torch.isfinite(loss).all():
            return self._loop_task_gradients(model, tasks)
        result = self._result(model, loss.mean(), logits[0], tasks[0][1])
        if result.grads is None:
            return self._loop_task_gradients(model, tasks)
        accuracy = sum(self._accuracy(lg, q["labels"]) for lg, (_, q) in zip(logits, tasks)) / len(tasks)
        return TaskResult(result.grads, loss.mean().item(), accuracy, 0)

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        with torch.no_grad():
            return self.query_logits(model, self.weights(model), support, query)


def _cat(a: Batch, b: Batch) -> dict[str, torch.Tensor]:
    """Two padded batches as one along the batch axis, each padded to the longer sequence."""
    width = max(_seq_len(a), _seq_len(b))
    a, b = _pad_batch(a, width), _pad_batch(b, width)
    return {k: torch.cat([a[k], b[k]]) for k in a if k in b}


def _out_of_memory(error: Exception) -> bool:
    """torch.OutOfMemoryError (``torch.cuda``'s name, from torch 2.4), or another backend's RuntimeError
    saying so."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def _is_token_tensor(value: torch.Tensor) -> bool:
    """Per-token tensors (ids, masks, token types, positions, LM labels): 2-D integer tensors."""
    return value.dim() == 2 and not value.is_floating_point()


def _seq_len(batch: Batch) -> int:
    return max((v.shape[1] for v in batch.values() if _is_token_tensor(v)), default=0)


def _pad_batch(batch: Batch, width: int) -> dict[str, torch.Tensor]:
    """Pad the per-token tensors to ``width`` with zeros (masked out; -100, ignored, for LM labels), on the left
    if the batch is left-padded."""
    mask = batch.get("attention_mask")
    left = (
        mask is not None
        and mask.dim() == 2
        and bool((mask[:, -1] == 1).all())
        and bool((mask[:, 0] == 0).any())
    )
    out = {}
    for k, v in batch.items():
        if _is_token_tensor(v) and v.shape[1] < width:
            extra = width - v.shape[1]
            v = F.pad(v, (extra, 0) if left else (0, extra), value=-100 if k == "labels" else 0)
        out[k] = v
    return out


def _stack_tasks(tasks: Sequence[tuple[Batch, Batch]]) -> tuple[dict, dict] | None:
    """Supports and queries stacked along a new task axis, every sequence padded to the meta-batch's longest;
    None if the tasks' batches differ in keys or shapes beyond the sequence length (different N, K or Q)."""
    width = max(_seq_len(b) for task in tasks for b in task)
    stacked = []
    for part in (0, 1):
        batches = [_pad_batch(task[part], width) for task in tasks]
        first = batches[0]
        if any(set(b) != set(first) or any(b[k].shape != first[k].shape or b[k].dtype != first[k].dtype
                                           for k in first) for b in batches):  # fmt: skip
            return None
        stacked.append({k: torch.stack([b[k] for b in batches]) for k in first})
    return stacked[0], stacked[1]


def build_algorithm(name: str, **kwargs) -> MetaAlgorithm:
    classes = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "anil": ANIL, "protonets": ProtoNets,
               "metasgd": MetaSGD}  # fmt: skip
    if name not in classes:
        raise ValueError(f"Unknown meta-learning algorithm {name!r}: use one of {ALGORITHMS}.")
    return classes[name](**{k: v for k, v in kwargs.items() if v is not None})
