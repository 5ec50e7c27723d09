"""Few-shot translation tasks: a task is a language pair, with K support and Q query sentence pairs.

The data is a long parallel ``datasets.Dataset``, one sentence pair a row: ``source``, ``target``, ``source_lang``,
``target_lang`` and, to pivot, an ``id`` shared by the translations of one source sentence (the format of
``hf_metatransfer.data.load_django_parallel``; :func:`from_flores_style` turns a FLORES-style wide dataset into it).

A pair X -> Y is served from, in this order:
- direct rows (``source_lang`` X, ``target_lang`` Y);
- the same rows read backwards (``source_lang`` Y, ``target_lang`` X);
- with ``pivot=True``, two languages joined on ``id`` (X and Y both translations of one English sentence, say).

Task ``i`` of seed ``s`` is a pure function of (seed, i) and the sampler's arguments (``random.py``), drawn in
vectorised batches; ``sampler.batch(ids)`` is the interface ``EpisodeDataset`` shards, so
``EpisodeDataset(sampler, n, collate=sampler.texts)`` deals tasks to ranks and DataLoader workers.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .builder import read_column
from .index import GroupIndex
from .random import episode_keys, uniform, without_replacement
from .report import caller_stacklevel
from .splits import Splits, split_values

__all__ = ["TranslationTask", "TranslationTaskSampler", "from_flores_style", "split_target_languages"]

logger = logging.getLogger(__name__)

_PAIR, _ROWS = range(2)  # streams of draws
Pair = tuple[str, str]


@dataclass(frozen=True)
class TranslationTask:
    """One few-shot translation task: K support and Q query sentence pairs of one language pair.

    ``support`` and ``query`` are dataset row numbers of shape (K, 2) and (Q, 2): column 0 the row holding the
    source sentence, column 1 the row holding its translation (the same row for a direct pair), read from the
    dataset columns ``columns[0]`` and ``columns[1]``.
    """

    task_id: int
    source_lang: str
    target_lang: str
    support: np.ndarray
    query: np.ndarray
    columns: tuple[str, str] = ("source", "target")

    @property
    def k_support(self) -> int:
        return len(self.support)

    @property
    def q_query(self) -> int:
        return len(self.query)

    @property
    def pair(self) -> Pair:
        return self.source_lang, self.target_lang

    def to_dict(self) -> dict:
        return {
            "task_id": self.task_id,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "support": self.support.tolist(),
            "query": self.query.tolist(),
            "columns": list(self.columns),
        }

    @classmethod
    def from_dict(cls, row: dict) -> TranslationTask:
        def rows(x) -> np.ndarray:
            return np.asarray(x, dtype=np.int64).reshape(-1, 2)

        return cls(task_id=int(row["task_id"]), source_lang=row["source_lang"], target_lang=row["target_lang"],
                   support=rows(row["support"]), query=rows(row["query"]), columns=tuple(row["columns"]))  # fmt: skip


# -- input checks --------------------------------------------------------------------------------------------------


def _is_string(values: pa.ChunkedArray) -> bool:
    return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)


def _strings(values: pa.ChunkedArray, name: str, role: str) -> pa.ChunkedArray:
    if not _is_string(values):
        raise ValueError(f"The {role} column {name!r} has type {values.type}; it must hold strings.")
    return values


def _languages(values: pa.ChunkedArray, name: str, role: str) -> pa.ChunkedArray:
    _strings(values, name, role)
    if values.null_count:
        rows = np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))
        raise ValueError(f"The {role} column {name!r} has {len(rows)} missing values (rows {_some(rows)}).")
    return values


def _some(rows: np.ndarray, n: int = 5) -> str:
    return f"{rows[:n].tolist()}{'...' if len(rows) > n else ''}"


def _empty(text: pa.ChunkedArray) -> np.ndarray:
    """True where a text is missing or only whitespace."""
    empty = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    return pc.fill_null(empty, True).to_numpy(zero_copy_only=False).astype(bool)


def _name(pair: Pair) -> str:
    return f"{pair[0]}->{pair[1]}"


def _unknown_language(lang: str, known: Sequence[str], where: str) -> ValueError:
    close = difflib.get_close_matches(lang, known, 1, cutoff=0.5)  # language codes are short
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown language {lang!r}{where}: the dataset has {list(known)}.{hint}")


@dataclass(frozen=True)
class _Pool:
    """The sentence pairs of one language pair: source rows, target rows (aligned) and the columns to read."""

    source_rows: np.ndarray
    target_rows: np.ndarray
    columns: tuple[str, str]
    how: str  # "direct", "reversed" or "pivot"

    def __len__(self) -> int:
        return len(self.source_rows)


class TranslationTaskSampler:
    """Indexable, seeded source of few-shot translation tasks: ``sampler[i]`` or ``sampler.batch(ids)``.

    Pairs on offer: ``pairs`` (explicit (source, target) language pairs), or ``languages`` (target languages:
    every source language of the data into each of them; with ``pivot=True``, every ordered pair of two of
    them), or by default every (source_lang, target_lang) pair in the data. ``language_weights`` weights the
    pair draw, keyed by target language or by (source, target) pair (default 1 each).

    Support and query pairs of a task are distinct rows (distinct ``id`` for a pivot pair). A pair with fewer
    than K + Q sentence pairs is skipped with a warning naming it and its count (``on_small_pair="skip"``) or
    refused (``"error"``).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        *,
        source_column: str = "source",
        target_column: str = "target",
        source_lang_column: str = "source_lang",
        target_lang_column: str = "target_lang",
        id_column: str = "id",
        k_support: int,
        q_query: int,
        seed: int = 0,
        pairs: Sequence[Pair] | None = None,
        languages: Sequence[str] | None = None,
        language_weights: dict[str | Pair, float] | None = None,
        pivot: bool = False,
        on_small_pair: str = "skip",
    ) -> None:
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"TranslationTaskSampler takes a datasets.Dataset, got {type(dataset).__name__}: pick a split of "
                "a DatasetDict (ds['train'])."
            )
        for name, value, smallest in (("k_support", k_support, 1), ("q_query", q_query, 0)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < smallest:
                raise ValueError(f"{name} must be an int >= {smallest}, got {value!r}.")
        if on_small_pair not in ("skip", "error"):
            raise ValueError(f"on_small_pair must be 'skip' or 'error', got {on_small_pair!r}.")
        if pairs is not None and languages is not None:
            raise ValueError("Pass pairs=[(source, target), ...] or languages=[...], not both.")
        if isinstance(languages, str):
            languages = [languages]
        self.dataset, self.seed, self.pivot = dataset, int(seed), bool(pivot)
        self.k_support, self.q_query = int(k_support), int(q_query)
        self.on_small_pair = on_small_pair
        self.columns = {"source": source_column, "target": target_column, "id": id_column}

        src_lang = _languages(
            read_column(dataset, source_lang_column, "source_lang"), source_lang_column, "source_lang"
        )
        tgt_lang = _languages(
            read_column(dataset, target_lang_column, "target_lang"), target_lang_column, "target_lang"
        )
        self._text = {
            source_column: _strings(read_column(dataset, source_column, "source"), source_column, "source"),
            target_column: _strings(read_column(dataset, target_column, "target"), target_column, "target"),
        }
        self._sources = tuple(sorted(pc.unique(src_lang).to_pylist()))
        self._targets = tuple(sorted(pc.unique(tgt_lang).to_pylist()))
        names = tuple(sorted(set(self._sources) | set(self._targets)))
        self._lang_id = {n: i for i, n in enumerate(names)}
        value_set = pa.array(names, type=pa.string())
        self._src = pc.index_in(src_lang.cast(pa.string()), value_set=value_set).to_numpy().astype(np.int64)
        self._tgt = pc.index_in(tgt_lang.cast(pa.string()), value_set=value_set).to_numpy().astype(np.int64)
        # Rows grouped by (source language, target language): groups are the direct pairs.
        self._index = GroupIndex.build(self._tgt, names, self._src, names)
        groups = zip(self._index.group_lang.tolist(), self._index.group_label.tolist())
        self._direct = {(names[a], names[b]): g for g, (a, b) in enumerate(groups)}
        self._ids: np.ndarray | None = None

        requested = self._requested_pairs(pairs, languages)
        pools = {pair: self._pool(pair) for pair in requested}
        self._check_text(pools)
        self.pools = self._check_capacity(pools)
        self.pairs: list[Pair] = list(self.pools)
        weights = self._weights(language_weights, requested)
        self.pair_cdf = np.cumsum(weights) / weights.sum()

    # -- which pairs -----------------------------------------------------------------------------------------
    @property
    def languages(self) -> tuple[str, ...]:
        """Every language of the pairs on offer (for leak checks between meta-train and meta-test samplers)."""
        return tuple(sorted({lang for pair in self.pairs for lang in pair}))

    @property
    def target_languages(self) -> tuple[str, ...]:
        """The target languages of the pairs on offer."""
        return tuple(sorted({pair[1] for pair in self.pairs}))

    def _requested_pairs(self, pairs: Sequence[Pair] | None, languages: Sequence[str] | None) -> list[Pair]:
        known = sorted(self._lang_id)
        if pairs is not None:
            out: list[Pair] = []
            for pair in pairs:
                if isinstance(pair, str) or len(pair) != 2:
                    raise ValueError(f"Pairs are (source, target) tuples such as ('en', 'de'), got {pair!r}.")
                pair = (str(pair[0]), str(pair[1]))
                for lang in pair:
                    if lang not in self._lang_id:
                        raise _unknown_language(lang, known, f" in pair {pair}")
                if pair[0] == pair[1]:
                    raise ValueError(f"Pair {pair} translates a language into itself.")
                if pair not in out:
                    out.append(pair)
            if not out:
                raise ValueError("pairs is empty: pass None for every pair of the dataset.")
            return out
        if languages is not None:
            for lang in languages:
                if lang not in self._lang_id:
                    raise _unknown_language(lang, known, "")
            langs = sorted(set(languages))
            if not langs:
                raise ValueError("languages is empty: pass None for every pair of the dataset.")
            if self.pivot:
                out = [(a, b) for a in langs for b in langs if a != b]
                if not out:
                    raise ValueError(f"pivot=True with languages={langs} needs two languages or more.")
                return out
            out = [(s, t) for s in self._sources for t in langs if (s, t) in self._direct]
            if not out:
                raise ValueError(f"No rows translate into {langs} (target languages: {list(self._targets)}).")
            return out
        if self.pivot:
            raise ValueError(
                "pivot=True needs the pairs to join: pass pairs=[('de', 'fr'), ...] or languages=[...]."
            )
        return sorted(p for p in self._direct if p[0] != p[1])

    def _pool(self, pair: Pair) -> _Pool:
        src, tgt = self.columns["source"], self.columns["target"]
        if pair in self._direct:
            rows = self._group_rows(self._direct[pair])
            return _Pool(rows, rows, (src, tgt), "direct")
        if pair[::-1] in self._direct:
            rows = self._group_rows(self._direct[pair[::-1]])
            return _Pool(rows, rows, (tgt, src), "reversed")
        if not self.pivot:
            raise ValueError(
                f"No rows translate {pair[0]!r} into {pair[1]!r} (or back): pass pivot=True to join {pair[0]} and "
                f"{pair[1]} on the {self.columns['id']!r} column."
            )
        (a_rows, a_col), (b_rows, b_col) = self._side(pair[0]), self._side(pair[1])
        ids = self._id_codes()
        _, ia, ib = np.intersect1d(ids[a_rows], ids[b_rows], assume_unique=True, return_indices=True)
        return _Pool(a_rows[ia], b_rows[ib], (a_col, b_col), "pivot")

    def _group_rows(self, g: int) -> np.ndarray:
        return self._index.order[self._index.offsets[g] : self._index.offsets[g + 1]]

    def _id_codes(self) -> np.ndarray:
        if self._ids is None:
            name = self.columns["id"]
            values = read_column(self.dataset, name, "id")
            if not (_is_string(values) or pa.types.is_integer(values.type)):
                raise ValueError(f"The id column {name!r} has type {values.type}; use str or int ids.")
            if values.null_count:
                rows = np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))
                raise ValueError(
                    f"The id column {name!r} has {len(rows)} missing values (rows {_some(rows)}): pivot pairs "
                    "join on it."
                )
            self._ids = values.combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
        return self._ids

    def _side(self, lang: str) -> tuple[np.ndarray, str]:
        """The rows holding ``lang``'s sentence, one per id (the first), sorted by id; and the column to read."""
        code = self._lang_id[lang]
        if lang in self._targets:
            rows, column = np.flatnonzero(self._tgt == code), self.columns["target"]
        else:
            rows, column = np.flatnonzero(self._src == code), self.columns["source"]
        _, first = np.unique(self._id_codes()[rows], return_index=True)
        return rows[first], column

    def _check_text(self, pools: dict[Pair, _Pool]) -> None:
        """Name the empty sentences among the rows that tasks can draw, with their language pairs."""
        empty = {column: _empty(text) for column, text in self._text.items()}
        for role in ("source", "target"):
            column = self.columns[role]
            bad: dict[int, set[str]] = defaultdict(set)
            for pair, pool in pools.items():
                for rows, col in ((pool.source_rows, pool.columns[0]), (pool.target_rows, pool.columns[1])):
                    if col == column:
                        for r in rows[empty[column][rows]]:
                            bad[int(r)].add(_name(pair))
            if bad:
                rows = np.array(sorted(bad))
                where = sorted(set().union(*bad.values()))
                raise ValueError(
                    f"The {role} column {column!r} has {len(rows)} empty or missing sentences (rows {_some(rows)}; "
                    f"pairs {', '.join(where)}): drop them, e.g. ds.filter(lambda t: bool(t and t.strip()), "
                    f"input_columns={column!r})."
                )

    def _check_capacity(self, pools: dict[Pair, _Pool]) -> dict[Pair, _Pool]:
        need = self.k_support + self.q_query
        small = {pair: len(pool) for pair, pool in pools.items() if len(pool) < need}
        if small:
            listing = ", ".join(f"{_name(p)}: {n}" for p, n in small.items())
            message = f"Language pairs with fewer than K + Q = {need} sentence pairs: {listing}"
            if self.on_small_pair == "error" or len(small) == len(pools):
                if len(small) == len(pools):
                    message = f"No language pair has K + Q = {need} sentence pairs ({listing})"
                raise ValueError(message + ". Lower k_support or q_query, or add data.")
            logger.info("%s; they are skipped.", message)
            warnings.warn(f"{len(small)} of {len(pools)} language pairs have fewer than K + Q = {need} sentence pairs "
                          f"and are skipped; sampler.small_pairs lists them (logged by {logger.name} at INFO).",
                          stacklevel=caller_stacklevel())  # fmt: skip
        self.small_pairs = {_name(p): n for p, n in small.items()}
        return {pair: pool for pair, pool in pools.items() if pair not in small}

    def _weights(self, language_weights: dict | None, requested: list[Pair]) -> np.ndarray:
        language_weights = dict(language_weights or {})
        valid = {pair[1] for pair in requested} | set(requested)
        unknown = [k for k in language_weights if k not in valid]
        if unknown:
            raise ValueError(
                f"language_weights has keys {unknown} that match no requested pair or target language (keys are "
                "target languages or (source, target) pairs)."
            )
        weights = np.array(
            [float(language_weights.get(pair, language_weights.get(pair[1], 1.0))) for pair in self.pairs]
        )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"language_weights must be non-negative with a positive sum over the pairs, got {weights}."
            )
        return weights

    def pair_sizes(self) -> dict[Pair, int]:
        """Sentence pairs on offer for each language pair."""
        return {pair: len(pool) for pair, pool in self.pools.items()}

    # -- sampling --------------------------------------------------------------------------------------------
    def __getitem__(self, task_id: int) -> TranslationTask:
        return self.batch([task_id])[0]

    def batch(self, task_ids: Iterable[int]) -> list[TranslationTask]:
        """Tasks for these ids, drawn together (vectorised per language pair)."""
        ids = np.asarray(list(task_ids), dtype=np.int64)
        out: list[TranslationTask | None] = [None] * len(ids)
        pair_u = uniform(episode_keys(self.seed, ids, _PAIR), (1,))[:, 0]
        pair_idx = np.minimum(np.searchsorted(self.pair_cdf, pair_u, side="right"), len(self.pairs) - 1)
        k, q = self.k_support, self.q_query
        for p in np.unique(pair_idx):
            positions = np.flatnonzero(pair_idx == p)
            pair = self.pairs[int(p)]
            pool = self.pools[pair]
            counts = np.full(len(positions), len(pool), dtype=np.int64)
            offsets = without_replacement(episode_keys(self.seed, ids[positions], _ROWS), counts, k + q)
            rows = np.stack([pool.source_rows[offsets], pool.target_rows[offsets]], axis=-1)  # (B, K + Q, 2)
            for b, pos in enumerate(positions):
                out[pos] = TranslationTask(
                    int(ids[pos]), pair[0], pair[1], rows[b, :k], rows[b, k:], pool.columns
                )
        return out  # type: ignore[return-value]

    def texts(self, task: TranslationTask) -> tuple[list[str], list[str], list[str], list[str]]:
        """(support sources, support targets, query sources, query targets) of a task, as strings."""
        src, tgt = (self._text[c] for c in task.columns)

        def take(column: pa.ChunkedArray, rows: np.ndarray) -> list[str]:
            return column.take(pa.array(rows, type=pa.int64())).to_pylist()

        return (take(src, task.support[:, 0]), take(tgt, task.support[:, 1]),
                take(src, task.query[:, 0]), take(tgt, task.query[:, 1]))  # fmt: skip


# -- splits --------------------------------------------------------------------------------------------------------
def split_target_languages(
    dataset: datasets.Dataset,
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    explicit: dict[str, Sequence[str]] | None = None,
    *,
    target_lang_column: str = "target_lang",
    names: Sequence[str] = ("train", "validation", "test"),
    allow_variants: Sequence[str] = (),
) -> Splits:
    """Language-disjoint meta-train / meta-val / meta-test target languages, by seeded ratios or explicit lists.

    Disjoint by base language (``hf_metatransfer.episodes.languages``): seeded ratios keep ``es``, ``es_AR`` and
    ``es_MX`` in one split, and :class:`Splits` raises ``SplitLeakError`` when two parts share a language or
    variants of one, except the codes named in ``allow_variants``. Pass a part to a sampler as
    ``languages=splits["train"]``.
    """
    column = _languages(
        read_column(dataset, target_lang_column, "target_lang"), target_lang_column, "target_lang"
    )
    present = sorted(pc.unique(column).to_pylist())
    named = [(lang, f" in split {part!r}") for part, langs in (explicit or {}).items() for lang in langs]
    for lang, where in [*named, *((lang, " in allow_variants") for lang in allow_variants)]:
        if lang not in present:
            raise _unknown_language(lang, present, where)
    allow = tuple(allow_variants)
    if explicit is not None:
        return Splits({k: list(v) for k, v in explicit.items()}, kind="language", allow_variants=allow)
    parts = split_values(
        present, ratios or (0.6, 0.2, 0.2), seed, names, kind="language", allow_variants=allow
    )
    return Splits(parts, kind="language", allow_variants=allow)


# -- FLORES-style wide datasets ------------------------------------------------------------------------------------
def from_flores_style(
    dataset: datasets.Dataset,
    *,
    source: str = "eng_Latn",
    prefix: str = "sentence_",
    languages: Sequence[str] | None = None,
    id_column: str | None = "id",
) -> datasets.Dataset:
    """A FLORES-200-style dataset (one column a language, ``sentence_eng_Latn``, ``sentence_fra_Latn``..., rows
    aligned) as the long parallel format: ``source`` (the ``source`` language), ``target``, ``source_lang``,
    ``target_lang`` (FLORES codes: ``"eng_Latn"``, ``"fra_Latn"``) and ``id``.

    ``id`` is the dataset's ``id_column`` as a string (the row number when that column is absent), so the
    languages of one row pivot. Rows come by target language (sorted), then in the dataset's order.
    """
    columns = [c for c in dataset.column_names if c.startswith(prefix)]
    langs_present = [c[len(prefix) :] for c in columns]
    if not columns:
        raise ValueError(
            f"No column starts with {prefix!r} (columns: {dataset.column_names}): a FLORES-style dataset has one "
            "column a language such as 'sentence_eng_Latn'. Pass prefix=..."
        )
    if source not in langs_present:
        raise _unknown_language(source, langs_present, f" (source column {prefix + source!r})")
    targets = sorted(lang for lang in langs_present if lang != source)
    if languages is not None:
        for lang in languages:
            if lang not in targets:
                raise _unknown_language(lang, targets, " among the target columns")
        targets = sorted(set(languages))
    if not targets:
        raise ValueError(f"No target language besides {source!r} (columns: {columns}).")
    table = dataset.with_format("arrow")[:]
    for lang in (source, *targets):
        _strings(table[prefix + lang], prefix + lang, "sentence")
    n = table.num_rows
    if id_column is not None and id_column in table.column_names:
        ids = pc.cast(table[id_column], pa.string())
    else:
        ids = pa.chunked_array([pa.array([str(i) for i in range(n)], type=pa.string())])
    parts = [
        pa.table({
            "source": table[prefix + source],
            "target": table[prefix + lang],
            "source_lang": pa.array([source] * n, type=pa.string()),
            "target_lang": pa.array([lang] * n, type=pa.string()),
            "id": ids,
        })
        for lang in targets
    ]  # fmt: skip
    long = pa.concat_tables(parts).combine_chunks()
    return datasets.Dataset.from_dict({name: long[name] for name in long.column_names},
                                      features=datasets.Features({name: datasets.Value("string")
                                                                  for name in long.column_names}))  # fmt: skip
