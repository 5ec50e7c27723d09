"""The fewshot_protocols benchmark's pieces on a tiny model and token data: every method scored on a prefix of the
same all-way episodes, paired differences over the episodes both methods saw, and the best method as documented."""

import importlib.util
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hf_metatransfer.episodes import EpisodeCollator, TokenStore
from hf_metatransfer.episodes.protocols import all_way_episodes
from hf_metatransfer.meta import (
    FineTune,
    MetaTestResult,
    ProtoNets,
    TransductivePrototypes,
    confidence_interval,
    meta_test,
)
from hf_metatransfer.stats import paired_difference
from tests.meta_fixtures import token_classes
from tests.test_meta_adapted import tiny_mean_pool

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling benchmarks, as when run from there
spec = importlib.util.spec_from_file_location("fewshot_protocols", BENCHMARKS / "fewshot_protocols.py")
fewshot_protocols = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fewshot_protocols)

HEADLINES = ("allway5_mono_best_minus_linear_probe", "allway5_mono_best_minus_setfit_default",
             "allway5_cross_best_minus_nearest_centroid", "out_of_domain_best_minus_frozen",
             "setfit_over_best_seconds")  # fmt: skip


class CountingSetFit:
    """Stands in for SetFit: predicts the support's first label, and records the episodes it was given."""

    settings = "fake"

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def adapt_and_predict(self, support, labels, query):
        self.seen.append(support)
        return [labels[0]] * len(query)


def tiny_setting(draws=3):
    """All-way 4-way episodes in two languages of token data with texts (languages hold different classes)."""
    data = token_classes(n_classes=5, per_class=12)
    lang = ["a" if i % 2 == 0 else "b" for i in range(len(data))]
    data = data.add_column("lang", lang).add_column("text", [f"row {i}" for i in range(len(data))])
    data = data.filter(lambda row: not (row["lang"] == "b" and row["label"] == 4))  # b: one class fewer
    episodes = all_way_episodes(data, k_shot=2, q_query=3, draws=draws, lang_column="lang")
    return episodes, EpisodeCollator(TokenStore(data, pad_token_id=0))


def test_every_method_runs_on_a_prefix_of_the_same_interleaved_episodes():
    episodes, collate = tiny_setting()
    order = fewshot_protocols.interleaved(episodes, 3)
    assert [(e.support_lang, e.episode_id % 3) for e in order[:2]] == [("a", 0), ("b", 0)]
    assert {len(e.classes) for e in order} == {4, 5}  # the per-way heads are needed
    setfit = CountingSetFit()
    model = tiny_mean_pool(n_way=3)
    results = fewshot_protocols.run_setting(
        order, collate, fewshot_protocols.episode_texts(episodes.dataset, "text"), model,
        {"protonets (meta-learned)": (model, ProtoNets())}, {"fine-tuning": FineTune(steps=1)},
        {"setfit-default": setfit}, slow_episodes=3, slow_seconds=None,
    )  # fmt: skip
    assert [results[n].episodes for n in results] == [6, 6, 6, 6, 6, 3, 3]
    assert results["chance (1/N)"].per_episode == [1 / len(e.classes) for e in order]  # 1/4 and 1/5 here
    meta_probe = results[
        "protonets (meta-learned) + linear probe"
    ]  # the meta-learned encoder under the probe
    assert meta_probe.settings == results["linear-probe"].settings
    assert (
        meta_probe.per_episode == results["linear-probe"].per_episode
    )  # here the "meta-learned" model is the frozen one
    texts = fewshot_protocols.episode_texts(episodes.dataset, "text")
    assert setfit.seen == [texts(e)[0] for e in order[:3]]  # the first three episodes, in that order
    rows = fewshot_protocols.rows(results)
    lp, ft = results["linear-probe"], results["fine-tuning"]
    expected = paired_difference(ft.per_episode, lp.per_episode[:3]).as_dict(4)
    assert rows["fine-tuning"]["minus_linear_probe"] == expected
    assert rows["nearest-centroid"]["minus_linear_probe"]["n"] == 6
    assert rows["nearest-centroid"]["minus_setfit_default"]["n"] == 3
    assert all(r["subset"]["episodes"] == 3 for r in rows.values())
    out = fewshot_protocols.headline({"allway5_mono": results})
    assert tuple(out) == HEADLINES
    assert out["allway5_mono_best_minus_setfit_default"]["n"] == 3
    assert out["allway5_cross_best_minus_nearest_centroid"] is None  # not run: no figure
    assert out["out_of_domain_best_minus_frozen"] is None


def result(name, per_episode, seconds=1.0):
    mean, half = confidence_interval(per_episode)
    return MetaTestResult(name, mean, half, seconds, len(per_episode), per_episode)


def test_the_best_is_chosen_on_the_episodes_every_candidate_saw():
    results = {
        "linear-probe": result("linear-probe", [0.5, 0.5, 0.5, 0.5], 0.1),
        # best over its 4 episodes, but the slow method only reached 2, where "slow" is better
        "nearest-centroid": result("nearest-centroid", [0.6, 0.6, 1.0, 1.0], 0.01),
        "slow": result("slow", [0.9, 0.8], 5.0),
        "setfit-default": result("setfit-default", [0.7, 0.7], 20.0),
    }
    out = fewshot_protocols.best_minus(results, "linear-probe")
    assert out["method"] == "slow" and out["selected_on_episodes"] == 2
    assert out["mean"] == pytest.approx(0.35) and out["n"] == 2
    head = fewshot_protocols.headline({"allway5_mono": results, "allway5_cross": results})
    assert head["allway5_mono_best_minus_setfit_default"]["method"] == "slow"
    assert head["setfit_over_best_seconds"] == {"best": "slow", "ratio": 4.0}
    assert head["allway5_cross_best_minus_nearest_centroid"]["method"] == "slow"
    assert fewshot_protocols.best_minus(results, "missing") is None
    imbalanced = fewshot_protocols.headline({"allway5_cross_dirichlet": results})
    assert tuple(imbalanced) == (*HEADLINES, "allway5_cross_dirichlet_best_minus_nearest_centroid")
    assert imbalanced["allway5_cross_dirichlet_best_minus_nearest_centroid"]["mean"] == pytest.approx(0.25)
    assert fewshot_protocols.rows(results)["slow"]["minus_nearest_centroid"]["mean"] == pytest.approx(0.25)


def test_out_of_domain_compares_the_best_adapted_method_with_the_best_frozen_one():
    ood = {
        "nearest-centroid": result("nearest-centroid", [0.6, 0.7, 0.8]),
        "linear-probe": result("linear-probe", [0.7, 0.8, 0.9]),
        "protonets (meta-learned)": result("protonets (meta-learned)", [0.5, 0.6, 0.8]),
        "fine-tuning": result("fine-tuning", [0.8, 0.8]),
    }
    out = fewshot_protocols.headline({"ood_allway5": ood})["out_of_domain_best_minus_frozen"]
    assert (out["method"], out["reference"]) == ("fine-tuning", "linear-probe")
    assert out["mean"] == pytest.approx(np.mean([0.1, 0.0])) and out["n"] == 2


def test_django_ui_strings_are_labelled_by_component_without_ambiguous_strings():
    pytest.importorskip("django")
    data = fewshot_protocols.django_ui_strings()
    assert isinstance(data, datasets.Dataset) and {"admin", "auth", "core"} <= set(data["label"])
    assert len(set(data["text"])) == len(data)


def test_without_slow_methods_the_rows_and_headlines_cover_the_frozen_and_meta_learned_ones():
    episodes, collate = tiny_setting(draws=2)
    model = tiny_mean_pool(n_way=3)
    order = fewshot_protocols.interleaved(episodes, 2)
    results = fewshot_protocols.run_setting(
        order, collate, fewshot_protocols.episode_texts(episodes.dataset, "text"), model,
        {"protonets (meta-learned)": (model, ProtoNets())}, {}, {}, slow_episodes=2, slow_seconds=None,
    )  # fmt: skip
    assert all(r.episodes == len(order) for r in results.values())
    out = fewshot_protocols.headline({"allway5_cross": results})
    assert out["allway5_cross_best_minus_nearest_centroid"]["n"] == len(order)
    parse, slow_for = fewshot_protocols.parse, fewshot_protocols.slow_for
    assert slow_for(parse(["--no-slow"])) == {}
    assert list(slow_for(parse(["--quick"]))) == ["fine-tuning, cv lr"]
    assert list(slow_for(parse(["--warm-lr", "5e-5"]))) == ["fine-tuning, cv lr", "lp-ft, lr 5e-05",
                                                             "proto-head-ft, lr 5e-05"]  # fmt: skip
    assert list(slow_for(parse(["--warm-lr", "5e-5", "--slow-methods", "lp-ft"]))) == ["lp-ft, lr 5e-05"]
    named = parse(["--warm-lr", "5e-5", "--slow-methods", "lp-ft-transductive"])
    assert slow_for(named) == {}  # no transductive choice for the setting: nothing to run
    (method,) = slow_for(named, {0: TransductivePrototypes(iterations=1)}).values()
    assert method.transductive.iterations == 1 and method.lp_ft
    top = slow_for(parse(["--warm-lr", "5e-5", "--body-blocks", "4"]))
    names = ["fine-tuning, cv lr", "lp-ft, lr 5e-05, top 4 blocks", "proto-head-ft, lr 5e-05, top 4 blocks"]
    assert list(top) == names
    half = slow_for(parse(["--warm-lr", "5e-5", "--body-blocks", "4", "--support-bf16"]))
    assert list(half)[1:] == [f"{n}, bf16" for n in names[1:]]
    assert [m.autocast_dtype for m in half.values()] == [
        None,
        torch.bfloat16,
        torch.bfloat16,
    ]  # not the baseline
    assert [m.body_blocks for m in top.values()] == [
        None,
        4,
        4,
    ]  # fine-tuning, a baseline, keeps its whole body
    both = slow_for(parse(["--warm-lr", "5e-5", "--body-blocks", "0", "4", "--slow-methods", "lp-ft-transductive"]),
                    {0: TransductivePrototypes(iterations=1), 4: TransductivePrototypes(iterations=3)})  # fmt: skip
    chosen = {n: (m.body_blocks, m.transductive.iterations) for n, m in both.items()}
    assert chosen == {
        "lp-ft-transductive, lr 5e-05": (None, 1),
        "lp-ft-transductive, lr 5e-05, top 4 blocks": (4, 3),
    }


def test_transductive_prototypes_run_on_the_frozen_and_every_meta_learned_encoder():
    episodes, collate = tiny_setting(draws=2)
    order = fewshot_protocols.interleaved(episodes, 2)
    frozen, meta_learned = tiny_mean_pool(n_way=3), tiny_mean_pool(n_way=3, seed=1)
    results = fewshot_protocols.run_setting(
        order, collate, fewshot_protocols.episode_texts(episodes.dataset, "text"), frozen,
        {"meta": (meta_learned, ProtoNets()), "same": (frozen, ProtoNets())}, {}, {}, slow_episodes=2,
        slow_seconds=None, transductive=TransductivePrototypes(iterations=2, temperature=5.0),
    )  # fmt: skip
    ours = results["transductive-prototypes"]
    assert ours.episodes == len(order) and "2 soft k-means" in ours.settings
    assert results["same + transductive prototypes"].per_episode == ours.per_episode  # the same encoder
    assert results["meta + transductive prototypes"].per_episode != ours.per_episode  # another encoder
    expected = meta_test(meta_learned, TransductivePrototypes(iterations=2, temperature=5.0), order, collate,
                         progress=False)  # fmt: skip
    assert results["meta + transductive prototypes"].per_episode == expected.per_episode
    parse = fewshot_protocols.parse
    assert parse([]).transductive_draws == 3 and parse(["--no-transductive"]).no_transductive
    assert parse([]).query_dirichlet is None and parse(["--query-dirichlet", "2"]).query_dirichlet == 2.0
    families = fewshot_protocols.slow_families
    assert families(parse([]), "allway5_mono") == (True, True)
    assert families(parse([]), "allway5_mono_dirichlet") == (False, False)  # imbalanced: the cheap methods
    assert families(parse(["--slow-dirichlet"]), "allway5_mono_dirichlet") == (
        True,
        False,
    )  # SetFit reads no query
    assert families(parse(["--no-setfit"]), "allway5_mono") == (True, False)
    assert families(parse(["--no-slow", "--slow-dirichlet"]), "allway5_mono_dirichlet") == (False, False)


def test_meta_slow_runs_the_slow_methods_from_the_meta_learned_encoder_too():
    episodes, collate = tiny_setting(draws=2)
    order = fewshot_protocols.interleaved(episodes, 2)
    frozen, meta_learned = tiny_mean_pool(n_way=3), tiny_mean_pool(n_way=3)
    with torch.no_grad():  # a different encoder: its LP-FT must differ from the frozen one's
        for p in meta_learned.parameters():
            p.add_(0.5 * torch.randn_like(p))
    before = {k: v.clone() for k, v in meta_learned.state_dict().items()}
    lp_ft = {"lp-ft": FineTune(steps=2, lr=1e-3, lp_ft=True)}
    results = fewshot_protocols.run_setting(
        order, collate, fewshot_protocols.episode_texts(episodes.dataset, "text"), frozen,
        {"meta": (meta_learned, ProtoNets())}, lp_ft, {}, slow_episodes=3, slow_seconds=None, meta_slow=True,
    )  # fmt: skip
    assert list(results)[-2:] == ["lp-ft", "meta + lp-ft"]
    assert results["meta + lp-ft"].episodes == results["lp-ft"].episodes == 3
    assert results["meta + lp-ft"].per_episode != results["lp-ft"].per_episode
    after = dict(meta_learned.state_dict())
    assert all(torch.equal(after[k], v) for k, v in before.items())  # tuned copies: the encoder did not move


def test_accuracy_against_k_is_plotted_a_setting_kind_run_at_two_k(tmp_path):
    pytest.importorskip("matplotlib")
    results = {
        "allway1_mono": {"linear-probe": result("linear-probe", [0.5, 0.6])},
        "allway5_mono": {"linear-probe": result("linear-probe", [0.8, 0.9])},
        "allway5_cross": {"linear-probe": result("linear-probe", [0.7, 0.8])},  # one K: no plot
        "ood_allway5": {"linear-probe": result("linear-probe", [0.4, 0.5])},
    }
    written = fewshot_protocols.plot_shots(results, tmp_path, "e5")
    assert written == [tmp_path / "fewshot_protocols_e5_mono.png"] and written[0].stat().st_size > 0


@pytest.fixture(scope="module")
def intent_tasks(tmp_path_factory):
    """Intents in two train languages and one test language, built once for the module (a few seconds)."""
    from hf_metatransfer.episodes import ha_intents_tasks

    return ha_intents_tasks(["eu", "ru", "uk"], seed=0, language_split={"train": ["ru", "uk"], "test": ["eu"]},
                            cap_per_intent=20, cache_dir=str(tmp_path_factory.mktemp("ha_intents")))  # fmt: skip


@pytest.mark.parametrize("modes", [["monolingual"], ["cross-lingual"], ["monolingual", "cross-lingual"]])
def test_meta_training_episodes_have_the_ways_and_shots_asked_for(intent_tasks, modes):
    tasks = intent_tasks
    args = fewshot_protocols.parse(["--meta-ways", "12", "--meta-shots", "3", "--q-query", "2"])
    with warnings.catch_warnings():  # the tiny cap leaves some intents short of K + Q: the sampler warns
        warnings.simplefilter("ignore")
        episodes = fewshot_protocols.meta_training_sampler(tasks, modes, args).batch(range(4))
    train_classes = set(tasks.class_names("train"))
    for episode in episodes:
        assert len(episode.classes) == 12 and set(episode.class_names) <= train_classes
        assert np.bincount(episode.support_labels).tolist() == [3] * 12
        assert np.bincount(episode.query_labels).tolist() == [2] * 12
        cross = modes[episode.episode_id % len(modes)] == "cross-lingual"  # the modes take turns
        assert (episode.support_lang != episode.query_lang) == cross
