"""Few-shot episodes built from ``datasets``: N-way K-shot classification, languages as tasks, splits."""

from .builder import EpisodeBuilder
from .collate import EpisodeCollator, TokenStore, tokenize_dataset
from .episode import Episode, episodes_from_dataset, episodes_to_dataset
from .index import GroupIndex
from .sampler import EpisodeSampler
from .splits import SplitLeakError, Splits, check_disjoint, split_values
from .torch_data import EpisodeDataset

__all__ = [
    "Episode",
    "EpisodeBuilder",
    "EpisodeCollator",
    "EpisodeDataset",
    "EpisodeSampler",
    "GroupIndex",
    "SplitLeakError",
    "Splits",
    "TokenStore",
    "check_disjoint",
    "episodes_from_dataset",
    "episodes_to_dataset",
    "split_values",
    "tokenize_dataset",
]
