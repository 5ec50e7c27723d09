"""The dynamic part of the strategies, as one Trainer callback: LP -> FT switch, gradual unfreezing, Auto-RGN.

Everything it decides follows from the global step and the scheduler's saved state (phase, phase start,
LP patience counters, Auto-RGN scales), so a run resumed from a checkpoint makes the same decisions.
Freezing happens after the Trainer wraps the model (pitfalls: DDP + freezing).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ..param_groups import relative_grad_norms, set_trainable_, trainable_depths

if TYPE_CHECKING:
    from .trainer import FineTuningTrainer

logger = logging.getLogger(__name__)


class StrategyCallback(TrainerCallback):
    """Applies the trainable mask of the current step and switches phases."""

    def __init__(self, trainer: FineTuningTrainer) -> None:
        self.trainer = trainer
        self.steps_per_epoch = 1

    # -- what trains now -----------------------------------------------------------------------------------
    def trainable_depths(self, global_step: int) -> set[int]:
        """Depths that train at ``global_step``: the intersection of every strategy's mask."""
        args, layer_map = self.trainer.args, self.trainer.layer_map
        sched = self.trainer.phase_scheduler
        everything = set(range(layer_map.top_depth + 1))
        if sched.phase == "lp":
            return {layer_map.top_depth}
        depths = everything
        if args.gradual_unfreezing:
            interval = args.unfreeze_interval_steps or self.steps_per_epoch
            stage = (global_step - sched.phase_start) // interval
            depths &= trainable_depths(
                layer_map, unfrozen_from_top=1 + stage * args.unfreeze_groups_per_stage
            )
        if self.trainer.surgical_block_indices is not None:
            depths &= trainable_depths(
                layer_map, blocks=self.trainer.surgical_block_indices, head=args.surgical_train_head
            )
        return depths

    def apply(self, global_step: int) -> None:
        depths = self.trainable_depths(global_step)
        if depths != getattr(self, "_applied", None):
            set_trainable_(
                self.trainer.model, self.trainer.layer_map, depths, self.trainer.initially_trainable
            )
            self._applied = depths
            logger.info("step %d: training depths %s", global_step, sorted(depths))

    # -- Trainer events ------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:
            self.steps_per_epoch = max(1, len(train_dataloader) // args.gradient_accumulation_steps)
        self._applied = None
        self.apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not args.auto_rgn:
            return
        interval = args.auto_rgn_interval_steps or self.steps_per_epoch
        if state.global_step % interval:
            return
        sched = self.trainer.phase_scheduler
        rgn = relative_grad_norms(self.trainer.model)
        groups = sched.optimizer.param_groups
        # A tensor without a gradient keeps its scale; each group holds one tensor under auto_rgn.
        scales = [rgn.get(g["param_names"][0], s) for g, s in zip(groups, sched.scales)]
        sched.set_scales(scales)

    def on_step_end(self, args, state, control, **kwargs):
        sched = self.trainer.phase_scheduler
        if sched.phase != "lp":
            return
        budget_steps = [args.lp_max_steps] if args.lp_max_steps else []
        if args.lp_num_epochs:
            budget_steps.append(math.ceil(args.lp_num_epochs * self.steps_per_epoch))
        if budget_steps and state.global_step >= min(budget_steps):
            self.switch_to_ft(state, reason=f"LP budget of {min(budget_steps)} steps reached")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        sched = self.trainer.phase_scheduler  # None when evaluate() runs outside train()
        if sched is None or sched.phase != "lp" or not args.lp_patience or "eval_loss" not in (metrics or {}):
            return
        book = sched.switch_state
        if metrics["eval_loss"] < book["best_loss"]:
            book["best_loss"], book["bad_evals"] = metrics["eval_loss"], 0
        else:
            book["bad_evals"] += 1
        if book["bad_evals"] >= args.lp_patience:
            self.switch_to_ft(
                state, reason=f"validation loss stopped improving for {args.lp_patience} evaluations"
            )

    def switch_to_ft(self, state, reason: str) -> None:
        sched = self.trainer.phase_scheduler
        sched.start_phase("ft")
        sched.switch_state["switched_at"] = state.global_step
        if self.trainer.args.lp_reset_optimizer:
            optimizer = getattr(sched.optimizer, "optimizer", sched.optimizer)
            optimizer.state.clear()
        self.apply(state.global_step)
        state.log_history.append({"lp_ft_switch": state.global_step, "step": state.global_step})
        logger.info("LP -> FT at step %d: %s", state.global_step, reason)
