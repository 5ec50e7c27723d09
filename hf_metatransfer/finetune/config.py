"""FineTuningConfig: TrainingArguments plus one field per fine-tuning strategy; every combination composes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from ..param_groups import check_decay
from .schedule import SCHEDULES

LINEAR_PROBES = ("sgd", "logistic", "lstsq")


@dataclass
class FineTuningConfig(TrainingArguments):
    """Arguments of :class:`FineTuningTrainer`: the usual ``TrainingArguments`` and the strategies.

    ``learning_rate``, ``warmup_steps`` and ``lr_scheduler_type`` are those of full fine-tuning (the FT phase of
    LP-FT); the linear-probing phase has its own fields.
    """

    save_total_limit: int | None = field(
        default=2,
        metadata={"help": "Newest checkpoints kept (None or 0: all, TrainingArguments' default; each is about 3x "
                          "the model with AdamW's state). With load_best_model_at_end the best one is kept too."},
    )  # fmt: skip
    # Layer-wise / discriminative learning rates.
    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "lr(depth) = learning_rate x decay^(distance from the top); 1.0 turns it off. In (0, 1]."
        },
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "LR of the head; defaults to learning_rate."}
    )
    # LP-FT.
    lp_ft: bool = field(
        default=False,
        metadata={"help": "Linear probing (head only) first, then full fine-tuning (Kumar et al. 2022)."},
    )
    linear_probe: str = field(
        default="sgd",
        metadata={
            "help": "How LP-FT probes: 'sgd' trains the head with the optimizer in a first phase; 'logistic' "
            "(L-BFGS) or 'lstsq' (closed form) fit the head once on features extracted from the frozen backbone."
        },
    )
    lp_learning_rate: float = field(
        default=1e-3, metadata={"help": "LR of the head during the 'sgd' LP phase."}
    )
    lp_max_steps: int = field(
        default=0, metadata={"help": "Step budget of the LP phase (0: none; then lp_num_epochs or patience)."}
    )
    lp_num_epochs: float = field(default=0.0, metadata={"help": "Epoch budget of the LP phase (0: none)."})
    lp_patience: int = field(
        default=0,
        metadata={
            "help": "End LP when the validation loss has not improved for this many evaluations (0: off). "
            "Needs an eval_dataset and an eval_strategy."
        },
    )
    lp_reset_optimizer: bool = field(
        default=True, metadata={"help": "Clear the optimizer's moments when full fine-tuning starts."}
    )
    # Gradual unfreezing (ULMFiT).
    gradual_unfreezing: bool = field(
        default=False,
        metadata={"help": "Train the head first, then unfreeze one more group from the top per stage."},
    )
    unfreeze_interval_steps: int = field(
        default=0, metadata={"help": "Steps per unfreezing stage (0: one stage per epoch)."}
    )
    unfreeze_groups_per_stage: int = field(
        default=1, metadata={"help": "Groups (blocks) unfrozen per stage."}
    )
    slanted_triangular: bool = field(
        default=False, metadata={"help": "ULMFiT's slanted triangular LR instead of lr_scheduler_type."}
    )
    stlr_cut_frac: float = field(default=0.1, metadata={"help": "Fraction of steps of the STLR rise."})
    stlr_ratio: float = field(
        default=32.0, metadata={"help": "Ratio of the largest to the smallest STLR LR."}
    )
    # Surgical fine-tuning.
    surgical_blocks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Only these blocks train: 'first', 'middle', 'last', 'all' or indices (negative from the top)."
        },
    )
    surgical_train_head: bool = field(
        default=True, metadata={"help": "The head trains too in surgical fine-tuning."}
    )
    auto_rgn: bool = field(
        default=False,
        metadata={
            "help": "Auto-RGN (Lee et al. 2022): each tensor's LR weighted by ||g||/||theta||, normalised by the "
            "largest, recomputed every epoch (or auto_rgn_interval_steps)."
        },
    )
    auto_rgn_interval_steps: int = field(
        default=0, metadata={"help": "Steps between Auto-RGN updates (0: per epoch)."}
    )
    # Re-initialisation (Zhang et al. 2021).
    reinit_head: bool = field(default=False, metadata={"help": "Re-initialise the head before training."})
    reinit_top_k_blocks: int = field(
        default=0, metadata={"help": "Re-initialise the top k blocks before training."}
    )
    # Layer map of one's own.
    layer_map_blocks_regex: str | None = field(
        default=None,
        metadata={
            "help": "Regex whose first group is the block index, for architectures the layer map cannot read."
        },
    )
    layer_map_head_regex: str | None = field(
        default=None, metadata={"help": "Regex of head parameter names."}
    )

    def __post_init__(self) -> None:
        self._check_deepspeed()  # before TrainingArguments, which imports deepspeed
        super().__post_init__()
        check_decay(self.layerwise_lr_decay)
        if self.linear_probe not in LINEAR_PROBES:
            raise ValueError(f"linear_probe={self.linear_probe!r} is unknown: use one of {LINEAR_PROBES}.")
        if (
            self.lp_ft
            and self.linear_probe == "sgd"
            and not (self.lp_max_steps or self.lp_num_epochs or self.lp_patience)
        ):
            raise ValueError(
                "lp_ft with linear_probe='sgd' needs a way to end the probing phase: set lp_max_steps, "
                "lp_num_epochs or lp_patience (or use linear_probe='logistic' to fit the head in one go)."
            )
        if self.lp_patience and self.eval_strategy.value == "no":
            raise ValueError(
                "lp_patience switches LP -> FT on the validation loss, but eval_strategy is 'no': set "
                "eval_strategy='steps' (with eval_steps) or 'epoch', and pass an eval_dataset to the trainer."
            )
        schedule = "slanted_triangular" if self.slanted_triangular else self.lr_scheduler_type.value
        if schedule not in SCHEDULES:
            raise ValueError(
                f"lr_scheduler_type={schedule!r} is not supported by the strategy scheduler: use one of {SCHEDULES}."
            )
        if self.unfreeze_groups_per_stage < 1:
            raise ValueError("unfreeze_groups_per_stage must be >= 1.")
        if self.reinit_top_k_blocks < 0:
            raise ValueError("reinit_top_k_blocks must be >= 0.")
        if self.surgical_blocks is not None:
            self.surgical_blocks = [_parse_block(b) for b in self.surgical_blocks]
        if self.dynamic_freezing and self.ddp_find_unused_parameters is None:
            # Parameters frozen mid-run get no gradient; DDP must be told (pitfalls: DDP + freezing).
            self.ddp_find_unused_parameters = True

    @property
    def schedule(self) -> str:
        return "slanted_triangular" if self.slanted_triangular else self.lr_scheduler_type.value

    @property
    def sgd_probe(self) -> bool:
        return self.lp_ft and self.linear_probe == "sgd"

    @property
    def dynamic_freezing(self) -> bool:
        return self.lp_ft or self.gradual_unfreezing or self.surgical_blocks is not None

    def _check_deepspeed(self) -> None:
        ds = self.deepspeed
        if not ds:
            return
        cfg = ds if isinstance(ds, dict) else json.load(open(ds))
        if "optimizer" in cfg:
            raise ValueError(
                "The DeepSpeed config carries its own 'optimizer' block: DeepSpeed would then never call "
                "create_optimizer and the layer-wise param groups would be lost. Remove 'optimizer' (and "
                "'scheduler') from the DeepSpeed config; the trainer builds both."
            )

    @classmethod
    def strategy_fields(cls) -> list[str]:
        """Names of the fields this class adds to TrainingArguments."""
        base = {f.name for f in fields(TrainingArguments)}
        return [f.name for f in fields(cls) if f.name not in base]


def _parse_block(value: str | int) -> str | int:
    if isinstance(value, int) or value in ("first", "middle", "last", "all"):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"surgical_blocks entry {value!r} is not a block: use 'first', 'middle', 'last', 'all' or an index."
        ) from None
