"""Replay the output of frozen lower blocks: when only the top ``k`` blocks of a model train on one fixed batch (the
support set of a few-shot episode), the blocks below give the same output at every step, so they run once and
each step then costs ``k`` blocks instead of the model's whole depth.

Works on any model whose blocks ``block_stacks`` finds in a single stack (encoders, decoders): the frozen blocks are
swapped, for the duration of the context, for stand-ins that return the recorded output of the last of them, so the
model's own ``forward`` (embeddings, attention masks, rotary positions, final norm, pooling, head) runs unchanged.
Several batches (the micro-batches of one support set) are recorded once each; ``Replay.select`` says which one the
next call runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .layers import block_stacks, unwrap_model


def _leading_shape(value: Any) -> torch.Size | None:
    """The (batch, sequence) shape of a block's hidden states, however the block returns them."""
    if isinstance(value, torch.Tensor):
        return value.shape[:2]
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0].shape[:2]
    return None


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    return value


class Replay:
    """What ``replay_lower_blocks`` yields: which of its batches the model is called on next."""

    def __init__(self, count: int) -> None:
        self.count, self.current = count, 0

    def select(self, index: int) -> None:
        """The next calls run batch ``index`` of those given to the context (in their order)."""
        if not 0 <= index < self.count:
            raise IndexError(f"select({index}): the context was given {self.count} batch(es).")
        self.current = index


class _ReplayedBlock(nn.Module):
    """Stands in for a frozen block: returns the recorded output of the last frozen block for the selected batch (a
    batch of another shape is refused instead of being given stale hidden states). Attributes the model reads off
    its blocks (ModernBERT's ``attention_type``) are the original block's; its parameters are not registered here,
    so the model's parameter names do not change."""

    def __init__(self, block: nn.Module, outputs: list[Any], replay: Replay) -> None:
        super().__init__()
        self.__dict__["_block"] = block
        self.outputs, self.replay = outputs, replay

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output = self.outputs[self.replay.current]
        if hidden_states.shape[:2] != _leading_shape(output):
            raise RuntimeError(
                f"replay_lower_blocks recorded batch {self.replay.current} with shape "
                f"{tuple(_leading_shape(output))} but the model was called on {tuple(hidden_states.shape[:2])}: "
                "call the model only on the selected batch of those given to the context."
            )
        return output


@contextmanager
def replay_lower_blocks(
    model: nn.Module, top_k: int, batches: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]
) -> Iterator[Replay]:
    """Within the context, ``model(**batch)`` computes only the top ``top_k`` blocks and what follows them; the
    blocks below ran once, on entry, without gradients, and their output is replayed.

    ``batches``: one batch, or several (their order is the index ``Replay.select`` takes; the first is selected).
    The lower blocks' parameters must not change inside the context (they are frozen for the purpose); dropout in
    them is whatever mode the model is in on entry. ``top_k`` at or above the depth replays nothing.
    """
    batches = [batches] if isinstance(batches, Mapping) else list(batches)
    replay = Replay(len(batches))
    stacks = block_stacks(model)
    num_blocks = sum(len(s) for s in stacks)
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: the number of top blocks that run, >= 1.")
    frozen = num_blocks - top_k
    if frozen <= 0:
        yield replay
        return
    if len(stacks) != 1:
        raise ValueError(
            f"replay_lower_blocks: {type(unwrap_model(model)).__name__} keeps its blocks in {len(stacks)} stacks "
            "(an encoder-decoder); replaying needs a single stack. Train the top blocks without replay."
        )
    (stack,) = stacks
    recorded: list[Any] = []
    handle = stack[frozen - 1].register_forward_hook(lambda module, args, output: recorded.append(output))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        handle.remove()
    originals = [stack[i] for i in range(frozen)]
    outputs = [_detached(output) for output in recorded]
    try:
        for i, block in enumerate(originals):
            stack[i] = _ReplayedBlock(block, outputs, replay)
        yield replay
    finally:
        for i, block in enumerate(originals):
            stack[i] = block
