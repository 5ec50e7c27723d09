"""Add (or replace) a class of a prototype-headed model from a few examples, without retraining.

    python recipes/add_class.py --model_name_or_path outputs/adapted --label weather --examples weather.txt \\
        --output_dir outputs/adapted-weather
    hf-metatransfer add-class --model_name_or_path outputs/adapted --label weather --examples weather.jsonl \\
        --output_dir outputs/adapted-weather --push_to_hub --hub_model_id me/intents --hub_revision add-weather

The model is one ``adapted_model`` wrote for ProtoNets (a ``MeanPoolBertForSequenceClassification`` whose head
holds the class prototypes); the new class's prototype is the mean embedding of the examples, the other classes are
left as they were. The output folder is the model, its tokenizer and its card, with the change recorded in the
card; ``--push_to_hub`` pushes it to a branch (``--hub_revision``), so ``main`` stays as it was.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.conventions import CONVENTIONS_FILE, conventions_for
from hf_metatransfer.hub import push_folder
from hf_metatransfer.hub.cards import CARD_NAME
from hf_metatransfer.meta.prototypes import FIX, add_class, projection_from_state
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification

logger = logging.getLogger("hf_metatransfer.add_class")

CARD_SECTION = "## Classes changed without retraining"


@dataclass
class AddClassArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Folder (or Hub id) of a ProtoNets-adapted model: its head holds the class prototypes."
        }
    )
    label: str = field(metadata={"help": "Name of the class to add (or, with --replace, to recompute)."})
    examples: str = field(
        metadata={"help": "Its examples: a .txt file (one a line) or a .jsonl file (a 'text' field a line)."}
    )
    output_dir: str = field(metadata={"help": "Where to save the model, its tokenizer and its card."})
    replace: bool = field(
        default=False,
        metadata={"help": "Recompute the prototype of an existing class instead of adding one."},
    )
    projection: str | None = field(
        default=None,
        metadata={
            "help": "The meta_algorithm.safetensors of a ProtoNets initialisation with a learned projection "
            "(projection_dim > 0), which the head folds in."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Examples embedded at once."})
    max_length: int = field(default=128, metadata={"help": "Tokens an example is truncated to."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the output folder to --hub_model_id."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repository to push to, 'user/name'."}
    )
    hub_revision: str | None = field(
        default=None,
        metadata={
            "help": "Branch to push to (created from main); default add-class-<label>. 'main' overwrites."
        },
    )
    hub_token: str | None = field(
        default=None,
        metadata={"help": "Hub token; prefer HF_TOKEN or `hf auth login` (never written anywhere)."},
    )


def read_examples(path: str | Path) -> list[str]:
    """The texts of a .txt file (one a line, blank lines skipped) or a .jsonl file (its ``text`` fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--examples {path}: no such file.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".txt":
        return [line.strip() for line in lines]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in lines]
        if not all(isinstance(row, dict) and isinstance(row.get("text"), str) for row in rows):
            raise ValueError(f"{path}: every line must be a JSON object with a 'text' string.")
        return [row["text"] for row in rows]
    raise ValueError(
        f"--examples {path}: use a .txt file (one example a line) or a .jsonl file ('text' field)."
    )


def revision_for(args: AddClassArguments) -> str:
    return args.hub_revision or "add-class-" + (
        re.sub(r"[^A-Za-z0-9._-]+", "-", args.label).strip("-") or "new"
    )


def card_text(card: str | None, label: str, n: int, replaced: bool, model: str) -> str:
    """The card with one more line in its section of class changes (the section is added when missing)."""
    change = "replaced" if replaced else "added"
    line = f"- {change} `{label}`: its prototype is the mean embedding of {n} example{'s' if n != 1 else ''}"
    if card is None:
        card = f"# {Path(model).name}\n\nA prototype-headed classifier adapted from {model}.\n"
    if CARD_SECTION not in card:
        return (
            f"{card.rstrip()}\n\n{CARD_SECTION}\n\nClasses added without retraining by `hf-metatransfer add-class`: "
            "each one is one more row of the head, the other classes' scores are unchanged.\n\n"
            f"{line}\n"
        )
    start = card.index(CARD_SECTION) + len(CARD_SECTION)
    end = card.find("\n## ", start)
    end = len(card) if end < 0 else end
    rest = card[end:].lstrip("\n")
    return f"{card[:end].rstrip()}\n{line}\n" + (f"\n{rest}" if rest else "")


def main(args: AddClassArguments) -> Path:
    """Add the class and save the output folder (then push it, if asked); the folder."""
    logging.basicConfig(level=logging.INFO)
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id, the repository to push to.")
    examples = read_examples(args.examples)
    architectures = AutoConfig.from_pretrained(args.model_name_or_path).architectures or []
    if MeanPoolBertForSequenceClassification.__name__ not in architectures:
        raise ValueError(f"{args.model_name_or_path} is a {', '.join(architectures) or 'model'} not saved with a head "
                         f"on the mean-pooled embedding: {FIX}.")  # fmt: skip
    model = MeanPoolBertForSequenceClassification.from_pretrained(args.model_name_or_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    conventions = conventions_for(args.model_name_or_path)
    if conventions.source:  # the prefix the examples are embedded with, and that the saved model keeps
        conventions.attach_to(model)
    projection = projection_from_state(load_file(args.projection)) if args.projection else None
    add_class(model, tokenizer, args.label, examples, replace=args.replace, projection=projection,
              batch_size=args.batch_size, max_length=args.max_length)  # fmt: skip

    out = Path(args.output_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    source = Path(args.model_name_or_path)
    if (source / CONVENTIONS_FILE).is_file():
        shutil.copyfile(source / CONVENTIONS_FILE, out / CONVENTIONS_FILE)
    old_card = source / CARD_NAME
    card = old_card.read_text(encoding="utf-8") if old_card.is_file() else None
    (out / CARD_NAME).write_text(
        card_text(card, args.label, len(examples), args.replace, args.model_name_or_path), encoding="utf-8"
    )
    verb = "Replaced" if args.replace else "Added"
    print(
        f"{verb} class {args.label!r} from {len(examples)} examples: {model.config.num_labels} classes, in {out}"
    )
    if args.push_to_hub:
        commit = push_folder(out, args.hub_model_id, token=args.hub_token, revision=revision_for(args),
                             commit_message=f"{verb} class {args.label} without retraining")  # fmt: skip
        if commit is not None:
            print(f"Pushed to {args.hub_model_id}@{revision_for(args)}: {commit.commit_url}")
    return out


def cli(argv: list[str] | None = None) -> Path:
    return main(*parse_args((AddClassArguments,), argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
