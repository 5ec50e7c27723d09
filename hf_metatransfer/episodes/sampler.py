"""Seeded N-way K-shot episodes over a GroupIndex: classes alone, or languages as tasks.

Episode ``i`` is a pure function of (seed, i) and the index (see ``random.py``), drawn in vectorised batches.
Modes:
- ``classes``: N classes, K support and Q query rows a class, languages ignored (or none);
- ``monolingual``: one language an episode (weighted), support and query in it;
- ``cross-lingual``: support in language A, query in language B != A (A from ``support_languages``, B from
  ``query_languages``).
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from .episode import Episode
from .index import GroupIndex
from .random import choose, episode_keys, subkeys, uniform, without_replacement

logger = logging.getLogger(__name__)

MODES = ("classes", "monolingual", "cross-lingual")
_SHAPE, _LANG, _CLASSES, _SUPPORT, _QUERY = range(5)  # streams of draws

IntOrRange = int | tuple[int, int]


def _as_range(value: IntOrRange, name: str) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else tuple(value)
    smallest = 0 if name == "q_query" else 1
    if not smallest <= lo <= hi:
        raise ValueError(f"{name}={value!r} must be a positive int or a (low, high) range with low <= high.")
    return int(lo), int(hi)


class EpisodeSampler:
    """Indexable, seeded source of episodes: ``sampler[i]`` or ``sampler.batch(ids)``.

    ``on_small_class`` says what happens to a class with fewer than K + Q rows (in a language): ``"skip"`` (a
    warning names it and its count; it is never sampled) or ``"error"``. An episode is never smaller than asked.
    """

    def __init__(
        self,
        index: GroupIndex,
        *,
        n_way: IntOrRange,
        k_shot: IntOrRange,
        q_query: IntOrRange = 0,
        seed: int = 0,
        mode: str = "classes",
        classes: Sequence[int] | None = None,
        languages: Sequence[str] | None = None,
        support_languages: Sequence[str] | None = None,
        query_languages: Sequence[str] | None = None,
        language_weights: dict[str, float] | None = None,
        on_small_class: str = "skip",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Unknown episode mode {mode!r}: use one of {MODES}.")
        if on_small_class not in ("skip", "error"):
            raise ValueError("on_small_class must be 'skip' or 'error'.")
        self.index, self.seed, self.mode = index, int(seed), mode
        self.n_range = _as_range(n_way, "n_way")
        self.k_range = _as_range(k_shot, "k_shot")
        self.q_range = _as_range(q_query, "q_query")
        self.on_small_class = on_small_class
        allowed = np.ones(len(index.label_names), dtype=bool)
        if classes is not None:
            allowed[:] = False
            allowed[np.asarray(list(classes), dtype=np.int64)] = True
        self.allowed_labels = allowed
        lang_id = {name: i for i, name in enumerate(index.lang_names)}

        def lang_ids(names: Sequence[str] | None) -> list[int]:
            if names is None:
                present = sorted(set(index.group_lang.tolist()))
                return present
            unknown = [n for n in names if n not in lang_id]
            if unknown:
                raise ValueError(f"Languages {unknown} are not in the dataset (it has {list(index.lang_names)}).")
            return [lang_id[n] for n in names]

        if mode == "classes":
            self.pairs = [(-1, -1)]
        elif mode == "monolingual":
            self.pairs = [(a, a) for a in lang_ids(languages)]
        else:
            support = lang_ids(support_languages or languages)
            query = lang_ids(query_languages or languages)
            self.pairs = [(a, b) for a in support for b in query if a != b]
            if not self.pairs:
                raise ValueError("Cross-lingual episodes need a support language different from a query language.")
        all_pairs = list(self.pairs)
        weights = np.array(
            [(language_weights or {}).get(index.lang_names[a] if a >= 0 else "", 1.0) for a, _ in self.pairs],
            dtype=np.float64,
        )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("language_weights must be non-negative with a positive sum.")
        self._pools: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._check_capacity()
        kept = [i for i, p in enumerate(all_pairs) if p in self.pairs]
        self.pair_cdf = np.cumsum(weights[kept]) / weights[kept].sum()

    # -- eligibility -------------------------------------------------------------------------------------------
    def _group_table(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(lang, label) -> (group, count); lang -1 pools every language (mode 'classes')."""
        index = self.index
        table: dict[tuple[int, int], tuple[int, int]] = {}
        for g, (lang, label, count) in enumerate(zip(index.group_lang, index.group_label, index.counts)):
            table[(int(lang), int(label))] = (g, int(count))
        return table

    def pool(self, pair: tuple[int, int], k: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eligible labels for (support lang, query lang) and K, Q: labels, support groups, query groups."""
        key = (*pair, k, q)
        if key not in self._pools:
            a, b = pair
            table = self._table
            labels, sup, qry = [], [], []
            for label in np.flatnonzero(self.allowed_labels):
                label = int(label)
                if a == -1:
                    entry = table.get((-1, label))
                    if entry and entry[1] >= k + q:
                        labels.append(label), sup.append(entry[0]), qry.append(entry[0])
                    continue
                sa, sb = table.get((a, label)), table.get((b, label))
                ok = sa and sb and (sa[1] >= k + q if a == b else (sa[1] >= k and sb[1] >= q))
                if ok:
                    labels.append(label), sup.append(sa[0]), qry.append(sb[0])
            self._pools[key] = (np.array(labels, np.int64), np.array(sup, np.int64), np.array(qry, np.int64))
        return self._pools[key]

    def _check_capacity(self) -> None:
        """Name every class too small for K + Q and every language with fewer than N eligible classes."""
        self._table = self._group_table() if self.mode != "classes" else self._pooled_table()
        k, q, n = self.k_range[1], self.q_range[1], self.n_range[1]
        small: dict[str, dict[str, int]] = defaultdict(dict)
        for (lang, label), (_, count) in self._table.items():
            if self.allowed_labels[label] and count < k + q:
                small[self._lang_name(lang)][self.index.label_names[label]] = count
        if small:
            listing = "; ".join(f"{lang or 'all'}: {classes}" for lang, classes in sorted(small.items()))
            message = f"Classes with fewer than K + Q = {k + q} examples: {listing}"
            if self.on_small_class == "error":
                raise ValueError(message + ". Lower K or Q, or pass on_small_class='skip' to leave them out.")
            warnings.warn(message + "; they are skipped in episodes that need that many.", stacklevel=3)
        usable = []
        for pair in self.pairs:
            labels, _, _ = self.pool(pair, k, q)
            if len(labels) >= n:
                usable.append(pair)
            else:
                where = "" if pair[0] == -1 else f" in {self._pair_name(pair)}"
                logger.warning("Only %d classes have enough examples%s for %d-way episodes.", len(labels), where, n)
        if not usable:
            offered = max(len(self.pool(p, k, q)[0]) for p in self.pairs)
            raise ValueError(
                f"N = {n} is larger than the classes on offer: at most {offered} classes have K + Q = {k + q} "
                f"examples{'' if self.mode == 'classes' else ' in any one language (pair)'}. Lower n_way, k_shot or "
                "q_query, or add classes."
            )
        if len(usable) < len(self.pairs):
            dropped = [self._pair_name(p) for p in self.pairs if p not in usable]
            warnings.warn(f"Languages with too few classes for {n}-way episodes are left out: {dropped}", stacklevel=3)
            self.pairs = usable

    def _pooled_table(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Mode 'classes' over an index with languages needs one group a label: rebuild over labels alone."""
        if len(set(self.index.group_lang.tolist())) > 1:
            labels = np.empty(len(self.index.order), dtype=np.int64)
            for g in range(self.index.num_groups):
                labels[self.index.order[self.index.offsets[g] : self.index.offsets[g + 1]]] = self.index.group_label[g]
            self.index = GroupIndex.build(labels, self.index.label_names)
        return {(-1, int(label)): (g, int(c)) for g, (label, c) in
                enumerate(zip(self.index.group_label, self.index.counts))}  # fmt: skip

    def _lang_name(self, lang: int) -> str:
        return self.index.lang_names[lang] if lang >= 0 else ""

    def _pair_name(self, pair: tuple[int, int]) -> str:
        a, b = (self._lang_name(x) for x in pair)
        return a if a == b else f"{a}->{b}"

    # -- sampling ----------------------------------------------------------------------------------------------
    def __getitem__(self, episode_id: int) -> Episode:
        return self.batch([episode_id])[0]

    def batch(self, episode_ids: Iterable[int]) -> list[Episode]:
        """Episodes for these ids, drawn together (vectorised per shape and language pair)."""
        ids = np.asarray(list(episode_ids), dtype=np.int64)
        out: list[Episode | None] = [None] * len(ids)
        for (pair, n, k, q), positions in self._plan(ids).items():
            for pos, episode in zip(positions, self._draw(ids[positions], pair, n, k, q)):
                out[pos] = episode
        return out  # type: ignore[return-value]

    def _plan(self, ids: np.ndarray) -> dict[tuple, np.ndarray]:
        """Group episode ids by (language pair, N, K, Q), each drawn from its own stream."""
        shape_u = uniform(episode_keys(self.seed, ids, _SHAPE), (3,))
        sizes = [lo + np.floor(shape_u[:, j] * (hi - lo + 1)).astype(np.int64)
                 for j, (lo, hi) in enumerate((self.n_range, self.k_range, self.q_range))]  # fmt: skip
        lang_u = uniform(episode_keys(self.seed, ids, _LANG), (1,))[:, 0]
        pair_idx = np.minimum(np.searchsorted(self.pair_cdf, lang_u, side="right"), len(self.pairs) - 1)
        plan: dict[tuple, list[int]] = defaultdict(list)
        for i in range(len(ids)):
            plan[(self.pairs[pair_idx[i]], int(sizes[0][i]), int(sizes[1][i]), int(sizes[2][i]))].append(i)
        return {key: np.array(v) for key, v in plan.items()}

    def _draw(self, ids: np.ndarray, pair: tuple[int, int], n: int, k: int, q: int) -> list[Episode]:
        labels, sup_groups, qry_groups = self.pool(pair, k, q)
        if len(labels) < n:
            raise ValueError(
                f"{n}-way episodes in {self._pair_name(pair) or 'the dataset'} need {n} classes with K + Q = {k + q}"
                f" examples; only {len(labels)} have them. Lower n_way or the shots."
            )
        slots = choose(episode_keys(self.seed, ids, _CLASSES), len(labels), n)  # (B, n)
        counts = self.index.counts
        support_keys = subkeys(episode_keys(self.seed, ids, _SUPPORT), n)
        if pair[0] == pair[1]:
            offsets = without_replacement(support_keys, counts[sup_groups[slots]], k + q)
            support = self.index.rows(sup_groups[slots][..., None], offsets[..., :k])
            query = self.index.rows(qry_groups[slots][..., None], offsets[..., k:])
        else:
            query_keys = subkeys(episode_keys(self.seed, ids, _QUERY), n)
            support = self.index.rows(sup_groups[slots][..., None],
                                      without_replacement(support_keys, counts[sup_groups[slots]], k))
            query = self.index.rows(qry_groups[slots][..., None],
                                    without_replacement(query_keys, counts[qry_groups[slots]], q))  # fmt: skip
        chosen = labels[slots]
        s_lang, q_lang = self._lang_name(pair[0]), self._lang_name(pair[1])
        names = self.index.label_names
        return [
            Episode(
                episode_id=int(ids[b]),
                classes=chosen[b],
                support=support[b].reshape(-1),
                support_labels=np.repeat(np.arange(n), k),
                query=query[b].reshape(-1),
                query_labels=np.repeat(np.arange(n), q),
                support_lang=s_lang,
                query_lang=q_lang,
                class_names=tuple(names[c] for c in chosen[b]),
            )
            for b in range(len(ids))
        ]
