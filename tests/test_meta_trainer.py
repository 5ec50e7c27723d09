import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from hf_metatransfer.meta import MAML, MetaTrainer, MetaTrainingConfig, ProtoNets, load_algorithm_state
from tests.meta_fixtures import SineNet, SineTasks, tiny_bert, token_episodes

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), algorithm="fomaml", inner_steps=2, inner_lr=0.3, meta_batch_size=4,
                max_steps=6, learning_rate=1e-2, eval_steps=0, save_steps=0, disable_tqdm=True, logging_steps=1)  # fmt: skip
    base.update(kw)
    return MetaTrainingConfig(**base)


def test_meta_training_moves_weights_and_saves_a_normal_checkpoint(tmp_path):
    train, test, collate = token_episodes()
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MetaTrainer(
        model, config(tmp_path, eval_steps=3, eval_episodes=5), train, collate, eval_sampler=test
    )
    state = trainer.train()
    assert state.step == 6 and len([h for h in state.log_history if "loss" in h]) == 6
    assert any("eval_accuracy" in h for h in state.log_history)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    loaded = T.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    for n, p in loaded.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n]), n
    assert (tmp_path / "best" / "model.safetensors").exists()


def test_resume_from_checkpoint_ends_with_identical_parameters(tmp_path):
    train, _, collate = token_episodes()
    full = tiny_bert()
    MetaTrainer(full, config(tmp_path / "a"), train, collate).train()
    interrupted = tiny_bert()
    MetaTrainer(
        interrupted, config(tmp_path / "b", max_steps=3, save_final_checkpoint=True), train, collate
    ).train()
    resumed = tiny_bert(seed=5)  # different weights: everything must come from the checkpoint
    trainer = MetaTrainer(resumed, config(tmp_path / "b", resume_from_checkpoint="last"), train, collate)
    state = trainer.train()
    assert state.step == 6
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_protonets_projection_is_meta_learned_saved_and_loaded_beside_the_weights(tmp_path):
    train, _, collate = token_episodes()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, algorithm="protonets", projection_dim=8, max_steps=3),
                          train, collate)  # fmt: skip
    start = trainer.algorithm.projection.weight.detach().clone()
    trainer.train()
    learned = trainer.algorithm.projection.weight
    assert not torch.equal(start, learned)
    fresh = ProtoNets(projection_dim=8)
    fresh.setup(tiny_bert())
    assert load_algorithm_state(fresh, tmp_path)
    assert torch.equal(fresh.projection.weight, learned)
    (tmp_path / "plain").mkdir()
    assert not load_algorithm_state(ProtoNets(), tmp_path / "plain")  # a model saved without algorithm state
    with pytest.raises(ValueError, match="ProtoNets option"):
        config(tmp_path, algorithm="fomaml", projection_dim=8)


def test_resumed_protonets_run_ends_with_the_projection_of_an_uninterrupted_one(tmp_path):
    train, _, collate = token_episodes()
    kw = dict(algorithm="protonets", projection_dim=8, max_steps=4)
    full = MetaTrainer(tiny_bert(), config(tmp_path / "a", **kw), train, collate)
    full.train()
    MetaTrainer(
        tiny_bert(),
        config(tmp_path / "b", **{**kw, "max_steps": 2}, save_final_checkpoint=True),
        train,
        collate,
    ).train()
    resumed = MetaTrainer(tiny_bert(seed=3), config(tmp_path / "b", **kw, resume_from_checkpoint="last"), train,
                          collate)  # fmt: skip
    resumed.train()
    assert torch.equal(resumed.algorithm.projection.weight, full.algorithm.projection.weight)
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n


def test_second_order_switches_to_eager_attention(tmp_path):
    train, _, collate = token_episodes()
    model = tiny_bert()
    model.set_attn_implementation("sdpa")
    MetaTrainer(model, config(tmp_path, algorithm="maml", max_steps=1), train, collate).train()
    assert model.config._attn_implementation == "eager"


def test_non_finite_tasks_are_skipped_counted_and_an_untrained_model_is_never_saved(tmp_path):
    train, _, collate = token_episodes()
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.fill_(float("inf"))
    trainer = MetaTrainer(model, config(tmp_path, max_steps=2), train, collate)
    with pytest.raises(RuntimeError, match="None of the 2 meta-steps updated the weights"):
        trainer.train()
    assert trainer.state.skipped_tasks == 8 and trainer.state.skipped_steps == 2
    assert torch.isinf(model.classifier.weight).all()  # no NaN propagated into an update
    assert not (tmp_path / "model.safetensors").exists()


def test_a_run_that_cannot_learn_stops_after_consecutive_skipped_steps(tmp_path):
    train, _, collate = token_episodes()
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    trainer = MetaTrainer(
        model, config(tmp_path, max_steps=50, max_consecutive_skipped_steps=3), train, collate
    )
    with pytest.raises(RuntimeError, match="the last 3 meta-steps .* updated nothing"):
        trainer.train()
    assert trainer.state.step == 2 and not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("algorithm", ["maml", "protonets-projection"])
def test_two_processes_reach_the_parameters_of_one(tmp_path, algorithm):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = "tests/distributed/meta_worker.py"
    for out, cmd in (("one", [sys.executable, worker]),
                     ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              worker])):  # fmt: skip
        result = subprocess.run([*cmd, str(tmp_path / out), algorithm], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    init = tiny_bert().state_dict()
    assert any(not torch.equal(a[n], init[n]) for n in a)
    if algorithm == "protonets-projection":  # the meta-learned projection is all-reduced like the weights
        a.update(
            {
                f"algorithm.{k}": v
                for k, v in load_file(tmp_path / "one" / "meta_algorithm.safetensors").items()
            }
        )
        b.update(
            {
                f"algorithm.{k}": v
                for k, v in load_file(tmp_path / "two" / "meta_algorithm.safetensors").items()
            }
        )
        start = ProtoNets(projection_dim=8)
        start.setup(tiny_bert())
        assert not torch.allclose(a["algorithm.projection.weight"], start.projection.weight)  # it did move
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-5, rtol=1e-4), (n, (a[n] - b[n]).abs().max())


def test_sine_wave_maml_beats_multitask_pretraining_after_one_step(tmp_path):
    """The lecture's example (Finn et al. 2017): one inner step on K = 10 points."""
    tasks = SineTasks(k=10, q=10, seed=0)
    torch.manual_seed(0)
    maml_net = SineNet()
    cfg = config(tmp_path, algorithm="maml", inner_steps=1, inner_lr=0.01, task_loss="mse", meta_batch_size=10,
                 max_steps=1500, learning_rate=1e-3, max_grad_norm=0, logging_steps=0)  # fmt: skip
    MetaTrainer(maml_net, cfg, tasks, tasks).train()

    torch.manual_seed(0)
    pretrained = SineNet()  # multi-task baseline: regress all tasks' points jointly, as many tasks and steps
    opt = torch.optim.Adam(pretrained.parameters(), lr=1e-3)
    for step in range(1500):
        batch = [tasks(t) for t in tasks.batch(range(step * 10, step * 10 + 10))]
        x = torch.cat([torch.cat([b["support"]["x"], b["query"]["x"]]) for b in batch])
        y = torch.cat([torch.cat([b["support"]["labels"], b["query"]["labels"]]) for b in batch])
        opt.zero_grad()
        torch.nn.functional.mse_loss(pretrained(x), y).backward()
        opt.step()

    evaluator = MAML(inner_steps=1, inner_lr=0.01, loss="mse")
    test_tasks = SineTasks(k=10, q=100, seed=123)

    def query_mse(net):
        evaluator.setup(net)
        errors = []
        for task in test_tasks.batch(range(200)):
            b = test_tasks(task)
            pred = evaluator.predict(net, b["support"], b["query"])
            errors.append(torch.nn.functional.mse_loss(pred, b["query"]["labels"]).item())
        return float(np.mean(errors))

    maml_mse, baseline_mse = query_mse(maml_net), query_mse(pretrained)
    assert maml_mse < 0.75 * baseline_mse, (maml_mse, baseline_mse)


def test_config_errors():
    with pytest.raises(ValueError, match="Unknown algorithm 'mamlx'"):
        MetaTrainingConfig(algorithm="mamlx")
    with pytest.raises(ValueError, match="Unknown fast_weights 'body'"):
        MetaTrainingConfig(fast_weights="body")
    with pytest.raises(ValueError, match="early_stopping_patience needs eval_steps"):
        MetaTrainingConfig(early_stopping_patience=2, eval_steps=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bf16_and_fp16_meta_train_on_cpu(tmp_path, precision):
    train, _, collate = token_episodes()
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MetaTrainer(model, config(tmp_path, max_steps=4, **{precision: True}), train, collate)
    assert trainer.precision == precision
    state = trainer.train()
    losses = [h["loss"] for h in state.log_history]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    if precision == "fp16":
        assert state.skipped_steps == 0 and state.loss_scale == 2.0**16
        assert all(h["loss_scale"] == 2.0**16 for h in state.log_history)


def test_fp16_overflow_skips_the_step_and_halves_the_loss_scale(tmp_path, monkeypatch):
    from hf_metatransfer.meta.trainer import LossScale

    monkeypatch.setattr(LossScale, "init_scale", 2.0**60)  # scaled gradients overflow fp16 (max 65504)
    train, _, collate = token_episodes()
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MetaTrainer(model, config(tmp_path, max_steps=3, fp16=True), train, collate)
    with pytest.raises(RuntimeError, match="None of the 3 meta-steps updated the weights"):
        trainer.train()
    state = trainer.state
    assert state.skipped_steps == 3 and state.loss_scale == 2.0**57
    assert [h["loss_scale"] for h in state.log_history] == [2.0**59, 2.0**58, 2.0**57]
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p), f"{n} moved on a skipped fp16 step"


def test_the_launchers_precision_stands_unless_the_config_sets_one(tmp_path, monkeypatch):
    train, _, collate = token_episodes()
    monkeypatch.setenv(
        "ACCELERATE_MIXED_PRECISION", "bf16"
    )  # what `accelerate launch --mixed_precision bf16` sets
    assert MetaTrainer(tiny_bert(), config(tmp_path / "a"), train, collate).precision == "bf16"
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    assert MetaTrainer(tiny_bert(), config(tmp_path / "b", fp16=True), train, collate).precision == "fp16"


def test_resume_last_skips_incomplete_and_foreign_folders(tmp_path, caplog):
    train, _, collate = token_episodes()
    full = MetaTrainer(tiny_bert(), config(tmp_path / "full"), train, collate)
    full.train()
    out = tmp_path / "run"
    MetaTrainer(
        tiny_bert(), config(out, max_steps=4, save_steps=2, save_final_checkpoint=True), train, collate
    ).train()
    # A save killed half-way before atomic checkpoints (weights, no state), a hidden partial one, a stray folder.
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "model.safetensors").write_bytes(b"truncated")
    (out / ".partial-checkpoint-6").mkdir()
    (out / "checkpoint-final").mkdir()
    resumed = MetaTrainer(tiny_bert(seed=4), config(out, resume_from_checkpoint="last", save_final_checkpoint=True),
                          train, collate)  # fmt: skip
    with caplog.at_level("WARNING"):
        resumed.train()
    assert "Resuming from checkpoint-4" in caplog.text
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    saved = dict(
        T.AutoModelForSequenceClassification.from_pretrained(out).named_parameters()
    )  # the final model
    assert all(torch.equal(saved[n], p) for n, p in resumed.model.named_parameters())
    assert [p.name for p in resumed.checkpoints()] == ["checkpoint-4", "checkpoint-6"]


def test_an_output_dir_holding_another_run_is_refused_and_left_untouched(tmp_path):
    train, _, collate = token_episodes()
    MetaTrainer(tiny_bert(), config(tmp_path, max_steps=2, save_steps=1), train, collate).train()
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(
        FileExistsError, match="resume_from_checkpoint='last' to continue it, overwrite_output_dir"
    ):
        MetaTrainer(tiny_bert(), config(tmp_path, algorithm="protonets"), train, collate).train()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    MetaTrainer(tiny_bert(), config(tmp_path, max_steps=3, save_steps=2, overwrite_output_dir=True), train,
                collate).train()  # fmt: skip
    # the old run's checkpoint-1 is gone; the new one's last step (3) keeps no checkpoint by default
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_resuming_with_another_algorithm_or_head_is_refused_naming_both(tmp_path):
    train, _, collate = token_episodes()
    MetaTrainer(
        tiny_bert(), config(tmp_path, max_steps=2, save_final_checkpoint=True), train, collate
    ).train()
    with pytest.raises(ValueError, match="algorithm='fomaml'; this run has algorithm='protonets'"):
        MetaTrainer(tiny_bert(), config(tmp_path, algorithm="protonets", resume_from_checkpoint="last"), train,
                    collate).train()  # fmt: skip
    with pytest.raises(ValueError, match=r"classifier\.\w+ has shape \(3.*\) in the checkpoint and \(5"):
        MetaTrainer(
            tiny_bert(n_way=5), config(tmp_path, resume_from_checkpoint="last"), train, collate
        ).train()


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_parameter_sharding_engines_are_refused_naming_what_works(tmp_path, monkeypatch, engine):
    monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
    train, _, collate = token_episodes()
    with pytest.raises(ValueError, match="does not run under .*multi_gpu.yaml or multi_node.yaml"):
        MetaTrainer(tiny_bert(), config(tmp_path), train, collate)


def test_anchor_pull_moves_each_step_that_fraction_back_to_the_start_and_resumes_to_the_same_weights(
    tmp_path,
):
    """After one step, the pulled weights are the unpulled ones moved anchor_pull of the way back to the start;
    a run interrupted and resumed pulls toward the pretrained weights (from its checkpoint), not toward the
    weights it resumed from, and ends where an uninterrupted one does."""
    train, _, collate = token_episodes()
    start = {n: p.detach().clone() for n, p in tiny_bert().named_parameters()}
    free, pulled = tiny_bert(), tiny_bert()
    MetaTrainer(free, config(tmp_path / "free", max_steps=1), train, collate).train()
    MetaTrainer(pulled, config(tmp_path / "pulled", max_steps=1, anchor_pull=0.25), train, collate).train()
    moved = 0
    for (n, p), (_, q) in zip(free.named_parameters(), pulled.named_parameters()):
        torch.testing.assert_close(q, p + 0.25 * (start[n] - p), rtol=1e-5, atol=1e-7)
        moved += int(not torch.equal(p, start[n]))
    assert moved  # the step did move the weights, so the pull was tested

    full = tiny_bert()
    MetaTrainer(full, config(tmp_path / "a", anchor_pull=0.25), train, collate).train()
    MetaTrainer(tiny_bert(), config(tmp_path / "b", max_steps=3, save_final_checkpoint=True, anchor_pull=0.25),
                train, collate).train()  # fmt: skip
    assert (tmp_path / "b" / "checkpoint-3" / "anchor.safetensors").exists()
    resumed = tiny_bert(seed=5)  # other weights and another start: the anchor must come from the checkpoint
    MetaTrainer(resumed, config(tmp_path / "b", resume_from_checkpoint="last", anchor_pull=0.25), train,
                collate).train()  # fmt: skip
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_resuming_a_run_without_anchor_under_anchor_pull_is_refused(tmp_path):
    train, _, collate = token_episodes()
    MetaTrainer(
        tiny_bert(), config(tmp_path, max_steps=2, save_final_checkpoint=True), train, collate
    ).train()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, resume_from_checkpoint="last", anchor_pull=0.1), train,
                          collate)  # fmt: skip
    with pytest.raises(ValueError, match="without anchor_pull"):
        trainer.train()
    with pytest.raises(ValueError, match="anchor_pull=1"):
        config(tmp_path, anchor_pull=1)
