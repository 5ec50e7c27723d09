"""The literature's protocols: all-way, generalized and MTEB-style fixed-shot episodes hold exactly the classes and
rows the protocol says, are seeded, round-trip through a Dataset and are scored by ``meta_test`` unchanged."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from torch import nn

from hf_metatransfer.data import minilm_path
from hf_metatransfer.episodes import (
    EpisodeBuilder,
    EpisodeCollator,
    ProtocolEpisodes,
    TokenStore,
    all_way_episodes,
    dirichlet_queries,
    episodes_from_dataset,
    episodes_to_dataset,
    fixed_shot_episodes,
    generalized_episodes,
    ha_intents_tasks,
    verify_episodes,
)
from hf_metatransfer.meta import NearestCentroid, meta_test
from tests.meta_fixtures import tiny_bert, token_classes

HA_LANGS = ["eu", "he", "ko", "ru", "uk"]
HA_SPLIT = {
    "train": ["he", "uk"],
    "validation": ["ko"],
    "test": ["eu", "ru"],
}  # test classes: all 20 in eu, 2 short in ru


@pytest.fixture(scope="module")
def ha_tasks(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("ha_intents"))
    return ha_intents_tasks(HA_LANGS, seed=0, language_split=HA_SPLIT, cap_per_intent=20, cache_dir=cache)


@pytest.fixture(scope="module")
def token_builder():
    return EpisodeBuilder(token_classes(), label_column="label", text_column=None)


def counts_of(tasks) -> Counter:
    """(language, class name) -> rows, read from the dataset's columns, not from the index the protocols use."""
    names = tasks.builder.label_names
    return Counter((lang, names[label]) for lang, label in zip(tasks.dataset["lang"], tasks.dataset["label"]))


def column(eps: ProtocolEpisodes, rows: np.ndarray, name: str) -> list:
    values = eps.dataset.select(rows.tolist())[name]
    feature = eps.dataset.features[name]
    return feature.int2str(values) if isinstance(feature, datasets.ClassLabel) else values


def check_rows(eps: ProtocolEpisodes, episode, lang_column: str | None = "lang") -> None:
    """Each row's true class is the class its episode label names, and it is in the episode's language."""
    for side in ("support", "query"):
        rows, labels = getattr(episode, side), getattr(episode, f"{side}_labels")
        assert column(eps, rows, eps.label_column) == [episode.class_names[y] for y in labels]
        if lang_column:
            lang = episode.support_lang if side == "support" else episode.query_lang
            assert set(column(eps, rows, lang_column)) == {lang}


# -- all-way --------------------------------------------------------------------------------------------------
def test_all_way_holds_every_eligible_class_of_the_split_and_reports_the_rest(ha_tasks, caplog):
    counts, test_classes = counts_of(ha_tasks), set(ha_tasks.class_names("test"))
    eligible = {lang: {c for c in test_classes if counts[(lang, c)] >= 5 + 10} for lang in ("eu", "ru")}
    assert eligible["eu"] == test_classes and set() < eligible["ru"] < test_classes  # the cap leaves some out
    with caplog.at_level(logging.INFO, logger="hf_metatransfer.episodes.protocols"):
        eps = all_way_episodes(ha_tasks, split="test", k_shot=5, q_query=10, draws=4, seed=3)
    assert len(eps) == 8 and [e.episode_id for e in eps] == list(range(8))
    assert Counter(e.support_lang for e in eps) == {"eu": 4, "ru": 4}
    for e in eps:
        assert set(e.class_names) == eligible[e.support_lang] and e.n_way == len(eligible[e.support_lang])
        assert (np.bincount(e.support_labels) == 5).all() and (np.bincount(e.query_labels) == 10).all()
        assert not set(e.support.tolist()) & set(e.query.tolist())
        check_rows(eps, e)
    left = eps.report.left_out
    assert left["eu"] == {} and set(left["ru"]) == test_classes - eligible["ru"]
    assert all(f"{counts[('ru', c)]} examples < K + Q = 15" == why for c, why in left["ru"].items())
    assert eps.report.n_way == {"eu": len(test_classes), "ru": len(eligible["ru"])}
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_metatransfer.episodes.protocols"]
    assert len(lines) == 1 and all(c in lines[0] for c in left["ru"])


def test_all_way_is_seeded_and_a_language_draws_the_same_whatever_else_is_asked(ha_tasks):
    def draw(seed: int, languages: list[str]) -> list[dict]:
        return [e.to_dict() | {"episode_id": 0} for e in all_way_episodes(ha_tasks, split="test", k_shot=3,
                q_query=4, draws=3, seed=seed, languages=languages)]  # fmt: skip

    both = draw(0, ["eu", "ru"])
    assert both == draw(0, ["eu", "ru"])
    other = draw(1, ["eu", "ru"])
    assert all(a["support"] != b["support"] and a["query"] != b["query"] for a, b in zip(both, other))
    assert both[0]["support"] != both[1]["support"]  # draws differ
    assert draw(0, ["ru"]) == both[3:]


def test_cross_lingual_all_way_supports_in_one_language_and_queries_in_the_other(ha_tasks):
    eps = all_way_episodes(ha_tasks, split="test", k_shot=5, q_query=10, draws=2, support_languages=["eu"],
                           query_languages=["ru"])  # fmt: skip
    # K = 5 in eu and Q = 10 in ru: every class, where monolingual ru (K + Q = 15 in ru) leaves two out.
    assert eps.report.n_way == {"eu->ru": 8} and eps.report.left_out == {"eu->ru": {}}
    for e in eps:
        assert (e.support_lang, e.query_lang) == ("eu", "ru") and set(e.class_names) == set(
            ha_tasks.class_names("test")
        )
        check_rows(eps, e)


# -- generalized ----------------------------------------------------------------------------------------------
def test_generalized_labels_span_test_and_seen_classes_and_queries_come_from_test_classes(ha_tasks):
    counts = counts_of(ha_tasks)
    test = [c for c in ha_tasks.class_names("test") if counts[("ru", c)] >= 3 + 4]
    seen = [c for c in ha_tasks.class_names("train") if counts[("ru", c)] >= 3]
    eps = generalized_episodes(ha_tasks, split="test", k_shot=3, q_query=4, draws=3, languages=["ru"])
    for e in eps:
        n_test = len(test)
        assert set(e.class_names[:n_test]) == set(test) and set(e.class_names[n_test:]) == set(seen)
        assert (np.bincount(e.support_labels, minlength=e.n_way) == 3).all()
        assert set(e.query_labels.tolist()) == set(range(n_test)) and len(e.query) == 4 * n_test
        check_rows(eps, e)


def test_generalized_with_queries_from_both_and_a_number_of_seen_classes(ha_tasks):
    eps = generalized_episodes(ha_tasks, split="test", k_shot=3, q_query=4, draws=4, languages=["eu"], n_seen=5,
                               queries_from="both")  # fmt: skip
    test = set(ha_tasks.class_names("test"))
    seen_sets = set()
    for e in eps:
        seen = e.class_names[len(test) :]
        assert len(seen) == 5 and not set(seen) & test and set(seen) <= set(ha_tasks.class_names("train"))
        assert (np.bincount(e.query_labels, minlength=e.n_way) == 4).all()  # seen classes are queried too
        seen_sets.add(seen)
        check_rows(eps, e)
    assert len(seen_sets) > 1  # the seen classes are drawn anew


class Always(nn.Module):
    """A 'method' that predicts one episode label for every query (or the right one, ``label=None``)."""

    name, settings = "always", ""

    def __init__(self, label: int | None) -> None:
        super().__init__()
        self.label = label

    def predict(self, model, support, query) -> torch.Tensor:
        n = int(support["labels"].max()) + 1
        target = query["labels"] if self.label is None else torch.full_like(query["labels"], self.label % n)
        return nn.functional.one_hot(target, n).float()


def test_generalized_scores_a_seen_class_prediction_as_wrong(token_builder):
    eps = generalized_episodes(token_builder, classes=[7, 8, 9], k_shot=2, q_query=3, draws=3)
    assert [e.classes.tolist() for e in eps] == [[7, 8, 9, 0, 1, 2, 3, 4, 5, 6]] * 3
    collate = EpisodeCollator(TokenStore(token_builder.dataset, pad_token_id=0))
    assert meta_test(nn.Identity(), Always(-1), eps, collate, progress=False).per_episode == [0.0] * 3
    assert meta_test(nn.Identity(), Always(None), eps, collate, progress=False).per_episode == [1.0] * 3


# -- fixed shots (MTEB) ---------------------------------------------------------------------------------------
def user_splits() -> tuple[datasets.Dataset, pd.DataFrame]:
    """A train split with ClassLabel labels and an evaluation split with string labels, in en and de."""
    names = ["alarm", "lights", "music", "weather"]
    train = [{"text": f"{c} {lang} train {i}", "label": names.index(c), "lang": lang}
             for lang in ("en", "de") for c in names for i in range(6 + names.index(c))]  # fmt: skip
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names),
                                  "lang": datasets.Value("string")})  # fmt: skip
    evaluation = [{"text": f"{c} {lang} eval {i}", "label": c, "lang": lang}
                  for lang in ("en", "de") for c in names for i in range(2 + 3 * names.index(c))]  # fmt: skip
    return datasets.Dataset.from_list(train, features=features), pd.DataFrame(evaluation)


def test_fixed_shots_draw_k_a_label_and_query_the_whole_evaluation_split():
    train, evaluation = user_splits()
    eps = fixed_shot_episodes(train, evaluation, k_shot=4, draws=5, lang_column="lang", languages=["en"])
    en_eval = {i + len(train) for i in np.flatnonzero(evaluation["lang"] == "en")}
    for e in eps:
        assert e.class_names == ("alarm", "lights", "music", "weather")
        assert (np.bincount(e.support_labels) == 4).all() and (e.support < len(train)).all()
        assert set(e.query.tolist()) == en_eval and len(e.query) == len(en_eval)
        check_rows(eps, e)
    assert all(np.array_equal(e.query, eps[0].query) and np.array_equal(e.query_labels, eps[0].query_labels)
               for e in eps)  # fmt: skip
    supports = {tuple(e.support.tolist()) for e in eps}
    assert len(supports) == 5
    capped = fixed_shot_episodes(train, evaluation, k_shot=4, draws=3, lang_column="lang", languages=["en"],
                                 max_queries=7)  # fmt: skip
    assert all(len(e.query) == 7 and np.array_equal(e.query, capped[0].query) for e in capped)
    assert set(capped[0].query.tolist()) < en_eval


def test_cross_lingual_fixed_shots_query_the_query_language():
    train, evaluation = user_splits()
    eps = fixed_shot_episodes(train, evaluation, k_shot=3, draws=2, lang_column="lang", support_languages=["en"],
                              query_languages=["de"])  # fmt: skip
    de_eval = {i + len(train) for i in np.flatnonzero(evaluation["lang"] == "de")}
    for e in eps:
        assert (e.support_lang, e.query_lang) == ("en", "de") and set(e.query.tolist()) == de_eval
        check_rows(eps, e)


def test_fixed_shots_over_one_dataset_never_query_a_train_row(ha_tasks):
    eps = fixed_shot_episodes(ha_tasks, split="test", k_shot=4, draws=4, languages=["eu"], eval_fraction=0.25)
    assert len(eps[0].query) == 8 * 5  # a quarter of each class's 20 eu rows
    supports = set().union(*(e.support.tolist() for e in eps))
    assert not supports & set(eps[0].query.tolist()) and len(supports) > 4 * 8 * 4 / 2
    for e in eps:
        check_rows(eps, e)


# -- saving and scoring ---------------------------------------------------------------------------------------
def test_protocol_episodes_round_trip_through_a_dataset(ha_tasks, tmp_path):
    train, evaluation = user_splits()
    for eps in (all_way_episodes(ha_tasks, split="test", k_shot=2, q_query=3, draws=2),
                generalized_episodes(ha_tasks, split="test", k_shot=2, q_query=3, languages=["eu"], n_seen=3),
                fixed_shot_episodes(train, evaluation, k_shot=2, draws=2, lang_column="lang")):  # fmt: skip
        saved = episodes_to_dataset(eps, eps.dataset, label_column=eps.label_column)
        saved.save_to_disk(str(tmp_path / eps.report.protocol))
        loaded = datasets.load_from_disk(str(tmp_path / eps.report.protocol))
        assert [e.to_dict() for e in episodes_from_dataset(loaded)] == [e.to_dict() for e in eps]
        verify_episodes(loaded, eps.dataset, label_column=eps.label_column)


def test_meta_test_scores_every_protocol_with_nearest_centroid(token_builder):
    collate = EpisodeCollator(TokenStore(token_builder.dataset, pad_token_id=0))
    model = tiny_bert(n_way=10)
    for eps in (all_way_episodes(token_builder, k_shot=2, q_query=3, draws=4),
                generalized_episodes(token_builder, classes=[7, 8, 9], k_shot=2, q_query=3, draws=4),
                fixed_shot_episodes(token_builder, k_shot=4, draws=4)):  # fmt: skip
        assert all(e.n_way == 10 for e in eps)
        result = meta_test(model, NearestCentroid(), eps, collate, progress=False)
        assert result.episodes == 4 and len(result.per_episode) == 4
        assert result.accuracy > 0.3  # 10-way: chance is 0.1; the token classes are easy


def test_user_pairs_score_after_tokenizing_without_a_collate():
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    words = {"weather": "rain sunny storm", "music": "song album guitar", "timer": "alarm minutes clock"}
    pairs = [(f"{w.split()[i % 3]} {w.split()[(i + 1) % 3]} {i}", label) for label, w in words.items()
             for i in range(6)]  # fmt: skip
    eps = all_way_episodes(pairs, k_shot=2, q_query=3, draws=3)
    assert all(set(e.class_names) == set(words) for e in eps)
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=20, max_position_embeddings=64)  # fmt: skip
    result = meta_test(
        T.BertModel(cfg), NearestCentroid(), eps.tokenized(tokenizer, prefix=""), progress=False
    )
    assert result.episodes == 3


def test_dirichlet_queries_keep_an_imbalanced_subset_of_each_episodes_queries(token_builder):
    balanced = all_way_episodes(token_builder, k_shot=2, q_query=8, draws=20, seed=0, text_column=None)
    skewed = dirichlet_queries(balanced, alpha=0.5, seed=3)
    near_even = dirichlet_queries(balanced, alpha=1000.0, seed=3)
    assert skewed.dataset is balanced.dataset and "Dirichlet(0.5) queries" in skewed.report.protocol
    spread = {}
    for name, eps in (("skewed", skewed), ("near_even", near_even)):
        per_class = []
        for before, after in zip(balanced, eps):
            assert np.array_equal(after.support, before.support)  # the support is untouched
            kept = dict(zip(before.query.tolist(), before.query_labels.tolist()))
            assert all(kept[row] == label for row, label in zip(after.query, after.query_labels))
            assert len(after.query) <= len(before.query) // 2 and len(set(after.query.tolist())) == len(
                after.query
            )
            per_class.append(np.bincount(after.query_labels, minlength=after.n_way))
        spread[name] = float(np.mean([c.std() for c in per_class]))
        if name == "near_even":  # no class capped: exactly half the queries, about evenly split
            assert all(c.sum() == 40 and c.max() - c.min() <= 1 for c in per_class)
    assert spread["skewed"] > 3 * spread["near_even"]
    again = dirichlet_queries(balanced, alpha=0.5, seed=3)
    assert all(np.array_equal(a.query, b.query) for a, b in zip(skewed, again))  # seeded
    other = dirichlet_queries(balanced, alpha=0.5, seed=4)
    assert any(not np.array_equal(a.query, b.query) for a, b in zip(skewed, other))


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"fraction": 0.0}, {"fraction": 1.5}])
def test_dirichlet_queries_refuse_bad_settings_with_the_reason(token_builder, kwargs):
    balanced = all_way_episodes(token_builder, k_shot=2, q_query=4, draws=1, text_column=None)
    with pytest.raises(ValueError, match="alpha|fraction"):
        dirichlet_queries(balanced, **kwargs)
