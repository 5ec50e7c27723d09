"""Fine-tuning strategies for Hub checkpoints: a Trainer subclass, its config, the fast probe and CV search."""

from .config import FineTuningConfig
from .linear_probe import extract_features, fast_linear_probe, find_probe_layer, fit_probe
from .schedule import PhasedLR, schedule_factor
from .search import SearchResult, cross_validated_search, kfold_indices
from .trainer import FineTuningTrainer

__all__ = [
    "FineTuningConfig",
    "FineTuningTrainer",
    "PhasedLR",
    "SearchResult",
    "cross_validated_search",
    "extract_features",
    "fast_linear_probe",
    "find_probe_layer",
    "fit_probe",
    "kfold_indices",
    "schedule_factor",
]
