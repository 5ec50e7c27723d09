"""Episodes of several kinds in one stream (monolingual and cross-lingual, several domains): a learner meta-trained
on one kind of task specialises to it; a mix keeps what it learns general."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from .episode import Episode


class MixedSampler:
    """Episode ``i`` is episode ``i // m`` of ``samplers[i % m]`` (``m`` samplers), keeping the id ``i``.

    The kinds take turns, so a meta-batch of ``m`` consecutive ids holds one of each; every episode stays seeded by
    its own sampler, so the mixture is the same on every process and in every run. Anything with
    ``batch(ids) -> [Episode]`` mixes (``TaskCollection.sampler``, ``EpisodeBuilder.sampler``, another mixture).
    """

    def __init__(self, samplers: Sequence[Any]) -> None:
        if len(samplers) < 2:
            raise ValueError(f"MixedSampler takes at least two samplers to mix, got {len(samplers)}: use the "
                             "sampler itself.")  # fmt: skip
        self.samplers = list(samplers)
        ranges = {getattr(s, "n_range", None) for s in self.samplers}
        #: N of the episodes when every sampler agrees on it (MetaTrainer checks a classifier's head against it)
        self.n_range = ranges.pop() if len(ranges) == 1 else None

    def __getitem__(self, episode_id: int) -> Episode:
        return self.batch([episode_id])[0]

    def batch(self, episode_ids: Iterable[int]) -> list[Episode]:
        ids = [int(i) for i in episode_ids]
        m = len(self.samplers)
        out: list[Episode | None] = [None] * len(ids)
        for kind, sampler in enumerate(self.samplers):
            positions = [j for j, i in enumerate(ids) if i % m == kind]
            if positions:
                drawn = sampler.batch([ids[j] // m for j in positions])
                for j, episode in zip(positions, drawn):
                    out[j] = dataclasses.replace(episode, episode_id=ids[j])
        return out  # type: ignore[return-value]
