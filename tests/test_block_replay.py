"""Replaying frozen lower blocks: the same outputs and gradients as running them, on every single-stack family the
layer map reads, fewer blocks run, and the model is whole again afterwards."""

import contextlib

import pytest
import torch

from hf_metatransfer.block_replay import Replay, replay_lower_blocks
from hf_metatransfer.layers import block_stacks, build_layer_map
from hf_metatransfer.meta import FineTune, ProtoHeadFineTune, SupportTuned
from hf_metatransfer.meta.fast_weights import fast_weight_names
from tests.test_test_time_methods import episode
from tests.tiny_models import ARCHITECTURES, NUM_BLOCKS, tiny_model

SINGLE_STACK = [a for a in ARCHITECTURES if a not in NUM_BLOCKS]


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def count_block_calls(model):
    calls = []
    handles = [b.register_forward_hook(lambda *_: calls.append(1)) for b in block_stacks(model)[0]]
    return calls, handles


@pytest.mark.parametrize("arch", SINGLE_STACK)
@pytest.mark.parametrize("top_k", [1, 2])
def test_outputs_and_top_block_gradients_match_running_every_block(arch, top_k):
    model = tiny_model(arch).eval()
    inputs = batch()
    top = set(fast_weight_names(model, "top_k", top_k=top_k, layer_map=build_layer_map(model)))
    for n, p in model.named_parameters():
        p.requires_grad_(n in top)
    expected = model(**inputs).logits
    expected.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    calls, handles = count_block_calls(model)
    with replay_lower_blocks(model, top_k, inputs):
        calls.clear()
        got = model(**inputs).logits
        got.pow(2).sum().backward()
        run_inside = len(calls)
    for h in handles:
        h.remove()
    assert run_inside == top_k  # the lower blocks did not run
    assert torch.allclose(got, expected, atol=1e-5)
    assert grads and all(torch.allclose(p.grad, grads[n], atol=1e-5) for n, p in model.named_parameters()
                         if n in grads)  # fmt: skip


def test_the_model_is_whole_again_after_the_context_even_after_an_error():
    model = tiny_model("bert").eval()
    blocks = list(block_stacks(model)[0])
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(KeyError), replay_lower_blocks(model, 1, batch()):
        assert len([n for n, _ in model.named_parameters()]) < len(names)
        raise KeyError("interrupted")
    assert list(block_stacks(model)[0]) == blocks
    assert [n for n, _ in model.named_parameters()] == names


def test_another_batch_is_refused_and_top_k_at_the_depth_replays_nothing():
    model = tiny_model("llama").eval()
    inputs = batch()
    other = {k: v[:2] for k, v in inputs.items()}
    with (
        replay_lower_blocks(model, 1, inputs),
        pytest.raises(RuntimeError, match="only on the selected batch"),
    ):
        model(**other)
    calls, handles = count_block_calls(model)
    with replay_lower_blocks(model, 3, inputs):
        calls.clear()
        model(**other)
        assert len(calls) == 3
    for h in handles:
        h.remove()


def test_several_batches_replay_the_selected_one_even_when_their_shapes_agree():
    model = tiny_model("bert").eval()
    first = batch()
    second = {**first, "input_ids": first["input_ids"].flip(0)}
    expected = [model(**b).logits for b in (first, second)]
    with replay_lower_blocks(model, 1, [first, second]) as replay:
        assert torch.allclose(model(**first).logits, expected[0], atol=1e-5)  # the first is selected on entry
        replay.select(1)
        assert torch.allclose(model(**second).logits, expected[1], atol=1e-5)
        assert not torch.allclose(expected[0], expected[1], atol=1e-3)
        with pytest.raises(IndexError, match="given 2 batch"):
            replay.select(2)


def test_encoder_decoders_are_refused_with_the_way_out():
    with pytest.raises(ValueError, match="2 stacks.*without replay"), replay_lower_blocks(tiny_model("bart"), 1,
                                                                                          batch()):  # fmt: skip
        pass
    with pytest.raises(ValueError, match="top_k=0"), replay_lower_blocks(tiny_model("bert"), 0, batch()):
        pass


@pytest.mark.parametrize(
    "method",
    [
        FineTune(steps=3, lr=1e-2, lp_ft=True, body_blocks=1),
        ProtoHeadFineTune(steps=3, lr=1e-2, body_blocks=1),
    ],
)
def test_top_block_methods_give_what_running_every_block_gives_and_leave_the_lower_blocks(
    method, monkeypatch
):
    from tests.meta_fixtures import tiny_bert

    model = tiny_bert().eval()
    support, query = episode(k=3)
    tuned_copies = []
    replay = SupportTuned.training_steps

    def spy(replaying):
        def training_steps(self, tuned, chunks):
            tuned_copies.append(tuned)
            return replay(self, tuned, chunks) if replaying else contextlib.nullcontext(Replay(len(chunks)))

        return training_steps

    monkeypatch.setattr(SupportTuned, "training_steps", spy(True))
    replayed = method.predict(model, support, query)
    monkeypatch.setattr(SupportTuned, "training_steps", spy(False))
    every_block = method.predict(model, support, query)
    assert torch.allclose(replayed, every_block, atol=1e-5)
    original = dict(model.named_parameters())
    moved = {n for n, p in tuned_copies[0].named_parameters() if not torch.equal(p, original[n])}
    assert moved and all(
        n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in moved
    )
