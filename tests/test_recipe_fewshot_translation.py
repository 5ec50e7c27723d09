"""The few-shot translation recipe end to end on a tiny Llama: every method on the same tasks, card, push."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from hf_metatransfer.episodes import SplitLeakError
from hf_metatransfer.recipes.fewshot_translation import cli
from tests.hub_server import TOKEN, hub_fixture  # noqa: F401 - the fixture 'hub'
from tests.test_translation_models import char_tokenizer, parallel, tiny_llama


@pytest.fixture
def tiny_run(tmp_path):
    model_dir, data = tmp_path / "tiny-llama", tmp_path / "parallel.jsonl"
    tiny_llama().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    parallel(n=30, targets=("xx", "yy", "zz", "ww")).to_json(data)
    return model_dir, data


def test_recipe_scores_every_method_on_the_same_held_out_tasks_and_pushes(
    hub, tmp_path, tiny_run, monkeypatch
):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model_dir, data = tiny_run
    out = tmp_path / "run"
    summary = cli([
        "--model_name_or_path", str(model_dir), "--dataset_name", "json", "--data_files", str(data),
        "--test_languages", "ww", "zz", "--k_shots", "2", "4", "--q_query", "3", "--max_target_length", "12",
        "--max_length", "256", "--methods", "zero-shot", "in-context", "full", "lora", "meta-lora",
        "--adapt_steps", "2", "--algorithm", "reptile", "--inner_steps", "1", "--meta_batch_size", "2",
        "--meta_k_support", "2", "--meta_q_query", "2", "--max_steps", "2", "--save_steps", "0",
        "--output_dir", str(out), "--disable_tqdm", "true", "--push_to_hub", "--hub_model_id", "tester/translate-tiny",
    ])  # fmt: skip
    results = summary["results"]
    assert list(results) == ["zero-shot", "in-context", "full fine-tuning", "LoRA from the base model",
                             "LoRA from the meta-learned initialisation"]  # fmt: skip
    for by_k in results.values():
        assert set(by_k) == {"2", "4"}
        for r in by_k.values():  # one task a held-out language, in order, the same queries for every method
            assert [t["target_lang"] for t in r["per_task"]] == ["ww", "zz"]
            queries = [[e[0] for e in t["examples"]] for t in r["per_task"]]
            assert queries == [[e[0] for e in t["examples"]] for t in results["zero-shot"]["2"]["per_task"]]
    assert summary["meta_training"]["task_loss"] == "lm" and summary["meta_training_seconds"] > 0
    assert json.loads((out / "results.json").read_text())["results"].keys() == results.keys()

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "translation" and {"ww", "zz", "xx", "yy"} <= set(card.data.language)
    assert "reptile" in card.text.lower() and "LoRA from the meta-learned initialisation" in card.text
    # the no-model baselines sit beside the results, never in the model-index; the verdict follows the recorded one
    assert "| copy the source (no model) |" in card.text and "| shuffled reference (no model) |" in card.text
    assert not any("no model" in r.metric_name for r in card.data.eval_results)
    translates = any(
        v["translates"] for by_method in summary["verdicts"].values() for v in by_method.values()
    )
    assert ("**no setting above does**" in card.text) is not translates
    files = set(HfApi(endpoint=hub.url, token=TOKEN).list_repo_files("tester/translate-tiny"))
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json", "results.json"} <= files
    assert not any(f.startswith("checkpoint-") for f in files)


def test_recipe_refuses_a_held_out_language_it_also_meta_trains_on(tmp_path, tiny_run):
    model_dir, data = tiny_run
    with pytest.raises(SplitLeakError, match="zz"):
        cli(["--model_name_or_path", str(model_dir), "--dataset_name", "json", "--data_files", str(data),
             "--test_languages", "zz", "--train_languages", "xx", "zz", "--output_dir", str(tmp_path / "o")])  # fmt: skip


def test_translation_config_ships_and_parses():
    from pathlib import Path

    from hf_metatransfer.cli_args import parse_args
    from hf_metatransfer.meta import MetaTrainingConfig
    from hf_metatransfer.recipes.fewshot_translation import TranslationArguments

    config_path = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "fewshot_translation.yaml"
    args, config = parse_args((TranslationArguments, MetaTrainingConfig), ["--config", str(config_path)])
    assert args.model_name_or_path == "embedded-translator" and args.k_shots == [8, 32]
    assert config.algorithm == "fomaml" and "meta-lora" in args.methods


def test_same_seed_gives_bit_identical_adapter(tmp_path, tiny_run):
    """LoRA is initialised after set_seed: two runs with one seed save the same adapter, another seed does not."""
    model_dir, data = tiny_run

    def run(name: str, seed: int) -> dict:
        cli(["--model_name_or_path", str(model_dir), "--dataset_name", "json", "--data_files", str(data),
             "--test_languages", "ww", "--k_shots", "2", "--q_query", "2", "--max_target_length", "8",
             "--max_length", "256", "--methods", "meta-lora", "--adapt_steps", "1", "--algorithm", "reptile",
             "--inner_steps", "1", "--meta_batch_size", "2", "--meta_k_support", "2", "--meta_q_query", "2",
             "--max_steps", "2", "--save_steps", "0", "--seed", str(seed), "--output_dir", str(tmp_path / name),
             "--disable_tqdm", "true"])  # fmt: skip
        return load_file(tmp_path / name / "adapter_model.safetensors")

    first, second, other = run("a", 7), run("b", 7), run("c", 8)
    assert first.keys() == second.keys() == other.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    assert not all(torch.equal(first[k], other[k]) for k in first)
