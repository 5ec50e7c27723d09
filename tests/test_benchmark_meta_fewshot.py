"""The meta_fewshot benchmark's verdicts: margins, paired intervals and booleans follow from the per-episode scores."""

import importlib.util
import math
from pathlib import Path

import pytest

from hf_metatransfer.meta import MetaTestResult, confidence_interval

spec = importlib.util.spec_from_file_location(
    "meta_fewshot", Path(__file__).resolve().parents[1] / "benchmarks" / "meta_fewshot.py"
)
meta_fewshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(meta_fewshot)


def result(name, per_episode, seconds):
    mean, half = confidence_interval(per_episode)
    return MetaTestResult(name, mean, half, seconds, len(per_episode), per_episode)


def test_targets_pick_the_best_meta_learner_and_pair_it_on_the_shared_episodes():
    good = [0.9, 0.8, 1.0, 0.9, 0.7, 0.9]
    rows = {
        "a (meta-learned)": result("a (meta-learned)", good, 0.5),
        "b (meta-learned)": result("b (meta-learned)", [0.5] * 6, 0.1),
        "nearest-centroid": result("nearest-centroid", [0.8, 0.8, 0.9, 0.8, 0.7, 0.8], 0.5),
        "setfit": result("setfit", [0.9, 0.6], 20.0),
        "lp-ft": result("lp-ft", [0.85, 0.8], 30.0),
    }
    rows["a (meta-learned) @subset"] = meta_fewshot.subset_of(rows["a (meta-learned)"], 2)
    out = meta_fewshot.targets(rows, ["a (meta-learned)", "b (meta-learned)"])
    assert out["best_meta"] == "a (meta-learned)"
    diffs = [0.1, 0.0, 0.1, 0.1, 0.0, 0.1]
    half = 2.5705818 * math.sqrt(sum((d - 0.4 / 6) ** 2 for d in diffs) / 5 / 6)
    assert out["paired_vs_nearest_centroid_pts"] == [round(100 * 0.4 / 6, 2), round(100 * half, 2)]
    assert out["margin_vs_nearest_centroid_pts"] == pytest.approx(100 * 0.4 / 6, abs=0.01)
    assert out["beats_nearest_centroid_by_3pts"] is True
    assert out["margin_vs_setfit_pts"] == pytest.approx(10.0) and out["beats_setfit_by_3pts"] is True
    assert out["speedup_vs_setfit"] == 40.0 and out["adapts_10x_faster_than_setfit"] is True
    assert out["margin_vs_lp_ft_pts"] == pytest.approx(2.5) and out["not_below_lp_ft"] is True
    assert "not_below_fine_tuning" not in out  # not run: no verdict


def test_pairing_episodes_that_differ_is_refused():
    with pytest.raises(ValueError, match="different episodes"):
        meta_fewshot.paired_points(result("a", [1.0, 0.5], 1.0), result("b", [1.0], 1.0))
