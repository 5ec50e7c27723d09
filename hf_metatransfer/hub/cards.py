"""Model cards: what a stranger needs to understand, load and reproduce a model, from the run's own numbers.

A card is data (:class:`FineTunedCardData`, :class:`MetaLearnedCardData`, :class:`TranslationCardData`) rendered
through a Jinja template of ``model_cards/`` (shipped as ``hf_metatransfer.model_cards``) with
``huggingface_hub.ModelCard.from_template``, so the YAML metadata is ``ModelCardData``'s own serialisation
(model-index included) and parses back with ``ModelCard``. The method section is written from the configuration
values (never from a hand-written summary), so it cannot drift from what ran.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..conventions import saved_conventions
from ..stats import mean_interval
from . import plots

LIBRARY_TAG = "hf-metatransfer"
CARD_NAME = "README.md"
#: The facts a card was rendered from, beside it: ``publish`` re-renders the card from them for another repo.
CARD_DATA_NAME = "card_data.json"
#: Strategy tags, in the order the method section describes them.
STRATEGY_TAGS = (
    "lp-ft",
    "layer-wise-lr-decay",
    "gradual-unfreezing",
    "slanted-triangular-lr",
    "surgical-fine-tuning",
    "auto-rgn",
    "re-initialisation",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_DATASETS = {"json", "csv", "parquet", "text", "ha_intents", "arrow"}
Z95 = 1.959964  # two-sided 95% quantile of the normal distribution
_VERSIONED = ("hf-metatransfer", "transformers", "torch", "datasets", "peft", "huggingface_hub")


@dataclass
class Result:
    """One row of a results table and, unless it is a loss, one metric of the card's model-index."""

    metric: str
    value: float
    split: str = "test"
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None  # examples (one test set) or episodes (few-shot evaluation)
    shots: int | None = None  # K of a K-shot evaluation
    setting: str = ""  # e.g. "after the linear probe", "5-way, de"
    details: str = ""  # how the method ran (solver, steps, LRs, C), shown beside its figures

    @classmethod
    def binomial(cls, metric: str, accuracy: float, n: int, **kwargs: Any) -> Result:
        """An accuracy on ``n`` independent examples, with its 95% Wilson score interval."""
        z = Z95
        centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        # Rounded so that an accuracy of 1 gets an upper bound of 1, not 1 - 1e-16.
        low, high = (round(min(1.0, max(0.0, x)), 12) for x in (centre - half, centre + half))
        return cls(metric, accuracy, ci_low=low, ci_high=high, n=n, **kwargs)

    @classmethod
    def from_episodes(cls, metric: str, values: Sequence[float], **kwargs: Any) -> Result:
        """The mean over evaluation episodes or tasks with its 95% Student-t interval (t(n-1) sd / sqrt(n))."""
        interval = mean_interval(values)
        return cls(metric, interval.mean, ci_low=interval.low, ci_high=interval.high, n=interval.n, **kwargs)


@dataclass
class CardData:
    """What every card of the library says: identity, data, languages, results and how to reproduce them."""

    template: ClassVar[str]
    model_id: str
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids, for the metadata
    dataset_name: str | None = None  # how the text names the data (a Hub id or a description)
    language: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    pipeline_tag: str = "text-classification"
    library_name: str = "transformers"
    tags: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    reproduce: dict[str, Any] = field(default_factory=dict)  # the configuration of the run, as recipe YAML
    # What every input starts with (e5's "query: "), shown in the snippets; None: what the folder saved.
    input_prefix: str | None = None

    def all_tags(self) -> list[str]:
        return list(dict.fromkeys([LIBRARY_TAG, *self.tags]))

    def metric_label(self, result: Result) -> str:
        return " ".join(p for p in (result.metric, f"({result.setting})" if result.setting else "") if p)

    def hub_datasets(self) -> list[str]:
        return list(self.datasets)

    def languages(self) -> list[str]:
        return list(self.language)

    def metadata(self) -> ModelCardData:
        """The YAML header: base model, data, languages, library, tags, license, task and model-index."""
        datasets = self.hub_datasets()
        dataset_type = datasets[0] if datasets else (self.dataset_name or "custom")
        evals = [
            EvalResult(
                task_type=self.pipeline_tag,
                dataset_type=dataset_type,
                dataset_name=self.dataset_name or dataset_type,
                dataset_split=r.split,
                metric_type=r.metric,
                metric_value=round(float(r.value), 6),
                metric_name=self.metric_label(r),
            )
            for r in self.results
            if not r.metric.endswith("loss")
        ]
        return ModelCardData(
            base_model=self.base_model,
            datasets=datasets or None,
            language=self.languages() or None,
            library_name=self.library_name,
            license=self.license,
            pipeline_tag=self.pipeline_tag,
            tags=self.all_tags(),
            model_name=self.model_id if evals else None,
            eval_results=evals or None,
        )

    def template_kwargs(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "base_model": self.base_model,
            "dataset_name": self.dataset_name or (self.datasets[0] if self.datasets else None),
            "language": self.languages(),
            "pipeline_tag": self.pipeline_tag,
            "library_name": self.library_name,
            "results": [asdict(r) for r in self.results],
            "reproduce_yaml": yaml.safe_dump(self.reproduce, sort_keys=False, allow_unicode=True).strip()
            if self.reproduce
            else "",
            "versions": _versions(),
            "input_prefix": repr(self.input_prefix) if self.input_prefix else "",  # as Python source
        }

    def plot(self, folder: Path) -> str | None:
        """Draw the card's figure into ``folder``; its file name, or None when there is nothing to draw."""
        return None


@dataclass
class FineTunedCardData(CardData):
    """A model fine-tuned by :class:`~hf_metatransfer.FineTuningTrainer` (or the finetune recipe)."""

    template: ClassVar[str] = "finetuned.md"
    # FineTuningConfig.strategy_fields() and their values.
    strategy: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # learning_rate, num_train_epochs, batch size, ...
    labels: list[str] = field(default_factory=list)
    linear_probe: dict[str, Any] | None = None  # FineTuningTrainer.linear_probe_info
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def all_tags(self) -> list[str]:
        return list(dict.fromkeys([LIBRARY_TAG, "fine-tuned", *strategy_tags(self.strategy), *self.tags]))

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = super().template_kwargs()
        kwargs.update(
            s=self.strategy,
            strategies=strategy_tags(self.strategy),
            training=self.training,
            labels=self.labels,
            linear_probe=self.linear_probe,
            strategy_kwargs=_call_kwargs(non_default_strategy(self.strategy)),
        )
        return kwargs

    def plot(self, folder: Path) -> str | None:
        name = "learning_curve.png"
        return name if plots.learning_curve(self.log_history, folder / name) else None


@dataclass
class MetaLearnedCardData(CardData):
    """A meta-learned initialisation (MAML, FOMAML, Reptile, ANIL, ProtoNets, Meta-SGD) and its adapted models."""

    template: ClassVar[str] = "meta_learned.md"
    algorithm: str = "MAML"
    n_way: int = 5
    k_shot: int = 1
    q_query: int = 15
    inner_steps: int = 5
    inner_lr: float = 1e-2
    outer_lr: float = 1e-5
    meta_batch_size: int = 4
    meta_steps: int = 0
    first_order: bool = False
    fast_weights: str = "all"  # what adapts in the inner loop: "all", "head", or a description
    # The parameters the inner loop adapts when not all of them (ANIL's head, a LoRA): the snippet adapts these.
    fast_parameters: list[str] = field(default_factory=list)
    projection_dim: int = 0  # ProtoNets: the size of the learned projection of the embeddings (0: none)
    mode: str = (
        "classes"  # episodes: "classes", "monolingual" or "cross-lingual" (support and query languages)
    )
    support_languages: list[str] = field(default_factory=list)  # cross-lingual episodes: the support side
    query_languages: list[str] = field(default_factory=list)  # and the query side
    # True only when the evaluation languages were held out of meta-training (a language-disjoint split);
    # otherwise every split is in every language and the card must not call them unseen.
    language_split: bool = False
    train_languages: list[str] = field(default_factory=list)
    test_languages: list[str] = field(default_factory=list)
    train_classes: list[str] = field(default_factory=list)
    test_classes: list[str] = field(default_factory=list)
    episodes_repo: str | None = None  # the dataset repo of the evaluation episodes
    adapted: list[str] = field(default_factory=list)  # tasks published under adapted/<task>
    adapted_are_adapters: bool = False  # adapted/<task> holds PEFT adapters rather than whole models

    def all_tags(self) -> list[str]:
        algorithm = _tag(self.algorithm)
        return list(dict.fromkeys([LIBRARY_TAG, "meta-learning", "few-shot", algorithm, *self.tags]))

    def metric_label(self, result: Result) -> str:
        shots = result.shots if result.shots is not None else self.k_shot
        setting = f", {result.setting}" if result.setting else ""
        return f"{result.metric} ({self.n_way}-way {shots}-shot{setting})"

    def hub_datasets(self) -> list[str]:
        return list(dict.fromkeys([*self.datasets, *([self.episodes_repo] if self.episodes_repo else [])]))

    def languages(self) -> list[str]:
        return list(dict.fromkeys([*self.language, *self.train_languages, *self.test_languages]))

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = super().template_kwargs()
        kwargs.update(
            {
                k: getattr(self, k)
                for k in (
                    "algorithm",
                    "n_way",
                    "k_shot",
                    "q_query",
                    "inner_steps",
                    "inner_lr",
                    "outer_lr",
                    "meta_batch_size",
                    "meta_steps",
                    "first_order",
                    "fast_weights",
                    "fast_parameters",
                    "projection_dim",
                    "mode",
                    "support_languages",
                    "query_languages",
                    "language_split",
                    "train_languages",
                    "test_languages",
                    "train_classes",
                    "test_classes",
                    "episodes_repo",
                    "adapted",
                    "adapted_are_adapters",
                )
            }
        )
        kwargs["algo"] = _algorithm_key(self.algorithm)
        kwargs["languages"] = self.languages()
        return kwargs

    def plot(self, folder: Path) -> str | None:
        name = "accuracy_vs_shots.png"
        drawn = plots.accuracy_vs_shots(_shot_points(self.results, "accuracy"), folder / name)
        return name if drawn else None


@dataclass
class TranslationCardData(CardData):
    """A LoRA adapter meta-learned over language pairs (FOMAML or Reptile, LoRA fast weights) for few-shot
    translation: adapted to a held-out target language from K support sentence pairs."""

    template: ClassVar[str] = "translation.md"
    pipeline_tag: str = "translation"
    library_name: str = "peft"
    algorithm: str = "fomaml"
    source_language: str = "en"
    train_languages: list[str] = field(default_factory=list)  # target languages of meta-training
    test_languages: list[str] = field(default_factory=list)  # held-out target languages
    k_shots: list[int] = field(default_factory=list)  # the K values evaluated
    q_query: int = 16
    inner_steps: int = 4
    inner_lr: float = 1e-3
    outer_lr: float = 1e-4
    meta_batch_size: int = 4
    meta_steps: int = 0
    lora_r: int | None = None
    lora_alpha: int | None = None
    # SupportFineTuning's defaults: what a user runs at test time unless told otherwise.
    adaptation_steps: int = 20
    adaptation_lr: float = 1e-4
    prompt_example: str = ""  # what a decoder-only LM reads (empty for seq2seq)
    is_encoder_decoder: bool = False
    # The no-model baselines on the same tasks (copy the source, a shuffled reference): shown beside the results,
    # never in the model-index (they are not this model's scores).
    baselines: list[Result] = field(default_factory=list)
    # "method, K": the settings that beat both baselines (paired Student t over tasks); the rest do not translate.
    translating: list[str] = field(default_factory=list)

    def all_tags(self) -> list[str]:
        kinds = ["meta-learning", "few-shot", "translation", "lora", _tag(self.algorithm)]
        return list(dict.fromkeys([LIBRARY_TAG, *kinds, *self.tags]))

    def metric_label(self, result: Result) -> str:
        parts = [f"{self.source_language}->X"]
        parts += [f"{result.shots}-shot"] if result.shots is not None else []
        parts += [result.setting] if result.setting else []
        return f"{result.metric} ({', '.join(parts)})"

    def languages(self) -> list[str]:
        return list(
            dict.fromkeys([self.source_language, *self.language, *self.train_languages, *self.test_languages])
        )

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = super().template_kwargs()
        base = {f.name for f in fields(CardData)}
        kwargs.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in base})
        kwargs["algo"] = _algorithm_key(self.algorithm)
        kwargs["baselines"] = [asdict(r) for r in self.baselines]
        # The snippet's example pair: a held-out language when there is one, as the card is about those.
        kwargs["example_target"] = next(iter(self.test_languages or self.train_languages), "de")
        return kwargs

    def plot(self, folder: Path) -> str | None:
        name = "chrf_vs_shots.png"
        drawn = plots.accuracy_vs_shots(
            _shot_points(self.results, "chrf"),
            folder / name,
            ylabel="chrF",
            xlabel="K support sentence pairs",
        )
        return name if drawn else None


def _tag(name: str) -> str:
    """A Hub tag from a free-form name (``"Meta-SGD"`` -> ``"meta-sgd"``)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _algorithm_key(name: str) -> str:
    """The name the templates branch on, whatever the spelling (``"FO-MAML"``, ``"fomaml"``)."""
    return name.lower().replace("-", "").replace("_", "")


def _shot_points(
    results: Sequence[Result], metric: str
) -> list[tuple[str, int, float, float | None, float | None]]:
    """``metric``'s few-shot rows as points of :func:`plots.accuracy_vs_shots`, one series per setting."""
    return [
        (r.setting or r.split, r.shots, r.value, r.ci_low, r.ci_high)
        for r in results
        if r.shots is not None and r.metric == metric
    ]


def strategy_tags(strategy: Mapping[str, Any]) -> list[str]:
    """Tags of the strategies a FineTuningConfig turned on (empty for plain fine-tuning)."""
    on = {
        "lp-ft": bool(strategy.get("lp_ft")),
        "layer-wise-lr-decay": (strategy.get("layerwise_lr_decay") or 1.0) < 1.0,
        "gradual-unfreezing": bool(strategy.get("gradual_unfreezing")),
        "slanted-triangular-lr": bool(strategy.get("slanted_triangular")),
        "surgical-fine-tuning": strategy.get("surgical_blocks") is not None,
        "auto-rgn": bool(strategy.get("auto_rgn")),
        "re-initialisation": bool(strategy.get("reinit_head") or strategy.get("reinit_top_k_blocks")),
    }
    return [tag for tag in STRATEGY_TAGS if on[tag]]


def hub_id(name_or_path: str | None) -> str | None:
    """The Hub id a model or dataset name stands for: None for local folders and loader names (json, csv...)."""
    if not name_or_path or name_or_path in _LOCAL_DATASETS:
        return None
    from ..conventions import PACKAGED_MODELS
    from ..data.packaged_models import packaged_hub_id

    # embedded, embedded-multilingual, embedded-translator: the releases they rebuild
    if name_or_path in PACKAGED_MODELS:
        return PACKAGED_MODELS[name_or_path].hub_id
    if Path(name_or_path).exists():  # a packaged model's folder names its release; any other folder, nothing
        return packaged_hub_id(name_or_path)
    return name_or_path if _HUB_ID.match(name_or_path) else None


def results_from_json(results: Mapping[str, Any]) -> list[Result]:
    """Rows of the finetune recipe's ``results.json``: test accuracy with its interval, macro-F1, the probe."""
    rows = []
    n = results.get("test_examples")
    if results.get("test_accuracy") is not None:
        rows.append(
            Result.binomial("accuracy", results["test_accuracy"], n)
            if n
            else Result("accuracy", results["test_accuracy"])
        )
    if results.get("test_f1") is not None:
        rows.append(Result("f1", results["test_f1"], n=n, setting="macro"))
    probe = results.get("linear_probe") or {}
    if probe.get("test_accuracy") is not None:
        setting = "after the linear probe (LP)"
        rows.append(
            Result.binomial("accuracy", probe["test_accuracy"], n, setting=setting)
            if n
            else Result("accuracy", probe["test_accuracy"], setting=setting)
        )
    return rows


def fine_tuned_card_from_results(
    saved: Mapping[str, Any], model_id: str, **overrides: Any
) -> FineTunedCardData:
    """Card data from the finetune recipe's ``results.json`` (``{"results": ..., "strategies": ...}``)."""
    results, strategy = saved.get("results", {}), dict(saved.get("strategies", {}))
    dataset = results.get("dataset")
    reproduce = {"model_name_or_path": results.get("model"), "dataset_name": dataset}
    reproduce.update(non_default_strategy(strategy))
    data: dict[str, Any] = {
        "model_id": model_id,
        "base_model": hub_id(results.get("model")),
        "datasets": [d] if (d := hub_id(dataset)) else [],
        "dataset_name": "home-assistant-intents" if dataset == "ha_intents" else dataset,
        "results": results_from_json(results),
        "strategy": strategy,
        "training": {
            "train_examples": results.get("train_examples"),
            "train_seconds": results.get("train_seconds"),
        },
        "linear_probe": results.get("linear_probe"),
        "reproduce": {k: v for k, v in reproduce.items() if v is not None},
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    return FineTunedCardData(**data)


def render_card(data: CardData, plot: str | None = None) -> ModelCard:
    """The card of ``data`` rendered from its template; ``plot`` is the file name of a figure beside it."""
    template = files("hf_metatransfer.model_cards").joinpath(data.template).read_text(encoding="utf-8")
    return ModelCard.from_template(
        data.metadata(), template_str=template, plot=plot, **data.template_kwargs()
    )


def write_card(data: CardData, folder: str | Path) -> Path:
    """Write ``README.md`` (and its figure, when matplotlib is installed) into ``folder``; the README's path.

    Unless ``data`` says what inputs start with, the snippets show the input conventions saved in ``folder``
    (``input_conventions.json``): the card describes the model beside it. The data goes beside the card
    (``card_data.json``, with the README's hash), so the card can be rendered again for another repo and a card
    edited by hand is recognised as such.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if data.input_prefix is None:
        saved = saved_conventions(folder)
        data = replace(data, input_prefix=saved.prefix if saved else "")
    card = render_card(data, plot=data.plot(folder))
    path = folder / CARD_NAME
    card.save(path)
    recorded = {"card": type(data).__name__, "readme_sha256": _sha256(path), "data": asdict(data)}
    (folder / CARD_DATA_NAME).write_text(json.dumps(recorded, indent=2, default=str), encoding="utf-8")
    return path


def load_card_data(folder: str | Path) -> CardData | None:
    """The data the card in ``folder`` was rendered from (``card_data.json``), or None when there is none."""
    path = Path(folder) / CARD_DATA_NAME
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    kinds = {kind.__name__: kind for kind in (FineTunedCardData, MetaLearnedCardData, TranslationCardData)}
    if recorded.get("card") not in kinds:
        raise ValueError(f"{path} records a card of kind {recorded.get('card')!r}, not one of {sorted(kinds)}: "
                         "write it again with hf_metatransfer.hub.write_card.")  # fmt: skip
    kind = kinds[recorded["card"]]
    values = dict(recorded["data"])
    for key in ("results", "baselines"):
        if key in values:
            values[key] = [Result(**r) for r in values[key]]
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in values.items() if k in known})


def card_is_as_rendered(folder: str | Path) -> bool:
    """Whether ``README.md`` is still the card ``write_card`` rendered (False once edited by hand)."""
    folder = Path(folder)
    path = folder / CARD_DATA_NAME
    if not path.is_file() or not (folder / CARD_NAME).is_file():
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("readme_sha256") == _sha256(folder / CARD_NAME)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _call_kwargs(values: Mapping[str, Any]) -> str:
    """``k=v`` pairs as Python source (for the code snippet of a card)."""
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def non_default_strategy(strategy: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy values a run changed from FineTuningConfig's defaults (what a config must set to repeat it)."""
    from ..finetune.config import FineTuningConfig  # here: the trainer imports this package

    defaults = {f.name: f.default for f in fields(FineTuningConfig) if f.default is not MISSING}
    return {k: v for k, v in strategy.items() if k not in defaults or v != defaults[k]}
