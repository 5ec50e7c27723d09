"""The lecture experiments' code paths on tiny random models and token data: what they compute, not how well."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch

from hf_metatransfer.episodes import EpisodeBuilder
from hf_metatransfer.episodes.presets import tasks_from_builder
from hf_metatransfer.experiments import (
    SizesArguments,
    TinyKArguments,
    mean_ci,
    paired,
    plot_sizes,
    plot_tiny_k,
    run_pretrained_vs_scratch,
    run_tiny_k,
    scratch_like,
)
from hf_metatransfer.experiments.tiny_k import METHODS, SLOW
from tests.meta_fixtures import tiny_bert, token_classes, token_episodes
from tests.test_recipe_finetune import tiny_checkpoint  # noqa: F401 - the fixture

PNG = b"\x89PNG\r\n\x1a\n"


def test_mean_ci_and_paired():
    assert mean_ci([0.5]) == (0.5, 0.0)
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 / 3**0.5, rel=1e-3)  # t(0.975, 2) * sd / sqrt(n)
    assert paired([3.0, 5.0], [1.0, 3.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="matched units"):
        paired([1.0], [1.0, 2.0])


def test_tiny_k_scores_every_method_on_the_same_episodes_for_every_k(tmp_path):
    _, _, collate = token_episodes()
    builder = EpisodeBuilder(token_classes(), label_column="label", text_column=None)
    tasks = tasks_from_builder(builder, class_split={"train": list(range(6)), "test": [6, 7, 8, 9]},
                               split_names=("train", "test"))  # fmt: skip
    seen: list[tuple] = []

    def recording(episode):
        seen.append((len(episode.support), tuple(episode.support), tuple(episode.query)))
        return collate(episode)

    args = TinyKArguments(shots=[1, 3], n_way=3, q_query=2, test_episodes=3, slow_episodes=2, meta_steps=2,
                          meta_batch_size=2, ft_steps=1)  # fmt: skip
    result = run_tiny_k(lambda n: tiny_bert(n), tasks, recording, args, seed=0)

    assert {(r["method"], r["shots"]) for r in result["rows"]} == {(m, k) for m in METHODS for k in (1, 3)}
    # After meta-training's episodes come the test ones, in the order they were scored.
    calls = iter(seen[args.meta_steps * args.meta_batch_size :])
    for k in args.shots:
        episodes = None
        for method in METHODS:
            n = args.slow_episodes if method in SLOW else args.test_episodes
            scored = [next(calls) for _ in range(n)]
            assert all(size == 3 * k for size, _, _ in scored)
            episodes = episodes or scored
            assert scored == episodes[:n]  # every method: a prefix of the same episodes
    assert next(calls, None) is None
    for r in result["rows"]:
        assert len(r["per_episode"]) == r["episodes"] and 0 <= r["shared_accuracy"] <= 1
    assert {(d["method"], d["shots"]) for d in result["paired"]} == {
        (m, k) for m in METHODS[1:] for k in (1, 3)
    }
    assert result["meta_training"]["steps"] == 2 and set(result["classes_by_k"]) == {1, 3}

    plot = tmp_path / "k.png"
    assert plot_tiny_k(result, plot) and plot.read_bytes()[:8] == PNG


def test_tiny_k_builds_its_models_seeded(tmp_path):
    """Both classifiers get their fresh heads after a seed reset: a run repeats bit for bit, another seed differs."""
    import transformers as T

    tiny_bert().bert.save_pretrained(tmp_path / "body")
    _, _, collate = token_episodes()
    builder = EpisodeBuilder(token_classes(), label_column="label", text_column=None)
    tasks = tasks_from_builder(builder, class_split={"train": list(range(6)), "test": [6, 7, 8, 9]},
                               split_names=("train", "test"))  # fmt: skip
    args = TinyKArguments(shots=[1], n_way=3, q_query=2, test_episodes=1, slow_episodes=1, meta_steps=1,
                          meta_batch_size=1, methods=[METHODS[0], "nearest-centroid"])  # fmt: skip

    def run(seed: int) -> list[dict]:
        built = []

        def model_init(n: int):  # like the lecture's: a pre-trained body and a new, random head
            built.append(T.BertForSequenceClassification.from_pretrained(tmp_path / "body", num_labels=n))
            return built[-1]

        run_tiny_k(model_init, tasks, collate, args, seed=seed)
        return [m.state_dict() for m in built]  # the meta-trained model, then the baselines' one

    first, second, other = run(0), run(0), run(1)
    for a, b in zip(first, second, strict=True):
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not torch.equal(first[1]["classifier.weight"], other[1]["classifier.weight"])


def test_tiny_k_arguments_name_the_problem():
    with pytest.raises(ValueError, match="Unknown methods"):
        TinyKArguments(methods=["maml"])
    with pytest.raises(ValueError, match="distinct K values"):
        TinyKArguments(shots=[0, 1])
    with pytest.raises(ValueError, match="slow_episodes"):
        TinyKArguments(test_episodes=2, slow_episodes=3)


def test_scratch_model_is_reinitialised_not_pretrained():
    pretrained = tiny_bert(4, seed=0)
    with torch.no_grad():  # move every weight off any init the scratch copy could draw
        for p in pretrained.parameters():
            p.add_(1.0)
    scratch = scratch_like(pretrained, seed=1)
    assert type(scratch) is type(pretrained) and scratch.config.to_dict() == pretrained.config.to_dict()
    ours, theirs = dict(pretrained.named_parameters()), dict(scratch.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(not torch.equal(ours[n], theirs[n]) for n in ours)
    again = scratch_like(pretrained, seed=1)
    assert all(torch.equal(theirs[n], p) for n, p in again.named_parameters())  # seeded


def test_pretrained_vs_scratch_runs_every_size_seed_and_init(tmp_path):
    data = token_classes(n_classes=4, per_class=12)
    args = SizesArguments(train_sizes=[1, 0], test_per_class=3, min_rows_per_class=5, epochs=1, min_steps=1,
                          step_cap=2, batch_size=8)  # fmt: skip
    result = run_pretrained_vs_scratch(lambda n: tiny_bert(n), data, args, seeds=[0, 1])

    assert result["num_classes"] == 4 and result["test_rows"] == 12
    assert {(r["init"], r["size"]) for r in result["rows"]} == {(i, s) for i in ("pretrained", "scratch")
                                                                for s in (1, 0)}  # fmt: skip
    for seed_runs in result["per_seed"]:
        rows = {r["size"]: r["train_rows"] for r in seed_runs["runs"]}
        assert rows == {1: 4, 0: 4 * (12 - 3)}  # one a class; "all" is every non-test row
        assert all(1 <= r["steps"] <= 2 and 0 <= r["error"] <= 1 for r in seed_runs["runs"])
    assert [d["size"] for d in result["paired"]] == [1, 0]
    plot = tmp_path / "sizes.png"
    assert plot_sizes(result, plot) and plot.read_bytes()[:8] == PNG


def test_pretrained_vs_scratch_refuses_sizes_the_classes_cannot_hold():
    with pytest.raises(ValueError, match="min_rows_per_class"):
        SizesArguments(train_sizes=[64], test_per_class=20, min_rows_per_class=50)
    args = SizesArguments(train_sizes=[1], test_per_class=3, min_rows_per_class=50)
    with pytest.raises(ValueError, match="lower min_rows_per_class"):
        run_pretrained_vs_scratch(lambda n: tiny_bert(n), token_classes(4, 12), args, seeds=[0])


@pytest.mark.parametrize(
    "name", ["tiny_k", "pretrained_vs_scratch", "surgical_shift", "self_pretraining", "lpft_shift"]
)
def test_lecture_configs_ship_and_parse(name):
    from hf_metatransfer.cli_args import parse_args
    from hf_metatransfer.recipes.lecture import ARGUMENTS

    config = files("hf_metatransfer.recipes") / "configs" / f"lecture_{name}.yaml"
    _, lecture, *_ = parse_args(ARGUMENTS, ["--config", str(config)])
    assert lecture.experiment == name and lecture.output_dir == f"outputs/lecture_{name}"


def test_lecture_recipe_end_to_end_on_a_tiny_checkpoint(tmp_path, tiny_checkpoint, capsys):  # noqa: F811
    import json

    from hf_metatransfer.cli import RECIPES
    from hf_metatransfer.recipes.lecture import cli

    assert RECIPES["lecture"][0] == "lecture"
    out = tmp_path / "run"
    result = cli(["--experiment", "self_pretraining", "--model_name_or_path", str(tiny_checkpoint),
                  "--cap_per_intent", "12", "--train_sizes", "1", "2", "--test_per_class", "2",
                  "--min_rows_per_class", "10", "--max_classes", "3", "--min_steps", "1", "--step_cap", "1",
                  "--inits", "pretrained", "scratch", "self-pretrained", "--mlm_steps", "2",
                  "--output_dir", str(out)])  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved["num_classes"] == 3 and saved["per_seed"][0]["mlm_loss"] > 0
    assert [d["pair"] for d in saved["paired"]] == ["scratch - pretrained"] * 2 + [
        "self-pretrained - pretrained"] * 2 + ["self-pretrained - scratch"] * 2  # fmt: skip
    assert (out / "error_vs_size.png").read_bytes()[:8] == PNG
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["experiment"] == "self_pretraining" and "per_seed" not in json.loads(last)
    assert result["plot"] == str(out / "error_vs_size.png")
    with pytest.raises(ValueError, match="experiment='nope' is unknown"):
        cli(["--experiment", "nope"])
    with pytest.raises(ValueError, match="set inits to"):
        cli(["--experiment", "self_pretraining", "--model_name_or_path", str(tiny_checkpoint)])


def test_char_noise_and_derangement_are_seeded_and_do_what_they_say():
    import random

    from hf_metatransfer.experiments.surgical_shift import char_noise, derangement

    text = "turn on the kitchen lights"
    assert char_noise(text, 0.0, random.Random(0)) == text
    assert char_noise(text, 0.5, random.Random(1)) == char_noise(text, 0.5, random.Random(1)) != text
    perm = derangement(5, random.Random(0))
    assert sorted(perm) == list(range(5)) and all(p != i for i, p in enumerate(perm))


def test_surgical_shift_tunes_only_the_chosen_part(tmp_path, tiny_checkpoint):  # noqa: F811
    import datasets
    import transformers as T

    from hf_metatransfer.experiments import plot_surgical, run_surgical_shift, surgical_table
    from hf_metatransfer.experiments.surgical_shift import CHOICES, SHIFTS, SurgicalArguments

    words = {0: ["lights", "lamp", "bulb"], 1: ["music", "song", "radio"], 2: ["door", "gate", "lock"]}
    rows = [(f"{verb} the {w} {n}", label, lang) for label, ws in words.items() for w in ws
            for verb, lang in (("switch", "en"), ("schalte", "de")) for n in range(4)]  # fmt: skip
    data = datasets.Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows],
                                       "lang": [r[2] for r in rows]})  # fmt: skip
    tokenizer = T.AutoTokenizer.from_pretrained(tiny_checkpoint)
    args = SurgicalArguments(source_per_class=3, target_per_class=2, shift_test_per_class=2, source_steps=1,
                             target_steps=2, shift_batch_size=4, noise_rate=0.3)  # fmt: skip

    def model_init(n: int):
        return T.AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=n)

    result = run_surgical_shift(model_init, data, tokenizer, args, seeds=[0])
    blocks = result["num_blocks"]
    head = blocks + 1  # depth 0: embeddings; 1..blocks: blocks; then the head
    expected = {"none": [], "first": [1], "middle": [(blocks - 1) // 2 + 1], "last": [blocks], "head": [head]}
    runs = result["per_seed"][0]["runs"]
    assert {(r["shift"], r["choice"]) for r in runs} == {(s, c) for s in SHIFTS for c in CHOICES}
    for r in runs:
        if r["choice"] in expected:  # every other depth bit-identical to the source model
            assert r["changed_depths"] == expected[r["choice"]], r
        else:
            assert r["changed_depths"][-blocks - 1 :] == list(range(1, head + 1))
    assert all(set(r["rgn_by_depth"]) == set(range(head + 1)) for r in runs if r["choice"] == "auto-rgn")
    assert "Auto-RGN's largest weight" in surgical_table(result)
    plot = tmp_path / "surgical.png"
    assert plot_surgical(result, plot) and plot.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="lower source_per_class"):
        run_surgical_shift(model_init, data, tokenizer, SurgicalArguments(source_per_class=50), seeds=[0])


def lpft_data():
    """Three intents in English and two OOD languages, 8 rows a (language, intent)."""
    import datasets

    words = {"light": ["lights", "lamp"], "music": ["music", "song"], "door": ["door", "gate"]}
    rows = [(f"{verb} the {w} {n}", intent, lang) for intent, ws in words.items() for w in ws
            for verb, lang in (("switch", "en"), ("schalte", "de"), ("allume", "fr")) for n in range(4)]  # fmt: skip
    return datasets.Dataset.from_dict({"text": [r[0] for r in rows], "intent": [r[1] for r in rows],
                                       "lang": [r[2] for r in rows]})  # fmt: skip


def test_lpft_shift_scores_lp_before_ft_on_the_same_rows_and_pairs_by_seed(
    tmp_path,
    tiny_checkpoint,
    monkeypatch,  # noqa: F811
):
    import transformers as T

    from hf_metatransfer.experiments import (
        LpftShiftArguments,
        lpft_model_loader,
        lpft_shift_table,
        plot_lpft_shift,
    )
    from hf_metatransfer.experiments import lpft_shift as lpft

    data = lpft_data()
    tokenizer = T.AutoTokenizer.from_pretrained(tiny_checkpoint)
    args = LpftShiftArguments(lpft_shots=2, id_test=4, ood_langs=["de", "fr"], ood_per_lang=3, min_id_test=2,
                              min_ood_per_intent=2, lpft_epochs=1, lpft_batch_size=2, text_prefix="")  # fmt: skip
    evaluated: list[tuple] = []  # every evaluation, in order: the rows' (input_ids, label) pairs
    accuracy = lpft.accuracy

    def recording(model, rows, collator, batch_size):
        evaluated.append(tuple(zip(map(tuple, rows["input_ids"]), rows["labels"])))
        return accuracy(model, rows, collator, batch_size)

    monkeypatch.setattr(lpft, "accuracy", recording)

    def run(seeds: list[int]) -> dict:
        return lpft.run_lpft_shift(
            lpft_model_loader(tiny_checkpoint, "mean"), data, tokenizer, args, seeds=seeds
        )

    result = run([0, 1])

    assert (
        result["classes"] == 3
        and result["train_examples"] == 6
        and result["intents"] == ["door", "light", "music"]
    )
    assert result["frozen"] == ["bert.embeddings.word_embeddings.weight"]
    for seed in result["per_seed"]:
        assert (
            seed["LP"]["steps"] == 0 < seed["FT"]["steps"] == seed["LP-FT"]["steps"]
        )  # LP: scored before FT
        assert not set(seed["train_rows"]) & set(seed["id_rows"]) and len(seed["id_rows"]) == 4
        assert {data[i]["lang"] for i in seed["train_rows"] + seed["id_rows"]} == {"en"}
        assert all({data[i]["lang"] for i in rows} == {lang} for lang, rows in seed["ood_rows"].items())
    # Per seed: LP (de, fr, id), LP-FT (de, fr, id, train), FT (the same): one ID and one OOD set per language.
    per_seed = len(evaluated) // 2
    for calls in (evaluated[:per_seed], evaluated[per_seed:]):
        lp, lp_ft, ft = calls[:3], calls[3:6], calls[7:10]
        assert lp == lp_ft == ft and calls[6] == calls[10] and len(set(calls)) == 4
    assert evaluated[:2] == evaluated[per_seed : per_seed + 2]  # the OOD rows: the same for every seed
    assert evaluated[2] != evaluated[per_seed + 2]  # the ID rows: drawn per seed
    again = run([1])["per_seed"][0]
    assert again["id_rows"] == result["per_seed"][1]["id_rows"] != result["per_seed"][0]["id_rows"]
    assert again["LP"]["id"] == result["per_seed"][1]["LP"]["id"]
    for name, (a, b) in {"LP-FT - FT": ("LP-FT", "FT"), "LP - FT": ("LP", "FT")}.items():
        diffs = [s[a]["ood"] - s[b]["ood"] for s in result["per_seed"]]
        assert result["paired"][name]["ood"] == round(mean_ci(diffs)[0], 2)
        assert result["paired"][name]["ood_ci"] == round(
            mean_ci(diffs)[1], 2
        )  # the spread of per-seed differences

    table = lpft_shift_table(result)
    assert "| LP-FT |" in table and "LP-FT - FT" in table and "word embeddings FROZEN" in table
    plot = tmp_path / "lpft.png"
    assert plot_lpft_shift(result, plot) and plot.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="pooling='cls' is unknown"):
        LpftShiftArguments(pooling="cls")
    with pytest.raises(ValueError, match="lower min_ood_per_intent"):
        lpft.run_lpft_shift(lpft_model_loader(tiny_checkpoint, "mean"), data, tokenizer,
                            LpftShiftArguments(min_ood_per_intent=50), seeds=[0])  # fmt: skip


def test_lecture_lpft_shift_config_is_the_benchmarks_defaults_and_the_recipe_runs(
    tmp_path, tiny_checkpoint, capsys
):  # noqa: F811
    import json

    from hf_metatransfer.cli_args import parse_args
    from hf_metatransfer.experiments import LpftShiftArguments
    from hf_metatransfer.recipes.finetune import EMBEDDED_MULTILINGUAL
    from hf_metatransfer.recipes.lecture import ARGUMENTS, cli

    config = files("hf_metatransfer.recipes") / "configs" / "lecture_lpft_shift.yaml"
    model, lecture, *_, lpft = parse_args(ARGUMENTS, ["--config", str(config)])
    assert (
        lpft == LpftShiftArguments()
        and model.model_name_or_path == EMBEDDED_MULTILINGUAL
        and lecture.seeds == [0, 1, 2]
    )
    out = tmp_path / "run"
    cli(["--experiment", "lpft_shift", "--model_name_or_path", str(tiny_checkpoint), "--cap_per_intent", "6",
         "--lpft_shots", "2", "--id_test", "6", "--min_id_test", "1", "--ood_langs", "de", "--ood_per_lang", "6",
         "--min_ood_per_intent", "1", "--lpft_epochs", "1", "--output_dir", str(out)])  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "lpft_shift" and set(saved["paired"]) == {
        "LP-FT - FT",
        "LP - FT",
        "LP-FT - LP",
    }
    assert (out / "lpft_shift.png").read_bytes()[:8] == PNG
    assert "per_seed" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
