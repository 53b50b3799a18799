"""A small Hugging Face Hub-compatible server for tests (Flask, in memory, loopback only).

It implements exactly the endpoints the real `huggingface_hub` client calls for the
registry's Hub remote and for loading a pushed repo, following the Hub's HTTP API as the
client uses it (HF_HUB_DISABLE_XET=1, so files go through git-LFS, not Xet):

    POST   /api/repos/create                              create_repo (409 if it exists)
    POST   /api/validate-yaml                             README.md metadata check
    GET    /api/models/{repo}[/revision/{rev}]            repo_info / model_info (?blobs)
    GET    /api/models/{repo}/refs                        list_repo_refs
    GET    /api/models/{repo}/tree/{rev}[/{path}]         list_repo_tree (?recursive)
    POST   /api/models/{repo}/paths-info/{rev}            get_paths_info
    POST   /api/models/{repo}/preupload/{rev}             upload mode per file (+ its oid)
    POST   /{repo}.git/info/lfs/objects/batch             LFS batch: upload actions
    PUT    /lfs-objects/{repo}/{oid}                      LFS basic upload (sha256 checked)
    POST   /lfs-objects/{repo}/{oid}/verify               LFS verify
    POST   /api/models/{repo}/commit/{rev}                NDJSON commit (parentCommit: 412)
    POST   /api/models/{repo}/tag/{rev}                   create_tag (409 if it exists)
    POST   /api/models/{repo}/branch/{branch}             create_branch (startingPoint)
    DELETE /api/models/{repo}/branch/{branch}             delete_branch (not main)
    GET    /api/whoami-v2                                 whoami (401 without a valid token)
    DELETE /api/models/{repo}/tag/{tag}                   delete_tag
    HEAD   /{repo}/resolve/{rev}/{path}                   file metadata (X-Repo-Commit, ETag)
    GET    /{repo}/resolve/{rev}/{path}                   file content (Range supported)

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) so
the client raises its usual exception types. A private repo answers 404 RepoNotFound
unless the request carries the token the server was started with; a request carrying any
other token is refused with 401, as the Hub refuses an invalid token. There is no Xet:
`/api/models/{repo}/xet-write-token/{rev}` answers 404, as a Hub-compatible server without
Xet storage does (`xet_write_token_requests` counts the asks).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".parquet",
    ".arrow", ".npy", ".npz", ".zip", ".gz", ".tar", ".model", ".gguf",
)  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class Entry:
    """A file in a commit: regular content by git oid, or an LFS object by sha256."""

    size: int
    oid: str  # git blob oid (of the pointer file for LFS)
    sha256: str | None = None  # LFS only

    def to_tree(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.sha256:
            pointer = lfs_pointer(self.sha256, self.size)
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(pointer)}
        return out


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, Entry]
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubState:
    """All repos, regular file contents (by git oid) and LFS objects (by sha256)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.lfs_uploaded = 0  # bytes received through LFS uploads
        self.xet_write_token_requests = 0

    def repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self.authorized()):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def authorized(self) -> bool:
        return self.token is not None and request.headers.get("authorization") == (
            f"Bearer {self.token}"
        )

    def resolve(self, repo: Repo, rev: str) -> Commit:
        oid = repo.branches.get(rev) or repo.tags.get(rev)
        if oid is None and rev in repo.commits:
            oid = rev
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[oid]

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, Entry], msg: str) -> str:
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        body = json.dumps([parent, sorted((p, e.oid) for p, e in files.items()), msg, date,
                           len(repo.commits)])  # fmt: skip
        oid = hashlib.sha1(body.encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, files, msg, date)
        return oid

    def content(self, entry: Entry) -> bytes:
        return self.lfs[entry.sha256] if entry.sha256 else self.blobs[entry.oid]


def create_app(state: HubState) -> Flask:
    app = Flask("hubserver")
    app.config["MAX_CONTENT_LENGTH"] = None

    def endpoint() -> str:
        return request.host_url.rstrip("/")

    def js(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(obj), status, headers or {}, mimetype="application/json")

    @app.errorhandler(HubError)
    def hub_error(exc: HubError) -> Response:
        headers = {"X-Error-Code": exc.code} if exc.code else {}
        if exc.code:
            headers["X-Error-Message"] = exc.message
        return js({"error": exc.message}, exc.status, headers)

    @app.before_request
    def log() -> None:
        with state.lock:
            state.requests.append((request.method, request.path))
            if "/xet-write-token/" in request.path:
                state.xet_write_token_requests += 1
        auth = request.headers.get("authorization")
        if (
            auth is not None
            and not state.authorized()
            and not request.path.startswith("/lfs-objects/")
        ):
            raise HubError(401, "Invalid credentials in Authorization header")

    @app.get("/api/whoami-v2")
    def whoami() -> Response:
        if not state.authorized():
            raise HubError(401, "Invalid user token.")
        return js({"type": "user", "name": "user", "fullname": "Test User", "orgs": [],
                   "auth": {"type": "access_token", "accessToken": {"role": "write"}}})  # fmt: skip

    @app.post("/api/repos/create")
    def create_repo() -> Response:
        body = request.get_json()
        if body.get("type", "model") != "model":
            raise HubError(400, "only model repos here")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else (
            f"user/{body['name']}")  # fmt: skip
        with state.lock:
            if repo_id in state.repos:
                return js({"error": "You already created this model repo",
                           "url": f"{endpoint()}/{repo_id}"}, 409)  # fmt: skip
            private = body.get("visibility") == "private" or bool(body.get("private"))
            repo = Repo(repo_id, private)
            data = GITATTRIBUTES.encode()
            state.blobs[git_oid(data)] = data
            entry = Entry(len(data), git_oid(data))
            repo.branches["main"] = state.new_commit(
                repo, None, {".gitattributes": entry}, "initial commit"
            )
            state.repos[repo_id] = repo
        return js({"url": f"{endpoint()}/{repo_id}", "name": repo_id, "id": repo_id})

    @app.post("/api/validate-yaml")
    def validate_yaml() -> Response:
        return js({"errors": [], "warnings": []})

    def info(org: str, name: str, rev: str) -> Response:
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            commit = state.resolve(repo, rev)
            blobs = request.args.get("blobs") in ("true", "1", "True")
            siblings = []
            for path, e in sorted(commit.files.items()):
                s: dict[str, Any] = {"rfilename": path}
                if blobs:
                    s.update(size=e.size, blobId=e.oid)
                    if e.sha256:
                        s["lfs"] = {
                            "sha256": e.sha256,
                            "size": e.size,
                            "pointerSize": len(lfs_pointer(e.sha256, e.size)),
                        }
                siblings.append(s)
        return js({"_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id,
                   "sha": commit.oid, "private": repo.private, "disabled": False,
                   "gated": False, "lastModified": commit.date, "tags": [],
                   "siblings": siblings})  # fmt: skip

    @app.get("/api/models/<org>/<name>")
    def repo_info(org: str, name: str) -> Response:
        return info(org, name, "main")

    @app.get("/api/models/<org>/<name>/revision/<path:rev>")
    def repo_info_rev(org: str, name: str, rev: str) -> Response:
        return info(org, name, rev)

    @app.get("/api/models/<org>/<name>/refs")
    def refs(org: str, name: str) -> Response:
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            return js({
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                             for b, oid in sorted(repo.branches.items())],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid}
                         for t, oid in sorted(repo.tags.items())],
                "converts": [],
            })  # fmt: skip

    def tree_entries(commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        out, dirs = [], set()
        for p, e in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(e.to_tree(p))
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                 "path": d} for d in sorted(dirs)]  # fmt: skip
        return sorted(out, key=lambda x: x["path"])

    @app.get("/api/models/<org>/<name>/tree/<rev>")
    @app.get("/api/models/<org>/<name>/tree/<rev>/<path:path>")
    def tree(org: str, name: str, rev: str, path: str = "") -> Response:
        with state.lock:
            commit = state.resolve(state.repo(f"{org}/{name}"), rev)
            entries = tree_entries(commit, path, request.args.get("recursive") in ("true", "1"))
            if path and not entries and path not in commit.files:
                raise HubError(404, f"{path} does not exist", "EntryNotFound")
        return js(entries)

    @app.post("/api/models/<org>/<name>/paths-info/<rev>")
    def paths_info(org: str, name: str, rev: str) -> Response:
        paths = request.form.getlist("paths") or (request.get_json(silent=True) or {}).get(
            "paths", [])  # fmt: skip
        with state.lock:
            commit = state.resolve(state.repo(f"{org}/{name}"), rev)
            return js([commit.files[p].to_tree(p) for p in paths if p in commit.files])

    @app.post("/api/models/<org>/<name>/preupload/<rev>")
    def preupload(org: str, name: str, rev: str) -> Response:
        body = request.get_json()
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            commit = state.resolve(repo, rev)
            out = []
            for f in body["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = (f["size"] >= LFS_MIN_SIZE or f["path"].endswith(LFS_SUFFIXES)
                       or b"\0" in sample)  # fmt: skip
                item = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False}  # fmt: skip
                if (e := commit.files.get(f["path"])) is not None:
                    # The client skips an unchanged file: sha256 for LFS, git sha1 otherwise.
                    item["oid"] = e.sha256 or e.oid
                out.append(item)
        return js({"files": out, "commitOid": commit.oid})

    @app.post("/<org>/<name>.git/info/lfs/objects/batch")
    def lfs_batch(org: str, name: str) -> Response:
        body = request.get_json(force=True)
        repo_id = f"{org}/{name}"
        with state.lock:
            state.repo(repo_id)
            objects = []
            for obj in body["objects"]:
                oid, size = obj["oid"], obj["size"]
                item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if body.get("operation") == "upload" and oid not in state.lfs:
                    href = f"{endpoint()}/lfs-objects/{repo_id}/{oid}"
                    item["actions"] = {"upload": {"href": href},
                                       "verify": {"href": f"{href}/verify"}}  # fmt: skip
                objects.append(item)
        return js(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    @app.put("/lfs-objects/<org>/<name>/<oid>")
    def lfs_upload(org: str, name: str, oid: str) -> Response:
        data = request.get_data()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "sha256 mismatch")
        with state.lock:
            state.lfs[oid] = data
            state.lfs_uploaded += len(data)
        return Response(b"", 200)

    @app.post("/lfs-objects/<org>/<name>/<oid>/verify")
    def lfs_verify(org: str, name: str, oid: str) -> Response:
        body = request.get_json(force=True)
        with state.lock:
            data = state.lfs.get(oid)
        if data is None or len(data) != body.get("size"):
            raise HubError(404, "object not found")
        return js({"oid": oid, "size": len(data)})

    @app.post("/api/models/<org>/<name>/commit/<rev>")
    def commit(org: str, name: str, rev: str) -> Response:
        lines = [json.loads(line) for line in request.get_data().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            if rev not in repo.branches:
                raise HubError(404, f"Invalid rev id: {rev} (not a branch)", "RevisionNotFound")
            head = repo.branches[rev]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubError(412, f"A commit has happened since. Parent {parent} is not {head}")
            files = dict(repo.commits[head].files)
            for item in lines:
                key, v = item["key"], item["value"]
                if key == "file":
                    data = base64.b64decode(v["content"])
                    state.blobs[git_oid(data)] = data
                    files[v["path"]] = Entry(len(data), git_oid(data))
                elif key == "lfsFile":
                    data = state.lfs.get(v["oid"])
                    if data is None:
                        raise HubError(422, f"LFS object {v['oid']} was not uploaded")
                    files[v["path"]] = Entry(len(data), git_oid(lfs_pointer(v["oid"], len(data))),
                                             v["oid"])  # fmt: skip
                elif key == "deletedFile":
                    if files.pop(v["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = v["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                elif key != "header":
                    raise HubError(400, f"unsupported commit operation {key}")
            oid = state.new_commit(repo, head, files, header.get("summary", ""))
            repo.branches[rev] = oid
        return js({"commitUrl": f"{endpoint()}/{org}/{name}/commit/{oid}", "commitOid": oid,
                   "pullRequestUrl": None, "success": True})  # fmt: skip

    @app.post("/api/models/<org>/<name>/tag/<path:rev>")
    def create_tag(org: str, name: str, rev: str) -> Response:
        body = request.get_json()
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            commit = state.resolve(repo, rev)
            if body["tag"] in repo.tags:
                raise HubError(409, f"Tag {body['tag']} already exists")
            repo.tags[body["tag"]] = commit.oid
        return js({"name": body["tag"], "ref": f"refs/tags/{body['tag']}"})

    @app.post("/api/models/<org>/<name>/branch/<path:branch>")
    def create_branch(org: str, name: str, branch: str) -> Response:
        body = request.get_json(silent=True) or {}
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            start = state.resolve(repo, body.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        return js({})

    @app.delete("/api/models/<org>/<name>/branch/<path:branch>")
    def delete_branch(org: str, name: str, branch: str) -> Response:
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            if branch == "main":
                raise HubError(403, "main cannot be deleted")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return js({})

    @app.delete("/api/models/<org>/<name>/tag/<tag>")
    def delete_tag(org: str, name: str, tag: str) -> Response:
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            if repo.tags.pop(tag, None) is None:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        return js({})

    @app.route("/<org>/<name>/resolve/<rev>/<path:path>", methods=["GET", "HEAD"])
    def resolve(org: str, name: str, rev: str, path: str) -> Response:
        with state.lock:
            repo = state.repo(f"{org}/{name}")
            commit = state.resolve(repo, rev)
            entry = commit.files.get(path)
            if entry is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            data = state.content(entry)
        etag = entry.sha256 or entry.oid
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        if entry.sha256:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry.size)})
        status, body = 200, data
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes="):
            start_s, _, end_s = rng[len("bytes=") :].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        # For HEAD werkzeug sends these headers (Content-Length from the body) and no body.
        return Response(body, status, headers)

    return app


class HubServer:
    """The app served by werkzeug's threaded server on 127.0.0.1 in a daemon thread."""

    def __init__(self, token: str | None = None) -> None:
        from werkzeug.serving import make_server

        self.state = HubState(token)
        self._server = make_server("127.0.0.1", 0, create_app(self.state), threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
