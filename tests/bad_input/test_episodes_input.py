"""Wrong episodes: malformed ``Episode`` fields, N/K/Q that cannot make an episode, and saved evaluation episodes
re-scored on other data (other options, or other sentences under the same options), which used to score other
sentences silently."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hf_metatransfer.data import minilm_path
from hf_metatransfer.episodes import (
    Episode,
    EpisodeBuilder,
    EpisodeCollator,
    TokenStore,
    episodes_to_dataset,
    verify_episodes,
)
from hf_metatransfer.hub.publish import push_episodes
from hf_metatransfer.recipes.finetune import ModelArguments
from hf_metatransfer.recipes.meta_test import cli as meta_test_cli
from hf_metatransfer.recipes.meta_test import data_options, load_episode_dataset
from hf_metatransfer.recipes.meta_train import EpisodeArguments, setup_episodes
from hf_metatransfer.recipes.meta_train import cli as meta_train_cli
from tests.hub_server import TOKEN, hub_fixture  # noqa: F401 - the fixture 'hub'
from tests.test_recipe_finetune import tiny_checkpoint  # noqa: F401 - the fixture

# The cheap settings of tests/test_recipe_meta_train.py.
DATA = ["--languages", "en", "--cap_per_intent", "20", "--n_way", "3", "--k_shot", "2", "--q_query", "2"]
SEED = 0


def episode(**fields) -> Episode:
    """A valid 2-way episode (classes 7 and 3), with ``fields`` replaced."""
    base = dict(episode_id=0, classes=[7, 3], support=[0, 1, 2, 3], support_labels=[0, 0, 1, 1], query=[4, 5],
                query_labels=[0, 1], class_names=("seven", "three"))  # fmt: skip
    return Episode(**{**base, **fields})


# -- Episode fields ------------------------------------------------------------------------------------------------
def test_an_episode_from_lists_holds_int64_arrays_and_collates():
    e = episode()
    assert all(getattr(e, f).dtype == np.int64 for f in ("classes", "support", "support_labels", "query"))
    tokens = datasets.Dataset.from_dict({"input_ids": [[101, i + 5, 102] for i in range(6)]})
    batch = EpisodeCollator(TokenStore(tokens, pad_token_id=0))(e)  # was: TypeError expected np.ndarray
    assert (
        batch["support"]["labels"].tolist() == [0, 0, 1, 1] and batch["query"]["labels"].dtype == torch.int64
    )
    assert batch["query"]["input_ids"].shape == (2, 3)


MALFORMED = {  # id: (fields replaced, phrases of the message)
    "support-lengths": ({"support_labels": [0, 0, 1]}, ["support_labels has 3 labels for 4 support rows"]),
    "query-lengths": (
        {"query_labels": [0]},
        ["query_labels has 1 labels for 2 query rows", "one label a row"],
    ),
    "label-out-of-range": ({"query_labels": [0, 2]}, ["holds [2], outside 0..1", "positions in classes"]),
    "class-without-support": (
        {"support_labels": [0, 0, 0, 0]},
        ["classes [1] have no support", "at least one"],
    ),
    "2-d": ({"support": [[0, 1], [2, 3]]}, ["support has shape (2, 2)", "1-D"]),
    "negative-row": ({"query": [4, -1]}, ["query holds negative row numbers [-1]", "0 and up"]),
    "class-names": (
        {"class_names": ("seven",)},
        ["class_names has 1 names for 2 classes", "one name a class"],
    ),
    "float-rows": ({"support": [0.0, 1.5, 2.0, 3.0]}, ["support holds float64 values", "integers"]),
    "empty-query": ({"query": [], "query_labels": []}, ["query is empty", "at least one of each"]),
    "repeated-class": ({"classes": [3, 3]}, ["classes [3, 3] repeats a class", "each class once"]),
    "negative-class": ({"classes": [7, -3]}, ["classes [7, -3]", "negative id", "label id (0 and up)"]),
}


@pytest.mark.parametrize(("fields", "phrases"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_episode_is_refused_on_construction(refused, fields, phrases):
    with refused(ValueError, *phrases):
        episode(**fields)


# -- N, K, Q -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builder() -> EpisodeBuilder:
    rows = {"text": [f"sentence {i}" for i in range(60)], "label": [i % 6 for i in range(60)]}
    return EpisodeBuilder(datasets.Dataset.from_dict(rows))


@pytest.mark.parametrize(
    ("shape", "phrases"),
    [
        ((3, 2, 0), ["q_query=0", "an episode is scored on its queries", "q_query=1 or more"]),
        ((3, 0, 2), ["k_shot=0", "support examples a class", "k_shot=1 or more"]),
        ((0, 2, 2), ["n_way=0", "classes an episode", "n_way=1 or more"]),
        ((3, 2, (0, 3)), ["q_query=(0, 3)", "q_query=1 or more"]),
        ((3, (3, 1), 2), ["k_shot=(3, 1)", "pass k_shot=(1, 3)"]),
    ],
    ids=["q0", "k0", "n0", "q-range-from-0", "k-range-reversed"],
)
def test_n_k_q_below_one_are_refused_when_the_sampler_is_made(builder, refused, shape, phrases):
    with refused(ValueError, *phrases):
        builder.sampler(*shape)  # was: an IndexError in _pad_batch at the first meta-step


def test_meta_train_with_q_query_0_is_refused_before_training(tmp_path, tiny_checkpoint, refused):  # noqa: F811
    out = tmp_path / "run"
    with refused(ValueError, "q_query=0", "q_query=1 or more", folders=(tmp_path,)):
        meta_train_cli(["--model_name_or_path", str(tiny_checkpoint), *DATA[:-1], "0", "--max_steps", "2",
                        "--output_dir", str(out), "--disable_tqdm", "true"])  # fmt: skip
    assert not out.exists()


# -- saved episodes and the data they index ---------------------------------------------------------------------
def meta_test(tiny: Path, saved: Path, results: Path, *flags: str) -> dict:
    """``meta-test`` on saved episodes, the tiny model both meta-learned model and baseline encoder."""
    return meta_test_cli(["--model_name_or_path", str(tiny), "--algorithm", "protonets", "--episodes", str(saved),
                          "--baseline_model_name_or_path", str(tiny), "--baselines", "nearest-centroid",
                          "--results_dir", str(results), *flags])  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Test episodes saved as meta-training saves them (``--languages en --cap_per_intent 20``), without training."""
    ep = EpisodeArguments(languages=["en"], cap_per_intent=20, n_way=3, k_shot=2, q_query=2, test_episodes=4)
    setup = setup_episodes(ModelArguments(model_name_or_path=minilm_path()), ep, SEED)
    episodes = setup.sampler(ep, "test", SEED + 2).batch(range(ep.test_episodes))
    folder = tmp_path_factory.mktemp("saved") / "test_episodes"
    dataset = episodes_to_dataset(episodes, setup.tasks.dataset, options=asdict(ep) | {"seed": SEED})
    dataset.save_to_disk(folder)
    return {"folder": folder, "source": setup.tasks.dataset, "episodes": episodes, "ep": ep,
            "dataset": datasets.load_from_disk(folder)}  # fmt: skip


def test_meta_train_episodes_rescored_with_other_languages_are_refused(tmp_path, tiny_checkpoint, refused):  # noqa: F811
    out, retest = tmp_path / "run", tmp_path / "retest"
    meta_train_cli(["--model_name_or_path", str(tiny_checkpoint), *DATA, "--algorithm", "protonets",
                    "--meta_batch_size", "2", "--max_steps", "2", "--eval_steps", "0", "--save_steps", "0",
                    "--test_episodes", "4", "--baselines", "nearest-centroid", "--output_dir", str(out),
                    "--disable_tqdm", "true"])  # fmt: skip
    assert {"texts_sha256", "data_options"} <= set(
        datasets.load_from_disk(out / "test_episodes").column_names
    )
    with refused(ValueError, "languages: saved ['en'], now ['de', 'en']", "would point at other sentences",
                 "run that saved them: --languages en", folders=(out, retest)):  # fmt: skip
        meta_test(out, out / "test_episodes", retest, *DATA, "--languages", "de", "en")
    assert not retest.exists()


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--cap_per_intent", "30"], ["cap_per_intent: saved 20, now 30", "--cap_per_intent 20"]),
        (["--seed", "1"], ["seed: saved 0, now 1", "--seed 0"]),
        (
            ["--n_way", "4", "--slots", "strip"],
            ["n_way: saved 3, now 4", "slots: saved 'fill', now 'strip'", "--n_way 3 --slots fill"],
        ),
    ],
    ids=["cap_per_intent", "seed", "n_way-and-slots"],
)
def test_saved_episodes_rescored_with_other_data_options_are_refused_before_any_model(
    saved, tmp_path, tiny_checkpoint, refused, monkeypatch, flags, phrases
):  # noqa: F811
    from hf_metatransfer.recipes.meta_train import EpisodeSetup

    monkeypatch.setattr(EpisodeSetup, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with refused(ValueError, *phrases, "run that saved them", folders=(tmp_path, saved["folder"])):
        meta_test(tiny_checkpoint, saved["folder"], tmp_path / "retest", *DATA, *flags)


def test_other_sentences_under_the_same_options_are_refused(
    saved, tmp_path, tiny_checkpoint, refused, monkeypatch
):  # noqa: F811
    """Another version of the intents package: same options, other sentences behind the same row numbers."""
    import hf_metatransfer.data

    load = hf_metatransfer.data.load_ha_intents
    monkeypatch.setattr(hf_metatransfer.data, "load_ha_intents",
                        lambda *a, **k: load(*a, **k).map(lambda r: {"text": r["text"] + " please"}))  # fmt: skip
    with refused(ValueError, "sentences of 4 of 4 saved episodes", "recorded data options agree",
                 "another version", folders=(tmp_path, saved["folder"])):  # fmt: skip
        meta_test(tiny_checkpoint, saved["folder"], tmp_path / "retest", *DATA)


def test_one_changed_label_is_found_and_named_by_episode(saved, refused):
    e = saved["episodes"][2]
    names = saved["source"].features["label"].names
    row = int(e.query[0])
    other = saved["source"].map(lambda r, i: {"label": (r["label"] + 1) % len(names) if i == row else r["label"]},
                                with_indices=True, features=saved["source"].features)  # fmt: skip
    ids = [x.episode_id for x in saved["episodes"] if row in x.support.tolist() + x.query.tolist()]
    with refused(ValueError, f"sentences of {len(ids)} of 4 saved episodes (ids {ids})", "draw new episodes"):
        verify_episodes(saved["dataset"], other, data_options(saved["ep"], SEED))


def test_matching_data_verifies_silently(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_episodes(saved["dataset"], saved["source"], data_options(saved["ep"], SEED), cli_flags=True)


def test_episodes_saved_without_a_fingerprint_are_scored_with_a_warning(saved, tmp_path, tiny_checkpoint):  # noqa: F811
    old = tmp_path / "old_episodes"
    episodes_to_dataset(saved["episodes"]).save_to_disk(old)  # as saved before fingerprints
    with pytest.warns(UserWarning, match="carry no fingerprint .* cannot be verified"):
        results = meta_test(tiny_checkpoint, old, tmp_path / "retest", *DATA)
    assert all(r["episodes"] == 4 for r in results["meta_test"])
    assert (tmp_path / "retest" / "results.json").exists()


def test_old_episodes_past_the_end_of_the_data_are_still_refused(saved, refused):
    row = saved["episodes"][0].to_dict()
    row["query"][-1] = 10_000
    old = episodes_to_dataset([Episode.from_dict(row)])
    with refused(
        ValueError, f"Episodes [0] point past the {len(saved['source'])} rows", "run that saved them"
    ):
        verify_episodes(old, saved["source"])


def test_data_options_without_the_data_are_refused(saved, refused):
    with refused(ValueError, "pass that dataset as source="):
        episodes_to_dataset(saved["episodes"], options={"seed": SEED})


def test_pushed_episodes_keep_their_fingerprint(saved, hub, refused, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_episodes(saved["dataset"], "tester/meta-episodes", token=TOKEN)
    pulled = load_episode_dataset("tester/meta-episodes")
    assert list(pulled["texts_sha256"]) == list(saved["dataset"]["texts_sha256"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_episodes(pulled, saved["source"], data_options(saved["ep"], SEED))
    with refused(ValueError, "languages: saved ['en'], now ['de', 'en']", "languages=['en']"):
        verify_episodes(
            pulled, saved["source"], data_options(saved["ep"], SEED) | {"languages": ["de", "en"]}
        )
