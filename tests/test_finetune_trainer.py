import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from hf_metatransfer.layers import build_layer_map
from hf_metatransfer.param_groups import relative_grad_norms
from tests.tiny_models import tiny_model


def toy_dataset(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (n, 8), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 3).tolist()})


def config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        logging_steps=1,
        disable_tqdm=True,
    )
    base.update(kw)
    return FineTuningConfig(**base)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Record(TrainerCallback):
    """Which parameters received a gradient at each step, and what the optimizer looked like."""

    def __init__(self, model):
        self.model, self.grads, self.at_begin = model, [], []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.grads.append({n for n, p in self.model.named_parameters() if p.grad is not None})

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        self.at_begin.append(
            (
                state.global_step,
                [g["lr"] for g in optimizer.param_groups],
                len(optimizer.state),
                getattr(lr_scheduler, "phase", None),
            )
        )


def test_layerwise_lrs_in_the_trainer_optimizer(tmp_path):
    model = tiny_model("bert")
    trainer = FineTuningTrainer(
        model=model,
        args=config(tmp_path, layerwise_lr_decay=0.5, head_learning_rate=0.01),
        train_dataset=toy_dataset(),
    )
    trainer.create_optimizer_and_scheduler(10)
    lm = trainer.layer_map
    for g in trainer.optimizer.param_groups:
        distance = lm.top_depth - g["depth"]
        assert g["lr"] == (0.01 if distance == 0 else 1e-3 * 0.5**distance)
    assert trainer.optimizer.param_groups[0]["depth"] == lm.top_depth


def test_surgical_frozen_parameters_are_bit_identical(tmp_path):
    model = tiny_model("bert")
    before = snapshot(model)
    trainer = FineTuningTrainer(
        model=model,
        args=config(tmp_path, max_steps=4, surgical_blocks=["first"]),
        train_dataset=toy_dataset(),
    )
    trainer.train()
    lm = trainer.layer_map
    trained = set(lm.blocks[0].param_names) | set(lm.head.param_names)
    for n, p in model.named_parameters():
        if n in trained:
            assert not torch.equal(p, before[n]) or "bias" in n, n
        else:
            assert torch.equal(p, before[n]), n
    assert any(
        not torch.equal(dict(model.named_parameters())[n], before[n]) for n in lm.blocks[0].param_names
    )


def test_lp_ft_switches_at_budget_with_fresh_optimizer_and_ft_schedule(tmp_path):
    model = tiny_model("bert")
    before = snapshot(model)
    rec = Record(model)
    args = config(
        tmp_path,
        max_steps=8,
        lp_ft=True,
        lp_max_steps=3,
        lp_learning_rate=0.05,
        layerwise_lr_decay=0.5,
        warmup_steps=2,
        lr_scheduler_type="linear",
    )
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset(), callbacks=[rec])
    trainer.train()
    lm = trainer.layer_map
    head = set(lm.head.param_names)
    # LP: only the head gets gradients; FT: everything.
    assert all(g == head for g in rec.grads[:3])
    assert all(g == {n for n, _ in model.named_parameters()} for g in rec.grads[3:])
    assert [h["lp_ft_switch"] for h in trainer.state.log_history if "lp_ft_switch" in h] == [3]
    # During LP the head has the LP LR and the rest 0.
    step, lrs, _, phase = rec.at_begin[1]
    assert phase == "lp" and [lr for lr, g in zip(lrs, trainer.optimizer.param_groups)] == [
        0.05 if g["depth"] == lm.top_depth else 0.0 for g in trainer.optimizer.param_groups
    ]
    # First FT step: optimizer moments cleared, warmup starts from 0; one step later LRs follow the formula.
    step, lrs, n_state, phase = rec.at_begin[3]
    assert (step, n_state, phase) == (3, 0, "ft") and all(lr == 0.0 for lr in lrs)
    step, lrs, _, _ = rec.at_begin[4]
    for lr, g in zip(lrs, trainer.optimizer.param_groups):
        assert lr == pytest.approx(1e-3 * 0.5 ** (lm.top_depth - g["depth"]) * 0.5)  # warmup 1/2
    assert all(
        not torch.equal(p, before[n])
        for n, p in model.named_parameters()
        if n.endswith("weight") and "LayerNorm" not in n
    )


def test_lp_ft_switches_when_validation_loss_stops_improving(tmp_path):
    model = tiny_model("bert")
    args = config(
        tmp_path,
        max_steps=6,
        lp_ft=True,
        lp_patience=2,
        lp_learning_rate=0.0,
        eval_strategy="steps",
        eval_steps=1,
    )
    trainer = FineTuningTrainer(
        model=model, args=args, train_dataset=toy_dataset(), eval_dataset=toy_dataset(16, 1)
    )
    trainer.train()
    # LR 0 in LP: the loss of eval 1 is the best, evals 2 and 3 do not improve -> switch at step 3.
    assert [h["lp_ft_switch"] for h in trainer.state.log_history if "lp_ft_switch" in h] == [3]


def test_gradual_unfreezing_one_group_per_stage_from_the_top(tmp_path):
    model = tiny_model("bert")
    rec = Record(model)
    args = config(
        tmp_path, max_steps=10, gradual_unfreezing=True, unfreeze_interval_steps=2, slanted_triangular=True
    )
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset(), callbacks=[rec])
    trainer.train()
    lm = trainer.layer_map
    by_depth = [set(g.param_names) for g in lm]
    expected = [set().union(*by_depth[max(0, lm.top_depth - s) :]) for s in (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)]
    assert rec.grads == expected


def test_gradual_unfreezing_per_epoch(tmp_path):
    model = tiny_model("bert")
    rec = Record(model)
    args = config(tmp_path, num_train_epochs=3, gradual_unfreezing=True)  # 48 rows / 8 = 6 steps an epoch
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset(), callbacks=[rec])
    trainer.train()
    sizes = [len(g) for g in rec.grads]
    assert sizes[:6] == [sizes[0]] * 6 and sizes[6:12] == [sizes[6]] * 6 and sizes[0] < sizes[6] < sizes[12]


def test_auto_rgn_scales_each_tensor_lr_by_relative_gradient_norm(tmp_path):
    model = tiny_model("bert")

    class Rgn(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            if state.global_step == 0:
                self.rgn = relative_grad_norms(model)

    rgn = Rgn()
    args = config(tmp_path, max_steps=2, auto_rgn=True, lr_scheduler_type="constant", layerwise_lr_decay=0.9)
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset(), callbacks=[rgn])
    trainer.train()
    lm = trainer.layer_map
    for g in trainer.optimizer.param_groups:
        (name,) = g["param_names"]
        assert g["lr"] == pytest.approx(1e-3 * 0.9 ** (lm.top_depth - g["depth"]) * rgn.rgn[name], rel=1e-6)
    assert min(g["lr"] for g in trainer.optimizer.param_groups) < 1e-4  # some tensors are slowed down


def test_lora_peft_model_with_lp_ft_and_layerwise_lr(tmp_path):
    model = get_peft_model(
        tiny_model("bert"), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2)
    )
    before = snapshot(model)
    args = config(
        tmp_path, max_steps=6, lp_ft=True, lp_max_steps=2, layerwise_lr_decay=0.8, learning_rate=1e-2
    )
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset())
    trainer.train()
    for n, p in model.named_parameters():
        if "lora_B" in n or "modules_to_save" in n:
            assert not torch.equal(p, before[n]), n
        elif "lora_" not in n:
            assert torch.equal(p, before[n]), n  # base weights never train
    assert not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)


def test_resume_across_the_lp_ft_switch_is_identical(tmp_path):
    kw = dict(
        max_steps=8,
        lp_ft=True,
        lp_max_steps=3,
        gradual_unfreezing=True,
        unfreeze_interval_steps=2,
        layerwise_lr_decay=0.8,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=None,  # checkpoint-2, resumed from below, outlives the default's two newest
        warmup_steps=1,
    )
    full = tiny_model("bert")
    FineTuningTrainer(model=full, args=config(tmp_path / "a", **kw), train_dataset=toy_dataset()).train()
    resumed = tiny_model("bert")
    first = FineTuningTrainer(model=resumed, args=config(tmp_path / "b", **kw), train_dataset=toy_dataset())
    first.train()
    again = tiny_model("bert", seed=1)  # different weights: everything must come from the checkpoint
    trainer = FineTuningTrainer(model=again, args=config(tmp_path / "b", **kw), train_dataset=toy_dataset())
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-2"))  # before the switch
    for (n, p), (_, q) in zip(full.named_parameters(), again.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n
    assert trainer.phase_scheduler.switch_state["switched_at"] == 3
    state = json.loads((tmp_path / "b" / "out" / "checkpoint-8" / "trainer_state.json").read_text())
    assert any(h.get("lp_ft_switch") == 3 for h in state["log_history"])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(layerwise_lr_decay=1.2), r"layerwise_lr_decay must be in \(0, 1\]"),
        (dict(lp_ft=True), "needs a way to end the probing phase"),
        (dict(lp_ft=True, lp_patience=2), "eval_strategy is 'no'"),
        (dict(linear_probe="svm"), "linear_probe='svm' is unknown"),
        (dict(surgical_blocks=["top"]), "'top' is not a block"),
        (dict(lr_scheduler_type="polynomial"), "not supported by the strategy scheduler"),
        (dict(deepspeed={"optimizer": {"type": "AdamW"}}), "carries its own 'optimizer' block"),
    ],
)
def test_config_errors_say_what_to_change(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **kw)


def test_trainer_errors(tmp_path):
    with pytest.raises(ValueError, match="Block index 5 is out of range"):
        FineTuningTrainer(
            model=tiny_model("bert"),
            args=config(tmp_path, surgical_blocks=["5"]),
            train_dataset=toy_dataset(),
        )
    args = config(tmp_path, lp_ft=True, lp_patience=1, eval_strategy="steps", eval_steps=1)
    with pytest.raises(ValueError, match="pass eval_dataset"):
        FineTuningTrainer(model=tiny_model("bert"), args=args, train_dataset=toy_dataset())


def test_layer_map_is_built_for_each_trainer_and_exposed(tmp_path):
    model = tiny_model("gpt2")
    trainer = FineTuningTrainer(model=model, args=config(tmp_path), train_dataset=toy_dataset())
    assert trainer.layer_map.groups == build_layer_map(model).groups


def test_fast_lp_ft_fits_the_head_once_then_fine_tunes_everything(tmp_path, monkeypatch):
    import hf_metatransfer.finetune.linear_probe as probe_module

    model = tiny_model("bert")
    calls = []
    real = probe_module.fast_linear_probe
    monkeypatch.setattr(probe_module, "fast_linear_probe", lambda *a, **k: calls.append(1) or real(*a, **k))
    rec = Record(model)
    args = config(tmp_path, max_steps=3, lp_ft=True, linear_probe="lstsq")
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset(), callbacks=[rec])
    trainer.train()
    assert calls == [1] and trainer.linear_probe_info["layer"] == "classifier"
    assert trainer.phase_scheduler.phase == "ft" and trainer.phase_scheduler.phase_start == 0
    assert all(g == {n for n, _ in model.named_parameters()} for g in rec.grads)  # no head-only phase
