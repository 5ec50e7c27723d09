"""Batched translation with ``generate``, with a progress bar: greedy or beam search, one line per source.

The prompts of a call share their start (the instruction and the in-context examples, up to thousands of tokens
at K=32): with greedy decoding on a decoder-only LM that shared prefix is encoded once and its key/value cache
reused by every batch (a copy each, since ``generate`` extends the cache in place). Each batch's suffixes are
left-padded after the prefix (prefix, padding, suffix) with the padding masked out, and ``generate`` takes the
positions from the attention mask, so every query sees exactly the tokens and positions of its uncached prompt.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationMixin
from transformers.cache_utils import DynamicLayer

from .batches import Examples, TranslationBatcher

__all__ = ["translate"]

# transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name still works, with a warning).
_CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


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
    prefix_cache: bool = True,
) -> list[str]:
    """Translate ``sources`` from ``source_lang`` into ``target_lang``; ``examples`` are in-context pairs put in
    the prompt of a decoder-only LM. ``max_new_tokens`` defaults to the batcher's ``max_target_length``.
    ``prefix_cache``: encode the prompts' shared start once (greedy decoding of decoder-only LMs; same outputs)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kwargs = {"max_new_tokens": max_new_tokens or batcher.max_target_length, "num_beams": num_beams,
              "do_sample": False, **batcher.generation_kwargs(target_lang)}  # fmt: skip
    prompts = batcher.prompt_ids(sources, source_lang, target_lang, examples)
    prefix, cache = [], None
    if prefix_cache and num_beams == 1 and not batcher.is_encoder_decoder and _dynamic_cache_ok(model):
        prefix = prompts[0][: _shared_length(prompts)]
        cache = _encode(model, prefix, device) if prefix else None
    out: list[str] = []
    starts = range(0, len(sources), batch_size)
    for start in tqdm(
        starts, desc=f"Translating {source_lang}->{target_lang}", disable=not progress, leave=False
    ):
        rows = prompts[start : start + batch_size]
        if cache is None:
            batch = {k: v.to(device) for k, v in batcher.pad_prompts(rows).items()}
            generated = model.generate(**batch, **kwargs)
        else:
            batch = _after_prefix(batcher.pad_prompts([r[len(prefix) :] for r in rows]), prefix, device)
            generated = model.generate(**batch, **kwargs, **{_CACHE_KWARG: _copy(cache, len(rows))})
        out += batcher.decode(generated, batch["input_ids"].shape[1])
    model.train(was_training)
    return out


def _shared_length(prompts: list[list[int]]) -> int:
    """Tokens all prompts start with, leaving at least one token of each to feed ``generate``."""
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def _dynamic_cache_ok(model: nn.Module) -> bool:
    """Whether the model decodes with a plain full-attention DynamicCache (not a static or sliding one)."""
    config = getattr(model, "generation_config", None)
    return getattr(config, "cache_implementation", None) in (None, "dynamic")


def _encode(model: nn.Module, prefix: list[int], device: torch.device) -> DynamicCache | None:
    """The key/value cache of ``prefix`` (batch of one); None when the model's cache is not a plain full-attention
    one (sliding windows drop the prefix's start), so the caller falls back to whole prompts."""
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    model(
        input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{_CACHE_KWARG: cache}, **extra
    )
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return cache if cache.get_seq_length() == len(prefix) else None


def _copy(cache: DynamicCache, rows: int) -> DynamicCache:
    """A copy of the prefix cache for a batch of ``rows`` (generate appends to it in place)."""
    copied = copy.deepcopy(cache)
    if rows > 1:
        copied.batch_repeat_interleave(rows)
    return copied


def _after_prefix(suffixes: dict[str, torch.Tensor], prefix: list[int], device: torch.device) -> dict:
    """Whole inputs for ``generate`` from left-padded suffixes: prefix, padding, suffix, padding masked."""
    rows = suffixes["input_ids"].shape[0]
    ids = torch.tensor([prefix], dtype=torch.long).expand(rows, -1)
    return {
        "input_ids": torch.cat([ids, suffixes["input_ids"]], dim=1).to(device),
        "attention_mask": torch.cat([torch.ones_like(ids), suffixes["attention_mask"]], dim=1).to(device),
    }
