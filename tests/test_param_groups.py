import pytest
import torch
from transformers import Trainer, get_scheduler

from hf_metatransfer.finetune.schedule import PhasedLR, schedule_factor
from hf_metatransfer.layers import build_layer_map
from hf_metatransfer.param_groups import (
    layerwise_param_groups,
    no_decay_param_names,
    reinit_,
    relative_grad_norms,
    set_trainable_,
    trainable_depths,
)
from tests.tiny_models import tiny_model


def test_every_parameter_gets_the_lr_of_the_formula(arch):
    model = tiny_model(arch)
    lm = build_layer_map(model)
    lr, decay = 1e-3, 0.7
    head_lr = 5e-3 if lm.head.param_names else None  # a tied LM head has no LR of its own (bad_input tests)
    groups = layerwise_param_groups(model, lr, decay, head_lr=head_lr, weight_decay=0.01)
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert sorted(lr_of) == sorted(n for n, _ in model.named_parameters())
    top = lm.num_blocks + 1
    for name in lr_of:
        depth = lm.depth(name)
        expected = head_lr if depth == top else lr * decay ** (top - depth)
        assert lr_of[name] == pytest.approx(expected, rel=1e-12), name
    # the embeddings are the deepest: lr x decay^(L + 1)
    for name in lm.embeddings.param_names:
        assert lr_of[name] == pytest.approx(lr * decay ** (lm.num_blocks + 1))
    assert groups[0]["depth"] == top or not lm.head.param_names  # head first: Trainer logs group 0


def test_bias_and_norm_weights_keep_weight_decay_exemption(arch):
    model = tiny_model(arch)
    groups = layerwise_param_groups(model, 1e-3, 0.9, weight_decay=0.1)
    wd_of = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    # The reference: what transformers.Trainer itself exempts (it uses no instance state).
    decay = set(Trainer.get_decay_parameter_names(None, model))
    for name, wd in wd_of.items():
        assert wd == (0.1 if name in decay else 0.0), name
    assert no_decay_param_names(model) == {n for n, wd in wd_of.items() if wd == 0.0}


def test_groups_work_in_a_plain_optimizer_without_trainer():
    model = tiny_model("bert")
    opt = torch.optim.AdamW(layerwise_param_groups(model, 1e-3, 0.5, per_tensor=True))
    assert len(opt.param_groups) == len(list(model.parameters()))
    assert {g["lr"] for g in opt.param_groups} == {1e-3 * 0.5**d for d in range(5)}


def test_decay_outside_unit_interval_is_rejected():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"layerwise_lr_decay must be in \(0, 1\]"):
            layerwise_param_groups(tiny_model("bert"), 1e-3, bad)


def test_trainable_depths_and_set_trainable():
    model = tiny_model("bert")
    lm = build_layer_map(model)
    assert trainable_depths(lm, unfrozen_from_top=2) == {3, 4}
    assert trainable_depths(lm, blocks=[0], head=False) == {1}
    on = set_trainable_(model, lm, {1, 4})
    assert set(on) == set(lm.blocks[0].param_names) | set(lm.head.param_names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(on)


def test_relative_grad_norms_formula():
    model = tiny_model("bert")
    out = model(input_ids=torch.randint(1, 100, (4, 6)), labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    rgn = relative_grad_norms(model)
    with_grad = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    raw = {n: (p.grad.norm() / p.norm()).item() for n, p in with_grad if p.norm() > 0}
    zeros = {n for n, p in with_grad if p.norm() == 0}
    assert zeros, "the tiny BERT has zero-initialised biases"
    top = max(raw.values())
    for n, v in raw.items():
        assert rgn[n] == pytest.approx(v / top, rel=1e-5)
    assert all(rgn[n] == 1.0 for n in zeros) and set(rgn) == set(raw) | zeros


def test_reinit_changes_only_head_and_top_blocks():
    model = tiny_model("bert")
    lm = build_layer_map(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    done = set(
        reinit_(model, lm, head=True, top_k_blocks=1, std=0.5, generator=torch.Generator().manual_seed(0))
    )
    assert done == set(lm.head.param_names) | set(lm.blocks[-1].param_names)
    for n, p in model.named_parameters():
        if n not in done:
            assert torch.equal(p, before[n]), n
        elif n.endswith("weight") and "LayerNorm" not in n:
            assert not torch.equal(p, before[n]), n
    ln = dict(model.named_parameters())["bert.encoder.layer.2.output.LayerNorm.weight"]
    assert torch.all(ln == 1)
    assert torch.all(dict(model.named_parameters())["classifier.bias"] == 0)
    assert dict(model.named_parameters())["classifier.weight"].std().item() == pytest.approx(0.5, rel=0.35)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_schedule_factor_matches_transformers(kind):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = get_scheduler(kind, opt, num_warmup_steps=3, num_training_steps=20)
    for step in range(20):
        assert schedule_factor(kind, step, 20, 3) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), step
        opt.step()
        ref.step()


def test_slanted_triangular_formula():
    # Howard & Ruder (2018), eq. 3: T=100, cut_frac=0.1, ratio=32.
    T, cut = 100, 10
    assert schedule_factor("slanted_triangular", 0, T) == pytest.approx(1 / 32)
    assert schedule_factor("slanted_triangular", cut, T) == pytest.approx(1.0)
    p = 1 - (55 - cut) / (cut * (1 / 0.1 - 1))
    assert schedule_factor("slanted_triangular", 55, T) == pytest.approx((1 + p * 31) / 32)


def test_phased_lr_switch_and_state_roundtrip():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.5}])
    phases = {
        "lp": {"base_lrs": [0.1, 0.0], "schedule": "constant"},
        "ft": {"base_lrs": [1.0, 0.5], "schedule": "linear", "warmup": 2},
    }
    sched = PhasedLR(opt, phases, first_phase="lp", total_steps=12)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.0]
    for _ in range(4):
        opt.step()
        sched.step()
    sched.start_phase("ft")  # 8 steps left, warmup 2
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.25])
    sched.set_scales([1.0, 0.5])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.125])
    state = sched.state_dict()
    other = PhasedLR(opt, phases, first_phase="lp", total_steps=12)
    other.load_state_dict(state)
    opt.step()
    sched.step()
    other.step()
    assert other.get_last_lr() == sched.get_last_lr() == pytest.approx([1.0, 0.5 * 0.5])  # warmup over
