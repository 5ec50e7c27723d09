"""Adapting a model to one language pair from its K support pairs: in context, or by gradient steps.

Gradient adaptation trains whatever the model has trainable: every weight of a plain model (full fine-tuning), or
the LoRA matrices of a PEFT model (LoRA fine-tuning, from a fresh adapter or a meta-learned one), with layer-wise
learning rates through the layer map. :func:`restored` puts the trainable weights back afterwards, so one model
serves every task of an evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..param_groups import layerwise_param_groups
from .batches import TaskTexts, TranslationBatcher
from .generation import translate

__all__ = ["SupportFineTuning", "add_lora", "restored"]


@contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block, then restore the model's trainable parameters (and training mode) to what they were."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
        model.train(was_training)


def add_lora(
    model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules="all-linear"
):
    """``model`` wrapped in a fresh LoRA adapter (B = 0: the wrapped model computes what ``model`` computed)."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if getattr(model.config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM
    config = LoraConfig(
        task_type=task, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules
    )
    return get_peft_model(model, config)


@dataclass
class SupportFineTuning:
    """``steps`` AdamW steps on minibatches of the support pairs (loss on target tokens), in place.

    ``layerwise_lr_decay`` < 1 gives the block at distance d from the top ``lr * decay**d`` (the layer map of the
    model, a PEFT model's included).
    """

    steps: int = 20
    lr: float = 1e-4
    batch_size: int = 8
    layerwise_lr_decay: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    name: str = "fine-tuning"

    def adapt(self, model: nn.Module, batcher: TranslationBatcher, task: TaskTexts) -> list[float]:
        """Train on ``task``'s support pairs; returns the loss of each step."""
        groups = layerwise_param_groups(model, self.lr, self.layerwise_lr_decay, weight_decay=self.weight_decay,
                                        include_frozen=False)  # fmt: skip
        if not groups:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters to fine-tune on the support set."
            )
        optimizer = torch.optim.AdamW(groups)
        device = next(model.parameters()).device
        losses = []
        model.train()
        for rows in _minibatches(len(task.support_sources), self.batch_size, self.steps, self.seed):
            batch = batcher.training_batch([task.support_sources[i] for i in rows],
                                           [task.support_targets[i] for i in rows], task.source_lang, task.target_lang)  # fmt: skip
            loss = model(**{key: v.to(device) for key, v in batch.items()}).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        return losses

    def translations(
        self, model: nn.Module, batcher: TranslationBatcher, task: TaskTexts, **generate
    ) -> list[str]:
        """Adapt to ``task``, translate its queries, and leave the model as it was (meta-test protocol)."""
        with restored(model):
            self.adapt(model, batcher, task)
            return translate(
                model, batcher, task.query_sources, task.source_lang, task.target_lang, **generate
            )


def _minibatches(k: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` minibatches of row positions: epochs over a fresh seeded permutation of the ``k`` rows."""
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        order = torch.randperm(k, generator=generator).tolist()
        for at in range(0, k, batch_size):
            if done == steps:
                return
            yield order[at : at + batch_size]
            done += 1
