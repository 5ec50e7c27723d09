"""MetaTrainingConfig: the meta-training loop's arguments, HfArgumentParser-ready."""

from __future__ import annotations

from dataclasses import dataclass, field

from .algorithms import ALGORITHMS
from .fast_weights import FAST_WEIGHTS

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class MetaTrainingConfig:
    """What :class:`MetaTrainer` does: algorithm, inner loop, outer optimisation, evaluation, checkpoints."""

    output_dir: str = field(default="outputs/meta", metadata={"help": "Where checkpoints and the model go."})
    algorithm: str = field(default="fomaml", metadata={"help": f"One of {ALGORITHMS}."})
    inner_steps: int | None = field(
        default=None, metadata={"help": "Inner SGD steps (default: the algorithm's)."}
    )
    inner_lr: float | None = field(default=None, metadata={"help": "Inner LR (default: the algorithm's)."})
    fast_weights: str | None = field(
        default=None,
        metadata={"help": f"Inner-loop parameters, one of {FAST_WEIGHTS} (default: the algorithm's)."},
    )
    top_k: int = field(default=1, metadata={"help": "Blocks adapted with fast_weights='top_k'."})
    task_loss: str = field(
        default="cross_entropy",
        metadata={
            "help": "'cross_entropy' (classification), 'mse' (regression) or 'lm' (the model's token loss on "
            "target tokens: translation with seq2seq or causal LMs)."
        },
    )
    projection_dim: int = field(
        default=0,
        metadata={"help": "ProtoNets: size of a learned linear projection of the embeddings, meta-learned (0: none)."},
    )
    meta_batch_size: int = field(
        default=4, metadata={"help": "Tasks a meta-step, over all processes together."}
    )
    batch_tasks: bool = field(
        default=True,
        metadata={
            "help": "Batch a process's tasks of a meta-step (ProtoNets: one embedding pass; MAML/FOMAML/ANIL: "
            "torch.func.vmap over tasks when their padded shapes agree), else one task at a time."
        },
    )
    max_steps: int = field(default=500, metadata={"help": "Meta-steps."})
    outer_lr: float = field(default=3e-5, metadata={"help": "Learning rate of the outer optimizer."})
    outer_optimizer: str = field(default="adamw", metadata={"help": "'adamw' or 'sgd'."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the outer optimizer."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": f"One of {SCHEDULES}."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps of the outer LR."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the meta-gradient norm (0: off)."})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (GPU)."})
    dropout: bool = field(
        default=False,
        metadata={"help": "Keep dropout on in meta-training (off by default: tasks then reproduce exactly)."},
    )
    eval_steps: int = field(default=100, metadata={"help": "Meta-validate every this many steps (0: never)."})
    eval_episodes: int = field(default=50, metadata={"help": "Fixed validation episodes scored each time."})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after this many validations without improvement (0: off)."}
    )
    save_steps: int = field(
        default=100, metadata={"help": "Checkpoint every this many steps (0: only at the end)."}
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "Checkpoints kept (the best one is kept too)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every this many steps."})
    report_to: list[str] = field(
        default_factory=list, metadata={"help": "Trackers for accelerate: tensorboard, wandb..."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the episodes and of everything else."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "A checkpoint folder to resume from, or 'last' for the newest in output_dir."},
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"Unknown algorithm {self.algorithm!r}: use one of {ALGORITHMS}.")
        if self.fast_weights is not None and self.fast_weights not in FAST_WEIGHTS:
            raise ValueError(f"Unknown fast_weights {self.fast_weights!r}: use one of {FAST_WEIGHTS}.")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}.")
        if self.outer_optimizer not in ("adamw", "sgd"):
            raise ValueError("outer_optimizer must be 'adamw' or 'sgd'.")
        if self.meta_batch_size < 1 or self.max_steps < 1:
            raise ValueError("meta_batch_size and max_steps must be >= 1.")
        if self.projection_dim and self.algorithm != "protonets":
            raise ValueError(f"projection_dim is a ProtoNets option; algorithm={self.algorithm!r} has no embeddings "
                             "to project: drop projection_dim or use algorithm='protonets'.")  # fmt: skip
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("early_stopping_patience needs eval_steps > 0 and validation episodes.")

    def algorithm_kwargs(self) -> dict:
        kwargs = {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "fast_weights": self.fast_weights,
                  "top_k": self.top_k, "loss": self.task_loss}  # fmt: skip
        if self.projection_dim:
            kwargs["projection_dim"] = self.projection_dim
        return kwargs
