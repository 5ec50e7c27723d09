"""A Hugging Face Hub speaking the Hub's HTTP protocol on 127.0.0.1, so tests drive the real ``huggingface_hub``.

No Hub server that accepts pushes can be installed from the package registries, and the real Hub is out of reach,
so this module implements the routes that ``create_repo``, ``upload_folder``, ``create_commit``,
``snapshot_download``, ``from_pretrained``, ``Trainer.push_to_hub``, PEFT and ``Dataset.push_to_hub`` use (the list
is in ``shared/knowledge/pitfalls.md``): repositories (model and dataset), one commit sha per commit on ``main``
(and on branches), regular files inline in the NDJSON commit, LFS files through the batch API and a PUT, file
listings and ``resolve`` downloads with ``X-Repo-Commit`` / ``ETag`` / ``Content-Length``, and a YAML check of
README metadata. Blobs live in a temporary folder; repository state lives in memory.

Faults: ``server.fail(route, times, mode)`` makes the next ``times`` requests of a route (``None``: all of them)
answer HTTP 500 or drop the connection without an answer. A token set on the server is required for writes.

Tests use it as the fixture ``hub`` after ``from tests.hub_server import hub_fixture``. Pointing the client at
the server (the fixture does it for one test): ``huggingface_hub`` (and
``datasets``) read ``HF_ENDPOINT`` once, when imported, and ``conftest.py`` imports them long before a test runs,
with ``HF_HUB_OFFLINE=1``. Running each client in a subprocess started with the environment set would be the
cleanest isolation, but every such process re-imports torch and transformers (about 10 s on 2 cores). So the
fixture patches, for the duration of one test, the module attributes the client reads on every call:
``huggingface_hub.constants.{ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET}``,
``datasets.config.{HF_ENDPOINT, HUB_DATASETS_URL, HF_HUB_OFFLINE}``, and the two ``HfApi`` objects built with
the endpoint of their day: ``huggingface_hub.hf_api.api`` (behind the module-level ``file_exists``,
``model_info``... that PEFT calls) and the one transformers caches (``transformers.utils.hub._hf_api``); it also sets the environment variables,
for subprocesses. Every route the server does not know is answered 404 and recorded in ``server.unknown``, so a
client that starts using a new route fails loudly rather than silently going elsewhere (it cannot go elsewhere:
the sandbox has no network).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

TOKEN = "hf_testtoken_b3f1c9d27a6e4f0a9c51"
USER = "tester"
TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
ROUTES = ("create", "validate-yaml", "info", "tree", "paths-info", "preupload", "lfs-batch", "lfs-upload", "commit",
          "branch", "resolve")  # fmt: skip
# Files the Hub stores in LFS whatever their size (the patterns of its default .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".parquet", ".arrow",
                ".npy", ".npz", ".pkl", ".pickle", ".zip", ".gz", ".tar", ".png", ".jpg")  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
PIPELINE_TAGS = {"text-classification", "token-classification", "text-generation", "translation", "fill-mask",
                 "feature-extraction", "sentence-similarity", "zero-shot-classification", "text2text-generation",
                 "summarization", "question-answering"}  # fmt: skip
LANGUAGE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]{2,8})*|multilingual|code)$")


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as ``oid`` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A file in a commit: its content is the blob named by ``sha256``."""

    sha256: str
    size: int
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name, a full commit sha or an unambiguous prefix of one (7+ characters)."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if len(revision) >= 7:
            found = [c for sha, c in self.commits.items() if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None


class HubError(Exception):
    """An HTTP error answer: status, ``X-Error-Code`` and message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class HubServer:
    """The server and its state; ``start()`` serves it from a daemon thread, ``stop()`` ends it."""

    def __init__(self, root: Path, token: str | None = TOKEN, echo_auth_in_errors: bool = False) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.echo_auth_in_errors = echo_auth_in_errors
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, route, path)
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._faults: dict[str, tuple[int | None, str]] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def fail(self, route: str, times: int | None = 1, mode: str = "500") -> None:
        """Fail the next ``times`` requests of ``route`` (``None``: every one) with ``mode``: an HTTP status
        ('500', or a refusal: '403' as for a read-only token, '404' as for an unknown owner) or 'drop' (the
        connection closed)."""
        if route not in ROUTES or mode not in ("500", "403", "404", "drop"):
            raise ValueError(
                f"route must be one of {ROUTES} and mode '500', '403', '404' or 'drop', got {route!r}, {mode!r}"
            )
        with self.lock:
            self._faults[route] = (times, mode)

    def count(self, route: str, method: str | None = None) -> int:
        """How many requests of ``route`` the server received (failed ones included)."""
        return sum(1 for m, r, _ in self.requests if r == route and method in (None, m))

    def blob_paths(self) -> list[Path]:
        return sorted((self.root / "blobs").iterdir())

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Content of every file of a revision, for assertions."""
        commit = self.repos[(repo_type, repo_id)].resolve(revision)
        return {p: self._blob(e.sha256).read_bytes() for p, e in commit.files.items()}

    def take_fault(self, route: str) -> str | None:
        with self.lock:
            times, mode = self._faults.get(route, (0, ""))
            if times == 0:
                return None
            if times is not None:
                self._faults[route] = (times - 1, mode)
            return mode

    # -- storage -------------------------------------------------------------------------------------------
    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def store_blob(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        path = self._blob(sha)
        if not path.exists():
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
        return sha

    def has_blob(self, sha256: str) -> bool:
        return re.fullmatch(r"[0-9a-f]{64}", sha256) is not None and self._blob(sha256).exists()

    def read_blob(self, sha256: str) -> bytes:
        return self._blob(sha256).read_bytes()

    def new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, Entry]) -> Commit:
        with self.lock:
            parent = repo.branches.get(branch)
            seed = json.dumps(
                [
                    parent,
                    message,
                    sorted((p, e.sha256) for p, e in files.items()),
                    time.time_ns(),
                    uuid.uuid4().hex,
                ]
            )
            commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, message, files)
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            repo = Repo(repo_type, repo_id, private)
            self.repos[(repo_type, repo_id)] = repo
            sha = self.store_blob(GITATTRIBUTES)
            entry = Entry(sha, len(GITATTRIBUTES), git_blob_oid(GITATTRIBUTES), False)
            self.new_commit(repo, "main", "initial commit", {".gitattributes": entry})
            return repo

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"


def _handler_class(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        hub = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    """One request: route it, apply a pending fault, answer JSON or bytes."""

    hub: HubServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection does not hold its thread for ever

    def log_message(self, format: str, *args: Any) -> None:  # the request log is ``hub.requests``
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing ------------------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        handler, route, args = self._route(method, parts)
        self.hub.requests.append((method, route, url.path))
        fault = self.hub.take_fault(route) if handler is not None else None
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            if fault == "500":
                raise HubError(500, f"Internal Error (injected fault on {route})")
            if fault == "403":
                raise HubError(403, "You don't have the rights to create a model under this namespace")
            if fault == "404":
                raise HubError(404, "Repository not found", "RepoNotFound")
            if handler is None:
                self.hub.unknown.append((method, url.path))
                raise HubError(404, f"No route {method} {url.path} in the test Hub")
            handler(*args)
        except HubError as err:
            message = str(err)
            if self.hub.echo_auth_in_errors:
                message += f" (request headers: Authorization: {self.headers.get('Authorization')})"
            headers = {"X-Error-Code": err.code} if err.code else {}
            self._json({"error": message}, status=err.status, headers=headers)

    def _route(self, method: str, p: list[str]):
        """(handler, route name, arguments) for a path split into unquoted segments."""
        if p[:1] == ["api"]:
            if p[1:3] == ["repos", "create"] and method == "POST":
                return self.create_repo, "create", ()
            if p[1:] == ["validate-yaml"] and method == "POST":
                return self.validate_yaml, "validate-yaml", ()
            if p[1:] == ["agent-harnesses"] and method == "GET":  # which coding agent runs the client: none
                return self.agent_harnesses, "agent-harnesses", ()
            if p[1:2] == ["lfs-upload"] and method == "PUT" and len(p) == 3:
                return self.lfs_upload, "lfs-upload", (p[2],)
            if len(p) >= 4 and p[1] in TYPES:
                repo_type, repo_id, rest = TYPES[p[1]], f"{p[2]}/{p[3]}", p[4:]
                if not rest and method == "GET":
                    return self.info, "info", (repo_type, repo_id, "main")
                if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                    return self.info, "info", (repo_type, repo_id, rest[1])
                if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                    return self.tree, "tree", (repo_type, repo_id, rest[1], "/".join(rest[2:]))
                if len(rest) == 2 and method == "POST":
                    name = {
                        "paths-info": "paths-info",
                        "preupload": "preupload",
                        "commit": "commit",
                        "branch": "branch",
                    }.get(rest[0])
                    if name is not None:
                        return getattr(self, name.replace("-", "_")), name, (repo_type, repo_id, rest[1])
            return None, "unknown", ()
        repo_type = "dataset" if p[:1] == ["datasets"] else "model"
        p = p[1:] if repo_type == "dataset" else p
        if (
            len(p) == 6
            and p[1].endswith(".git")
            and p[2:] == ["info", "lfs", "objects", "batch"]
            and method == "POST"
        ):
            return self.lfs_batch, "lfs-batch", (repo_type, f"{p[0]}/{p[1][:-4]}")
        if len(p) >= 5 and p[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve, "resolve", (repo_type, f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]), method)
        return None, "unknown", ()

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _payload(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Body is not JSON: {err}") from None

    def _authorized(self) -> bool:
        return self.hub.token is None or self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _require_write(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _entry_json(self, path: str, entry: Entry) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        return data

    # -- routes --------------------------------------------------------------------------------------------
    def create_repo(self) -> None:
        self._require_write()
        body = self._payload()
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"The test Hub has no {repo_type} repositories")
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        with self.hub.lock:
            repo = self.hub.repos.get((repo_type, repo_id))
            if repo is not None:
                self._json(
                    {"error": "You already created this repo", "url": self.hub.repo_url(repo)}, status=409
                )
                return
            private = body.get("visibility") == "private" or bool(body.get("private"))
            repo = self.hub.create_repo(repo_type, repo_id, private)
        self._json({"url": self.hub.repo_url(repo), "name": repo_id, "id": repo_id})

    def validate_yaml(self) -> None:
        body = self._payload()
        errors, warnings = check_metadata(body.get("content", ""), body.get("repoType") or "model")
        status = 400 if errors else 200
        self._json(
            {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]},
            status=status,
        )

    def agent_harnesses(self) -> None:
        self._json({"standardEnvVars": [], "harnesses": {}})

    def info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        self._json(
            {
                "id": repo_id,
                "private": repo.private,
                "sha": commit.sha,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                "tags": [],
                "downloads": 0,
                "likes": 0,
            },
            headers={"X-Repo-Commit": commit.sha},
        )

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        recursive = self.query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        files, folders = [], set()
        for p, entry in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            below = p[len(prefix) :].split("/")
            for depth in range(1, len(below)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(below[:depth]))
            if recursive or len(below) == 1:
                files.append(self._entry_json(p, entry))
        dirs = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(folders)
        ]
        self._json(dirs + files)

    def paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        form = parse_qs(self.body.decode())
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(self._entry_json(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(path.encode()).hexdigest(),
                        "size": 0,
                        "path": path,
                    }
                )
        self._json(out)

    def preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_write()
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        files = []
        for f in self._payload().get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = f["size"] >= LFS_MIN_SIZE or f["path"].endswith(LFS_SUFFIXES) or b"\0" in sample
            info = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit.files.get(f["path"])
            if existing is not None:
                info["oid"] = existing.sha256 if existing.lfs else existing.git_oid
            files.append(info)
        self._json({"files": files, "commitOid": commit.sha})

    def lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_write()
        self._repo(repo_type, repo_id)
        objects = []
        for obj in self._payload().get("objects", []):
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.hub.has_blob(obj["oid"]):
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/api/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        self._json(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its oid {oid}")
        self.hub.store_blob(self.body)
        self._send(200, b"", "text/plain")

    def commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_write()
        repo = self._repo(repo_type, repo_id)
        if self.query.get("create_pr"):
            raise HubError(400, "The test Hub has no pull requests")
        if revision not in repo.branches:
            raise HubError(404, f"Branch not found: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with a header line")
        header = lines[0]["value"]
        with self.hub.lock:
            head = repo.commits[repo.branches[revision]]
            parent = header.get("parentCommit")
            if parent and parent != head.sha:
                raise HubError(412, f"parentCommit {parent} is not the head of {revision} ({head.sha})")
            files = dict(head.files)
            for line in lines[1:]:
                self._apply(files, line["key"], line["value"])
            commit = self.hub.new_commit(repo, revision, header.get("summary", ""), files)
        self._json(
            {
                "commitUrl": f"{self.hub.repo_url(repo)}/commit/{commit.sha}",
                "commitOid": commit.sha,
                "success": True,
                "pullRequestUrl": None,
            }
        )

    def _apply(self, files: dict[str, Entry], key: str, value: dict[str, Any]) -> None:
        path = value["path"].strip("/")
        if key == "file":
            content = base64.b64decode(value["content"])
            files[path] = Entry(self.hub.store_blob(content), len(content), git_blob_oid(content), False)
        elif key == "lfsFile":
            if not self.hub.has_blob(value["oid"]):
                raise HubError(422, f"LFS object {value['oid']} of {path} was never uploaded")
            size = len(self.hub.read_blob(value["oid"]))
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {size}\n"
            files[path] = Entry(value["oid"], size, git_blob_oid(pointer.encode()), True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for p in [p for p in files if p.startswith(path + "/")]:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def branch(self, repo_type: str, repo_id: str, name: str) -> None:
        self._require_write()
        repo = self._repo(repo_type, repo_id)
        with self.hub.lock:
            if name in repo.branches:
                raise HubError(409, f"Reference {name} already exists")
            start = self._payload().get("startingPoint") or "main"
            repo.branches[name] = self._commit(repo, start).sha
        self._json({})

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str, method: str) -> None:
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = self.hub.read_blob(entry.sha256)
        etag = entry.sha256 if entry.lfs else entry.git_oid
        self._send(
            200,
            content,
            "application/octet-stream",
            {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Accept-Ranges": "none"},
        )


def check_metadata(content: str, repo_type: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the YAML front matter of a README, with the checks the Hub applies to its keys."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if match is None:
        return [], ["Empty or missing yaml metadata in repo card"]
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return [f"Invalid YAML: {err}"], []
    if not isinstance(meta, dict):
        return ["The metadata is not a YAML mapping"], []
    errors: list[str] = []

    def strings(key: str, one_allowed: bool = True) -> list[str]:
        value = meta.get(key)
        values = [value] if isinstance(value, str) and one_allowed else value
        if value is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            errors.append(f'"{key}" must be {"a string or " if one_allowed else ""}a list of strings')
            return []
        return values or []

    for lang in strings("language"):
        if not LANGUAGE.match(lang):
            errors.append(f'"language" entry {lang!r} is not an ISO 639 code')
    strings("license")
    strings("tags", one_allowed=False)
    strings("datasets")
    strings("base_model")
    if "library_name" in meta and not isinstance(meta["library_name"], str):
        errors.append('"library_name" must be a string')
    if repo_type == "model" and meta.get("pipeline_tag") not in (None, *PIPELINE_TAGS):
        errors.append(f'"pipeline_tag" {meta["pipeline_tag"]!r} is not a known task')
    if "model-index" in meta:
        errors += _check_model_index(meta["model-index"])
    return errors, []


def _check_model_index(index: Any) -> list[str]:
    if not isinstance(index, list) or not index:
        return ['"model-index" must be a non-empty list']
    errors = []
    for model in index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index" entries need a "name"')
            continue
        for result in model.get("results") or []:
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append('"model-index" results need "task.type"')
            if not isinstance(dataset, dict) or not all(
                isinstance(dataset.get(k), str) for k in ("type", "name")
            ):
                errors.append('"model-index" results need "dataset.type" and "dataset.name"')
            if not isinstance(metrics, list) or not metrics:
                errors.append('"model-index" results need "metrics"')
                continue
            for metric in metrics:
                if not isinstance(metric.get("type"), str) or not isinstance(
                    metric.get("value"), int | float
                ):
                    errors.append('"model-index" metrics need a string "type" and a numeric "value"')
    return errors


def point_client_at(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make huggingface_hub, datasets and transformers talk to ``endpoint`` until the test ends (module doc)."""
    import datasets.config
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.hf_api
    import transformers.utils.hub

    for name, value in (("HF_ENDPOINT", endpoint), ("HF_HUB_DISABLE_XET", "1"), ("HF_HUB_OFFLINE", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(
        datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    )
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.hf_api.api, "endpoint", endpoint
    )  # behind file_exists, model_info, ...
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)


@pytest.fixture(name="hub")
def hub_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """``hub``: a fresh Hub on 127.0.0.1 for one test, with the clients pointed at it; stopped and deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="test_hub_"))
    server = HubServer(root).start()
    try:
        point_client_at(server.url, monkeypatch)
        yield server
        assert not server.unknown, f"the client used routes the test Hub does not know: {server.unknown}"
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
