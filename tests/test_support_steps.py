"""The support-set steps of the fine-tuning methods: length-sorted micro-batches keep every row, drop pad columns
and give the full-batch gradient, with and without replayed lower blocks; bfloat16 autocast runs the forward in
bfloat16 and leaves float32 weights with a gradient close to float32's."""

import pytest
import torch
import torch.nn.functional as F

from hf_metatransfer.episodes import micro_batches
from hf_metatransfer.meta import FineTune, ProtoHeadFineTune
from hf_metatransfer.meta.algorithms import model_inputs
from tests.meta_fixtures import tiny_bert
from tests.test_test_time_methods import episode


def padded(lengths, side="right"):
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, width - n :] = 1
    ids = torch.arange(len(lengths) * width).view(len(lengths), width) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(len(lengths))}


def test_micro_batches_keep_every_row_sorted_by_length_without_trailing_pad_columns():
    batch = padded([3, 9, 2, 5, 9, 1, 4])
    chunks = micro_batches(batch, 3)
    assert [len(c["labels"]) for c in chunks] == [3, 2, 2]  # near-equal sizes, at most 3
    assert sorted(torch.cat([c["labels"] for c in chunks]).tolist()) == list(range(7))
    assert [c["input_ids"].shape[1] for c in chunks] == [3, 5, 9]  # each as wide as its longest row
    for chunk in chunks:
        for ids, mask, label in zip(
            chunk["input_ids"], chunk["attention_mask"], chunk["labels"], strict=True
        ):
            n = int(mask.sum())
            assert torch.equal(ids[:n], batch["input_ids"][label, :n])
    assert sum(c["input_ids"].numel() for c in chunks) < batch["input_ids"].numel()


def test_micro_batches_leave_left_padding_its_width_and_small_batches_whole():
    batch = padded([3, 9, 2, 5], side="left")
    assert all(c["input_ids"].shape[1] == 9 for c in micro_batches(batch, 2))
    assert micro_batches(batch, 4) == [batch] and micro_batches(batch, None) == [batch]
    with pytest.raises(ValueError, match="size=0"):
        micro_batches(batch, 0)
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        FineTune(micro_batch_size=0)


def support_with_unequal_lengths():
    support, _ = episode(k=3, q=4)
    for row, n in enumerate([7, 3, 5, 2, 6, 4, 7, 3, 5]):
        support["attention_mask"][row, n:] = 0
        support["input_ids"][row, n:] = 0
    return support


def fine_tune_loss(method, model):
    return lambda batch: F.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"])


def proto_head_loss(method, model):
    weight = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    return lambda batch: F.cross_entropy(method._embed(model, batch) @ weight.T, batch["labels"])


@pytest.mark.parametrize("body_blocks", [None, 1])
@pytest.mark.parametrize(("method", "loss"), [(FineTune(steps=1), fine_tune_loss),
                                              (ProtoHeadFineTune(steps=1), proto_head_loss)])  # fmt: skip
def test_a_micro_batched_step_has_the_full_batch_gradient(method, loss, body_blocks):
    """The gradient is what micro-batching claims to keep (AdamW's first step, about lr * sign(g), would turn the
    float noise of a gradient that is zero in exact arithmetic, like a key bias's, into whole steps)."""
    support = support_with_unequal_lengths()
    gradients = {}
    for size in (None, 2):
        model = tiny_bert().eval()
        method.body_blocks, method.micro_batch_size = body_blocks, size
        body = method.trainable_body(model)
        for n, p in model.named_parameters():
            p.requires_grad_(n in body)
        method.train_on_support(
            model, support, torch.optim.SGD(model.parameters(), lr=0.0), loss(method, model)
        )
        gradients[size] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(micro_batches(support, 2)) == 5
    assert gradients[None].keys() == gradients[2].keys() and len(gradients[None]) >= 4
    for name, grad in gradients[None].items():
        assert grad.abs().max() > 0 or "key.bias" in name
        assert torch.allclose(gradients[2][name], grad, rtol=1e-4, atol=1e-6), name
    if body_blocks == 1:
        assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in gradients[None])


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_float32_weights():
    support = support_with_unequal_lengths()
    gradients, dtypes = {}, []
    for dtype in (None, torch.bfloat16):
        model = tiny_bert().eval()
        model.classifier.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
        method = FineTune(steps=1, autocast_dtype=dtype, micro_batch_size=4)
        method.train_on_support(
            model, support, torch.optim.SGD(model.parameters(), lr=0.0), fine_tune_loss(method, model)
        )
        gradients[dtype] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert dtypes[:3] == [torch.float32] * 3 and dtypes[3:] == [torch.bfloat16] * 3  # 3 micro-batches each
    assert gradients[torch.bfloat16].dtype == torch.float32
    # bfloat16 keeps ~3 significant digits: on this random 16-wide model the gradient's direction agrees to 0.9
    assert F.cosine_similarity(gradients[None], gradients[torch.bfloat16], dim=0) > 0.8
    assert not torch.equal(gradients[None], gradients[torch.bfloat16])  # it did run in another precision
    assert "bfloat16 autocast" in FineTune(autocast_dtype=torch.bfloat16).settings
