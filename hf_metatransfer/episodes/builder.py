"""EpisodeBuilder: from any ``datasets.Dataset`` to seeded few-shot episodes, with the input checked first.

The label and language columns are read once as Arrow arrays and indexed (``index.py``); the text stays in the
dataset, and episodes carry row numbers. Labels may be ``ClassLabel``, int or str; the original label of each
episode class is kept (``Episode.class_names``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .episode import Episode
from .index import GroupIndex
from .sampler import EpisodeSampler, IntOrRange
from .splits import Splits, split_values


def read_column(dataset: datasets.Dataset, name: str, role: str) -> pa.ChunkedArray:
    """One column as Arrow (no copy of the rows), or an error naming the closest column and the argument to set."""
    if name not in dataset.column_names:
        close = difflib.get_close_matches(name, dataset.column_names, 1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"The {role} column {name!r} is not in the dataset (columns: {dataset.column_names}).{hint} "
            f"Pass {role}_column=..."
        )
    return dataset.select_columns([name]).with_format("arrow")[:][name]


def _encode(values: pa.ChunkedArray, role: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Ids 0..C-1 over the sorted distinct values, and the values' names."""
    if values.null_count:
        raise ValueError(
            f"The {role} column has {values.null_count} missing values: fill or drop those rows."
        )
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        names = sorted(pc.unique(values).to_pylist())
    elif pa.types.is_integer(values.type):
        names = sorted(pc.unique(values).to_pylist())
    else:
        raise ValueError(f"The {role} column has type {values.type}: use ClassLabel, int or str values.")
    ids = pc.index_in(values, value_set=pa.array(names, type=values.type))
    return ids.to_numpy().astype(np.int64), tuple(str(n) for n in names)


class EpisodeBuilder:
    """Index a dataset once; then make samplers of episodes for any split of classes or languages.

    >>> builder = EpisodeBuilder(ds, label_column="intent", lang_column="lang")
    >>> splits = builder.split_classes((0.6, 0.2, 0.2), seed=0)
    >>> train = builder.sampler(n_way=5, k_shot=5, q_query=15, classes=splits["train"], mode="monolingual")
    >>> episode = train[0]
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        label_column: str = "label",
        text_column: str | None = "text",
        lang_column: str | None = None,
    ) -> None:
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"EpisodeBuilder takes a datasets.Dataset, got {type(dataset).__name__}: pick a split of a "
                "DatasetDict (ds['train']), or use the streaming builder for an IterableDataset."
            )
        self.dataset = dataset
        self.label_column, self.text_column, self.lang_column = label_column, text_column, lang_column
        raw_labels = read_column(dataset, label_column, "label")
        feature = dataset.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            labels = raw_labels.to_numpy().astype(np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= feature.num_classes):
                raise ValueError(
                    f"Label column {label_column!r} holds ids outside its ClassLabel (-1 = missing?)."
                )
            label_names = tuple(feature.names)
        else:
            labels, label_names = _encode(raw_labels, "label")
        if text_column is not None:
            self._check_text(read_column(dataset, text_column, "text"))
        if lang_column is not None:
            langs, lang_names = _encode(read_column(dataset, lang_column, "lang"), "lang")
        else:
            langs, lang_names = None, ("",)
        self.index = GroupIndex.build(labels, label_names, langs, lang_names)

    def _check_text(self, text: pa.ChunkedArray) -> None:
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise ValueError(
                f"The text column {self.text_column!r} has type {text.type}; it must hold strings."
            )
        empty = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
        bad = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
        if len(bad):
            raise ValueError(
                f"The text column {self.text_column!r} has {len(bad)} empty or missing values (rows "
                f"{bad[:5].tolist()}{'...' if len(bad) > 5 else ''}): drop them, e.g. "
                f"ds.filter(lambda t: bool(t and t.strip()), input_columns={self.text_column!r})."
            )

    # -- names ---------------------------------------------------------------------------------------------
    @property
    def label_names(self) -> tuple[str, ...]:
        return self.index.label_names

    @property
    def languages(self) -> tuple[str, ...]:
        return self.index.lang_names if self.lang_column else ()

    def label_ids(self, classes: Sequence[str | int]) -> list[int]:
        """Label ids from names (or ids, returned as they are)."""
        lookup = {n: i for i, n in enumerate(self.label_names)}
        out = []
        for c in classes:
            if isinstance(c, int | np.integer):
                out.append(int(c))
            elif c in lookup:
                out.append(lookup[c])
            else:
                raise ValueError(
                    f"Class {c!r} is not in the dataset; classes: {list(self.label_names)[:20]}..."
                )
        return out

    # -- splits and samplers -------------------------------------------------------------------------------
    def split_classes(
        self,
        ratios: Sequence[float] | None = None,
        *,
        seed: int = 0,
        explicit: dict[str, Sequence[str | int]] | None = None,
        names: Sequence[str] = ("train", "validation", "test"),
    ) -> Splits:
        """Class-disjoint meta-train / meta-val / meta-test classes, by seeded ratios or explicit lists."""
        if explicit is not None:
            return Splits(
                {k: self.label_ids(v) for k, v in explicit.items()}, kind="class", names=self.label_names
            )
        present = sorted(set(self.index.group_label.tolist()))
        return Splits(split_values(present, ratios or (0.6, 0.2, 0.2), seed, names), kind="class",
                      names=self.label_names)  # fmt: skip

    def split_languages(
        self,
        ratios: Sequence[float] | None = None,
        *,
        seed: int = 0,
        explicit: dict[str, Sequence[str]] | None = None,
        names: Sequence[str] = ("train", "validation", "test"),
        allow_variants: Sequence[str] = (),
    ) -> Splits:
        """Language-disjoint splits (names of languages), by seeded ratios or explicit lists.

        Disjoint by base language: seeded ratios keep a language's variants (``pt``, ``pt-BR``) in one split, and
        explicit lists that separate them are refused, except the codes named in ``allow_variants``.
        """
        if not self.lang_column:
            raise ValueError("Language splits need lang_column=... when building the EpisodeBuilder.")
        named = [lang for v in (explicit or {}).values() for lang in v]
        unknown = [lang for lang in [*named, *allow_variants] if lang not in self.languages]
        if unknown:
            raise ValueError(f"Languages {unknown} are not in the dataset (it has {list(self.languages)}).")
        if explicit is not None:
            return Splits({k: list(v) for k, v in explicit.items()}, kind="language",
                          allow_variants=tuple(allow_variants))  # fmt: skip
        parts = split_values(list(self.languages), ratios or (0.6, 0.2, 0.2), seed, names, kind="language",
                             allow_variants=allow_variants)  # fmt: skip
        return Splits(parts, kind="language", allow_variants=tuple(allow_variants))

    def sampler(
        self,
        n_way: IntOrRange,
        k_shot: IntOrRange,
        q_query: IntOrRange,
        *,
        seed: int = 0,
        mode: str = "classes",
        classes: Sequence[str | int] | None = None,
        languages: Sequence[str] | None = None,
        support_languages: Sequence[str] | None = None,
        query_languages: Sequence[str] | None = None,
        language_weights: dict[str, float] | None = None,
        on_small_class: str = "skip",
    ) -> EpisodeSampler:
        """An :class:`EpisodeSampler` over these classes and languages (see its docstring for the modes); what it
        leaves out is in its ``report``."""
        if mode != "classes" and not self.lang_column:
            raise ValueError(f"mode={mode!r} treats languages as tasks: build with lang_column=... .")
        return EpisodeSampler(
            self.index, n_way=n_way, k_shot=k_shot, q_query=q_query, seed=seed, mode=mode,
            classes=None if classes is None else self.label_ids(classes), languages=languages,
            support_languages=support_languages, query_languages=query_languages,
            language_weights=language_weights, on_small_class=on_small_class,
        )  # fmt: skip

    def texts(self, episode: Episode) -> tuple[list[str], list[str]]:
        """Plain-text support and query sentences of an episode."""
        if self.text_column is None:
            raise ValueError("This builder has no text column.")
        column = self.dataset.select_columns([self.text_column])
        return (column[episode.support.tolist()][self.text_column],
                column[episode.query.tolist()][self.text_column])  # fmt: skip
