"""Run under torchrun (or alone): fine-tune a tiny BERT with combined strategies, save the final weights.

Usage: finetune_worker.py OUT_FILE PER_DEVICE_BATCH
"""

import sys

import torch
from safetensors.torch import save_file

from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from tests.test_finetune_trainer import toy_dataset
from tests.tiny_models import tiny_model


def main(out_file: str, per_device_batch: int) -> None:
    model = tiny_model("bert")
    args = FineTuningConfig(
        output_dir=out_file + ".run", per_device_train_batch_size=per_device_batch, max_steps=8,
        learning_rate=5e-3, layerwise_lr_decay=0.7, lp_ft=True, lp_max_steps=2, lp_learning_rate=0.05,
        gradual_unfreezing=True, unfreeze_interval_steps=2, warmup_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, dataloader_drop_last=True,
    )  # fmt: skip
    trainer = FineTuningTrainer(model=model, args=args, train_dataset=toy_dataset(64))
    trainer.train()
    if trainer.is_world_process_zero():
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, out_file)
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
