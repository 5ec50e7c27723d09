"""Class- and language-disjoint meta-train / meta-val / meta-test splits, and the check that they are.

Languages are compared by base language (``languages.py``): ``es_AR`` in meta-training leaks a held-out ``es``.
A variant the user names in ``allow_variants`` is a language of its own (only equal to itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .languages import language_groups, language_key


class SplitLeakError(ValueError):
    """A class (or language, or a variant of it) of one split is also in another."""


def split_values(
    values: Sequence,
    ratios: Sequence[float],
    seed: int,
    names: Sequence[str],
    *,
    kind: str = "class",
    allow_variants: Sequence[str] = (),
) -> dict[str, list]:
    """Seeded partition of ``values`` by ``ratios`` (normalised); each part gets at least one value.

    With ``kind="language"`` the units split are base languages (:func:`language_groups`), so that the variants of
    a language (``es``, ``es_AR``, ``es_MX``) land in one part; ``allow_variants`` codes are units of their own.
    Without variants the partition is the same as by code.
    """
    if len(ratios) != len(names):
        raise ValueError(f"{len(ratios)} ratios for {len(names)} split names {list(names)}.")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"Split ratios must be non-negative with a positive sum, got {list(ratios)}.")
    if allow_variants and kind != "language":
        raise ValueError(f"allow_variants is for language splits, not kind={kind!r}.")
    groups = language_groups(values, allow_variants) if kind == "language" else [[v] for v in values]
    positive = sum(1 for r in ratios if r > 0)
    if len(groups) < positive:
        what = f"base languages ({len(values)} codes)" if kind == "language" else "values"
        raise ValueError(f"{len(groups)} {what} cannot fill {positive} non-empty splits.")
    order = np.random.default_rng(seed).permutation(len(groups))
    fractions = np.asarray(ratios, dtype=np.float64) / sum(ratios)
    sizes = np.floor(fractions * len(groups)).astype(int)
    sizes[(fractions > 0) & (sizes == 0)] = 1
    while sizes.sum() > len(groups):
        sizes[np.argmax(sizes)] -= 1
    sizes[np.argmax(fractions)] += len(groups) - sizes.sum()
    bounds = np.r_[0, np.cumsum(sizes)]
    return {
        name: sorted(v for i in order[bounds[j] : bounds[j + 1]] for v in groups[i])
        for j, name in enumerate(names)
    }


@dataclass
class Splits:
    """Named, disjoint sets of classes (label ids) or languages; checked for leaks when built.

    Language splits are disjoint by base language; ``allow_variants`` names the codes that may sit apart from
    the rest of their language (``allow_variants=("es_AR",)`` with ``es`` held out), and nothing else may.
    """

    parts: dict[str, list]
    kind: str
    names: tuple[str, ...] = field(default=())
    allow_variants: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.allow_variants = tuple(self.allow_variants)
        self.check()

    def __getitem__(self, name: str) -> list:
        return self.parts[name]

    def __iter__(self):
        return iter(self.parts)

    def describe(self, value) -> str:
        return repr(self.names[value]) if self.kind == "class" and self.names else repr(value)

    def check(self) -> None:
        """Fail loudly when two splits share a class or language, or (languages) variants of one language."""
        if self.allow_variants and self.kind != "language":
            raise ValueError(f"allow_variants is for language splits, not kind={self.kind!r}.")
        seen: dict = {}
        for split, values in self.parts.items():
            for v in values:
                if v in seen and seen[v] != split:
                    raise SplitLeakError(
                        f"{self.kind.capitalize()} {self.describe(v)} is in both {seen[v]!r} and {split!r}: "
                        f"meta-test {'classes' if self.kind == 'class' else self.kind + 's'} must be unseen in meta-training."
                    )
                seen[v] = split
        if self.kind == "language":
            unknown = [code for code in self.allow_variants if code not in seen]
            if unknown:
                raise ValueError(
                    f"allow_variants names {unknown}, which are in no split (the splits hold {sorted(seen)}): "
                    "name variants that are in the splits."
                )
            self._check_variants()

    def _check_variants(self) -> None:
        """Variants of one base language in two splits: name those outside the last split holding the language
        (the meta-test side by convention) as the leak, and both fixes."""
        where: dict[tuple[str, str], dict[str, list[str]]] = {}
        for split, values in self.parts.items():
            for code in values:
                key = language_key(code, self.allow_variants)
                where.setdefault(key, {}).setdefault(split, []).append(code)
        leaks, lines = [], []
        for (base, _), by_split in where.items():
            if len(by_split) < 2:
                continue
            # The most held-out split (meta-test comes last) keeps the language: the others leak into it.
            home = list(by_split)[-1]
            leaks += [c for s, codes in by_split.items() if s != home for c in codes]
            lines.append(
                f"{base!r}: {by_split[home]} in {home!r} but "
                + ", ".join(f"{codes} in {s!r}" for s, codes in by_split.items() if s != home)
            )
        if leaks:
            raise SplitLeakError(
                f"Variants of one language are in different splits ({'; '.join(lines)}): meta-test languages "
                f"must be unseen in meta-training, and a regional or script variant shares most of its language. "
                f"Keep each language's variants in one split, or name the ones to keep apart on purpose: "
                f"allow_variants={(*self.allow_variants, *leaks)!r}."
            )


def check_disjoint(
    train: Sequence, test: Sequence, kind: str = "class", allow_variants: Sequence[str] = ()
) -> None:
    """Raise :class:`SplitLeakError` if meta-test ``test`` shares a value (for languages: a base language, unless
    the variant is in ``allow_variants``) with meta-train ``train``."""
    Splits({"train": list(train), "test": list(test)}, kind=kind, allow_variants=tuple(allow_variants))
