"""An episode: one few-shot task as dataset row numbers; a fixed set of them round-trips through a Dataset.

Saved evaluation episodes (``save_to_disk`` / ``push_to_hub``) let a published result be re-scored on the very
same tasks. Row numbers mean nothing without the data they index, so a saved set can carry a fingerprint of it:
a hash of each episode's sentences and their labels (column ``texts_sha256``) and the data options that built
the data (column ``data_options``, JSON); :func:`verify_episodes` refuses data that no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

HASH_COLUMN, OPTIONS_COLUMN = "texts_sha256", "data_options"
_ARRAYS = ("classes", "support", "support_labels", "query", "query_labels")


def _int_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a 1-D int64 array (the collator hands labels to ``torch.from_numpy``), or a ValueError."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise ValueError(
            f"Episode.{name} is not a flat sequence of integers: pass a 1-D list or array."
        ) from None
    if array.dtype.kind not in "iu" and array.size:
        raise ValueError(f"Episode.{name} holds {array.dtype} values: row numbers and labels are integers.")
    if array.ndim != 1:
        raise ValueError(
            f"Episode.{name} has shape {array.shape}: pass a flat (1-D) sequence, e.g. .reshape(-1)."
        )
    return array.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Episode:
    """One few-shot task: dataset row numbers, episode labels 0..N-1 and the original labels they stand for.

    Lists and other array-likes become int64 arrays; a malformed episode is refused here rather than when it is
    collated or scored.
    """

    episode_id: int
    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    support_lang: str = ""
    query_lang: str = ""
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            object.__setattr__(self, name, _int_array(name, getattr(self, name)))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        n = len(self.classes)
        if n == 0:
            raise ValueError("Episode.classes is empty: an episode needs at least one class.")
        if len(set(self.classes.tolist())) != n or self.classes.min() < 0:
            raise ValueError(f"Episode.classes {self.classes.tolist()} repeats a class or holds a negative id: "
                             "give each class once, by its label id (0 and up).")  # fmt: skip
        if self.class_names and len(self.class_names) != n:
            raise ValueError(f"Episode.class_names has {len(self.class_names)} names for {n} classes: give one "
                             "name a class, in the order of classes (or none).")  # fmt: skip
        for part in ("support", "query"):
            rows, labels = getattr(self, part), getattr(self, f"{part}_labels")
            if len(rows) == 0:
                raise ValueError(f"Episode.{part} is empty: an episode adapts on its support examples and is "
                                 "scored on its query examples; give it at least one of each.")  # fmt: skip
            if len(labels) != len(rows):
                raise ValueError(f"Episode.{part}_labels has {len(labels)} labels for {len(rows)} {part} rows: "
                                 "give one label a row.")  # fmt: skip
            if rows.min() < 0:
                raise ValueError(f"Episode.{part} holds negative row numbers {rows[rows < 0][:5].tolist()}: "
                                 "rows are positions in the dataset, 0 and up.")  # fmt: skip
            if labels.min() < 0 or labels.max() >= n:
                outside = labels[(labels < 0) | (labels >= n)]
                raise ValueError(f"Episode.{part}_labels holds {outside[:5].tolist()}, outside 0..{n - 1}: labels "
                                 "are positions in classes (episode labels), not the original class ids.")  # fmt: skip
        missing = np.flatnonzero(np.bincount(self.support_labels, minlength=n) == 0)
        if len(missing):
            raise ValueError(f"Episode classes {missing.tolist()} have no support example: give every class 0.."
                             f"{n - 1} at least one support row, or leave the class out.")  # fmt: skip

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {
            "episode_id": self.episode_id,
            "classes": self.classes.tolist(),
            "class_names": list(self.class_names),
            "support": self.support.tolist(),
            "support_labels": self.support_labels.tolist(),
            "query": self.query.tolist(),
            "query_labels": self.query_labels.tolist(),
            "support_lang": self.support_lang,
            "query_lang": self.query_lang,
        }

    @classmethod
    def from_dict(cls, row: dict) -> Episode:
        return cls(episode_id=int(row["episode_id"]), support_lang=row["support_lang"], query_lang=row["query_lang"],
                   class_names=tuple(row["class_names"]), **{k: row[k] for k in _ARRAYS})  # fmt: skip


def _texts_sha256(
    episodes: Sequence[Episode], source: datasets.Dataset, text_column: str, label_column: str | None
) -> list[str]:
    """Per episode, a hash of what its rows hold in ``source``: each support and query text and its label."""
    columns = [text_column] + ([label_column] if label_column else [])
    missing = [c for c in columns if c not in source.column_names]
    if missing:
        raise ValueError(f"The data has no column {missing} (it has {source.column_names}): pass text_column=... "
                         "and label_column=... (None: no label column).")  # fmt: skip
    if not episodes:
        return []
    rows = np.concatenate([np.r_[e.support, e.query] for e in episodes]).tolist()
    table = source.select_columns(columns)[rows]
    labels = table[label_column] if label_column else [None] * len(rows)
    if label_column and isinstance(source.features[label_column], datasets.ClassLabel):
        labels = source.features[label_column].int2str(labels)
    items = [[text, None if label is None else str(label)] for text, label in zip(table[text_column], labels)]
    digests, start = [], 0
    for e in episodes:
        middle, end = start + len(e.support), start + len(e.support) + len(e.query)
        sides = [items[start:middle], items[middle:end]]
        digests.append(hashlib.sha256(json.dumps(sides, ensure_ascii=False).encode()).hexdigest())
        start = end
    return digests


def episodes_to_dataset(
    episodes: Sequence[Episode],
    source: datasets.Dataset | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    text_column: str = "text",
    label_column: str | None = "label",
) -> datasets.Dataset:
    """A fixed set of (evaluation) episodes as a Dataset: save it, push it, re-score on the same episodes.

    With ``source`` (the dataset the rows index) each row also carries its fingerprint: ``texts_sha256`` (its
    sentences and labels in ``source``) and ``data_options`` (``options``, what built ``source``, as JSON). Both
    are plain columns, so they survive ``save_to_disk`` and ``push_to_hub`` (which drops the info's description).
    """
    rows = [e.to_dict() for e in episodes]
    if source is None:
        if options is not None:
            raise ValueError(
                "options describe the data the episodes index: pass that dataset as source=... too."
            )
        return datasets.Dataset.from_list(rows)
    saved = json.dumps(dict(options or {}), sort_keys=True)
    for row, digest in zip(rows, _texts_sha256(episodes, source, text_column, label_column)):
        row.update({HASH_COLUMN: digest, OPTIONS_COLUMN: saved})
    return datasets.Dataset.from_list(rows)


def episodes_from_dataset(dataset: datasets.Dataset) -> list[Episode]:
    return [Episode.from_dict(row) for row in dataset]


def _spell(name: str, value: Any, cli_flags: bool) -> str:
    """How to pass an option: ``--languages en de`` on a command line, else ``languages=['en', 'de']``."""
    if not cli_flags:
        return f"{name}={value!r}"
    if value is None:
        return f"no --{name}"
    values = value if isinstance(value, list) else [value]
    return " ".join([f"--{name}", *map(str, values)])


def verify_episodes(
    episodes: datasets.Dataset,
    source: datasets.Dataset,
    options: Mapping[str, Any] | None = None,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    cli_flags: bool = False,
) -> None:
    """Refuse saved episodes whose rows would point at other sentences in ``source`` than when they were saved.

    ``options`` are the data options now; each one the episodes recorded must be equal (options only one side
    has are not compared). Then every episode's ``texts_sha256`` is recomputed from ``source``. Episodes saved
    without a fingerprint are only range-checked, with a warning. ``cli_flags`` spells the fix as flags.
    """
    now = json.loads(json.dumps(dict(options or {})))  # the JSON form, as saved (tuples become lists)
    recorded = OPTIONS_COLUMN in episodes.column_names
    differ = {}
    for saved in (json.loads(s) for s in sorted(set(episodes[OPTIONS_COLUMN]))) if recorded else ():
        differ |= {k: (saved[k], now[k]) for k in sorted(saved.keys() & now.keys()) if saved[k] != now[k]}
    if differ:
        listing = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in differ.items())
        fix = " ".join(_spell(k, old, cli_flags) for k, (old, _) in differ.items())
        raise ValueError(f"These episodes were saved from other data: {listing}. Their row numbers would point at "
                         f"other sentences. Pass the data options of the run that saved them: {fix}.")  # fmt: skip
    loaded = episodes_from_dataset(episodes)
    beyond = [e.episode_id for e in loaded if max(e.support.max(), e.query.max()) >= len(source)]
    if beyond:
        raise ValueError(f"Episodes {beyond[:5]} point past the {len(source)} rows of the data: they were saved "
                         "from other data. Build the data with the options of the run that saved them (languages, "
                         "splits, slots, cap, seed).")  # fmt: skip
    if HASH_COLUMN not in episodes.column_names:
        warnings.warn("These episodes carry no fingerprint (saved before hf-metatransfer recorded one), so they "
                      "cannot be verified against the data: make sure the data options are those of the run that "
                      "saved them.", UserWarning, stacklevel=2)  # fmt: skip
        return
    current = _texts_sha256(loaded, source, text_column, label_column)
    changed = [e.episode_id for e, old, new in zip(loaded, episodes[HASH_COLUMN], current) if old != new]
    if changed:
        raise ValueError(f"The sentences of {len(changed)} of {len(loaded)} saved episodes (ids {changed[:5]}) "
                         "differ from the data now, although the recorded data options agree: the data changed "
                         "since they were saved (another version of the dataset or of the package it comes "
                         "from?). Score them on the data they were saved from, or draw new episodes.")  # fmt: skip
