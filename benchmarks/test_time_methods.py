"""Test-time methods on a frozen sentence encoder: can training on the support set beat the linear probe?

    OMP_NUM_THREADS=1 python benchmarks/test_time_methods.py --threads 1 \\
        --json benchmarks/results/test_time_methods_minilm_cpu.json

all-MiniLM-L6-v2 (``minilm_path()``, mean-pooled, not meta-trained) on home-assistant-intents in English, the
recipe's split (``ha_intents_tasks(languages=["en"])``: intents 60/20/20, seeded), N-way K-shot episodes of the
*test* intents. Every method sees the same episodes: nearest centroid, the linear probe, fine-tuning (20 steps),
the prototype-initialised head fine-tuned with the body (``ProtoHeadFineTune``), and the last two with the body LR
chosen per episode by cross-validation on the support set (``lr="cv"``). Cross-validation trains
2 folds x 3 LRs + 1 models an episode, so the CV rows run on the first ``--cv-episodes`` episodes only; every row is
also given on those episodes, so each paired difference is over episodes both methods saw.

Prints a table (accuracy, Student-t 95% CI, paired difference to the linear probe, adaptation seconds an episode)
and one JSON line (with the command, commit, versions, threads and load average); ``--json`` also keeps it in a
file of every setting measured (``runs``, keyed ``"5-way 5-shot"``...). The English test split has 8 intents, so
8-way is the widest setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_metatransfer.data import minilm_path  # noqa: E402
from hf_metatransfer.episodes import EpisodeCollator, TokenStore, tokenize_dataset  # noqa: E402
from hf_metatransfer.episodes.presets import ha_intents_tasks  # noqa: E402
from hf_metatransfer.meta import (  # noqa: E402
    FineTune,
    LinearProbe,
    MetaTestResult,
    NearestCentroid,
    ProtoHeadFineTune,
    meta_test,
)
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification  # noqa: E402
from hf_metatransfer.provenance import provenance  # noqa: E402
from hf_metatransfer.stats import mean_interval, paired_difference  # noqa: E402

BASELINE = "linear-probe"


def methods(steps: int) -> dict[str, object]:
    return {
        "nearest-centroid": NearestCentroid(),
        BASELINE: LinearProbe(),
        "fine-tuning": FineTune(steps=steps),
        "proto-head-ft": ProtoHeadFineTune(steps=steps),
        "fine-tuning, cv lr": FineTune(steps=steps, lr="cv"),
        "proto-head-ft, cv lr": ProtoHeadFineTune(steps=steps, lr="cv"),
    }


def summarise(
    name: str, per_episode: list[float], baseline: list[float], seconds: float, settings: str
) -> dict:
    accuracy = mean_interval(per_episode)
    row = {"accuracy": accuracy.as_dict(4), "seconds_per_episode": round(seconds, 3), "episodes": len(per_episode),
           "settings": settings, "per_episode": per_episode}  # fmt: skip
    if name != BASELINE:
        row["minus_linear_probe"] = paired_difference(per_episode, baseline).as_dict(4)
    return row


def table(title: str, rows: dict[str, dict]) -> str:
    lines = [title, "| method | accuracy (%) +- 95% CI | minus linear probe (pts, paired) | s/episode | episodes |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        acc = r["accuracy"]
        diff = r.get("minus_linear_probe")
        paired = "-" if diff is None else f"{100 * diff['mean']:+.1f} +- {100 * diff['ci_half_width']:.1f}"
        lines.append(f"| {name} | {100 * acc['mean']:.1f} +- {100 * acc['ci_half_width']:.1f} | {paired} | "
                     f"{r['seconds_per_episode']:.2f} | {r['episodes']} |")  # fmt: skip
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, wall = os.getloadavg(), time.perf_counter()
    path = minilm_path()
    tasks = ha_intents_tasks(languages=["en"], seed=args.seed, cap_per_intent=args.cap_per_intent)
    logging.info(tasks.summary())
    tokenizer = AutoTokenizer.from_pretrained(path)
    collate = EpisodeCollator(TokenStore(tokenize_dataset(tasks.dataset, tokenizer, max_length=args.max_length),
                                         tokenizer.pad_token_id))  # fmt: skip
    sampler = tasks.sampler("test", args.n_way, args.k_shot, args.q_query, seed=args.seed + 2)
    episodes = sampler.batch(range(args.episodes))
    torch.manual_seed(args.seed)  # fine-tuning's fresh classifier
    model = MeanPoolBertForSequenceClassification.from_pretrained(
        path, num_labels=args.n_way, use_safetensors=True
    )

    results: dict[str, MetaTestResult] = {}
    used = methods(args.steps)
    for name, method in used.items():
        subset = episodes[: args.cv_episodes] if "cv lr" in name else episodes
        results[name] = meta_test(model, method, subset, collate, name=name, progress=args.progress)
        logging.info(
            "%s: %.3f (%.2f s/episode)", name, results[name].accuracy, results[name].seconds_per_episode
        )

    full = {n: r for n, r in results.items() if r.episodes == len(episodes)}
    base = results[BASELINE].per_episode
    rows_all = {
        n: summarise(n, r.per_episode, base, r.seconds_per_episode, r.settings) for n, r in full.items()
    }
    n_cv = min(args.cv_episodes, len(episodes))
    rows_cv = {n: summarise(n, r.per_episode[:n_cv], base[:n_cv], r.seconds_per_episode, r.settings)
               for n, r in results.items()}  # fmt: skip
    chosen = {n: m.chosen_lrs for n, m in used.items() if getattr(m, "grid", None) is not None}
    record = {
        "benchmark": "test_time_methods", "encoder": "all-MiniLM-L6-v2", "path": path,
        "data": f"home-assistant-intents, en, test intents of ha_intents_tasks(languages=['en'], seed={args.seed})",
        "test_intents": tasks.class_names("test"), "n_way": args.n_way, "k_shot": args.k_shot,
        "q_query": args.q_query, "episodes": len(episodes), "cv_episodes": n_cv, "steps": args.steps,
        f"all_{len(episodes)}_episodes": rows_all, f"first_{n_cv}_episodes": rows_cv, "cv_chosen_lrs": chosen,
        **provenance(), "loadavg_start": [round(x, 2) for x in load_start],
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }  # fmt: skip
    print(table(f"\n{args.n_way}-way {args.k_shot}-shot, {len(episodes)} episodes of held-out English intents "
                "(all-MiniLM-L6-v2, frozen start)", rows_all))  # fmt: skip
    print(
        table(
            f"\nThe first {n_cv} episodes (the cross-validated rows; every method on the same episodes)",
            rows_cv,
        )
    )
    print("\nSettings:")
    print("\n".join(f"- {n}: {r.settings}" for n, r in results.items()))
    if args.json:  # one file for every setting measured: this run replaces only its own setting's record
        runs = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                runs = json.load(f)["runs"]
        runs[f"{args.n_way}-way {args.k_shot}-shot"] = record
        with open(args.json, "w") as f:
            json.dump({"benchmark": "test_time_methods", "runs": runs}, f, indent=1)
            f.write("\n")
    print(json.dumps(record))
    return record


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--q-query", type=int, default=10)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument(
        "--cv-episodes", type=int, default=3, help="Episodes for the cross-validated rows (the first n)."
    )
    p.add_argument("--steps", type=int, default=20, help="AdamW steps of every fine-tuning method.")
    p.add_argument("--cap-per-intent", type=int, default=60)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", help="Also write the JSON record here.")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
