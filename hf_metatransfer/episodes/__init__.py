"""Few-shot episodes built from ``datasets``: N-way K-shot classification, languages as tasks, splits."""

from .builder import EpisodeBuilder
from .collate import EpisodeCollator, TokenStore, micro_batches, tokenize_dataset
from .episode import Episode, episodes_from_dataset, episodes_to_dataset, verify_episodes
from .index import GroupIndex
from .languages import base_language, language_groups, other_languages
from .mixture import MixedSampler
from .presets import TaskCollection, ha_intents_tasks, massive_style_tasks, tasks_from_builder
from .protocols import (
    ProtocolEpisodes,
    ProtocolReport,
    all_way_episodes,
    dirichlet_queries,
    fixed_shot_episodes,
    generalized_episodes,
)
from .sampler import EpisodeSampler
from .splits import SplitLeakError, Splits, check_disjoint, split_values
from .streaming import StreamingEpisodes
from .torch_data import EpisodeDataset
from .translation import TranslationTask, TranslationTaskSampler, from_flores_style, split_target_languages
from .user import UserEpisodes, saved_episodes, user_episodes

__all__ = [
    "Episode",
    "EpisodeBuilder",
    "EpisodeCollator",
    "EpisodeDataset",
    "EpisodeSampler",
    "GroupIndex",
    "MixedSampler",
    "SplitLeakError",
    "base_language",
    "language_groups",
    "other_languages",
    "Splits",
    "TokenStore",
    "check_disjoint",
    "episodes_from_dataset",
    "episodes_to_dataset",
    "verify_episodes",
    "micro_batches",
    "split_values",
    "tokenize_dataset",
    "TranslationTask",
    "TranslationTaskSampler",
    "from_flores_style",
    "split_target_languages",
    "TaskCollection",
    "ProtocolEpisodes",
    "ProtocolReport",
    "all_way_episodes",
    "dirichlet_queries",
    "fixed_shot_episodes",
    "generalized_episodes",
    "ha_intents_tasks",
    "massive_style_tasks",
    "tasks_from_builder",
    "StreamingEpisodes",
    "UserEpisodes",
    "saved_episodes",
    "user_episodes",
]
