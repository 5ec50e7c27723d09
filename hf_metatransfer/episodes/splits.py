"""Class- and language-disjoint meta-train / meta-val / meta-test splits, and the check that they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class SplitLeakError(ValueError):
    """A class (or language) of one split is also in another."""


def split_values(
    values: Sequence, ratios: Sequence[float], seed: int, names: Sequence[str]
) -> dict[str, list]:
    """Seeded partition of ``values`` by ``ratios`` (normalised); each part gets at least one value."""
    if len(ratios) != len(names):
        raise ValueError(f"{len(ratios)} ratios for {len(names)} split names {list(names)}.")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"Split ratios must be non-negative with a positive sum, got {list(ratios)}.")
    positive = sum(1 for r in ratios if r > 0)
    if len(values) < positive:
        raise ValueError(f"{len(values)} values cannot fill {positive} non-empty splits.")
    order = np.random.default_rng(seed).permutation(len(values))
    fractions = np.asarray(ratios, dtype=np.float64) / sum(ratios)
    sizes = np.floor(fractions * len(values)).astype(int)
    sizes[(fractions > 0) & (sizes == 0)] = 1
    while sizes.sum() > len(values):
        sizes[np.argmax(sizes)] -= 1
    sizes[np.argmax(fractions)] += len(values) - sizes.sum()
    bounds = np.r_[0, np.cumsum(sizes)]
    return {name: sorted(values[i] for i in order[bounds[j] : bounds[j + 1]]) for j, name in enumerate(names)}


@dataclass
class Splits:
    """Named, disjoint sets of classes (label ids) or languages; checked for leaks when built."""

    parts: dict[str, list]
    kind: str
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.check()

    def __getitem__(self, name: str) -> list:
        return self.parts[name]

    def __iter__(self):
        return iter(self.parts)

    def describe(self, value) -> str:
        return repr(self.names[value]) if self.kind == "class" and self.names else repr(value)

    def check(self) -> None:
        """Fail loudly when two splits share a class (or language)."""
        seen: dict = {}
        for split, values in self.parts.items():
            for v in values:
                if v in seen and seen[v] != split:
                    raise SplitLeakError(
                        f"{self.kind.capitalize()} {self.describe(v)} is in both {seen[v]!r} and {split!r}: "
                        f"meta-test {'classes' if self.kind == 'class' else self.kind + 's'} must be unseen in meta-training."
                    )
                seen[v] = split


def check_disjoint(train: Sequence, test: Sequence, kind: str = "class") -> None:
    """Raise :class:`SplitLeakError` if meta-test ``test`` shares a value with meta-train ``train``."""
    Splits({"train": list(train), "test": list(test)}, kind=kind)
