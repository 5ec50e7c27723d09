"""Few-shot translation: prompts and batches for seq2seq and causal LMs, adaptation to a language pair, scoring."""

from .adaptation import SupportFineTuning, add_lora, restored
from .batches import TaskTexts, TranslationBatcher
from .evaluation import InContext, TranslationResult, ZeroShot, corpus_scores, evaluate_translation
from .generation import translate
from .prompts import TranslationPrompt, language_name

__all__ = [
    "InContext",
    "SupportFineTuning",
    "TaskTexts",
    "TranslationBatcher",
    "TranslationPrompt",
    "TranslationResult",
    "ZeroShot",
    "add_lora",
    "corpus_scores",
    "evaluate_translation",
    "language_name",
    "restored",
    "translate",
]
