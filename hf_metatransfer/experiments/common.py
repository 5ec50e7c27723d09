"""What every lecture experiment shares: one-thread CPU runs, Student-t intervals, paired differences, output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from ..stats import confidence_interval as mean_ci
from ..stats import paired_difference

# mean_ci: the experiments' name for the library's Student-t interval (hf_metatransfer.stats)
__all__ = ["cpu_threads", "markdown_table", "mean_ci", "paired", "pct"]


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """``n`` torch intra-op threads and ``n`` BLAS threads inside: on shared cores more threads only fight."""
    if n < 1:
        raise ValueError(f"threads={n}: use 1 or more (1 is fastest for small models on shared cores).")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% Student-t CI of ``a - b`` over matched units (the same episode or seed)."""
    return paired_difference(a, b).as_tuple()


def pct(mean_and_ci: tuple[float, float], digits: int = 1) -> str:
    """A ``(mean, half-width)`` fraction as ``"87.3 +- 2.1"`` percent."""
    mean, ci = mean_and_ci
    return f"{100 * mean:.{digits}f} +- {100 * ci:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
