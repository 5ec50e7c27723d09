import copy

import higher
import pytest
import torch
import torch.nn.functional as F
import transformers as T

from hf_metatransfer.meta import ANIL, FOMAML, MAML, MetaSGD, ProtoNets, Reptile, fast_weight_names


def tiny_bert(seed=0, dtype=torch.float32, n_way=3):
    torch.manual_seed(seed)
    cfg = T.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                       num_labels=n_way, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       attn_implementation="eager")  # fmt: skip
    return T.BertForSequenceClassification(cfg).to(dtype).eval()


def task(seed=0, n_way=3, k=2, q=3, length=6):
    g = torch.Generator().manual_seed(seed)

    def batch(per):
        ids = torch.randint(1, 60, (n_way * per, length), generator=g)
        mask = torch.ones_like(ids)
        mask[::2, -2:] = 0
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.arange(n_way).repeat_interleave(per),
        }

    return batch(k), batch(q)


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def reference_maml_grads(model, support, query, steps, lr, fast):
    """Sequential MAML with `higher` (an independent implementation): differentiable SGD on a functional copy."""
    inner_params = [p for n, p in model.named_parameters() if n in fast]
    opt = torch.optim.SGD(inner_params, lr=lr)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=True) as (
        fmodel,
        diffopt,
    ):
        for _ in range(steps):
            diffopt.step(F.cross_entropy(fmodel(**{k: v for k, v in support.items() if k != "labels"}).logits,
                                         support["labels"]))  # fmt: skip
        loss = F.cross_entropy(
            fmodel(**{k: v for k, v in query.items() if k != "labels"}).logits, query["labels"]
        )
        grads = torch.autograd.grad(loss, [p for _, p in trainable(model)], allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(trainable(model), grads)}


def test_maml_meta_gradient_equals_higher_reference():
    model = tiny_bert()
    support, query = task()
    algo = MAML(inner_steps=2, inner_lr=0.3)
    algo.setup(model)
    ours = algo.task_gradient(model, support, query).grads
    ref = reference_maml_grads(model, support, query, 2, 0.3, set(algo.fast))
    for name, g in ref.items():
        assert torch.allclose(ours[name], g, atol=1e-6, rtol=1e-4), name
    assert sum(g.abs().sum() for g in ours.values()) > 0


def test_maml_meta_gradient_matches_finite_differences():
    model = tiny_bert(dtype=torch.float64)
    support, query = task(1)
    algo = MAML(inner_steps=2, inner_lr=0.5)
    algo.setup(model)
    grads = algo.task_gradient(model, support, query).grads
    direction = {n: torch.randn_like(p) for n, p in trainable(model)}
    analytic = sum((grads[n] * d).sum() for n, d in direction.items()).item()

    def meta_loss(eps):
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in shifted.named_parameters():
                p.add_(eps * direction[n])
        adapted = algo.adapt(shifted, support, create_graph=False)
        return algo.loss(shifted, adapted, query)[0].item()

    eps = 1e-5
    numeric = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)
    # and it differs from the first-order approximation, so second order is really there
    fo = FOMAML(inner_steps=2, inner_lr=0.5)
    fo.setup(model)
    first = fo.task_gradient(model, support, query).grads
    assert abs(sum((first[n] * d).sum() for n, d in direction.items()).item() - analytic) > 1e-6


def test_fomaml_is_the_query_gradient_at_the_adapted_weights():
    model = tiny_bert()
    support, query = task(2)
    algo = FOMAML(inner_steps=3, inner_lr=0.2)
    algo.setup(model)
    ours = algo.task_gradient(model, support, query).grads
    adapted = copy.deepcopy(model)
    opt = torch.optim.SGD(adapted.parameters(), lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        adapted(**support).loss.backward()
        opt.step()
    adapted.zero_grad()
    adapted(**query).loss.backward()
    for n, p in trainable(adapted):
        assert torch.allclose(ours[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_reptile_gradient_is_the_scaled_difference_to_the_adapted_weights():
    model = tiny_bert()
    support, query = task(3)
    algo = Reptile(inner_steps=3, inner_lr=0.1)
    algo.setup(model)
    ours = algo.task_gradient(model, support, query).grads
    adapted = copy.deepcopy(model)
    opt = torch.optim.SGD(adapted.parameters(), lr=0.1)
    both = {k: torch.cat([support[k], query[k]]) for k in support}
    for _ in range(3):
        opt.zero_grad()
        adapted(**both).loss.backward()
        opt.step()
    for (n, p), (_, phi) in zip(trainable(model), trainable(adapted)):
        assert torch.allclose(ours[n], (p - phi) / 0.3, atol=1e-5, rtol=1e-4), n


def test_anil_adapts_the_head_and_meta_learns_the_body():
    model = tiny_bert()
    support, query = task(4)
    algo = ANIL(inner_steps=2, inner_lr=0.5)
    algo.setup(model)
    assert set(algo.fast) == {"classifier.weight", "classifier.bias"}
    grads = algo.task_gradient(model, support, query).grads
    ref = reference_maml_grads(model, support, query, 2, 0.5, set(algo.fast))
    for n, g in ref.items():
        assert torch.allclose(grads[n], g, atol=1e-6, rtol=1e-4), n
    assert grads["bert.encoder.layer.0.attention.self.query.weight"].abs().sum() > 0


def test_metasgd_with_uniform_lrs_is_maml_and_learns_its_lrs():
    model = tiny_bert()
    support, query = task(5)
    maml, msgd = MAML(inner_steps=1, inner_lr=0.3), MetaSGD(inner_steps=1, inner_lr=0.3)
    maml.setup(model)
    msgd.setup(model)
    a, b = maml.task_gradient(model, support, query).grads, msgd.task_gradient(model, support, query).grads
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-6), n
    lr_grads = [b[f"meta.{i}"] for i in range(len(msgd.fast))]
    assert len(lr_grads) == len(msgd.fast) and any(g.abs().sum() > 0 for g in lr_grads)
    state = msgd.state_dict()
    assert set(state) == {f"inner_lr.{n}" for n in msgd.fast}


def test_protonets_logits_are_negative_squared_distances_to_prototypes():
    model = tiny_bert()
    support, query = task(6)
    algo = ProtoNets()
    algo.setup(model)
    logits = algo.predict(model, support, query)
    with torch.no_grad():

        def embed(b):
            h = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            return (h * m).sum(1) / m.sum(1)

        protos = embed(support).reshape(3, 2, -1).mean(1)
        expected = -((embed(query)[:, None, :] - protos[None]) ** 2).sum(-1)
    assert torch.allclose(logits, expected, atol=1e-4)
    grads = algo.task_gradient(model, support, query).grads
    assert (
        grads["classifier.weight"].abs().sum() == 0
        and grads["bert.embeddings.word_embeddings.weight"].abs().sum() > 0
    )


def test_non_finite_task_is_skipped_not_propagated():
    model = tiny_bert()
    support, query = task(7)
    algo = MAML(inner_steps=1, inner_lr=1e30)
    algo.setup(model)
    with torch.no_grad():
        model.classifier.weight.mul_(1e30)
    result = algo.task_gradient(model, support, query)
    assert result.grads is None


def test_fp16_autocast_with_a_loss_scale_keeps_small_gradients_and_an_overflow_is_skipped():
    model = tiny_bert()
    support, query = task(2)
    algo = FOMAML(inner_steps=2, inner_lr=0.3)
    algo.setup(model)
    reference = algo.task_gradient(model, support, query).grads  # fp32
    before = {n: p.clone() for n, p in model.named_parameters()}

    def fp16(scale, batched=False):
        algo.loss_scale = scale
        with torch.autocast("cpu", dtype=torch.float16):
            if batched:
                return algo.batch_task_gradient(model, [(support, query), task(3)])
            return algo.task_gradient(model, support, query)

    def underflowed(grads):
        return sum(int(((grads[n] == 0) & (g != 0)).sum()) for n, g in reference.items())

    unscaled, scaled = fp16(1.0).grads, fp16(1024.0).grads
    for n, g in reference.items():
        assert torch.isfinite(scaled[n]).all() and (scaled[n] - g).norm() <= 0.05 * g.norm() + 1e-8, n
    # this model's attention gradients are ~1e-7: fp16 flushes hundreds of their elements to 0 unless scaled
    assert underflowed(scaled) < underflowed(unscaled) / 10
    assert fp16(1e30).grads is None  # inf in the fp16 backward: the task is skipped
    overflow = fp16(1e30, batched=True)
    assert overflow.grads is None and overflow.skipped == 2 and algo.vmap_fallbacks == 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_fast_weight_selection():
    model = tiny_bert()
    assert fast_weight_names(model, "head") == ["classifier.weight", "classifier.bias"]
    top = fast_weight_names(model, "top_k", top_k=1)
    assert all("layer.1." in n or "pooler" in n or "classifier" in n for n in top)
    assert len(fast_weight_names(model, "all")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="needs a PEFT LoRA model"):
        fast_weight_names(model, "lora")
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2)
    )
    lora = fast_weight_names(peft_model, "lora")
    assert lora and all("lora_" in n or "modules_to_save" in n for n in lora)


def test_protonets_projection_starts_as_no_projection_and_is_meta_learned():
    model = tiny_bert()
    support, query = task(8)
    plain, projected = ProtoNets(), ProtoNets(projection_dim=16)  # 16 = the hidden size: an orthogonal start
    plain.setup(model)
    projected.setup(model)
    assert torch.allclose(
        projected.predict(model, support, query), plain.predict(model, support, query), atol=1e-4
    )
    grads = projected.task_gradient(model, support, query).grads
    assert grads["meta.0"].shape == (16, 16) and grads["meta.0"].abs().sum() > 0
    narrow = ProtoNets(projection_dim=4)
    narrow.setup(model)
    assert narrow.embed(model, narrow.weights(model), query).shape == (9, 4)
    again = ProtoNets(projection_dim=4)
    again.setup(model)  # the same start without touching the global RNG: processes agree
    assert torch.equal(again.projection.weight, narrow.projection.weight)
    with torch.no_grad():
        narrow.projection.weight.add_(1.0)
    again.load_state_dict(narrow.state_dict())
    assert torch.equal(again.projection.weight, narrow.projection.weight)
    with pytest.raises(ValueError, match="projection_dim=4"):
        plain.load_state_dict(narrow.state_dict())
