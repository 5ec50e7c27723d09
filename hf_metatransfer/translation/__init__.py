"""Few-shot translation: prompts and batches for seq2seq and causal LMs, adaptation to a language pair, scoring
against no-model baselines."""

from .adaptation import SupportFineTuning, add_lora, restored
from .baselines import BASELINES, CopySource, ShuffledReference
from .batches import TaskTexts, TranslationBatcher
from .evaluation import (
    InContext,
    TranslationResult,
    TranslationVerdict,
    ZeroShot,
    corpus_scores,
    evaluate_translation,
    translation_verdicts,
)
from .generation import translate
from .prompts import TranslationPrompt, language_name

__all__ = [
    "BASELINES",
    "CopySource",
    "InContext",
    "ShuffledReference",
    "SupportFineTuning",
    "TaskTexts",
    "TranslationBatcher",
    "TranslationPrompt",
    "TranslationResult",
    "TranslationVerdict",
    "ZeroShot",
    "add_lora",
    "corpus_scores",
    "evaluate_translation",
    "language_name",
    "restored",
    "translate",
    "translation_verdicts",
]
