"""English -> X sentence pairs from gettext catalogues (``.mo`` files): the parallel text that packages ship.

A translated program carries one catalogue a language under ``.../locale/<lang>/LC_MESSAGES/<domain>.mo``, every
one translated from the same English messages. :func:`parallel_dataset` reads them into a
:class:`datasets.Dataset` with the columns ``source`` (English), ``target``, ``source_lang`` (``"en"``),
``target_lang`` (the locale name) and ``id`` (a hash of the English message, the same in every language, so that
X -> Y pairs are made by joining two languages on it), saved once and loaded from disk afterwards. Kept: the
singular of plural entries, the message without its ``msgctxt``, what ``keep`` accepts; skipped: the header, empty
and untranslated entries, and a message already seen in that language (catalogues in sorted path order, first wins).
"""

from __future__ import annotations

import difflib
import gettext
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from .cache import save_atomically

logger = logging.getLogger(__name__)

SOURCE_LANG = "en"
COLUMNS = ("source", "target", "source_lang", "target_lang", "id")


def find_catalogues(root: str | Path) -> dict[str, tuple[str, ...]]:
    """Language -> its ``.mo`` files anywhere below ``root`` (``<x>/locale/<lang>/LC_MESSAGES/*.mo``), sorted."""
    found: dict[str, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        parts = Path(dirpath).parts
        if len(parts) < 3 or parts[-1] != "LC_MESSAGES" or parts[-3] != "locale":
            continue
        found.setdefault(parts[-2], []).extend(
            os.path.join(dirpath, f) for f in filenames if f.endswith(".mo")
        )
    return {
        lang: tuple(sorted(paths, key=lambda p: os.path.relpath(p, root)))
        for lang, paths in found.items()
        if paths
    }


def message_id(source: str) -> str:
    """The stable id of an English message: the same in every language and release."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def read_language(paths: tuple[str, ...], keep: Callable[[str, str], bool] | None = None) -> dict[str, str]:
    """English message -> translation over one language's catalogues, in catalogue order (first wins)."""
    pairs: dict[str, str] = {}
    for path in paths:
        with open(path, "rb") as fh:
            catalog = gettext.GNUTranslations(fh)._catalog
        for src, tgt in catalog.items():
            if isinstance(src, tuple):  # plural forms: (msgid, n); keep the singular
                if src[1] != 0:
                    continue
                src = src[0]
            if "\x04" in src:  # "msgctxt\x04msgid"
                src = src.split("\x04", 1)[1]
            if src.strip() and tgt.strip() and src != tgt and (keep is None or keep(src, tgt)):
                pairs.setdefault(src, tgt)
    return pairs


def chosen_languages(languages: list[str] | str | None, available: list[str], corpus: str) -> list[str]:
    """The languages asked for, sorted; an unknown one is refused with the closest names on offer."""
    if languages is None:
        return available
    languages = [languages] if isinstance(languages, str) else list(languages)
    unknown = sorted({lang for lang in languages if lang not in available})
    if unknown:
        hints = []
        for lang in unknown:
            close = difflib.get_close_matches(lang, available, 1) or difflib.get_close_matches(
                lang.replace("-", "_"), available, 1
            )
            hints.append(f"{lang!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        source = " (English is the source language of every pair)" if SOURCE_LANG in unknown else ""
        raise ValueError(
            f"Unknown {corpus} language(s) {', '.join(hints)}{source}; available: {', '.join(available)}"
        )
    if not languages:
        raise ValueError("languages is empty; pass None for all languages")
    return sorted(set(languages))


def parallel_dataset(
    catalogues: Mapping[str, tuple[str, ...]],
    languages: list[str],
    cache_root: Path,
    version: str,
    key: Mapping[str, object],
    *,
    keep: Callable[[str, str], bool] | None = None,
    description: str = "Reading catalogues",
) -> datasets.Dataset:
    """The pairs of ``languages``, saved under ``cache_root`` keyed by ``key`` (what would change them) and loaded
    from there when a previous call saved them."""
    digest = hashlib.sha256(json.dumps({**key, "languages": languages}, sort_keys=True).encode()).hexdigest()[
        :16
    ]
    target = cache_root / f"{version}-{digest}"
    if (target / "state.json").is_file():
        logger.info("Loading the parallel dataset from cache %s", target)
        return datasets.load_from_disk(str(target))
    columns: dict[str, list[str]] = {name: [] for name in COLUMNS}
    progress = tqdm(languages, desc=description, unit="lang")
    for lang in progress:
        progress.set_postfix_str(lang)
        for src, tgt in read_language(catalogues[lang], keep).items():
            columns["source"].append(src)
            columns["target"].append(tgt)
            columns["source_lang"].append(SOURCE_LANG)
            columns["target_lang"].append(lang)
            columns["id"].append(message_id(src))
    features = datasets.Features({name: datasets.Value("string") for name in COLUMNS})
    return save_atomically(datasets.Dataset.from_dict(columns, features=features), target)


def default_cache_root(name: str) -> Path:
    hf_home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return Path(os.path.expanduser(hf_home)) / "hf_metatransfer" / name
