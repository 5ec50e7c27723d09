"""Add, replace or remove a class of a prototype-headed model without retraining (huggingface/setfit#372).

A ProtoNets-adapted model (:func:`~hf_metatransfer.meta.adapted_model`) is a ``MeanPoolBertForSequenceClassification``
whose head row k is ``2 c_k`` and whose bias is ``-||c_k||^2`` (``c_k`` the class's prototype, the mean embedding
of its support examples): a new class is one more row from the mean embedding of a few examples of it, and the
other rows, so the other classes' logits, stay as they were. With a learned projection ``P`` folded in, row k is
``2 P^T P c_k`` and its bias ``-||P c_k||^2``: the projection must then be given, since the head alone cannot say it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..conventions import conventions_for
from ..pooling import MeanPoolBertForSequenceClassification, mean_pool

FIX = (
    "adapt the model with ProtoNets on a mean-pooled encoder (load it as "
    "hf_metatransfer.pooling.MeanPoolBertForSequenceClassification, then "
    "hf_metatransfer.meta.adapted_model(model, ProtoNets(), support)) to get a prototype head"
)


@torch.no_grad()
def add_class(
    model: MeanPoolBertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    label: str,
    examples: Sequence[str],
    *,
    replace: bool = False,
    projection: nn.Linear | None = None,
    batch_size: int = 32,
    max_length: int = 128,
) -> MeanPoolBertForSequenceClassification:
    """Give ``model`` the class ``label``, whose prototype is the mean embedding of ``examples``; ``model`` is
    changed in place and returned. The other classes keep their rows, so their logits are unchanged.

    ``replace=True`` recomputes the row of an existing ``label`` instead. ``projection`` is the ProtoNets
    projection the model was adapted with (its ``meta_algorithm.safetensors``), when it learned one. The
    examples are embedded as the head reads its inputs: the masked mean of the last hidden states, after the
    model's input prefix (:func:`~hf_metatransfer.conventions_for`, e.g. e5's ``"query: "``).
    """
    check_prototype_head(model, projection)
    label2id = dict(model.config.label2id)
    if replace and label not in label2id:
        raise ValueError(
            f"replace=True, but {label!r} is not a class of the model ({', '.join(label2id)}): "
            "drop --replace to add it as a new class."
        )
    if not replace and label in label2id:
        raise ValueError(
            f"{label!r} is already a class of the model: pass replace=True (--replace) to recompute its prototype "
            "from these examples."
        )
    if len(examples) < 1 or not all(isinstance(e, str) and e.strip() for e in examples):
        raise ValueError(
            f"A class needs at least 1 example (non-empty text) to make its prototype; got {len(examples)}."
        )
    weight, bias = _head_row(embed(model, tokenizer, examples, batch_size, max_length).mean(0), projection)
    head = model.classifier
    if replace:
        head.weight[label2id[label]] = weight
        head.bias[label2id[label]] = bias
        return model
    grown = nn.Linear(
        head.in_features, head.out_features + 1, device=head.weight.device, dtype=head.weight.dtype
    )
    grown.weight.copy_(torch.cat([head.weight, weight[None]]))
    grown.bias.copy_(torch.cat([head.bias, bias[None]]))
    _set_head(model, grown, [*_labels(model), label])
    return model


@torch.no_grad()
def remove_class(
    model: MeanPoolBertForSequenceClassification, label: str
) -> MeanPoolBertForSequenceClassification:
    """Drop the class ``label`` (its head row); the classes after it move down one id. In place, and returned."""
    check_prototype_head(model, None, check_values=False)
    labels = _labels(model)
    if label not in labels:
        raise ValueError(f"{label!r} is not a class of the model ({', '.join(labels)}).")
    if len(labels) == 1:
        raise ValueError(f"{label!r} is the model's only class: a classifier needs at least one.")
    keep = [i for i, name in enumerate(labels) if name != label]
    head = model.classifier
    shrunk = nn.Linear(head.in_features, len(keep), device=head.weight.device, dtype=head.weight.dtype)
    shrunk.weight.copy_(head.weight[keep])
    shrunk.bias.copy_(head.bias[keep])
    _set_head(model, shrunk, [labels[i] for i in keep])
    return model


@torch.no_grad()
def embed(
    model: MeanPoolBertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 128,
) -> torch.Tensor:
    """The embeddings the head reads (before it): masked means of the last hidden states, one row a text."""
    prefix = conventions_for(model).prefix
    was_training = model.training
    model.eval()
    device = model.classifier.weight.device
    try:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer([prefix + t for t in texts[start : start + batch_size]], padding=True,
                              truncation=True, max_length=max_length, return_tensors="pt").to(device)  # fmt: skip
            hidden = model.bert(**batch, return_dict=True).last_hidden_state
            rows.append(mean_pool(hidden, batch["attention_mask"]))
    finally:
        model.train(was_training)
    return torch.cat(rows)


def check_prototype_head(model: nn.Module, projection: nn.Linear | None, check_values: bool = True) -> None:
    """Refuse a model whose head is not prototypes on the mean-pooled embedding, as ``adapted_model`` writes it.

    The values tell a prototype head (bias ``-||w/2||^2``, or with the projection ``-||P c||^2``) from a trained
    one, and from one with a projection folded in that was not given: the row of a new class would be wrong then.
    """
    if not isinstance(model, MeanPoolBertForSequenceClassification):
        raise ValueError(f"{type(model).__name__}'s head is not on the mean-pooled embedding: {FIX}.")
    head, hidden = model.classifier, model.config.hidden_size
    if not isinstance(head, nn.Linear) or head.in_features != hidden or head.bias is None:
        raise ValueError(
            f"The model's head is not one linear layer with bias on the {hidden}-d embedding: {FIX}."
        )
    if len(_labels(model)) != head.out_features:
        raise ValueError(
            f"The model's config names {len(_labels(model))} classes but its head has {head.out_features} rows."
        )
    if projection is not None and projection.in_features != hidden:
        raise ValueError(
            f"The projection reads {projection.in_features}-d embeddings, the model's are {hidden}-d."
        )
    if not check_values:
        return
    half, bias = head.weight.detach().double().cpu() / 2, head.bias.detach().double().cpu()
    if projection is None:
        norms = half.pow(2).sum(-1)
    else:  # row k is P^T u_k with u_k = P c_k, the least-norm solution (in P's range): recover it, check it
        p = projection.weight.detach().double().cpu()
        u = torch.linalg.lstsq(p.T, half.T).solution.T
        norms = (
            u.pow(2).sum(-1)
            if torch.allclose(u @ p, half, rtol=1e-4, atol=1e-7)
            else torch.full_like(bias, torch.nan)
        )
    rtol = max(1e-4, 10 * torch.finfo(head.weight.dtype).eps)
    if not torch.allclose(-bias, norms, rtol=rtol, atol=1e-7):
        projected = "with this projection" if projection is not None else "without a projection"
        raise ValueError(
            f"The model's head is not a prototype head {projected} (row k must be 2 c_k with bias -||c_k||^2): "
            "a trained head cannot take a class without retraining. If it was adapted with a ProtoNets "
            "projection (projection_dim > 0), pass that projection (projection=, --projection "
            f"meta_algorithm.safetensors); otherwise {FIX}."
        )


def projection_from_state(state: dict[str, torch.Tensor]) -> nn.Linear:
    """The ProtoNets projection from its saved state (``meta_algorithm.safetensors``: ``projection.weight``/``.bias``)."""
    if "projection.weight" not in state:
        raise ValueError(
            "This ProtoNets state has no projection.weight: the model was adapted without a projection."
        )
    weight = state["projection.weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(state.get("projection.bias", torch.zeros(weight.shape[0], dtype=weight.dtype)))
    return linear


def _head_row(prototype: torch.Tensor, projection: nn.Linear | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``adapted_model``'s formula for one class: ``(2 c, -||c||^2)``, through the projection if any."""
    if projection is None:
        return 2 * prototype, -prototype.pow(2).sum()
    p = projection.weight.to(prototype)
    projected = prototype @ p.T  # the projection's bias cancels in every distance
    return 2 * projected @ p, -projected.pow(2).sum()


def _labels(model: nn.Module) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in sorted(id2label)]


def _set_head(model: nn.Module, head: nn.Linear, labels: list[str]) -> None:
    model.classifier = head
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.config.num_labels = model.num_labels = len(labels)
