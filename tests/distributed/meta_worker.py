"""Run under torchrun (or alone): meta-train a tiny BERT for a few steps, save the final weights.

Usage: meta_worker.py OUT_DIR ALGORITHM   (ALGORITHM "protonets-projection": ProtoNets with an 8-d projection)
"""

import sys

from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig
from tests.meta_fixtures import tiny_bert, token_episodes


def main(out_dir: str, algorithm: str) -> None:
    train, _, collate = token_episodes()
    projection_dim = 8 if algorithm == "protonets-projection" else 0
    config = MetaTrainingConfig(output_dir=out_dir, algorithm=algorithm.removesuffix("-projection"), inner_steps=2,
                                inner_lr=0.3, meta_batch_size=4, max_steps=3, outer_lr=1e-2, eval_steps=0,
                                save_steps=0, disable_tqdm=True, projection_dim=projection_dim)  # fmt: skip
    MetaTrainer(tiny_bert(), config, train, collate).train()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
