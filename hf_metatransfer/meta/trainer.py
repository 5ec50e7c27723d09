"""MetaTrainer: the meta-training loop on accelerate, the tasks of a meta-batch sharded across processes.

Step s takes episodes ``s * B .. s * B + B - 1`` of the training sampler (B = ``meta_batch_size``); process r of
W adapts to those whose position is r mod W, and the summed meta-gradients are all-reduced, so W processes reach
the parameters one process reaches on the same meta-batch. Episodes are pure functions of their id, so a run
resumed from a checkpoint draws exactly the episodes it would have drawn.

The outer optimizer and its LR schedule are deliberately not passed through ``accelerator.prepare``: a prepared
scheduler steps once per process on every call (its batches are assumed split across processes), which would
run the schedule W times too fast here, where one meta-step is one step whatever W is. For the same reason fp16
loss scaling is done here (``LossScale``): meta-gradients come from ``torch.func``, past accelerate's GradScaler.
Checkpoints are written to a hidden folder and renamed when complete, so ``checkpoint-<step>`` is always whole.
Logs go where Trainer's go: ``state.log_history``, the trackers (``report_to`` and tracker instances), and one dict
line a logging step on the main process's console.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import RNG_STATE_NAME
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler

from ..conventions import conventions_for
from ..episodes.episode import Episode
from .algorithms import MetaAlgorithm, TaskResult, build_algorithm
from .config import MetaTrainingConfig

if TYPE_CHECKING:
    from ..hub.cards import CardData

logger = logging.getLogger(__name__)

TRAINER_STATE = "meta_trainer_state.json"
ALGORITHM_STATE = "meta_algorithm.safetensors"
ANCHOR_STATE = "anchor.safetensors"  # the weights anchor_pull pulls toward, in checkpoints
CONFIG_FILE = "meta_training_config.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass
class MetaTrainerState:
    """What a checkpoint needs besides weights and optimizer: the step, validation history, skipped tasks."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    skipped_tasks: int = 0
    skipped_steps: int = 0
    consecutive_skipped_steps: int = 0
    loss_scale: float | None = None
    loss_scale_good_steps: int = 0
    launch_id: str | None = None
    log_history: list[dict] = field(default_factory=list)


class LossScale:
    """Dynamic fp16 loss scaling with torch.amp.GradScaler's rule: halve on an inf/NaN step (the step is skipped),
    double after ``growth_interval`` clean steps. Its numbers live in :class:`MetaTrainerState`, so they resume."""

    init_scale, growth_interval = 2.0**16, 2000

    def __init__(self, state: MetaTrainerState) -> None:
        self.state = state
        if state.loss_scale is None:
            state.loss_scale = self.init_scale

    @property
    def scale(self) -> float:
        return float(self.state.loss_scale)

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.state.loss_scale, self.state.loss_scale_good_steps = self.scale / 2, 0
            return
        self.state.loss_scale_good_steps += 1
        if self.state.loss_scale_good_steps >= self.growth_interval:
            self.state.loss_scale, self.state.loss_scale_good_steps = self.scale * 2, 0


class MetaTrainer:
    """Meta-train ``model`` on episodes from ``train_sampler`` (anything with ``batch(ids) -> [Episode]``).

    ``collate`` turns an episode into ``{"support": batch, "query": batch}`` (an ``EpisodeCollator``).
    ``trackers``: ``accelerate.tracking.GeneralTracker`` instances, logged to besides those ``report_to`` names.
    """

    def __init__(
        self,
        model: nn.Module,
        config: MetaTrainingConfig,
        train_sampler: Any,
        collate: Callable[[Episode], dict],
        eval_sampler: Any | None = None,
        algorithm: MetaAlgorithm | None = None,
        trackers: Sequence[GeneralTracker] = (),
    ) -> None:
        self.config = config
        _refuse_parameter_sharding()
        _join_restarted_process_group()
        log_with = [*config.report_to, *trackers]
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision, cpu=_cpu_distributed(), log_with=log_with or None,
            project_dir=config.output_dir,
        )  # fmt: skip
        if self.accelerator.is_main_process:
            _warn_missing_trackers(config.report_to, self.accelerator.log_with)
        self.algorithm = algorithm or build_algorithm(config.algorithm, **config.algorithm_kwargs())
        if self.algorithm.second_order:
            _eager_attention(model)
        self.model = model.to(self.accelerator.device)
        self.model.train(config.dropout)
        self.algorithm.setup(self.model)
        for p in self.algorithm.meta_parameters():
            p.data = p.data.to(self.accelerator.device)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        #: where the trained weights began, which ``anchor_pull`` pulls them back toward after every step
        self.anchor = {n: p.detach().clone() for n, p in self.params} if config.anchor_pull else {}
        self.params += [(f"meta.{i}", p) for i, p in enumerate(self.algorithm.meta_parameters())]
        self.optimizer = self._optimizer()
        self.scheduler = get_scheduler(config.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=config.num_warmup_steps, num_training_steps=config.max_steps)  # fmt: skip
        self.accelerator.register_for_checkpointing(self.optimizer, self.scheduler)
        self.train_sampler, self.eval_sampler, self.collate = train_sampler, eval_sampler, collate
        self.state = MetaTrainerState()
        self._head_checked = False
        if self.accelerator.log_with:
            self.accelerator.init_trackers("hf_metatransfer", config=asdict(config))

    @property
    def precision(self) -> str:
        """The precision in force: the config's, else the launcher's (``accelerate launch --mixed_precision``)."""
        return self.accelerator.mixed_precision

    # -- set-up --------------------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for _, p in self.params]
        if self.config.optim == "sgd":
            return torch.optim.SGD(
                params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay
            )
        return torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    # -- one meta-step -------------------------------------------------------------------------------------
    def task_ids(self, step: int) -> list[int]:
        """This process's share of step ``step``'s meta-batch."""
        b, world, rank = (
            self.config.meta_batch_size,
            self.accelerator.num_processes,
            self.accelerator.process_index,
        )
        return [step * b + i for i in range(b) if i % world == rank]

    def _autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast in the precision in force, on CPU too (accelerate's autocast skips fp16 on CPU)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return (
            torch.autocast(self.accelerator.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        )

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def meta_step(self, step: int) -> dict[str, float]:
        """Adapt to this process's tasks, all-reduce the summed meta-gradients, take one outer step."""
        scaler = LossScale(self.state) if self.precision == "fp16" else None
        self.algorithm.loss_scale = scaler.scale if scaler else 1.0
        lr = self.optimizer.param_groups[0]["lr"]
        flat = torch.zeros(sum(p.numel() for _, p in self.params), device=self.accelerator.device)
        totals = torch.zeros(4, device=self.accelerator.device)  # tasks ok, skipped, loss sum, accuracy sum
        tasks = []
        episodes = self.train_sampler.batch(self.task_ids(step))
        if not self._head_checked:
            self._check_head(episodes)
        for episode in episodes:
            batch = self.collate(episode)
            tasks.append((self._to_device(batch["support"]), self._to_device(batch["query"])))
        if self.config.batch_tasks and tasks:
            with self._autocast():
                result = self.algorithm.batch_task_gradient(self.model, tasks)
            self._add(flat, totals, result, len(tasks) - result.skipped, result.skipped)
        else:
            for support, query in tasks:
                with self._autocast():
                    result = self.algorithm.task_gradient(self.model, support, query)
                self._add(flat, totals, result, int(result.grads is not None), int(result.grads is None))
        if self.accelerator.num_processes > 1:
            flat = self.accelerator.reduce(flat, reduction="sum")
            totals = self.accelerator.reduce(totals, reduction="sum")
        ok, skipped = int(totals[0].item()), int(totals[1].item())
        self.state.skipped_tasks += skipped
        skip_step = not ok or (scaler is not None and skipped > 0)
        if scaler is not None:  # fp16: an inf/NaN may be the scale's overflow, so the whole step goes
            scaler.update(found_inf=skipped > 0)
            if skipped:
                logger.info("step %d: inf/NaN meta-gradient under fp16: step skipped, loss scale now %g", step,
                            scaler.scale)  # fmt: skip
        elif skipped:
            logger.warning(
                "step %d: %d task(s) with a non-finite loss or gradient were skipped", step, skipped
            )
        self.state.skipped_steps += int(skip_step)
        self.state.consecutive_skipped_steps = self.state.consecutive_skipped_steps + 1 if skip_step else 0
        limit = self.config.max_consecutive_skipped_steps
        if limit and self.state.consecutive_skipped_steps >= limit:
            raise RuntimeError(
                f"Meta-training cannot learn: the last {limit} meta-steps (to step {step + 1}) updated nothing "
                f"({self.state.skipped_tasks} tasks skipped so far for a non-finite loss or gradient). Check the "
                "weights for inf/NaN, the learning rates and the inputs; nothing was saved as a trained model."
            )
        if not skip_step:
            flat /= ok
            offset = 0
            for _, p in self.params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            if self.config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.config.max_grad_norm)
            self.optimizer.step()
            if self.anchor:
                self._pull_to_anchor()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": totals[2].item() / max(ok, 1),
            "query_accuracy": totals[3].item() / max(ok, 1),
            "skipped_tasks": skipped,
            "lr": lr,
            **({"loss_scale": scaler.scale} if scaler else {}),
        }

    @torch.no_grad()
    def _pull_to_anchor(self) -> None:
        """Each trained weight moves ``anchor_pull`` of its distance back to where meta-training began."""
        for name, p in self.params:
            if name in self.anchor:
                p.lerp_(self.anchor[name], self.config.anchor_pull)

    def _add(
        self, flat: torch.Tensor, totals: torch.Tensor, result: TaskResult, ok: int, skipped: int
    ) -> None:
        """Add ``ok`` tasks whose mean is ``result``: mean x ok, so this process sums its tasks' gradients, the
        all-reduce sums the processes', and the division by the global count of ok tasks gives the global mean."""
        totals[1] += skipped
        if result.grads is None or not ok:
            return
        flat += torch.cat([result.grads[n].reshape(-1).float() for n, _ in self.params]) * ok
        totals[0] += ok
        totals[2] += result.loss * ok
        totals[3] += result.accuracy * ok

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, num_episodes: int | None = None) -> dict[str, float]:
        """Mean query accuracy after adaptation on the fixed validation episodes 0..n-1, dropout off."""
        from .evaluation import meta_test

        episodes = self.eval_sampler.batch(range(num_episodes or self.config.eval_episodes))
        result = meta_test(self.model, self.algorithm, episodes, self.collate, device=self.accelerator.device,
                           progress=False)  # fmt: skip
        self.model.train(self.config.dropout)
        return {"eval_accuracy": result.accuracy, "eval_accuracy_ci95": result.ci95}

    # -- the loop ------------------------------------------------------------------------------------------
    def train(self) -> MetaTrainerState:
        c = self.config
        resume = self._prepare_output_dir()
        if resume:
            self.load_checkpoint(self._resolve_checkpoint(resume))
        self.state.launch_id = os.environ.get("TORCHELASTIC_RUN_ID")
        bar = tqdm(total=c.max_steps, initial=self.state.step, desc=f"Meta-training ({self.algorithm.name})",
                   disable=c.disable_tqdm or not self.accelerator.is_main_process)  # fmt: skip
        with contextlib.nullcontext() if bar.disable else logging_redirect_tqdm():  # log lines above the bar
            self._loop(bar)
        bar.close()
        if self.state.skipped_steps >= self.state.step:
            raise RuntimeError(f"None of the {self.state.step} meta-steps updated the weights (every task had a "
                               "non-finite loss or gradient): nothing is saved as a trained model. Check the "
                               "weights for inf/NaN, the learning rates and the inputs.")  # fmt: skip
        self.save_model(c.output_dir)
        if self.accelerator.is_main_process:  # the run's record (log history, best step), as in a checkpoint
            (Path(c.output_dir) / TRAINER_STATE).write_text(json.dumps(asdict(self.state), indent=2))
            if hasattr(
                self.accelerator.unwrap_model(self.model), "save_pretrained"
            ):  # a Hub model, not a toy
                from ..hub.cards import write_card

                write_card(self.card_data(), c.output_dir)  # the project's card, not PEFT's blank one
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return self.state

    def _loop(self, bar: tqdm) -> None:
        """Meta-steps to max_steps or early stopping; checkpoints at save_steps, the last one only if asked for
        (the final model needs no optimizer state, which triples a checkpoint's size)."""
        c = self.config
        while self.state.step < c.max_steps:
            start = time.perf_counter()
            logs = self.meta_step(self.state.step)
            self.state.step += 1
            logs["step_time"] = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['query_accuracy']:.3f}")
            if c.logging_steps and self.state.step % c.logging_steps == 0:
                self._log(logs)
            stop = False
            if c.eval_steps and self.eval_sampler is not None and self.state.step % c.eval_steps == 0:
                stop = self._validate()
            last = stop or self.state.step == c.max_steps
            periodic = c.save_steps and self.state.step % c.save_steps == 0
            if (last and c.save_final_checkpoint) or (periodic and not last):
                self.save_checkpoint()
            if stop:
                logger.info("Early stopping at step %d (best %s at step %s)", self.state.step,
                            self.state.best_metric, self.state.best_step)  # fmt: skip
                break

    def _check_head(self, episodes: list) -> None:
        """A classifier whose head is not N-way for the episodes would train silently wrong (extra logits never
        right) or fail deep inside: refuse at the first step, before any update, naming both sizes."""
        self._head_checked = True
        labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if self.config.task_loss != "cross_entropy" or self.algorithm.name == "protonets" or labels is None:
            return
        ways = {e.n_way for e in episodes if hasattr(e, "n_way")}
        n_range = getattr(self.train_sampler, "n_range", None)
        fixed = n_range is not None and n_range[0] == n_range[1]
        if ways and (max(ways) > labels or (fixed and max(ways) != labels)):
            raise ValueError(f"The model's head has num_labels={labels} but the training episodes are "
                             f"{max(ways)}-way: load the model with num_labels={max(ways)} (from_pretrained(..., "
                             f"num_labels={max(ways)})) or sample {labels}-way episodes.")  # fmt: skip

    def _prepare_output_dir(self) -> str | None:
        """What to resume from, if anything. A folder holding another run is refused unless the config says to
        resume or overwrite it; an elastic restart (torchrun) resumes its own launch's last checkpoint."""
        c, out = self.config, Path(self.config.output_dir)
        if c.resume_from_checkpoint:
            return c.resume_from_checkpoint
        last = self.checkpoints()[-1:] if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 else []
        if last and self._read_state(last[0]).launch_id == os.environ.get("TORCHELASTIC_RUN_ID"):
            logger.warning(
                "Elastic restart: resuming from %s, this launch's last complete checkpoint.", last[0]
            )
            return str(last[0])
        previous = (
            sorted(p.name for p in out.glob("checkpoint-*")) + [CONFIG_FILE] * (out / CONFIG_FILE).exists()
        )
        if previous and not c.overwrite_output_dir:
            raise FileExistsError(
                f"{out} already holds a meta-training run ({', '.join(previous[:4])}). Pass "
                "resume_from_checkpoint='last' to continue it, overwrite_output_dir=True to replace it, or another "
                "output_dir."
            )
        if previous and self.accelerator.is_main_process:
            logger.warning(
                "overwrite_output_dir: removing the previous run's checkpoints and best model in %s", out
            )
            for old in [*out.glob("checkpoint-*"), out / "best"]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return None

    def _log(self, logs: dict[str, float]) -> None:
        """As Trainer logs: into log_history and the trackers with the step, and on the main process one dict line,
        through logging when it is configured to show INFO, else written to the console (tqdm-safe)."""
        entry = {**logs, "step": self.state.step}
        self.state.log_history.append(entry)
        self.accelerator.log(logs, step=self.state.step)
        if not self.accelerator.is_main_process:
            return
        line = str({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in entry.items()})
        if _logging_emits(logger, logging.INFO):
            logger.info(line)
        else:
            tqdm.write(line)

    def _validate(self) -> bool:
        metrics = self.evaluate()
        self._log(metrics)
        value = metrics["eval_accuracy"]
        if self.state.best_metric is None or value > self.state.best_metric:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.evals_without_improvement = 0
            self.save_model(Path(self.config.output_dir) / "best")
        else:
            self.state.evals_without_improvement += 1
        patience = self.config.early_stopping_patience
        return bool(patience) and self.state.evals_without_improvement >= patience

    # -- saving --------------------------------------------------------------------------------------------
    def save_model(self, folder: str | Path) -> None:
        """A normal HF checkpoint (``from_pretrained`` loads it), plus the algorithm's own state (Meta-SGD LRs)."""
        if not self.accelerator.is_main_process:
            return
        folder = Path(folder)
        model = self.accelerator.unwrap_model(self.model)
        _name_packaged_base(model)
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder)
        else:  # a plain torch module (the sine-wave example): its weights alone, as safetensors
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(folder / "model.safetensors"))  # fmt: skip
        extra = self.algorithm.state_dict()
        if extra:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(folder / ALGORITHM_STATE)
            )
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        conventions = conventions_for(
            model
        )  # known from the model's name or config: saved so they travel with it
        if conventions.source:
            conventions.save(folder)

    def card_data(self) -> CardData:
        """The card of what this run meta-learned, from what the trainer knows: the algorithm, its settings, the
        tasks' languages and sizes, the base model's Hub id. A recipe writes a fuller one (splits, meta-test)."""
        from ..cli_args import arguments_as_run
        from ..hub.cards import MetaLearnedCardData, TranslationCardData, hub_id

        c, algorithm, sampler = self.config, self.algorithm, self.train_sampler
        model = self.accelerator.unwrap_model(self.model)
        peft_config = next(iter(getattr(model, "peft_config", {}).values()), None)
        config = getattr(model, "config", None)
        base = peft_config.base_model_name_or_path if peft_config else getattr(config, "_name_or_path", None)
        common = dict(model_id=self.hub_model_id, base_model=hub_id(base), algorithm=c.algorithm,
                      inner_steps=algorithm.inner_steps, inner_lr=algorithm.inner_lr, outer_lr=c.learning_rate,
                      meta_batch_size=c.meta_batch_size, meta_steps=self.state.step, reproduce=arguments_as_run(c))  # fmt: skip
        if hasattr(sampler, "k_support"):  # translation tasks (language pairs)
            sources = sorted({source for source, _ in sampler.pairs})
            return TranslationCardData(
                **common, source_language=", ".join(sources),
                train_languages=list(sampler.target_languages), q_query=sampler.q_query,
                lora_r=getattr(peft_config, "r", None), lora_alpha=getattr(peft_config, "lora_alpha", None),
            )  # fmt: skip
        every_parameter = {name for name, _ in model.named_parameters()}
        n_way, k_shot, q_query = (getattr(sampler, f"{x}_range", (0, 0))[0] for x in ("n", "k", "q"))
        return MetaLearnedCardData(
            **common, n_way=n_way, k_shot=k_shot, q_query=q_query, first_order=not algorithm.second_order,
            fast_weights=algorithm.fast_weights, projection_dim=c.projection_dim,
            fast_parameters=[] if set(algorithm.fast) == every_parameter else list(algorithm.fast),
            mode=getattr(sampler, "mode", "classes"),
        )  # fmt: skip

    @property
    def hub_model_id(self) -> str:
        """The repo ``push_to_hub`` writes to: ``hub_model_id``, else the name of output_dir (as Trainer does)."""
        return self.config.hub_model_id or Path(self.config.output_dir).resolve().name

    def push_to_hub(
        self, commit_message: str = "Meta-trained with hf-metatransfer", ignore_patterns: tuple = ()
    ):
        """Upload output_dir (the model and whatever was written beside it: card, results), without checkpoints,
        ``best/`` or the workers' private files, from the main process (others return None; ``train`` already
        ended the process group, so nothing waits here); retried, the local folder left intact."""
        from ..hub.publish import DEFAULT_IGNORE, push_folder

        return push_folder(self.config.output_dir, self.hub_model_id, private=self.config.hub_private_repo,
                           commit_message=commit_message,
                           ignore_patterns=[*DEFAULT_IGNORE, ".partial-checkpoint-*", "best/**", *ignore_patterns])  # fmt: skip

    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>``: weights, optimizer, scheduler, RNG and loop state, written whole or not at all
        (into a hidden folder, renamed when complete), then the oldest beyond ``save_total_limit`` removed."""
        out = Path(self.config.output_dir)
        final, partial = out / f"checkpoint-{self.state.step}", out / f".partial-checkpoint-{self.state.step}"
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))  # optimizer, scheduler, every process's RNG states
        self.save_model(partial)
        if self.accelerator.is_main_process:
            if self.anchor:
                save_file({n: t.detach().cpu().contiguous() for n, t in self.anchor.items()},
                          str(partial / ANCHOR_STATE))  # fmt: skip
            (partial / TRAINER_STATE).write_text(json.dumps(asdict(self.state), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            if self.config.save_total_limit > 0:
                for old in self.checkpoints()[: -self.config.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def checkpoints(self) -> list[Path]:
        """The complete ``checkpoint-<step>`` folders of output_dir, oldest first; other folders are ignored."""
        found = [(int(m.group(1)), p) for p in Path(self.config.output_dir).glob("checkpoint-*")
                 if (m := _CHECKPOINT.fullmatch(p.name)) and (p / TRAINER_STATE).exists()]  # fmt: skip
        return [p for _, p in sorted(found)]

    def _resolve_checkpoint(self, path: str) -> Path:
        if path != "last":
            return Path(path)
        complete = self.checkpoints()
        if not complete:
            raise FileNotFoundError(f"No complete checkpoint-<step> folder in {self.config.output_dir} to resume "
                                    "from: drop resume_from_checkpoint to start a new run. (A run's last step is "
                                    "kept resumable only with save_final_checkpoint=True.)")  # fmt: skip
        logger.warning("Resuming from %s, the newest complete checkpoint in %s.", complete[-1].name,
                       self.config.output_dir)  # fmt: skip
        return complete[-1]

    @staticmethod
    def _read_state(folder: Path) -> MetaTrainerState:
        try:
            return MetaTrainerState(**json.loads((folder / TRAINER_STATE).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{folder / TRAINER_STATE} is unreadable ({error}): resume from another checkpoint "
                             "or start a new run.") from error  # fmt: skip

    def _check_compatible(self, folder: Path) -> None:
        """Resuming continues the same run: the algorithm, fast weights and parameter shapes must match."""
        saved = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).exists() else {}
        for key in ("algorithm", "fast_weights", "projection_dim", "task_loss"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise ValueError(f"{folder} was written by a run with {key}={saved[key]!r}; this run has "
                                 f"{key}={getattr(self.config, key)!r}. Resume with the same {key}, or start a new "
                                 "run in another output_dir (or with overwrite_output_dir).")  # fmt: skip
        params = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        for name, shape in _read_safetensors(folder / "model.safetensors", shapes_only=True).items():
            if name in params and tuple(params[name].shape) != shape:
                raise ValueError(f"{folder}: {name} has shape {shape} in the checkpoint and "
                                 f"{tuple(params[name].shape)} in this model (another head size?). Resume "
                                 "with the checkpoint's model, or start a new run.")  # fmt: skip

    def load_checkpoint(self, folder: Path) -> None:
        """Weights (safetensors), optimizer, scheduler, RNG and loop state: the run continues as if uninterrupted."""
        if not (folder / TRAINER_STATE).exists():
            raise FileNotFoundError(
                f"{folder} is not a complete MetaTrainer checkpoint (no {TRAINER_STATE})."
            )
        if not any(folder.glob(f"{RNG_STATE_NAME}*")):
            raise FileNotFoundError(f"{folder} holds a finished run's model, without the optimizer, scheduler and "
                                    "RNG state a resumed run needs: resume from one of its checkpoint-<step> "
                                    "folders, or start a new run from this model (from_pretrained).")  # fmt: skip
        state = self._read_state(folder)
        self._check_compatible(folder)
        weights = _read_safetensors(folder / "model.safetensors")  # copied onto each parameter's device below
        missing, unexpected = self.accelerator.unwrap_model(self.model).load_state_dict(weights, strict=False)
        if unexpected or any(n for n in missing if n in dict(self.model.named_parameters())):
            logger.info("checkpoint load: missing %s, unexpected %s", missing, unexpected)
        if (folder / ALGORITHM_STATE).exists():
            self.algorithm.load_state_dict(_read_safetensors(folder / ALGORITHM_STATE))
        if self.anchor:
            if not (folder / ANCHOR_STATE).exists():
                raise ValueError(f"{folder} was written without anchor_pull, so it does not hold the weights "
                                 "meta-training began from: resume it with anchor_pull=0, or start a new run with "
                                 "anchor_pull.")  # fmt: skip
            for name, value in _read_safetensors(folder / ANCHOR_STATE).items():
                self.anchor[name].copy_(value)
        self.accelerator.load_state(str(folder))
        self.state = state
        logger.info("Resumed from %s at step %d", folder, self.state.step)


def load_algorithm_state(algorithm: MetaAlgorithm, source: str | Path, **hub_kwargs: Any) -> bool:
    """Load what :meth:`MetaTrainer.save_model` wrote beside the weights (Meta-SGD's inner LRs, a ProtoNets
    projection) from a local folder or a Hub repo into ``algorithm`` (after ``setup``); False if there is none."""
    local = Path(source) / ALGORITHM_STATE
    if Path(source).is_dir():
        if not local.exists():
            return False
        path = str(local)
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        try:
            path = hf_hub_download(str(source), ALGORITHM_STATE, **hub_kwargs)
        except (
            RemoteEntryNotFoundError
        ):  # the repo has no algorithm state: nothing beyond the weights was learned
            return False
        except LocalEntryNotFoundError:  # offline and not cached: it may exist, so say so rather than guess
            logger.warning("Could not check %s for %s (offline and not in the cache): the algorithm keeps its "
                           "initial inner LRs / projection.", source, ALGORITHM_STATE)  # fmt: skip
            return False
    algorithm.load_state_dict(load_file(path))
    return True


def _logging_emits(log: logging.Logger, level: int) -> bool:
    """Whether a configured handler takes ``log``'s records at ``level`` (logging's last resort, WARNING and up,
    aside): where none does, as under transformers' defaults, Trainer-like lines are printed instead."""
    if not log.isEnabledFor(level):
        return False
    node: logging.Logger | None = log
    while node is not None:
        if any(level >= handler.level for handler in node.handlers):
            return True
        node = node.parent if node.propagate else None
    return False


def _warn_missing_trackers(requested: Sequence[str], active: Sequence[Any]) -> None:
    """accelerate drops a tracker whose package is missing with at most a generic warning: name it and the fix."""
    names = {tracker.name if isinstance(tracker, GeneralTracker) else str(tracker) for tracker in active}
    missing = [name for name in requested if name != "all" and name not in names]
    if missing:
        logger.warning("report_to %s: not installed, so nothing is logged there (pip install %s).", missing,
                       " ".join(missing))  # fmt: skip


def _read_safetensors(path: Path, shapes_only: bool = False) -> dict[str, Any]:
    """The tensors (or, reading the header only, their shapes) of a checkpoint file; a damaged file is named."""
    try:
        if not shapes_only:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path} cannot be read ({error}): the checkpoint is damaged (a save cut short?). Resume "
                         "from another checkpoint-<step> folder, or start a new run.") from error  # fmt: skip


def _cpu_distributed() -> bool:
    """Several processes (torchrun, accelerate launch) and no GPU: accelerate (1.15) joins the process group on
    CPU only when asked to; otherwise every rank would run the whole job as the main process (pitfalls)."""
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.is_available()
    )
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator


def _join_restarted_process_group() -> None:
    """After a torchrun elastic restart, join the process group through a store prefix of this attempt's own: the
    default keys still hold the killed attempt's addresses, and gloo then dials dead ports (seen on torch 2.13)."""
    import torch.distributed as dist

    restart, world = (
        int(os.environ.get(k, d)) for k, d in (("TORCHELASTIC_RESTART_COUNT", "0"), ("WORLD_SIZE", "1"))
    )
    if not restart or world < 2 or not dist.is_available() or dist.is_initialized():
        return
    rank = int(os.environ["RANK"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank == 0, multi_tenant=not agent_store)  # fmt: skip
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, store=dist.PrefixStore(f"hf_metatransfer/attempt-{restart}", store), rank=rank,
                            world_size=world)  # fmt: skip


def _refuse_parameter_sharding() -> None:
    """FSDP and DeepSpeed shard parameters; the meta loop's fast weights need every process to hold them whole."""
    for variable, engine in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true":
            raise ValueError(
                f"MetaTrainer does not run under {engine}: it is data-parallel over tasks, each process adapting "
                "the whole model (torch.func fast weights) to its share of the meta-batch, so parameter sharding "
                "cannot serve it. Launch it with recipes/accelerate_configs/multi_gpu.yaml or multi_node.yaml; to "
                "fit a bigger model use LoRA fast weights (fast_weights='lora') and bf16. The FSDP and DeepSpeed "
                "configs are for the finetune recipe (transformers Trainer)."
            )


def _eager_attention(model: nn.Module) -> None:
    """Second-order gradients need eager attention: CPU SDPA has no double backward (pitfalls)."""
    setter = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", "eager") != "eager":
        if callable(setter):
            setter("eager")
        else:
            config._attn_implementation = "eager"
        logger.info("Switched %s to eager attention for second-order gradients.", type(model).__name__)


def _name_packaged_base(model: nn.Module) -> None:
    """An adapter over a packaged model (a rebuilt SmolLM2) names the release it stands for, not a local folder,
    so that ``AutoPeftModel*.from_pretrained(repo)`` works for users of the pushed repo."""
    from ..data.packaged_models import packaged_hub_id

    for peft_config in getattr(model, "peft_config", {}).values():
        base = peft_config.base_model_name_or_path
        if base and Path(base).is_dir() and (released := packaged_hub_id(base)):
            peft_config.base_model_name_or_path = released
