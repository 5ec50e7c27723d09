"""No-model translation baselines and the verdict "translates": beats copying the source and a shuffled reference,
paired over the same tasks with a Student-t interval."""

from __future__ import annotations

import random
import statistics

import pytest
import sacrebleu
from scipy import stats as sp

from hf_metatransfer.translation import (
    BASELINES,
    CopySource,
    ShuffledReference,
    TaskTexts,
    TranslationResult,
    evaluate_translation,
    translation_verdicts,
)
from hf_metatransfer.translation.baselines import derangement

SOURCES = ["Save the changes", "Delete this user", "Add another item", "Change the password", "Log out now",
           "View on site", "Select all items", "Clear the filters", "Show the history"]  # fmt: skip
GERMAN = ["Änderungen speichern", "Diesen Benutzer löschen", "Weiteres Element hinzufügen", "Passwort ändern",
          "Jetzt abmelden", "Auf der Website anzeigen", "Alle Elemente auswählen", "Filter zurücksetzen",
          "Verlauf anzeigen"]  # fmt: skip


def tasks(n_tasks: int = 4, q: int = 6) -> list[TaskTexts]:
    """Tasks of q queries each, a different slice of the sentences a task."""
    out = []
    for i in range(n_tasks):
        idx = [(i + j) % len(SOURCES) for j in range(q)]
        out.append(TaskTexts("en", "de", [], [], [SOURCES[j] for j in idx], [GERMAN[j] for j in idx]))
    return out


class Copying:
    """A 'model' that copies its input: the failure mode the copy baseline exposes."""

    name = "copying-model"

    def translations(self, model, batcher, task, **generate):
        return [s.strip() for s in task.query_sources]


class Oracle:
    name = "oracle"

    def translations(self, model, batcher, task, **generate):
        return list(task.query_targets)


def score(methods) -> dict[str, TranslationResult]:
    return {m.name: evaluate_translation(None, m, tasks(), None, progress=False) for m in methods}


def test_copy_source_gives_back_the_sources_and_is_scored_as_sacrebleu_scores_them():
    task = tasks()[0]
    assert CopySource().translations(None, None, task) == task.query_sources
    result = evaluate_translation(None, CopySource(), [task], None, progress=False)
    expected = sacrebleu.corpus_chrf(task.query_sources, [task.query_targets]).score
    assert result.chrf == pytest.approx(expected, abs=1e-6) and result.tasks == 1


def test_shuffled_reference_is_a_seeded_derangement_within_the_task():
    task = tasks(q=9)[0]
    out = ShuffledReference(seed=3).translations(None, None, task)
    order = [task.query_targets.index(t) for t in out]  # the targets are distinct here
    assert sorted(order) == list(range(9)) and all(i != j for i, j in enumerate(order))
    assert ShuffledReference(seed=3).translations(None, None, task) == out  # seeded
    assert any(ShuffledReference(seed=s).translations(None, None, task) != out for s in range(4, 10))
    # seeded by the task itself: the same answer whatever ran before it
    ShuffledReference(seed=3).translations(None, None, tasks(q=9)[1])
    assert ShuffledReference(seed=3).translations(None, None, task) == out


def test_derangement_moves_every_index_and_refuses_a_single_query():
    rng = random.Random(0)
    assert derangement(2, rng) == [1, 0]
    counts = [0] * 4
    for _ in range(2000):
        order = derangement(4, rng)
        assert all(i != j for i, j in enumerate(order))
        counts[order[0]] += 1
    assert counts[0] == 0 and min(counts[1:]) > 550  # index 0 goes to 1, 2 or 3 equally (667 each)
    with pytest.raises(ValueError, match="at least 2 queries"):
        ShuffledReference().translations(None, None, tasks(q=1)[0])


def test_a_model_that_copies_is_not_translating_and_the_references_are():
    results = score([CopySource(), ShuffledReference(), Copying(), Oracle()])
    verdicts = translation_verdicts(results)
    assert set(verdicts) == {"copying-model", "oracle"}
    assert not verdicts["copying-model"].translates
    assert verdicts["copying-model"].differences["copy-source"]["chrf"].mean == pytest.approx(0.0)
    assert verdicts["oracle"].translates
    record = verdicts["oracle"].as_dict()
    assert record["translates"] is True and set(record["minus"]) == set(BASELINES)


def test_the_verdict_is_the_paired_student_t_interval_of_the_per_task_differences():
    results = score([CopySource(), ShuffledReference(), Oracle()])
    verdict = translation_verdicts(results)["oracle"]
    for baseline in BASELINES:
        diffs = [
            o["chrf"] - b["chrf"] for o, b in zip(results["oracle"].per_task, results[baseline].per_task)
        ]
        half = sp.t.ppf(0.975, len(diffs) - 1) * sp.sem(diffs)
        got = verdict.differences[baseline]["chrf"]
        assert (got.mean, got.half_width, got.n) == pytest.approx((statistics.fmean(diffs), half, 4))


def result(name: str, chrf: list[float]) -> TranslationResult:
    rows = [{"source_lang": "en", "target_lang": lang, "chrf": c, "bleu": c / 2, "examples": [(f"s{i}", "p", "r")]}
            for i, (lang, c) in enumerate(zip(["de", "fr", "es", "pl"], chrf))]  # fmt: skip
    return TranslationResult(name, statistics.fmean(chrf), 0.0, 0.0, 0.0, 0.0, len(rows), rows)


def test_pairing_decides_not_the_means():
    copy = result("copy", [20.0, 40.0, 30.0, 50.0])
    shuffled = result("shuffled", [5.0, 6.0, 7.0, 8.0])
    base = {"copy-source": copy, "shuffled-reference": shuffled}
    # one point above copying on every task: the unpaired intervals overlap, the paired one is above 0
    steady = translation_verdicts({**base, "steady": result("steady", [21.0, 41.5, 31.0, 51.2])})["steady"]
    assert steady.translates
    # a higher mean, won on one task only: the paired interval holds 0
    lucky = translation_verdicts({**base, "lucky": result("lucky", [19.0, 39.0, 29.0, 65.0])})["lucky"]
    assert lucky.differences["copy-source"]["chrf"].mean > 0 and not lucky.translates
    # below the shuffled reference on the verdict's metric: not translating either
    assert not translation_verdicts({**base, "low": result("low", [4.0, 50.0, 40.0, 60.0])})["low"].translates


def test_verdicts_refuse_unmatched_tasks_and_missing_baselines():
    results = score([CopySource(), ShuffledReference()])
    other = evaluate_translation(None, Oracle(), tasks(n_tasks=3), None, progress=False)
    with pytest.raises(ValueError, match="different tasks"):
        translation_verdicts({**results, "oracle": other})
    with pytest.raises(ValueError, match="missing"):
        translation_verdicts({"copy-source": results["copy-source"]})
    with pytest.raises(ValueError, match="metric"):
        translation_verdicts(results, metric="ter")
