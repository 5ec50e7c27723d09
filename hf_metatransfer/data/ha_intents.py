"""A real multilingual intent-classification dataset that needs no network.

The pip package ``home-assistant-intents`` ships the sentence templates of the Home Assistant voice assistant:
the same ~40 intents (``HassTurnOn``, ``HassStartTimer``, ...) in 65 languages. :func:`load_ha_intents` expands
those templates with ``hassil`` into labelled rows and returns them as a :class:`datasets.Dataset` with the
columns ``text``, ``label``, ``intent`` and ``lang``.

Expansion is the slow part (a few seconds for one language, minutes for all of them), so the result is saved
to disk with :meth:`datasets.Dataset.save_to_disk`, keyed by a hash of the arguments and of the package versions,
and a second call with the same arguments only loads the Arrow files.

Slot placeholders such as ``{area}`` would otherwise leak the label (they alone predict the intent in about
half of 5-way episodes), so by default each placeholder is filled with a value drawn from the package's own
slot lists and number ranges; placeholders without values in the package (``{area}``, ``{name}``, wildcards
such as ``{timer_name}``) are removed.

Requires ``pip install home-assistant-intents hassil`` (or ``pip install hf-metatransfer[quickstart]``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

__all__ = ["load_ha_intents", "ha_intents_languages"]

from ..provenance import package_versions
from .cache import save_atomically

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "load_ha_intents needs the packages `home-assistant-intents` and `hassil`: "
    "pip install home-assistant-intents hassil (or pip install hf-metatransfer[quickstart])"
)
_SLOT_MODES = ("fill", "strip", "keep")
# Bump when the expansion logic changes so that old caches are not reused.
_CACHE_FORMAT = 1
# Most strings taken from one sentence template (some templates expand to millions of strings).
_MAX_PER_TEMPLATE = 3000
# Most strings kept as fill values for one slot list.
_MAX_SLOT_VALUES = 1000
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:،؟。、！？，：；])")
_SPACES = re.compile(r"\s+")


def _import_error(exc: ImportError) -> ImportError:
    return ImportError(f"{_INSTALL_HINT} ({exc})")


def _data_dir() -> Path:
    try:
        from importlib.resources import files

        import home_assistant_intents  # noqa: F401
    except ImportError as exc:
        raise _import_error(exc) from exc
    return Path(str(files("home_assistant_intents") / "data"))


def _require_hassil() -> None:
    try:
        import hassil.intents  # noqa: F401
        import hassil.sample  # noqa: F401
    except ImportError as exc:
        raise _import_error(exc) from exc


def ha_intents_languages() -> list[str]:
    """The language codes shipped by ``home-assistant-intents``, sorted (``"af"``, ..., ``"en"``, ...)."""
    return sorted(p.name.removesuffix(".json") for p in _data_dir().glob("*.json"))


@functools.lru_cache(maxsize=1)
def _all_intent_names(data_dir: str) -> tuple[str, ...]:
    """Sorted intent names over every language of the package: the label space, stable across subsets."""
    names: set[str] = set()
    for path in sorted(Path(data_dir).glob("*.json")):
        names.update(json.loads(path.read_text(encoding="utf-8")).get("intents", {}))
    return tuple(sorted(names))


@contextlib.contextmanager
def _quiet_hassil() -> Iterator[None]:
    """Silence hassil's warnings (missing values and the like) without touching global logging."""
    hassil_logger = logging.getLogger("hassil")
    level = hassil_logger.level
    hassil_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hassil_logger.setLevel(level)


def _format_number(x: float) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


def _slot_values(slot_lists: dict[str, Any], rules: dict[str, Any], lang: str) -> dict[str, list[str]]:
    """Surface strings a placeholder can be filled with, per slot list; lists without values are left out."""
    from hassil.intents import RangeSlotList, TextSlotList
    from hassil.sample import sample_expression

    values: dict[str, list[str]] = {}
    for name in sorted(slot_lists):
        slot_list = slot_lists[name]
        found: set[str] = set()
        if isinstance(slot_list, TextSlotList):
            for value in slot_list.values:
                gen = sample_expression(
                    value.text_in, slot_lists, rules, language=lang, expand_lists=False, expand_ranges=False
                )
                found.update(t.strip() for t in itertools.islice(gen, _MAX_SLOT_VALUES))
        elif isinstance(slot_list, RangeSlotList):
            numbers = itertools.islice(slot_list.get_numbers(), _MAX_SLOT_VALUES)
            found.update(_format_number(x) for x in numbers)
        # WildcardSlotList and anything else: no values in the package, the placeholder gets stripped.
        found.discard("")
        if found:
            values[name] = sorted(found)
    return values


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip()


def _strip_slots(text: str) -> str:
    return _tidy(_PLACEHOLDER.sub(" ", text))


def _fill_slots(text: str, values: dict[str, list[str]], rng: random.Random) -> str:
    def draw(match: re.Match[str]) -> str:
        choices = values.get(match.group(1))
        return rng.choice(choices) if choices else " "

    # Values may themselves contain placeholders (a list value that refers to another list): a few rounds.
    for _ in range(3):
        if "{" not in text:
            break
        text = _PLACEHOLDER.sub(draw, text)
    return _strip_slots(text)


def _expand_language(lang: str, cap_per_intent: int, slots: str, seed: int) -> list[dict[str, str]]:
    """Expand one language's templates into rows ``{"intent", "text"}``, at most ``cap_per_intent`` an intent.

    Every template string (up to ``_MAX_PER_TEMPLATE`` per sentence template) of an intent is collected,
    sorted and shuffled with ``random.Random(f"{seed}:{lang}:{intent}")``; strings are then transformed
    according to ``slots`` and kept, without duplicates, until ``cap_per_intent`` rows are reached.
    """
    from hassil.intents import Intents
    from hassil.sample import sample_expression

    path = _data_dir() / f"{lang}.json"
    rows: list[dict[str, str]] = []
    with _quiet_hassil():
        intents = Intents.from_dict(json.loads(path.read_text(encoding="utf-8")))
        for intent_name in sorted(intents.intents):
            templates: set[str] = set()
            intent_lists: dict[str, Any] = dict(intents.slot_lists)
            intent_rules: dict[str, Any] = dict(intents.expansion_rules)
            for data in intents.intents[intent_name].data:
                rules = {**intents.expansion_rules, **data.expansion_rules}
                lists = {**intents.slot_lists, **data.slot_lists}
                intent_lists.update(data.slot_lists)
                intent_rules.update(data.expansion_rules)
                for sentence in data.sentences:
                    gen = sample_expression(
                        sentence.expression,
                        lists,
                        rules,
                        language=lang,
                        expand_lists=False,
                        expand_ranges=False,
                    )
                    templates.update(t.strip() for t in itertools.islice(gen, _MAX_PER_TEMPLATE))
            ordered = sorted(templates)
            random.Random(f"{seed}:{lang}:{intent_name}").shuffle(ordered)

            fill_rng = random.Random(f"{seed}:{lang}:{intent_name}:fill")
            values = _slot_values(intent_lists, intent_rules, lang) if slots == "fill" else {}
            seen: set[str] = set()
            for template in ordered:
                if slots == "fill":
                    text = _fill_slots(template, values, fill_rng)
                elif slots == "strip":
                    text = _strip_slots(template)
                else:
                    text = template
                if not text or text in seen:
                    continue
                seen.add(text)
                rows.append({"intent": intent_name, "text": text})
                if len(seen) >= cap_per_intent:
                    break
    return rows


def _default_cache_root() -> Path:
    hf_home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return Path(os.path.expanduser(hf_home)) / "hf_metatransfer" / "ha_intents"


def _features(intent_names: tuple[str, ...]) -> datasets.Features:
    return datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(intent_names)),
            "intent": datasets.Value("string"),
            "lang": datasets.Value("string"),
        }
    )


def load_ha_intents(
    languages: list[str] | None = None,
    cap_per_intent: int = 200,
    slots: str = "fill",
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Multilingual intent classification rows from the templates of ``home-assistant-intents``.

    Args:
        languages: language codes as shipped by the package (see :func:`ha_intents_languages`); ``None``
            means all of them. Rows come sorted by language, then intent.
        cap_per_intent: at most this many distinct sentences per (language, intent).
        slots: what to do with slot placeholders such as ``{area}``: ``"fill"`` replaces each with a value
            drawn (seeded) from the package's slot lists or number ranges, and removes those without values;
            ``"strip"`` removes every placeholder and tidies whitespace; ``"keep"`` leaves them (they leak
            the label: use only to inspect the templates).
        seed: seeds which sentences are kept and the slot values; the result is the same on every machine
            for the same seed and package versions (one ``random.Random`` per language and intent).
        cache_dir: where the expanded dataset is saved; default ``$HF_HOME/hf_metatransfer/ha_intents``
            (``HF_HOME`` defaults to ``~/.cache/huggingface``).

    Returns:
        A :class:`datasets.Dataset` with the columns ``text`` (string), ``label`` (``ClassLabel`` over the
        sorted intent names of the whole package, so label ids agree across language subsets), ``intent``
        (string) and ``lang`` (string).

    Raises:
        ImportError: ``home-assistant-intents`` or ``hassil`` is not installed.
        ValueError: an unknown language code, an empty language list, a bad ``slots`` or ``cap_per_intent``.
    """
    data_dir = _data_dir()
    _require_hassil()
    available = ha_intents_languages()

    if slots not in _SLOT_MODES:
        raise ValueError(f"slots must be one of {_SLOT_MODES}, got {slots!r}")
    if isinstance(cap_per_intent, bool) or not isinstance(cap_per_intent, int) or cap_per_intent < 1:
        raise ValueError(f"cap_per_intent must be a positive integer, got {cap_per_intent!r}")
    if languages is None:
        langs = available
    else:
        if isinstance(languages, str):
            languages = [languages]
        unknown = sorted({lang for lang in languages if lang not in available})
        if unknown:
            raise ValueError(
                f"Unknown language code(s) {', '.join(map(repr, unknown))} for home-assistant-intents; "
                f"available: {', '.join(available)}"
            )
        langs = sorted(set(languages))
        if not langs:
            raise ValueError("languages is empty; pass None for all languages")

    key = {
        "format": _CACHE_FORMAT,
        "languages": langs,
        "cap_per_intent": cap_per_intent,
        "slots": slots,
        "seed": seed,
        # the versions of the data and its expander: a new release is new data (the digest is what it always was)
        **{
            name: found or "unknown"
            for name, found in package_versions(("home-assistant-intents", "hassil")).items()
            if name != "python"
        },
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    target = root / f"{key['home-assistant-intents']}-{digest}"
    if (target / "state.json").is_file():
        logger.info("Loading home-assistant-intents dataset from cache %s", target)
        return datasets.load_from_disk(str(target))

    intent_names = _all_intent_names(str(data_dir))
    columns: dict[str, list] = {"text": [], "label": [], "intent": [], "lang": []}
    label_of = {name: i for i, name in enumerate(intent_names)}
    progress = tqdm(langs, desc="Expanding home-assistant-intents", unit="lang")
    for lang in progress:
        progress.set_postfix_str(lang)
        for row in _expand_language(lang, cap_per_intent, slots, seed):
            columns["text"].append(row["text"])
            columns["label"].append(label_of[row["intent"]])
            columns["intent"].append(row["intent"])
            columns["lang"].append(lang)
    dataset = datasets.Dataset.from_dict(columns, features=_features(intent_names))

    return save_atomically(dataset, target)
