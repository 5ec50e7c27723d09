"""The card of a meta-learned few-shot translation adapter: metadata, method from the fields, results, snippet."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_metatransfer.hub import Result, TranslationCardData, render_card, write_card
from hf_metatransfer.hub.plots import accuracy_vs_shots
from hf_metatransfer.translation import add_lora
from tests.test_translation_models import char_tokenizer, tiny_llama

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
SCORES = {  # (setting, K) -> (chrF, CI low, CI high)
    ("in-context", 1): (21.5, 19.25, 23.75),
    ("in-context", 8): (30.125, 27.5, 32.75),
    ("LoRA from the meta-learned initialisation", 1): (25.0, 22.5, 27.5),
    ("LoRA from the meta-learned initialisation", 8): (38.75, 36.0, 41.5),
}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def method_of(text: str) -> str:
    return text.split("## Method")[1].split("## Results")[0]


@pytest.fixture
def card() -> TranslationCardData:
    return TranslationCardData(
        model_id="tester/smollm2-fomaml-lora",
        base_model="HuggingFaceTB/SmolLM2-135M",
        algorithm="fomaml",
        source_language="en",
        train_languages=["de", "fr", "es"],
        test_languages=["sw", "de"],
        k_shots=[1, 8],
        q_query=12,
        inner_steps=3,
        inner_lr=5e-4,
        outer_lr=2e-4,
        meta_batch_size=4,
        meta_steps=500,
        lora_r=8,
        lora_alpha=16,
        adaptation_steps=30,
        adaptation_lr=3e-4,
        prompt_example="Translate from English to Swahili.\nEnglish: Good morning.\nSwahili:",
        results=[
            Result("chrf", mean, ci_low=low, ci_high=high, n=40, shots=k, setting=setting)
            for (setting, k), (mean, low, high) in SCORES.items()
        ],
        reproduce={"algorithm": "fomaml", "lora_r": 8},
    )


def test_card_metadata_parses_back_with_its_results(card, tmp_path):
    path = write_card(card, tmp_path)
    meta = ModelCard.load(path).data
    assert meta.pipeline_tag == "translation" and meta.library_name == "peft"
    assert meta.language == ["en", "de", "fr", "es", "sw"]
    assert {"hf-metatransfer", "meta-learning", "few-shot", "translation", "lora", "fomaml"} <= set(meta.tags)
    _, results = model_index_to_eval_results(meta.to_dict()["model-index"])
    assert [(r.metric_type, r.metric_value) for r in results] == [("chrf", v[0]) for v in SCORES.values()]
    assert results[1].metric_name == "chrf (en->X, 8-shot, in-context)"


def test_results_table_and_plot(card, tmp_path):
    text = write_card(card, tmp_path).read_text()
    assert "| in-context | 8 | chrf | 30.12 | [27.50, 32.75] | 40 |" in text
    assert "| LoRA from the meta-learned initialisation | 1 | chrf | 25.00 | [22.50, 27.50] | 40 |" in text
    assert "corpus-level over each task's query sentences" in text
    if HAS_MATPLOTLIB:
        assert "](chrf_vs_shots.png)" in text
        assert (tmp_path / "chrf_vs_shots.png").read_bytes().startswith(b"\x89PNG")


def test_method_is_written_from_the_fields(card):
    method = method_of(str(render_card(card)))
    assert "**First-order MAML**" in method and "3 steps at learning rate 0.0005" in method
    assert "| fast weights (adapted in the inner loop) | LoRA r=8, alpha=16 (base model frozen) |" in method
    assert "| held-out target languages | sw, de |" in method and "| K values evaluated | 1, 8 |" in method
    assert "| adaptation to a new pair | 30 AdamW steps, learning rate 0.0003" in method
    changed = method_of(str(render_card(replace(card, algorithm="Reptile", inner_steps=7, lora_r=32))))
    assert "**Reptile**" in changed and "7 inner steps" in changed and "LoRA r=32, alpha=16" in changed
    assert "First-order MAML" not in changed and "r=8," not in changed


def test_snippet_loads_the_adapter_and_shows_the_prompt(card):
    text = str(render_card(card))
    snippet = code_blocks(text, "python")[0]
    compile(snippet, "card snippet", "exec")
    assert 'PeftModel.from_pretrained(base, "tester/smollm2-fomaml-lora", is_trainable=True)' in snippet
    assert "AutoModelForCausalLM.from_pretrained(base_model)" in snippet
    assert "SupportFineTuning(steps=30, lr=0.0003)" in snippet and '"en", "sw")' in snippet
    assert code_blocks(text, "text") == [card.prompt_example + "\n"]
    seq2seq = code_blocks(
        str(render_card(replace(card, is_encoder_decoder=True, prompt_example=""))), "python"
    )
    assert "AutoModelForSeq2SeqLM.from_pretrained(base_model)" in seq2seq[0] and "CausalLM" not in seq2seq[0]


def test_empty_optional_fields_leave_no_none(tmp_path):
    text = write_card(TranslationCardData(model_id="tester/bare"), tmp_path).read_text()
    assert "None" not in text and "```text" not in text and "No evaluation was recorded" in text
    assert "| fast weights (adapted in the inner loop) | LoRA (base model frozen) |" in text
    assert "PeftConfig.from_pretrained" in text  # no base model given: the adapter's config names it
    assert ModelCard(text).data.language == ["en"]


def test_snippet_runs_on_a_saved_adapter(card, tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama().save_pretrained(base_dir)
    char_tokenizer().save_pretrained(base_dir)
    add_lora(tiny_llama(), r=2, alpha=4).save_pretrained(adapter_dir)
    local = replace(card, base_model=str(base_dir), model_id=str(adapter_dir), adaptation_steps=2)
    scope = {"sources": ["w1", "w2"], "targets": ["1w", "2w"]}
    exec(code_blocks(str(render_card(local)), "python")[0].replace("print(", "translations = ("), scope)
    assert len(scope["translations"]) == 1 and isinstance(scope["translations"][0], str)


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is optional")
def test_accuracy_vs_shots_takes_other_labels(tmp_path):
    path = tmp_path / "chrf.png"
    points = [("in-context", 1, 20.0, 18.0, 22.0), ("in-context", 8, 30.0, None, None)]
    assert accuracy_vs_shots(points, path, ylabel="chrF", xlabel="K support sentence pairs")
    assert path.read_bytes().startswith(b"\x89PNG")
