"""One place for the library's intervals: the mean over tasks (or episodes, seeds) with its Student-t interval, and
paired differences of two methods scored on the same units.

Few-shot results average over few units (4 translation tasks, 3 seeds): the normal quantile 1.96 would claim
intervals up to 1.6x too narrow there (t(0.975, 3) = 3.18), so every interval here uses Student's t with n - 1
degrees of freedom. Two methods scored on the same tasks are compared by the interval of their per-task
differences, which is much sharper than two overlapping intervals.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "confidence_interval", "mean_interval", "paired_difference", "t_quantile"]


@functools.cache
def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile: ``mean +- t * sd / sqrt(n)`` covers the mean with ``confidence``."""
    if not 0 < confidence < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < confidence < 1 and df >= 1, got {confidence} and {df}.")
    # scipy comes with scikit-learn; imported here so that `import hf_metatransfer` stays light
    from scipy import stats

    return float(stats.t.ppf((1 + confidence) / 2, df))


@dataclass(frozen=True)
class Interval:
    """``mean +- half_width`` over ``n`` units at ``confidence``.

    A single unit has no spread to estimate: its half-width is 0 for tables, but it is never called above or
    below 0, since nothing was measured about its variability.
    """

    mean: float
    half_width: float
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def above_zero(self) -> bool:
        """The whole interval is above 0: for a difference ``a - b``, ``a`` is better, beyond the noise."""
        return self.n > 1 and self.low > 0

    @property
    def below_zero(self) -> bool:
        return self.n > 1 and self.high < 0

    @property
    def excludes_zero(self) -> bool:
        return self.above_zero or self.below_zero

    def as_tuple(self) -> tuple[float, float]:
        """``(mean, half_width)``: the two numbers tables and JSON records store."""
        return self.mean, self.half_width

    def as_dict(self, digits: int | None = None) -> dict[str, float | int | bool]:
        """For JSON records: the figures (rounded to ``digits`` when given), ``n`` and whether 0 is excluded."""

        def r(x: float) -> float:
            return round(x, digits) if digits is not None else x

        return {"mean": r(self.mean), "ci_half_width": r(self.half_width), "ci_low": r(self.low),
                "ci_high": r(self.high), "n": self.n, "confidence": self.confidence,
                "excludes_zero": self.excludes_zero}  # fmt: skip

    def format(self, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
        """``"87.3 +- 2.1"`` (``scale=100`` for fractions as percent; ``sign`` for differences: ``"+1.2 +- 0.8"``)."""
        mean = f"{scale * self.mean:+.{digits}f}" if sign else f"{scale * self.mean:.{digits}f}"
        return f"{mean} +- {scale * self.half_width:.{digits}f}"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with its Student-t interval, ``t(df = n - 1) * sd / sqrt(n)``."""
    n = len(values)
    if n == 0:
        raise ValueError("An interval needs at least one value.")
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, 0.0, 1, confidence)
    return Interval(
        mean, t_quantile(confidence, n - 1) * statistics.stdev(values) / math.sqrt(n), n, confidence
    )


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``a - b`` over matched units (the same task, episode or seed) with its Student-t interval.

    Pairing removes what the units share (an easy task is easy for both methods), so it is sharper than
    comparing the two methods' own intervals.
    """
    if len(a) != len(b):
        raise ValueError(f"Paired differences need matched units: got {len(a)} and {len(b)} values.")
    return mean_interval([x - y for x, y in zip(a, b)], confidence)


def confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the Student-t interval, the pair stored in results (``ci95`` fields)."""
    return mean_interval(values, confidence).as_tuple()
