"""Test-time methods that train on the support set: the prototype-initialised head (Proto-MAML style) and the LR
chosen per episode by cross-validation on the support set."""

import re

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from hf_metatransfer.meta import (
    CV_LRS,
    FineTune,
    NearestCentroid,
    ProtoHeadFineTune,
    ProtoNets,
    meta_test,
    stratified_folds,
)
from tests.meta_fixtures import tiny_bert, token_episodes
from tests.test_meta_adapted import tiny_mean_pool


def episode(k=2, q=3, index=0):
    _, test, collate = token_episodes(n_way=3, k=k, q=q)
    batch = collate(test.batch([index])[0])
    return batch["support"], batch["query"]


def bare_bert():
    """An encoder with no classification head at all: the method builds its own."""
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=20, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0)).eval()  # fmt: skip


def params(model):
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def support_loss(method, model, support):
    return F.cross_entropy(method.predict(model, support, support), support["labels"]).item()


@pytest.mark.parametrize("make_model", [tiny_bert, tiny_mean_pool, bare_bert])
@pytest.mark.parametrize(("normalize", "reference"), [(True, NearestCentroid()), (False, ProtoNets())])
def test_with_no_steps_the_head_is_the_prototype_classifier(make_model, normalize, reference):
    model = make_model().eval()
    support, query = episode()
    got = ProtoHeadFineTune(steps=0, normalize=normalize).predict(model, support, query)
    expected = reference.predict(model, support, query)
    offset = got - expected  # ||q||^2: one constant per query, the same for every class
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-4)
    if normalize:
        assert torch.allclose(offset, torch.ones_like(offset), atol=1e-4)
    else:
        assert offset.std() > 1e-3  # raw embeddings: the constant does differ between queries
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("make_model", [tiny_bert, bare_bert])
def test_training_lowers_the_support_loss_and_leaves_the_model_passed_in_untouched(make_model):
    model = make_model().eval()
    before = params(model)
    support, _ = episode(k=3)
    untrained = support_loss(ProtoHeadFineTune(steps=0), model, support)
    trained = support_loss(ProtoHeadFineTune(steps=15, lr=1e-2, head_lr=1e-2), model, support)
    assert trained < 0.7 * untrained
    after = params(model)
    assert all(torch.equal(before[n][0], after[n][0]) and before[n][1] == after[n][1] for n in before)
    assert not model.training


def test_body_blocks_trains_only_the_top_blocks(monkeypatch):
    model = bare_bert()
    support, query = episode(k=3)
    tuned_copies = []
    embed = ProtoHeadFineTune._embed

    def spy(self, tuned, batch):
        tuned_copies.append(tuned)
        return embed(self, tuned, batch)

    monkeypatch.setattr(ProtoHeadFineTune, "_embed", spy)
    ProtoHeadFineTune(steps=3, lr=1e-2, body_blocks=1).predict(model, support, query)
    tuned = tuned_copies[-1]
    assert tuned is not model
    original = dict(model.named_parameters())
    moved = {n for n, p in tuned.named_parameters() if not torch.equal(p, original[n])}
    assert moved and all(n.startswith("encoder.layer.1.") for n in moved)


def test_stratified_folds_hold_each_example_out_once_and_keep_every_class_in_training():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1, 1])  # 3, 5 and 2 examples: at most 2 folds
    folds = stratified_folds(labels, 3)
    assert len(folds) == 2
    assert sorted(torch.cat(folds).tolist()) == list(range(len(labels)))
    for held_out in folds:
        kept = torch.ones(len(labels), dtype=torch.bool)
        kept[held_out] = False
        assert set(labels[kept].tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="at least 2 support examples"):
        stratified_folds(torch.tensor([0, 0, 1]), 2)


def hand_folds(labels, folds):
    """Written out here, not taken from the library: example i of class c is held out in fold (i + c) % folds."""
    seen, fold_of = {}, []
    for label in labels.tolist():
        fold_of.append((seen.get(label, 0) + label) % folds)
        seen[label] = seen.get(label, 0) + 1
    return [torch.tensor([i for i, f in enumerate(fold_of) if f == fold]) for fold in range(folds)]


def rows(batch, index):
    return {k: v[index] for k, v in batch.items()}


@pytest.mark.parametrize("method_class", [FineTune, ProtoHeadFineTune])
def test_cv_picks_the_lr_a_hand_written_loop_over_the_folds_picks(method_class):
    model = tiny_bert().eval()
    support, query = episode(k=4)
    grid = [0.0, 3e-2, 30.0]  # the body untouched, trained, wrecked
    scores = {}
    for lr in grid:
        correct, loss = 0, 0.0
        for held_out in hand_folds(support["labels"], 2):
            train = torch.tensor([i for i in range(len(support["labels"])) if i not in held_out.tolist()])
            val = rows(support, held_out)
            logits = method_class(steps=5, lr=lr).predict(model, rows(support, train), val)
            correct += (logits.argmax(-1) == val["labels"]).sum().item()
            loss += F.cross_entropy(logits, val["labels"], reduction="sum").item()
        scores[lr] = (correct, loss)
    assert len({round(s[1], 3) for s in scores.values()}) == 3  # the grid's LRs really differ on the folds
    expected = max(grid, key=lambda lr: (scores[lr][0], -scores[lr][1]))

    method = method_class(steps=5, lr=grid)
    got = method.predict(model, support, query)
    assert method.chosen_lrs == [expected]
    assert torch.allclose(got, method_class(steps=5, lr=expected).predict(model, support, query), atol=1e-5)
    assert "chosen per episode from {0, 0.03, 30}" in method.settings
    assert f"chosen: {expected:g} x1" in method.settings


def test_one_shot_episodes_fall_back_to_the_default_lr_and_say_why():
    model = tiny_bert().eval()
    _, test, collate = token_episodes(n_way=3, k=1, q=3)
    method = ProtoHeadFineTune(steps=3, lr="cv", fallback_lr=1e-3)
    result = meta_test(model, method, test.batch(range(2)), collate, progress=False)
    assert method.chosen_lrs == [] and method.fallbacks == 2
    assert "2 episode(s) fell back to LR 0.001" in result.settings and "K = 1" in result.settings
    support, query = episode(k=1)
    assert torch.allclose(method.predict(model, support, query),
                          ProtoHeadFineTune(steps=3, lr=1e-3).predict(model, support, query), atol=1e-6)  # fmt: skip


def test_settings_state_what_each_method_did():
    assert FineTune(lr="cv").grid == CV_LRS
    cv = FineTune(lr="cv").settings
    assert "chosen per episode from {1e-05, 5e-05, 0.0002} by 2-fold stratified cross-validation" in cv
    assert "5-fold (at most K-fold) stratified" in FineTune(lr="cv", cv_folds=5).settings
    assert FineTune(lr="cv").name == "fine-tuning, cv lr"
    assert "LR 5e-05 body / 0.01 head" in FineTune().settings  # the fixed-LR wording is unchanged
    proto = ProtoHeadFineTune(steps=7, body_blocks=2).settings
    assert "initialised from the support prototypes" in proto and "7 full-batch AdamW steps" in proto
    assert "the top 2 block(s)" in proto and "L2-normalised" in proto
    assert "raw (unnormalised)" in ProtoHeadFineTune(normalize=False).settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": []}, "empty grid"),
        ({"lr": -1e-3}, "lr=-0.001: a learning rate is a finite number >= 0"),
        ({"lr": [1e-3, -1.0]}, "lr=-1.0"),
        ({"lr": [1e-3, float("nan")]}, "lr=nan"),
        ({"lr": "auto"}, 'give a number, "cv"'),
        ({"head_lr": -1.0}, "head_lr=-1.0"),
        ({"steps": -1}, "steps=-1"),
        ({"lr": "cv", "cv_folds": 1}, "at least 2 folds"),
    ],
)
@pytest.mark.parametrize("method_class", [FineTune, ProtoHeadFineTune])
def test_bad_settings_are_refused_with_a_clear_message(method_class, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        method_class(**kwargs)


def test_body_blocks_must_be_positive():
    with pytest.raises(ValueError, match="body_blocks=0"):
        ProtoHeadFineTune(body_blocks=0)
