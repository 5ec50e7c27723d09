"""Base languages of language codes, so that splits keep a language's regional and script variants together.

A held-out ``es`` is not unseen when ``es_AR`` and ``es_MX`` are meta-trained on. Codes are compared by their base
language, read from the structure of BCP-47 tags (``pt-BR``, ``zh-Hant``, ``sr-Latn``) and POSIX locale names
(``es_AR``, ``zh_Hans``, ``sr@latin``): the part before the first ``-``, ``_`` or ``@``, lowercased. There is no
table of languages: ``nb``, ``nn`` and ``no`` stay three languages, 3-letter codes stay as they are (``fil``,
``eng_Latn`` -> ``eng``), and a 2-letter and a 3-letter code of one language (``es``, ``spa``) are not matched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["base_language", "language_groups", "language_key", "other_languages"]

_SEPARATORS = re.compile(r"[-_@]")


def base_language(code: str) -> str:
    """The base language of ``code``: ``es_AR``/``es-AR`` -> ``es``, ``zh-Hant`` -> ``zh``, ``sr@latin`` -> ``sr``."""
    if not isinstance(code, str):
        raise TypeError(f"A language code is a string, got {type(code).__name__} {code!r}.")
    base = _SEPARATORS.split(code.strip(), maxsplit=1)[0].lower()
    if not base:
        raise ValueError(
            f"Language code {code!r} has no base language: it must start with one, as in 'es' or 'es_AR'."
        )
    return base


def language_key(code: str, allow_variants: Sequence[str] = ()) -> tuple[str, str]:
    """What splits compare: ``(base, "")``, or ``(base, code)`` for a code of ``allow_variants``, which the user
    asked to treat as a language of its own (equal to itself only)."""
    return base_language(code), code if code in allow_variants else ""


def language_groups(codes: Iterable[str], allow_variants: Sequence[str] = ()) -> list[list[str]]:
    """``codes`` grouped by :func:`language_key` (groups and codes in order of first appearance)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for code in codes:
        groups.setdefault(language_key(code, allow_variants), []).append(code)
    return list(groups.values())


def other_languages(
    codes: Iterable[str], held_out: Iterable[str], allow_variants: Sequence[str] = ()
) -> list[str]:
    """The ``codes`` whose language is not held out (compared by :func:`language_key`), in order: what is left to
    meta-train on. ``other_languages(["de", "es", "es_AR"], ["es"]) == ["de"]``."""
    excluded = {language_key(code, allow_variants) for code in held_out}
    return [code for code in codes if language_key(code, allow_variants) not in excluded]
