"""Wrong language splits: variants of a held-out language on the meta-training side (which exact codes let through),
malformed codes, and ``allow_variants`` naming what is not there or used where it means nothing."""

from __future__ import annotations

import datasets
import pytest

from hf_metatransfer.episodes import (
    EpisodeBuilder,
    SplitLeakError,
    Splits,
    base_language,
    split_target_languages,
    split_values,
    tasks_from_builder,
)

TARGETS = ["de", "es", "es_AR", "es_MX", "fr", "pt", "pt_BR"]


@pytest.fixture(scope="module")
def parallel() -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"source": f"en {i}", "target": f"{lang} {i}", "source_lang": "en", "target_lang": lang, "id": f"m{i}"}
         for lang in TARGETS for i in range(4)]
    )  # fmt: skip


@pytest.fixture(scope="module")
def builder() -> EpisodeBuilder:
    rows = [{"text": f"{lang} {c} {i}", "intent": f"intent_{c}", "lang": lang}
            for lang in ("de", "de-CH", "fr", "it") for c in range(4) for i in range(3)]  # fmt: skip
    return EpisodeBuilder(datasets.Dataset.from_list(rows), label_column="intent", lang_column="lang")


@pytest.mark.parametrize("code", ["", "  ", "_AR", "-BR", "@latin"])
def test_a_code_without_a_base_language_is_refused(refused, code):
    with refused(ValueError, f"Language code {code!r} has no base language", "as in 'es' or 'es_AR'"):
        base_language(code)


def test_a_code_that_is_not_a_string_is_refused(refused):
    with refused(TypeError, "A language code is a string, got int 7"):
        base_language(7)


def test_the_default_translation_split_of_every_other_code_is_refused_naming_the_variants(parallel, refused):
    held_out = ["de", "es"]
    train = [c for c in TARGETS if c not in held_out]  # what recipes did: es_AR, es_MX meta-trained on
    with refused(SplitLeakError, "'es': ['es'] in 'test' but ['es_AR', 'es_MX'] in 'train'",
                 "Keep each language's variants in one split", "allow_variants=('es_AR', 'es_MX')"):  # fmt: skip
        split_target_languages(parallel, explicit={"train": train, "test": held_out})


def test_a_held_out_variant_with_its_language_meta_trained_on_is_refused(parallel, refused):
    with refused(SplitLeakError, "'pt': ['pt_BR'] in 'test' but ['pt'] in 'train'", "allow_variants=('pt',)"):
        split_target_languages(parallel, explicit={"train": ["de", "pt"], "test": ["pt_BR"]})


def test_a_misspelt_allowed_variant_is_refused_with_the_closest_code(parallel, refused):
    with refused(ValueError, "Unknown language 'es_ARG' in allow_variants", "Did you mean 'es_AR'?"):
        split_target_languages(parallel, explicit={"train": ["de", "es_AR"], "test": ["es"]},
                               allow_variants=["es_ARG"])  # fmt: skip


def test_an_allowed_variant_in_no_split_is_refused(refused):
    with refused(
        ValueError, "allow_variants names ['es_MX'], which are in no split", "name variants that are in"
    ):
        Splits({"train": ["de", "es_AR"], "test": ["es"]}, kind="language", allow_variants=("es_AR", "es_MX"))


def test_allow_variants_for_class_splits_is_refused(refused):
    with refused(ValueError, "allow_variants is for language splits, not kind='class'"):
        Splits({"train": [0, 1], "test": [2]}, kind="class", allow_variants=("es_AR",))
    with refused(ValueError, "allow_variants is for language splits, not kind='class'"):
        split_values([0, 1, 2], (0.5, 0.5), 0, ("train", "test"), allow_variants=("es_AR",))


def test_too_few_base_languages_for_the_splits_are_counted_as_languages(refused):
    with refused(ValueError, "2 base languages (4 codes) cannot fill 3 non-empty splits"):
        split_values(["es", "es_AR", "pt", "pt_BR"], (0.6, 0.2, 0.2), 0, ("a", "b", "c"), kind="language")


def test_classification_leak_and_allow_variants_without_a_language_split_are_refused(builder, refused):
    with refused(SplitLeakError, "['de-CH'] in 'train'", "allow_variants=('de-CH',)"):
        tasks_from_builder(builder, class_ratios=(0.5, 0.5), split_names=("train", "test"),
                           language_split={"train": ["de-CH", "fr"], "test": ["de", "it"]})  # fmt: skip
    with refused(ValueError, "allow_variants applies to a language split: pass language_split=... too."):
        tasks_from_builder(
            builder, class_ratios=(0.5, 0.5), split_names=("train", "test"), allow_variants=["de-CH"]
        )
    with refused(ValueError, "Languages ['de-AT'] are not in the dataset"):
        builder.split_languages(explicit={"train": ["de-CH"], "test": ["de"]}, allow_variants=["de-AT"])
