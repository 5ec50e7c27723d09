"""The prefix key/value cache of in-context translation: the shared K-example prompt is encoded once per call and
the greedy translations are exactly those of whole prompts, for queries of different lengths in one batch, with
and without a chat template, on a plain and on a LoRA-wrapped tiny random Llama (float32)."""

from __future__ import annotations

import pytest
import torch

from hf_metatransfer.translation import InContext, TaskTexts, TranslationBatcher, add_lora, translate
from tests.test_translation_budget import EXAMPLES, chat_tokenizer
from tests.test_translation_models import PROMPT, char_tokenizer, tiny_llama

SOURCES = ["a", "w1b", "a much longer query", "w12cd", "xyz xyz"]  # different lengths in one batch


def llama(seed: int) -> torch.nn.Module:
    """The tiny Llama with larger random weights: at the default init (std 0.02) its greedy output hardly depends
    on the query, which would make a wrong cache undetectable."""
    config = tiny_llama().config
    config.initializer_range = 0.3
    torch.manual_seed(seed)
    return type(tiny_llama())(config)


class TokenCounter:
    """Records the sequence length of every forward call of a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(ids.shape[1])


@pytest.mark.parametrize("tokenizer", [char_tokenizer, chat_tokenizer], ids=["raw", "chat"])
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_cached_prefix_gives_the_uncached_translations(tokenizer, batch_size):
    model = llama(seed=3)
    batcher = TranslationBatcher.for_model(model, tokenizer(), prompt=PROMPT, max_target_length=10)
    run = dict(examples=EXAMPLES, batch_size=batch_size, max_new_tokens=8, progress=False)
    uncached = translate(model, batcher, SOURCES, "en", "xx", prefix_cache=False, **run)
    counter = TokenCounter(model)
    cached = translate(model, batcher, SOURCES, "en", "xx", **run)
    assert cached == uncached
    assert sum(len(t) >= 3 for t in uncached) >= 3 and len(set(uncached)) > 1  # real, differing outputs

    prompts = batcher.prompt_ids(SOURCES, "en", "xx", EXAMPLES)
    context = len(batcher.prompt_ids(["a"], "en", "xx", EXAMPLES)[0]) - len(
        batcher.prompt_ids(["a"], "en", "xx")[0]
    )
    assert counter.lengths[0] > context  # one forward over the shared prefix (it holds the 8 examples) ...
    assert counter.lengths.count(counter.lengths[0]) == 1  # ... encoded once for all batches
    assert max(counter.lengths[1:]) < min(len(p) for p in prompts)  # no query re-reads the prefix


def test_cache_is_reused_across_batches_without_being_extended():
    """Batches after the first start from the untouched prefix: a second call gives the same outputs too."""
    model = llama(seed=5)
    batcher = TranslationBatcher.for_model(model, char_tokenizer(), prompt=PROMPT, max_target_length=10)
    run = dict(examples=EXAMPLES[:4], batch_size=2, max_new_tokens=6, progress=False)
    first = translate(model, batcher, SOURCES, "en", "xx", **run)
    assert len(set(first)) > 1
    assert first == translate(model, batcher, SOURCES, "en", "xx", **run)
    assert first == translate(model, batcher, SOURCES, "en", "xx", prefix_cache=False, **run)


def test_lora_model_and_the_in_context_method_use_the_cache_with_the_same_outputs():
    model = add_lora(llama(seed=7), r=4, alpha=8)
    with torch.no_grad():  # a non-zero adapter, so the LoRA path is exercised
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batcher = TranslationBatcher.for_model(model, chat_tokenizer(), prompt=PROMPT, max_target_length=10)
    task = TaskTexts("en", "xx", [s for s, _ in EXAMPLES], [t for _, t in EXAMPLES], SOURCES, SOURCES)
    counter = TokenCounter(model.get_base_model())
    method = InContext().translations(model, batcher, task, batch_size=3, max_new_tokens=8, progress=False)
    uncached = translate(model, batcher, SOURCES, "en", "xx", examples=EXAMPLES, batch_size=3, max_new_tokens=8,
                         progress=False, prefix_cache=False)  # fmt: skip
    assert method == uncached and sum(len(t) >= 3 for t in method) >= 3 and len(set(method)) > 1
    assert counter.lengths.count(counter.lengths[0]) == 1 and counter.lengths[0] > 100  # the prefix, once


def test_beam_search_takes_whole_prompts():
    model = llama(seed=3)
    batcher = TranslationBatcher.for_model(model, char_tokenizer(), prompt=PROMPT, max_target_length=10)
    counter = TokenCounter(model)
    translate(model, batcher, SOURCES[:2], "en", "xx", examples=EXAMPLES, num_beams=2, max_new_tokens=4,
              progress=False)  # fmt: skip
    assert counter.lengths[0] == max(len(p) for p in batcher.prompt_ids(SOURCES[:2], "en", "xx", EXAMPLES))
