"""Keeping Hub tokens out of everything written: checkpoints, cards, logs and error messages.

``Trainer`` pickles its ``TrainingArguments`` into ``training_args.bin`` at every save and push, ``hub_token``
included, and ``push_to_hub`` uploads that file. :class:`HubToken` is a ``str`` that sends itself over HTTP like
any other but pickles as ``None``, so the arguments can hold it without it ever reaching a file.
"""

from __future__ import annotations

from typing import Any

REDACTED = "<hub token>"


class HubToken(str):
    """A token that pickles as ``None`` and shows as ``<hub token>``; ``str()``, f-strings and HTTP see the value.

    Copies (``copy``/``deepcopy``, used by ``dataclasses.asdict``) keep the token, so a run that copies its
    arguments can still push.
    """

    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> tuple[type[None], tuple[()]]:
        return (type(None), ())

    def __repr__(self) -> str:
        return REDACTED

    def __copy__(self) -> HubToken:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HubToken:
        return self


def protect(token: str | bool | None) -> str | bool | None:
    """``token`` as a :class:`HubToken` when it is a string (``True``/``False``/``None`` pass through)."""
    return HubToken(token) if isinstance(token, str) and token else token


def scrub(text: str, *tokens: str | bool | None) -> str:
    """``text`` with every occurrence of the given tokens replaced by ``<hub token>``."""
    for token in tokens:
        if isinstance(token, str) and token:
            text = text.replace(str(token), REDACTED)
    return text
