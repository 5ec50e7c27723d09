"""Language splits compare base languages: ``es_AR`` meta-trained on leaks a held-out ``es`` (issue 16, item 3)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from hf_metatransfer.episodes import (
    EpisodeBuilder,
    SplitLeakError,
    Splits,
    base_language,
    check_disjoint,
    language_groups,
    other_languages,
    split_target_languages,
    split_values,
    tasks_from_builder,
)

# Target languages as Django names them (plus a few without variants so that three splits fill up).
DJANGO_LIKE = [
    "de",
    "es",
    "es_AR",
    "es_MX",
    "pt",
    "pt_BR",
    "zh_Hans",
    "zh_Hant",
    "sr",
    "sr_Latn",
    "fr",
    "ja",
    "nl",
]
VARIANTS = [{"es", "es_AR", "es_MX"}, {"pt", "pt_BR"}, {"zh_Hans", "zh_Hant"}, {"sr", "sr_Latn"}]
SEEDS = range(200)


@pytest.mark.parametrize(
    "code, base",
    [
        ("es", "es"),
        ("es_AR", "es"),
        ("es-AR", "es"),
        ("ES-ar", "es"),
        ("pt-BR", "pt"),
        ("zh-Hant", "zh"),
        ("zh_Hans", "zh"),
        ("zh-CN", "zh"),
        ("sr@latin", "sr"),
        ("sr_Latn", "sr"),
        ("fil", "fil"),
        ("eng_Latn", "eng"),
        ("nb", "nb"),
        ("nn", "nn"),
        ("no", "no"),
        ("de-CH-1996", "de"),
    ],
)
def test_base_language_is_the_part_before_the_first_separator_lowercased(code, base):
    assert base_language(code) == base


def test_groups_and_other_languages_compare_base_languages():
    assert language_groups(["pt_BR", "de", "pt", "nb", "nn"]) == [["pt_BR", "pt"], ["de"], ["nb"], ["nn"]]
    assert language_groups(["es", "es_AR", "es_MX"], allow_variants=("es_AR",)) == [
        ["es", "es_MX"],
        ["es_AR"],
    ]
    assert other_languages(DJANGO_LIKE, ["es", "pt_BR"]) == [
        "de", "zh_Hans", "zh_Hant", "sr", "sr_Latn", "fr", "ja", "nl"
    ]  # fmt: skip
    assert other_languages(DJANGO_LIKE, ["es"], allow_variants=("es_AR",))[:3] == ["de", "es_AR", "pt"]


def parts_of(splits: dict[str, list[str]] | Splits) -> dict[str, str]:
    """Code -> the split holding it (each code once)."""
    where = {}
    for name, codes in (splits.parts if isinstance(splits, Splits) else splits).items():
        for code in codes:
            assert code not in where, f"{code} in two splits"
            where[code] = name
    return where


def test_split_values_never_separates_variants_of_a_language():
    for seed in SEEDS:
        for ratios in ((0.6, 0.2, 0.2), (0.34, 0.33, 0.33), (0.9, 0.05, 0.05)):
            where = parts_of(
                split_values(DJANGO_LIKE, ratios, seed, ("train", "validation", "test"), kind="language")
            )
            assert set(where) == set(DJANGO_LIKE)
            for group in VARIANTS:
                assert len({where[c] for c in group}) == 1, (seed, ratios, group, where)


def test_without_variants_the_language_split_is_the_split_by_code():
    codes = ["af", "de", "fr", "it", "ja", "ko", "nl", "pl", "ru", "sv"]
    for seed in range(20):
        assert split_values(codes, (0.6, 0.2, 0.2), seed, ("a", "b", "c"), kind="language") == split_values(
            codes, (0.6, 0.2, 0.2), seed, ("a", "b", "c")
        )


def test_an_allowed_variant_is_split_as_a_language_of_its_own():
    apart = 0
    for seed in SEEDS:
        parts = split_values(DJANGO_LIKE, (0.5, 0.5), seed, ("train", "test"), kind="language",
                             allow_variants=("es_AR",))  # fmt: skip
        where = parts_of(parts)
        assert where["es"] == where["es_MX"]  # the variant not named stays with its language
        apart += where["es_AR"] != where["es"]
        Splits(parts, kind="language", allow_variants=("es_AR",))
    assert 0 < apart < len(SEEDS)


def test_a_variant_of_a_held_out_language_in_meta_training_is_refused_by_name():
    with pytest.raises(SplitLeakError) as raised:
        check_disjoint(["de", "es_AR"], ["es", "fr"], kind="language")
    message = str(raised.value)
    assert "'es': ['es'] in 'test' but ['es_AR'] in 'train'" in message
    assert "allow_variants=('es_AR',)" in message
    with pytest.raises(SplitLeakError, match="'zh': \\['zh_Hant'\\] in 'test' but \\['zh-CN'\\] in 'train'"):
        check_disjoint(["zh-CN"], ["zh_Hant"], kind="language")  # the held-out (last) side keeps the language
    with pytest.raises(SplitLeakError, match="Language 'de' is in both 'train' and 'test'"):
        check_disjoint(["de", "es_AR"], ["de"], kind="language", allow_variants=("es_AR",))
    check_disjoint(["intent_es_AR"], ["intent_es"], kind="class")  # classes stay compared exactly


def test_a_variant_asked_for_by_name_is_allowed_and_nothing_else():
    check_disjoint(["de", "es_AR"], ["es", "fr"], kind="language", allow_variants=("es_AR",))
    with pytest.raises(SplitLeakError) as raised:
        check_disjoint(["de", "es_AR", "es_MX"], ["es"], kind="language", allow_variants=("es_AR",))
    message = str(raised.value)
    assert "['es_MX'] in 'train'" in message and "es_AR'] in" not in message
    assert "allow_variants=('es_AR', 'es_MX')" in message  # the fix keeps what was already asked for
    splits = Splits({"train": ["es", "es_MX"], "test": ["es_AR"]}, kind="language", allow_variants=["es_AR"])
    assert splits.allow_variants == ("es_AR",)


def parallel(targets, n=6) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"source": f"en {i}", "target": f"{lang} {i}", "source_lang": "en", "target_lang": lang, "id": f"m{i}"}
         for lang in targets for i in range(n)]
    )  # fmt: skip


def test_translation_splits_of_django_like_codes_keep_variants_together():
    data = parallel(DJANGO_LIKE)
    for seed in range(50):
        splits = split_target_languages(data, (0.6, 0.2, 0.2), seed=seed)
        where = parts_of(splits)
        assert set(where) == set(DJANGO_LIKE)
        for group in VARIANTS:
            assert len({where[c] for c in group}) == 1, (seed, group, where)
    held_out = ["de", "es", "pt_BR"]
    with pytest.raises(SplitLeakError, match=r"allow_variants=\('es_AR', 'es_MX', 'pt'\)"):
        split_target_languages(data, explicit={"train": [c for c in DJANGO_LIKE if c not in held_out],
                                               "test": held_out})  # fmt: skip
    train = other_languages(DJANGO_LIKE, held_out)
    assert not {"es_AR", "es_MX", "pt"} & set(train)
    assert split_target_languages(data, explicit={"train": train, "test": held_out})["train"] == train
    allowed = split_target_languages(data, explicit={"train": [*train, "es_MX"], "test": held_out},
                                     allow_variants=["es_MX"])  # fmt: skip
    assert "es_MX" in allowed["train"]


def builder_of(langs, n_classes=6, per_class=4) -> EpisodeBuilder:
    rows = [{"text": f"{lang} {c} {i}", "intent": f"intent_{c}", "lang": lang}
            for lang in langs for c in range(n_classes) for i in range(per_class)]  # fmt: skip
    return EpisodeBuilder(datasets.Dataset.from_list(rows), label_column="intent", lang_column="lang")


def test_classification_language_splits_keep_locales_of_a_language_together():
    builder = builder_of(["de", "de-CH", "fr", "pt", "pt-BR", "zh-CN", "zh-TW", "ja", "ko"])
    for seed in range(50):
        where = parts_of(builder.split_languages((0.5, 0.25, 0.25), seed=seed))
        for group in ({"de", "de-CH"}, {"pt", "pt-BR"}, {"zh-CN", "zh-TW"}):
            assert len({where[c] for c in group}) == 1, (seed, group, where)
    leak = {"train": ["de-CH", "fr"], "validation": ["ja"], "test": ["de", "ko"]}
    with pytest.raises(SplitLeakError, match=r"\['de-CH'\] in 'train'.*allow_variants=\('de-CH',\)"):
        tasks_from_builder(builder, class_ratios=(0.5, 0.25, 0.25), language_split=leak)
    tasks = tasks_from_builder(builder, class_ratios=(0.5, 0.25, 0.25), language_split=leak,
                               allow_variants=("de-CH",))  # fmt: skip
    assert tasks.languages_of("train") == ["de-CH", "fr"]
    index = tasks.index("train")  # the allowed variant, not its language, reaches meta-training
    assert {index.lang_names[g] for g in np.unique(index.group_lang)} == {"de-CH", "fr"}
    with pytest.raises(SplitLeakError, match=r"\['de'\] are not languages of split 'train'"):
        tasks.sampler("train", 2, 1, 1, mode="monolingual", languages=["de"])
