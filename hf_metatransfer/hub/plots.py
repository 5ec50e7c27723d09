"""The pictures of a model card: a learning curve from ``log_history`` and a score (accuracy, chrF) against shots.

matplotlib is optional (an extra of the package): without it a card simply has no plot. Figures are drawn with
``matplotlib.figure.Figure`` on the Agg canvas, so nothing touches pyplot's global state or the backend of the
caller.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def figure(figsize: tuple[float, float] = (6, 3.6)) -> Any:
    """A matplotlib Figure (no pyplot state, safe in any thread), or None without matplotlib: plots are optional."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: no plot is drawn (pip install matplotlib).")
        return None
    return Figure(figsize=figsize, dpi=100, layout="constrained")


def learning_curve(log_history: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """Training and validation loss (and validation accuracy, right axis) against steps; False if nothing to draw."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    val = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    acc = [(e["step"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e and "step" in e]
    if len(train) + len(val) < 2:
        return False
    fig = figure()
    if fig is None:
        return False
    ax = fig.add_subplot()
    for points, label, style in ((train, "training loss", "-"), (val, "validation loss", "o--")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if acc:
        right = ax.twinx()
        right.plot(*zip(*acc), "s:", color="tab:green", label="validation accuracy")
        right.set_ylabel("accuracy")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="best", fontsize="small")
    fig.savefig(path)
    return True


def accuracy_vs_shots(
    points: Iterable[tuple[str, int, float, float | None, float | None]],
    path: str | Path,
    *,
    ylabel: str = "accuracy",
    xlabel: str = "shots (K examples per class)",
) -> bool:
    """One line per series ``(series, shots, mean, ci_low, ci_high)`` with 95% CI bars; False below two shots.

    The labels name the score and what a shot is, so any few-shot metric (accuracy, chrF) draws the same way."""
    series: dict[str, list[tuple[int, float, float | None, float | None]]] = defaultdict(list)
    for name, shots, mean, low, high in points:
        series[name].append((shots, mean, low, high))
    if not any(len({p[0] for p in pts}) >= 2 for pts in series.values()):
        return False
    fig = figure((6, 3.6 + 0.25 * len(series)))  # room for the legend below
    if fig is None:
        return False
    ax = fig.add_subplot()
    for name, pts in sorted(series.items()):
        pts.sort()
        shots, means = [p[0] for p in pts], [p[1] for p in pts]
        errors = [
            [m - (lo if lo is not None else m) for _, m, lo, _ in pts],
            [(hi if hi is not None else m) - m for _, m, _, hi in pts],
        ]
        ax.errorbar(shots, means, yerr=errors, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for pts in series.values() for p in pts})  # the K measured, as plain numbers
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # below the axes: long method names would hide the lines
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small")
    fig.savefig(path)
    return True


def method_comparison(rows: Sequence[tuple[str, float, float]], path: str | Path, title: str = "") -> bool:
    """Horizontal bars of ``(method, mean accuracy, 95% CI half-width)``; False without matplotlib or rows."""
    rows = list(rows)
    fig = figure() if rows else None
    if fig is None:
        return False
    ax = fig.add_subplot()
    names = [r[0] for r in rows][::-1]
    means, halves = [r[1] for r in rows][::-1], [r[2] for r in rows][::-1]
    ax.barh(names, means, xerr=halves, capsize=3, color="tab:blue")
    for y, (mean, half) in enumerate(
        zip(means, halves)
    ):  # the figures themselves: bars from 0 hide small gaps
        ax.text(
            0.02, y, f"{100 * mean:.1f} +- {100 * half:.1f}", va="center", color="white", fontsize="small"
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("query accuracy (95% CI)")
    if title:
        ax.set_title(title, fontsize="small")
    fig.savefig(path)
    return True
