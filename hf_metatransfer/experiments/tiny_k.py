"""Transfer against meta-learning at tiny K: accuracy against shots for every method on the same test episodes.

The lecture's claim: when the target task has very few examples, fine-tuning a pre-trained model is not enough and
a method meta-trained for fast adaptation does better. Here ProtoNets is meta-trained with :class:`MetaTrainer` on
the meta-train intents, then it and the non-meta baselines of :mod:`hf_metatransfer.meta.evaluation` (nearest
centroid and a linear probe on the frozen encoder, fine-tuning and LP-FT of the pre-trained model) adapt to the
same N-way K-shot episodes of held-out intents, for every K.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..episodes.episode import Episode
from ..episodes.presets import TaskCollection
from ..hub.plots import accuracy_vs_shots
from ..meta import FineTune, LinearProbe, MetaTrainer, MetaTrainingConfig, NearestCentroid, meta_test
from .common import markdown_table, mean_ci, paired, pct

META = "protonets (meta-learned)"
BASELINES: dict[str, Callable[[TinyKArguments], Any]] = {
    "nearest-centroid": lambda a: NearestCentroid(),
    "linear-probe": lambda a: LinearProbe(),
    "fine-tuning": lambda a: FineTune(steps=a.ft_steps, lr=a.ft_lr, head_lr=a.ft_head_lr),
    "lp-ft": lambda a: FineTune(steps=a.ft_steps, lr=a.ft_lr, head_lr=a.ft_head_lr, lp_ft=True),
}
METHODS = (META, *BASELINES)
SLOW = ("fine-tuning", "lp-ft")  # a fine-tuning run per episode: scored on the first slow_episodes only


@dataclass
class TinyKArguments:
    """The tiny-K experiment: shots, episodes, ProtoNets meta-training and the fine-tuning baselines."""

    shots: list[int] = field(
        default_factory=lambda: [1, 2, 5, 10, 20], metadata={"help": "K values (shots a class)."}
    )
    n_way: int = field(default=5, metadata={"help": "Classes an episode (N)."})
    q_query: int = field(default=10, metadata={"help": "Query examples a class in every episode."})
    test_episodes: int = field(default=40, metadata={"help": "Test episodes a K for the fast methods."})
    slow_episodes: int = field(
        default=6,
        metadata={"help": "Fine-tuning and LP-FT adapt on the first this many of those episodes only (a fine-tuning "
                  "run each); every method is also scored on that shared subset."},
    )  # fmt: skip
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": f"Of {list(METHODS)}."}
    )
    meta_k_shot: int = field(default=5, metadata={"help": "Shots of the meta-training episodes."})
    meta_steps: int = field(default=40, metadata={"help": "ProtoNets meta-training steps."})
    meta_batch_size: int = field(default=4, metadata={"help": "Episodes a meta-step."})
    meta_outer_lr: float = field(default=2e-5, metadata={"help": "Meta-training learning rate (AdamW)."})
    ft_steps: int = field(
        default=10, metadata={"help": "Full-batch AdamW steps of fine-tuning on a support set."}
    )
    ft_lr: float = field(default=1e-4, metadata={"help": "Fine-tuning LR of the encoder."})
    ft_head_lr: float = field(default=1e-2, metadata={"help": "Fine-tuning LR of the head."})

    def __post_init__(self) -> None:
        if not self.shots or min(self.shots) < 1 or len(set(self.shots)) != len(self.shots):
            raise ValueError(f"shots={self.shots}: give distinct K values >= 1, e.g. [1, 2, 5, 10, 20].")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"Unknown methods {unknown} (or none): use any of {list(METHODS)}.")
        if not 1 <= self.slow_episodes <= self.test_episodes:
            raise ValueError(
                f"slow_episodes={self.slow_episodes} must be in [1, test_episodes={self.test_episodes}]: the slow "
                "methods are scored on the first slow_episodes of the test episodes."
            )


def meta_train_protonets(model: nn.Module, tasks: TaskCollection, collate: Callable[[Episode], dict],
                         args: TinyKArguments, seed: int, progress: bool) -> dict[str, Any]:  # fmt: skip
    """Meta-train ``model`` in place with ProtoNets on episodes of the ``train`` split; returns its log."""
    with tempfile.TemporaryDirectory() as out:  # the trainer's checkpoints: not needed after the run
        config = MetaTrainingConfig(
            output_dir=out, algorithm="protonets", meta_batch_size=args.meta_batch_size, max_steps=args.meta_steps,
            learning_rate=args.meta_outer_lr, eval_steps=0, save_steps=0, save_total_limit=1, seed=seed,
            disable_tqdm=not progress,
        )  # fmt: skip
        sampler = tasks.sampler("train", args.n_way, args.meta_k_shot, args.q_query, seed=seed)
        trainer = MetaTrainer(model, config, sampler, collate)
        state = trainer.train()
    return {"steps": state.step, "log": state.log_history, "algorithm": trainer.algorithm}


def run_tiny_k(
    model_init: Callable[[int], nn.Module],
    tasks: TaskCollection,
    collate: Callable[[Episode], dict],
    args: TinyKArguments,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Meta-train ProtoNets, then score every method on the same test episodes for every K.

    ``model_init(num_labels)`` returns a fresh pre-trained classifier: one copy is meta-trained, one stays as the
    baselines' starting point. ``tasks`` needs ``train`` and ``test`` class splits. Accuracies are fractions; the
    intervals are Student-t 95% over episodes, and ``paired`` holds each method minus the meta-learned model on
    the shared episodes.
    """
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    meta = None
    if META in args.methods:
        torch.manual_seed(seed)  # the head's initialisation, the same for both models and for every run
        meta_model = model_init(args.n_way)
        meta = meta_train_protonets(meta_model, tasks, collate, args, seed, progress)
    torch.manual_seed(seed)
    pretrained = model_init(args.n_way)
    classes_by_k: dict[int, int] = {}
    for k in args.shots:
        episodes = tasks.sampler("test", args.n_way, k, args.q_query, seed=seed + 2).batch(
            range(args.test_episodes)
        )
        # Classes too small for K + Q drop out of the episodes at large K: record how many remain.
        classes_by_k[k] = len({int(c) for e in episodes for c in e.classes})
        for method in args.methods:
            n = args.slow_episodes if method in SLOW else args.test_episodes
            model, learner = (
                (meta_model, meta["algorithm"]) if method == META else (pretrained, BASELINES[method](args))
            )
            result = meta_test(model, learner, episodes[:n], collate, name=method, progress=progress)
            acc = mean_ci(result.per_episode)
            shared = mean_ci(result.per_episode[: args.slow_episodes])
            rows.append({
                "method": method, "shots": k, "episodes": n, "accuracy": acc[0], "ci95": acc[1],
                "shared_accuracy": shared[0], "shared_ci95": shared[1],
                "seconds_per_episode": result.seconds_per_episode, "per_episode": result.per_episode,
            })  # fmt: skip
    return {
        "n_way": args.n_way, "shots": list(args.shots), "q_query": args.q_query, "test_episodes": args.test_episodes,
        "shared_episodes": args.slow_episodes, "seed": seed, "rows": rows, "paired": paired_rows(rows),
        "test_classes": tasks.class_names("test"),
        "classes_by_k": classes_by_k,
        "meta_training": None if meta is None else {"steps": meta["steps"], "log": meta["log"]},
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def paired_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method minus the meta-learned model, per K, on the shared episodes (empty without the meta method)."""
    meta = {r["shots"]: r["per_episode"] for r in rows if r["method"] == META}
    out = []
    for r in rows:
        if r["method"] == META or r["shots"] not in meta:
            continue
        n = min(len(r["per_episode"]), len(meta[r["shots"]]))
        diff, ci = paired(r["per_episode"][:n], meta[r["shots"]][:n])
        out.append({"method": r["method"], "shots": r["shots"], "minus": META, "diff": diff, "ci95": ci,
                    "episodes": n})  # fmt: skip
    return out


def tiny_k_table(result: dict[str, Any]) -> str:
    """Accuracy (%) by method and K; the fast methods on all episodes, every method on the shared ones."""
    diffs = {(d["method"], d["shots"]): d for d in result["paired"]}
    body = []
    for r in result["rows"]:
        d = diffs.get((r["method"], r["shots"]))
        body.append([
            r["method"], r["shots"], pct((r["accuracy"], r["ci95"])) + f" ({r['episodes']})",
            pct((r["shared_accuracy"], r["shared_ci95"])),
            pct((d["diff"], d["ci95"])) if d else "-", f"{r['seconds_per_episode']:.2f}",
        ])  # fmt: skip
    header = ["method", "K", "accuracy % (episodes)", f"on the shared {result['shared_episodes']} episodes",
              "minus meta-learned (paired)", "adapt s/episode"]  # fmt: skip
    return markdown_table(header, body)


def plot_tiny_k(result: dict[str, Any], path: str | Path) -> bool:
    """Accuracy against K with 95% CIs over each method's episodes; a method scored on fewer (the first ones of
    the same list: fine-tuning, LP-FT) says so in its label."""
    points = []
    for r in result["rows"]:
        name = (
            r["method"]
            if r["episodes"] == result["test_episodes"]
            else f"{r['method']} (first {r['episodes']})"
        )
        points.append((name, r["shots"], r["accuracy"], r["accuracy"] - r["ci95"], r["accuracy"] + r["ci95"]))
    return accuracy_vs_shots(points, path)
