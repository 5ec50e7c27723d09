"""Few-shot translation meta-testing: adapt to each task (a language pair), translate its queries, score them.

Every method runs on the same tasks: :class:`ZeroShot`, :class:`InContext` (the K support pairs in the prompt)
and :class:`~hf_metatransfer.translation.adaptation.SupportFineTuning` (gradient steps on the support pairs: full, LoRA, or
LoRA from a meta-learned initialisation, by the model passed). chrF and BLEU are corpus-level over each task's
queries (sacrebleu, through the package's offline ``evaluate`` modules), then mean and 95% Student-t CI over
tasks. A method translates only when it beats the no-model baselines of :mod:`.baselines` (copying the source, a
shuffled reference) on the same tasks: :func:`translation_verdicts`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from ..episodes.translation import TranslationTask
from ..metrics import load_metric
from ..stats import Interval, mean_interval, paired_difference
from .baselines import BASELINES
from .batches import TaskTexts, TranslationBatcher
from .generation import translate

__all__ = [
    "InContext",
    "TranslationResult",
    "TranslationVerdict",
    "ZeroShot",
    "corpus_scores",
    "evaluate_translation",
    "translation_verdicts",
]

# sacrebleu's BLEU tokenizer by target language: 13a splits on spaces, which scripts without them defeat.
_BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "th": "char", "km": "char", "lo": "char", "my": "char"}


@functools.cache
def _metric(name: str):
    return load_metric(name)


def bleu_tokenizer(target_lang: str) -> str:
    return _BLEU_TOKENIZERS.get(target_lang.replace("-", "_").split("_")[0].lower(), "13a")


def corpus_scores(predictions: list[str], references: list[str], target_lang: str = "") -> dict[str, float]:
    """Corpus chrF and BLEU (0-100) of one task's translations."""
    chrf = _metric("chrf").compute(predictions=predictions, references=references)["chrf"]
    bleu = _metric("bleu").compute(predictions=predictions, references=references,
                                   tokenize=bleu_tokenizer(target_lang))["bleu"]  # fmt: skip
    return {"chrf": float(chrf), "bleu": float(bleu)}


class ZeroShot:
    """The model as it is: only the instruction (decoder-only) or the source (encoder-decoder)."""

    name = "zero-shot"

    def translations(
        self, model: nn.Module, batcher: TranslationBatcher, task: TaskTexts, **generate
    ) -> list[str]:
        return translate(model, batcher, task.query_sources, task.source_lang, task.target_lang, **generate)


class InContext:
    """The support pairs as examples in the prompt of a decoder-only LM (``max_examples`` of them, or all)."""

    name = "in-context"

    def __init__(self, max_examples: int | None = None) -> None:
        self.max_examples = max_examples

    def translations(
        self, model: nn.Module, batcher: TranslationBatcher, task: TaskTexts, **generate
    ) -> list[str]:
        if batcher.is_encoder_decoder:
            raise ValueError(
                "In-context examples need a decoder-only LM; use SupportFineTuning for seq2seq models."
            )
        examples = task.support[: self.max_examples]
        return translate(model, batcher, task.query_sources, task.source_lang, task.target_lang, examples=examples,
                         **generate)  # fmt: skip


@dataclass
class TranslationResult:
    """Scores of one method over tasks: means, 95% CI half-widths, seconds a task, and each task's row."""

    method: str
    chrf: float
    chrf_ci95: float
    bleu: float
    bleu_ci95: float
    seconds_per_task: float
    tasks: int
    per_task: list[dict] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.method} | {self.chrf:.1f} +- {self.chrf_ci95:.1f} | {self.bleu:.1f} +- {self.bleu_ci95:.1f}"
                f" | {self.seconds_per_task:.1f} | {self.tasks} |")  # fmt: skip


def evaluate_translation(
    model: nn.Module | None,
    method,
    tasks: Iterable[TranslationTask | TaskTexts],
    batcher: TranslationBatcher | None,
    *,
    name: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    progress: bool = True,
) -> TranslationResult:
    """Adapt ``method`` to each task, translate its queries and score them; the model ends as it started.

    The no-model baselines take ``model=None``, and ``batcher=None`` too when the tasks are ``TaskTexts``.
    """
    rows = []
    tasks = list(tasks)
    generate = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "num_beams": num_beams,
        "progress": False,
    }
    label = name or method.name
    for task in tqdm(tasks, desc=f"Translation tasks ({label})", disable=not progress):
        texts = task if isinstance(task, TaskTexts) else batcher.task_texts(task)
        start = time.perf_counter()
        predictions = method.translations(model, batcher, texts, **generate)
        seconds = time.perf_counter() - start
        scores = corpus_scores(predictions, texts.query_targets, texts.target_lang)
        rows.append({"source_lang": texts.source_lang, "target_lang": texts.target_lang, "seconds": seconds,
                     **scores, "examples": list(zip(texts.query_sources[:3], predictions[:3], texts.query_targets[:3]))})  # fmt: skip
    chrf, chrf_ci = mean_interval([r["chrf"] for r in rows]).as_tuple()
    bleu, bleu_ci = mean_interval([r["bleu"] for r in rows]).as_tuple()
    seconds = sum(r["seconds"] for r in rows) / max(len(rows), 1)
    return TranslationResult(label, chrf, chrf_ci, bleu, bleu_ci, seconds, len(rows), rows)


@dataclass(frozen=True)
class TranslationVerdict:
    """A method's paired per-task differences to each no-model baseline, ``{baseline: {"chrf": ..., "bleu": ...}}``;
    it translates only when, on ``metric``, the Student-t interval of every difference lies above 0."""

    method: str
    metric: str
    differences: dict[str, dict[str, Interval]]

    @property
    def translates(self) -> bool:
        return all(by_metric[self.metric].above_zero for by_metric in self.differences.values())

    def as_dict(self, digits: int | None = 2) -> dict:
        return {"method": self.method, "metric": self.metric, "translates": self.translates,
                "minus": {b: {m: i.as_dict(digits) for m, i in d.items()} for b, d in self.differences.items()}}  # fmt: skip


def _task_keys(result: TranslationResult) -> list[tuple]:
    """What identifies each task of a result: language pair and first query sources (paired scores need the same)."""
    return [(t["source_lang"], t["target_lang"], [str(e[0]) for e in t["examples"]]) for t in result.per_task]


def translation_verdicts(
    results: Mapping[str, TranslationResult],
    baselines: Sequence[str] = BASELINES,
    *,
    metric: str = "chrf",
    confidence: float = 0.95,
) -> dict[str, TranslationVerdict]:
    """For every method of ``results`` that is not one of the ``baselines`` (keys of ``results``), its paired
    differences to each baseline over the same tasks, and whether it beats them all on ``metric``.

    Two overlapping intervals say little with 4 tasks; the interval of the per-task differences is the test.
    """
    if metric not in ("chrf", "bleu"):
        raise ValueError(f"metric={metric!r}: the verdict is on 'chrf' or 'bleu'.")
    missing = [b for b in baselines if b not in results]
    if missing or not baselines:
        raise ValueError(f"translation_verdicts needs the baselines {list(baselines)} among the results; "
                         f"missing: {missing}.")  # fmt: skip
    verdicts = {}
    for name, result in results.items():
        if name in baselines:
            continue
        differences = {}
        for b in baselines:
            base = results[b]
            if _task_keys(result) != _task_keys(base):
                raise ValueError(f"{name!r} and {b!r} were scored on different tasks: paired differences need the "
                                 "same tasks in the same order.")  # fmt: skip
            differences[b] = {m: paired_difference([t[m] for t in result.per_task], [t[m] for t in base.per_task],
                                                   confidence) for m in ("chrf", "bleu")}  # fmt: skip
        verdicts[name] = TranslationVerdict(result.method, metric, differences)
    return verdicts
