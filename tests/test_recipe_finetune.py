"""The finetune recipe end to end on a tiny model and local data files, from YAML and flags."""

import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.data import minilm_path
from hf_metatransfer.finetune import FineTuningConfig
from hf_metatransfer.recipes.finetune import DataArguments, ModelArguments, cli

WORDS = {"weather": ["sunny", "rain", "cloudy", "storm"], "music": ["song", "album", "play", "guitar"],
         "timer": ["minutes", "alarm", "seconds", "clock"]}  # fmt: skip


@pytest.fixture
def tiny_checkpoint(tmp_path):
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    cfg = T.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=64,
    )
    path = tmp_path / "tiny-bert"
    T.BertModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path):
    rows = [{"sentence": f"{w} {w2} now", "topic": topic} for topic, words in WORDS.items() for w in words
            for w2 in words]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_recipe_from_yaml_with_flag_override(tmp_path, tiny_checkpoint, data_file):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model_name_or_path: {tiny_checkpoint}\ndataset_name: json\ndata_files: [{data_file}]\n"
        "text_column: sentence\nlabel_column: topic\ntrain_examples_per_class: 8\nvalidation_examples_per_class: 2\n"
        f"output_dir: {tmp_path / 'out'}\nlp_ft: true\nlinear_probe: lstsq\nlayerwise_lr_decay: 0.5\n"
        "num_train_epochs: 1\nsave_strategy: 'no'\nuse_cpu: true\nreport_to: none\n"
    )
    results = cli(["--config", str(cfg), "--num_train_epochs", "2", "--disable_tqdm", "true"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"] == results and saved["strategies"]["layerwise_lr_decay"] == 0.5
    assert results["train_examples"] == 24 and results["test_examples"] == 48 - 24 - 6
    assert 0.0 <= results["linear_probe"]["test_accuracy"] <= 1.0
    model = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "music", 1: "timer", 2: "weather"}
    assert results["train_seconds"] > 0


def test_yaml_with_unknown_strategy_names_the_closest_option(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lpft: true\nlayerwise_decay: 0.9\n")
    with pytest.raises(
        SystemExit, match=r"'lpft' \(did you mean 'lp_ft'\?\).*'layerwise_decay' \(did you mean"
    ):
        parse_args((ModelArguments, DataArguments, FineTuningConfig), ["--config", str(cfg)])


def test_yaml_lists_and_bools_become_flags(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        "surgical_blocks: [first, -1]\ngradual_unfreezing: true\nlanguages: [de, fr]\n"
        f"output_dir: {tmp_path}\n"
    )
    _, data, config = parse_args((ModelArguments, DataArguments, FineTuningConfig), ["--config", str(cfg)])
    assert config.surgical_blocks == ["first", -1] and config.gradual_unfreezing is True
    assert data.languages == ["de", "fr"]


def test_missing_column_error(tmp_path, tiny_checkpoint, data_file):
    with pytest.raises(ValueError, match=r"Column 'text' is not in the dataset .*set --text_column"):
        cli(
            [
                "--model_name_or_path",
                str(tiny_checkpoint),
                "--dataset_name",
                "json",
                "--data_files",
                str(data_file),
                "--output_dir",
                str(tmp_path / "o"),
                "--label_column",
                "topic",
            ]
        )


def test_same_seed_gives_bit_identical_weights(tmp_path, tiny_checkpoint, data_file):
    """The head is built after set_seed: two runs with one seed save the same weights, another seed does not."""

    def run(name: str, seed: int) -> dict:
        cli(["--model_name_or_path", str(tiny_checkpoint), "--dataset_name", "json", "--data_files", str(data_file),
             "--text_column", "sentence", "--label_column", "topic", "--train_examples_per_class", "4",
             "--validation_examples_per_class", "1", "--num_train_epochs", "1", "--save_strategy", "no",
             "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--seed", str(seed),
             "--output_dir", str(tmp_path / name)])  # fmt: skip
        return load_file(tmp_path / name / "model.safetensors")

    first, second, other = run("a", 7), run("b", 7), run("c", 8)
    assert first.keys() == second.keys() == other.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    assert not all(torch.equal(first[k], other[k]) for k in first)
