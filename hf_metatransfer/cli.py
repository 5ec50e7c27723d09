"""``hf-metatransfer <recipe> [options]``: the recipes of ``recipes/`` as one command."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import NoReturn

from hf_metatransfer.errors import UsageError

RECIPES = {
    "quickstart": (
        "quickstart",
        "The main job: meta-train, meta-test against baselines, plot and card, offline.",
    ),
    "finetune": (
        "finetune",
        "Fine-tune a Hub checkpoint with LP-FT, layer-wise LR, unfreezing, surgical, re-init.",
    ),
    "meta-train": (
        "meta_train",
        "Meta-train (MAML, FOMAML, Reptile, ANIL, ProtoNets, Meta-SGD), then meta-test.",
    ),
    "meta-test": (
        "meta_test",
        "Meta-test a meta-learned model against the baselines on the same (saved) episodes.",
    ),
    "lecture": (
        "lecture",
        "The lecture's experiments: tiny-K meta-learning, scratch, surgical, self-pre-training.",
    ),
    "fewshot-translation": (
        "fewshot_translation",
        "Few-shot translation into held-out languages: zero-shot, in-context, LoRA, meta-learned LoRA.",
    ),
    "add-class": (
        "add_class",
        "Add or replace a class of a ProtoNets-adapted model from a few examples, without retraining.",
    ),
    "publish": (
        "publish",
        "Publish an output folder (model, card, config, results) to a Hub repo, with retries.",
    ),
}


def usage() -> str:
    lines = ["usage: hf-metatransfer <recipe> [--config x.yaml] [options]", "", "recipes:"]
    width = max(map(len, RECIPES))
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in RECIPES.items()]
    lines += [
        "",
        "`hf-metatransfer <recipe> --help` lists the options of a recipe; YAML keys are the same names.",
    ]
    return "\n".join(lines)


DEBUG_ENV = "HF_METATRANSFER_DEBUG"
DEBUG_HINT = f"(run with --debug, or {DEBUG_ENV}=1, for the traceback)"

#: What transformers says, as a plain OSError, of a model or revision it cannot find: not a folder, not on the
#: Hub, gated, or not in the cache while offline.
MODEL_NOT_FOUND = (
    "is not a local folder",
    "Can't load ",
    "does not appear to have",
    "is not a valid git identifier",
    "gated repo",
    "We couldn't connect to",
)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (printed as one message) rather than a bug (shown with its traceback).

    User errors: ValueError (our validation of options and data), FileNotFoundError, FileExistsError,
    NotADirectoryError, an ImportError that says what to ``pip install``, a failed push (PublishError), a Hub
    repo or revision that does not exist or is gated, a file not in the cache or offline mode
    (huggingface_hub's errors), and transformers' OSError for a model it cannot find. Anything else, KeyError
    included, is a bug.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from hf_metatransfer.hub.publish import PublishError

    user_errors = (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PublishError,
        RepositoryNotFoundError,
        GatedRepoError,
        RevisionNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )
    if isinstance(err, user_errors):
        return True
    if isinstance(err, ImportError):
        return "pip install" in str(err)
    return type(err) is OSError and any(phrase in str(err) for phrase in MODEL_NOT_FOUND)


def refuse(prog: str, message: str, *hints: str) -> NoReturn:
    """One error line (and hints) on stderr, exit status 2 as for argparse's usage errors."""
    print(f"{prog}: error: {message}", *hints, sep="\n", file=sys.stderr)
    raise UsageError(message)


def main(argv: list[str] | None = None) -> None:
    """Run a recipe. A user error prints one message and exits 2; ``--debug`` or ``HF_METATRANSFER_DEBUG=1``
    shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], [a for a in argv[1:] if a != "--debug"]
    debug = "--debug" in argv[1:] or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    if name not in RECIPES:
        match = difflib.get_close_matches(name, RECIPES, 1)
        refuse("hf-metatransfer", f"unknown recipe {name!r}" + (f" (did you mean {match[0]!r}?)" if match else "")
               + f": use one of {', '.join(RECIPES)}.", "", usage())  # fmt: skip
    prog = f"hf-metatransfer {name}"
    saved, sys.argv = sys.argv, [prog, *rest]  # so --help and usage errors show the command that was typed
    try:
        importlib.import_module(f"hf_metatransfer.recipes.{RECIPES[name][0]}").cli(rest)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        refuse(prog, str(err), DEBUG_HINT)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
