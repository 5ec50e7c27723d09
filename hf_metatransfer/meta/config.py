"""MetaTrainingConfig: the meta-training loop's arguments, HfArgumentParser-ready and named as in TrainingArguments
wherever the meaning is the same (learning_rate, lr_scheduler_type, warmup_steps, bf16/fp16, save_*, push_to_hub)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .algorithms import ALGORITHMS
from .fast_weights import FAST_WEIGHTS

#: transformers' schedules that need nothing beyond warmup and total steps (``transformers.get_scheduler``).
SCHEDULES = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)
OPTIMIZERS = ("adamw_torch", "sgd")


@dataclass
class MetaTrainingConfig:
    """What :class:`MetaTrainer` does: algorithm, inner loop, outer optimisation, evaluation, checkpoints."""

    output_dir: str = field(default="outputs/meta", metadata={"help": "Where checkpoints and the model go."})
    algorithm: str = field(default="fomaml", metadata={"help": f"One of {ALGORITHMS}."})
    inner_steps: int | None = field(
        default=None,
        metadata={"help": "SGD steps of the inner loop, the adaptation to each task's support set (default: the "
                          "algorithm's). TrainingArguments has no inner loop, hence names of its own."},
    )  # fmt: skip
    inner_lr: float | None = field(
        default=None,
        metadata={"help": "LR of the inner loop (default: the algorithm's); learning_rate is the outer."},
    )
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
        metadata={
            "help": "ProtoNets: size of a learned linear projection of the embeddings, meta-learned (0: none)."
        },
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
    max_steps: int = field(default=500, metadata={"help": "Meta-steps (outer optimizer steps)."})
    learning_rate: float = field(
        default=3e-5,
        metadata={"help": "Peak LR of the outer (meta) optimizer, as in TrainingArguments; the inner loop's is "
                          "inner_lr."},
    )  # fmt: skip
    optim: str = field(default="adamw_torch", metadata={"help": f"Outer optimizer, one of {OPTIMIZERS}."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the outer optimizer."})
    anchor_pull: float = field(
        default=0.0,
        metadata={"help": "Pull toward the pretrained weights: after every outer step, each trained weight of the "
                          "model moves this fraction of the way back to its value when meta-training began (0: "
                          "off). Keeps the meta-learned encoder near the pretrained one, which serves domains "
                          "meta-training never saw (L2-SP, Li et al. 2018, applied decoupled as AdamW applies "
                          "weight decay). Checkpoints then hold those starting weights too (anchor.safetensors), "
                          "so a resumed run pulls toward the same point."},
    )  # fmt: skip
    lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": f"Outer LR schedule over max_steps (transformers.get_scheduler), one of {SCHEDULES}."
        },
    )
    warmup_steps: float = field(
        default=0,
        metadata={"help": "Linear warmup of the outer LR from 0: steps (an integer) or a ratio of max_steps (a "
                          "float in [0, 1)), as in TrainingArguments."},
    )  # fmt: skip
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the meta-gradient norm (0: off)."})
    bf16: bool = field(
        default=False,
        metadata={"help": "bf16 autocast. With neither bf16 nor fp16 the launcher's choice stands "
                          "(accelerate launch --mixed_precision, or its config file); default fp32."},
    )  # fmt: skip
    fp16: bool = field(
        default=False,
        metadata={"help": "fp16 autocast with dynamic loss scaling of the meta-gradient: a step with an inf/NaN "
                          "gradient is skipped, counted and the scale halved (as torch's GradScaler does)."},
    )  # fmt: skip
    dropout: bool = field(
        default=False,
        metadata={"help": "Keep dropout on in meta-training (off by default: tasks then reproduce exactly)."},
    )
    max_consecutive_skipped_steps: int = field(
        default=10,
        metadata={"help": "Stop with an error after this many meta-steps in a row that updated nothing (every "
                          "task non-finite, or an fp16 overflow): such a run cannot learn (0: never stop)."},
    )  # fmt: skip
    eval_steps: int = field(default=100, metadata={"help": "Meta-validate every this many steps (0: never)."})
    eval_episodes: int = field(default=50, metadata={"help": "Fixed validation episodes scored each time."})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after this many validations without improvement (0: off)."}
    )
    save_steps: int = field(
        default=100, metadata={"help": "Checkpoint every this many steps (0: only at the end)."}
    )
    save_total_limit: int = field(
        default=2,
        metadata={"help": "Newest checkpoints kept (0: all); the best model is kept in best/ besides."},
    )
    save_final_checkpoint: bool = field(
        default=False,
        metadata={"help": "Also write a resumable checkpoint-<step> (optimizer, scheduler and RNG state: about 3x "
                          "the model with AdamW) at the last step, to continue the run later with more max_steps. "
                          "Off: the run ends with the model in output_dir only; save_steps checkpoints before the "
                          "last step keep their optimizer state either way."},
    )  # fmt: skip
    logging_steps: int = field(default=10, metadata={"help": "Log every this many steps."})
    report_to: list[str] = field(
        default_factory=list,
        metadata={"help": "Trackers for accelerate: tensorboard, wandb... ('none': none)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the episodes and of everything else."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "A checkpoint folder to resume from, or 'last' for the newest complete one in "
                          "output_dir. Under torchrun, an elastic restart resumes from 'last' by itself."},
    )  # fmt: skip
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in output_dir (its checkpoints and model); without it such a "
                          "folder is refused unless resuming."},
    )  # fmt: skip
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Push output_dir's model to hub_model_id with MetaTrainer.push_to_hub() (the recipes "
                          "call it at the end, with the card, the results and the evaluation episodes)."},
    )  # fmt: skip
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Repo id to push to (default: the name of output_dir)."}
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the Hub repo private (default: the Hub's default)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"Unknown algorithm {self.algorithm!r}: use one of {ALGORITHMS}.")
        if self.fast_weights is not None and self.fast_weights not in FAST_WEIGHTS:
            raise ValueError(f"Unknown fast_weights {self.fast_weights!r}: use one of {FAST_WEIGHTS}.")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r}: use one of {SCHEDULES}.")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps)):
            raise ValueError(f"warmup_steps={self.warmup_steps}: give a number of steps (an integer >= 0) or a ratio "
                             "of max_steps in [0, 1).")  # fmt: skip
        if self.lr_scheduler_type == "constant" and self.warmup_steps:
            raise ValueError("lr_scheduler_type='constant' has no warmup: use 'constant_with_warmup' with "
                             f"warmup_steps={self.warmup_steps}, or warmup_steps=0.")  # fmt: skip
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"optim={self.optim!r}: use one of {OPTIMIZERS}.")
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both set: choose one.")
        if not 0 <= self.anchor_pull < 1:
            raise ValueError(f"anchor_pull={self.anchor_pull}: the fraction of the way back to the starting "
                             "weights taken after each step, in [0, 1) (0: off).")  # fmt: skip
        if self.report_to in (["none"], ["None"]):
            self.report_to = []
        if self.meta_batch_size < 1 or self.max_steps < 1:
            raise ValueError("meta_batch_size and max_steps must be >= 1.")
        if self.projection_dim and self.algorithm != "protonets":
            raise ValueError(f"projection_dim is a ProtoNets option; algorithm={self.algorithm!r} has no embeddings "
                             "to project: drop projection_dim or use algorithm='protonets'.")  # fmt: skip
        if self.inner_steps == 0 and self.algorithm != "protonets":
            raise ValueError(f"inner_steps=0 leaves {self.algorithm} with no inner loop: it would train as plain "
                             "multi-task learning. Use inner_steps >= 1, or algorithm='protonets' (no inner loop).")  # fmt: skip
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("early_stopping_patience needs eval_steps > 0 and validation episodes.")

    @property
    def num_warmup_steps(self) -> int:
        """Warmup in steps, a ratio taken of max_steps as ``TrainingArguments.get_warmup_steps`` does."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(self.max_steps * self.warmup_steps)

    @property
    def mixed_precision(self) -> str | None:
        """What to ask accelerate for; None keeps the launcher's choice."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else None

    def algorithm_kwargs(self) -> dict:
        kwargs = {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "fast_weights": self.fast_weights,
                  "top_k": self.top_k, "loss": self.task_loss}  # fmt: skip
        if self.projection_dim:
            kwargs["projection_dim"] = self.projection_dim
        return kwargs
