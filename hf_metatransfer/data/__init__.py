"""Real models and datasets that work with no network (they arrive inside pip and Debian packages)."""

from .django_parallel import django_languages, load_django_parallel
from .ha_intents import ha_intents_languages, load_ha_intents
from .packaged_models import (
    GEMMA3_270M,
    MINILM,
    MULTILINGUAL_E5_SMALL,
    SMOLLM2_135M,
    gemma3_270m_path,
    minilm_path,
    multilingual_e5_small_path,
    smollm2_135m_path,
)
from .wesnoth_parallel import fetch_wesnoth, load_wesnoth_parallel, wesnoth_languages

__all__ = [
    "GEMMA3_270M",
    "gemma3_270m_path",
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
    "fetch_wesnoth",
    "load_wesnoth_parallel",
    "wesnoth_languages",
]
