"""Meta-test a meta-learned model against the non-meta baselines on the same few-shot episodes.

    hf-metatransfer meta-test --config recipes/configs/quickstart.yaml --model_name_or_path outputs/quickstart \
        --episodes outputs/quickstart/test_episodes
    hf-metatransfer meta-test --model_name_or_path you/minilm-protonets-intents --episodes you/minilm-protonets-intents-episodes
    hf-metatransfer meta-test --model_name_or_path outputs/quickstart --user_episodes my_episodes.jsonl

The model (a meta-train output folder or its Hub repo) adapts to each episode with its algorithm (``--algorithm``
and the inner-loop options of meta-training); nearest centroid, a linear probe, fine-tuning and LP-FT adapt the
base encoder (``--baseline_model_name_or_path``). Episodes are the saved ones (a folder written by meta-training,
or the dataset repo it pushed) or, without ``--episodes``, drawn afresh from the test split. Saved episodes hold
row numbers of the intents dataset: pass the same data options (languages, splits, slots, cap, seed) as the run
that saved them, for instance its YAML config. Their fingerprint is checked before any model is loaded: other
options, or other sentences under the same options, are refused.

``--user_episodes`` scores one's own episodes instead, without the intents: a JSONL file with one episode a line,
``{"support": [[text, label], ...], "query": [[text, label], ...]}``, or any file or folder ``user_episodes``
reads. They are tokenised with the model's tokenizer and input prefix; N and K in the table are theirs.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.episodes import UserEpisodes, episodes_from_dataset, user_episodes, verify_episodes
from hf_metatransfer.episodes.user import load_episode_dataset
from hf_metatransfer.meta import MetaTrainingConfig, build_algorithm, load_algorithm_state
from hf_metatransfer.provenance import write_results
from hf_metatransfer.recipes.finetune import EMBEDDED, ModelArguments
from hf_metatransfer.recipes.meta_train import (
    EpisodeArguments,
    EpisodeSetup,
    resolve_model,
    score_against_baselines,
    setup_episodes,
)

logger = logging.getLogger("hf_metatransfer.meta_test")


@dataclass
class MetaTestArguments:
    baseline_model_name_or_path: str = field(
        default=EMBEDDED,
        metadata={"help": "The base encoder the baselines adapt ('embedded': all-MiniLM-L6-v2)."},
    )
    episodes: str | None = field(
        default=None,
        metadata={
            "help": "Saved test episodes: a folder (save_to_disk) or a Hub dataset repo; default: new ones."
        },
    )
    user_episodes: str | None = field(
        default=None,
        metadata={"help": "One's own episodes instead of the intents: a JSONL file, one episode a line, "
                          '{"support": [[text, label], ...], "query": [...]} (or a table: see user_episodes).'},
    )  # fmt: skip
    results_dir: str = field(
        default="outputs/meta_test", metadata={"help": "Where results.json and the plot go."}
    )


# What saved episodes depend on: the rows and splits of the data, and how the episodes were drawn (the results
# record these). Every other episode option is listed as not one: max_length (tokenisation only), the number of
# episodes (the saved set is the set) and how the baselines run.
DATA_OPTIONS = ("languages", "validation_languages", "test_languages", "allow_variants", "class_ratios",
                "cap_per_intent", "slots", "mode", "support_languages", "query_languages", "n_way", "k_shot",
                "q_query")  # fmt: skip
NOT_DATA_OPTIONS = ("max_length", "test_episodes", "slow_baseline_episodes", "slow_baseline_seconds", "baselines",
                    "adapted_episodes")  # fmt: skip


def data_options(ep: EpisodeArguments, seed: int) -> dict:
    """The options saved test episodes are checked against (meta-training records all of ``ep`` and the seed)."""
    return {name: getattr(ep, name) for name in DATA_OPTIONS} | {"seed": seed}


def load_episodes(source: str) -> list:
    return episodes_from_dataset(load_episode_dataset(source))


def intents_setup(model_args: ModelArguments, ep: EpisodeArguments, config: MetaTrainingConfig,
                  test: MetaTestArguments) -> tuple[EpisodeSetup, list, dict]:  # fmt: skip
    """The intents tokenised for the model, and the saved episodes (checked against them) or new test episodes."""
    setup = setup_episodes(model_args, ep, config.seed)
    if test.episodes:
        saved = load_episode_dataset(test.episodes)
        verify_episodes(saved, setup.tasks.dataset, data_options(ep, config.seed), cli_flags=True)
        episodes = episodes_from_dataset(saved)
    else:
        episodes = setup.sampler(ep, "test", config.seed + 2).batch(range(ep.test_episodes))
    return setup, episodes, asdict(ep)


def user_setup(model_args: ModelArguments, ep: EpisodeArguments,
               source: str) -> tuple[EpisodeSetup, UserEpisodes, dict]:  # fmt: skip
    """One's own episodes tokenised as the model takes its inputs (tokenizer, prefix); N and K in ``ep`` become
    theirs: the model's head needs the largest N, the table shows the smallest K."""
    name, model_class, conventions = resolve_model(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.revision,
                                              trust_remote_code=model_args.trust_remote_code)  # fmt: skip
    episodes = user_episodes(source, tokenizer, max_length=ep.max_length, prefix=conventions.prefix)
    ways = sorted({e.n_way for e in episodes})
    shots = sorted({int(np.bincount(e.support_labels).min()) for e in episodes})
    if len(ways) > 1 or len(shots) > 1:
        logger.warning("The episodes are %s-way and %s-shot: the table shows %d-way %d-shot.", ways, shots,
                       ways[-1], shots[0])  # fmt: skip
    ep.n_way, ep.k_shot = ways[-1], shots[0]
    summary = {"user_episodes": source, "episodes": len(episodes), "n_way": ways, "k_shot": shots,
               "max_length": ep.max_length, "prefix": conventions.prefix}  # fmt: skip
    # No intents here (tasks=None): the setup only loads the models and collates the user's episodes.
    return EpisodeSetup(None, tokenizer, episodes.collate, name, model_class), episodes, summary


def main(model_args: ModelArguments, ep: EpisodeArguments, config: MetaTrainingConfig,
         test: MetaTestArguments) -> dict:  # fmt: skip
    logging.basicConfig(level=logging.INFO)
    if test.user_episodes and test.episodes:
        raise ValueError(
            "Pass --episodes (saved episodes of the intents) or --user_episodes (your own), not both."
        )
    if test.user_episodes:
        setup, episodes, described = user_setup(model_args, ep, test.user_episodes)
    else:
        setup, episodes, described = intents_setup(model_args, ep, config, test)
    model = setup.load_model(model_args, ep.n_way, config.seed).eval()
    algorithm = build_algorithm(config.algorithm, **config.algorithm_kwargs())
    algorithm.setup(model)
    if load_algorithm_state(algorithm, setup.name, revision=model_args.revision):
        logger.info(
            "Loaded the meta-learned state of %s (inner LRs or projection) from %s.",
            config.algorithm,
            setup.name,
        )
    baseline_name, _, _ = resolve_model(test.baseline_model_name_or_path)
    out = Path(test.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = score_against_baselines(model, algorithm, f"{config.algorithm} ({model_args.model_name_or_path})",
                                   setup.load_model(model_args, ep.n_way, config.seed, name=baseline_name),
                                   list(episodes), setup.collate, ep, out)  # fmt: skip
    results = {"episodes": described, "algorithm": config.algorithm_kwargs() | {"algorithm": config.algorithm},
               "source": test.user_episodes or test.episodes, "meta_test": [asdict(r) for r in rows]}  # fmt: skip
    write_results(out, results)
    return results


def cli(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model, ep, config, test = parse_args(
        (ModelArguments, EpisodeArguments, MetaTrainingConfig, MetaTestArguments), argv
    )  # MetaTrainingConfig: so a meta-train YAML parses (its push_to_hub is ignored: nothing is pushed here)
    return main(model, ep, config, test)


if __name__ == "__main__":
    cli(sys.argv[1:])
