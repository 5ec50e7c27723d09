"""Model input conventions in one place: the text a model expects before each input, and how it pools.

Embedding models are trained with conventions that nothing in a checkpoint enforces (multilingual-e5 reads
``"query: "`` before every classification input, nomic-embed-text ``"classification: "``); a model used without
its prefix still runs, only worse, so forgetting it is silent. :func:`conventions_for` looks them up for a model,
tokenizer, config, folder or name: an explicit override wins, then what the model's folder or config records (so a
fine-tuned or meta-learned model carries its base's conventions), then a registry of name patterns.
:func:`tokenize_dataset <hf_metatransfer.episodes.tokenize_dataset>` and the recipes apply them, the recipes save
them beside the model (``input_conventions.json``) and the cards show them.

It is also the one resolver of the packaged offline checkpoints (``"embedded"``, ``"embedded-multilingual"``,
``"embedded-translator"``):
their folder, the Hub id they stand for and the class the recipes load them with (:func:`resolve_model`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .data.packaged_models import (
    GEMMA3_270M,
    MINILM,
    MULTILINGUAL_E5_SMALL,
    gemma3_270m_path,
    minilm_path,
    multilingual_e5_small_path,
)

#: The file beside a saved model's weights that records its conventions.
CONVENTIONS_FILE = "input_conventions.json"
#: The key of a model's config (and so of its ``config.json``) that carries them through ``save_pretrained``.
CONFIG_KEY = "input_conventions"

Pooling = Literal["mean", "cls", "last"]
_SAVED = ("prefix", "query_prefix", "passage_prefix", "pooling")


@dataclass(frozen=True)
class InputConventions:
    """How a model's inputs are written and its sentence embedding is read.

    ``prefix`` is the one classification and clustering inputs take, and the one :func:`tokenize_dataset
    <hf_metatransfer.episodes.tokenize_dataset>`, the recipes and the cards apply (e5 uses ``"query: "`` for
    these, as its model card says); ``query_prefix`` and ``passage_prefix`` are for retrieval queries and documents.
    ``source`` says where they came from; it is empty when nothing is known about the model (no prefix then).
    """

    prefix: str = ""
    query_prefix: str = ""
    passage_prefix: str = ""
    pooling: Pooling | None = None  # mean of the token states, the first ([CLS]) token, or the last token
    source: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in (None, "mean", "cls", "last"):
            raise ValueError(f"pooling={self.pooling!r} is unknown: use 'mean', 'cls', 'last' or None.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> InputConventions:
        return cls(**{name: values[name] for name in _SAVED if name in values}, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The saved record: without ``source``, which names local paths and is re-derived where it is read."""
        return {name: getattr(self, name) for name in _SAVED}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``input_conventions.json`` into ``folder`` (beside the weights), where lookups find it first."""
        path = Path(folder) / CONVENTIONS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def attach_to(self, model: Any) -> None:
        """Record them in ``model.config``, so that every ``save_pretrained`` or push of it carries them."""
        setattr(model.config, CONFIG_KEY, self.to_dict())


# Name patterns, matched in order (the first wins) against the model's name without its organisation, lowercase,
# "_" read as "-"; a fine-tuned model whose name keeps its base's ("you/multilingual-e5-small-intents") matches.
# The e5 *-instruct models are left out: their queries take a task instruction, not a fixed prefix.
_REGISTRY: tuple[tuple[str, str, InputConventions], ...] = (
    (
        "e5",
        r"(?!.*instruct)(multilingual-)?e5-(small|base|large)(-v2)?",
        InputConventions(
            prefix="query: ", query_prefix="query: ", passage_prefix="passage: ", pooling="mean"
        ),
    ),
    (
        "bge English",
        r"bge-(small|base|large)-en(-v1\.5)?",
        InputConventions(
            query_prefix="Represent this sentence for searching relevant passages: ", pooling="cls"
        ),
    ),
    (
        "bge Chinese",
        r"bge-(small|base|large)-zh(-v1\.5)?",
        InputConventions(query_prefix="为这个句子生成表示以用于检索相关文章：", pooling="cls"),
    ),
    ("bge-m3", r"bge-m3", InputConventions(pooling="cls")),
    ("gte v1.5", r"gte-(base|large)-en-v1\.5", InputConventions(pooling="cls")),
    ("gte", r"gte-(small|base|large)", InputConventions(pooling="mean")),
    (
        "nomic-embed-text",
        r"nomic-embed-text-v1(\.5)?",
        InputConventions(
            prefix="classification: ",
            query_prefix="search_query: ",
            passage_prefix="search_document: ",
            pooling="mean",
        ),
    ),
    (
        "sentence-transformers",
        r"all-(minilm-l6|minilm-l12|mpnet-base)-v[12]|paraphrase-(multilingual-)?"
        r"(minilm-l(3|6|12)|mpnet-base)-v2",
        InputConventions(pooling="mean"),
    ),
)


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint that arrives inside pip packages, under a short name that works offline."""

    hub_id: str  # the release it stands for: its conventions, and a card's base_model
    path: Callable[[], str]  # its local folder (the first call may build it)
    # The classifier class it needs; None: the caller's Auto class will do.
    model_class: Callable[[], type] | None = None


def _mean_pool_classifier() -> type:
    """The rebuilt e5 has no trained pooler for a stock classification head to read: its head reads the mean."""
    from .pooling import MeanPoolBertForSequenceClassification

    return MeanPoolBertForSequenceClassification


EMBEDDED = "embedded"
EMBEDDED_MULTILINGUAL = "embedded-multilingual"
EMBEDDED_TRANSLATOR = "embedded-translator"  # a causal LM: the translation recipe's default, not a classifier
PACKAGED_MODELS: dict[str, PackagedModel] = {
    EMBEDDED: PackagedModel(MINILM, minilm_path),
    EMBEDDED_MULTILINGUAL: PackagedModel(
        MULTILINGUAL_E5_SMALL, multilingual_e5_small_path, _mean_pool_classifier
    ),
    EMBEDDED_TRANSLATOR: PackagedModel(GEMMA3_270M, gemma3_270m_path),
}


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name means to the recipes: what to load, with which class, and its input conventions."""

    path: str
    model_class: type | None  # None: whichever Auto class the caller loads with
    conventions: InputConventions


def resolve_model(
    name_or_path: str, override: InputConventions | Mapping[str, Any] | None = None
) -> ResolvedModel:
    """A packaged name becomes its folder (and class, when it needs one); any other name or folder stays."""
    packaged = PACKAGED_MODELS.get(name_or_path)
    if packaged is None:
        return ResolvedModel(
            name_or_path, _saved_mean_pooled(name_or_path), conventions_for(name_or_path, override)
        )
    model_class = packaged.model_class() if packaged.model_class else None
    return ResolvedModel(packaged.path(), model_class, conventions_for(name_or_path, override))


def _saved_mean_pooled(folder: str) -> type | None:
    """A mean-pooled classifier saved before it had a model type of its own (``bert``) would load as a stock
    BERT with a random pooler: its ``architectures`` say what it is."""
    config = Path(folder) / "config.json"
    if config.is_file() and "MeanPoolBertForSequenceClassification" in json.loads(config.read_text()).get(
        "architectures", []
    ):
        return _mean_pool_classifier()
    return None


def conventions_for(
    model: Any, override: InputConventions | Mapping[str, Any] | None = None
) -> InputConventions:
    """The input conventions of ``model``: a model, tokenizer, config, folder, Hub id or packaged name.

    Looked up in order: ``override`` (whole conventions, or a mapping of the fields to change, e.g.
    ``{"prefix": ""}``), the record in a model's config, ``input_conventions.json`` or the ``config.json`` record of
    its folder, the packaged names, then the name patterns of the registry (e5, bge, gte, nomic-embed-text,
    sentence-transformers). Nothing found: no prefix, ``pooling=None`` and an empty ``source``.
    """
    found = _lookup(model)
    if override is None:
        return found
    if isinstance(override, InputConventions):
        return replace(override, source=override.source or "override")
    return replace(found, **override, source=f"override of {found.source or 'no known convention'}")


def saved_conventions(folder: str | os.PathLike) -> InputConventions | None:
    """What a model folder records: its ``input_conventions.json``, else the record in its ``config.json``."""
    path = Path(folder) / CONVENTIONS_FILE
    if path.is_file():
        return InputConventions.from_dict(json.loads(path.read_text(encoding="utf-8")), f"saved in {path}")
    config = Path(folder) / "config.json"
    if config.is_file():
        recorded = json.loads(config.read_text(encoding="utf-8")).get(CONFIG_KEY)
        if recorded:
            return InputConventions.from_dict(recorded, f"recorded in {config}")
    return None


def _lookup(model: Any) -> InputConventions:
    if isinstance(model, str | os.PathLike):
        name = os.fspath(model)
    else:
        recorded = getattr(getattr(model, "config", model), CONFIG_KEY, None)
        if recorded:
            return InputConventions.from_dict(recorded, "recorded in the model's config")
        config = getattr(model, "config", None)
        name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or ""
    packaged = PACKAGED_MODELS.get(name)
    if packaged is not None:
        return _by_name(packaged.hub_id, f"{name!r} (packaged {packaged.hub_id})")
    if name and os.path.isdir(name):
        saved = saved_conventions(name)
        if saved is not None:
            return saved
    return _by_name(name, repr(name))


def _by_name(name: str, described: str) -> InputConventions:
    short = Path(name.rstrip("/\\")).name.lower().replace("_", "-")
    for family, pattern, conventions in _REGISTRY:
        if re.fullmatch(rf"(.*-)?({pattern})(-.*)?", short):
            return replace(conventions, source=f"{family} convention, from the name {described}")
    return InputConventions()
