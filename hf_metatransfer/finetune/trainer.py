"""FineTuningTrainer: transformers.Trainer whose optimizer, scheduler and freezing follow a FineTuningConfig.

The optimizer holds every parameter from the start, in layer-wise groups built by
:func:`~hf_metatransfer.param_groups.layerwise_param_groups`; phases and freezing only toggle ``requires_grad``
and the scheduler's phase, so the number of param groups never changes and checkpoints resume across LP -> FT.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import Trainer

from ..hub.callbacks import HubCardMixin
from ..layers import LayerMap, LayerMapSpec, build_layer_map, unwrap_model
from ..param_groups import layerwise_param_groups, reinit_
from .callbacks import StrategyCallback
from .config import FineTuningConfig
from .schedule import PhasedLR

logger = logging.getLogger(__name__)


class FineTuningTrainer(HubCardMixin, Trainer):
    """A Trainer for the strategies of :class:`FineTuningConfig`, alone or combined.

    ``layer_map`` may be given for architectures the automatic map cannot read (or set
    ``layer_map_blocks_regex`` in the config).
    """

    args: FineTuningConfig

    def __init__(
        self,
        model: nn.Module | None = None,
        args: FineTuningConfig | None = None,
        *,
        layer_map: LayerMap | None = None,
        **kwargs,
    ) -> None:
        if args is None or not isinstance(args, FineTuningConfig):
            raise TypeError(
                "FineTuningTrainer needs args=FineTuningConfig(...) (a TrainingArguments subclass)."
            )
        if model is None:
            raise ValueError(
                "FineTuningTrainer needs a model (model_init is supported by the search helpers)."
            )
        _disable_loss_kwargs(model)
        if args.lp_patience and kwargs.get("eval_dataset") is None:
            raise ValueError("lp_patience switches LP -> FT on the validation loss: pass eval_dataset=... .")
        if layer_map is None:
            spec = (
                LayerMapSpec(args.layer_map_blocks_regex, args.layer_map_head_regex)
                if args.layer_map_blocks_regex
                else None
            )
            layer_map = build_layer_map(model, spec)
        self.layer_map = layer_map
        self.initially_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if args.surgical_blocks is not None:
            self.surgical_block_indices = sorted(
                {i for sel in args.surgical_blocks for i in layer_map.resolve_blocks(sel)}
            )
        else:
            self.surgical_block_indices = None
        if args.reinit_head or args.reinit_top_k_blocks:
            generator = torch.Generator().manual_seed(args.seed)
            reinit_(
                model,
                layer_map,
                head=args.reinit_head,
                top_k_blocks=args.reinit_top_k_blocks,
                generator=generator,
            )
        self.linear_probe_info: dict | None = None
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(StrategyCallback(self))
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)

    # -- optimizer and scheduler ---------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = layerwise_param_groups(
                opt_model,
                self.args.learning_rate,
                self.args.layerwise_lr_decay,
                head_lr=self.args.head_learning_rate,
                weight_decay=self.args.weight_decay,
                layer_map=self.layer_map,
                per_tensor=self.args.auto_rgn,
            )
            groups = [g for g in groups if any(n in self.initially_trainable for n in g["param_names"])]
            self.optimizer_cls_and_kwargs = (
                self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            )
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            groups = optimizer.param_groups
            top = self.layer_map.top_depth
            phases = {
                "ft": {
                    "base_lrs": [g["lr"] for g in groups],
                    "schedule": self.args.schedule,
                    "warmup": self.args.warmup_steps,
                }
            }
            if self.args.sgd_probe:
                phases["lp"] = {
                    "base_lrs": [self.args.lp_learning_rate if g["depth"] == top else 0.0 for g in groups],
                    "schedule": "constant",
                }
            self.lr_scheduler = PhasedLR(
                optimizer,
                phases,
                first_phase="lp" if self.args.sgd_probe else "ft",
                total_steps=num_training_steps,
                cut_frac=self.args.stlr_cut_frac,
                ratio=self.args.stlr_ratio,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- training ------------------------------------------------------------------------------------------
    def run_linear_probe(self) -> dict:
        """Fit the head on features of the frozen backbone (``linear_probe`` 'logistic' or 'lstsq'), once."""
        from .linear_probe import fast_linear_probe

        self.linear_probe_info = fast_linear_probe(
            self.model,
            self.train_dataset,
            self.data_collator,
            solver=self.args.linear_probe,
            batch_size=self.args.per_device_eval_batch_size,
            layer_map=self.layer_map,
        )
        logger.info("fast linear probe: %s", self.linear_probe_info)
        return self.linear_probe_info

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Train; a fast LP-FT fits the head first (not when resuming: the checkpoint holds it)."""
        fast_probe = self.args.lp_ft and not self.args.sgd_probe
        if fast_probe and not resume_from_checkpoint and self.linear_probe_info is None:
            self.run_linear_probe()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @property
    def phase_scheduler(self) -> PhasedLR:
        return getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)


def _disable_loss_kwargs(model: nn.Module) -> None:
    """Make the Trainer average the loss itself (pitfalls: gradient doubling under DDP and accumulation)."""
    model.accepts_loss_kwargs = False
    unwrap_model(model).accepts_loss_kwargs = False
