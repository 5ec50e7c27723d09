"""Transductive prototypes: the bias shift removes an offset shared by the queries, soft k-means moves prototypes
to the query clusters, and the grid choice is the method meta_test then scores."""

import pytest
import torch
import torch.nn.functional as F

from hf_metatransfer.meta import (
    FineTune,
    TransductivePrototypes,
    meta_test,
    refine_prototypes,
    select_transduction,
)
from tests.meta_fixtures import token_episodes
from tests.test_meta_adapted import tiny_mean_pool


def accuracy(support, labels, queries, answers, **kwargs):
    prototypes, q = refine_prototypes(
        F.normalize(support, dim=-1), labels, F.normalize(queries, dim=-1), **kwargs
    )
    return ((q @ prototypes.T).argmax(-1) == answers).float().mean().item()


def clusters(offset: float, n_way=4, k=3, q=20, dim=16, noise=0.3, seed=0):
    """Support around ``n_way`` class centres; queries around the same centres plus one shared offset (another
    language)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_way, dim, generator=g)
    shift = offset * torch.randn(dim, generator=g)
    labels, answers = torch.arange(n_way).repeat_interleave(k), torch.arange(n_way).repeat_interleave(q)
    support = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    queries = centres[answers] + shift + noise * torch.randn(len(answers), dim, generator=g)
    return support, labels, queries, answers


def test_without_shift_or_steps_it_is_nearest_centroid_by_cosine():
    support, labels, queries, _ = clusters(offset=0.0)
    prototypes, q = refine_prototypes(F.normalize(support, dim=-1), labels, F.normalize(queries, dim=-1),
                                      iterations=0, centre=False)  # fmt: skip
    means = torch.stack([F.normalize(support, dim=-1)[labels == c].mean(0) for c in range(4)])
    expected = F.normalize(queries, dim=-1) @ F.normalize(means, dim=-1).T
    assert torch.allclose(q @ prototypes.T, expected, atol=1e-6)


def test_the_bias_shift_removes_an_offset_every_query_shares():
    support, labels, queries, answers = clusters(offset=3.0)
    plain = accuracy(support, labels, queries, answers, iterations=0, centre=False)
    shifted = accuracy(support, labels, queries, answers, iterations=0, centre=True)
    assert plain < 0.8 and shifted == 1.0


def test_soft_k_means_moves_prototypes_to_the_query_clusters():
    """One noisy support example a class misplaces prototypes; the queries' clusters put them back (on average
    over draws: a single draw can go either way)."""
    before, after = [], []
    for seed in range(10):
        support, labels, queries, answers = clusters(offset=0.0, k=1, noise=1.0, seed=seed)
        before.append(accuracy(support, labels, queries, answers, iterations=0, centre=False))
        after.append(accuracy(support, labels, queries, answers, iterations=5, centre=False))
    assert sum(after) / 10 > sum(before) / 10 + 0.05


def test_queries_are_scored_as_a_set_not_in_order():
    support, labels, queries, _ = clusters(offset=1.0)
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(1))
    prototypes, q = refine_prototypes(support, labels, queries)
    prototypes_shuffled, q_shuffled = refine_prototypes(support, labels, queries[order])
    assert torch.allclose(prototypes, prototypes_shuffled, atol=1e-6)
    assert torch.allclose((q @ prototypes.T)[order], q_shuffled @ prototypes_shuffled.T, atol=1e-6)


def test_the_chosen_grid_point_is_the_method_meta_test_scores():
    _, test, collate = token_episodes(n_way=3, k=2, q=3)
    episodes = test.batch(range(4))
    model = tiny_mean_pool(n_way=3)
    chosen, scores = select_transduction(
        model, episodes, collate, temperatures=(1.0, 10.0), iterations=(0, 3)
    )
    assert set(scores) == {(1.0, 0), (1.0, 3), (10.0, 0), (10.0, 3)}
    assert scores[chosen.temperature, chosen.iterations] == max(scores.values())
    for (t, i), score in scores.items():
        result = meta_test(model, TransductivePrototypes(iterations=i, temperature=t), episodes, collate,
                           progress=False)  # fmt: skip
        assert result.accuracy == pytest.approx(score)
    assert "transductive" in chosen.settings and f"{chosen.iterations} soft k-means" in chosen.settings


@pytest.mark.parametrize("kwargs", [{"iterations": -1}, {"temperature": 0.0}, {"temperature": float("nan")}])
def test_bad_settings_are_refused_with_the_reason(kwargs):
    with pytest.raises(ValueError, match="iterations|temperature"):
        TransductivePrototypes(**kwargs)


def test_fine_tuning_can_score_its_queries_with_transductive_prototypes_on_the_tuned_encoder():
    _, test, collate = token_episodes(n_way=3, k=2, q=3)
    batch = collate(test.batch(range(1))[0])
    model, method = tiny_mean_pool(n_way=3), TransductivePrototypes(iterations=2, temperature=5.0)
    untrained = FineTune(steps=0, lp_ft=True, transductive=method)  # no step: the encoder as it was
    expected = method.predict(model, batch["support"], batch["query"])
    assert torch.allclose(untrained.predict(model, batch["support"], batch["query"]), expected)
    trained = FineTune(steps=3, lr=1e-2, lp_ft=True, transductive=method).predict(
        model, batch["support"], batch["query"]
    )
    assert not torch.allclose(trained, expected)  # scored on the tuned encoder, not the frozen one
    assert "lp-ft + transductive" == untrained.name and "2 soft k-means" in untrained.settings


def test_choosing_on_tuned_encoders_scores_what_fine_tuning_plus_transduction_then_gets():
    _, test, collate = token_episodes(n_way=3, k=2, q=3)
    episodes = test.batch(range(3))
    model = tiny_mean_pool(n_way=3)
    tuning = FineTune(steps=3, lr=1e-2, lp_ft=True, body_blocks=1)
    chosen, scores = select_transduction(model, episodes, collate, temperatures=(1.0, 10.0), iterations=(0, 3),
                                         adapt=lambda m, support: tuning.tune(m, support, tuning.lr))  # fmt: skip
    frozen_scores = select_transduction(
        model, episodes, collate, temperatures=(1.0, 10.0), iterations=(0, 3)
    )[1]
    assert scores != frozen_scores  # the prototypes came from the tuned copies
    for (t, i), score in scores.items():
        method = FineTune(steps=3, lr=1e-2, lp_ft=True, body_blocks=1,
                          transductive=TransductivePrototypes(iterations=i, temperature=t))  # fmt: skip
        assert meta_test(model, method, episodes, collate, progress=False).accuracy == pytest.approx(score)
