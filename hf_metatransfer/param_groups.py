"""Pure functions over a LayerMap: optimizer param groups, freezing, surgical selection, Auto-RGN, re-init.

They take a model and return data (or change ``requires_grad`` / weights in place when their name ends with
``_``); none touches an optimizer or a training loop, so they work with the Trainer, Accelerate or a loop of
one's own, as PEFT's LoRA+ helper does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from .layers import LayerMap, build_layer_map, unwrap_model

# The same exemptions as transformers.Trainer.get_decay_parameter_names: biases and every kind of norm weight.
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def no_decay_param_names(model: nn.Module) -> set[str]:
    """Names of the parameters that keep their weight-decay exemption: biases and normalisation weights."""
    norm_ids = {
        id(p)
        for module in model.modules()
        if isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()
        for p in module.parameters(recurse=False)
    }
    pattern = re.compile("|".join(_NO_DECAY_PATTERNS), re.IGNORECASE)
    return {n for n, p in model.named_parameters() if id(p) in norm_ids or pattern.search(n)}


def layerwise_lr(lr: float, decay: float, distance_from_top: int) -> float:
    """lr x decay^(distance from the top); the head is at distance 0, the top block at 1, embeddings deepest."""
    return lr * decay**distance_from_top


def check_decay(decay: float) -> None:
    if not (0.0 < decay <= 1.0) or math.isnan(decay):
        raise ValueError(
            f"layerwise_lr_decay must be in (0, 1], got {decay}: 1.0 turns layer-wise decay off, "
            "0.8-0.95 is usual for BERT-size encoders (ELECTRA uses 0.8 base, 0.9 large)."
        )


def layerwise_param_groups(
    model: nn.Module,
    lr: float,
    decay: float = 1.0,
    *,
    head_lr: float | None = None,
    weight_decay: float = 0.0,
    layer_map: LayerMap | None = None,
    per_tensor: bool = False,
    include_frozen: bool = True,
) -> list[dict]:
    """Optimizer param groups with layer-wise learning rates.

    Each group holds ``params``, ``lr``, ``weight_decay`` and, for bookkeeping, ``name``, ``depth`` and
    ``param_names``. The head comes first (the Trainer logs group 0's LR). ``per_tensor`` gives every tensor its
    own group, which Auto-RGN needs to weight each tensor's LR. ``include_frozen`` keeps parameters whose
    ``requires_grad`` is False, so phases that unfreeze later (LP-FT, gradual unfreezing) need no new groups.
    """
    check_decay(decay)
    layer_map = layer_map or build_layer_map(model)
    head = [g for g in layer_map.groups if g.depth == layer_map.top_depth]
    if head_lr is not None and not any(g.param_names for g in head):
        raise ValueError(
            f"head_learning_rate={head_lr} has no head to apply to: {type(model).__name__}'s output layer shares its "
            "weights with the input embeddings (tie_word_embeddings), so they take the embeddings' layer-wise LR. "
            "Unset head_learning_rate, or load the model with tie_word_embeddings=False to give the head its own."
        )
    params = dict(model.named_parameters())
    no_decay = no_decay_param_names(model)
    groups: list[dict] = []
    for group in reversed(layer_map.groups):
        distance = layer_map.top_depth - group.depth
        group_lr = head_lr if (distance == 0 and head_lr is not None) else layerwise_lr(lr, decay, distance)
        names = [n for n in group.param_names if include_frozen or params[n].requires_grad]
        for exempt in (False, True):
            chosen = [n for n in names if (n in no_decay) == exempt]
            buckets = [[n] for n in chosen] if per_tensor else ([chosen] if chosen else [])
            for bucket in buckets:
                groups.append(
                    {
                        "params": [params[n] for n in bucket],
                        "lr": group_lr,
                        "weight_decay": 0.0 if exempt else weight_decay,
                        "name": f"{group.name}/{'no_decay' if exempt else 'decay'}"
                        + (f"/{bucket[0]}" if per_tensor else ""),
                        "depth": group.depth,
                        "param_names": bucket,
                    }
                )
    return groups


def trainable_depths(
    layer_map: LayerMap,
    *,
    unfrozen_from_top: int | None = None,
    blocks: Iterable[int] = (),
    head: bool = True,
) -> set[int]:
    """Depths that train: the top ``unfrozen_from_top`` groups (head counts as one), or chosen block indices."""
    if unfrozen_from_top is not None:
        top = layer_map.top_depth
        return {d for d in range(top + 1) if top - d < unfrozen_from_top}
    depths = {i + 1 for i in blocks}
    if head:
        depths.add(layer_map.top_depth)
    return depths


def set_trainable_(
    model: nn.Module, layer_map: LayerMap, depths: set[int], allowed: set[str] | None = None
) -> list[str]:
    """Set ``requires_grad`` True exactly for parameters at ``depths`` (and in ``allowed``, if given).

    ``allowed`` keeps parameters that were never trainable (a PEFT model's base weights) frozen. Returns the
    names now trainable.
    """
    params = dict(model.named_parameters())
    trainable = []
    for group in layer_map:
        for name in group.param_names:
            on = group.depth in depths and (allowed is None or name in allowed)
            params[name].requires_grad_(on)
            if on:
                trainable.append(name)
    return trainable


@torch.no_grad()
def relative_grad_norms(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, float]:
    """Auto-RGN weights (Lee et al. 2022): ||g|| / ||theta|| per tensor, divided by the largest.

    Tensors without a gradient are left out. A tensor that is all zeros (a fresh bias) has no scale to be
    relative to: it gets 1.0 and does not enter the maximum. Call after backward, before the optimizer step.
    """
    params = dict(model.named_parameters())
    rgn, zero = {}, []
    for name in names if names is not None else params:
        p = params[name]
        if p.grad is None:
            continue
        norm = p.float().norm()
        if norm == 0:
            zero.append(name)
        else:
            rgn[name] = (p.grad.float().norm() / norm).item()
    top = max(rgn.values(), default=0.0)
    out = {n: (v / top if top > 0 else 0.0) for n, v in rgn.items()}
    out.update(dict.fromkeys(zero, 1.0))
    return out


@torch.no_grad()
def reinit_(
    model: nn.Module,
    layer_map: LayerMap,
    *,
    head: bool = True,
    top_k_blocks: int = 0,
    std: float | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Re-initialise the head and/or the top ``top_k_blocks`` blocks (Zhang et al. 2021), in place.

    Uses ``torch.nn.init`` directly: in transformers v5 ``model._init_weights`` is a silent no-op on loaded weights.
    Linear and embedding weights get N(0, std) with std = ``config.initializer_range`` (or ``init_std``, 0.02),
    biases zero, norm weights one. Returns the names re-initialised.
    """
    if not 0 <= top_k_blocks <= layer_map.num_blocks:
        raise ValueError(
            f"reinit_top_k_blocks={top_k_blocks} is out of range: {layer_map.model_class} has "
            f"{layer_map.num_blocks} blocks."
        )
    depths = set(range(layer_map.top_depth - top_k_blocks, layer_map.top_depth))
    if head:
        depths.add(layer_map.top_depth)
    targets = {n for g in layer_map if g.depth in depths for n in g.param_names}
    if std is None:
        config = getattr(unwrap_model(model), "config", None)
        std = getattr(config, "initializer_range", None) or getattr(config, "init_std", None) or 0.02
    done = []
    for module_name, module in model.named_modules():
        direct = [(n, p) for n, p in module.named_parameters(recurse=False)]
        for pname, p in direct:
            full = f"{module_name}.{pname}" if module_name else pname
            if full not in targets:
                continue
            is_norm = isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()
            if pname == "bias":
                p.zero_()
            elif is_norm:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=generator)
            done.append(full)
    return done
