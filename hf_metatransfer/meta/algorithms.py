"""MAML, first-order MAML, Reptile, ANIL, ProtoNets and Meta-SGD behind one interface, on torch.func.

Each algorithm turns one task (support and query batches of an episode) into a gradient for the meta-parameters
(``task_gradient``) and adapts to a task for meta-testing (``predict``). The model is any Hub sequence classifier
whose head is N-way; its parameters stay untouched during the inner loop: adapted (fast) weights are tensors
passed to ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .fast_weights import fast_weight_names

Batch = Mapping[str, torch.Tensor]
ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "protonets", "metasgd")


@dataclass
class TaskResult:
    """A task's contribution: gradients by parameter name (None if skipped), and what to log."""

    grads: dict[str, torch.Tensor] | None
    loss: float
    accuracy: float


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """Everything in a batch but the labels goes to the model's forward."""
    return {k: v for k, v in batch.items() if k != "labels"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states under the attention mask (sentence-transformers pooling)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class MetaAlgorithm:
    """Shared inner loop: ``inner_steps`` of SGD on the support loss over the fast weights."""

    name = "base"
    second_order = False

    def __init__(self, inner_steps: int = 1, inner_lr: float = 0.01, fast_weights: str = "all", top_k: int = 1,
                 loss: str = "cross_entropy"):  # fmt: skip
        if inner_steps < 0 or inner_lr < 0:
            raise ValueError("inner_steps and inner_lr must be >= 0.")
        if loss not in ("cross_entropy", "mse"):
            raise ValueError("loss must be 'cross_entropy' (classification) or 'mse' (regression).")
        self.inner_steps, self.inner_lr, self.loss_type = inner_steps, inner_lr, loss
        self.fast_weights, self.top_k = fast_weights, top_k
        self.fast: list[str] = []

    # -- set-up --------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Resolve the fast weights of ``model`` (call once, before training)."""
        self.fast = fast_weight_names(model, self.fast_weights, top_k=self.top_k)

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

    def loss(self, model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(model, weights, batch)
        if self.loss_type == "mse":
            return F.mse_loss(logits.reshape(batch["labels"].shape), batch["labels"]), logits
        return F.cross_entropy(logits, batch["labels"]), logits

    def inner_lrs(self) -> list[float | torch.Tensor]:
        return [self.inner_lr] * len(self.fast)

    def adapt(self, model: nn.Module, support: Batch, *, create_graph: bool | None = None) -> dict[str, torch.Tensor]:
        """Weights after the inner loop; with ``create_graph`` the result stays differentiable (second order)."""
        create_graph = self.second_order if create_graph is None else create_graph
        weights = self.weights(model)
        fast = {n: weights[n] for n in self.fast}
        for _ in range(self.inner_steps):
            loss, _ = self.loss(model, {**weights, **fast}, support)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph, allow_unused=True)
            fast = {
                n: p if g is None else p - lr * (g if create_graph else g.detach())
                for (n, p), g, lr in zip(fast.items(), grads, self.inner_lrs())
            }
        return {**weights, **fast}

    # -- the two entry points ------------------------------------------------------------------------------
    def task_gradient(self, model: nn.Module, support: Batch, query: Batch) -> TaskResult:
        """Outer gradient of the query loss after adaptation, for every trainable and meta parameter."""
        adapted = self.adapt(model, support)
        loss, logits = self.loss(model, adapted, query)
        return self._result(model, loss, logits, query)

    @torch.no_grad()
    def _accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        if self.loss_type == "mse":
            return float("nan")
        return (logits.argmax(-1) == labels).float().mean().item()

    def _result(self, model: nn.Module, loss: torch.Tensor, logits: torch.Tensor, query: Batch) -> TaskResult:
        if not torch.isfinite(loss):
            return TaskResult(None, float("nan"), float("nan"))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        extra = [(f"meta.{i}", p) for i, p in enumerate(self.meta_parameters())]
        params = named + extra
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        out = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params, grads)}
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
        both = {k: _cat(support[k], query[k]) for k in support if k in query}
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
    head is unused.
    """

    name = "protonets"

    def __init__(self, inner_steps: int = 0, inner_lr: float = 0.0, fast_weights: str = "all", top_k: int = 1,
                 loss: str = "cross_entropy"):  # fmt: skip
        if loss != "cross_entropy":
            raise ValueError("ProtoNets classifies: loss must be 'cross_entropy'.")
        super().__init__(0, 0.0, fast_weights, top_k)

    def setup(self, model: nn.Module) -> None:
        self.fast = []

    def embed(self, model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        out = functional_call(model, dict(weights), args=(), kwargs={**model_inputs(batch), "output_hidden_states": True})
        return mean_pool(out.hidden_states[-1], batch["attention_mask"])

    def query_logits(self, model: nn.Module, weights: Mapping[str, torch.Tensor], support: Batch, query: Batch) -> torch.Tensor:
        s, q = self.embed(model, weights, support), self.embed(model, weights, query)
        n_way = int(support["labels"].max()) + 1
        prototypes = torch.stack([s[support["labels"] == c].mean(0) for c in range(n_way)])
        return -torch.cdist(q, prototypes).pow(2)

    def task_gradient(self, model: nn.Module, support: Batch, query: Batch) -> TaskResult:
        logits = self.query_logits(model, self.weights(model), support, query)
        return self._result(model, F.cross_entropy(logits, query["labels"]), logits, query)

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        with torch.no_grad():
            return self.query_logits(model, self.weights(model), support, query)


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two padded batches along the batch axis, padding the shorter sequence dimension."""
    if a.dim() == 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a, b = (F.pad(x, (0, width - x.shape[1])) for x in (a, b))
    return torch.cat([a, b])


def build_algorithm(name: str, **kwargs) -> MetaAlgorithm:
    classes = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "anil": ANIL, "protonets": ProtoNets,
               "metasgd": MetaSGD}  # fmt: skip
    if name not in classes:
        raise ValueError(f"Unknown meta-learning algorithm {name!r}: use one of {ALGORITHMS}.")
    return classes[name](**{k: v for k, v in kwargs.items() if v is not None})
