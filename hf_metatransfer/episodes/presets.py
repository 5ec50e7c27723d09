"""Ready task collections: a dataset indexed once, class-disjoint (and language-disjoint) meta-splits, samplers.

>>> tasks = ha_intents_tasks(languages=["en", "de", "fr"], language_split={"train": ["en", "de"], "test": ["fr"]},
...                          class_ratios=(0.7, 0.3), split_names=("train", "test"))
>>> train = tasks.sampler("train", n_way=5, k_shot=5, q_query=15, mode="monolingual")
>>> test = tasks.sampler("test", 5, 1, 15, mode="monolingual", seed=1)

A :class:`TaskCollection` holds the :class:`EpisodeBuilder` (``tasks.dataset`` is the dataset that episode rows
refer to), the class :class:`Splits` and, when asked, the language :class:`Splits`. ``sampler(split, ...)`` gives an
:class:`EpisodeSampler` over an index restricted to that split's classes (and languages): rows of other splits are
not in it at all, so a meta-test class or language cannot reach meta-training whatever the mode (mode
``"classes"`` pools the split's languages). The restriction is checked every time a sampler is made.

Presets:

* :func:`ha_intents_tasks`: the Home Assistant intents (``load_ha_intents``: 65 languages, ~40 intents, no network).
* :func:`massive_style_tasks`: a MASSIVE-style dataset (``utt`` text, ``intent`` label, ``locale`` such as
  ``"de-DE"``), from a ``Dataset`` / ``DatasetDict`` / dict of splits, or from the Hub
  (``load_dataset("AmazonScience/massive", "all")``) when none is given. The example splits
  (train / validation / test) are concatenated by default: meta-splits are over classes and languages.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from .builder import EpisodeBuilder
from .index import GroupIndex
from .sampler import EpisodeSampler, IntOrRange
from .splits import SplitLeakError, Splits

SPLIT_NAMES = ("train", "validation", "test")
MASSIVE_HUB_ID = "AmazonScience/massive"
LanguageSplit = Mapping[str, Sequence[str]] | Sequence[float] | None


@dataclass
class TaskCollection:
    """An indexed dataset with class-disjoint (and optionally language-disjoint) meta-train/val/test splits.

    ``classes`` holds label ids per split (``class_names(split)`` gives their names); ``languages`` holds language
    names per split, or is ``None`` when every split uses every language. Episode rows are row numbers of
    ``dataset`` (``builder.texts(episode)`` gives the sentences).
    """

    builder: EpisodeBuilder
    classes: Splits
    languages: Splits | None = None
    name: str = ""
    _indexes: dict[tuple[str, bool], GroupIndex] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check()

    # -- names ---------------------------------------------------------------------------------------------
    @property
    def dataset(self) -> datasets.Dataset:
        return self.builder.dataset

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.classes.parts)

    def class_ids(self, split: str) -> list[int]:
        return list(self.classes[self._split(split)])

    def class_names(self, split: str) -> list[str]:
        return [self.builder.label_names[c] for c in self.class_ids(split)]

    def languages_of(self, split: str) -> list[str]:
        """The split's languages: its language split, or every language of the dataset without one."""
        self._split(split)
        return list(self.languages[split]) if self.languages is not None else list(self.builder.languages)

    def _split(self, split: str) -> str:
        if split not in self.classes.parts:
            raise ValueError(f"Unknown split {split!r}: this collection has {list(self.split_names)}.")
        if self.languages is not None and split not in self.languages.parts:
            raise ValueError(
                f"Split {split!r} has classes but no languages: the language split has {list(self.languages.parts)}."
            )
        return split

    # -- checks --------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail with :class:`SplitLeakError` unless classes (and languages, by base language) are disjoint across
        splits."""
        self.classes.check()
        if self.classes.kind != "class":
            raise ValueError(f"classes must be a class Splits, got kind={self.classes.kind!r}.")
        if self.languages is not None:
            self.languages.check()
            unknown = sorted(
                {x for v in self.languages.parts.values() for x in v} - set(self.builder.languages)
            )
            if unknown:
                raise ValueError(f"Languages {unknown} of the language split are not in the dataset.")
            missing = [s for s in self.languages.parts if s not in self.classes.parts]
            if missing:
                raise ValueError(
                    f"Language splits {missing} have no class split: class splits are {list(self.classes.parts)}."
                )

    def _check_index(self, split: str, index: GroupIndex) -> None:
        leaked = sorted(set(index.group_label.tolist()) - set(self.class_ids(split)))
        if leaked:
            names = [self.builder.label_names[c] for c in leaked]
            raise SplitLeakError(f"Classes {names} outside split {split!r} reached its index.")
        if self.languages is not None and len(index.lang_names) > 1:
            langs = {index.lang_names[g] for g in set(index.group_lang.tolist())}
            outside = sorted(langs - set(self.languages[split]))
            if outside:
                raise SplitLeakError(f"Languages {outside} outside split {split!r} reached its index.")

    # -- samplers ------------------------------------------------------------------------------------------
    def index(self, split: str, by_language: bool = True) -> GroupIndex:
        """The index of the split's rows only (cached): its classes, in its languages; row numbers of ``dataset``.

        ``by_language=False`` groups by label alone (pooling the split's languages), for mode ``"classes"``.
        """
        key = (self._split(split), by_language)
        if key not in self._indexes:
            full = self.builder.index
            keep = np.isin(full.group_label, np.asarray(self.class_ids(split), dtype=np.int64))
            if self.languages is not None:
                lang_id = {name: i for i, name in enumerate(full.lang_names)}
                keep &= np.isin(
                    full.group_lang, np.asarray([lang_id[x] for x in self.languages[split]], np.int64)
                )
            groups = np.flatnonzero(keep)
            counts = full.counts[groups]
            rows = (np.concatenate([full.order[full.offsets[g] : full.offsets[g + 1]] for g in groups])
                    if len(groups) else np.empty(0, np.int64))  # fmt: skip
            labels = np.repeat(full.group_label[groups], counts)
            if by_language and self.builder.lang_column:
                sub = GroupIndex.build(labels, full.label_names, np.repeat(full.group_lang[groups], counts),
                                       full.lang_names)  # fmt: skip
            else:
                sub = GroupIndex.build(labels, full.label_names)
            self._indexes[key] = dataclasses.replace(sub, order=rows[sub.order])
        index = self._indexes[key]
        self._check_index(split, index)
        return index

    def sampler(
        self,
        split: str,
        n_way: IntOrRange,
        k_shot: IntOrRange,
        q_query: IntOrRange,
        *,
        mode: str = "classes",
        seed: int = 0,
        languages: Sequence[str] | None = None,
        support_languages: Sequence[str] | None = None,
        query_languages: Sequence[str] | None = None,
        language_weights: dict[str, float] | None = None,
        on_small_class: str = "skip",
    ) -> EpisodeSampler:
        """Episodes of one split: its classes only, in its languages only (see :class:`EpisodeSampler`'s modes);
        what it leaves out (classes short of K + Q, languages short of N classes) is in its ``report``.

        ``languages`` / ``support_languages`` / ``query_languages`` narrow the split's languages further; a
        language of another split raises :class:`SplitLeakError`.
        """
        self._split(split)
        if mode != "classes" and not self.builder.lang_column:
            raise ValueError(
                f"mode={mode!r} treats languages as tasks: this collection has no language column."
            )
        allowed = set(self.languages_of(split))
        for what, names in (("languages", languages), ("support_languages", support_languages),
                            ("query_languages", query_languages)):  # fmt: skip
            outside = sorted(set(names or ()) - allowed)
            if outside and self.languages is not None and set(outside) <= set(self.builder.languages):
                raise SplitLeakError(
                    f"{what} {outside} are not languages of split {split!r} ({sorted(allowed)})."
                )
            if outside:
                raise ValueError(
                    f"{what} {outside} are not in the dataset (it has {list(self.builder.languages)})."
                )
        if mode == "classes" and (languages or support_languages or query_languages):
            raise ValueError(
                "Mode 'classes' pools the split's languages: languages=... needs a language mode."
            )
        index = self.index(split, by_language=mode != "classes")
        return EpisodeSampler(
            index, n_way=n_way, k_shot=k_shot, q_query=q_query, seed=seed, mode=mode, classes=self.class_ids(split),
            languages=languages, support_languages=support_languages, query_languages=query_languages,
            language_weights=language_weights, on_small_class=on_small_class,
        )  # fmt: skip

    def summary(self) -> str:
        lines = [f"{self.name or 'tasks'}: {self.dataset.num_rows:,} rows, {len(self.builder.label_names)} labels, "
                 f"{len(self.builder.languages)} languages"]  # fmt: skip
        for split in self.split_names:
            langs = f", {len(self.languages[split])} languages" if self.languages is not None else ""
            lines.append(
                f"  {split}: {len(self.classes[split])} classes{langs}, {len(self.index(split).order):,} rows"
            )
        return "\n".join(lines)


# -- building collections -------------------------------------------------------------------------------------
def _language_splits(builder: EpisodeBuilder, language_split: LanguageSplit, seed: int, names: Sequence[str],
                     allow_variants: Sequence[str]) -> Splits | None:  # fmt: skip
    if language_split is None:
        if allow_variants:
            raise ValueError("allow_variants applies to a language split: pass language_split=... too.")
        return None
    if isinstance(language_split, Mapping):
        return builder.split_languages(explicit={k: list(v) for k, v in language_split.items()},
                                       allow_variants=allow_variants)  # fmt: skip
    return builder.split_languages(
        tuple(language_split), seed=seed, names=names, allow_variants=allow_variants
    )


def tasks_from_builder(
    builder: EpisodeBuilder,
    *,
    seed: int = 0,
    class_ratios: Sequence[float] | None = (0.6, 0.2, 0.2),
    class_split: Mapping[str, Sequence[str | int]] | None = None,
    language_split: LanguageSplit = None,
    split_names: Sequence[str] = SPLIT_NAMES,
    allow_variants: Sequence[str] = (),
    name: str = "",
) -> TaskCollection:
    """A :class:`TaskCollection` over any builder: seeded class ratios (or an explicit ``class_split``), and a
    language split given as ``{split: [languages]}`` or as seeded ratios over the dataset's languages.

    Language splits are disjoint by base language (``de`` and ``de-CH`` are one language); ``allow_variants``
    names the codes that may sit apart from the rest of their language."""
    if class_split is not None:
        classes = builder.split_classes(explicit=class_split)
    else:
        classes = builder.split_classes(class_ratios, seed=seed, names=split_names)
    languages = _language_splits(builder, language_split, seed, tuple(classes.parts), allow_variants)
    return TaskCollection(builder=builder, classes=classes, languages=languages, name=name)


def ha_intents_tasks(
    languages: Sequence[str] | None = None,
    seed: int = 0,
    class_ratios: Sequence[float] | None = (0.6, 0.2, 0.2),
    language_split: LanguageSplit = None,
    slots: str = "fill",
    cap_per_intent: int = 200,
    *,
    class_split: Mapping[str, Sequence[str | int]] | None = None,
    split_names: Sequence[str] = SPLIT_NAMES,
    allow_variants: Sequence[str] = (),
    data_seed: int = 0,
    cache_dir: str | None = None,
) -> TaskCollection:
    """Home Assistant intents (``load_ha_intents``) as meta-train / meta-val / meta-test tasks; no network.

    ``seed`` seeds the class (and ratio-given language) splits; ``data_seed`` is ``load_ha_intents``' seed (which
    sentences are kept). ``language_split``: ``None`` (every split uses every language), ``{split: [codes]}``, or
    ratios such as ``(0.6, 0.2, 0.2)``; either way variants of one language (``zh-CN``, ``zh-TW``) stay in one split
    unless named in ``allow_variants``. Labels are the intents (``label``, a ClassLabel over all intents of the
    package, so class ids agree across language subsets).
    """
    from hf_metatransfer.data import load_ha_intents

    dataset = load_ha_intents(None if languages is None else list(languages), cap_per_intent=cap_per_intent,
                              slots=slots, seed=data_seed, cache_dir=cache_dir)  # fmt: skip
    builder = EpisodeBuilder(dataset, label_column="label", text_column="text", lang_column="lang")
    return tasks_from_builder(builder, seed=seed, class_ratios=class_ratios, class_split=class_split,
                              language_split=language_split, split_names=split_names,
                              allow_variants=allow_variants, name="ha_intents")  # fmt: skip


def _missing_columns_error(where: str, columns: Sequence[str], missing: dict[str, str]) -> ValueError:
    parts = []
    for role, column in missing.items():
        close = difflib.get_close_matches(column, columns, 1)
        parts.append(f"{role} column {column!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(
        f"MASSIVE-style data needs the columns utt (text), intent (label) and locale (language); {where} has "
        f"{list(columns)} and lacks the {', '.join(parts)}. Rename them, or pass "
        f"{', '.join(f'{role}_column=...' for role in missing)}."
    )


def _as_single_dataset(
    data: Any, data_splits: Sequence[str] | None, columns: dict[str, str]
) -> datasets.Dataset:
    if isinstance(data, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise TypeError(
            "massive_style_tasks indexes the whole dataset: load it without streaming=True, or use "
            "hf_metatransfer.episodes.streaming.StreamingEpisodes for a stream."
        )
    if isinstance(data, datasets.Dataset):
        parts = {"dataset": data}
    elif isinstance(data, Mapping):
        names = list(data) if data_splits is None else list(data_splits)
        unknown = [s for s in names if s not in data]
        if unknown:
            raise ValueError(f"Splits {unknown} are not in the data (it has {list(data)}).")
        if not names:
            raise ValueError("No splits to use: data_splits is empty.")
        parts = {s: data[s] for s in names}
    else:
        raise TypeError(
            f"Expected a datasets.Dataset, DatasetDict or dict of Datasets, got {type(data).__name__}."
        )
    for split, part in parts.items():
        if not isinstance(part, datasets.Dataset):
            raise TypeError(f"Split {split!r} is a {type(part).__name__}, not a datasets.Dataset.")
        missing = {role: c for role, c in columns.items() if c not in part.column_names}
        if missing:
            raise _missing_columns_error(f"split {split!r}" if split != "dataset" else "the dataset",
                                         part.column_names, missing)  # fmt: skip
    keep = list(dict.fromkeys(columns.values()))
    selected = [part.select_columns(keep) for part in parts.values()]
    if len(selected) == 1:
        return selected[0]
    target = selected[0].features
    aligned = []
    for split, part in zip(parts, selected):
        if part.features != target:
            try:
                part = part.cast(target)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"Split {split!r} has features {part.features}, which do not cast to the first split's "
                    f"{target}: {exc}"
                ) from exc
        aligned.append(part)
    return datasets.concatenate_datasets(aligned)


def massive_style_tasks(
    dataset_or_dict: Any = None,
    *,
    seed: int = 0,
    class_ratios: Sequence[float] | None = (0.6, 0.2, 0.2),
    language_split: LanguageSplit = None,
    class_split: Mapping[str, Sequence[str | int]] | None = None,
    split_names: Sequence[str] = SPLIT_NAMES,
    allow_variants: Sequence[str] = (),
    data_splits: Sequence[str] | None = None,
    text_column: str = "utt",
    label_column: str = "intent",
    lang_column: str = "locale",
    hub_id: str = MASSIVE_HUB_ID,
    hub_config: str = "all",
    **load_kwargs: Any,
) -> TaskCollection:
    """MASSIVE-style intent data (``utt``, ``intent``, ``locale``) as class-/language-disjoint meta-splits.

    ``dataset_or_dict``: a ``Dataset``, a ``DatasetDict`` (or dict of Datasets) whose example splits (all, or
    ``data_splits``) are concatenated in order into ``tasks.dataset``, or ``None`` to load
    ``load_dataset(hub_id, hub_config, **load_kwargs)`` (``AmazonScience/massive``, config ``all``: needs the
    network). The label may be a ``ClassLabel`` (as on the Hub), int or str; the text and locale columns may be
    ``string`` (json) or ``large_string`` (csv, parquet); splits of different string types are cast to the
    first's. Languages are the locale codes (``"de-DE"``); language splits keep the locales of one language
    (``pt-PT``, ``pt-BR``) together unless named in ``allow_variants``.
    """
    if dataset_or_dict is None:
        try:
            dataset_or_dict = datasets.load_dataset(hub_id, hub_config, **load_kwargs)
        except Exception as exc:  # the network, or a Hub repository that needs a loading script
            raise RuntimeError(
                f"Could not load {hub_id!r} ({hub_config!r}) from the Hub: {exc}. Load the data yourself (e.g. its "
                "parquet files with load_dataset('parquet', data_files=...)) and pass the DatasetDict."
            ) from exc
    columns = {"text": text_column, "label": label_column, "lang": lang_column}
    dataset = _as_single_dataset(dataset_or_dict, data_splits, columns)
    builder = EpisodeBuilder(
        dataset, label_column=label_column, text_column=text_column, lang_column=lang_column
    )
    return tasks_from_builder(builder, seed=seed, class_ratios=class_ratios, class_split=class_split,
                              language_split=language_split, split_names=split_names,
                              allow_variants=allow_variants, name="massive")  # fmt: skip
