"""How a result was made, kept beside it: a figure means little without its command, code, versions and machine.

Every ``results.json`` the recipes write (:func:`write_results`) and every benchmark record carries :func:`provenance`: the command as run
(secrets redacted), the commit of this package's source tree when it is a git checkout (and whether tracked files
differed from it), the package versions, the torch threads, the CPU and the machine's load average (wall-clock
times on shared cores mean little without it).
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

DEFAULT_PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "numpy",
    "scikit-learn",
    "peft",
    "accelerate",
    "hf-metatransfer",
)
#: command-line options whose value is a secret: never written into a record
SECRET_OPTIONS = ("--hub_token", "--hub-token", "--token")
REDACTED = "<redacted>"
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: str | Path = SOURCE_ROOT) -> dict[str, Any]:
    """The commit ``root`` (the folder holding this package) has checked out, and whether tracked files differ from
    it; ``None`` for both when ``root`` is not the top of a git checkout (an installed wheel, even one inside some
    other repository)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
            )
        except OSError:  # no git on the machine
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return {"commit": None, "dirty": None}
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Python's version and each installed distribution's (``None`` when absent): results move between releases."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def redacted(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of :data:`SECRET_OPTIONS` replaced (``--hub_token X`` and ``--hub_token=X``)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] in SECRET_OPTIONS:
            out.append(REDACTED)
        elif arg.split("=", 1)[0] in SECRET_OPTIONS and "=" in arg:
            out.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        else:
            out.append(arg)
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it again: ``python script.py ...`` for a script, the console script's name
    (``hf-metatransfer lecture ...``) for an entry point, secrets redacted."""
    argv = list(sys.argv if argv is None else argv)
    head = (
        [os.path.basename(sys.executable), argv[0]]
        if argv[0].endswith(".py")
        else [os.path.basename(argv[0])]
    )
    return " ".join([*head, *redacted(argv[1:])])


#: the commit when this module was first imported, at the start of the run: the code that ran, whatever is
#: committed while a long run goes on
AT_START = git_commit()


def provenance(names: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """How and where a result was made; call it at the end of a run, so the threads and load are the run's (the
    1, 5 and 15-minute load average; a run that reads it at its start too keeps that as ``loadavg_start``)."""
    return {
        "command": command_line(),
        **AT_START,
        "versions": package_versions(names),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "os_cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def with_provenance(result: dict[str, Any], names: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """``result`` with its :func:`provenance` added. A result key that provenance also sets must hold the same
    value (a run may report its threads): a different one raises ``ValueError`` rather than being overwritten."""
    facts = provenance(names)
    clashes = sorted(k for k in result.keys() & facts.keys() if result[k] != facts[k])
    if clashes:
        raise ValueError(
            "result keys also set by the provenance, with other values: "
            + ", ".join(f"{k!r} ({result[k]!r} vs {facts[k]!r})" for k in clashes)
        )
    return {**result, **facts}


def write_results(
    output_dir: str | Path, results: dict[str, Any], names: Sequence[str] = DEFAULT_PACKAGES
) -> Path:
    """``results.json`` in ``output_dir`` (created): a run's machine-readable record, with its provenance."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(with_provenance(results, names), indent=2))
    return path
