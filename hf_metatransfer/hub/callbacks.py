"""Our model card inside a Trainer run: kept current in ``output_dir`` and used by ``Trainer.push_to_hub``.

:class:`ModelCardCallback` (as SetFit's) collects the evaluations of a run and writes ``README.md`` into
``output_dir`` at every save and at the end of training, so the folder is publishable at any point.
:class:`HubCardMixin` makes a Trainer subclass push that card instead of transformers' draft (``push_to_hub``
calls ``create_model_card`` before uploading ``output_dir``), retries a push that failed transiently, and keeps
``hub_token`` out of the ``training_args.bin`` every save and push writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sized
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from huggingface_hub import get_token
from transformers import TrainerCallback
from transformers.trainer_pt_utils import AcceleratorConfig

from ..layers import unwrap_model
from .cards import FineTunedCardData, Result, hub_id, non_default_strategy, results_from_json, write_card
from .publish import is_transient, push_folder, with_retries
from .tokens import protect, scrub

logger = logging.getLogger(__name__)

#: Trainer metrics that describe the evaluation run, not the model.
_NOT_RESULTS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")
#: TrainingArguments worth a line in the card's method section.
_TRAINING_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "seed",
)
#: TrainingArguments that say where a run went, not how it trained: left out of the reproduce section.
_NOT_REPRODUCED = {
    "output_dir",
    "run_name",
    "logging_dir",
    "push_to_hub",
    "resume_from_checkpoint",
    "report_to",
    "disable_tqdm",
}
#: What Trainer.push_to_hub leaves out of the upload.
_TRAINER_IGNORE = ("_*", "checkpoint-*")
_PIPELINES = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForCausalLM": "text-generation",
    "ForConditionalGeneration": "text2text-generation",
    "MTModel": "translation",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
}


class ModelCardCallback(TrainerCallback):
    """Writes ``output_dir/README.md`` from the trainer's model, args, log history and evaluations.

    ``card_kwargs`` are fields of :class:`FineTunedCardData` the trainer cannot know (``language``,
    ``datasets``, ``dataset_name``, ``license``, ``base_model`` for a model loaded from a local folder, ``tags``).
    """

    def __init__(self, trainer: Any, **card_kwargs: Any) -> None:
        self.trainer = trainer
        self.card_kwargs = card_kwargs
        # The options the trainer does not hold (a recipe's model and data arguments): the Reproduce section
        # starts with them, so that it repeats the run rather than train the default model on the default data.
        self.run_arguments: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics.update({k: v for k, v in (metrics or {}).items() if isinstance(v, int | float)})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write()

    def write(self, **overrides: Any) -> Path:
        """Write the card (and its learning curve) into ``output_dir``; ``overrides`` win over everything."""
        path = write_card(self.card_data(**overrides), self.trainer.args.output_dir)
        logger.info("model card written to %s", path)
        return path

    def card_data(self, **overrides: Any) -> FineTunedCardData:
        trainer, args = self.trainer, self.trainer.args
        model = unwrap_model(trainer.model)
        config = getattr(model, "config", None)
        strategy_fields = getattr(type(args), "strategy_fields", None)
        strategy = {name: getattr(args, name) for name in strategy_fields()} if strategy_fields else {}
        labels = [str(label) for label in (getattr(config, "id2label", None) or {}).values()]
        named = not all(label.startswith("LABEL_") for label in labels)
        model_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or Path(args.output_dir).name
        data: dict[str, Any] = {
            "model_id": model_id,
            "base_model": hub_id(getattr(config, "_name_or_path", None)),
            "pipeline_tag": _pipeline_tag(model),
            "library_name": "peft" if hasattr(trainer.model, "peft_config") else "transformers",
            "results": self.results(),
            "strategy": strategy,
            "training": {
                k: _plain(getattr(args, k))
                for k in _TRAINING_KEYS
                if getattr(args, k, None) not in (None, -1)
            },
            "labels": labels if named else [],
            "linear_probe": getattr(trainer, "linear_probe_info", None),
            "log_history": list(trainer.state.log_history),
            "reproduce": {**self.run_arguments, **self.reproduce(strategy)},
        }
        data.update(self.card_kwargs)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return FineTunedCardData(**data)

    def results(self) -> list[Result]:
        """The latest value of every evaluated metric; the recipe's ``results.json``, when present, for the test set.

        Accuracies on the trainer's own eval set get their interval (its size is known); ``results.json`` gives
        the size of the test set.
        """
        eval_size = len(self.trainer.eval_dataset) if isinstance(self.trainer.eval_dataset, Sized) else None
        rows = []
        for key, value in self.metrics.items():
            split, _, metric = key.partition("_")
            if not metric or metric in _NOT_RESULTS:
                continue
            split = "validation" if split == "eval" else split
            if metric == "accuracy" and split == "validation" and eval_size:
                rows.append(Result.binomial(metric, value, eval_size, split=split))
            else:
                rows.append(Result(metric, value, split=split))
        saved = Path(self.trainer.args.output_dir) / "results.json"
        if saved.is_file():
            recorded = results_from_json(json.loads(saved.read_text()).get("results", {}))
            rows = [r for r in rows if r.split != "test"] + recorded
        return rows

    def reproduce(self, strategy: dict[str, Any]) -> dict[str, Any]:
        """The run's arguments that differ from their defaults (tokens and destinations left out).

        Compared with the field defaults, not with a default instance: building ``TrainingArguments`` resets
        accelerate's state, which would break the running Trainer. Values ``__post_init__`` fills in from an
        unset default (``None`` -> ``False`` or ``[]``, the default accelerator config) count as unchanged.
        """
        args = self.trainer.args
        defaults = {f.name: _default(f) for f in fields(args)}
        defaults["accelerator_config"] = AcceleratorConfig().to_dict()
        return {
            **{
                k: v
                for k, v in args.to_dict().items()  # enums as strings, tokens masked
                if k in defaults
                and not _unchanged(v, defaults[k])
                and k not in strategy
                and k not in _NOT_REPRODUCED
                and not k.startswith("hub_")
                and not k.endswith("_token")
            },
            **non_default_strategy(strategy),
        }


class HubCardMixin:
    """Trainer mixin: ``push_to_hub`` uploads our card, ``output_dir`` always has one, no token is ever pickled.

    Put it first among the bases: ``class FineTuningTrainer(HubCardMixin, Trainer)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.args.hub_token = protect(self.args.hub_token)
        self.card_callback = ModelCardCallback(self)
        self.add_callback(self.card_callback)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Trainer's repo creation (in its constructor when ``push_to_hub`` is set) under the push policy: a
        transient failure is retried, any other raises a PublishError saying what to check, before training."""
        token = token if token is not None else self.args.hub_token
        repo = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        with_retries(lambda: super(HubCardMixin, self).init_hf_repo(token=token, private=private),
                     target=f"model repo {repo}", local=str(self.args.output_dir),
                     secret=token if isinstance(token, str) else get_token(), max_retries=2, backoff=1.0)  # fmt: skip

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """``Trainer.push_to_hub`` with our card; a blocking push that fails transiently is retried.

        The retry uploads ``output_dir`` again (the model and card are saved already, and saving may need every
        process) with :func:`~hf_metatransfer.hub.push_folder`'s policy: a push that keeps failing raises
        :class:`~hf_metatransfer.hub.PublishError`. Other errors propagate unchanged.
        """
        try:
            return super().push_to_hub(
                commit_message=commit_message,
                blocking=blocking,
                token=token,
                revision=revision,
                private=private,
                **kwargs,
            )
        except Exception as err:
            if not blocking or self.hub_model_id is None or not is_transient(err):
                raise
            token = token if token is not None else self.args.hub_token
            logger.warning(
                "push to %s failed (%s); retrying the upload",
                self.hub_model_id,
                scrub(f"{type(err).__name__}: {err}", token),
            )
        return push_folder(
            self.args.output_dir,
            self.hub_model_id,
            token=token,
            private=private,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message or "End of training",
            ignore_patterns=_TRAINER_IGNORE,
        )

    def create_model_card(
        self,
        language: str | list[str] | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write our card into ``output_dir`` (Trainer's signature; ``push_to_hub(**kwargs)`` passes these)."""
        if not self.is_world_process_zero():
            return
        datasets = _as_list(dataset_tags)
        self.card_callback.write(
            language=_as_list(language),
            license=license,
            tags=_as_list(tags),
            base_model=finetuned_from,
            pipeline_tag=tasks if isinstance(tasks, str) else None,
            datasets=datasets,
            dataset_name=", ".join(_as_list(dataset) or []) or None,
        )


def _pipeline_tag(model: Any) -> str:
    name = type(model).__name__
    return next((tag for suffix, tag in _PIPELINES.items() if name.endswith(suffix)), "text-classification")


def _as_list(value: str | list[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _unchanged(value: Any, default: Any) -> bool:
    if value == default or (not value and not default):
        return True
    return isinstance(value, dict) and isinstance(default, dict) and value.items() <= default.items()


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return _plain(f.default)
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _plain(value: Any) -> Any:
    """Enum members as their values, the way ``TrainingArguments.to_dict`` writes them."""
    return getattr(value, "value", value)
