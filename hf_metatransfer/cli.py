"""``hf-metatransfer <recipe> [options]``: the recipes of ``recipes/`` as one command."""

from __future__ import annotations

import importlib
import sys

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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in RECIPES:
        raise SystemExit(f"Unknown recipe {name!r}.\n\n{usage()}")
    module = importlib.import_module(f"hf_metatransfer.recipes.{RECIPES[name][0]}")
    sys.argv = [f"hf-metatransfer {name}", *rest]  # so --help shows the command that was typed
    module.cli(rest)


if __name__ == "__main__":
    main()
