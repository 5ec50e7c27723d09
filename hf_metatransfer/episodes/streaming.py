"""Episodes from a stream (``datasets.IterableDataset``) too large to index: per-class reservoir buffers.

The stream is read once (``fill()``), or a part at a time (``fill(max_rows=...)`` again continues where the last
call stopped). Each class -- each (language, label) with ``lang_column`` -- keeps a uniform random sample of at
most ``capacity`` of its rows (reservoir sampling, Vitter's algorithm R). The draw for the r-th row of a class is
a counter-based function of (seed, class, r) (``random.py``'s mixer), so the buffers are the same for the same
seed and stream order, whatever ``batch_size`` the stream is read with and on every machine.

Representation: the buffers are materialised as one small in-memory :class:`datasets.Dataset`, ``buffer``,
grouped by class (classes sorted by (language, label), then buffer slot). It has the kept columns (label, text,
language and any ``columns=...``, with the stream's features, so a ``ClassLabel`` keeps its names) and
``stream_index``, each row's position in the stream. Episodes are the usual :class:`Episode`: ``support`` /
``query`` hold row positions in ``buffer`` (``buffer[int(row)]["stream_index"]`` goes back to the stream), drawn
by an :class:`EpisodeSampler` over an :class:`EpisodeBuilder` of ``buffer`` (``builder``), so every mode, class
split and the tokeniser path (``tokenize_dataset(stream.buffer, tok)`` then ``TokenStore``) work as for a
Dataset. A later ``fill`` makes a new ``buffer``: episodes refer to the buffer of the samplers that drew them
(keep ``buffer = stream.buffer`` alongside, or resolve them before filling again).

>>> stream = StreamingEpisodes(load_dataset(..., streaming=True)["train"], label_column="intent", capacity=64)
>>> stream.fill()                                  # one pass over the stream
>>> sampler = stream.sampler(5, 5, 15, seed=0)     # warns for classes whose buffer holds fewer than K + Q rows
>>> support_text, query_text = stream.texts(sampler[0])
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np

from .builder import EpisodeBuilder
from .episode import Episode
from .random import _mix
from .report import caller_stacklevel
from .sampler import EpisodeSampler, IntOrRange

_STREAM_INDEX = "stream_index"

logger = logging.getLogger(__name__)


def _class_hash(key: Any) -> int:
    """A 64-bit hash of a class key that is the same in every process (``hash()`` of str is salted)."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode("utf-8"), digest_size=8).digest(), "little")


def _sort_keys(keys: Iterable[Any]) -> list[Any]:
    keys = list(keys)
    try:
        return sorted(keys)
    except TypeError:  # mixed value types: a stable if unnatural order
        return sorted(keys, key=repr)


class StreamingEpisodes:
    """Per-class reservoir buffers over a stream of rows, and seeded episodes drawn from them.

    Args:
        dataset: a ``datasets.IterableDataset`` (or any iterable of row dicts).
        label_column, text_column, lang_column: as for :class:`EpisodeBuilder`; rows whose label is missing, or
            whose text is missing or blank, are skipped (counted in ``skipped``).
        capacity: most rows kept per class (per language and class with ``lang_column``).
        seed: seeds the reservoirs (episodes have their own ``seed`` in :meth:`sampler`).
        columns: further columns to keep in the buffer (e.g. ``input_ids`` of a tokenised stream).
        batch_size: rows read from the stream at a time (does not change the result).
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset | Iterable[dict],
        *,
        label_column: str = "label",
        text_column: str | None = "text",
        lang_column: str | None = None,
        capacity: int = 64,
        seed: int = 0,
        columns: Sequence[str] = (),
        batch_size: int = 1000,
    ) -> None:
        if isinstance(dataset, datasets.Dataset):
            raise TypeError("StreamingEpisodes reads a stream: use EpisodeBuilder for a datasets.Dataset (or pass "
                            "dataset.to_iterable_dataset()).")  # fmt: skip
        if isinstance(dataset, datasets.IterableDatasetDict | datasets.DatasetDict):
            raise TypeError(f"Pick one split of the {type(dataset).__name__} (e.g. ds['train']).")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
        self.dataset = dataset
        self.label_column, self.text_column, self.lang_column = label_column, text_column, lang_column
        self.capacity, self.seed, self.batch_size = capacity, int(seed), batch_size
        roles = {"label": label_column, "text": text_column, "lang": lang_column}
        self._roles = {role: c for role, c in roles.items() if c is not None}
        self.columns = list(dict.fromkeys([*self._roles.values(), *columns]))
        features = getattr(dataset, "features", None)
        self._features = features if isinstance(features, datasets.Features) else None
        known = list(features) if self._features is not None else None
        if known is not None:
            self._check_columns(known)
        self._class_of: dict[Any, int] = {}
        self._keys: list[Any] = []
        self._hashes: list[int] = []
        self._seen = np.zeros(0, dtype=np.int64)
        self._slots: list[list[tuple]] = []
        self.rows_seen = 0
        self.skipped = 0
        self.exhausted = False
        self._batches: Iterator[dict[str, list]] | None = None
        self._pending: dict[str, list] | None = None
        self._buffer: datasets.Dataset | None = None
        self._builder: EpisodeBuilder | None = None
        self._label_lookup: dict[str, int] | None = None

    def _check_columns(self, available: Sequence[str]) -> None:
        missing = [c for c in self.columns if c not in available]
        if missing:
            hints = []
            for c in missing:
                close = difflib.get_close_matches(c, list(available), 1)
                hints.append(f"{c!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"Columns {', '.join(hints)} are not in the stream (columns: {list(available)}). Pass "
                "label_column=..., text_column=..., lang_column=... or columns=... ."
            )

    # -- reading the stream --------------------------------------------------------------------------------
    def _iter_batches(self) -> Iterator[dict[str, list]]:
        if isinstance(self.dataset, datasets.IterableDataset):
            yield from self.dataset.iter(batch_size=self.batch_size)
            return
        rows = iter(self.dataset)
        while chunk := list(itertools.islice(rows, self.batch_size)):
            self._check_columns(list(chunk[0]))
            yield {c: [row.get(c) for row in chunk] for c in self.columns}

    def fill(self, max_rows: int | None = None) -> StreamingEpisodes:
        """Read up to ``max_rows`` more rows of the stream (``None``: to its end) into the buffers; returns self."""
        if max_rows is not None and max_rows < 0:
            raise ValueError("max_rows must be non-negative.")
        if self._batches is None:
            self._batches = self._iter_batches()
        skipped_before = self.skipped
        budget = max_rows
        while budget is None or budget > 0:
            batch = self._pending
            self._pending = None
            if batch is None:
                batch = next(self._batches, None)
                if batch is None:
                    self.exhausted = True
                    break
                if self.rows_seen == 0 and self._features is None:
                    self._check_columns(list(batch))
            size = len(next(iter(batch.values()))) if batch else 0
            if budget is not None and size > budget:
                self._pending = {c: v[budget:] for c, v in batch.items()}
                batch = {c: v[:budget] for c, v in batch.items()}
                size = budget
            self._ingest(batch, size)
            if budget is not None:
                budget -= size
        self._buffer = self._builder = self._label_lookup = None
        if self.skipped > skipped_before:
            warnings.warn(f"Skipped {self.skipped - skipped_before} stream rows with a missing label or an empty "
                          "text.", stacklevel=2)  # fmt: skip
        return self

    def _ingest(self, batch: dict[str, list], size: int) -> None:
        start = self.rows_seen
        self.rows_seen += size
        if size == 0:
            return
        labels = batch[self.label_column]
        valid = np.array([x is not None for x in labels], dtype=bool)
        if self.text_column is not None:
            texts = batch[self.text_column]
            valid &= np.array([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=bool)
        rows = np.flatnonzero(valid)
        self.skipped += size - len(rows)
        if not len(rows):
            return
        if self.lang_column is not None:
            langs = batch[self.lang_column]
            keys = [(langs[i], labels[i]) for i in rows]
        else:
            keys = [labels[i] for i in rows]
        class_of = self._class_of
        for key in keys:
            if key not in class_of:
                class_of[key] = len(self._keys)
                self._keys.append(key)
                self._hashes.append(_class_hash(key))
                self._slots.append([])
        if len(self._seen) < len(self._keys):
            self._seen = np.r_[self._seen, np.zeros(len(self._keys) - len(self._seen), dtype=np.int64)]
        cid = np.fromiter((class_of[k] for k in keys), dtype=np.int64, count=len(keys))
        # rank of each row among the rows of its class so far: seen before this batch + position within it
        order = np.argsort(cid, kind="stable")
        sorted_cid = cid[order]
        starts = np.flatnonzero(np.r_[True, sorted_cid[1:] != sorted_cid[:-1]])
        within = np.arange(len(cid)) - np.repeat(starts, np.diff(np.r_[starts, len(cid)]))
        rank = np.empty_like(cid)
        rank[order] = self._seen[sorted_cid] + within
        np.add.at(self._seen, cid, 1)
        # algorithm R: row r of a class goes to slot r while r < capacity, else to slot j ~ U{0..r} if j < capacity
        hashes = np.asarray(self._hashes, dtype=np.uint64)[cid]
        with np.errstate(over="ignore"):
            z = _mix(_mix(hashes ^ np.uint64(self.seed)) ^ _mix(rank.astype(np.uint64)))
        u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        j = np.floor(u * (rank + 1)).astype(np.int64)
        slot = np.where(rank < self.capacity, rank, j)
        accepted = np.flatnonzero(slot < self.capacity)
        # rows of one batch that land in the same slot: the last one wins, as when read one at a time
        target = cid[accepted] * self.capacity + slot[accepted]
        _, last = np.unique(target[::-1], return_index=True)
        keep = np.sort(accepted[len(accepted) - 1 - last])
        columns = [batch[c] for c in self.columns]
        for p in keep.tolist():
            i = int(rows[p])
            entry = (start + i, *(col[i] for col in columns))
            buffer, s = self._slots[cid[p]], int(slot[p])
            if s >= len(buffer):  # slots below s not written yet are written later in this batch
                buffer.extend([None] * (s + 1 - len(buffer)))
            buffer[s] = entry

    # -- the buffer ----------------------------------------------------------------------------------------
    def class_counts(self) -> dict[Any, tuple[int, int]]:
        """Class key ((language, label) with ``lang_column``) -> (rows in its buffer, rows of it in the stream)."""
        return {k: (len(self._slots[c]), int(self._seen[c])) for k, c in self._class_of.items()}

    @property
    def buffer(self) -> datasets.Dataset:
        """The buffers as one Dataset (episode rows are positions in it); rebuilt after each ``fill``."""
        if self._buffer is None:
            if self._batches is None:
                raise RuntimeError("Nothing buffered yet: call fill() first.")
            data: dict[str, list] = {c: [] for c in (*self.columns, _STREAM_INDEX)}
            for key in _sort_keys(self._class_of):
                for entry in self._slots[self._class_of[key]]:
                    data[_STREAM_INDEX].append(entry[0])
                    for c, value in zip(self.columns, entry[1:]):
                        data[c].append(value)
            features = None
            if self._features is not None:
                features = datasets.Features({c: self._features[c] for c in self.columns})
                features[_STREAM_INDEX] = datasets.Value("int64")
            self._buffer = datasets.Dataset.from_dict(data, features=features)
        return self._buffer

    @property
    def builder(self) -> EpisodeBuilder:
        """An :class:`EpisodeBuilder` over ``buffer`` (class / language splits: ``builder.split_classes(...)``)."""
        if self._builder is None:
            if not self.buffer.num_rows:
                raise ValueError(
                    f"The buffers are empty after {self.rows_seen} stream rows ({self.skipped} skipped)."
                )
            self._builder = EpisodeBuilder(self.buffer, label_column=self.label_column, text_column=self.text_column,
                                           lang_column=self.lang_column)  # fmt: skip
        return self._builder

    def sampler(
        self,
        n_way: IntOrRange,
        k_shot: IntOrRange,
        q_query: IntOrRange,
        *,
        seed: int = 0,
        mode: str = "classes",
        classes: Sequence[str | int] | None = None,
        **kwargs: Any,
    ) -> EpisodeSampler:
        """Seeded episodes over the buffers (``EpisodeBuilder.sampler``'s arguments); a warning names every class
        whose buffer holds fewer than K + Q rows, with how many rows of it the stream had so far."""
        builder = self.builder
        need = (k_shot if isinstance(k_shot, int) else max(k_shot)) + (
            q_query if isinstance(q_query, int) else max(q_query))  # fmt: skip
        allowed = None if classes is None else set(builder.label_ids(classes))
        pooled = mode == "classes" or self.lang_column is None
        sizes: dict[tuple[Any, int], list[int]] = {}
        for key, (held, seen) in self.class_counts().items():
            lang, raw = key if self.lang_column is not None else (None, key)
            label = self._label_id(raw)
            if allowed is not None and label not in allowed:
                continue
            entry = sizes.setdefault((None if pooled else lang, label), [0, 0])
            entry[0] += held
            entry[1] += seen
        small = {(f"{lang}:" if lang is not None else "") + builder.label_names[label]: (held, seen)
                 for (lang, label), (held, seen) in sizes.items() if held < need}  # fmt: skip
        #: the classes left out of the last sampler (buffered rows), in full; its warning only counts them
        self.small_classes = {name: held for name, (held, _) in sorted(small.items())}
        if small:
            listing = ", ".join(f"{name}: {held} buffered of {seen} streamed"
                                for name, (held, seen) in sorted(small.items()))  # fmt: skip
            hint = (f" (capacity {self.capacity} < K + Q: raise capacity)" if self.capacity < need
                    else "" if self.exhausted else " (the stream is not read to its end: fill() more)")  # fmt: skip
            logger.info("Classes whose buffer holds fewer than K + Q = %d rows%s: %s", need, hint, listing)
            warnings.warn(f"{len(small)} class{'es' * (len(small) > 1)} whose buffer holds fewer than K + Q = {need} "
                          f"rows{hint} are left out of episodes that need that many; stream.small_classes lists "
                          f"them (logged by {logger.name} at INFO).", stacklevel=caller_stacklevel())  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Left out of episodes")  # said above, with buffer sizes
            return builder.sampler(n_way, k_shot, q_query, seed=seed, mode=mode, classes=classes, **kwargs)

    def _label_id(self, raw: Any) -> int:
        """The builder's label id of a label value as it came in the stream."""
        builder = self.builder
        if isinstance(builder.dataset.features[self.label_column], datasets.ClassLabel):
            return int(raw)
        if self._label_lookup is None:
            self._label_lookup = {name: i for i, name in enumerate(builder.label_names)}
        return self._label_lookup[str(raw)]

    def texts(self, episode: Episode) -> tuple[list[str], list[str]]:
        """Support and query sentences of an episode drawn from the current buffer."""
        return self.builder.texts(episode)

    def __repr__(self) -> str:
        return (f"StreamingEpisodes(classes={len(self._keys)}, capacity={self.capacity}, rows_seen={self.rows_seen}, "
                f"buffered={sum(len(s) for s in self._slots)}, exhausted={self.exhausted})")  # fmt: skip
