import collections
import logging
import warnings

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hf_metatransfer.episodes import (
    EpisodeBuilder,
    EpisodeCollator,
    EpisodeDataset,
    SplitLeakError,
    TokenStore,
    check_disjoint,
    episodes_from_dataset,
    episodes_to_dataset,
    tokenize_dataset,
)
from hf_metatransfer.episodes.random import episode_keys, without_replacement

LANGS = ["de", "en", "fr"]


def toy(n_classes=12, per_class=30, langs=LANGS, label_type="str", seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"text": f"{lang} class{c} sentence {i} {rng.integers(1000)}", "intent": f"intent_{c:02d}", "lang": lang}
            for lang in langs for c in range(n_classes) for i in range(per_class)]  # fmt: skip
    rows = [rows[i] for i in rng.permutation(len(rows))]
    ds = datasets.Dataset.from_list(rows)
    if label_type == "classlabel":
        ds = ds.class_encode_column("intent")
    elif label_type == "int":
        ds = ds.map(lambda r: {"intent": int(r["intent"][-2:]) * 7})
    return ds


@pytest.fixture(scope="module")
def ds():
    return toy()


@pytest.fixture(scope="module")
def builder(ds):
    return EpisodeBuilder(ds, label_column="intent", lang_column="lang")


def check_episode(ds, builder, e, n, k, q):
    assert len(set(e.classes.tolist())) == n
    assert e.support_labels.tolist() == np.repeat(np.arange(n), k).tolist()
    assert e.query_labels.tolist() == np.repeat(np.arange(n), q).tolist()
    assert not set(e.support.tolist()) & set(e.query.tolist())
    intents = np.asarray(ds["intent"])
    names = builder.label_names
    if isinstance(ds.features["intent"], datasets.ClassLabel):
        intents = np.asarray(ds.features["intent"].names)[intents]
    for rows, labels in ((e.support, e.support_labels), (e.query, e.query_labels)):
        assert len(set(rows.tolist())) == len(rows)
        assert [str(x) for x in intents[rows]] == [names[e.classes[y]] for y in labels]
    assert list(e.class_names) == [names[c] for c in e.classes]


def test_episodes_are_well_formed_and_seeded(ds, builder):
    sampler = builder.sampler(5, 3, 4, seed=7)
    for e in sampler.batch(range(50)):
        check_episode(ds, builder, e, 5, 3, 4)
    again = EpisodeBuilder(ds, label_column="intent", lang_column="lang").sampler(5, 3, 4, seed=7)
    for i in (0, 13, 49):
        a, b, c = sampler[i], again[i], again.batch([49, i, 3])[1]
        assert a.to_dict() == b.to_dict() == c.to_dict()
    assert sampler[0].to_dict() != builder.sampler(5, 3, 4, seed=8)[0].to_dict()
    assert sampler[0].to_dict() != sampler[1].to_dict()


def test_episode_of_seed_is_a_fixed_value_on_every_machine(builder):
    # The counter-based generator is pure integer arithmetic: these numbers are the same everywhere.
    keys = episode_keys(0, np.array([0, 1]), 3)
    assert keys.tolist() == episode_keys(0, np.array([0, 1]), 3).tolist()
    assert (
        without_replacement(keys, np.array([10, 10]), 3).tolist()
        == without_replacement(episode_keys(0, np.array([0, 1]), 3), np.array([10, 10]), 3).tolist()
    )


def test_sampling_without_replacement_is_uniform():
    keys = episode_keys(1, np.arange(60000), 0)
    draws = without_replacement(keys, np.full(60000, 4), 2)
    assert (draws[:, 0] != draws[:, 1]).all() and draws.min() >= 0 and draws.max() <= 3
    counts = collections.Counter(map(tuple, draws.tolist()))
    assert len(counts) == 12
    expected = 60000 / 12
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 35  # 11 degrees of freedom: p < 1e-3 above ~31.3


def test_class_disjoint_splits_and_leak_check(ds, builder):
    splits = builder.split_classes((0.5, 0.25, 0.25), seed=3)
    assert sorted(splits["train"] + splits["validation"] + splits["test"]) == list(range(12))
    assert len(splits["train"]) == 6
    test_sampler = builder.sampler(3, 2, 2, classes=splits["test"], seed=0)
    for e in test_sampler.batch(range(20)):
        assert set(e.classes.tolist()) <= set(splits["test"])
    explicit = builder.split_classes(explicit={"train": ["intent_00", "intent_01"], "test": ["intent_02"]})
    assert explicit["test"] == [2]
    with pytest.raises(SplitLeakError, match="'intent_01' is in both 'train' and 'test'"):
        builder.split_classes(explicit={"train": ["intent_00", "intent_01"], "test": ["intent_01"]})
    with pytest.raises(SplitLeakError, match="Language 'de' is in both"):
        check_disjoint(["de", "en"], ["de"], kind="language")
    langs = builder.split_languages(explicit={"train": ["de", "en"], "test": ["fr"]})
    assert langs["test"] == ["fr"]


def test_monolingual_and_cross_lingual_episodes(ds, builder):
    lang = np.asarray(ds["lang"])
    mono = builder.sampler(4, 2, 3, mode="monolingual", seed=0)
    seen = set()
    for e in mono.batch(range(60)):
        check_episode(ds, builder, e, 4, 2, 3)
        assert set(lang[e.support]) == set(lang[e.query]) == {e.support_lang}
        seen.add(e.support_lang)
    assert seen == set(LANGS)
    cross = builder.sampler(
        4, 2, 3, mode="cross-lingual", support_languages=["en"], query_languages=["de", "fr"]
    )
    for e in cross.batch(range(40)):
        assert set(lang[e.support]) == {"en"} and set(lang[e.query]) == {e.query_lang} != {"en"}
        intents = np.asarray(ds["intent"])
        assert (intents[e.support].reshape(4, 2)[:, 0] == intents[e.query].reshape(4, 3)[:, 0]).all()
    weighted = builder.sampler(
        4, 2, 3, mode="monolingual", language_weights={"de": 1.0, "en": 0.0, "fr": 0.0}
    )
    assert {e.support_lang for e in weighted.batch(range(30))} == {"de"}


def test_variable_ways_and_shots(ds, builder):
    sampler = builder.sampler((2, 5), (1, 4), (1, 2), seed=1)
    shapes = set()
    for e in sampler.batch(range(200)):
        n = e.n_way
        k = len(e.support) // n
        q = len(e.query) // n
        check_episode(ds, builder, e, n, k, q)
        shapes.add((n, k, q))
    assert {s[0] for s in shapes} == {2, 3, 4, 5} and {s[1] for s in shapes} == {1, 2, 3, 4}


@pytest.mark.parametrize("label_type", ["str", "int", "classlabel"])
def test_label_types_give_the_same_structure(label_type):
    data = toy(n_classes=6, per_class=10, langs=["en"], label_type=label_type)
    builder = EpisodeBuilder(data, label_column="intent")
    assert len(builder.label_names) == 6
    e = builder.sampler(3, 2, 2, seed=0)[0]
    check_episode(data, builder, e, 3, 2, 2)


def test_bad_input_errors_name_the_problem(ds):
    with pytest.raises(
        ValueError, match=r"label column 'intnet' is not in the dataset .* Did you mean 'intent'"
    ):
        EpisodeBuilder(ds, label_column="intnet")
    bad = ds.map(lambda r, i: {"text": "  " if i == 5 else r["text"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"1 empty or missing values \(rows \[5\]\)"):
        EpisodeBuilder(bad, label_column="intent")
    nums = ds.map(lambda r: {"text": 3})
    with pytest.raises(ValueError, match="it must hold strings"):
        EpisodeBuilder(nums, label_column="intent")
    builder = EpisodeBuilder(ds, label_column="intent", lang_column="lang")
    with pytest.raises(ValueError, match=r"N = 13 is larger than the classes on offer: at most 12 classes"):
        builder.sampler(13, 1, 1)
    with pytest.raises(ValueError, match="mode='monolingual' treats languages as tasks"):
        EpisodeBuilder(ds, label_column="intent").sampler(2, 1, 1, mode="monolingual")
    with pytest.raises(ValueError, match=r"Languages \['xx'\] are not in the dataset"):
        builder.sampler(2, 1, 1, mode="monolingual", languages=["xx"])


def test_small_classes_are_skipped_with_a_warning_or_refused():
    data = toy(n_classes=5, per_class=10, langs=["en"])
    small = data.filter(lambda r, i: not (r["intent"] == "intent_03" and i % 3), with_indices=True)
    count = sum(1 for x in small["intent"] if x == "intent_03")
    builder = EpisodeBuilder(small, label_column="intent")
    with pytest.warns(
        UserWarning,
        match=r"^Left out of episodes: 1 class with fewer than K \+ Q = 8 examples\. sampler\.report",
    ):
        sampler = builder.sampler(4, 4, 4)
    assert sampler.report.small_classes == {"": {"intent_03": count}}
    assert all(3 not in e.classes for e in sampler.batch(range(30)))
    with pytest.raises(ValueError, match=rf"'intent_03': {count}.*on_small_class='skip'"):
        builder.sampler(4, 4, 4, on_small_class="error")


def test_language_with_too_few_classes_is_left_out_with_a_warning():
    data = datasets.concatenate_datasets([toy(n_classes=6, per_class=5, langs=["en", "de"]),
                                          toy(n_classes=2, per_class=5, langs=["fr"])])  # fmt: skip
    builder = EpisodeBuilder(data, label_column="intent", lang_column="lang")
    with pytest.warns(
        UserWarning,
        match=r"Left out of episodes: 1 of 3 languages with fewer than 3 classes of K \+ Q examples\.",
    ):
        sampler = builder.sampler(3, 2, 2, mode="monolingual")
    assert sampler.report.left_out == ["fr"]
    assert {e.support_lang for e in sampler.batch(range(40))} == {"de", "en"}


def test_index_holds_integers_only_and_scales_to_a_million_rows():
    n = 1_000_000
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_dict(
        {"label": rng.integers(0, 50, n), "lang": rng.integers(0, 20, n).astype(str)}
    )
    builder = EpisodeBuilder(data, label_column="label", text_column=None, lang_column="lang")
    assert builder.index.nbytes <= 8 * n + 64 * builder.index.num_groups
    e = builder.sampler(5, 5, 15, mode="monolingual")[0]
    assert len(e.query) == 75


def test_episode_dataset_shards_without_overlap_across_ranks_and_workers(builder):
    sampler = builder.sampler(3, 2, 2, seed=0)
    seen = []
    for rank in range(2):
        loader = DataLoader(EpisodeDataset(sampler, 37, start=5, rank=rank, world_size=2, chunk=4), batch_size=None,
                            num_workers=2)  # fmt: skip
        seen += [e.episode_id for e in loader]
    assert sorted(seen) == list(range(5, 42))
    by_id = {e.episode_id: e.to_dict() for e in EpisodeDataset(sampler, 37, start=5)}
    assert by_id[17] == sampler[17].to_dict()


def test_saved_episodes_round_trip(builder, tmp_path):
    episodes = builder.sampler(4, 2, 3, mode="cross-lingual", seed=2).batch(range(10))
    episodes_to_dataset(episodes).save_to_disk(tmp_path / "eval")
    loaded = episodes_from_dataset(datasets.load_from_disk(tmp_path / "eval"))
    assert [e.to_dict() for e in loaded] == [e.to_dict() for e in episodes]


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenised_episodes_pad_like_the_tokenizer(ds, builder, side):
    from transformers import AutoTokenizer

    from hf_metatransfer.data import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.padding_side = side
    tokenized = tokenize_dataset(ds, tokenizer, max_length=16)
    collate = EpisodeCollator(TokenStore(tokenized, tokenizer.pad_token_id, padding_side=side))
    e = builder.sampler(3, 2, 2, seed=0)[4]
    batch = collate(e)
    sup_text, _ = builder.texts(e)
    ref = tokenizer(sup_text, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(batch["support"]["input_ids"], ref["input_ids"])
    assert torch.equal(batch["support"]["attention_mask"], ref["attention_mask"])
    assert batch["query"]["labels"].tolist() == [0, 0, 1, 1, 2, 2]


def brute_force_episode(sampler, episode_id):
    """Episode ``episode_id`` drawn alone, the plain way: its own pool, ``choose`` over it, one class at a time."""
    from hf_metatransfer.episodes.random import choose, subkeys, uniform
    from hf_metatransfer.episodes.sampler import _CLASSES, _LANG, _QUERY, _SHAPE, _SUPPORT

    index, ids = sampler.index, np.array([episode_id])
    u = uniform(episode_keys(sampler.seed, ids, _SHAPE), (3,))[0]
    n, k, q = (lo + int(np.floor(u[j] * (hi - lo + 1)))
               for j, (lo, hi) in enumerate((sampler.n_range, sampler.k_range, sampler.q_range)))  # fmt: skip
    lang_u = uniform(episode_keys(sampler.seed, ids, _LANG), (1,))[0, 0]
    pair = min(int(np.searchsorted(sampler.pair_cdf, lang_u, side="right")), len(sampler.pairs) - 1)
    a, b = sampler.pairs[pair]
    pool = []  # (label, support group, query group); mode 'classes' (a == b == -1) re-indexes to language 0
    for label in np.flatnonzero(sampler.allowed_labels).tolist():
        ga, gb = index.group(max(a, 0), label), index.group(max(b, 0), label)
        if ga is None or gb is None:
            continue
        ca, cb = index.counts[ga], index.counts[gb]
        if (ca >= k + q) if a == b else (ca >= k and cb >= q):
            pool.append((label, ga, gb))
    assert sampler.pool((a, b), k, q)[0].tolist() == [label for label, _, _ in pool]
    chosen = [pool[s] for s in choose(episode_keys(sampler.seed, ids, _CLASSES), len(pool), n)[0]]
    support_keys = subkeys(episode_keys(sampler.seed, ids, _SUPPORT), n)[0]
    query_keys = subkeys(episode_keys(sampler.seed, ids, _QUERY), n)[0]
    support, query = [], []
    for j, (_, ga, gb) in enumerate(chosen):
        rows_a, rows_b = (index.order[index.offsets[g] : index.offsets[g + 1]] for g in (ga, gb))
        if a == b:
            offsets = without_replacement(support_keys[j : j + 1], index.counts[[ga]], k + q)[0]
            support += rows_a[offsets[:k]].tolist()
            query += rows_a[offsets[k:]].tolist()
        else:
            support += rows_a[without_replacement(support_keys[j : j + 1], index.counts[[ga]], k)[0]].tolist()
            query += rows_b[without_replacement(query_keys[j : j + 1], index.counts[[gb]], q)[0]].tolist()
    lang = [index.lang_names[x] if x >= 0 else "" for x in (a, b)]
    return {
        "episode_id": episode_id,
        "classes": [label for label, _, _ in chosen],
        "class_names": [index.label_names[label] for label, _, _ in chosen],
        "support": support,
        "support_labels": np.repeat(np.arange(n), k).tolist(),
        "query": query,
        "query_labels": np.repeat(np.arange(n), q).tolist(),
        "support_lang": lang[0],
        "query_lang": lang[1],
    }


def uneven_languages():
    """Pools that differ by language pair: 'en' lacks 4 classes, one 'fr' class is small, 'it' has 2 classes."""
    data = datasets.concatenate_datasets([toy(n_classes=8, per_class=12, langs=["de", "en", "fr"]),
                                          toy(n_classes=2, per_class=12, langs=["it"])])  # fmt: skip
    return data.filter(lambda r, i: not ((r["lang"] == "en" and r["intent"] < "intent_04")
                                         or (r["lang"] == "fr" and r["intent"] == "intent_03" and i % 4)),
                       with_indices=True)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_way=3, k_shot=2, q_query=3, classes=[0, 2, 3, 5, 7]),
        dict(n_way=(2, 4), k_shot=(1, 3), q_query=(1, 3), mode="monolingual", language_weights={"de": 3.0}),
        dict(n_way=(2, 4), k_shot=(1, 3), q_query=(1, 3), mode="cross-lingual", seed=5),
        dict(n_way=3, k_shot=2, q_query=2, mode="cross-lingual", support_languages=["fr"], seed=1),
    ],
)
def test_batched_episodes_equal_episodes_drawn_one_at_a_time(kwargs):
    # The sampler vectorises across language pairs and shapes over padded pool tables; each episode must still
    # be exactly the one its own pool, `choose` and `without_replacement` give.
    builder = EpisodeBuilder(uneven_languages(), label_column="intent", lang_column="lang")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes, and 'it' left out
        sampler = builder.sampler(**kwargs)
    ids = list(range(40)) + [987_654_321, 2**40 + 3]
    episodes = sampler.batch(ids)
    assert {e.support_lang for e in episodes} >= ({"fr"} if "support_languages" in kwargs else set())
    for episode_id, e in zip(ids, episodes):
        assert e.to_dict() == brute_force_episode(sampler, episode_id)
    if sampler.mode == "cross-lingual" and "support_languages" not in kwargs:
        assert len({(e.support_lang, e.query_lang) for e in episodes}) > 1  # several pools in one batch


def test_language_pairs_left_out_make_one_warning(caplog):
    small = ["l0", "l1", "l2", "l3", "l4", "l5"]
    data = datasets.concatenate_datasets([toy(n_classes=6, per_class=5, langs=["en", "de"]),
                                          toy(n_classes=2, per_class=5, langs=small)])  # fmt: skip
    builder = EpisodeBuilder(data, label_column="intent", lang_column="lang")
    with caplog.at_level(logging.INFO, logger="hf_metatransfer.episodes"):
        with pytest.warns(UserWarning) as caught:
            sampler = builder.sampler(3, 2, 2, mode="cross-lingual")
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(
        "Left out of episodes: 54 of 56 language pairs with fewer than 3 classes of K + Q examples."
    )
    assert len(message) < 300 and len(sampler.report.left_out) == 54 and "de->l0" in sampler.report.left_out
    (record,) = caplog.records  # the full list, in the log
    assert "54 of 56 language pairs" in record.getMessage() and "l5->l4" in record.getMessage()
    assert sorted(sampler.pairs) == sorted([(0, 1), (1, 0)]) and len(sampler.pair_cdf) == 2


def test_mixed_sampler_takes_turns_keeps_ids_and_each_kinds_own_episodes(builder):
    from hf_metatransfer.episodes import MixedSampler

    mono = builder.sampler(4, 2, 3, mode="monolingual", seed=0)
    cross = builder.sampler(4, 2, 3, mode="cross-lingual", seed=0)
    mixed = MixedSampler([mono, cross])
    ids = [5, 0, 3, 8, 1]
    episodes = mixed.batch(ids)
    assert [e.episode_id for e in episodes] == ids
    for i, e in zip(ids, episodes):
        own = (mono if i % 2 == 0 else cross)[i // 2]
        assert (e.support_lang == e.query_lang) == (i % 2 == 0)
        assert e.support.tolist() == own.support.tolist() and e.query.tolist() == own.query.tolist()
    assert (
        mixed[3].query.tolist() == episodes[2].query.tolist()
    )  # one id, one episode, however it is asked for
    assert mixed.n_range == mono.n_range
    assert MixedSampler([mono, builder.sampler(3, 2, 3, seed=0)]).n_range is None
    with pytest.raises(ValueError, match="at least two"):
        MixedSampler([mono])
