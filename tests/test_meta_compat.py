"""The transformers workaround of meta/compat.py: the symbol it patches is still there and used, the
patch makes transformers models run under vmap and is undone, and without it tasks go to the loop."""

import inspect
import logging

import pytest
import torch
import transformers
from torch.func import vmap
from transformers import masking_utils

from hf_metatransfer.meta import FOMAML
from hf_metatransfer.meta.compat import CHECKED_ON, PATCHED, masks_traced_under_functorch
from tests.meta_fixtures import SineNet, SineTasks
from tests.test_meta_algorithms import tiny_bert

UPDATE = (
    f"transformers {transformers.__version__} changed what hf_metatransfer/meta/compat.py patches "
    f"({PATCHED}, checked on {CHECKED_ON}): find what transformers.masking_utils now calls before it "
    "reads padding_mask.all(), patch that in masks_traced_under_functorch, and update CHECKED_ON."
)


def test_transformers_masking_code_still_calls_the_patched_is_tracing():
    assert callable(getattr(masking_utils, "is_tracing", None)), UPDATE
    assert "is_tracing(padding_mask)" in inspect.getsource(masking_utils), UPDATE


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_transformers_model_runs_under_vmap_inside_the_context_only(attention):
    model = tiny_bert()
    model.set_attn_implementation(attention)
    ids = torch.randint(1, 60, (2, 3, 5), generator=torch.Generator().manual_seed(0))
    masks = torch.ones_like(ids)  # task 0 unpadded (transformers would skip its mask), task 1 padded
    masks[1, 0, -1] = 0

    def logits(i, m):
        return model(input_ids=i, attention_mask=m).logits

    with pytest.raises(RuntimeError, match="data-dependent control flow"):
        vmap(logits)(ids, masks)  # if this passes, transformers no longer needs the patch: compat may go
    original = masking_utils.is_tracing
    with torch.no_grad(), masks_traced_under_functorch():
        batched = vmap(logits)(ids, masks)
    assert masking_utils.is_tracing is original
    with torch.no_grad():
        looped = torch.stack([logits(i, m) for i, m in zip(ids, masks)])
    assert torch.allclose(batched, looped, atol=1e-5)


def test_contexts_are_counted_and_the_original_comes_back_whatever_the_order():
    original = masking_utils.is_tracing
    first, second = masks_traced_under_functorch(), masks_traced_under_functorch()
    first.__enter__()
    second.__enter__()
    patched = masking_utils.is_tracing
    assert patched is not original and not patched(torch.ones(2))
    assert vmap(lambda t: t * patched(t))(torch.ones(2, 3)).eq(1).all()  # functorch tensors count as traced
    first.__exit__(None, None, None)  # closed out of order, as two threads may
    assert masking_utils.is_tracing is patched
    second.__exit__(None, None, None)
    assert masking_utils.is_tracing is original


def test_without_is_tracing_the_context_raises_and_batches_run_one_task_at_a_time(monkeypatch, caplog):
    monkeypatch.delattr(masking_utils, "is_tracing")
    with pytest.raises(RuntimeError, match=rf"transformers {transformers.__version__} has no {PATCHED}"):
        with masks_traced_under_functorch():
            pass
    sine = SineTasks(k=5, q=5)
    tasks = [(b["support"], b["query"]) for b in map(sine, sine.batch(range(3)))]
    torch.manual_seed(0)
    model = SineNet()  # no transformers masks in its forward: the loop runs without is_tracing
    algo = FOMAML(inner_steps=1, inner_lr=0.01, loss="mse")
    algo.setup(model)
    with caplog.at_level(logging.WARNING, logger="hf_metatransfer.meta.algorithms"):
        result = algo.batch_task_gradient(model, tasks)
    assert algo.vmap_fallbacks == 1 and PATCHED in caplog.text
    looped = [algo.task_gradient(model, s, q).grads for s, q in tasks]
    for n, g in result.grads.items():
        assert torch.allclose(g, sum(grads[n] for grads in looped) / len(looped), atol=1e-6), n
