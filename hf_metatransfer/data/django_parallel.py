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

import functools
from pathlib import Path

import datasets

from .gettext_catalogues import (
    SOURCE_LANG,
    chosen_languages,
    default_cache_root,
    find_catalogues,
    parallel_dataset,
)

__all__ = ["django_languages", "load_django_parallel"]

_INSTALL_HINT = (
    "load_django_parallel reads the translation catalogues of the package `django`: pip install django"
)
# Bump when the extraction logic changes so that old caches are not reused.
_CACHE_FORMAT = 1


def _django() -> tuple[Path, str]:
    """Django's package folder and version; a clear ImportError without it."""
    try:
        import django
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return Path(django.__file__).parent, str(django.__version__)


@functools.lru_cache(maxsize=4)
def _catalogues(root: str) -> dict[str, tuple[str, ...]]:
    return find_catalogues(root)


def django_languages() -> list[str]:
    """Target languages of the installed Django (locale names, sorted); English, the source, is left out.

    A few English variants (``en_AU``, ``en_GB``) have almost no pairs: they seldom differ from the source.
    """
    root, _ = _django()
    return sorted(lang for lang in _catalogues(str(root)) if lang != SOURCE_LANG)


def load_django_parallel(
    languages: list[str] | str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """English -> X pairs of Django's translated UI strings.

    Args:
        languages: Django locale names (see :func:`django_languages`); ``None`` means all of them.
        cache_dir: where the dataset is saved; default ``$HF_HOME/hf_metatransfer/django_parallel``.

    Returns:
        A :class:`datasets.Dataset` with string columns ``source``, ``target``, ``source_lang`` (``"en"``),
        ``target_lang`` and ``id`` (the hash of the English message). Rows are sorted by target language, then in
        catalogue order; the same on every machine for the same Django version.

    Raises:
        ImportError: ``django`` is not installed.
        ValueError: an unknown or empty list of languages.
    """
    root, version = _django()
    langs = chosen_languages(languages, django_languages(), "Django")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root("django_parallel")
    return parallel_dataset(_catalogues(str(root)), langs, cache_root, version,
                            {"format": _CACHE_FORMAT, "django": version}, description="Reading Django catalogues")  # fmt: skip
