"""Tests of the offline multilingual intents dataset built from `home-assistant-intents`."""

from __future__ import annotations

import re

import datasets
import pytest

pytest.importorskip("home_assistant_intents")
pytest.importorskip("hassil")

from hf_metatransfer.data import ha_intents, ha_intents_languages, load_ha_intents  # noqa: E402

# Small languages (few intents) keep the expansion fast.
SMALL = ["kn", "ta"]
OTHER = ["sw"]
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _load(tmp_path, name="cache", **kwargs):
    kwargs.setdefault("languages", SMALL)
    kwargs.setdefault("cap_per_intent", 5)
    return load_ha_intents(cache_dir=str(tmp_path / name), **kwargs)


def test_languages_listed():
    langs = ha_intents_languages()
    assert langs == sorted(langs)
    assert {"en", "de", *SMALL, *OTHER} <= set(langs)


def test_columns_and_features(tmp_path):
    ds = _load(tmp_path)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["text", "label", "intent", "lang"]
    assert ds.features["text"] == datasets.Value("string")
    assert ds.features["intent"] == datasets.Value("string")
    assert ds.features["lang"] == datasets.Value("string")
    label = ds.features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.names == sorted(label.names)
    assert len(ds) > 0
    assert set(ds["lang"]) == set(SMALL)
    assert all(isinstance(t, str) and t.strip() == t and t for t in ds["text"])
    # At most cap_per_intent distinct sentences per (language, intent).
    counts: dict[tuple[str, str], int] = {}
    for lang, intent in zip(ds["lang"], ds["intent"], strict=True):
        counts[lang, intent] = counts.get((lang, intent), 0) + 1
    assert max(counts.values()) <= 5
    assert len(set(zip(ds["lang"], ds["intent"], ds["text"], strict=True))) == len(ds)


def test_labels_consistent_across_language_subsets(tmp_path):
    a = _load(tmp_path, "a", languages=SMALL)
    b = _load(tmp_path, "b", languages=OTHER)
    # The label space is the whole package's, not the subset's.
    assert a.features["label"].names == b.features["label"].names
    names = a.features["label"].names
    assert len(names) > len(set(a["intent"]) | set(b["intent"]))
    for ds in (a, b):
        assert [names[i] for i in ds["label"]] == ds["intent"]
        assert ds.features["label"].int2str(ds["label"]) == ds["intent"]


def test_deterministic_for_a_seed(tmp_path):
    one = _load(tmp_path, "one", seed=3)
    two = _load(tmp_path, "two", seed=3)
    assert one.to_list() == two.to_list()
    assert one.features == two.features
    other = _load(tmp_path, "other", seed=4)
    assert other.to_list() != one.to_list()


def test_language_order_and_duplicates_do_not_matter(tmp_path):
    one = _load(tmp_path, "one", languages=["ta", "kn"])
    two = _load(tmp_path, "two", languages=["kn", "ta", "kn"])
    assert one.to_list() == two.to_list()


@pytest.mark.parametrize("slots", ["fill", "strip"])
def test_fill_and_strip_leave_no_placeholder(tmp_path, slots):
    ds = _load(tmp_path, languages=["en"], cap_per_intent=20, slots=slots)
    assert not [t for t in ds["text"] if PLACEHOLDER.search(t)]
    assert not [t for t in ds["text"] if "  " in t]


def test_fill_uses_slot_values(tmp_path):
    filled = _load(tmp_path, "fill", languages=["en"], cap_per_intent=20, slots="fill")
    # Number ranges and text lists of the package show up as values.
    assert any(re.search(r"\d", t) for t in filled["text"])


def test_keep_leaves_placeholders(tmp_path):
    ds = _load(tmp_path, slots="keep")
    assert any(PLACEHOLDER.search(t) for t in ds["text"])


def test_cache_hit_does_not_expand_again(tmp_path, monkeypatch):
    first = _load(tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("expanded again instead of reading the cache")

    monkeypatch.setattr(ha_intents, "_expand_language", boom)
    second = _load(tmp_path)
    assert second.to_list() == first.to_list()
    assert second.features == first.features
    # Other arguments are another cache entry, so they do expand.
    with pytest.raises(AssertionError, match="expanded again"):
        _load(tmp_path, cap_per_intent=6)


def test_default_cache_dir_under_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    load_ha_intents(["kn"], cap_per_intent=2)
    root = tmp_path / "hf" / "hf_metatransfer" / "ha_intents"
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "state.json").is_file()


def test_unknown_language(tmp_path):
    with pytest.raises(ValueError, match="xx-YY") as info:
        _load(tmp_path, languages=["en", "xx-YY"])
    assert "available" in str(info.value) and "en" in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="slots"):
        _load(tmp_path, slots="drop")
    with pytest.raises(ValueError, match="cap_per_intent"):
        _load(tmp_path, cap_per_intent=0)
    with pytest.raises(ValueError, match="empty"):
        _load(tmp_path, languages=[])


def test_missing_package_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "hassil", None)
    monkeypatch.setitem(sys.modules, "hassil.intents", None)
    monkeypatch.setitem(sys.modules, "hassil.sample", None)
    with pytest.raises(ImportError, match="pip install home-assistant-intents hassil"):
        load_ha_intents(["kn"])
