"""Which parameters adapt in the inner loop: the whole model, the head, the top k blocks, or LoRA matrices.

Chosen through the layer map, like every fine-tuning strategy, so any Hub architecture (and a PEFT model)
works without naming its modules.
"""

from __future__ import annotations

from torch import nn

from ..layers import LayerMap, build_layer_map

FAST_WEIGHTS = ("all", "head", "top_k", "lora")


def fast_weight_names(
    model: nn.Module, which: str = "all", *, top_k: int = 1, layer_map: LayerMap | None = None
) -> list[str]:
    """Names of the trainable parameters that the inner loop adapts.

    ``"all"``: every trainable parameter; ``"head"``: the head (ANIL); ``"top_k"``: the head and the top ``top_k``
    blocks; ``"lora"``: the LoRA matrices of a PEFT model (and its trainable head copies).
    """
    if which not in FAST_WEIGHTS:
        raise ValueError(f"Unknown fast weights {which!r}: use one of {FAST_WEIGHTS}.")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if which == "all":
        return [n for n, _ in model.named_parameters() if n in trainable]
    if which == "lora":
        names = [n for n in trainable if "lora_" in n or "modules_to_save" in n]
        if not any("lora_" in n for n in names):
            raise ValueError(
                "fast_weights='lora' needs a PEFT LoRA model: wrap it with peft.get_peft_model(model, LoraConfig(...))."
            )
        return [n for n, _ in model.named_parameters() if n in names]
    layer_map = layer_map or build_layer_map(model)
    if which == "head":
        depths = {layer_map.top_depth}
        if not layer_map.head.param_names:
            raise ValueError(
                f"{layer_map.model_class} has no head parameters of its own to adapt (tied LM head?)."
            )
    else:
        if not 1 <= top_k <= layer_map.num_blocks:
            raise ValueError(
                f"top_k={top_k} is out of range: {layer_map.model_class} has {layer_map.num_blocks} blocks."
            )
        depths = set(range(layer_map.top_depth - top_k, layer_map.top_depth + 1))
    return [n for g in layer_map if g.depth in depths for n in g.param_names if n in trainable]
