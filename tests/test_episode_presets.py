import json
import warnings

import datasets
import numpy as np
import pandas as pd
import pytest

from hf_metatransfer.episodes import (
    EpisodeBuilder,
    SplitLeakError,
    TaskCollection,
    ha_intents_tasks,
    massive_style_tasks,
    tasks_from_builder,
)

HA_LANGS = ["eu", "he", "ko", "ru", "uk"]  # quick to expand (a few seconds together at cap 20)
HA_SPLIT = {"train": ["he", "uk"], "validation": ["ko"], "test": ["eu", "ru"]}  # eu, ru: all 42 intents


@pytest.fixture(scope="module")
def ha_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ha_intents"))


@pytest.fixture(scope="module")
def ha_tasks(ha_cache):
    return ha_intents_tasks(HA_LANGS, seed=0, language_split=HA_SPLIT, cap_per_intent=20, cache_dir=ha_cache)


def _quiet(make):
    """Build a sampler without the small-class / small-language warnings of these tiny caps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def rows_of(tasks: TaskCollection, column: str) -> np.ndarray:
    return np.asarray(tasks.dataset[column])


def test_ha_tasks_are_class_and_language_disjoint(ha_tasks):
    parts = ha_tasks.classes.parts
    assert set(parts) == {"train", "validation", "test"}
    present = set(rows_of(ha_tasks, "label").tolist())
    assert sorted(c for v in parts.values() for c in v) == sorted(present)
    assert not set(parts["train"]) & set(parts["test"]) and not set(parts["train"]) & set(parts["validation"])
    assert len(parts["train"]) > len(parts["test"]) >= 1
    assert ha_tasks.languages.parts == {k: sorted(v) for k, v in HA_SPLIT.items()}
    assert ha_tasks.class_names("test") == [ha_tasks.builder.label_names[c] for c in parts["test"]]
    assert "train:" in ha_tasks.summary().replace("  ", "")


@pytest.mark.parametrize("mode", ["classes", "monolingual", "cross-lingual"])
def test_ha_samplers_stay_inside_their_split(ha_tasks, mode):
    labels, langs = rows_of(ha_tasks, "label"), rows_of(ha_tasks, "lang")
    for split in ("train", "test"):
        sampler = _quiet(lambda split=split: ha_tasks.sampler(split, 3, 1, 2, mode=mode, seed=4))
        allowed_classes, allowed_langs = set(ha_tasks.classes[split]), set(ha_tasks.languages[split])
        for e in sampler.batch(range(40)):
            rows = np.r_[e.support, e.query]
            assert set(labels[rows].tolist()) <= allowed_classes
            assert set(langs[rows].tolist()) <= allowed_langs
            assert (labels[e.support] == e.classes[e.support_labels]).all()
            assert (labels[e.query] == e.classes[e.query_labels]).all()
            if mode != "classes":
                assert set(langs[e.support].tolist()) == {e.support_lang}
                assert set(langs[e.query].tolist()) == {e.query_lang}
            if mode == "cross-lingual":
                assert e.support_lang != e.query_lang


def test_ha_samplers_are_seeded_and_the_collection_rebuilds_the_same(ha_tasks, ha_cache):
    a = _quiet(lambda: ha_tasks.sampler("train", 3, 2, 2, mode="monolingual", seed=1))
    again = ha_intents_tasks(HA_LANGS, seed=0, language_split=HA_SPLIT, cap_per_intent=20, cache_dir=ha_cache)
    b = _quiet(lambda: again.sampler("train", 3, 2, 2, mode="monolingual", seed=1))
    assert again.classes.parts == ha_tasks.classes.parts
    assert [e.to_dict() for e in a.batch(range(10))] == [e.to_dict() for e in b.batch(range(10))]
    other = ha_intents_tasks(HA_LANGS, seed=1, language_split=HA_SPLIT, cap_per_intent=20, cache_dir=ha_cache)
    assert other.classes.parts != ha_tasks.classes.parts


def test_ha_language_leaks_and_bad_splits_are_refused(ha_tasks, ha_cache):
    with pytest.raises(SplitLeakError, match=r"\['eu'\] are not languages of split 'train'"):
        ha_tasks.sampler("train", 3, 1, 1, mode="monolingual", languages=["eu"])
    with pytest.raises(SplitLeakError, match=r"query_languages \['eu'\]"):
        ha_tasks.sampler(
            "train", 3, 1, 1, mode="cross-lingual", support_languages=["he"], query_languages=["eu"]
        )
    with pytest.raises(ValueError, match=r"Unknown split 'dev'"):
        ha_tasks.sampler("dev", 3, 1, 1)
    with pytest.raises(ValueError, match="languages=... needs a language mode"):
        ha_tasks.sampler("train", 3, 1, 1, languages=["he"])
    with pytest.raises(SplitLeakError, match="Language 'eu' is in both 'train' and 'test'"):
        ha_intents_tasks(HA_LANGS, language_split={"train": ["eu", "uk"], "test": ["eu"]}, cap_per_intent=20,
                         cache_dir=ha_cache)  # fmt: skip
    with pytest.raises(ValueError, match=r"Language splits \['dev'\] have no class split"):
        ha_intents_tasks(HA_LANGS, language_split={"train": ["eu"], "dev": ["he"]}, cap_per_intent=20,
                         cache_dir=ha_cache)  # fmt: skip


def test_ha_tasks_without_language_split_use_every_language(ha_cache):
    tasks = ha_intents_tasks(HA_LANGS, seed=2, class_ratios=(0.5, 0.5), split_names=("train", "test"),
                             cap_per_intent=20, cache_dir=ha_cache)  # fmt: skip
    assert tasks.languages is None and tasks.split_names == ("train", "test")
    assert tasks.languages_of("test") == sorted(HA_LANGS)
    sampler = _quiet(lambda: tasks.sampler("test", 4, 2, 2, mode="monolingual"))
    labels = rows_of(tasks, "label")
    seen_langs = set()
    for e in sampler.batch(range(60)):
        assert set(labels[np.r_[e.support, e.query]].tolist()) <= set(tasks.classes["test"])
        seen_langs.add(e.support_lang)
    assert len(seen_langs) >= 3
    ratios = ha_intents_tasks(
        HA_LANGS, language_split=(0.5, 0.25, 0.25), cap_per_intent=20, cache_dir=ha_cache
    )
    assert sorted(x for v in ratios.languages.parts.values() for x in v) == sorted(HA_LANGS)


# -- MASSIVE-style --------------------------------------------------------------------------------------------
LOCALES = ["de-DE", "en-US", "fr-FR", "ja-JP"]
INTENTS = [f"intent_{i:02d}" for i in range(10)]


def massive_rows(seed: int, per: int = 8) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"{seed}-{loc}-{c}-{i}", "locale": loc, "intent": c,
             "utt": f"{loc} {c} utterance {i} {rng.integers(10_000)}", "scenario": c.split("_")[0]}
            for loc in LOCALES for c in INTENTS for i in range(per)]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def massive_dict(tmp_path_factory):
    root = tmp_path_factory.mktemp("massive")
    files = {split: write_jsonl(root / f"{split}.jsonl", massive_rows(s, per))
             for s, (split, per) in enumerate([("train", 10), ("validation", 4), ("test", 4)])}  # fmt: skip
    return datasets.load_dataset("json", data_files=files)


def test_massive_style_tasks_from_local_jsonl(massive_dict):
    assert massive_dict["train"].features["utt"] == datasets.Value("string")  # json: plain strings
    tasks = massive_style_tasks(massive_dict, seed=0, language_split={"train": ["de-DE", "en-US"],
                                "validation": ["fr-FR"], "test": ["ja-JP"]})  # fmt: skip
    assert tasks.dataset.num_rows == sum(d.num_rows for d in massive_dict.values())
    assert tasks.dataset.column_names == ["utt", "intent", "locale"]
    assert tasks.builder.languages == tuple(LOCALES)
    assert sorted(tasks.builder.label_names) == INTENTS
    assert sorted(c for v in tasks.classes.parts.values() for c in v) == list(range(10))
    sampler = tasks.sampler("test", 2, 3, 3, mode="monolingual", seed=0)
    e = sampler[0]
    support, query = tasks.builder.texts(e)
    assert all(t.startswith("ja-JP ") for t in support + query)
    assert {t.split()[1] for t in support} == set(e.class_names) <= set(tasks.class_names("test"))
    cross = tasks.sampler("train", 3, 2, 2, mode="cross-lingual", seed=0)[3]
    assert {cross.support_lang, cross.query_lang} == {"de-DE", "en-US"}


def test_massive_style_tasks_align_string_types_and_class_labels(massive_dict, tmp_path):
    csv = tmp_path / "extra.csv"
    pd.DataFrame(massive_rows(9, 3)).to_csv(csv, index=False)
    extra = datasets.load_dataset("csv", data_files=str(csv))["train"]
    assert extra.features["utt"] == datasets.Value("large_string")  # csv / parquet: large strings
    mixed = {"train": massive_dict["train"], "extra": extra}
    tasks = massive_style_tasks(mixed, class_ratios=(0.6, 0.4), split_names=("train", "test"))
    assert tasks.dataset.num_rows == massive_dict["train"].num_rows + extra.num_rows
    assert tasks.sampler("train", 3, 2, 2)[0].n_way == 3
    # Hub-like: intent as a ClassLabel; a single Dataset; only some example splits
    hub_like = massive_dict.class_encode_column("intent")
    only_train = massive_style_tasks(hub_like, data_splits=["train"], seed=3)
    assert only_train.dataset.num_rows == massive_dict["train"].num_rows
    assert isinstance(only_train.dataset.features["intent"], datasets.ClassLabel)
    assert list(only_train.builder.label_names) == hub_like["train"].features["intent"].names
    single = massive_style_tasks(hub_like["test"], class_split={"train": INTENTS[:6], "test": INTENTS[6:]})
    assert single.class_names("test") == INTENTS[6:]


def test_massive_style_tasks_name_missing_columns(massive_dict):
    renamed = massive_dict.rename_column("utt", "text")
    with pytest.raises(
        ValueError, match=r"split 'train' has .* lacks the text column 'utt'.*text_column=\.\.\."
    ):
        massive_style_tasks(renamed)
    assert massive_style_tasks(renamed, text_column="text").dataset.column_names[0] == "text"
    no_locale = massive_dict["train"].remove_columns("locale")
    with pytest.raises(ValueError, match=r"the dataset has .* lacks the lang column 'locale'"):
        massive_style_tasks(no_locale)
    with pytest.raises(ValueError, match=r"lang column 'locale' \(did you mean 'locales'\?\)"):
        massive_style_tasks(massive_dict["train"].rename_column("locale", "locales"))
    with pytest.raises(ValueError, match=r"Splits \['dev'\] are not in the data"):
        massive_style_tasks(massive_dict, data_splits=["dev"])
    with pytest.raises(TypeError, match="without streaming=True"):
        massive_style_tasks(massive_dict["train"].to_iterable_dataset())


def test_tasks_from_any_builder(massive_dict):
    builder = EpisodeBuilder(
        massive_dict["train"], label_column="intent", text_column="utt", lang_column="locale"
    )
    tasks = tasks_from_builder(builder, class_ratios=(0.5, 0.5), split_names=("train", "test"),
                               language_split={"train": ["de-DE", "en-US", "fr-FR"], "test": ["ja-JP"]})  # fmt: skip
    index = tasks.index("test")
    assert set(index.group_label.tolist()) == set(tasks.classes["test"])
    assert {index.lang_names[g] for g in index.group_lang.tolist()} == {"ja-JP"}
    locales = np.asarray(builder.dataset["locale"])
    assert set(locales[index.order].tolist()) == {"ja-JP"}
    assert len(index.order) == 5 * 10  # 5 test intents x 10 ja-JP rows each
