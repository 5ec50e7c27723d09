"""The meta-train recipe end to end on a tiny model: meta-train, meta-test against baselines, card, push."""

import json

import pytest
import torch
import transformers as T
from huggingface_hub import HfApi, ModelCard

from hf_metatransfer.meta import FOMAML
from hf_metatransfer.recipes.finetune import ModelArguments
from hf_metatransfer.recipes.meta_test import load_episodes
from hf_metatransfer.recipes.meta_train import EpisodeArguments, cli, setup_episodes
from tests.hub_server import TOKEN, hub_fixture  # noqa: F401 - the fixture 'hub'
from tests.test_recipe_finetune import tiny_checkpoint  # noqa: F401 - the fixture


def test_meta_train_recipe_tests_baselines_writes_card_and_pushes(
    hub, tmp_path, tiny_checkpoint, monkeypatch
):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "run"
    results = cli([
        "--model_name_or_path", str(tiny_checkpoint), "--languages", "en", "--cap_per_intent", "20",
        "--n_way", "3", "--k_shot", "2", "--q_query", "2", "--algorithm", "fomaml", "--inner_steps", "1",
        "--meta_batch_size", "2", "--max_steps", "2", "--eval_steps", "1", "--eval_episodes", "2",
        "--save_steps", "0", "--test_episodes", "4", "--baselines", "nearest-centroid", "linear-probe",
        "--output_dir", str(out), "--disable_tqdm", "true", "--push_to_hub", "--hub_model_id", "tester/meta-tiny",
        "--adapted_episodes", "1",
    ])  # fmt: skip
    methods = [r["method"] for r in results["meta_test"]]
    assert methods == ["fomaml (meta-learned)", "nearest-centroid", "linear-probe"]
    assert all(r["episodes"] == 4 and len(r["per_episode"]) == 4 for r in results["meta_test"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["episodes"]["n_way"] == 3
    card = ModelCard.load(out / "README.md")
    assert "trained with fomaml" in card.text and "3-way (N), 2-shot (K)" in card.text
    names = [r.metric_name for r in card.data.eval_results]
    assert "accuracy (3-way 2-shot, nearest-centroid)" in names
    files = set(HfApi(endpoint=hub.url, token=TOKEN).list_repo_files("tester/meta-tiny"))
    assert {"README.md", "model.safetensors", "config.json", "results.json"} <= files
    assert not any(f.startswith("checkpoint-") for f in files)
    episodes = set(HfApi(endpoint=hub.url, token=TOKEN).list_repo_files("tester/meta-tiny-episodes",
                                                                          repo_type="dataset"))  # fmt: skip
    assert any(f.endswith(".parquet") for f in episodes)
    # the model adapted to test episode 0: pushed, labelled with its intents, predicting as the algorithm did
    assert "adapted/episode-0/model.safetensors" in files and 'subfolder="adapted/episode-0"' in card.text
    episode = load_episodes(str(out / "test_episodes"))[0]
    adapted = T.AutoModelForSequenceClassification.from_pretrained(
        "tester/meta-tiny", subfolder="adapted/episode-0"
    )
    assert list(adapted.config.id2label.values()) == list(episode.class_names)
    setup = setup_episodes(ModelArguments(model_name_or_path=str(out)),
                           EpisodeArguments(languages=["en"], cap_per_intent=20), seed=0)  # fmt: skip
    batch = setup.collate(episode)
    algorithm = FOMAML(inner_steps=1)
    initialisation = T.AutoModelForSequenceClassification.from_pretrained(out)
    algorithm.setup(initialisation)
    with torch.no_grad():
        got = adapted.eval()(**{k: v for k, v in batch["query"].items() if k != "labels"}).logits
    assert torch.allclose(
        got, algorithm.predict(initialisation.eval(), batch["support"], batch["query"]), atol=1e-5
    )


def test_adapted_protonets_models_need_a_mean_pooled_head_and_say_so_before_training(
    tmp_path, tiny_checkpoint
):  # noqa: F811
    with pytest.raises(ValueError, match="embedded-multilingual"):
        cli(["--model_name_or_path", str(tiny_checkpoint), "--languages", "en", "--cap_per_intent", "20",
             "--algorithm", "protonets", "--adapted_episodes", "2", "--output_dir", str(tmp_path / "run")])  # fmt: skip
    assert not (tmp_path / "run").exists()  # refused before any training


def test_quickstart_config_ships_in_the_package_and_parses():
    from hf_metatransfer.cli_args import parse_args
    from hf_metatransfer.meta import MetaTrainingConfig
    from hf_metatransfer.recipes.finetune import ModelArguments
    from hf_metatransfer.recipes.meta_train import EpisodeArguments, language_split
    from hf_metatransfer.recipes.quickstart import CONFIG

    model, episodes, config = parse_args(
        (ModelArguments, EpisodeArguments, MetaTrainingConfig), ["--config", str(CONFIG)]
    )
    assert model.model_name_or_path == "embedded" and config.algorithm == "protonets"
    assert (episodes.n_way, episodes.k_shot) == (5, 5) and not config.push_to_hub
    held_out = set(episodes.validation_languages) | set(episodes.test_languages)
    assert episodes.test_languages and not held_out & set(language_split(episodes)["train"])
    assert set(episodes.baselines) == {"nearest-centroid", "linear-probe", "fine-tuning", "lp-ft"}


def test_held_out_languages_are_never_meta_trained_on_and_are_the_test_languages(tmp_path, tiny_checkpoint):  # noqa: F811
    from datasets import load_from_disk

    out = tmp_path / "run"
    cli([
        "--model_name_or_path", str(tiny_checkpoint), "--languages", "en", "de", "fr", "--validation_languages", "de",
        "--test_languages", "fr", "--mode", "monolingual", "--cap_per_intent", "20", "--n_way", "3", "--k_shot", "2",
        "--q_query", "2", "--algorithm", "protonets", "--meta_batch_size", "2", "--max_steps", "2", "--eval_steps", "1",
        "--eval_episodes", "2", "--save_steps", "0", "--test_episodes", "3", "--baselines", "nearest-centroid",
        "--output_dir", str(out), "--disable_tqdm", "true",
    ])  # fmt: skip
    episodes = load_from_disk(str(out / "test_episodes"))
    assert set(episodes["support_lang"]) == set(episodes["query_lang"]) == {"fr"}
    card = ModelCard.load(out / "README.md")
    assert (
        "| meta-training languages | en |" in card.text
        and "| evaluation languages (held out of meta-training) | fr |" in card.text
    )


def test_held_out_languages_need_a_validation_language_outside_them(tmp_path, tiny_checkpoint):  # noqa: F811
    import pytest

    common = [
        "--model_name_or_path",
        str(tiny_checkpoint),
        "--languages",
        "en",
        "fr",
        "--output_dir",
        str(tmp_path),
    ]
    with pytest.raises(ValueError, match="need validation_languages"):
        cli([*common, "--test_languages", "fr"])
    with pytest.raises(ValueError, match=r"\['de'\] are not in `languages`"):
        cli([*common, "--test_languages", "fr", "--validation_languages", "de"])


def test_meta_test_recipe_rescores_the_saved_episodes_exactly(tmp_path, tiny_checkpoint):  # noqa: F811
    from hf_metatransfer.recipes.meta_test import cli as meta_test_cli

    out = tmp_path / "run"
    data = ["--languages", "en", "--cap_per_intent", "20", "--n_way", "3", "--k_shot", "2", "--q_query", "2"]
    trained = cli([
        "--model_name_or_path", str(tiny_checkpoint), *data, "--algorithm", "protonets", "--meta_batch_size", "2",
        "--max_steps", "2", "--eval_steps", "0", "--save_steps", "0", "--test_episodes", "4",
        "--baselines", "nearest-centroid", "--output_dir", str(out), "--disable_tqdm", "true",
    ])  # fmt: skip
    retested = meta_test_cli([
        "--model_name_or_path", str(out), *data, "--algorithm", "protonets", "--episodes", str(out / "test_episodes"),
        "--baseline_model_name_or_path", str(tiny_checkpoint), "--baselines", "nearest-centroid",
        "--results_dir", str(tmp_path / "retest"),
    ])  # fmt: skip
    before = {r["method"].split(" (")[0]: r["per_episode"] for r in trained["meta_test"]}
    after = {r["method"].split(" (")[0]: r["per_episode"] for r in retested["meta_test"]}
    assert (
        after == before
    )  # the same episodes, the same meta-learned weights, the same baseline: the same scores
    assert (tmp_path / "retest" / "results.json").exists()


def test_same_seed_gives_bit_identical_weights(tmp_path, tiny_checkpoint):  # noqa: F811
    from safetensors.torch import load_file

    def run(name: str, seed: int) -> dict:
        cli(["--model_name_or_path", str(tiny_checkpoint), "--languages", "en", "--cap_per_intent", "20",
             "--n_way", "3", "--k_shot", "2", "--q_query", "2", "--algorithm", "fomaml", "--inner_steps", "1",
             "--meta_batch_size", "2", "--max_steps", "2", "--eval_steps", "0", "--save_steps", "0",
             "--test_episodes", "1", "--baselines", "nearest-centroid", "--seed", str(seed),
             "--output_dir", str(tmp_path / name), "--disable_tqdm", "true"])  # fmt: skip
        return load_file(tmp_path / name / "model.safetensors")

    a, b, other = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], other[n]) for n in a)


@pytest.mark.slow
def test_under_torchrun_the_recipe_prints_writes_and_pushes_once(hub, tmp_path, tiny_checkpoint):  # noqa: F811
    """Two ranks: one results table, one results.json, one push (the test Hub counts the commits)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_TOKEN": TOKEN,
           "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
    result = subprocess.run([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "recipes/meta_train.py", "--model_name_or_path", str(tiny_checkpoint), "--languages", "en",
        "--cap_per_intent", "20", "--n_way", "3", "--k_shot", "2", "--q_query", "2", "--algorithm", "fomaml",
        "--inner_steps", "1", "--meta_batch_size", "2", "--max_steps", "2", "--eval_steps", "0", "--save_steps", "0",
        "--test_episodes", "2", "--baselines", "nearest-centroid", "--output_dir", str(out), "--disable_tqdm", "true",
        "--push_to_hub", "--hub_model_id", "tester/meta-two-ranks",
    ], cwd=root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("| method | settings | accuracy") == 1, result.stdout
    assert (out / "results.json").exists()
    commits = [c.message for c in hub.repos[("model", "tester/meta-two-ranks")].commits.values()]
    assert len([m for m in commits if "hf-metatransfer" in m]) == 1, commits


def test_every_episode_option_is_checked_against_saved_episodes_or_named_as_not_data():
    """A new data option (as allow_variants was) must join the fingerprint meta-test checks, or saved episodes drawn
    under another value would be scored against other sentences without a word."""
    import dataclasses

    from hf_metatransfer.recipes.meta_test import DATA_OPTIONS, NOT_DATA_OPTIONS
    from hf_metatransfer.recipes.meta_train import EpisodeArguments

    fields = {f.name for f in dataclasses.fields(EpisodeArguments)}
    assert not set(DATA_OPTIONS) & set(NOT_DATA_OPTIONS)
    assert fields == set(DATA_OPTIONS) | set(NOT_DATA_OPTIONS)
