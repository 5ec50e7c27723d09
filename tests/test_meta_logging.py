"""What a run tells and leaves behind: MetaTrainer's Trainer-like logs (console, trackers), short warnings that name
the caller's line, the settings every meta-test method ran with, and what the last step writes to disk."""

from __future__ import annotations

import ast
import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import datasets
import pytest
from accelerate.tracking import GeneralTracker
from accelerate.utils import is_mlflow_available

from hf_metatransfer.episodes import EpisodeBuilder, tasks_from_builder
from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from hf_metatransfer.meta import (
    FineTune,
    LinearProbe,
    MetaTestResult,
    MetaTrainer,
    MetaTrainingConfig,
    NearestCentroid,
    TransductivePrototypes,
    build_algorithm,
    meta_test,
)
from hf_metatransfer.recipes.finetune import ModelArguments
from hf_metatransfer.recipes.meta_train import EpisodeArguments, score_against_baselines, write_card
from tests.meta_fixtures import tiny_bert, token_classes, token_episodes
from tests.test_finetune_trainer import toy_dataset
from tests.tiny_models import tiny_model

TRAINER_LOGGER = "hf_metatransfer.meta.trainer"


def config(tmp_path: Path, **kw) -> MetaTrainingConfig:
    base = dict(output_dir=str(tmp_path / "run"), algorithm="fomaml", inner_steps=1, inner_lr=0.3, meta_batch_size=2,
                max_steps=4, learning_rate=1e-2, eval_steps=0, save_steps=0, logging_steps=2, disable_tqdm=True)  # fmt: skip
    return MetaTrainingConfig(**{**base, **kw})


def dict_lines(text: str) -> list[dict]:
    return [ast.literal_eval(line) for line in text.splitlines() if line.startswith("{")]


class Recorder(GeneralTracker):
    """A tracker that keeps what accelerate hands it."""

    name, requires_logging_directory = "recorder", False

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict]] = []
        self.config: dict = {}

    @property
    def tracker(self) -> Recorder:
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((step, dict(values)))


# -- 4a: logs ------------------------------------------------------------------------------------------------------
def test_logging_steps_and_validations_are_trainer_like_lines_through_logging(tmp_path, caplog):
    train, test, collate = token_episodes()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, eval_steps=2, eval_episodes=2), train, collate,
                          eval_sampler=test)  # fmt: skip
    with caplog.at_level(logging.INFO, logger=TRAINER_LOGGER):
        trainer.train()
    lines = dict_lines("\n".join(r.getMessage() for r in caplog.records if r.name == TRAINER_LOGGER))
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [2, 4]
    assert {"loss", "query_accuracy", "lr", "skipped_tasks", "step"} <= set(steps[0])
    assert steps[0]["lr"] == 0.01 and steps[0]["skipped_tasks"] == 0 and list(steps[0])[-1] == "step"
    assert [(line["step"], 0 <= line["eval_accuracy"] <= 1) for line in lines if "eval_accuracy" in line] == [
        (2, True),
        (4, True),
    ]


@pytest.mark.parametrize("bar", [False, True], ids=["no-bar", "bar"])
def test_lines_reach_the_console_when_logging_is_not_configured_for_info(tmp_path, capsys, caplog, bar):
    # transformers' defaults configure only the "transformers" logger: INFO from this package is dropped, so the
    # lines are written as Trainer's printer / progress callbacks write theirs (tqdm.write keeps a bar whole).
    train, _, collate = token_episodes()
    caplog.set_level(logging.WARNING, logger=TRAINER_LOGGER)  # whatever an earlier test configured
    MetaTrainer(tiny_bert(), config(tmp_path, disable_tqdm=not bar), train, collate).train()
    printed = dict_lines(capsys.readouterr().out)
    assert [line["step"] for line in printed] == [2, 4] and all("loss" in line for line in printed)


def test_a_tracker_instance_receives_every_log_and_validation_with_its_step(tmp_path):
    train, test, collate = token_episodes()
    recorder = Recorder()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, eval_steps=2, eval_episodes=2), train, collate,
                          eval_sampler=test, trackers=[recorder])  # fmt: skip
    trainer.train()
    assert [(step, "loss" in values, "eval_accuracy" in values) for step, values in recorder.logged] == [
        (2, True, False),
        (2, False, True),
        (4, True, False),
        (4, False, True),
    ]
    assert recorder.config["algorithm"] == "fomaml" and recorder.config["logging_steps"] == 2


@pytest.mark.skipif(is_mlflow_available(), reason="needs a tracker that is not installed")
def test_a_report_to_tracker_that_is_not_installed_is_named(tmp_path, caplog):
    train, _, collate = token_episodes()
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        MetaTrainer(tiny_bert(), config(tmp_path, report_to=["mlflow"]), train, collate)
    assert "report_to ['mlflow']: not installed, so nothing is logged there" in caplog.text


# -- 4b: short warnings at the caller's line ---------------------------------------------------------------------
def few_classes_in_many_languages() -> datasets.Dataset:
    """en and de offer 6 classes of 5 sentences; l0..l5 two classes each (and l0 a class of 1 sentence)."""
    rows = [{"text": f"{lang} {c} {i}", "intent": f"intent_{c}", "lang": lang}
            for lang, classes in [("en", 6), ("de", 6), *[(f"l{j}", 2) for j in range(6)]]
            for c in range(classes) for i in range(5)]  # fmt: skip
    rows.append({"text": "l0 rare", "intent": "intent_5", "lang": "l0"})
    return datasets.Dataset.from_list(rows)


def test_the_sampler_warning_is_one_short_line_at_the_callers_line_and_the_lists_are_kept(caplog):
    builder = EpisodeBuilder(few_classes_in_many_languages(), label_column="intent", lang_column="lang")
    tasks = tasks_from_builder(builder, class_split={"train": [f"intent_{c}" for c in range(6)]})
    for make in (lambda: builder.sampler(3, 2, 2, mode="cross-lingual"),
                 lambda: tasks.sampler("train", 3, 2, 2, mode="cross-lingual")):  # fmt: skip
        with (
            warnings.catch_warnings(record=True) as caught,
            caplog.at_level(logging.INFO, "hf_metatransfer.episodes"),
        ):
            warnings.simplefilter("always")
            caplog.clear()
            sampler = make()
        (warning,) = caught
        assert warning.filename == __file__  # the line that asked for the sampler, not the library's
        message = str(warning.message)
        assert message == (
            "Left out of episodes: 1 class (in 1 language) with fewer than K + Q = 4 examples; 54 of 56 language "
            "pairs with fewer than 3 classes of K + Q examples. sampler.report lists them (logged by "
            "hf_metatransfer.episodes.report at INFO)."
        )
        assert sampler.report.small_classes == {"l0": {"intent_5": 1}}
        assert len(sampler.report.left_out) == 54 and {"l0->de", "de->l5", "l4->l3"} <= set(
            sampler.report.left_out
        )
        (record,) = [r for r in caplog.records if r.name.startswith("hf_metatransfer.episodes")]
        assert all(pair in record.getMessage() for pair in sampler.report.left_out)


# -- 5: the settings every method ran with ------------------------------------------------------------------------
def test_baselines_state_their_settings():
    assert "nearest class centroid" in NearestCentroid().settings
    assert "C=10 on standardised" in LinearProbe().settings and "C=0.5 on" in LinearProbe(C=0.5).settings
    assert (
        "20 full-batch AdamW steps" in FineTune().settings
        and "LR 5e-05 body / 0.01 head" in FineTune().settings
    )
    assert "C=1 on its standardised inputs; 20 full-batch AdamW" in FineTune(lp_ft=True).settings
    row = MetaTestResult("linear-probe", 0.5, 0.1, 0.01, 2, [0.4, 0.6], settings=LinearProbe().settings)
    assert row.row().startswith(f"| linear-probe | {LinearProbe().settings} | 50.0 +- 10.0 |")
    assert row.row().count(" | ") == MetaTestResult.TABLE_HEADER.splitlines()[0].count(" | ")
    assert asdict(row)["settings"] == LinearProbe().settings  # what results.json keeps


def test_the_results_table_and_the_card_state_every_methods_settings(tmp_path, capsys):
    _, test, collate = token_episodes()
    ep = EpisodeArguments(n_way=3, k_shot=2, q_query=3, slow_baseline_episodes=2,
                          baselines=["nearest-centroid", "linear-probe", "lp-ft", "transductive-prototypes"])  # fmt: skip
    algorithm = build_algorithm("fomaml", inner_steps=1, inner_lr=0.3)
    model = tiny_bert()
    algorithm.setup(model)
    rows = score_against_baselines(model, algorithm, "fomaml (meta-learned)", tiny_bert(), test.batch(range(3)),
                                   collate, ep, tmp_path)  # fmt: skip
    table = capsys.readouterr().out
    assert "| method | settings | accuracy (%) +- 95% CI |" in table
    meta = "1 inner SGD step (LR 0.3) on the support set, fast weights: all"
    assert [r.settings for r in rows] == [meta, NearestCentroid().settings, LinearProbe().settings,
                                          FineTune(lp_ft=True).settings, TransductivePrototypes().settings,
                                          meta]  # fmt: skip
    assert "transductive" not in EpisodeArguments().baselines  # reads the query batch: asked for by name
    assert all(f"| {r.method} | {r.settings} |" in table for r in rows)
    tasks = tasks_from_builder(EpisodeBuilder(token_classes(), label_column="label", text_column=None),
                               class_split={"train": list(range(7)), "test": [7, 8, 9]})  # fmt: skip
    write_card(tmp_path, "tester/meta", ModelArguments(model_name_or_path=str(tmp_path)), ep, config(tmp_path), model,
               algorithm, tasks, rows, None, [])  # fmt: skip
    card = (tmp_path / "README.md").read_text()
    assert "| setting | how it adapts | split |" in card
    assert all(f"| {r.method} | {r.settings} | test |" in card for r in rows)


# -- 6: disk -------------------------------------------------------------------------------------------------------
def optimizer_state(folder: Path) -> bool:
    return (folder / "custom_checkpoint_0.pkl").exists()  # accelerate's file for the registered optimizer


def test_the_last_step_writes_the_model_only_unless_a_resumable_checkpoint_is_asked_for(tmp_path):
    train, _, collate = token_episodes()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path / "a", save_steps=2, max_steps=5), train, collate)
    trainer.train()
    out = tmp_path / "a" / "run"
    assert [p.name for p in trainer.checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    assert all(optimizer_state(p) for p in trainer.checkpoints())  # before the end: resumable
    assert (out / "model.safetensors").exists() and not optimizer_state(out)
    assert '"step": 5' in (out / "meta_trainer_state.json").read_text()  # the run's record survives
    with pytest.raises(FileNotFoundError, match="without the optimizer, scheduler and RNG state"):
        MetaTrainer(tiny_bert(), config(tmp_path / "a", resume_from_checkpoint=str(out), max_steps=6), train,
                    collate).train()  # fmt: skip

    asked = MetaTrainer(tiny_bert(), config(tmp_path / "b", save_final_checkpoint=True), train, collate)
    asked.train()
    (final,) = asked.checkpoints()
    assert final.name == "checkpoint-4" and optimizer_state(final)
    longer = MetaTrainer(tiny_bert(), config(tmp_path / "b", resume_from_checkpoint="last", max_steps=6), train,
                         collate)  # fmt: skip
    assert longer.train().step == 6


@pytest.mark.parametrize("keep", [False, True], ids=["default", "save_final_checkpoint"])
def test_early_stopping_keeps_the_best_model_and_the_run_record(tmp_path, keep):
    train, test, collate = token_episodes()
    # learning_rate 0: validation cannot improve, so patience 1 stops at the second validation (step 2)
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, learning_rate=0.0, eval_steps=1, eval_episodes=2,
                                              early_stopping_patience=1, save_final_checkpoint=keep, save_steps=1),
                          train, collate, eval_sampler=test)  # fmt: skip
    state = trainer.train()
    out = tmp_path / "run"
    assert state.step == 2 and state.best_step == 1
    assert (out / "best" / "model.safetensors").exists() and (out / "model.safetensors").exists()
    assert '"best_step": 1' in (out / "meta_trainer_state.json").read_text()
    assert [p.name for p in trainer.checkpoints()] == ["checkpoint-1", "checkpoint-2"][: 1 + keep]


def test_save_total_limit_defaults_to_two_in_both_trainers(tmp_path):
    train, _, collate = token_episodes()
    meta = MetaTrainer(tiny_bert(), config(tmp_path, save_steps=1, max_steps=5), train, collate)
    meta.train()
    assert meta.config.save_total_limit == 2
    assert [p.name for p in meta.checkpoints()] == ["checkpoint-3", "checkpoint-4"]

    args = FineTuningConfig(output_dir=str(tmp_path / "ft"), max_steps=4, save_strategy="steps", save_steps=1,
                            per_device_train_batch_size=8, report_to=[], use_cpu=True, disable_tqdm=True)  # fmt: skip
    assert args.save_total_limit == 2
    FineTuningTrainer(model=tiny_model("bert"), args=args, train_dataset=toy_dataset(16)).train()
    assert sorted(p.name for p in (tmp_path / "ft").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def test_a_time_budget_scores_the_slow_baselines_on_the_same_fewer_episodes(tmp_path, capsys):
    """slow_baseline_seconds: fine-tuning stops once its budget is spent; LP-FT and the meta-learned row for them
    use exactly the episodes it reached (a shared machine gets a smaller comparison, not a stalled one)."""
    _, test, collate = token_episodes()
    ep = EpisodeArguments(n_way=3, k_shot=2, q_query=3, baselines=["nearest-centroid", "fine-tuning", "lp-ft"],
                          slow_baseline_episodes=6, slow_baseline_seconds=1e-9)  # fmt: skip
    algorithm = build_algorithm("fomaml", inner_steps=1, inner_lr=0.3)
    model = tiny_bert()
    algorithm.setup(model)
    rows = score_against_baselines(model, algorithm, "fomaml (meta-learned)", tiny_bert(), test.batch(range(8)),
                                   collate, ep, tmp_path)  # fmt: skip
    assert [r.episodes for r in rows] == [
        8,
        8,
        1,
        1,
        1,
    ]  # meta, nearest centroid, FT (budget), LP-FT, meta on 1
    assert "fine-tuning adapted to 1 of 6 episodes" in capsys.readouterr().out
    assert rows[-1].per_episode == rows[0].per_episode[:1]


def test_meta_test_refuses_a_non_positive_time_budget():
    _, test, collate = token_episodes()
    with pytest.raises(ValueError, match="max_seconds=0"):
        meta_test(tiny_bert(), NearestCentroid(), test.batch(range(2)), collate, max_seconds=0)
