"""A real many-language parallel corpus that needs no network: the translations Django ships.

The pip package ``django`` carries gettext catalogues (``.mo`` files) of its user-interface strings in about 100
languages, all translated from the same English messages. :func:`load_django_parallel` reads them (nothing of
Django runs) into a :class:`datasets.Dataset` of English -> X pairs with the columns ``source`` (English),
``target``, ``source_lang`` (``"en"``), ``target_lang`` (Django's locale name: ``"de"``, ``"pt_BR"``,
``"zh_Hans"``...) and ``id``, a hash of the English message: the same in every language, so X -> Y pairs are
made by joining two languages on ``id`` (see ``hf_metatransfer.episodes.TranslationTaskSampler(pivot=True)``).

Kept, as in ``shared/assets/django_parallel.py``: the singular of plural entries, the message without its
``msgctxt``; skipped: the catalogue header, empty and untranslated entries (translation equal to the English),
and a message already seen in that language (catalogues are read in sorted path order, first one wins).
``%(name)s`` placeholders stay as they are. Short UI strings: about 600-800 pairs a language.

The result is saved with :meth:`datasets.Dataset.save_to_disk`, keyed by the languages and Django's version, so a
second call only loads the Arrow files. Requires ``pip install django``.
"""

from __future__ import annotations

import difflib
import functools
import gettext
import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
from tqdm.auto import tqdm

__all__ = ["django_languages", "load_django_parallel"]

from .cache import save_atomically

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "load_django_parallel reads the translation catalogues of the package `django`: pip install django"
)
# Bump when the extraction logic changes so that old caches are not reused.
_CACHE_FORMAT = 1
SOURCE_LANG = "en"
COLUMNS = ("source", "target", "source_lang", "target_lang", "id")


def _django() -> tuple[Path, str]:
    """Django's package folder and version; a clear ImportError without it."""
    try:
        import django
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return Path(django.__file__).parent, str(django.__version__)


@functools.lru_cache(maxsize=4)
def _catalogues(root: str) -> dict[str, tuple[str, ...]]:
    """Language -> its ``.mo`` files (``<app>/locale/<lang>/LC_MESSAGES/*.mo``), paths sorted."""
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


def django_languages() -> list[str]:
    """Target languages of the installed Django (locale names, sorted); English, the source, is left out.

    A few English variants (``en_AU``, ``en_GB``) have almost no pairs: they seldom differ from the source.
    """
    root, _ = _django()
    return sorted(lang for lang in _catalogues(str(root)) if lang != SOURCE_LANG)


def message_id(source: str) -> str:
    """The stable id of an English message: the same in every language and Django version."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def _read_language(paths: tuple[str, ...]) -> dict[str, str]:
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
            if src.strip() and tgt.strip() and src != tgt:
                pairs.setdefault(src, tgt)
    return pairs


def _default_cache_root() -> Path:
    hf_home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return Path(os.path.expanduser(hf_home)) / "hf_metatransfer" / "django_parallel"


def _features() -> datasets.Features:
    return datasets.Features({name: datasets.Value("string") for name in COLUMNS})


def load_django_parallel(
    languages: list[str] | str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """English -> X pairs of Django's translated UI strings.

    Args:
        languages: Django locale names (see :func:`django_languages`); ``None`` means all of them.
        cache_dir: where the dataset is saved; default ``$HF_HOME/hf_metatransfer/django_parallel``.

    Returns:
        A :class:`datasets.Dataset` with string columns ``source``, ``target``, ``source_lang`` (``"en"``),
        ``target_lang`` and ``id`` (:func:`message_id` of the English message). Rows are sorted by target
        language, then in catalogue order; the same on every machine for the same Django version.

    Raises:
        ImportError: ``django`` is not installed.
        ValueError: an unknown or empty list of languages.
    """
    root, version = _django()
    catalogues = _catalogues(str(root))
    available = django_languages()
    if languages is None:
        langs = available
    else:
        if isinstance(languages, str):
            languages = [languages]
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
                f"Unknown Django language(s) {', '.join(hints)}{source}; available: {', '.join(available)}"
            )
        langs = sorted(set(languages))
        if not langs:
            raise ValueError("languages is empty; pass None for all languages")

    key = {"format": _CACHE_FORMAT, "languages": langs, "django": version}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    cache_root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    target = cache_root / f"{version}-{digest}"
    if (target / "state.json").is_file():
        logger.info("Loading Django parallel dataset from cache %s", target)
        return datasets.load_from_disk(str(target))

    columns: dict[str, list[str]] = {name: [] for name in COLUMNS}
    progress = tqdm(langs, desc="Reading Django catalogues", unit="lang")
    for lang in progress:
        progress.set_postfix_str(lang)
        for src, tgt in _read_language(catalogues[lang]).items():
            columns["source"].append(src)
            columns["target"].append(tgt)
            columns["source_lang"].append(SOURCE_LANG)
            columns["target_lang"].append(lang)
            columns["id"].append(message_id(src))
    dataset = datasets.Dataset.from_dict(columns, features=_features())

    return save_atomically(dataset, target)
