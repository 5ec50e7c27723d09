"""Few-shot episodes built from ``datasets``: N-way K-shot classification, languages as tasks, splits."""

from .builder import EpisodeBuilder
from .index import GroupIndex
from .sampler import Episode, EpisodeSampler
from .splits import SplitLeakError, Splits, check_disjoint, split_values

__all__ = [
    "Episode",
    "EpisodeBuilder",
    "EpisodeSampler",
    "GroupIndex",
    "SplitLeakError",
    "Splits",
    "check_disjoint",
    "split_values",
]
