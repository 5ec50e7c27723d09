"""MetaTrainer: the meta-training loop on accelerate, the tasks of a meta-batch sharded across processes.

Step s takes episodes ``s * B .. s * B + B - 1`` of the training sampler (B = ``meta_batch_size``); process r of
W adapts to those whose position is r mod W, and the summed meta-gradients are all-reduced, so W processes reach
the parameters one process reaches on the same meta-batch. Episodes are pure functions of their id, so a run
resumed from a checkpoint draws exactly the episodes it would have drawn.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..episodes.episode import Episode
from .algorithms import MetaAlgorithm, TaskResult, build_algorithm
from .config import MetaTrainingConfig

logger = logging.getLogger(__name__)

TRAINER_STATE = "meta_trainer_state.json"
ALGORITHM_STATE = "meta_algorithm.safetensors"


@dataclass
class MetaTrainerState:
    """What a checkpoint needs besides weights and optimizer: the step, validation history, skipped tasks."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    skipped_tasks: int = 0
    log_history: list[dict] = field(default_factory=list)


class MetaTrainer:
    """Meta-train ``model`` on episodes from ``train_sampler`` (anything with ``batch(ids) -> [Episode]``).

    ``collate`` turns an episode into ``{"support": batch, "query": batch}`` (an ``EpisodeCollator``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: MetaTrainingConfig,
        train_sampler: Any,
        collate: Callable[[Episode], dict],
        eval_sampler: Any | None = None,
        algorithm: MetaAlgorithm | None = None,
    ) -> None:
        self.config = config
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision, log_with=config.report_to or None, project_dir=config.output_dir
        )
        self.algorithm = algorithm or build_algorithm(config.algorithm, **config.algorithm_kwargs())
        if self.algorithm.second_order:
            _eager_attention(model)
        self.model = model.to(self.accelerator.device)
        self.model.train(config.dropout)
        self.algorithm.setup(self.model)
        for p in self.algorithm.meta_parameters():
            p.data = p.data.to(self.accelerator.device)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params += [(f"meta.{i}", p) for i, p in enumerate(self.algorithm.meta_parameters())]
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.optimizer, self.scheduler = self.accelerator.prepare(self.optimizer, self.scheduler)
        self.train_sampler, self.eval_sampler, self.collate = train_sampler, eval_sampler, collate
        self.state = MetaTrainerState()
        if config.report_to:
            self.accelerator.init_trackers("hf_metatransfer", config=asdict(config))

    # -- set-up --------------------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for _, p in self.params]
        if self.config.outer_optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.config.outer_lr, weight_decay=self.config.weight_decay)
        return torch.optim.AdamW(params, lr=self.config.outer_lr, weight_decay=self.config.weight_decay)

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / (c.warmup_steps + 1)
        progress = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
        if c.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        if c.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    # -- one meta-step -------------------------------------------------------------------------------------
    def task_ids(self, step: int) -> list[int]:
        """This process's share of step ``step``'s meta-batch."""
        b, world, rank = self.config.meta_batch_size, self.accelerator.num_processes, self.accelerator.process_index
        return [step * b + i for i in range(b) if i % world == rank]

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def meta_step(self, step: int) -> dict[str, float]:
        """Adapt to this process's tasks, all-reduce the summed meta-gradients, take one outer step."""
        flat = torch.zeros(sum(p.numel() for _, p in self.params), device=self.accelerator.device)
        totals = torch.zeros(4, device=self.accelerator.device)  # tasks ok, skipped, loss sum, accuracy sum
        tasks = []
        for episode in self.train_sampler.batch(self.task_ids(step)):
            batch = self.collate(episode)
            tasks.append((self._to_device(batch["support"]), self._to_device(batch["query"])))
        if self.config.batch_tasks and tasks:
            with self.accelerator.autocast():
                result = self.algorithm.batch_task_gradient(self.model, tasks)
            self._add(flat, totals, result, len(tasks) - result.skipped, result.skipped)
        else:
            for support, query in tasks:
                with self.accelerator.autocast():
                    result = self.algorithm.task_gradient(self.model, support, query)
                self._add(flat, totals, result, int(result.grads is not None), int(result.grads is None))
        if self.accelerator.num_processes > 1:
            flat = self.accelerator.reduce(flat, reduction="sum")
            totals = self.accelerator.reduce(totals, reduction="sum")
        ok, skipped = int(totals[0].item()), int(totals[1].item())
        self.state.skipped_tasks += skipped
        if skipped:
            logger.warning("step %d: %d task(s) with a non-finite loss or gradient were skipped", step, skipped)
        if ok:
            flat /= ok
            offset = 0
            for _, p in self.params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            if self.config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.config.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": totals[2].item() / max(ok, 1),
            "query_accuracy": totals[3].item() / max(ok, 1),
            "skipped_tasks": skipped,
            "lr": self.scheduler.get_last_lr()[0],
        }

    def _add(self, flat: torch.Tensor, totals: torch.Tensor, result: TaskResult, ok: int, skipped: int) -> None:
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
        if c.resume_from_checkpoint:
            self.load_checkpoint(self._resolve_checkpoint(c.resume_from_checkpoint))
        bar = tqdm(total=c.max_steps, initial=self.state.step, desc=f"Meta-training ({self.algorithm.name})",
                   disable=c.disable_tqdm or not self.accelerator.is_main_process)  # fmt: skip
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
            if (c.save_steps and self.state.step % c.save_steps == 0) or stop or self.state.step == c.max_steps:
                self.save_checkpoint()
            if stop:
                logger.info("Early stopping at step %d (best %s at step %s)", self.state.step,
                            self.state.best_metric, self.state.best_step)  # fmt: skip
                break
        bar.close()
        self.save_model(c.output_dir)
        self.accelerator.end_training()
        return self.state

    def _log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({"step": self.state.step, **logs})
        self.accelerator.log(logs, step=self.state.step)

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
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder)
        else:  # a plain torch module (the sine-wave example): its weights alone, as safetensors
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(folder / "model.safetensors"))  # fmt: skip
        extra = self.algorithm.state_dict()
        if extra:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(folder / ALGORITHM_STATE))
        (folder / "meta_training_config.json").write_text(json.dumps(asdict(self.config), indent=2))

    def save_checkpoint(self) -> Path:
        folder = Path(self.config.output_dir) / f"checkpoint-{self.state.step}"
        self.accelerator.save_state(str(folder))  # optimizer, scheduler, RNG states
        self.save_model(folder)
        if self.accelerator.is_main_process:
            (folder / TRAINER_STATE).write_text(json.dumps(asdict(self.state), indent=2))
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()
        return folder

    def _rotate_checkpoints(self) -> None:
        checkpoints = sorted(Path(self.config.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in checkpoints[: max(0, len(checkpoints) - self.config.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)

    def _resolve_checkpoint(self, path: str) -> Path:
        if path != "last":
            return Path(path)
        checkpoints = sorted(Path(self.config.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not checkpoints:
            raise FileNotFoundError(f"No checkpoint-* folder in {self.config.output_dir} to resume from.")
        return checkpoints[-1]

    def load_checkpoint(self, folder: Path) -> None:
        """Weights (safetensors), optimizer, scheduler, RNG and loop state: the run continues as if uninterrupted."""
        if not (folder / TRAINER_STATE).exists():
            raise FileNotFoundError(f"{folder} is not a MetaTrainer checkpoint (no {TRAINER_STATE}).")
        weights = load_file(str(folder / "model.safetensors"), device=str(self.accelerator.device))
        missing, unexpected = self.accelerator.unwrap_model(self.model).load_state_dict(weights, strict=False)
        if unexpected or any(n for n in missing if n in dict(self.model.named_parameters())):
            logger.info("checkpoint load: missing %s, unexpected %s", missing, unexpected)
        if (folder / ALGORITHM_STATE).exists():
            self.algorithm.load_state_dict(load_file(str(folder / ALGORITHM_STATE), device=str(self.accelerator.device)))
        self.accelerator.load_state(str(folder))
        self.state = MetaTrainerState(**json.loads((folder / TRAINER_STATE).read_text()))
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
        except RemoteEntryNotFoundError:  # the repo has no algorithm state: nothing beyond the weights was learned
            return False
        except LocalEntryNotFoundError:  # offline and not cached: it may exist, so say so rather than guess
            logger.warning("Could not check %s for %s (offline and not in the cache): the algorithm keeps its "
                           "initial inner LRs / projection.", source, ALGORITHM_STATE)  # fmt: skip
            return False
    algorithm.load_state_dict(load_file(path))
    return True


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
