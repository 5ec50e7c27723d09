"""An episode: one few-shot task as dataset row numbers; a fixed set of them round-trips through a Dataset.

Saved evaluation episodes (``save_to_disk`` / ``push_to_hub``) let a published result be re-scored on the very
same tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np


@dataclass(frozen=True)
class Episode:
    """One few-shot task: dataset row numbers, episode labels 0..N-1 and the original labels they stand for."""

    episode_id: int
    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    support_lang: str = ""
    query_lang: str = ""
    class_names: tuple[str, ...] = field(default=())

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
        arrays = {k: np.asarray(row[k], dtype=np.int64) for k in ("classes", "support", "support_labels", "query",
                                                                 "query_labels")}  # fmt: skip
        return cls(episode_id=int(row["episode_id"]), support_lang=row["support_lang"], query_lang=row["query_lang"],
                   class_names=tuple(row["class_names"]), **arrays)  # fmt: skip


def episodes_to_dataset(episodes: Sequence[Episode]) -> datasets.Dataset:
    """A fixed set of (evaluation) episodes as a Dataset: save it, push it, re-score on the same episodes."""
    return datasets.Dataset.from_list([e.to_dict() for e in episodes])


def episodes_from_dataset(dataset: datasets.Dataset) -> list[Episode]:
    return [Episode.from_dict(row) for row in dataset]
