"""The CUDA paths, checked and timed in one short run on a GPU: bf16 meta-training, batched tasks, second-order
MAML through fused attention, MAML memory with LoRA fast weights, few-shot translation steps, and fine-tuning.

Command (on a machine with a CUDA GPU, from the repository root; about 2 minutes on an H100)::

    python benchmarks/cuda_paths.py [--out cuda_paths.json]

Models are built from configs with random weights, shaped like the real checkpoints the CPU benchmarks use
(timings and memory depend on shapes, not values): all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384, 5-way head) and
SmolLM2-135M (Llama, 30 blocks, hidden 576; tokenizer from ``--smollm2-tokenizer`` when given, else a 32k-id random
token stream). Episodes are synthetic: each class of a 5-way 5-shot 10-query episode draws its 32 tokens from a
vocabulary slice of its own, so the tasks are learnable and the losses must fall.

Sections (each is independent; an error is recorded in its place and the run goes on):

* ``meta_steps``: ``MetaTrainer.meta_step`` for ProtoNets and FOMAML (meta-batch 4), fp32 and bf16 autocast
  (``bf16=True``), batched tasks (one embedding pass / ``torch.func.vmap``) and looped; median of 10
  timed steps after 3 warm-up steps; first and last loss.
* ``second_order``: whether second-order MAML differentiates through each attention implementation on CUDA
  (``sdpa``, ``eager``), and the peak CUDA memory (``torch.cuda.max_memory_allocated``) and step time of one
  second-order meta-step with LoRA fast weights against whole-model fast weights (eager attention, as MetaTrainer
  picks for second order).
* ``translation``: SmolLM2-shaped Llama, LoRA r 8: ms per ``SupportFineTuning`` step on 8 pairs (fp32 weights, and
  bf16 weights), batched generation of 16 translations, and a FOMAML meta-step over 2 language-pair tasks with
  bf16 autocast, vmap-batched and looped, with peak memory.
* ``finetune``: ``FineTuningTrainer`` LP-FT (fast logistic probe) + layer-wise LR with ``bf16=True``: runs, loss
  finite, seconds.

The last line of output is one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

N_WAY, K_SHOT, Q_QUERY, LENGTH, META_BATCH = 5, 5, 10, 32, 4


class TopicEpisodes:
    """Synthetic N-way episodes: class c of episode i draws tokens from its own slice of the vocabulary."""

    def __init__(self, vocab: int = 30522, seed: int = 0) -> None:
        self.vocab, self.seed = vocab, seed

    def batch(self, ids):
        return list(ids)

    def __call__(self, episode: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + episode)
        topics = torch.randperm(self.vocab // 64 - 2, generator=g)[:N_WAY] + 1
        parts = {}
        for name, per_class in (("support", K_SHOT), ("query", Q_QUERY)):
            labels = torch.arange(N_WAY).repeat_interleave(per_class)
            ids = topics[labels, None] * 64 + torch.randint(0, 64, (len(labels), LENGTH), generator=g)
            parts[name] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        return parts


def cuda_time(fn, warmup: int, repeats: int) -> tuple[float, list]:
    outs = []
    for _ in range(warmup):
        outs.append(fn())
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        outs.append(fn())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), outs


def meta_steps_of(t, first: int = 0):
    """``t.meta_step`` on fresh episode ids, one a call."""
    ids = itertools.count(first)
    return lambda: t.meta_step(next(ids))


def minilm_shaped(attn: str = "sdpa"):
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=1536, num_labels=N_WAY, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, attn_implementation=attn)  # fmt: skip
    return T.BertForSequenceClassification(config)


def trainer(model, out: str, **config):
    """A MetaTrainer on synthetic episodes; accelerate's process-wide state is reset so precisions can change."""
    from accelerate.state import AcceleratorState

    from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig

    AcceleratorState._reset_state(reset_partial_state=True)

    base = {"meta_batch_size": META_BATCH, "max_steps": 10_000, "eval_steps": 0, "save_steps": 0,
            "logging_steps": 0, "disable_tqdm": True, "learning_rate": 1e-4}  # fmt: skip
    sampler = config.pop("sampler", None) or TopicEpisodes()
    collate = config.pop("collate", None) or sampler
    return MetaTrainer(model, MetaTrainingConfig(output_dir=out, **{**base, **config}), sampler, collate)


def meta_steps(out: str, meta_batch: int = META_BATCH) -> dict:
    results = {"meta_batch": meta_batch}
    for algorithm in ("protonets", "fomaml"):
        for precision in ("no", "bf16"):
            for batched in (True, False):
                t = trainer(minilm_shaped(), out, algorithm=algorithm, bf16=precision == "bf16", batch_tasks=batched,
                            meta_batch_size=meta_batch,
                            inner_steps=1 if algorithm == "fomaml" else None, inner_lr=0.05 if algorithm == "fomaml" else None)  # fmt: skip
                median, logs = cuda_time(meta_steps_of(t), warmup=3, repeats=10)
                results[f"{algorithm}/{precision}/{'batched' if batched else 'looped'}"] = {
                    "step_ms": round(1000 * median, 2), "tasks_per_s": round(meta_batch / median, 1),
                    "first_loss": round(logs[0]["loss"], 4), "last_loss": round(logs[-1]["loss"], 4),
                    "vmap_fell_back": t.algorithm.vmap_fallbacks > 0,
                }  # fmt: skip
    for algorithm in ("protonets", "fomaml"):
        for precision in ("no", "bf16"):
            b, lp = (results[f"{algorithm}/{precision}/{m}"]["step_ms"] for m in ("batched", "looped"))
            results[f"{algorithm}/{precision}/speedup_batched"] = round(lp / b, 2)
        results[f"{algorithm}/bf16_speedup_batched"] = round(
            results[f"{algorithm}/no/batched"]["step_ms"] / results[f"{algorithm}/bf16/batched"]["step_ms"], 2
        )
    return results


def second_order(out: str) -> dict:
    from peft import LoraConfig, get_peft_model

    from hf_metatransfer.meta import build_algorithm

    results = {}
    episode = TopicEpisodes()(0)
    support, query = ({k: v.cuda() for k, v in episode[p].items()} for p in ("support", "query"))
    for attn in ("sdpa", "eager"):
        model = minilm_shaped(attn).cuda()
        maml = build_algorithm("maml", inner_steps=1, inner_lr=0.05)
        maml.setup(model)
        try:
            result = maml.task_gradient(model, support, query)
            results[f"double_backward_{attn}"] = "ok" if result.grads is not None else "non-finite"
        except Exception as error:  # noqa: BLE001 - the finding is which implementations fail
            results[f"double_backward_{attn}"] = f"{type(error).__name__}: {str(error)[:200]}"
        del model
    for fast in ("all", "lora"):
        torch.cuda.empty_cache()
        model = minilm_shaped("sdpa")
        if fast == "lora":
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                     modules_to_save=["classifier"]))  # fmt: skip
        t = trainer(
            model, out, algorithm="maml", fast_weights=fast, inner_steps=1, inner_lr=0.05, batch_tasks=False
        )
        t.meta_step(0)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        median, _ = cuda_time(meta_steps_of(t, first=1), warmup=0, repeats=3)
        results[f"maml_{fast}"] = {
            "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_above_resident_mb": round((torch.cuda.max_memory_allocated() - before) / 2**20, 1),
            "step_ms": round(1000 * median, 1),
            "attention": t.model.config._attn_implementation,
        }
        del t, model
    results["lora_peak_fraction"] = round(results["maml_lora"]["peak_mb"] / results["maml_all"]["peak_mb"], 3)
    return results


def smollm2_shaped():
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                           rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                           pad_token_id=2)  # fmt: skip
    return T.LlamaForCausalLM(config)


def translation(out: str, tokenizer_path: str | None) -> dict:
    import datasets
    import transformers as T

    from hf_metatransfer.episodes import TranslationTaskSampler
    from hf_metatransfer.translation import SupportFineTuning, TranslationBatcher, add_lora, translate

    if not tokenizer_path:
        raise RuntimeError("--smollm2-tokenizer is needed for the translation section")
    tokenizer = T.AutoTokenizer.from_pretrained(tokenizer_path)

    words = [
        "file",
        "user",
        "group",
        "name",
        "date",
        "time",
        "page",
        "list",
        "item",
        "field",
        "value",
        "error",
    ]
    rows = [{"source": f"{a} {b} {i}", "target": f"{b.upper()} {a.upper()} {i}", "source_lang": "en",
             "target_lang": lang, "id": f"{a}{b}{i}"}
            for lang in ("de", "fr", "nl", "sv") for i in range(8) for a in words[:6] for b in words[6:]]  # fmt: skip
    data = datasets.Dataset.from_list(rows)
    sampler = TranslationTaskSampler(data, k_support=8, q_query=8, seed=0)
    results = {}
    model = add_lora(smollm2_shaped(), r=8, alpha=16).cuda()
    batcher = TranslationBatcher.for_model(model, tokenizer, texts=sampler.texts, max_target_length=32)
    task = batcher.task_texts(sampler[0])
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        method = SupportFineTuning(steps=1, lr=1e-3, batch_size=8)
        median, _ = cuda_time(functools.partial(method.adapt, model, batcher, task), warmup=2, repeats=5)
        results[f"lora_step_ms_{str(dtype).split('.')[-1]}"] = round(1000 * median, 1)
    generate = lambda: translate(model, batcher, task.query_sources * 2, "en", task.target_lang,  # noqa: E731
                                 max_new_tokens=24, progress=False)  # fmt: skip
    median, outs = cuda_time(generate, warmup=1, repeats=3)
    results["generate_16_ms_bf16"] = round(1000 * median, 1)
    results["generated"] = len(outs[-1])
    model.to(torch.float32)
    for batched in (True, False):
        torch.cuda.reset_peak_memory_stats()
        t = trainer(model, out, algorithm="fomaml", fast_weights="lora", task_loss="lm", inner_steps=1, inner_lr=0.01,
                    meta_batch_size=2, bf16=True, batch_tasks=batched, sampler=sampler, collate=batcher)  # fmt: skip
        median, logs = cuda_time(meta_steps_of(t), warmup=2, repeats=5)
        results[f"fomaml_lora_bf16_{'batched' if batched else 'looped'}"] = {
            "step_ms": round(1000 * median, 1), "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "loss": round(logs[-1]["loss"], 3), "vmap_fell_back": t.algorithm.vmap_fallbacks > 0,
        }  # fmt: skip
    return results


def finetune(out: str) -> dict:
    import datasets

    from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer

    episode = TopicEpisodes()(1)["query"]
    train = datasets.Dataset.from_dict({"input_ids": episode["input_ids"].tolist(),
                                        "attention_mask": episode["attention_mask"].tolist(),
                                        "labels": episode["labels"].tolist()})  # fmt: skip
    args = FineTuningConfig(output_dir=out, bf16=True, per_device_train_batch_size=10, num_train_epochs=5,
                            learning_rate=1e-4, layerwise_lr_decay=0.9, lp_ft=True, linear_probe="logistic",
                            report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)  # fmt: skip
    start = time.perf_counter()
    trainer = FineTuningTrainer(model=minilm_shaped(), args=args, train_dataset=train)
    output = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"seconds": round(time.perf_counter() - start, 2), "train_loss": round(output.training_loss, 4),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
            "device": str(trainer.model.device)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="Also write the JSON object here.")
    parser.add_argument("--smollm2-tokenizer", default=None, help="Folder with SmolLM2's tokenizer files.")
    parser.add_argument(
        "--sections", nargs="+", default=["meta_steps", "second_order", "translation", "finetune"]
    )
    parser.add_argument("--meta-batch", type=int, default=META_BATCH, help="Tasks a meta-step in meta_steps.")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("No CUDA device: this benchmark checks the GPU paths (the CPU ones have their own).")
    import transformers

    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    sections = {"meta_steps": lambda out: meta_steps(out, args.meta_batch), "second_order": second_order,
                "finetune": finetune,
                "translation": lambda out: translation(out, args.smollm2_tokenizer)}  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        for name in args.sections:
            start = time.perf_counter()
            try:
                report[name] = sections[name](out)
            except Exception as error:  # noqa: BLE001 - one broken path must not hide the others
                report[name] = {
                    "error": f"{type(error).__name__}: {error}"[:500],
                    "trace": traceback.format_exc()[-1500:],
                }
            report[name + "_seconds"] = round(time.perf_counter() - start, 1)
            print(name, json.dumps(report[name])[:2000], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
