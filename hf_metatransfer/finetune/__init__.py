"""Fine-tuning strategies for Hub checkpoints as a Trainer subclass and its config."""

from .config import FineTuningConfig
from .schedule import PhasedLR, schedule_factor
from .trainer import FineTuningTrainer

__all__ = ["FineTuningConfig", "FineTuningTrainer", "PhasedLR", "schedule_factor"]
