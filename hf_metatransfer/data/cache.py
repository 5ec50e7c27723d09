"""Datasets built once from installed packages and kept on disk, written so a crash never leaves a half cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import datasets


def save_atomically(dataset: datasets.Dataset, target: Path) -> datasets.Dataset:
    """Save ``dataset`` to ``target`` through a temporary folder and a rename, then load it back from there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        dataset.save_to_disk(str(tmp))
        if target.exists() and not (target / "state.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # an incomplete cache left by a crash
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "state.json").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))
