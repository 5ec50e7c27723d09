"""One LR scheduler for every strategy: phases (LP then FT), per-group base LRs and per-group scales.

HF schedulers keep one multiplier for all groups and overwrite ``param_groups[i]['lr']`` at each step, so a
phase switch or Auto-RGN weights written into the groups would be lost. Here the whole state (phase, its start
step, base LRs of each phase, scales) lives in the scheduler and is saved with it, so resuming is exact.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "slanted_triangular")


def schedule_factor(
    kind: str, step: int, total: int, warmup: int = 0, cut_frac: float = 0.1, ratio: float = 32.0
) -> float:
    """LR multiplier at ``step`` of a phase of ``total`` steps; same formulas as transformers' schedulers.

    ``slanted_triangular`` is ULMFiT's (Howard & Ruder 2018): a short linear rise over ``cut_frac`` of the
    steps, then a long linear decay, from lr/ratio to lr and back.
    """
    if kind == "constant":
        return 1.0
    if kind == "slanted_triangular":
        cut = max(1, math.floor(total * cut_frac))
        p = step / cut if step < cut else 1 - (step - cut) / max(1, cut * (1 / cut_frac - 1))
        return (1 + max(p, 0.0) * (ratio - 1)) / ratio
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"Unknown LR schedule {kind!r}: use one of {SCHEDULES}.")


class PhasedLR(LRScheduler):
    """Per-group LRs = phase base LR x scale x schedule factor of the step within the phase.

    ``phases`` maps a phase name to ``{"base_lrs": [...], "schedule": kind, "warmup": steps}``; the phase
    runs from ``phase_start`` to ``total_steps``. ``start_phase`` switches at the current step and rewrites the
    group LRs at once, so the very next optimizer step uses the new phase.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        phases: dict[str, dict],
        first_phase: str,
        total_steps: int,
        cut_frac: float = 0.1,
        ratio: float = 32.0,
        last_epoch: int = -1,
    ) -> None:
        for name, phase in phases.items():
            if len(phase["base_lrs"]) != len(optimizer.param_groups):
                raise ValueError(
                    f"Phase {name!r} has {len(phase['base_lrs'])} LRs for {len(optimizer.param_groups)} groups."
                )
            schedule_factor(phase["schedule"], 0, 1)  # validates the schedule name early
        self.phases = {k: dict(v, base_lrs=list(v["base_lrs"])) for k, v in phases.items()}
        self.phase = first_phase
        self.phase_start = 0
        self.total_steps = total_steps
        self.cut_frac = cut_frac
        self.ratio = ratio
        self.scales = [1.0] * len(optimizer.param_groups)
        # Bookkeeping of the LP -> FT switch, saved with the scheduler so a resumed run decides the same.
        self.switch_state: dict = {"best_loss": math.inf, "bad_evals": 0, "switched_at": None}
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        phase = self.phases[self.phase]
        step = max(0, self.last_epoch - self.phase_start)
        total = max(1, self.total_steps - self.phase_start)
        warmup = phase.get("warmup", 0)
        warmup = math.ceil(warmup * total) if 0 < warmup < 1 else int(warmup)  # a float < 1 is a ratio
        factor = schedule_factor(phase["schedule"], step, total, warmup, self.cut_frac, self.ratio)
        return [lr * s * factor for lr, s in zip(phase["base_lrs"], self.scales)]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def start_phase(self, name: str) -> None:
        """Switch to phase ``name`` from the current step on."""
        if name not in self.phases:
            raise ValueError(f"Unknown phase {name!r}: this schedule has {list(self.phases)}.")
        self.phase = name
        self.phase_start = max(0, self.last_epoch)
        self._apply()

    def set_scales(self, scales: list[float]) -> None:
        """Per-group LR multipliers (Auto-RGN), effective from the next optimizer step."""
        if len(scales) != len(self.scales):
            raise ValueError(f"Got {len(scales)} scales for {len(self.scales)} param groups.")
        self.scales = list(scales)
        self._apply()
