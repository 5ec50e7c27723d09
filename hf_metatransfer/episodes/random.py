"""Counter-based random numbers: the draw for (seed, episode, stream, position) is a pure function of those.

So episode ``i`` of seed ``s`` is the same on every machine, in any batch, for any number of processes or
DataLoader workers, and whole batches of episodes are drawn with a few vectorised numpy operations.
The mixer is SplitMix64 (Steele et al. 2014), whose outputs pass BigCrush.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STEP = np.uint64(0xD1B54A32D192ED03)


def _mix(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def episode_keys(seed: int, episode_ids: np.ndarray, stream: int) -> np.ndarray:
    """One 64-bit key per episode for a named stream of draws (classes, examples, languages...)."""
    ids = np.asarray(episode_ids, dtype=np.uint64)
    base = _mix(np.full(ids.shape, seed, dtype=np.uint64) ^ _mix(np.full(ids.shape, stream, dtype=np.uint64)))
    return _mix(base ^ _mix(ids))


def uniform(keys: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Floats in [0, 1) of shape ``keys.shape + shape``; position p of key k is a function of (k, p) alone."""
    size = int(np.prod(shape)) if shape else 1
    positions = np.arange(1, size + 1, dtype=np.uint64) * _STEP
    z = _mix(keys.reshape(keys.shape + (1,)) + positions)
    return ((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))).reshape(keys.shape + shape)


def choose(keys: np.ndarray, pool_size: int, n: int) -> np.ndarray:
    """``n`` distinct indices of ``range(pool_size)`` per key, in random order (uniform over ordered choices)."""
    u = uniform(keys, (pool_size,))
    return np.argsort(u, axis=-1, kind="stable")[..., :n]


def without_replacement(keys: np.ndarray, counts: np.ndarray, m: int) -> np.ndarray:
    """``m`` distinct offsets in ``range(counts[...])`` for each key, uniform over ordered samples.

    Draw j picks uniformly among the ``count - j`` offsets not taken yet: r_j ~ U{0..count-j-1}, then r_j is
    mapped to the r_j-th free offset by stepping over the taken ones in ascending order. O(m^2) vectorised steps,
    independent of ``count``, so large classes cost nothing more.
    """
    counts = np.asarray(counts, dtype=np.int64)
    u = uniform(keys, (m,))
    taken = np.empty(counts.shape + (m,), dtype=np.int64)
    for j in range(m):
        v = np.floor(u[..., j] * (counts - j)).astype(np.int64)
        previous = np.sort(taken[..., :j], axis=-1)
        for t in range(j):
            v += v >= previous[..., t]
        taken[..., j] = v
    return taken


def subkeys(keys: np.ndarray, n: int) -> np.ndarray:
    """``n`` independent keys per key (one per class slot of an episode, say): shape ``keys.shape + (n,)``."""
    positions = np.arange(1, n + 1, dtype=np.uint64) * _STEP
    return _mix(_mix(keys.reshape(keys.shape + (1,))) ^ positions)
