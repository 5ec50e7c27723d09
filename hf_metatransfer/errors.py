"""Errors of the command line, kept free of heavy imports so ``hf-metatransfer --help`` stays fast."""

from __future__ import annotations


class UsageError(SystemExit):
    """A refused command line: the message is already on stderr, the exit status is 2 (argparse's).

    The message stays in ``args`` so ``str(error)`` (and ``pytest.raises(match=...)``) sees it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 2
