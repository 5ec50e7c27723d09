"""Batched tasks (MetaAlgorithm.batch_task_gradient) give the looped per-task gradients; MetaTrainer agrees."""

import logging

import pytest
import torch

from hf_metatransfer.meta import ANIL, FOMAML, MAML, MetaTrainer, MetaTrainingConfig, ProtoNets, Reptile
from tests.meta_fixtures import tiny_bert as fixture_bert
from tests.meta_fixtures import token_episodes
from tests.test_meta_algorithms import tiny_bert

BAD_TOKEN = 59


def task(seed, n_way=3, k=2, q=3, length=6, bad=False):
    g = torch.Generator().manual_seed(seed)

    def batch(per):
        ids = torch.randint(1, BAD_TOKEN, (n_way * per, length), generator=g)
        mask = torch.ones_like(ids)
        mask[::2, -2:] = 0
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.arange(n_way).repeat_interleave(per),
        }

    support, query = batch(k), batch(q)
    if bad:
        support["input_ids"][0, 1] = BAD_TOKEN
        query["input_ids"][0, 1] = BAD_TOKEN
    return support, query


def looped_mean(algo, model, tasks):
    results = [algo.task_gradient(model, s, q) for s, q in tasks]
    ok = [r for r in results if r.grads is not None]
    grads = {n: torch.stack([r.grads[n] for r in ok]).mean(0) for n in ok[0].grads}
    return (
        grads,
        sum(r.loss for r in ok) / len(ok),
        sum(r.accuracy for r in ok) / len(ok),
        len(results) - len(ok),
    )


def no_loop(algo):
    """Fail if the batched path falls back to one task at a time."""

    def fail(*args, **kwargs):
        raise AssertionError("fell back to the per-task loop")

    algo.task_gradient = fail
    return algo


ALGOS = {
    "protonets": lambda: ProtoNets(),
    "fomaml": lambda: FOMAML(inner_steps=2, inner_lr=0.3),
    "maml": lambda: MAML(inner_steps=2, inner_lr=0.3),
    "anil": lambda: ANIL(inner_steps=2, inner_lr=0.5),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_batched_gradient_equals_the_looped_mean_over_tasks_of_different_lengths(name):
    model = tiny_bert()
    tasks = [task(i, length=4 + i) for i in range(4)]  # padded lengths 4..7
    algo = ALGOS[name]()
    algo.setup(model)
    expected, loss, accuracy, skipped = looped_mean(algo, model, tasks)
    result = no_loop(algo).batch_task_gradient(model, tasks)
    assert result.skipped == skipped == 0 and algo.vmap_fallbacks == 0
    assert set(result.grads) == set(expected)
    for n, g in expected.items():
        assert torch.allclose(result.grads[n], g, atol=1e-6, rtol=1e-4), (
            n,
            (result.grads[n] - g).abs().max(),
        )
    assert result.loss == pytest.approx(loss, rel=1e-5) and result.accuracy == pytest.approx(accuracy)
    assert sum(g.abs().sum() for g in result.grads.values()) > 0


def test_tasks_of_different_shapes_fall_back_to_the_loop():
    model = tiny_bert()
    tasks = [task(0, k=2), task(1, k=3), task(2, n_way=2)]
    algo = FOMAML(inner_steps=1, inner_lr=0.3)
    algo.setup(model)
    expected, *_ = looped_mean(algo, model, tasks)
    result = algo.batch_task_gradient(model, tasks)
    for n, g in expected.items():
        assert torch.allclose(result.grads[n], g, atol=1e-7), n


def test_algorithms_without_a_fast_path_loop():
    model = tiny_bert()
    tasks = [task(i) for i in range(3)]
    algo = Reptile(inner_steps=2, inner_lr=0.1)
    algo.setup(model)
    expected, *_ = looped_mean(algo, model, tasks)
    result = algo.batch_task_gradient(model, tasks)
    for n, g in expected.items():
        assert torch.allclose(result.grads[n], g, atol=1e-6), n


def test_a_vmap_failure_falls_back_for_that_call_only_and_is_logged_once(caplog):
    model = tiny_bert()
    tasks = [task(i, length=4 + i) for i in range(3)]
    algo = FOMAML(inner_steps=2, inner_lr=0.3)
    algo.setup(model)
    expected, *_ = looped_mean(algo, model, tasks)
    vmapped, calls = algo._vmap_task_gradients, []

    def fail_every_other_call(*args):
        calls.append(args)
        if len(calls) % 2:
            raise RuntimeError("injected vmap failure")
        return vmapped(*args)

    algo._vmap_task_gradients = fail_every_other_call
    with caplog.at_level(logging.WARNING, logger="hf_metatransfer.meta.algorithms"):
        results = [algo.batch_task_gradient(model, tasks) for _ in range(3)]
    assert len(calls) == 3 and algo.vmap_fallbacks == 2  # calls 1 and 3 looped, call 2 ran vmap again
    assert len(caplog.records) == 1  # the same error is warned about once, then logged at debug level
    assert "injected vmap failure" in caplog.text and "one task at a time" in caplog.text
    for result in results:
        for n, g in expected.items():
            assert torch.allclose(result.grads[n], g, atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("injected"), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")],
    ids=["OutOfMemoryError", "RuntimeError"],
)
def test_out_of_memory_under_vmap_is_raised_not_swallowed(error):
    model = tiny_bert()
    algo = FOMAML(inner_steps=1, inner_lr=0.3)
    algo.setup(model)

    def out_of_memory(*args):
        raise error

    algo._vmap_task_gradients = out_of_memory
    with pytest.raises(type(error), match=str(error)[:12]):
        no_loop(algo).batch_task_gradient(model, [task(0), task(1)])
    assert algo.vmap_fallbacks == 0


SCALED = {**ALGOS, "reptile": lambda: Reptile(inner_steps=2, inner_lr=0.1)}


@pytest.mark.parametrize("name", list(SCALED))
def test_a_loss_scale_leaves_gradients_and_losses_unchanged(name):
    model = tiny_bert()
    tasks = [task(i, length=4 + i) for i in range(3)]
    algo = SCALED[name]()
    algo.setup(model)
    looped, batched = {}, {}
    for scale in (1.0, 1024.0):
        algo.loss_scale = scale
        looped[scale] = algo.task_gradient(model, *tasks[0])
    for scale in (1.0, 1024.0):  # the vmap path (ProtoNets: one embedding pass); Reptile always loops
        algo.loss_scale = scale
        batched[scale] = (algo if name == "reptile" else no_loop(algo)).batch_task_gradient(model, tasks)
    assert algo.vmap_fallbacks == 0
    for results in (looped, batched):
        plain, scaled = results[1.0], results[1024.0]
        assert scaled.loss == pytest.approx(plain.loss, rel=1e-6) and scaled.accuracy == plain.accuracy
        for n, g in plain.grads.items():
            assert torch.allclose(scaled.grads[n], g, atol=1e-7, rtol=1e-5), n


@pytest.mark.parametrize("name", ["protonets", "fomaml", "maml"])
def test_a_non_finite_task_is_skipped_and_counted(name):
    model = tiny_bert()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[BAD_TOKEN] = float("inf")
    tasks = [task(0, length=5), task(1, bad=True), task(2, length=7), task(3)]
    algo = ALGOS[name]()
    algo.setup(model)
    assert algo.task_gradient(model, *tasks[1]).grads is None
    expected, loss, _, skipped = looped_mean(algo, model, tasks)
    result = algo.batch_task_gradient(model, tasks)
    assert result.skipped == skipped == 1
    for n, g in expected.items():
        assert torch.isfinite(result.grads[n]).all(), n
        assert torch.allclose(result.grads[n], g, atol=1e-6, rtol=1e-4), n
    assert result.loss == pytest.approx(loss, rel=1e-5)


def test_every_task_non_finite_gives_no_gradient():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[BAD_TOKEN] = float("inf")
    algo = FOMAML(inner_steps=1, inner_lr=0.3)
    algo.setup(model)
    result = algo.batch_task_gradient(model, [task(0, bad=True), task(1, bad=True)])
    assert result.grads is None and result.skipped == 2


@pytest.mark.parametrize("algorithm", ["fomaml", "maml", "protonets"])
def test_trainer_with_and_without_batched_tasks_reaches_the_same_parameters(tmp_path, algorithm):
    # SGD, not AdamW: Adam's normalisation blows float noise in near-zero gradients up to a full LR step
    train, _, collate = token_episodes()
    models = {}
    for batch_tasks in (True, False):
        model = fixture_bert()
        config = MetaTrainingConfig(output_dir=str(tmp_path / str(batch_tasks)), algorithm=algorithm, inner_steps=2,
                                    inner_lr=0.3, meta_batch_size=4, max_steps=3, optim="sgd", learning_rate=0.5,
                                    eval_steps=0, save_steps=0, disable_tqdm=True, batch_tasks=batch_tasks)  # fmt: skip
        trainer = MetaTrainer(model, config, train, collate)
        state = trainer.train()
        assert state.skipped_tasks == 0 and trainer.algorithm.vmap_fallbacks == 0
        models[batch_tasks] = model
    moved = False
    init = fixture_bert()
    for (n, a), (_, b), (_, p0) in zip(models[True].named_parameters(), models[False].named_parameters(),
                                       init.named_parameters()):  # fmt: skip
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (n, (a - b).abs().max())
        moved |= not torch.equal(a, p0)
    assert moved


def test_trainer_counts_non_finite_tasks_with_batched_tasks(tmp_path):
    train, _, collate = token_episodes()
    model = fixture_bert()
    with torch.no_grad():
        model.classifier.weight.fill_(float("inf"))
    config = MetaTrainingConfig(output_dir=str(tmp_path), algorithm="fomaml", inner_steps=1, inner_lr=0.3,
                                meta_batch_size=4, max_steps=2, eval_steps=0, save_steps=0, disable_tqdm=True)  # fmt: skip
    trainer = MetaTrainer(model, config, train, collate)
    with pytest.raises(RuntimeError, match="None of the 2 meta-steps updated the weights"):
        trainer.train()
    assert trainer.state.skipped_tasks == 8 and torch.isinf(model.classifier.weight).all()
