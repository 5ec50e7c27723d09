"""Real models and datasets that work with no network (they arrive inside pip packages)."""

from .django_parallel import django_languages, load_django_parallel
from .ha_intents import ha_intents_languages, load_ha_intents
from .packaged_models import (
    MINILM,
    MULTILINGUAL_E5_SMALL,
    SMOLLM2_135M,
    minilm_path,
    multilingual_e5_small_path,
    smollm2_135m_path,
)

__all__ = [
    "MINILM",
    "django_languages",
    "ha_intents_languages",
    "load_django_parallel",
    "load_ha_intents",
    "minilm_path",
    "MULTILINGUAL_E5_SMALL",
    "multilingual_e5_small_path",
    "SMOLLM2_135M",
    "smollm2_135m_path",
]
