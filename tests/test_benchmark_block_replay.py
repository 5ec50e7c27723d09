"""The block-replay benchmark on the packaged MiniLM: replayed and plain training predict the same, and the record
holds the medians and ratios it names."""

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling benchmarks, as when run from there
spec = importlib.util.spec_from_file_location("block_replay", BENCHMARKS / "block_replay.py")
block_replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(block_replay)


def test_replayed_training_predicts_what_training_every_block_does(tmp_path):
    record = tmp_path / "block_replay.json"
    result = block_replay.main(["--encoder", "embedded", "--blocks", "2", "--episodes", "1", "--language", "de", "--k-shot", "3", "--q-query", "2", "--no-whole-body",
                                "--record", str(record)])  # fmt: skip
    assert result["n_way"] == 12 and result["max_abs_logit_difference"]["top 2"] < 1e-4
    assert set(result["median_seconds"]) == {"top 2, replay", "top 2, every block run", "top 2, one batch"}
    median = result["median_seconds"]
    ratio = median["top 2, every block run"] / median["top 2, replay"]
    assert abs(result["replay_speedup_top_2"] - ratio) < 0.02 * ratio  # medians are rounded in the record
    ratio = median["top 2, one batch"] / median["top 2, replay"]
    assert abs(result["micro_batch_speedup_top_2"] - ratio) < 0.02 * ratio
    saved = json.loads(record.read_text())
    assert saved["benchmark"] == "block_replay" and "commit" in saved and "versions" in saved
