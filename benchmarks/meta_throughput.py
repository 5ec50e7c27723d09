"""Meta-training throughput with batched tasks against the per-task loop; MAML memory with LoRA fast weights; FLOP/s.

Command (from the repository root; about 5-10 minutes on 2 shared CPU cores)::

    python benchmarks/meta_throughput.py

(``--repeats 3 --steps 1`` are the defaults; ``--skip-memory`` / ``--skip-flops`` shorten it; ``--help``.)

Model: all-MiniLM-L6-v2 (``minilm_path()``, BERT, 6 blocks) with a fresh 5-way head. Tasks: 5-way 5-shot 10-query
episodes of the English Home Assistant intents (``ha_intents_tasks(languages=["en"], cap_per_intent=50)``, meta-train
split) tokenised with ``max_length=32`` (``tokenize_dataset`` / ``TokenStore`` / ``EpisodeCollator``); meta-batch 4.

* ``throughput``: ``MetaTrainer.meta_step`` (collation, task gradients, outer AdamW step) with ``batch_tasks`` True
  (ProtoNets: one embedding pass over all tasks; FOMAML: ``torch.func.vmap`` over tasks) and False (one task at a
  time), on the same trainer and model, interleaved (batched, looped, batched, ...), fresh episode ids each step,
  after one warm-up step of each; tasks/s from the median step time. Target: speedup >= 2.
* ``memory``: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in a fresh subprocess each) of one
  second-order MAML meta-step (inner_steps 1, eager attention) with LoRA fast weights (peft ``LoraConfig(r=8,
  target_modules=["query", "value"])``, ``fast_weights="lora"``) against whole-model fast weights
  (``fast_weights="all"``); also the RSS after loading, before the step (``*_before_step_mb``).
* ``flops``: FLOPs of one meta-step (``torch.utils.flop_counter.FlopCounterMode``, counted on the per-task loop,
  which does the same arithmetic as the batched path) / median step time, as a fraction of this CPU's fp32 matmul
  peak: the median time of ``--peak-repeats`` 2048^3 ``torch.mm`` calls at the same thread count, in the same run.

The summary comes first; the last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from record import write_record  # noqa: E402

N_WAY, K_SHOT, Q_QUERY, MAX_LENGTH, META_BATCH = 5, 5, 10, 32, 4


def setup_data(seed: int = 0):
    import transformers as T

    from hf_metatransfer.data.packaged_models import minilm_path
    from hf_metatransfer.episodes import EpisodeCollator, TokenStore
    from hf_metatransfer.episodes.collate import tokenize_dataset
    from hf_metatransfer.episodes.presets import ha_intents_tasks

    tasks = ha_intents_tasks(languages=["en"], cap_per_intent=50)
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    data = tokenize_dataset(tasks.dataset, tokenizer, max_length=MAX_LENGTH)
    sampler = tasks.sampler("train", N_WAY, K_SHOT, Q_QUERY, seed=seed)
    return sampler, EpisodeCollator(TokenStore(data, pad_token_id=tokenizer.pad_token_id))


def load_model(attn: str = "sdpa"):
    import transformers as T

    from hf_metatransfer.data.packaged_models import minilm_path

    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    return T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=N_WAY,
                                                                attn_implementation=attn)  # fmt: skip


def make_trainer(model, algorithm: str, sampler, collate, out: str, **kw):
    from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig

    config = MetaTrainingConfig(output_dir=out, algorithm=algorithm, meta_batch_size=META_BATCH, max_steps=10_000,
                                eval_steps=0, save_steps=0, disable_tqdm=True, logging_steps=0, **kw)  # fmt: skip
    return MetaTrainer(model, config, sampler, collate)


def throughput(algorithm: str, sampler, collate, args, out: str) -> dict:
    trainer = make_trainer(load_model(args.attn), algorithm, sampler, collate, out)
    times = {True: [], False: []}
    step = 0
    for rep in range(args.repeats + 1):  # repeat 0 warms up both modes
        for batched in (True, False):
            trainer.config.batch_tasks = batched
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.meta_step(step)
                step += 1
            if rep:
                times[batched].append((time.perf_counter() - start) / args.steps)
    med = {b: statistics.median(t) for b, t in times.items()}
    return {
        "batched_tasks_per_s": META_BATCH / med[True],
        "looped_tasks_per_s": META_BATCH / med[False],
        "speedup": med[False] / med[True],
        "batched_step_s": med[True],
        "looped_step_s": med[False],
        "step_times_s": {"batched": times[True], "looped": times[False]},
        "vmap_fell_back": trainer.algorithm.vmap_fallbacks > 0,
        "_trainer": trainer,
        "_next_step": step,
    }


def count_step_flops(trainer, step: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    trainer.config.batch_tasks = False
    with FlopCounterMode(display=False) as counter:
        trainer.meta_step(step)
    return float(counter.get_total_flops())


def matmul_peak(repeats: int, n: int = 2048) -> tuple[float, list[float]]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times), times


# -- memory: one MAML meta-step in a fresh process -----------------------------------------------------------
def memory_child(kind: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    sampler, collate = setup_data()
    model = load_model("eager")
    fast = "all"
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"]))
        fast = "lora"
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            model, "maml", sampler, collate, out, inner_steps=1, inner_lr=0.01, fast_weights=fast
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        logs = trainer.meta_step(0)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for _, p in trainer.params)
    return {"peak_rss_mb": peak, "before_step_mb": before, "step_s": seconds, "fast_weights": len(trainer.algorithm.fast),
            "trainable_params": trainable, "loss": logs["loss"], "skipped": logs["skipped_tasks"],
            "batch_tasks": trainer.config.batch_tasks,
            "vmap_fell_back": trainer.algorithm.vmap_fallbacks > 0}  # fmt: skip


def memory(args) -> dict:
    out = {}
    for kind in ("lora", "all"):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-child",
            kind,
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            out[kind] = {"error": done.stderr[-1500:]}
            continue
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    if "peak_rss_mb" in out.get("lora", {}) and "peak_rss_mb" in out.get("all", {}):
        out["all_over_lora_peak"] = out["all"]["peak_rss_mb"] / out["lora"]["peak_rss_mb"]
        # the set-up (data, model) can leave a higher peak than a small step: the increment is then 0, the ratio None
        lora_increment = out["lora"]["peak_rss_mb"] - out["lora"]["before_step_mb"]
        out["all_over_lora_step_increment"] = (
            (out["all"]["peak_rss_mb"] - out["all"]["before_step_mb"]) / lora_increment
            if lora_increment >= 1
            else None
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="Timed repeats per mode (interleaved), after a warm-up."
    )
    parser.add_argument("--steps", type=int, default=1, help="Meta-steps per repeat.")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads (all measurements)."
    )
    parser.add_argument("--algorithms", nargs="+", default=["fomaml", "protonets"])
    parser.add_argument("--attn", default="sdpa", help="Attention implementation for the throughput runs.")
    parser.add_argument("--peak-repeats", type=int, default=7, help="2048^3 matmuls timed for the fp32 peak.")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="also write the result with its provenance (command, commit, versions, threads, load) to PATH, "
        "e.g. benchmarks/results/meta_throughput_cpu.json",
    )
    parser.add_argument("--memory-child", choices=["lora", "all"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="There is a performance drop")
    if args.memory_child:
        result = memory_child(args.memory_child, args.threads)
        print(json.dumps(result))
        return result

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sampler, collate = setup_data()
    results: dict = {"threads": args.threads, "attn": args.attn, "meta_batch": META_BATCH,
                     "episode": f"{N_WAY}-way {K_SHOT}-shot {Q_QUERY}-query, max_length {MAX_LENGTH}",
                     "repeats": args.repeats, "steps_per_repeat": args.steps, "throughput": {}}  # fmt: skip
    peak, peak_times = (None, []) if args.skip_flops else matmul_peak(args.peak_repeats)
    with tempfile.TemporaryDirectory() as out:
        for algorithm in args.algorithms:
            r = throughput(algorithm, sampler, collate, args, out)
            trainer, step = r.pop("_trainer"), r.pop("_next_step")
            if not args.skip_flops:
                flops = count_step_flops(trainer, step)
                r["step_gflop"] = flops / 1e9
                for mode in ("batched", "looped"):
                    achieved = flops / r[f"{mode}_step_s"]
                    r[f"{mode}_gflop_per_s"] = achieved / 1e9
                    r[f"{mode}_fraction_of_peak"] = achieved / peak
            r["target_speedup_met"] = r["speedup"] >= 2.0
            results["throughput"][algorithm] = r
            print(f"{algorithm}: batched {r['batched_tasks_per_s']:.2f} tasks/s, looped {r['looped_tasks_per_s']:.2f} "
                  f"tasks/s, speedup {r['speedup']:.2f}x (target 2x {'met' if r['target_speedup_met'] else 'MISSED'})"
                  + ("" if args.skip_flops else f"; {r['step_gflop']:.1f} GFLOP/step, batched "
                     f"{r['batched_fraction_of_peak']:.1%} / looped {r['looped_fraction_of_peak']:.1%} of matmul peak"),
                  flush=True)  # fmt: skip
    if not args.skip_flops:
        # measured again after the throughput runs (other jobs share the CPU): both, and the median of all, kept
        peak2, peak_times2 = matmul_peak(args.peak_repeats)
        results["matmul_peak_gflop_per_s"] = {"before": peak / 1e9, "after": peak2 / 1e9,
                                              "times_s": peak_times + peak_times2}  # fmt: skip
        print(
            f"fp32 2048^3 matmul peak: {peak / 1e9:.1f} GFLOP/s (before), {peak2 / 1e9:.1f} GFLOP/s (after); "
            "fractions use 'before'"
        )
    if not args.skip_memory:
        mem = memory(args)
        results["maml_memory"] = mem
        for kind in ("lora", "all"):
            m = mem[kind]
            print(f"MAML 2nd order, {kind} fast weights: " + (f"peak RSS {m['peak_rss_mb']:.0f} MB "
                  f"({m['before_step_mb']:.0f} MB before the step), step {m['step_s']:.1f}s, "
                  f"{m['trainable_params']:,} trainable" if "peak_rss_mb" in m else f"FAILED: {m['error'][-300:]}"))  # fmt: skip
    results["wall_s"] = time.perf_counter() - t0
    print(json.dumps(results))
    if args.record:
        write_record(args.record, results)
    return results


if __name__ == "__main__":
    main()
