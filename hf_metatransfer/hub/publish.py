"""Pushing to the Hub: output folders, adapted models and evaluation episodes, retried, from the main process only.

Layout of a meta-learning run on the Hub (the cards and recipes follow it):

- ``<user>/<name>`` (model repo): the meta-learned initialisation at the root, as an ordinary transformers
  checkpoint (config, weights, tokenizer) with its card (``README.md`` and figure) and ``results.json``;
  ``from_pretrained("<user>/<name>")`` loads it.
- ``<user>/<name>/adapted/<task>/``: a model (or a PEFT adapter whose base is the initialisation) adapted to one
  task, pushed by :func:`push_adapted`; ``from_pretrained(repo, subfolder="adapted/<task>")`` or
  ``PeftModel.from_pretrained(base, repo, subfolder="adapted/<task>")`` loads it.
- ``<user>/<name>-episodes`` (dataset repo): the evaluation episodes, pushed by :func:`push_episodes` and named
  in the card's ``datasets`` metadata, so a published number can be re-scored on the same episodes.

Why one repository with subfolders: one card shows the initialisation and every adaptation with its results;
each adaptation is committed on top of the initialisation it came from, so the commit history ties them; and
subfolders are what ``from_pretrained`` and PEFT load natively. Branches would hide the adaptations from a reader
of the card (revisions stay for what they are for: versions of the same artefact), and one repo per task would
scatter one experiment over many cards. Episodes are data, so they go where ``load_dataset`` finds them.

Failure policy: transient errors (HTTP 5xx, 408, 429, dropped or refused connections, timeouts) are retried
with exponential backoff; an error that persists, or any other error, raises :class:`PublishError` naming the
repository. Nothing here writes, moves or deletes a local file, so the folder is as complete after a failed push
as before it. The token is never logged and is scrubbed from every message; a folder in which the token appears
(a pickled ``TrainingArguments`` with ``hub_token`` set, a config, a log) is refused before anything is sent.
"""

from __future__ import annotations

import importlib
import logging
import mmap
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from .tokens import scrub

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What Trainer.push_to_hub leaves out too: private files and checkpoints.
DEFAULT_IGNORE = ("_*", "checkpoint-*", "**/checkpoint-*")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


class PublishError(RuntimeError):
    """A push that failed for good. The local folder is untouched; the message never holds the token."""


def is_main_process() -> bool:
    """Whether this process pushes: rank 0 of torch.distributed or accelerate, or the only process.

    Read without creating any distributed state (``PartialState()`` would initialise a process group).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    from accelerate import PartialState

    if PartialState._shared_state:
        return PartialState().is_main_process
    return int(os.environ.get("RANK", "0")) == 0


def adapted_path(task: str) -> str:
    """The folder of the model adapted to ``task`` inside the initialisation's repo (module doc)."""
    if not _TASK_NAME.match(task) or ".." in task:
        raise ValueError(f"Task name {task!r} must be one path segment of letters, digits, '_', '-' or '.'.")
    return f"adapted/{task}"


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    path_in_repo: str | None = None,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload with hf-metatransfer",
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE,
    max_retries: int = 5,
    backoff: float = 1.0,
    endpoint: str | None = None,
) -> CommitInfo | None:
    """Create the repo if needed and upload ``folder`` in one commit; None on processes other than the main one.

    ``token=None`` uses the logged-in token (``HF_TOKEN`` or ``hf auth login``). ``revision`` names a branch,
    created from ``main`` when missing. A retry after a commit whose answer was lost re-uploads nothing: the
    client skips files already on the Hub.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Nothing to publish: {folder} is not a folder.")
    if not is_main_process():
        logger.info("not the main process: %s is pushed by rank 0", repo_id)
        return None
    secret = token if isinstance(token, str) else (get_token() if token is not False else None)
    leaking = files_containing(folder, secret, ignore_patterns) if secret else []
    if leaking:
        raise PublishError(
            f"Not pushing {folder} to {repo_id}: {leaking} contain the Hub token. Remove it from those files "
            "(a TrainingArguments saved with hub_token set is the usual culprit) and push again."
        )
    api = HfApi(endpoint=endpoint, token=token)
    target = f"{repo_type} repo {repo_id}" + (f" ({path_in_repo})" if path_in_repo else "")

    def push() -> CommitInfo:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        return api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type=repo_type,
            path_in_repo=path_in_repo,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=list(ignore_patterns),
        )

    commit = with_retries(
        push, target=target, local=str(folder), secret=secret, max_retries=max_retries, backoff=backoff
    )
    logger.info("pushed %s to %s: %s", folder, target, commit.oid)
    return commit


def push_adapted(folder: str | Path, repo_id: str, task: str, **kwargs: Any) -> CommitInfo | None:
    """Push a model or adapter adapted to ``task`` under ``adapted/<task>`` of the initialisation's repo."""
    return push_folder(
        folder,
        repo_id,
        path_in_repo=adapted_path(task),
        commit_message=kwargs.pop("commit_message", f"Add the model adapted to {task}"),
        **kwargs,
    )


def push_episodes(
    dataset: Any,
    repo_id: str,
    *,
    config_name: str = "default",
    split: str = "test",
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload evaluation episodes with hf-metatransfer",
    max_retries: int = 5,
    backoff: float = 1.0,
) -> CommitInfo | None:
    """Push an evaluation-episodes ``datasets.Dataset`` with ``Dataset.push_to_hub``, retried like a folder.

    ``datasets`` takes its endpoint from ``HF_ENDPOINT`` (read when it is imported): there is no endpoint argument.
    """
    if not is_main_process():
        return None
    secret = token if isinstance(token, str) else get_token()

    def push() -> CommitInfo:
        return dataset.push_to_hub(
            repo_id,
            config_name=config_name,
            split=split,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message,
        )

    commit = with_retries(
        push,
        target=f"dataset repo {repo_id}",
        local="the in-memory dataset",
        secret=secret,
        max_retries=max_retries,
        backoff=backoff,
    )
    logger.info("pushed %d episode rows to dataset repo %s: %s", len(dataset), repo_id, commit.oid)
    return commit


def with_retries(
    push: Callable[[], T], *, target: str, local: str, secret: str | None, max_retries: int, backoff: float
) -> T:
    """Run ``push``; retry transient failures ``max_retries`` times (backoff x 2^attempt s, at most 60 s).

    Offline mode fails at once, naming the variable; an HTTP refusal (401, 403, 404) says what to check."""
    intact = (f"The local copy ({local}) is intact and complete; push it again once the cause is fixed (e.g. "
              "hf-metatransfer publish).")  # fmt: skip
    if offline_variable():
        raise PublishError(f"Pushing to {target} needs the network, but {offline_variable()} is set: unset it (and "
                           f"the other *_OFFLINE variables) to push. {intact}")  # fmt: skip
    for attempt in range(max_retries + 1):
        try:
            return push()
        except Exception as err:  # every failure becomes a PublishError without the token
            message = scrub(f"{type(err).__name__}: {err}", secret)
            if not is_transient(err) or attempt == max_retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                hint = _refusal_hint(err, target)
                raise PublishError(
                    f"Pushing to {target} failed{tries}: {message}\n{hint + chr(10) if hint else ''}{intact}"
                ) from None
            delay = min(backoff * 2**attempt, 60.0)
            logger.warning(
                "push to %s failed (%s); retry %d of %d in %.1f s",
                target,
                message,
                attempt + 1,
                max_retries,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def offline_variable() -> str | None:
    """The offline switch that is on (huggingface_hub reads HF_HUB_OFFLINE; transformers' name is an alias)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE"
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


#: What a refusal of the Hub means for a push, by HTTP status.
_REFUSALS = {
    401: "The Hub did not accept the token: log in with `hf auth login` or set HF_TOKEN to a valid token.",
    403: "The token may not write to {repo}: check that it has write access (a fine-grained token needs "
    "'write' on this repo or its namespace) and that you may create repos under that owner.",
    404: "{repo} or its owner was not found: check the repo id (owner/name) and that the token can see it.",
}


def _refusal_hint(err: BaseException, target: str) -> str:
    for exc in (err, err.__cause__):
        response = getattr(exc, "response", None)
        if isinstance(exc, HfHubHTTPError) and response is not None and response.status_code in _REFUSALS:
            return _REFUSALS[response.status_code].format(repo=target)
    return ""


def is_transient(err: BaseException) -> bool:
    """Whether retrying may help: a server error, rate limiting, or a connection that broke or timed out (not
    offline mode, which huggingface_hub raises as a ConnectionError)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled) or isinstance(err.__cause__, OfflineModeIsEnabled):
        return False
    for exc in (err, err.__cause__):
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status >= 500 or status in (408, 429):
                return True
        if isinstance(exc, _transport_errors()):
            return True
    return False


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of Python and of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def files_containing(folder: Path, secret: str, ignore_patterns: Sequence[str] = DEFAULT_IGNORE) -> list[str]:
    """Files of ``folder`` that would be pushed and contain ``secret`` (read through mmap, never modified)."""
    needle = secret.encode()
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    found = []
    for rel in filter_repo_objects(paths, ignore_patterns=list(ignore_patterns)):
        path = folder / rel
        if path.stat().st_size == 0:
            continue
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(needle) != -1:
                found.append(rel)
    return found
