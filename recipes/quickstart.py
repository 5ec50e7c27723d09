"""``hf-metatransfer quickstart``: meta-train, meta-test against the baselines, plot, card, on an offline default.

    hf-metatransfer quickstart                          # about 4 minutes on 2 idle CPU cores, no network
    hf-metatransfer quickstart --push_to_hub --hub_model_id you/minilm-protonets-intents

It is the meta-train recipe with ``configs/quickstart.yaml`` (held-out intents in held-out languages); any of that
recipe's flags overrides the config.
"""

from __future__ import annotations

import sys
from importlib.resources import files

from hf_metatransfer.recipes import meta_train

CONFIG = files("hf_metatransfer.recipes") / "configs" / "quickstart.yaml"


def cli(argv: list[str] | None = None) -> dict:
    return meta_train.cli(["--config", str(CONFIG), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    cli()
