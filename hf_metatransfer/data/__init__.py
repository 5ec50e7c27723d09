"""Real models and datasets that work with no network (they arrive inside pip packages)."""

from .ha_intents import ha_intents_languages, load_ha_intents
from .packaged_models import MINILM, minilm_path

__all__ = ["MINILM", "ha_intents_languages", "load_ha_intents", "minilm_path"]
