"""Batched translation with ``generate``, with a progress bar: greedy or beam search, one line per source."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import Examples, TranslationBatcher

__all__ = ["translate"]


@torch.no_grad()
def translate(
    model: nn.Module,
    batcher: TranslationBatcher,
    sources: Sequence[str],
    source_lang: str,
    target_lang: str,
    *,
    examples: Examples = (),
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    progress: bool = True,
) -> list[str]:
    """Translate ``sources`` from ``source_lang`` into ``target_lang``; ``examples`` are in-context pairs put in
    the prompt of a decoder-only LM. ``max_new_tokens`` defaults to the batcher's ``max_target_length``."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kwargs = {"max_new_tokens": max_new_tokens or batcher.max_target_length, "num_beams": num_beams,
              "do_sample": False, **batcher.generation_kwargs(target_lang)}  # fmt: skip
    out: list[str] = []
    starts = range(0, len(sources), batch_size)
    for start in tqdm(
        starts, desc=f"Translating {source_lang}->{target_lang}", disable=not progress, leave=False
    ):
        batch = batcher.generation_batch(
            sources[start : start + batch_size], source_lang, target_lang, examples
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        generated = model.generate(**batch, **kwargs)
        out += batcher.decode(generated, batch["input_ids"].shape[1])
    model.train(was_training)
    return out
