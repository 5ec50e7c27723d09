"""Bad input and wrong use: each case asserts that the message names the problem and the fix, and that nothing
was written or changed on refusal (``unchanged``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (missing folders count as empty) with a hash of its bytes."""
    files = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).exists() else []:
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@contextmanager
def unchanged(*folders: Path) -> Iterator[None]:
    """The block must leave ``folders`` exactly as they were (no file added, removed or modified)."""
    before = snapshot(*folders)
    yield
    assert snapshot(*folders) == before, "a refused call wrote or changed files"


@pytest.fixture
def refused():
    """``refused(error_type, *phrases, folders=...)``: a ``pytest.raises`` whose message must contain every phrase
    (the problem and the fix) and that leaves ``folders`` untouched."""

    @contextmanager
    def check(error: type[BaseException], *phrases: str, folders: tuple[Path, ...] = ()) -> Iterator[None]:
        with unchanged(*folders), pytest.raises(error) as raised:
            yield
        message = str(raised.value)
        for phrase in phrases:
            assert phrase in message, f"{phrase!r} not in the message: {message}"

    return check
