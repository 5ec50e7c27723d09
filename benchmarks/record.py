"""The provenance of a benchmark result, kept beside it in one JSON record.

A figure in the README means little without how it was made: the command as run, the commit (and whether the tree
had uncommitted changes), the package versions, the torch threads, the CPU and the machine's load average (the
benchmarks run on shared cores, where other jobs slow wall-clock times). ``write_record`` writes a result with all
of these, so that every figure can be backed by a file in ``benchmarks/results/``::

    python benchmarks/episodes.py --record benchmarks/results/episodes_cpu.json

The scripts import it as ``from record import write_record``: a script run as ``python benchmarks/X.py`` has its
folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

DEFAULT_PACKAGES = ("torch", "transformers", "datasets", "numpy", "scikit-learn", "peft", "hf-metatransfer")


def git_commit() -> dict[str, Any]:
    """The commit checked out and whether tracked files differ from it: a dirty tree's result has no exact commit."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Python's version and each installed distribution's (``None`` when absent): timings move between releases."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


#: the commit when this module was imported, at the start of the run: the code that ran, whatever is committed
#: while a long benchmark runs
AT_START = git_commit()


def provenance(names: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """How and where a result was made; call it at the end of a run, so the threads and load are the run's.

    The load average is the 1, 5 and 15-minute one at the end; a benchmark that reads it at the start too keeps
    that as ``loadavg_start`` in its result.
    """
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        **AT_START,
        "versions": package_versions(names),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "os_cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_record(path: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` with its :func:`provenance` to ``path`` as indented JSON (parent folders made); the path.

    A result key that provenance also sets must hold the same value (a benchmark may report its threads): a
    different one raises ``ValueError`` rather than being overwritten.
    """
    facts = provenance()
    clashes = sorted(k for k in result.keys() & facts.keys() if result[k] != facts[k])
    if clashes:
        raise ValueError(
            "result keys also set by the provenance, with other values: "
            + ", ".join(f"{k!r} ({result[k]!r} vs {facts[k]!r})" for k in clashes)
        )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({**result, **facts}, indent=1) + "\n")
    return target
