"""One worker of a cross-validated optuna search shared through STORAGE: join study "cv", write the result.

Usage: search_worker.py STORAGE N_TRIALS OUT_JSON
"""

import json
import sys

import torch

from tests.test_search import ModelInit, _shared_search


def main(storage: str, n_trials: int, out_file: str) -> None:
    torch.set_num_threads(1)
    result = _shared_search(ModelInit(), storage, n_trials)
    trials = [t["params"] for t in result.trials]
    with open(out_file, "w") as f:
        json.dump({"best_params": result.best_params, "best_score": result.best_score, "trials": trials}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
