"""Publish an output folder (model or adapter, card, config, results.json) to a Hub repository.

    python recipes/publish.py --folder outputs/finetune_lpft --repo_id me/minilm-intents-lpft
    hf-metatransfer publish --folder outputs/finetune_lpft --repo_id me/minilm-intents-lpft --language en

The token comes from ``HF_TOKEN`` or ``hf auth login`` (a ``--token`` flag works too, but lands in the shell
history). The card is rendered for the repo it goes to, from the facts the run recorded (``card_data.json``), with
``--language`` and the other card options applied (into the folder, so the local copy matches the published one);
a card edited by hand keeps its text and gets only its metadata set. A push that keeps failing leaves the folder
as it was and exits with the reason; run the same command again.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from huggingface_hub import ModelCard

from hf_metatransfer.cli_args import parse_args
from hf_metatransfer.hub import (
    card_is_as_rendered,
    fine_tuned_card_from_results,
    load_card_data,
    push_folder,
    write_card,
)
from hf_metatransfer.hub.cards import CARD_DATA_NAME, CARD_NAME

logger = logging.getLogger("hf_metatransfer.publish")


@dataclass
class PublishArguments:
    folder: str = field(metadata={"help": "The output folder to publish (e.g. outputs/finetune_lpft)."})
    repo_id: str = field(
        metadata={"help": "Hub repository, 'user/name' or 'org/name'; created when missing."}
    )
    repo_type: str = field(default="model", metadata={"help": "'model' or 'dataset'."})
    path_in_repo: str | None = field(
        default=None, metadata={"help": "Subfolder of the repo, e.g. adapted/<task> for an adapted model."}
    )
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created from main)."})
    private: bool | None = field(
        default=None, metadata={"help": "Create the repo private (no effect if it exists)."}
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token; prefer HF_TOKEN or `hf auth login` (never written anywhere)."},
    )
    commit_message: str = field(default="Upload with hf-metatransfer", metadata={"help": "Commit message."})
    language: list[str] | None = field(
        default=None, metadata={"help": "Languages of the model (ISO 639), for the card."}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License of the model, for the card (default: the card's, apache-2.0)."},
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model, for the card (default: from results.json)."},
    )
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the training data, for the card."}
    )
    regenerate_card: bool = field(
        default=False,
        metadata={
            "help": "Render README.md again from card_data.json (or results.json) even when it was edited."
        },
    )
    max_retries: int = field(
        default=5, metadata={"help": "Retries of transient failures (5xx, broken connections)."}
    )


def ensure_card(args: PublishArguments) -> Path:
    """The card to push, for ``args.repo_id`` and ``args.language``.

    A card the package rendered (``card_data.json`` beside it, README unchanged since) is rendered again from its
    recorded facts for this repo, with the languages, licence, base model and datasets given here. A card edited by
    hand is pushed as it is, with only its metadata updated (said in the log). With no card, it is written from the
    finetune recipe's ``results.json``.
    """
    folder = Path(args.folder)
    card = folder / CARD_NAME
    overrides = {"model_id": args.repo_id, "language": args.language, "license": args.license,
                 "base_model": args.base_model, "datasets": args.datasets}  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if v is not None}
    recorded = load_card_data(folder)
    if recorded is not None and (args.regenerate_card or not card.is_file() or card_is_as_rendered(folder)):
        path = write_card(replace(recorded, **overrides), folder)
        logger.info("rendered %s for %s from %s", path, args.repo_id, CARD_DATA_NAME)
        return path
    if card.is_file() and not args.regenerate_card:
        return _update_metadata(card, overrides)
    results = folder / "results.json"
    if not results.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CARD_NAME} and no results.json to write one from: publish the output folder of a "
            "recipe (hf-metatransfer finetune writes both), or add a README.md."
        )
    data = fine_tuned_card_from_results(json.loads(results.read_text()), **overrides)
    path = write_card(data, folder)
    logger.info("wrote %s from %s", path, results)
    return path


def _update_metadata(card: Path, overrides: dict) -> Path:
    """A hand-written card keeps its text; the metadata given on the command line is set in its YAML header."""
    metadata = {"language": overrides.get("language"), "license": overrides.get("license"),
                "base_model": overrides.get("base_model"), "datasets": overrides.get("datasets")}  # fmt: skip
    metadata = {k: v for k, v in metadata.items() if v is not None}
    model_card = ModelCard.load(card)
    for key, value in metadata.items():
        setattr(model_card.data, key, value)
    model_card.save(card)
    logger.warning(
        "%s was edited by hand (or not written by hf-metatransfer): pushed with its own text, only its metadata "
        "set (%s). --regenerate_card renders it again from %s.", card, ", ".join(metadata) or "nothing", CARD_DATA_NAME,
    )  # fmt: skip
    return card


def main(args: PublishArguments) -> str:
    """Publish the folder; the URL of the commit."""
    logging.basicConfig(level=logging.INFO)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: give --folder the output folder of a recipe.")
    if args.repo_type == "model" and not any(
        (folder / f).is_file() for f in ("config.json", "adapter_config.json")
    ):
        raise FileNotFoundError(
            f"{folder} has no config.json or adapter_config.json: it does not look like a saved model (give the "
            "output folder of a recipe, or --repo_type dataset for data)."
        )
    ensure_card(args)
    commit = push_folder(
        folder,
        args.repo_id,
        repo_type=args.repo_type,
        path_in_repo=args.path_in_repo,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        max_retries=args.max_retries,
    )  # a PublishError says what failed and that the folder is intact (the CLI prints it, exit 2)
    if commit is None:  # not the main process
        return ""
    print(f"Published {folder} to {commit.commit_url}")
    return commit.commit_url


def cli(argv: list[str] | None = None) -> str:
    return main(*parse_args((PublishArguments,), argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
