"""Seeded N-way K-shot episodes over a GroupIndex: classes alone, or languages as tasks.

Episode ``i`` is a pure function of (seed, i) and the index (see ``random.py``), drawn in vectorised batches.
Modes:
- ``classes``: N classes, K support and Q query rows a class, languages ignored (or none);
- ``monolingual``: one language an episode (weighted), support and query in it;
- ``cross-lingual``: support in language A, query in language B != A (A from ``support_languages``, B from
  ``query_languages``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from .episode import Episode
from .index import GroupIndex
from .random import episode_keys, subkeys, uniform, without_replacement
from .report import SamplerReport, caller_stacklevel
from .report import logger as report_logger

MODES = ("classes", "monolingual", "cross-lingual")
_SHAPE, _LANG, _CLASSES, _SUPPORT, _QUERY = range(5)  # streams of draws

IntOrRange = int | tuple[int, int]


_COUNTS = {"n_way": "classes an episode", "k_shot": "support examples a class (adaptation needs one)",
           "q_query": "query examples a class (an episode is scored on its queries)"}  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _as_range(value: IntOrRange, name: str) -> tuple[int, int]:
    """``(low, high)`` of an int or a range, each at least 1: an episode needs a class, a shot and a query."""
    if _is_int(value):
        lo = hi = int(value)  # type: ignore[arg-type]
    elif isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_int, value)):
        lo, hi = int(value[0]), int(value[1])
    else:
        raise ValueError(f"{name}={value!r}: pass an int or a (low, high) pair of ints.")
    if lo < 1:
        raise ValueError(f"{name}={value!r}: {name} counts {_COUNTS[name]}, so it must be at least 1. Pass "
                         f"{name}=1 or more.")  # fmt: skip
    if lo > hi:
        raise ValueError(f"{name}={value!r}: the range's low is above its high; pass {name}=({hi}, {lo}).")
    return lo, hi


class _Pools(NamedTuple):
    """Eligible classes of language pairs for one (K, Q): row p is pair p, padded to the largest pool.

    Row p holds its ``sizes[p]`` eligible labels in ascending order, then padding that is never drawn; ``support``
    and ``query`` hold each label's group in the support and the query language.
    """

    labels: np.ndarray
    support: np.ndarray
    query: np.ndarray
    sizes: np.ndarray


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
        q_query: IntOrRange,
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
                raise ValueError(
                    f"Languages {unknown} are not in the dataset (it has {list(index.lang_names)})."
                )
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
                raise ValueError(
                    "Cross-lingual episodes need a support language different from a query language."
                )
        weights = np.array(
            [(language_weights or {}).get(index.lang_names[a] if a >= 0 else "", 1.0) for a, _ in self.pairs],
            dtype=np.float64,
        )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("language_weights must be non-negative with a positive sum.")
        self._build_lookup()
        kept = self._check_capacity()
        self.pairs = [pair for pair, keep in zip(self.pairs, kept) if keep]
        self.pair_cdf = np.cumsum(weights[kept]) / weights[kept].sum()
        self._same_lang = np.array([a == b for a, b in self.pairs])
        self._pair_langs = [(self._lang_name(a), self._lang_name(b)) for a, b in self.pairs]
        self._pool_tables: dict[tuple[int, int], _Pools] = {}

    # -- eligibility -------------------------------------------------------------------------------------------
    def _build_lookup(self) -> None:
        """Dense (language + 1, label) -> group (-1: none) and row count; language -1 pools every language.

        Mode 'classes' over an index with languages needs one group a label: it is re-indexed over labels alone.
        """
        if self.mode == "classes" and len(set(self.index.group_lang.tolist())) > 1:
            index = self.index
            labels = np.empty(len(index.order), dtype=np.int64)
            for g in range(index.num_groups):
                labels[index.order[index.offsets[g] : index.offsets[g + 1]]] = index.group_label[g]
            self.index = GroupIndex.build(labels, index.label_names)
        index = self.index
        rows = np.zeros(index.num_groups, np.int64) if self.mode == "classes" else index.group_lang + 1
        shape = (len(index.lang_names) + 1, len(index.label_names))
        self._group_of = np.full(shape, -1, dtype=np.int64)
        self._group_of[rows, index.group_label] = np.arange(index.num_groups)
        self._count_of = np.zeros(shape, dtype=np.int64)
        self._count_of[rows, index.group_label] = index.counts

    def _pools_of(self, pairs: Sequence[tuple[int, int]], k: int, q: int) -> _Pools:
        """Eligible classes of these (support lang, query lang) pairs for K, Q, all pairs at once."""
        a, b = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
        sup, qry = self._group_of[a + 1], self._group_of[b + 1]
        count_a, count_b = self._count_of[a + 1], self._count_of[b + 1]
        enough = np.where((a == b)[:, None], count_a >= k + q, (count_a >= k) & (count_b >= q))
        ok = self.allowed_labels & (sup >= 0) & (qry >= 0) & enough
        sizes = ok.sum(axis=1)
        # Eligible labels first, in ascending order (as the pool lists them), then the rest as padding.
        labels = np.argsort(~ok, axis=1, kind="stable")[:, : sizes.max(initial=0)]
        rows = np.arange(len(a))[:, None]
        return _Pools(labels, sup[rows, labels], qry[rows, labels], sizes)

    def pool(self, pair: tuple[int, int], k: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eligible labels for (support lang, query lang) and K, Q: labels, support groups, query groups."""
        pools = self._pools_of([pair], k, q)
        size = pools.sizes[0]
        return pools.labels[0, :size], pools.support[0, :size], pools.query[0, :size]

    def _pool_table(self, k: int, q: int) -> _Pools:
        """The pools of every kept pair (row = index in ``self.pairs``) for K, Q; built once."""
        if (k, q) not in self._pool_tables:
            self._pool_tables[(k, q)] = self._pools_of(self.pairs, k, q)
        return self._pool_tables[(k, q)]

    def _check_capacity(self) -> np.ndarray:
        """Which pairs offer N classes; what is left out goes to ``self.report`` (one short warning for it).

        A kept pair has N classes at the largest N, K, Q, so at every shape: pools only grow as K and Q shrink.
        """
        k, q, n = self.k_range[1], self.q_range[1], self.n_range[1]
        small = (self._group_of >= 0) & self.allowed_labels & (self._count_of < k + q)
        classes: dict[str, dict[str, int]] = {}
        for row, label in np.argwhere(small).tolist():
            classes.setdefault(self._lang_name(row - 1), {})[self.index.label_names[label]] = int(
                self._count_of[row, label]
            )
        if classes and self.on_small_class == "error":
            listing = "; ".join(f"{lang or 'all'}: {found}" for lang, found in sorted(classes.items()))
            raise ValueError(f"Classes with fewer than K + Q = {k + q} examples: {listing}. Lower K or Q, or pass "
                             "on_small_class='skip' to leave them out.")  # fmt: skip
        sizes = self._pools_of(self.pairs, k, q).sizes
        if sizes.max(initial=0) < n:
            raise ValueError(
                f"N = {n} is larger than the classes on offer: at most {sizes.max(initial=0)} classes have K + Q = {k + q} "
                f"examples{'' if self.mode == 'classes' else ' in any one language (pair)'}. Lower n_way, k_shot or "
                "q_query, or add classes."
            )
        kept = sizes >= n
        left_out = [self._pair_name(pair) for pair, keep in zip(self.pairs, kept) if not keep]
        self.report = SamplerReport(self.mode, n, k, q, classes, left_out, len(self.pairs))
        if classes or left_out:
            report_logger.info("%s", self.report)
            warnings.warn(self.report.summary(), stacklevel=caller_stacklevel())
        return kept

    def _lang_name(self, lang: int) -> str:
        return self.index.lang_names[lang] if lang >= 0 else ""

    def _pair_name(self, pair: tuple[int, int]) -> str:
        a, b = (self._lang_name(x) for x in pair)
        return a if a == b else f"{a}->{b}"

    # -- sampling ----------------------------------------------------------------------------------------------
    def __getitem__(self, episode_id: int) -> Episode:
        return self.batch([episode_id])[0]

    def batch(self, episode_ids: Iterable[int]) -> list[Episode]:
        """Episodes for these ids, drawn together (vectorised per shape, across language pairs)."""
        ids = np.asarray(list(episode_ids), dtype=np.int64)
        out: list[Episode | None] = [None] * len(ids)
        pair_idx, shapes = self._plan(ids)
        for (n, k, q), positions in shapes.items():
            episodes = self._draw(ids[positions], pair_idx[positions], n, k, q)
            for pos, episode in zip(positions.tolist(), episodes):
                out[pos] = episode
        return out  # type: ignore[return-value]

    def _plan(self, ids: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int, int], np.ndarray]]:
        """Each episode's language pair (index in ``self.pairs``), and the positions of each shape (N, K, Q).

        Shapes, not pairs, make the groups: there are thousands of language pairs but few shapes, and a group
        pays a fixed cost whatever its size.
        """
        shape_u = uniform(episode_keys(self.seed, ids, _SHAPE), (3,))
        ranges = (self.n_range, self.k_range, self.q_range)
        sizes = np.stack([lo + np.floor(shape_u[:, j] * (hi - lo + 1)).astype(np.int64)
                          for j, (lo, hi) in enumerate(ranges)], axis=1)  # fmt: skip
        lang_u = uniform(episode_keys(self.seed, ids, _LANG), (1,))[:, 0]
        pair_idx = np.minimum(np.searchsorted(self.pair_cdf, lang_u, side="right"), len(self.pairs) - 1)
        shapes, which = np.unique(sizes, axis=0, return_inverse=True)
        which = which.reshape(-1)  # 1-D whatever the numpy version
        groups = {(int(n), int(k), int(q)): np.flatnonzero(which == s) for s, (n, k, q) in enumerate(shapes)}
        return pair_idx, groups

    def _draw(self, ids: np.ndarray, pair_idx: np.ndarray, n: int, k: int, q: int) -> list[Episode]:
        """Episodes of one shape over any language pairs, in one pass over padded pool tables."""
        pools = self._pool_table(k, q)
        sizes = pools.sizes[pair_idx]
        # Draw p of a key's stream depends on p alone, so the first `size` uniforms are those of
        # choose(keys, size, n); padding set to 2.0 sorts last, leaving the same n slots in front.
        u = uniform(episode_keys(self.seed, ids, _CLASSES), (int(sizes.max()),))
        u[np.arange(u.shape[1]) >= sizes[:, None]] = 2.0
        slots = np.argsort(u, axis=1, kind="stable")[:, :n]
        rows = pair_idx[:, None]
        chosen = pools.labels[rows, slots]
        sup_groups, qry_groups = pools.support[rows, slots], pools.query[rows, slots]
        support, query = self._examples(ids, self._same_lang[pair_idx], sup_groups, qry_groups, k, q)
        # One writable row per episode (collate hands them to torch.from_numpy), built in one allocation.
        support_labels = np.tile(np.repeat(np.arange(n), k), (len(ids), 1))
        query_labels = np.tile(np.repeat(np.arange(n), q), (len(ids), 1))
        names, langs = self.index.label_names, self._pair_langs
        return [
            Episode(
                episode_id=episode_id,
                classes=classes,
                support=sup,
                support_labels=sup_labels,
                query=qry,
                query_labels=qry_labels,
                support_lang=langs[p][0],
                query_lang=langs[p][1],
                class_names=tuple(names[c] for c in class_list),
            )
            for episode_id, classes, sup, sup_labels, qry, qry_labels, p, class_list in zip(
                ids.tolist(), chosen, support.reshape(len(ids), -1), support_labels, query.reshape(len(ids), -1),
                query_labels, pair_idx.tolist(), chosen.tolist(),
            )
        ]  # fmt: skip

    def _examples(
        self,
        ids: np.ndarray,
        same: np.ndarray,
        sup_groups: np.ndarray,
        qry_groups: np.ndarray,
        k: int,
        q: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Support rows (B, N, K) and query rows (B, N, Q): same- and cross-language episodes in one draw each."""
        n = sup_groups.shape[1]
        counts, rows = self.index.counts, self.index.rows
        support_keys = subkeys(episode_keys(self.seed, ids, _SUPPORT), n)
        support = np.empty((len(ids), n, k), dtype=np.int64)
        query = np.empty((len(ids), n, q), dtype=np.int64)
        if same.any():  # K + Q rows of a class in one draw, so support and query never overlap
            groups = sup_groups[same]
            offsets = without_replacement(support_keys[same], counts[groups], k + q)
            support[same] = rows(groups[..., None], offsets[..., :k])
            query[same] = rows(groups[..., None], offsets[..., k:])
        cross = ~same
        if cross.any():
            query_keys = subkeys(episode_keys(self.seed, ids[cross], _QUERY), n)
            s_groups, q_groups = sup_groups[cross], qry_groups[cross]
            s_offsets = without_replacement(support_keys[cross], counts[s_groups], k)
            q_offsets = without_replacement(query_keys, counts[q_groups], q)
            support[cross], query[cross] = (
                rows(s_groups[..., None], s_offsets),
                rows(q_groups[..., None], q_offsets),
            )
        return support, query
