"""A user's own episodes in one call: (text, label) pairs, tables or files become Episodes, tokenised texts and
their collator, so ``meta_test(model, method, user_episodes(data, tokenizer))`` needs nothing else.

Accepted ``data`` (``text`` and ``label`` are the default column names):

- a list of episodes, each ``{"support": S, "query": Q}``, with S and Q lists of ``(text, label)`` pairs or of
  ``{"text": ..., "label": ...}`` dicts, a ``datasets.Dataset`` or a pandas DataFrame;
- one table for the whole split (Dataset, DataFrame or list of dicts) with columns ``episode``, ``split``
  (``"support"`` or ``"query"``), ``text`` and ``label``; or a table with one episode a row (``support``, ``query``);
- a path: a JSONL file (one episode or one table row a line), a JSON list, a CSV or Parquet table, or a folder
  saved with ``save_to_disk``.

Labels may be strings or integers. In each episode they become 0..N-1 in the order they first appear in its
support set; ``class_names`` keep them and ``classes`` number them across the whole set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path
from typing import Any, overload

import datasets
import pandas as pd

from .collate import EpisodeCollator, TokenStore, tokenize_dataset
from .episode import Episode, episodes_from_dataset, verify_episodes

SIDES = ("support", "query")
Pairs = list[tuple[str, Any]]
FORMS = ("a list of episodes {'support': [(text, label), ...], 'query': [...]}, one table with columns episode, "
         "split, text, label (Dataset, DataFrame or list of dicts), or a path to a .jsonl, .json, .csv or .parquet "
         "file or a save_to_disk folder")  # fmt: skip


@dataclass(frozen=True, repr=False)
class UserEpisodes(Sequence[Episode]):
    """Episodes whose rows index ``dataset`` (their unique texts, tokenised once), and the collator over it.

    A sequence of :class:`Episode`; a slice keeps the dataset and the collator, so it can be scored alone.
    """

    episodes: list[Episode]
    dataset: datasets.Dataset
    collate: EpisodeCollator

    @overload
    def __getitem__(self, index: int) -> Episode: ...
    @overload
    def __getitem__(self, index: slice) -> UserEpisodes: ...
    def __getitem__(self, index: int | slice) -> Episode | UserEpisodes:
        if isinstance(index, slice):
            return replace(self, episodes=self.episodes[index])
        return self.episodes[index]

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)

    def __repr__(self) -> str:
        return f"UserEpisodes({len(self.episodes)} episodes over {len(self.dataset)} texts)"


def user_episodes(
    data: Any,
    tokenizer: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int | None = 128,
    prefix: str | None = None,
) -> UserEpisodes:
    """Episodes from ``data`` (any form of the module docstring), tokenised with ``tokenizer``, ready for
    ``meta_test``. ``prefix`` goes before every text: by default the model's input convention (e5's ``"query: "``,
    see :func:`tokenize_dataset`); ``""`` for none."""
    raw = _episodes(data, text_column, label_column)
    if not raw:
        raise ValueError(f"No episodes in the data: give {FORMS}.")
    rows: dict[str, int] = {}  # text -> row of the dataset: each unique text is tokenised once
    class_ids: dict[Any, int] = {}  # label -> id across the whole set (Episode.classes)
    episodes = []
    for position, (name, sides) in enumerate(raw):
        for side in SIDES:
            if not sides[side]:
                raise ValueError(f"Episode {name} has no {side} examples: an episode adapts on its support "
                                 "examples and is scored on its query examples; give it at least one of each.")  # fmt: skip
        local: dict[Any, int] = {}  # label -> episode label, in order of first appearance in the support set
        for _, label in sides["support"]:
            local.setdefault(label, len(local))
        missing = [label for _, label in sides["query"] if label not in local]
        if missing:
            raise ValueError(f"Episode {name}: query label {missing[0]!r} has no support example (support labels: "
                             f"{list(local)}): every query label must be one of the episode's support labels.")  # fmt: skip
        ids = {side: [rows.setdefault(text, len(rows)) for text, _ in sides[side]] for side in SIDES}
        episodes.append(Episode(
            episode_id=position,
            classes=[class_ids.setdefault(label, len(class_ids)) for label in local],
            support=ids["support"], support_labels=[local[label] for _, label in sides["support"]],
            query=ids["query"], query_labels=[local[label] for _, label in sides["query"]],
            class_names=tuple(str(label) for label in local),
        ))  # fmt: skip
    tokenized = tokenize_dataset(datasets.Dataset.from_dict({"text": list(rows)}), tokenizer,
                                 max_length=max_length, prefix=prefix)  # fmt: skip
    return UserEpisodes(episodes, tokenized, EpisodeCollator(TokenStore(tokenized, tokenizer.pad_token_id)))


def saved_episodes(
    saved: str | os.PathLike | datasets.Dataset,
    source: datasets.Dataset,
    tokenizer: Any,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    options: Mapping[str, Any] | None = None,
    max_length: int | None = 128,
    prefix: str | None = None,
) -> UserEpisodes:
    """Saved episodes (``episodes_to_dataset``: a folder, a Hub dataset repo or the Dataset) over ``source``, the
    data their row numbers index: checked against it (:func:`verify_episodes`), then tokenised with ``tokenizer``."""
    if not isinstance(saved, datasets.Dataset):
        saved = load_episode_dataset(str(saved))
    verify_episodes(saved, source, options, text_column=text_column, label_column=label_column)
    tokenized = tokenize_dataset(source, tokenizer, text_column, max_length=max_length, prefix=prefix)
    return UserEpisodes(episodes_from_dataset(saved), tokenized,
                        EpisodeCollator(TokenStore(tokenized, tokenizer.pad_token_id)))  # fmt: skip


def load_episode_dataset(source: str) -> datasets.Dataset:
    """A saved folder, or a pushed dataset repo (``push_episodes`` writes the split 'test')."""
    if os.path.isdir(source):
        return datasets.load_from_disk(source)
    splits = datasets.load_dataset(source)
    return splits[next(iter(splits))] if len(splits) == 1 else splits["test"]


def _episodes(data: Any, text_column: str, label_column: str) -> list[tuple[str, dict[str, Pairs]]]:
    """``(name for messages, {"support": pairs, "query": pairs})`` for each episode, in order."""
    if isinstance(data, (str, os.PathLike)):
        data = _read(Path(data))
    if isinstance(data, datasets.Dataset):
        data = _rows(data, label_column)
    elif isinstance(data, pd.DataFrame):
        data = data.to_dict("records")
    if (
        not isinstance(data, Sequence)
        or isinstance(data, str)
        or not all(isinstance(i, Mapping) for i in data)
    ):
        raise ValueError(f"Cannot read episodes from {type(data).__name__}: give {FORMS}.")
    if data and "episode" in data[0] and "split" in data[0]:
        return _table(data, text_column, label_column)
    episodes = []
    for i, item in enumerate(data):
        if not all(side in item for side in SIDES):
            raise ValueError(f"Episode {i} has keys {list(item)}: an episode has 'support' and 'query' (or the "
                             "data is one table with columns episode, split, text, label).")  # fmt: skip
        where = {side: f"the {side} set of episode {i}" for side in SIDES}
        episodes.append((str(i), {s: _pairs(item[s], text_column, label_column, where[s]) for s in SIDES}))
    return episodes


def _read(path: Path) -> Any:
    """The contents of a file or ``save_to_disk`` folder, as a list of dicts, a DataFrame or a Dataset."""
    if not path.exists():
        raise FileNotFoundError(f"No episodes file or folder {path}.")
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: episodes are read from .jsonl, .json, .csv or .parquet files or a folder "
                         "saved with save_to_disk.")  # fmt: skip
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(
                f"{path} holds a JSON {type(items).__name__}: give a list of episodes (or of rows)."
            )
        return items
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path} line {number} is not JSON ({err.msg}): one episode a line."
                ) from None
    return items


def _rows(table: datasets.Dataset, label_column: str) -> list[dict]:
    """A Dataset's rows, a ``ClassLabel`` column as its names: episodes show the classes as the user knows them."""
    rows = table.to_list()
    feature = table.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        for row in rows:
            row[label_column] = feature.int2str(row[label_column])
    return rows


def _table(rows: list[Mapping], text_column: str, label_column: str) -> list[tuple[str, dict[str, Pairs]]]:
    """Rows of one table (``episode``, ``split``, text, label) grouped into episodes, in order of appearance."""
    grouped: dict[Any, dict[str, list]] = {}
    for number, row in enumerate(rows):
        missing = [c for c in ("episode", "split", text_column, label_column) if c not in row]
        if missing:
            raise ValueError(f"Row {number} of the episodes table has no {missing} (it has {list(row)}): a table "
                             f"of episodes has columns episode, split, {text_column} and {label_column} "
                             "(text_column=..., label_column=... name others).")  # fmt: skip
        if row["split"] not in SIDES:
            raise ValueError(f"Row {number} of the episodes table has split {row['split']!r}: use 'support' or "
                             "'query'.")  # fmt: skip
        name = int(row["episode"]) if _is_int(row["episode"]) else row["episode"]
        grouped.setdefault(name, {side: [] for side in SIDES})[row["split"]].append(row)
    return [(repr(name), {side: _pairs(sides[side], text_column, label_column, f"the {side} set of episode {name!r}")
                          for side in SIDES}) for name, sides in grouped.items()]  # fmt: skip


def _pairs(side: Any, text_column: str, label_column: str, where: str) -> Pairs:
    """One side of an episode as checked ``(text, label)`` pairs, from any of the accepted forms."""
    if isinstance(side, datasets.Dataset):
        side = _rows(side, label_column)
    elif isinstance(side, pd.DataFrame):
        side = side.to_dict("records")
    if not isinstance(side, Sequence) or isinstance(side, str):
        raise ValueError(f"Got a {type(side).__name__} for {where}: give a list of (text, label) pairs, "
                         f"of {{{text_column!r}: ..., {label_column!r}: ...}} dicts, a Dataset or a DataFrame.")  # fmt: skip
    pairs = []
    for item in side:
        if isinstance(item, Mapping):
            if text_column not in item or label_column not in item:
                raise ValueError(f"An example of {where} has keys {list(item)}, not {text_column!r} and "
                                 f"{label_column!r}: pass text_column=... and label_column=....")  # fmt: skip
            text, label = item[text_column], item[label_column]
        elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
            text, label = item
        elif _is_int(item):
            raise ValueError(f"Found row numbers in {where}, as in episodes saved by episodes_to_dataset: "
                             "load those with saved_episodes(path, source_dataset, tokenizer) (the meta-test "
                             "recipe: --episodes).")  # fmt: skip
        else:
            raise ValueError(f"An example of {where} is {item!r}: give (text, label) pairs.")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"An example of {where} has text {text!r}: texts are non-blank strings.")
        if not (isinstance(label, str) or _is_int(label)):
            raise ValueError(f"An example of {where} has label {label!r} ({type(label).__name__}): labels are "
                             "strings or integers.")  # fmt: skip
        pairs.append((text, label if isinstance(label, str) else int(label)))
    return pairs


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
