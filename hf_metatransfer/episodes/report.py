"""What a sampler leaves out (classes short of K + Q examples, languages short of N classes), in full on
``sampler.report`` and in the log; its warning only counts it, one line pointing at the caller's code."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
_EPISODES_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def caller_stacklevel() -> int:
    """``stacklevel`` naming the first frame outside this package: the line that asked for episodes, which a
    warning should point at (not the sampler's internals, whichever entry point was used)."""
    frame, level = sys._getframe(1), 1  # 1: the function that calls warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(_EPISODES_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class SamplerReport:
    """What a sampler leaves out, in full (``sampler.report``): its warning only counts it, a line long."""

    mode: str
    n_way: int
    k_shot: int
    q_query: int
    #: language ("" when languages are pooled) -> {class: examples} of the classes short of K + Q examples
    small_classes: dict[str, dict[str, int]]
    #: the languages ("de") or, cross-lingual, pairs ("de->fr") with fewer than N classes of K + Q examples
    left_out: list[str]
    #: how many languages (or pairs) there were
    pairs: int

    @property
    def _what(self) -> str:
        return "language pairs" if self.mode == "cross-lingual" else "languages"

    def summary(self) -> str:
        """The warning: counts, and where the lists are."""
        parts = []
        if self.small_classes:
            count, langs = sum(map(len, self.small_classes.values())), len(self.small_classes)
            where = "" if "" in self.small_classes else f" (in {langs} language{'s' * (langs > 1)})"
            parts.append(f"{count} class{'es' * (count > 1)}{where} with fewer than K + Q = "
                         f"{self.k_shot + self.q_query} examples")  # fmt: skip
        if self.left_out:
            parts.append(
                f"{len(self.left_out)} of {self.pairs} {self._what} with fewer than {self.n_way} classes of K + Q "
                "examples"
            )
        return (f"Left out of episodes: {'; '.join(parts)}. sampler.report lists them (logged by {logger.name} "
                "at INFO).")  # fmt: skip

    def __str__(self) -> str:
        lines = [f"{self.mode} episodes, {self.n_way}-way, K = {self.k_shot}, Q = {self.q_query}, leave out:"]
        if self.small_classes:
            lines.append(f"  classes with fewer than K + Q = {self.k_shot + self.q_query} examples:")
            lines += [
                f"    {lang or 'all'}: {classes}" for lang, classes in sorted(self.small_classes.items())
            ]
        if self.left_out:
            lines.append(f"  {len(self.left_out)} of {self.pairs} {self._what} with fewer than {self.n_way} classes "
                         f"of K + Q examples: {', '.join(self.left_out)}")  # fmt: skip
        return "\n".join(lines)
