"""Episodes as a PyTorch ``IterableDataset``, sharded across distributed ranks and DataLoader workers.

Episode ids ``start .. start + num_episodes`` are dealt round-robin to (rank, worker) shards, so shards never
overlap, together cover every id, and each episode is the same whatever the number of processes or workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .episode import Episode
from .sampler import EpisodeSampler


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpisodeDataset(IterableDataset):
    """Iterate the episodes of ``sampler`` with ids in ``[start, start + num_episodes)``, this shard's share.

    ``rank`` / ``world_size`` default to torch.distributed's; ``collate`` (e.g. an ``EpisodeCollator``) turns
    each episode into tensors inside the worker. Episodes are drawn ``chunk`` at a time (vectorised).
    """

    def __init__(
        self,
        sampler: EpisodeSampler,
        num_episodes: int,
        *,
        start: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        collate: Callable[[Episode], Any] | None = None,
        chunk: int = 256,
    ) -> None:
        self.sampler, self.num_episodes, self.start = sampler, num_episodes, start
        self.rank, self.world_size = rank, world_size
        self.collate, self.chunk = collate, chunk

    def shard_ids(self, worker: int = 0, num_workers: int = 1) -> range:
        rank, world = _rank_and_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        shard, shards = rank * num_workers + worker, world * num_workers
        return range(self.start + shard, self.start + self.num_episodes, shards)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        ids = self.shard_ids(info.id if info else 0, info.num_workers if info else 1)
        for i in range(0, len(ids), self.chunk):
            for episode in self.sampler.batch(ids[i : i + self.chunk]):
                yield self.collate(episode) if self.collate else episode

    def __len__(self) -> int:
        return len(self.shard_ids())
