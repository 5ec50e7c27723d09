"""The index of a dataset by class (and language): row numbers grouped by key, O(rows) integers, no text.

Rows are stably sorted by (language, label); group g holds ``order[offsets[g]:offsets[g + 1]]``. Built with one
``argsort`` over Arrow columns read without copying, so a million rows index in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupIndex:
    """Row numbers grouped by (language, label).

    ``group_label[g]`` and ``group_lang[g]`` name group g (``group_lang`` is all zeros without languages);
    ``label_names`` / ``lang_names`` turn ids back into the dataset's names.
    """

    order: np.ndarray
    offsets: np.ndarray
    group_label: np.ndarray
    group_lang: np.ndarray
    label_names: tuple[str, ...]
    lang_names: tuple[str, ...]

    @classmethod
    def build(
        cls,
        labels: np.ndarray,
        label_names: tuple[str, ...],
        langs: np.ndarray | None = None,
        lang_names: tuple[str, ...] = ("",),
    ) -> GroupIndex:
        labels = np.asarray(labels, dtype=np.int64)
        langs = np.zeros_like(labels) if langs is None else np.asarray(langs, dtype=np.int64)
        key = langs * (len(label_names) + 1) + labels
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = (
            np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]]) if len(key) else np.array([], int)
        )
        offsets = np.r_[starts, len(key)].astype(np.int64)
        group_key = sorted_key[starts]
        return cls(
            order=order.astype(np.int64),
            offsets=offsets,
            group_label=group_key % (len(label_names) + 1),
            group_lang=group_key // (len(label_names) + 1),
            label_names=tuple(label_names),
            lang_names=tuple(lang_names),
        )

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_groups(self) -> int:
        return len(self.offsets) - 1

    def groups_of_lang(self, lang: int) -> np.ndarray:
        return np.flatnonzero(self.group_lang == lang)

    def group(self, lang: int, label: int) -> int | None:
        hits = np.flatnonzero((self.group_lang == lang) & (self.group_label == label))
        return int(hits[0]) if len(hits) else None

    def rows(self, groups: np.ndarray, offsets_in_group: np.ndarray) -> np.ndarray:
        """Dataset rows at the given offsets inside the given groups (broadcast together)."""
        return self.order[self.offsets[groups] + offsets_in_group]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.order, self.offsets, self.group_label, self.group_lang))
