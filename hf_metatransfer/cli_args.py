"""HfArgumentParser that also reads ``--config x.yaml``: the YAML gives defaults, flags on the command line win."""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def yaml_to_argv(data: dict[str, Any]) -> list[str]:
    """Command-line flags equivalent to a YAML mapping (lists as several values, dicts as JSON)."""
    argv: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, list | tuple):
            argv += [str(v) for v in value]
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) into instances of ``dataclass_types``.

    An unknown key in the YAML is an error that names the closest known option, so a misspelt strategy
    (``lpft``) is never silently ignored.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a path to a YAML file.")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        data = yaml.safe_load(path.read_text()) or {}
        known = sorted({f.name for t in dataclass_types for f in fields(t) if f.init})
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = "; ".join(
                f"{k!r}"
                + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                for k in unknown
            )
            raise SystemExit(
                f"Unknown strategy or option in {path}: {hints}. Run with --help for every option."
            )
        argv = yaml_to_argv(data) + argv
    return HfArgumentParser(dataclass_types).parse_args_into_dataclasses(args=argv)
