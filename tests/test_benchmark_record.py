"""A benchmark record keeps its result with its provenance: command, commit, versions, threads and load."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import it as a sibling, as when run from there
import record  # noqa: E402

from hf_metatransfer.provenance import provenance  # noqa: E402

PROVENANCE = {"command", "commit", "dirty", "versions", "threads", "cpu", "os_cpu_count", "loadavg"}


def test_write_record_keeps_the_result_and_adds_its_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the benchmarks are run from the repository root
    monkeypatch.setattr(sys, "argv", ["benchmarks/smoke.py", "--k", "5"])
    result = {"benchmark": "smoke", "episodes_per_s": 1234.5, "rows": {"a": [1, 2]}}
    path = record.write_record(tmp_path / "results" / "smoke_cpu.json", result)
    assert path == tmp_path / "results" / "smoke_cpu.json"

    saved = json.loads(path.read_text())
    assert {k: saved[k] for k in result} == result
    assert PROVENANCE <= saved.keys()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert saved["commit"] == head.stdout.strip()
    assert saved["command"] == f"{os.path.basename(sys.executable)} benchmarks/smoke.py --k 5"
    assert saved["versions"]["python"] and "torch" in saved["versions"]
    assert isinstance(saved["threads"], int) and len(saved["loadavg"]) == 3


def test_a_result_key_is_not_overwritten_by_a_provenance_key(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    target = tmp_path / "clash.json"
    with pytest.raises(ValueError, match="'commit'"):
        record.write_record(target, {"benchmark": "smoke", "commit": "not the commit"})
    assert not target.exists()

    # the same value is no clash: a benchmark may report the threads it ran with
    same = record.write_record(target, {"threads": provenance()["threads"]})
    assert json.loads(same.read_text())["threads"] == provenance()["threads"]
