"""Few-shot translation tasks: seeded language-pair tasks, pivots, language splits, bad input, Django and FLORES data."""

from __future__ import annotations

import json
import re
import sys

import datasets
import numpy as np
import pytest
from torch.utils.data import DataLoader

from hf_metatransfer.episodes import (
    EpisodeDataset,
    SplitLeakError,
    TranslationTask,
    TranslationTaskSampler,
    check_disjoint,
    episodes_to_dataset,
    from_flores_style,
    split_target_languages,
)

TARGETS = ["de", "es", "fr", "it", "ja", "nl"]


def parallel(n=40, targets=TARGETS, missing=None, seed=0):
    """English sentences 0..n-1 translated into each target ('de 7' translates 'en 7'), rows shuffled.

    ``missing`` maps a language to the sentence numbers it lacks.
    """
    rows = [
        {
            "source": f"en {i}",
            "target": f"{lang} {i}",
            "source_lang": "en",
            "target_lang": lang,
            "id": f"m{i:03d}",
        }
        for lang in targets
        for i in range(n)
        if i not in (missing or {}).get(lang, ())
    ]
    order = np.random.default_rng(seed).permutation(len(rows))
    return datasets.Dataset.from_list([rows[i] for i in order])


@pytest.fixture(scope="module")
def ds():
    return parallel()


def sampler(data, **kwargs):
    kwargs.setdefault("k_support", 3)
    kwargs.setdefault("q_query", 2)
    return TranslationTaskSampler(data, **kwargs)


def number(text):
    return int(text.split()[1])


def check_task(s, task, k, q):
    """K and Q exact, disjoint, from the task's pair, and every target the translation of its source."""
    assert task.support.shape == (k, 2) and task.query.shape == (q, 2)
    sup_src, sup_tgt, qry_src, qry_tgt = s.texts(task)
    assert len(sup_src) == len(sup_tgt) == k and len(qry_src) == len(qry_tgt) == q
    for src, tgt in ((sup_src, sup_tgt), (qry_src, qry_tgt)):
        assert all(t.split()[0] == task.source_lang for t in src)
        assert all(t.split()[0] == task.target_lang for t in tgt)
        assert [number(t) for t in src] == [number(t) for t in tgt]
    numbers = [number(t) for t in sup_src + qry_src]
    assert len(set(numbers)) == k + q  # support and query disjoint, no repeats
    rows = np.concatenate([task.support, task.query])
    assert len({tuple(r) for r in rows.tolist()}) == k + q


# -- seeded tasks --------------------------------------------------------------------------------------------------
def test_tasks_are_seeded_pure_functions_of_seed_and_id(ds):
    s = sampler(ds, seed=7)
    tasks = s.batch(range(60))
    for t in tasks:
        check_task(s, t, 3, 2)
    assert {t.pair for t in tasks} == {("en", lang) for lang in TARGETS}
    again = sampler(ds, seed=7)
    for i in (0, 13, 59):
        a, b, c = s[i], again[i], again.batch([59, i, 3])[1]
        assert a.to_dict() == b.to_dict() == c.to_dict() == tasks[i].to_dict()
    # A task is the same whatever batch it is drawn in, or in what order.
    shuffled = again.batch([17, 4, 17, 40])
    assert [t.to_dict() for t in shuffled] == [tasks[i].to_dict() for i in (17, 4, 17, 40)]
    assert s[0].to_dict() != sampler(ds, seed=8)[0].to_dict()
    assert s[0].to_dict() != s[1].to_dict()


def test_k_and_q_are_exact_and_pairs_and_weights_choose_the_pair(ds):
    s = sampler(ds, k_support=5, q_query=7, pairs=[("en", "de"), ("en", "fr")], language_weights={"fr": 3.0})
    tasks = s.batch(range(400))
    for t in tasks[:50]:
        check_task(s, t, 5, 7)
    counts = {p: sum(t.pair == p for t in tasks) for p in s.pairs}
    assert set(counts) == {("en", "de"), ("en", "fr")}
    assert 0.65 < counts[("en", "fr")] / 400 < 0.85
    only = sampler(ds, languages=["ja"], language_weights={("en", "ja"): 2.0})
    assert {t.pair for t in only.batch(range(20))} == {("en", "ja")}
    zero_q = sampler(ds, q_query=0)[0]
    assert zero_q.query.shape == (0, 2)


def test_reversed_and_pivot_pairs_align_by_id(ds):
    s = sampler(ds, pairs=[("de", "fr"), ("ja", "en"), ("en", "nl")], pivot=True, seed=3)
    assert s.pools[("de", "fr")].how == "pivot"
    assert s.pools[("ja", "en")].how == "reversed"
    assert s.pools[("en", "nl")].how == "direct"
    ids = np.asarray(ds["id"])
    tasks = s.batch(range(60))
    assert {t.pair for t in tasks} == set(s.pairs)
    for t in tasks:
        check_task(s, t, 3, 2)
        for rows in (t.support, t.query):
            assert (ids[rows[:, 0]] == ids[rows[:, 1]]).all()
    # Reversed pairs need no pivot; X -> Y between two targets does.
    assert sampler(ds, pairs=[("fr", "en")]).pools[("fr", "en")].how == "reversed"
    with pytest.raises(
        ValueError, match=r"No rows translate 'de' into 'fr' \(or back\): pass pivot=True to join"
    ):
        sampler(ds, pairs=[("de", "fr")])


def test_pivot_pairs_keep_only_sentences_both_languages_have():
    data = parallel(n=10, targets=["de", "fr"], missing={"de": {1, 2}, "fr": {2, 3, 4}})
    s = sampler(data, k_support=2, q_query=3, pairs=[("de", "fr")], pivot=True)
    assert s.pair_sizes() == {("de", "fr"): 10 - 4}
    seen = set()
    for t in s.batch(range(50)):
        check_task(s, t, 2, 3)
        seen |= {number(x) for x in s.texts(t)[0] + s.texts(t)[2]}
    assert seen == {0, 5, 6, 7, 8, 9}


def test_pivot_over_languages_makes_every_ordered_pair(ds):
    s = sampler(ds, languages=["de", "fr", "it"], pivot=True)
    assert sorted(s.pairs) == [(a, b) for a in ("de", "fr", "it") for b in ("de", "fr", "it") if a != b]
    assert s.languages == ("de", "fr", "it")


def test_small_pairs_are_skipped_with_a_warning_or_refused():
    data = parallel(n=20, targets=["de", "fr"], missing={"fr": set(range(16))})
    with pytest.warns(
        UserWarning, match=r"1 of 2 language pairs have fewer than K \+ Q = 5 sentence pairs"
    ) as caught:
        s = sampler(data)
    assert s.small_pairs == {"en->fr": 4} and caught[0].filename == __file__
    assert s.pairs == [("en", "de")]
    assert {t.pair for t in s.batch(range(20))} == {("en", "de")}
    with pytest.raises(ValueError, match=r"en->fr: 4\. Lower k_support or q_query"):
        sampler(data, on_small_pair="error")
    with pytest.raises(
        ValueError, match=r"No language pair has K \+ Q = 30 sentence pairs \(en->de: 20, en->fr: 4\)"
    ):
        sampler(data, k_support=20, q_query=10)


# -- splits and sharding -------------------------------------------------------------------------------------------
def test_language_disjoint_target_splits_and_leak_check(ds):
    splits = split_target_languages(ds, (0.5, 0.2, 0.3), seed=1)
    assert splits.kind == "language"
    assert sorted(sum((splits[p] for p in splits), [])) == sorted(TARGETS)
    assert split_target_languages(ds, (0.5, 0.2, 0.3), seed=1).parts == splits.parts
    train = sampler(ds, languages=splits["train"])
    test = sampler(ds, languages=splits["test"])
    train_targets = {t.target_lang for t in train.batch(range(50))}
    test_targets = {t.target_lang for t in test.batch(range(50))}
    assert train_targets == set(splits["train"]) and test_targets == set(splits["test"])
    check_disjoint(train_targets, test_targets, kind="language")
    pivot_train = sampler(ds, languages=splits["train"], pivot=True)
    assert test.target_languages == tuple(splits["test"]) and test.languages == ("en", *splits["test"])
    check_disjoint(
        pivot_train.languages, test.target_languages, kind="language"
    )  # English is every pair's source
    with pytest.raises(SplitLeakError, match="Language 'de' is in both 'train' and 'test'"):
        split_target_languages(ds, explicit={"train": ["de", "fr"], "test": ["de"]})
    with pytest.raises(SplitLeakError, match="Language 'it' is in both"):
        check_disjoint(train.target_languages + ("it",), test.target_languages + ("it",), kind="language")
    explicit = split_target_languages(ds, explicit={"train": ["de", "fr"], "test": ["ja"]})
    assert explicit["test"] == ["ja"]
    with pytest.raises(ValueError, match=r"Unknown language 'jp' in split 'test'.*Did you mean 'ja'"):
        split_target_languages(ds, explicit={"train": ["de"], "test": ["jp"]})


def test_tasks_shard_with_episode_dataset_across_ranks_and_workers(ds):
    s = sampler(ds, seed=0)
    seen = []
    for rank in range(2):
        loader = DataLoader(
            EpisodeDataset(s, 23, start=5, rank=rank, world_size=2, chunk=4), batch_size=None, num_workers=2
        )
        seen += [t.task_id for t in loader]
    assert sorted(seen) == list(range(5, 28))
    by_id = {t.task_id: t.to_dict() for t in EpisodeDataset(s, 23, start=5)}
    assert by_id[17] == s[17].to_dict()
    texts = list(EpisodeDataset(s, 3, collate=s.texts))
    assert texts[1] == s.texts(s[1])


def test_saved_tasks_round_trip(ds, tmp_path):
    tasks = sampler(ds, pairs=[("de", "fr")], pivot=True, seed=2).batch(range(5))
    episodes_to_dataset(tasks).save_to_disk(tmp_path / "eval")
    loaded = [TranslationTask.from_dict(row) for row in datasets.load_from_disk(tmp_path / "eval")]
    assert [t.to_dict() for t in loaded] == [t.to_dict() for t in tasks]


# -- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_errors_name_the_problem(ds):
    with pytest.raises(
        ValueError, match=r"source column 'sorce' is not in the dataset .* Did you mean 'source'"
    ):
        sampler(ds, source_column="sorce")
    with pytest.raises(ValueError, match=r"target_lang column 'tgt_lang' .* Did you mean 'target_lang'.*"
                                         r"Pass target_lang_column="):  # fmt: skip
        sampler(ds, target_lang_column="tgt_lang")
    with pytest.raises(ValueError, match=r"The target column 'target' has type int64; it must hold strings"):
        sampler(ds.map(lambda r: {"target": 3}))
    with pytest.raises(ValueError, match=r"The target_lang column 'target_lang' has type int64"):
        sampler(ds.map(lambda r: {"target_lang": 1}))
    with pytest.raises(ValueError, match=r"Unknown language 'jp' in pair \('en', 'jp'\).*Did you mean 'ja'"):
        sampler(ds, pairs=[("en", "jp")])
    with pytest.raises(ValueError, match=r"Unknown language 'xx': the dataset has \['de', 'en'"):
        sampler(ds, languages=["de", "xx"])
    with pytest.raises(ValueError, match="translates a language into itself"):
        sampler(ds, pairs=[("de", "de")])
    with pytest.raises(ValueError, match="not both"):
        sampler(ds, pairs=[("en", "de")], languages=["de"])
    with pytest.raises(ValueError, match=r"pivot=True needs the pairs to join"):
        sampler(ds, pivot=True)
    with pytest.raises(ValueError, match=r"k_support must be an int >= 1, got 0"):
        sampler(ds, k_support=0)
    with pytest.raises(ValueError, match=r"q_query must be an int >= 0, got -1"):
        sampler(ds, q_query=-1)
    with pytest.raises(ValueError, match="on_small_pair must be 'skip' or 'error'"):
        sampler(ds, on_small_pair="drop")
    with pytest.raises(ValueError, match=r"language_weights has keys \['xx'\]"):
        sampler(ds, language_weights={"xx": 1.0})
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        sampler(ds, languages=["de"], language_weights={"de": 0.0})
    with pytest.raises(TypeError, match="takes a datasets.Dataset, got DatasetDict"):
        sampler(datasets.DatasetDict({"train": ds}))
    with pytest.raises(ValueError, match=r"language_weights has keys \['en'\]"):  # a source, not a target
        sampler(ds, language_weights={"en": 2.0})
    with pytest.raises(ValueError, match=r"Pairs are \(source, target\) tuples .* got 'de'"):
        sampler(ds, pairs=["de"])
    with pytest.raises(ValueError, match=r"No rows translate into \['en'\] \(target languages: \['de', "):
        sampler(ds, languages=["en"])
    with pytest.raises(ValueError, match=r"The id column 'id' has type double; use str or int ids"):
        sampler(ds.map(lambda r: {"id": 0.5}), pairs=[("de", "fr")], pivot=True)
    with pytest.raises(
        ValueError, match=r"The id column 'id' has 1 missing values \(rows \[3\]\): pivot pairs join"
    ):
        sampler(ds.map(lambda r, i: {"id": None if i == 3 else r["id"]}, with_indices=True), pairs=[("de", "fr")],
                pivot=True)  # fmt: skip
    no_lang = ds.map(lambda r, i: {"target_lang": None if i == 4 else r["target_lang"]}, with_indices=True)
    with pytest.raises(
        ValueError, match=r"The target_lang column 'target_lang' has 1 missing values \(rows \[4\]\)"
    ):
        sampler(no_lang)
    no_ids = ds.remove_columns("id")
    assert sampler(no_ids).pairs  # ids are needed only to pivot
    with pytest.raises(ValueError, match=r"The id column 'id' is not in the dataset.*Pass id_column="):
        sampler(no_ids, pairs=[("de", "fr")], pivot=True)


def test_empty_sentences_are_named_with_rows_and_pairs(ds):
    langs = ds["target_lang"]
    bad_rows = [i for i, lang in enumerate(langs) if lang == "fr"][:2]
    blanked = ds.map(lambda r, i: {"target": "  " if i in bad_rows else r["target"]}, with_indices=True)
    message = (
        f"target column 'target' has 2 empty or missing sentences (rows {sorted(bad_rows)}; pairs en->fr)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        sampler(blanked)
    # Pairs that cannot draw those rows are not blocked by them.
    assert sampler(blanked, languages=["de"]).pairs == [("en", "de")]
    with pytest.raises(ValueError, match=r"2 empty or missing sentences .*pairs de->fr\)"):
        sampler(blanked, pairs=[("de", "fr")], pivot=True)
    de_row = langs.index("de")
    no_source = ds.map(lambda r, i: {"source": None if i == de_row else r["source"]}, with_indices=True)
    with pytest.raises(
        ValueError, match=rf"source column 'source' has 1 empty .*rows \[{de_row}\]; pairs en->de\)"
    ):
        sampler(no_source)


# -- FLORES-style data ---------------------------------------------------------------------------------------------
def test_flores_style_dataset_becomes_long_parallel_data(tmp_path):
    path = tmp_path / "flores_dev.jsonl"
    langs = ["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(12):
            row = {"id": i + 1, "URL": f"https://example.org/{i}", "domain": "wikinews", "topic": "science"}
            row.update({f"sentence_{lang}": f"{lang} {i}" for lang in langs})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    wide = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    long = from_flores_style(wide)
    assert long.column_names == ["source", "target", "source_lang", "target_lang", "id"]
    assert len(long) == 3 * 12
    assert long["target_lang"] == [lang for lang in sorted(langs[1:]) for _ in range(12)]
    assert set(long["source_lang"]) == {"eng_Latn"}
    assert long[13] == {"source": "eng_Latn 1", "target": "fra_Latn 1", "source_lang": "eng_Latn",
                        "target_lang": "fra_Latn", "id": "2"}  # fmt: skip
    s = sampler(
        long, pairs=[("fra_Latn", "zho_Hans"), ("eng_Latn", "deu_Latn")], pivot=True, k_support=4, q_query=4
    )
    for t in s.batch(range(10)):
        check_task(s, t, 4, 4)
    only = from_flores_style(wide, languages=["fra_Latn"], id_column=None)
    assert set(only["target_lang"]) == {"fra_Latn"} and only["id"][:2] == ["0", "1"]
    with pytest.raises(ValueError, match=r"Unknown language 'fra_latn' among the target columns.*'fra_Latn'"):
        from_flores_style(wide, languages=["fra_latn"])
    with pytest.raises(ValueError, match=r"Unknown language 'eng' \(source column 'sentence_eng'\)"):
        from_flores_style(wide, source="eng")
    with pytest.raises(ValueError, match=r"No column starts with 'text_'.*Pass prefix="):
        from_flores_style(wide, prefix="text_")


# -- Django's catalogues -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_ds(tmp_path_factory):
    pytest.importorskip("django")
    from hf_metatransfer.data import load_django_parallel

    return load_django_parallel(["de", "fr", "ja"], cache_dir=str(tmp_path_factory.mktemp("django")))


def test_django_parallel_load(django_ds, tmp_path):
    from hf_metatransfer.data import django_languages, load_django_parallel

    langs = django_languages()
    assert langs == sorted(langs) and {"de", "fr", "ja", "pt_BR"} <= set(langs) and "en" not in langs
    ds = django_ds
    assert ds.column_names == ["source", "target", "source_lang", "target_lang", "id"]
    assert all(f == datasets.Value("string") for f in ds.features.values())
    assert ds["target_lang"] == sorted(ds["target_lang"]) and set(ds["target_lang"]) == {"de", "fr", "ja"}
    assert set(ds["source_lang"]) == {"en"}
    counts = {lang: ds["target_lang"].count(lang) for lang in ("de", "fr", "ja")}
    assert all(300 < n < 2000 for n in counts.values())
    assert all(s.strip() and t.strip() and s != t for s, t in zip(ds["source"], ds["target"]))
    assert not any("\x04" in s for s in ds["source"])  # msgctxt stripped
    assert any("%(" in s for s in ds["source"]) and any("%(" in t for t in ds["target"])  # placeholders kept
    # One row per (language, English message); ids agree across languages, so languages pivot.
    keys = list(zip(ds["target_lang"], ds["id"]))
    assert len(set(keys)) == len(keys)
    by_id = {}
    for src, i in zip(ds["source"], ds["id"]):
        assert by_id.setdefault(i, src) == src
    # Deterministic and cached: a second call (another cache too) gives the same rows.
    again = load_django_parallel(["ja", "fr", "de"], cache_dir=str(tmp_path))
    assert again.to_dict() == ds.to_dict()
    assert (
        load_django_parallel("ja", cache_dir=str(tmp_path)).to_dict()
        == ds.filter(lambda lang: lang == "ja", input_columns="target_lang").to_dict()
    )


def test_django_tasks_and_pivot(django_ds):
    s = TranslationTaskSampler(
        django_ds, k_support=4, q_query=4, pairs=[("de", "ja"), ("en", "fr")], pivot=True
    )
    assert s.pair_sizes()[("de", "ja")] > 300
    ids, sources = np.asarray(django_ds["id"]), np.asarray(django_ds["source"])
    for t in s.batch(range(20)):
        assert t.support.shape == (4, 2) and t.query.shape == (4, 2)
        rows = np.concatenate([t.support, t.query])
        assert (ids[rows[:, 0]] == ids[rows[:, 1]]).all() and len(set(ids[rows[:, 0]])) == 8
        sup_src, sup_tgt, qry_src, qry_tgt = s.texts(t)
        assert all(sup_src) and all(sup_tgt) and all(qry_src) and all(qry_tgt)
        if t.pair == ("en", "fr"):
            assert sup_src == sources[t.support[:, 0]].tolist()


def test_django_errors(monkeypatch):
    pytest.importorskip("django")
    from hf_metatransfer.data import load_django_parallel

    with pytest.raises(ValueError, match=r"Unknown Django language\(s\) 'pt-BR' \(did you mean 'pt_BR'\?\)"):
        load_django_parallel(["pt-BR"])
    with pytest.raises(ValueError, match="English is the source language"):
        load_django_parallel(["en"])
    with pytest.raises(ValueError, match="languages is empty"):
        load_django_parallel([])
    monkeypatch.setitem(sys.modules, "django", None)
    with pytest.raises(ImportError, match="pip install django"):
        load_django_parallel(["de"])
