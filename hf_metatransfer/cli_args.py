"""HfArgumentParser that also reads ``--config x.yaml``: the YAML gives defaults, flags on the command line win."""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser

from hf_metatransfer.errors import UsageError

HELP_HINT = "Run with --help for every option."
#: Options that say where a run writes, pushes or reports, not what it computes: a reproducing config omits them.
DESTINATIONS = frozenset(
    {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
     "hub_private_repo", "hub_strategy", "report_to", "logging_dir", "run_name", "disable_tqdm"}
)  # fmt: skip
#: What a run ran on and its seed: recorded even at their defaults, which can change between releases.
ALWAYS_RECORDED = frozenset({"model_name_or_path", "dataset_name", "languages", "algorithm", "seed"})


class ArgumentParser(HfArgumentParser):
    """No abbreviations (``--inner_step`` is not ``--inner_steps``), and errors that keep their message and show
    a one-line usage (the full one lists every option: ``--help``)."""

    def __init__(self, dataclass_types: tuple[type, ...]) -> None:
        super().__init__(dataclass_types, allow_abbrev=False)

    def error(self, message: str) -> NoReturn:
        print(
            f"usage: {self.prog} [--config x.yaml] [--option value ...]  (--help lists the options)",
            f"{self.prog}: error: {message}",
            sep="\n",
            file=sys.stderr,
        )
        raise UsageError(message)

    def options(self) -> list[str]:
        return sorted(
            {o for a in self._actions for o in a.option_strings if o.startswith("--")} | {"--config"}
        )


def did_you_mean(name: str, known: list[str]) -> str:
    """``'name' (did you mean 'x'?)``, or just ``'name'`` when nothing known is close."""
    match = difflib.get_close_matches(name, known, 1)
    return f"{name!r}" + (f" (did you mean {match[0]!r}?)" if match else "")


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


def read_config(parser: ArgumentParser, path: Path, known: list[str]) -> dict[str, Any]:
    """The YAML mapping of ``path``; anything else (no file, bad syntax, a list, an unknown key) is a usage error."""
    if not path.is_file():
        reason = "is a folder" if path.is_dir() else "does not exist"
        parser.error(
            f"--config {path} {reason}: give the path of a YAML file of options (`n_way: 5`, one a line)."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "cannot be parsed"
        parser.error(f"--config {path} is not valid YAML ({problem}{where}): fix the syntax; each line is "
                     "`option: value`.")  # fmt: skip
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"--config {path} holds a {type(data).__name__}, not a mapping of options: write one "
                     "`option: value` a line (`n_way: 5`), not a list or a bare value.")  # fmt: skip
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        hints = "; ".join(did_you_mean(k, known) for k in unknown)
        parser.error(f"Unknown strategy or option in {path}: {hints}. {HELP_HINT}")
    return data


def parse_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) into instances of ``dataclass_types``.

    An unknown option, on the command line or as a YAML key, is an error that names the closest known one, so a
    misspelt strategy (``lpft``) is never silently ignored; usage errors exit with status 2 (:class:`UsageError`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(dataclass_types)
    config = next((a for a in argv if a == "--config" or a.startswith("--config=")), None)
    if config is not None:
        i = argv.index(config)
        if "=" in config:
            path, span = config.partition("=")[2], 1
        else:
            path, span = (argv[i + 1] if i + 1 < len(argv) else ""), 2
        if not path or path.startswith("--"):
            parser.error("--config needs a path to a YAML file: --config x.yaml.")
        del argv[i : i + span]
        known = sorted({f.name for t in dataclass_types for f in fields(t) if f.init})
        argv = yaml_to_argv(read_config(parser, Path(path), known)) + argv
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    flags = [a.partition("=")[0] for a in rest if a.startswith("-") and not a[1:2].isdigit()]
    if flags:
        hints = "; ".join(did_you_mean(f, parser.options()) for f in flags)
        parser.error(f"Unknown option{'s' * (len(flags) > 1)} {hints}. {HELP_HINT}")
    if rest:
        hint = f" (did you mean '--{rest[0]}'?)" if f"--{rest[0]}" in parser.options() else ""
        parser.error(f"Unexpected argument {rest[0]!r}{hint}: every value follows its --option. {HELP_HINT}")
    return tuple(parsed)


def arguments_as_run(*arguments: Any) -> dict[str, Any]:
    """The options of a run (the dataclasses :func:`parse_args` gave) as the mapping ``--config`` reads back.

    What the run ran on (model, data, languages, algorithm, seed) and every value changed from its default, so that
    the same recipe with ``--config`` and an ``--output_dir`` of one's own repeats it; destinations and tokens are
    left out.
    """
    recorded: dict[str, Any] = {}
    for instance in arguments:
        for f in fields(instance):
            if not f.init or f.name in DESTINATIONS or f.name.endswith("token"):
                continue
            value = _plain(getattr(instance, f.name))
            if f.name in ALWAYS_RECORDED or value != _default(f):
                recorded[f.name] = value
    return recorded


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return _plain(f.default)
    return _plain(f.default_factory()) if f.default_factory is not MISSING else MISSING


def _plain(value: Any) -> Any:
    """Enum members as their values, tuples as lists: what YAML writes and the parser reads back."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)
