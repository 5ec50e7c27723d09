"""Provenance: the commit of this package's own checkout (never another repository's), secrets kept out."""

import subprocess
import sys

import pytest

from hf_metatransfer import provenance


def test_package_versions_gives_none_for_an_absent_package():
    found = provenance.package_versions(["torch", "no-such-distribution-xyz"])
    assert found["python"] and found["torch"] and found["no-such-distribution-xyz"] is None


def test_the_commit_is_the_source_checkouts_and_none_elsewhere(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=provenance.SOURCE_ROOT)  # fmt: skip
    assert provenance.git_commit()["commit"] == head.stdout.strip()
    assert provenance.git_commit(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    # an installed copy inside some other repository (a venv in a project folder) must not report that repository
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)
    assert provenance.git_commit(site) == {"commit": None, "dirty": None}


def test_the_command_line_keeps_no_token(monkeypatch):
    argv = [
        "/x/bin/hf-metatransfer",
        "publish",
        "--hub_token",
        "hf_secret",
        "--token=hf_other",
        "--repo",
        "a/b",
    ]
    line = provenance.command_line(argv)
    assert "hf_secret" not in line and "hf_other" not in line
    assert line == "hf-metatransfer publish --hub_token <redacted> --token=<redacted> --repo a/b"
    assert provenance.command_line(["bench/x.py", "--k", "5"]).split()[1:] == ["bench/x.py", "--k", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    assert "hf_secret" not in str(provenance.provenance())


def test_a_result_key_is_kept_unless_provenance_disagrees():
    threads = provenance.provenance()["threads"]
    assert provenance.with_provenance({"threads": threads, "x": 1})["x"] == 1
    with pytest.raises(ValueError, match="'threads'"):
        provenance.with_provenance({"threads": threads + 1})
