"""Model cards: sections written from the real configuration, metadata that huggingface_hub parses and validates."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict

import pytest
import torch
import transformers as T
import yaml
from datasets import Dataset
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_metatransfer.data.packaged_models import MINILM
from hf_metatransfer.finetune import FineTuningConfig
from hf_metatransfer.hub import (
    FineTunedCardData,
    MetaLearnedCardData,
    ModelCardCallback,
    Result,
    fine_tuned_card_from_results,
    render_card,
    write_card,
)
from hf_metatransfer.metrics import compute_metrics_fn
from tests.hub_server import hub_fixture  # noqa: F401 - the fixture 'hub'


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def strategy_of(config: FineTuningConfig) -> dict:
    return {name: getattr(config, name) for name in FineTuningConfig.strategy_fields()}


@pytest.fixture
def fine_tuned(tmp_path) -> FineTunedCardData:
    config = FineTuningConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        learning_rate=3e-5,
        lp_ft=True,
        linear_probe="logistic",
        layerwise_lr_decay=0.8,
        gradual_unfreezing=True,
        unfreeze_interval_steps=50,
        surgical_blocks=["last"],
        auto_rgn=True,
        reinit_head=True,
        reinit_top_k_blocks=2,
    )
    return FineTunedCardData(
        model_id="tester/minilm-intents",
        base_model=MINILM,
        datasets=["tester/intents"],
        language=["en", "de"],
        results=[
            Result.binomial("accuracy", 0.9, 2000),
            Result("f1", 0.88, setting="macro"),
            Result("loss", 0.3),
        ],
        strategy=strategy_of(config),
        training={"learning_rate": config.learning_rate, "num_train_epochs": 3},
        labels=["lights_on", "play_music"],
        linear_probe={"C": 0.1, "num_examples": 32, "train_accuracy": 1.0, "seconds": 0.4},
        reproduce={"lp_ft": True, "layerwise_lr_decay": 0.8},
        log_history=[
            {"loss": 1.0, "step": 1},
            {"loss": 0.6, "step": 2},
            {"eval_loss": 0.7, "eval_accuracy": 0.8, "step": 2},
        ],
    )


def test_fine_tuned_card_writes_its_method_from_the_config(fine_tuned, tmp_path):
    text = write_card(fine_tuned, tmp_path / "card").read_text()
    method = text.split("## Method")[1].split("## Results")[0]
    for phrase in (
        "**LP-FT**",
        "L-BFGS logistic regression",
        "C = 0.1",
        "3e-05 x 0.8^(distance from the top)",
        "**Gradual unfreezing**",
        "every 50 steps",
        "**Surgical fine-tuning**",
        "only block last and the head",
        "**Auto-RGN**",
        "**Re-initialisation**",
        "the head and the top 2 blocks",
    ):
        assert phrase in method, phrase
    assert "Slanted triangular" not in method  # off in this config
    assert "| test | accuracy | 0.9000 | [0.8861, 0.9124] | 2000 |" in text
    assert "![Learning curve" in text and (tmp_path / "card" / "learning_curve.png").stat().st_size > 1000
    assert yaml.safe_load(code_blocks(text, "yaml")[0]) == fine_tuned.reproduce
    for snippet in code_blocks(text, "python"):
        compile(snippet, "card snippet", "exec")
    assert "layerwise_lr_decay=0.8" in text and 'from_pretrained(\n    "tester/minilm-intents"' in text


def test_fine_tuned_card_metadata_round_trips_through_huggingface_hub(fine_tuned):
    card = ModelCard(str(render_card(fine_tuned)))
    data = card.data
    assert data.base_model == MINILM and data.language == ["en", "de"] and data.datasets == ["tester/intents"]
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == "text-classification"
    assert data.tags[:3] == ["hf-metatransfer", "fine-tuned", "lp-ft"] and "auto-rgn" in data.tags
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "tester/minilm-intents"
    assert {(r.metric_type, r.metric_value, r.dataset_split) for r in results} == {
        ("accuracy", 0.9, "test"),
        ("f1", 0.88, "test"),
    }


def test_plain_fine_tuning_without_results_or_matplotlib(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib(.figure) -> ImportError
    data = FineTunedCardData(
        model_id="tester/plain",
        strategy=strategy_of(FineTuningConfig(output_dir=str(tmp_path))),
        log_history=[{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}],
    )
    text = write_card(data, tmp_path).read_text()
    assert "Plain full fine-tuning" in text and "LP-FT" not in text and "No evaluation was recorded" in text
    assert "![" not in text and not (tmp_path / "learning_curve.png").exists()
    assert "model-index" not in text and ModelCard(text).data.tags == ["hf-metatransfer", "fine-tuned"]


@pytest.mark.parametrize("algorithm", ["MAML", "ANIL", "ProtoNets"])
def test_meta_learned_card(tmp_path, algorithm):
    one, five = [0.5, 0.6, 0.55, 0.65], [0.8, 0.85, 0.75, 0.8]
    data = MetaLearnedCardData(
        model_id="tester/meta-intents",
        base_model=MINILM,
        algorithm=algorithm,
        n_way=5,
        k_shot=1,
        q_query=10,
        inner_steps=3,
        inner_lr=0.05,
        outer_lr=2e-5,
        meta_batch_size=4,
        meta_steps=1000,
        first_order=True,
        fast_weights="head" if algorithm == "ANIL" else "all",
        language_split=True,
        train_languages=["en", "de"],
        test_languages=["fr"],
        train_classes=["HassTurnOn", "HassTurnOff"],
        test_classes=["HassStartTimer"],
        episodes_repo="tester/meta-intents-episodes",
        adapted=["fr-timers"],
        results=[
            Result.from_episodes("accuracy", one, shots=1, setting="fr"),
            Result.from_episodes("accuracy", five, shots=5, setting="fr"),
        ],
        reproduce={"algorithm": algorithm, "n_way": 5},
    )
    text = write_card(data, tmp_path).read_text()
    assert "5-way (N), 1-shot (K), 10 query examples a class (Q)" in text
    assert "| meta-training languages | en, de |" in text
    assert "| evaluation languages (held out of meta-training) | fr |" in text
    assert "| evaluation classes (disjoint) | 1: HassStartTimer |" in text
    half = 3.1824463 * torch.tensor(one).std().item() / math.sqrt(4)  # t(0.975, 3)
    assert f"[{0.575 - half:.4f}, {0.575 + half:.4f}]" in text
    assert "![Accuracy against the number of shots" in text and (tmp_path / "accuracy_vs_shots.png").is_file()
    assert 'subfolder="adapted/fr-timers"' in text
    if algorithm == "ProtoNets":
        assert "There is no inner loop" in text and "prototypes" in text
    else:
        assert "3 steps, learning rate 0.05" in text and "range(3)" in text
    for snippet in code_blocks(text, "python"):
        compile(snippet, "card snippet", "exec")
    meta = ModelCard(text).data
    assert meta.language == ["en", "de", "fr"] and meta.datasets == ["tester/meta-intents-episodes"]
    assert {"meta-learning", "few-shot", algorithm.lower()} <= set(meta.tags)
    _, results = model_index_to_eval_results(meta.to_dict()["model-index"])
    assert [r.metric_name for r in results] == ["accuracy (5-way 1-shot, fr)", "accuracy (5-way 5-shot, fr)"]


def test_card_metadata_passes_the_hub_validation(hub, fine_tuned):
    meta = MetaLearnedCardData(
        model_id="tester/m", results=[Result("accuracy", 0.5, shots=1)], language=["fr"]
    )
    for data in (fine_tuned, meta):
        render_card(data).validate()  # POSTs to the Hub's /api/validate-yaml
    broken = ModelCard(str(render_card(fine_tuned)).replace("- en\n", "- English please\n", 1))
    with pytest.raises(ValueError, match="ISO 639"):
        broken.validate()


def test_card_from_the_finetune_recipe_results():
    saved = {
        "results": {
            "model": "embedded",
            "dataset": "ha_intents",
            "train_examples": 592,
            "test_examples": 500,
            "train_seconds": 60.0,
            "test_accuracy": 0.8,
            "test_f1": 0.75,
            "linear_probe": {
                "C": 1.0,
                "seconds": 1.0,
                "train_accuracy": 1.0,
                "num_examples": 592,
                "test_accuracy": 0.7,
            },
        },
        "strategies": strategy_of(FineTuningConfig(output_dir="unused", lp_ft=True, linear_probe="logistic")),
    }
    data = fine_tuned_card_from_results(saved, "tester/x", language=["en"])
    assert data.base_model == MINILM and data.datasets == [] and data.dataset_name == "home-assistant-intents"
    rows = {(r.metric, r.setting): r for r in data.results}
    low, high = rows[("accuracy", "")].ci_low, rows[("accuracy", "")].ci_high
    assert 0.76 < low < 0.8 < high < 0.84 and rows[("accuracy", "after the linear probe (LP)")].n == 500
    assert data.reproduce == {
        "model_name_or_path": "embedded",
        "dataset_name": "ha_intents",
        "lp_ft": True,
        "linear_probe": "logistic",
    }


def test_intervals():
    wilson = Result.binomial("accuracy", 0.5, 100)
    assert (round(wilson.ci_low, 4), round(wilson.ci_high, 4)) == (0.4038, 0.5962)
    assert Result.binomial("accuracy", 1.0, 24).ci_high == 1.0
    episodes = Result.from_episodes("accuracy", [0.4, 0.6])
    assert episodes.value == pytest.approx(0.5) and episodes.ci_high - 0.5 == pytest.approx(
        12.7062047 * 0.1414214 / 2**0.5
    )
    assert asdict(Result.from_episodes("accuracy", [0.7]))["ci_low"] == 0.7


def test_callback_keeps_the_card_in_output_dir_current(tmp_path):
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(
        T.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=20,
            num_labels=2,
        )
    )
    ids = torch.randint(5, 64, (16, 6), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    args = T.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    trainer = T.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        compute_metrics=compute_metrics_fn(["accuracy"]),
    )
    trainer.add_callback(ModelCardCallback(trainer, language=["en"], dataset_name="toy intents"))
    trainer.train()
    text = (tmp_path / "out" / "README.md").read_text()
    assert (
        "on toy intents" in text and "Plain full fine-tuning" in text and "| validation | accuracy |" in text
    )
    reproduce = yaml.safe_load(code_blocks(text, "yaml")[0])
    assert (
        reproduce["learning_rate"] == 0.001
        and reproduce["num_train_epochs"] == 2
        and "output_dir" not in reproduce
    )
    assert (tmp_path / "out" / "learning_curve.png").is_file()
    assert ModelCard(text).data.eval_results[0].dataset_split == "validation"


def test_protonets_card_snippet_embeds_with_the_learned_projection(hub, tmp_path):
    """The card's code, run against the pushed repo, embeds exactly as the meta-learned ProtoNets does."""
    from safetensors.torch import save_file

    from hf_metatransfer.data import minilm_path
    from hf_metatransfer.hub import push_folder
    from hf_metatransfer.meta import ProtoNets
    from hf_metatransfer.meta.trainer import ALGORITHM_STATE
    from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification
    from tests.hub_server import TOKEN

    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=20, num_labels=3)  # fmt: skip
    model = MeanPoolBertForSequenceClassification(config).eval()
    algorithm = ProtoNets(projection_dim=4)
    algorithm.setup(model)
    with torch.no_grad():
        algorithm.projection.weight.normal_()
        algorithm.projection.bias.normal_()
    folder = tmp_path / "protonets"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in algorithm.state_dict().items()}, str(folder / ALGORITHM_STATE))
    data = MetaLearnedCardData(model_id="tester/protonets", algorithm="ProtoNets", n_way=3, k_shot=2,
                               projection_dim=4, adapted=["lights"])  # fmt: skip
    text = write_card(data, folder).read_text()
    assert (
        "learned linear projection to 4 dimensions" in text
        and "trust_remote_code=True" in text  # the adapted model's head: custom code in the repo
    )
    push_folder(folder, "tester/protonets", token=TOKEN, endpoint=hub.url)

    texts = [
        "turn on the light",
        "lights on please",
        "what time is it",
        "tell me the time",
        "play music",
        "a song",
    ]
    queries = ["switch the lamp on", "current time?"]
    scope = {"texts": texts, "label_ids": [0, 0, 1, 1, 2, 2]}
    exec(code_blocks(text, "python")[0].replace('["a new sentence"]', str(queries)), scope)
    batch = dict(tokenizer(queries, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = algorithm.embed(model, algorithm.weights(model), batch)
    assert scope["embed"](queries).shape == (2, 4)
    assert torch.allclose(scope["embed"](queries), expected, atol=1e-5)
