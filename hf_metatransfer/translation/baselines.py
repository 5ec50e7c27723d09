"""No-model translation baselines: what chrF and BLEU give without translating anything.

Between related languages, on short UI strings full of names, placeholders and loanwords, copying the source
already scores a fair chrF; text in the right language that is not the translation of the source scores some too.
A method is translating only when it beats both on the same tasks (``translation_verdicts``). They have the
interface of :class:`~hf_metatransfer.translation.ZeroShot` and ignore the model, so ``evaluate_translation``
scores them like any method (the model and the batcher may be ``None`` when the tasks are ``TaskTexts``).
"""

from __future__ import annotations

import random

from .batches import TaskTexts

__all__ = ["BASELINES", "CopySource", "ShuffledReference", "derangement"]


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of ``range(n)`` that moves every index (rejection: ~e shuffles)."""
    if n < 2:
        raise ValueError(
            f"No derangement of {n} item(s): a shuffled reference needs at least 2 queries a task."
        )
    order = list(range(n))
    while True:
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


class CopySource:
    """The source sentence, unchanged, as its translation."""

    name = "copy-source"

    def translations(self, model, batcher, task: TaskTexts, **generate) -> list[str]:
        return list(task.query_sources)


class ShuffledReference:
    """Each query gets the reference of another query of the same task: fluent text in the target language,
    unrelated to the source. The derangement is seeded by ``seed`` and the task's texts, so it does not depend on
    which tasks ran before."""

    name = "shuffled-reference"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def translations(self, model, batcher, task: TaskTexts, **generate) -> list[str]:
        key = "\n".join([str(self.seed), task.source_lang, task.target_lang, *task.query_sources])
        order = derangement(len(task.query_targets), random.Random(key))
        return [task.query_targets[j] for j in order]


#: the names (``.name``) of the baselines every translation table carries
BASELINES = (CopySource.name, ShuffledReference.name)
