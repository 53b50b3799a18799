"""The S3 remote (AWS S3 or any S3-compatible store: MinIO, Cloudflare R2, Ceph, ...).

Layout under `s3://bucket/prefix/` (it mirrors the local store):

    registry-remote.json        {"format":1}: checked before anything else is read
    blobs/sha256/<64 hex>       every blob: file content, component and bundle manifests,
                                and the policies and gate evidence the database names
    refs/<name>/v<N>            a version: its body is the bundle digest; written once
    refs/<name>/<channel>       a channel: its body is the bundle digest; moves
    keys/<16 hex>.pub           a bundle signer's public key (PEM); its sha256 is the key id
    signatures/<bundle hex>/<16 hex>
                                the bundle's `registry sign` signature by that key: its body
                                is the signature blob's digest (rewritten on a re-sign)
    attestations/<bundle hex>/<64 hex>
                                one of the bundle's signed gate-run attestations, a blob
                                (empty object: a listing of the prefix is the index)
    created/<bundle hex>.json   {"format":1,"bundle":..,"created_at":..,"created_by":..}:
                                when and by whom the bundle was created, written once by
                                the first push; a pull keeps it for display only (sync.
                                parse_creation), and remotes pushed to before it existed
                                simply lack it
    pieces/<64 hex>             the piece list of a file the pushing store holds as pieces
                                (registry/pieces.py), named by the whole file's digest; the
                                pieces are blobs like any other

Push writes blobs (the attestation and signature blobs among them; for a pieced file,
the pieces the remote lacks, never the whole file), then the piece lists, then component
manifests, then the bundle manifest, then the creation record, the keys, signatures and
attestations entries, then the version ref, then the channel ref; each step starts only
when the one before has completed, so an interrupted push never leaves a ref or an entry
to missing data. Refs are written with conditional requests: a version with
`If-None-Match: *` (versions never move), a channel with `If-Match: <etag it was read
with>` (two pushers cannot overwrite each other silently).

Every blob is hashed once on the client (SHA-256) to check it is the blob its name says,
before the request that makes the object exist (PutObject, or CompleteMultipartUpload
after the parts): a corrupt local blob is never completed on the remote. Objects up to
`REGISTRY_S3_SINGLE_PUT_MB` (64 MiB: a whole tensor piece) go as one PutObject that sends
our sha256 as `ChecksumSHA256` (S3 rejects a mismatch). Over plain http SigV4 signs the
payload, so botocore hashes the body anyway: that hash is the check (`_SignedPayloadCheck`
compares it with our digest just before the request is sent), not a second pass. Over
https the payload is not signed, and a side thread re-hashes the file while it uploads.
Larger objects go multipart with a CRC32 checksum per part (`PART_CHECKSUM`: zlib's C
CRC, about 10x cheaper than a second SHA-256 of every byte; S3 rejects a part whose bytes
do not match it), re-hashed by the side thread. The object's identity stays our sha256,
which every pull re-verifies. A pull of a file the remote holds as pieces fetches the
pieces the store lacks, hashes the whole file over them in order and writes the piece
list only when that is the file's digest (sync.adopt_pieces). Downloads write each part
at its offset in a temp file (`OffsetSink`: nothing is buffered, so memory is flat in the
blob size) and hash the bytes in file order as the written prefix grows; the blob is
fsync'd and verified before it enters the store.

Credentials come only from the usual AWS chain (environment, profile, SSO, instance role).
Every boto3/botocore failure is translated in one place (`S3Remote.errors`) into a
RemoteError (exit 1) that says which failure it is: "cannot reach" (nothing answers),
"bucket X does not exist", or "refused the credentials" (403: unknown key, bad signature,
access denied). An existing bucket with no registry in it is not an error: it holds no
bundles yet.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import locks, refs
from registry.digest import HEX_RE, canonical_json, check_digest, hex_of, short
from registry.errors import (
    ConflictError,
    IntegrityError,
    RegistryError,
    RemoteError,
    UsageError,
)
from registry.pieces import PieceList
from registry.remotes.base import ProgressFactory, PullResult, PushResult, RemoteSpec
from registry.remotes.sync import (
    MAX_ATTESTATION,
    MAX_CREATION_RECORD,
    MAX_PUBLIC_KEY,
    MAX_SIGNATURE,
    BlobSink,
    BundleBlobs,
    Creation,
    TrustRecords,
    adopt_pieces,
    check_local_blobs,
    creation_record,
    fetch_side_blobs,
    file_names,
    hex_name,
    import_bundle,
    import_trust,
    key_hex,
    key_id_of,
    load_local,
    local_piece_lists,
    local_side_blobs,
    local_trust,
    missing_blobs,
    note_kept_blobs,
    parse_creation,
    parse_remote_bundle,
    pick,
    piece_names,
    pieces_lacking,
    pieces_of,
    prefetch,
    remote_channel_ref,
    store_manifests,
    track_channel,
)

if TYPE_CHECKING:
    from registry.repo import Registry

MiB = 1024 * 1024
FORMAT = {"format": 1}
FORMAT_KEY = "registry-remote.json"
MAX_MANIFEST = 64 * MiB  # a manifest larger than this is refused before it is read
MAX_REF = 1024
# Error codes an S3 endpoint answers (with HTTP 403) when it refuses who is asking.
REFUSED_CODES = (
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
)
# Downloaded chunks (io_chunksize, 256 KiB) waiting for the one IO thread to write them:
# the bound on what a pull holds in memory beyond its threads' read buffers (8 MiB).
DOWNLOAD_IO_QUEUE = 32
SINGLE_PUT_MB = 64  # objects up to this size are one PutObject (registry.pieces.PIECE_SIZE)
PART_CHECKSUM = "CRC32"  # multipart part checksum; the whole-object identity is our sha256
HEAD_LIMIT = 16  # up to this many blobs: one HEAD each; more: one listing of blobs/
STALE_UPLOAD_S = 24 * 3600  # incomplete multipart uploads older than this are aborted


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def upload_config() -> Any:
    """Transfer tuning for uploads (override with REGISTRY_S3_UPLOAD_PART_MB,
    REGISTRY_S3_SINGLE_PUT_MB and REGISTRY_S3_CONCURRENCY). Measured against loopback
    moto in bench/README.md. Objects up to the single-PUT size (default 64 MiB, a whole
    tensor piece) go as one PutObject: one SHA-256 of the bytes on the client, see
    `upload_blobs`."""
    cfg = _transfer_config("REGISTRY_S3_UPLOAD_PART_MB", 16, concurrency=10)
    single = _env_int("REGISTRY_S3_SINGLE_PUT_MB", SINGLE_PUT_MB) * MiB
    cfg.multipart_threshold = max(cfg.multipart_chunksize, single + 1)
    return cfg


def download_config() -> Any:
    """Transfer tuning for downloads: large parts (an S3 GET has a high fixed cost, moto's
    especially: it reads the whole object for each ranged GET) and 8 threads."""
    return _transfer_config(
        "REGISTRY_S3_DOWNLOAD_PART_MB", 64, concurrency=8, io_queue=DOWNLOAD_IO_QUEUE
    )


def _transfer_config(
    part_env: str, part_mb: int, *, concurrency: int, io_queue: int | None = None
) -> Any:
    from boto3.s3.transfer import TransferConfig

    part = _env_int(part_env, part_mb) * MiB
    return TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=_env_int("REGISTRY_S3_CONCURRENCY", concurrency),
        max_io_queue=io_queue,  # None: boto3's default (100 chunks)
        use_threads=True,
        preferred_transfer_client="classic",
    )


def _verify_file(path: Path, digest: str, size: int) -> None:
    """Raise IntegrityError unless the file holds exactly the blob `digest`."""
    from registry.copying import hash_fd

    fd = os.open(path, os.O_RDONLY)
    try:
        actual, n = hash_fd(fd)
    finally:
        os.close(fd)
    if actual != digest or n != size:
        raise _not_pushed(digest)


def _not_pushed(digest: str) -> IntegrityError:
    return IntegrityError(
        f"local blob {short(digest)} does not match its digest; not pushed",
        "Run `registry verify --all`, then pull the bundle again from a good copy.",
    )


class _SignedPayloadCheck:
    """A `before-send` hook for the single-PUT blobs of one push: SigV4 over plain http
    signs the SHA-256 of the body (X-Amz-Content-SHA256), so just before sending, that
    hash must be the blob's own digest, or the request is refused. Where the payload is
    not signed after all (a proxy config, https), the file is hashed here instead."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[Path, str, int]] = {}  # key -> (path, digest, size)

    def __call__(self, request: Any, **_: Any) -> None:
        from urllib.parse import unquote, urlsplit

        url_path = unquote(urlsplit(request.url).path).lstrip("/")
        # the key is the whole path (virtual-hosted addressing) or follows the bucket
        blob = self.blobs.get(url_path) or self.blobs.get(url_path.partition("/")[2])
        if blob is None:
            return
        path, digest, size = blob
        signed = request.headers.get("X-Amz-Content-SHA256", "")
        if isinstance(signed, bytes):  # botocore keeps the signed headers as bytes
            signed = signed.decode("ascii", "replace")
        if len(signed) == 64 and HEX_RE.match(signed):
            if signed != hex_of(digest):
                raise _not_pushed(digest)
        else:
            _verify_file(path, digest, size)


def _refuse(why: str) -> Callable[[], bytes | None]:
    """A loader for a malformed remote entry: reading it is refused with `why`."""

    def load() -> bytes | None:
        raise IntegrityError(why)

    return load


def _subscribers(size: int, on_bytes: Callable[[int], None] | None) -> list[Any]:
    from s3transfer.subscribers import BaseSubscriber

    class Sub(BaseSubscriber):
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(size)  # no HEAD: we know the size

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            if on_bytes is not None:
                on_bytes(bytes_transferred)

    return [Sub()]


HASH_READ = MiB  # bytes read back per step when the hashed prefix catches up


class OffsetSink(BlobSink):
    """A seekable, write-only file that becomes blob `digest` only if its bytes match.

    s3transfer writes each downloaded chunk at its offset (seek, then write; one IO thread
    at a time), so parts arriving out of order go straight to disk instead of waiting in
    memory. The sha256 is computed in file order over what landed on disk: whenever the
    written range reaching from the start grows, the new bytes are read back (the page
    cache) and hashed, so every byte is hashed once, while the download runs. A part
    retried after a cut rewrites the same offsets: bytes already hashed are not hashed
    again. `commit` and `discard` are BlobSink's: size and digest checked, fsync, rename
    into the store; anything else is discarded (a range never hashed leaves `written`
    short of the size).
    """

    def __init__(self, store: Any, digest: str, size: int) -> None:
        super().__init__(store, digest, size)  # `written`: bytes [0, written) hashed
        self._pos = 0
        self._pending: list[tuple[int, int]] = []  # written ranges past `written`, disjoint
        self.max_pending = 0  # most disjoint ranges held at once (a test reads it)

    @property
    def hashed(self) -> int:
        """Bytes from the start that are on disk and in the hash."""
        return self.written

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence == os.SEEK_END:
            offset += self.size
        if offset < 0:
            raise ValueError("negative seek position")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        start, end = self._pos, self._pos + n
        if end > self.size:
            raise IntegrityError(f"blob {short(self.digest)} is longer than {self.size} bytes")
        fd = self._open()
        view = memoryview(data)
        off = start
        while view:
            k = os.pwrite(fd, view, off)
            view, off = view[k:], off + k
        self._pos = end
        if end > self.written:
            self._add(max(start, self.written), end)
            self._advance()
        return n

    def _add(self, start: int, end: int) -> None:
        """Merge [start, end) into the pending ranges (kept sorted and disjoint)."""
        merged: list[tuple[int, int]] = []
        for s, e in self._pending:
            if e < start or s > end:
                merged.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        merged.append((start, end))
        merged.sort()
        self._pending = merged
        self.max_pending = max(self.max_pending, len(merged))

    def _advance(self) -> None:
        """Hash the bytes on disk from `hashed` up to the end of the range touching it."""
        if not self._pending or self._pending[0][0] > self.written:
            return
        _s, end = self._pending.pop(0)
        assert self._fd is not None
        while self.written < end:
            chunk = os.pread(self._fd, min(HASH_READ, end - self.written), self.written)
            if not chunk:  # cannot happen: the bytes were just written
                raise IntegrityError(f"blob {short(self.digest)}: temp file shrank")
            self._hash.update(chunk)
            self.written += len(chunk)


class S3Remote:
    """A registry remote on S3 or an S3-compatible endpoint."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.bucket, self.prefix = spec.bucket, spec.prefix
        self._client: Any = None

    # --- plumbing ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ProfileNotFound

            opts = self.spec.options
            try:
                session = boto3.session.Session(
                    profile_name=opts.get("profile"), region_name=opts.get("region")
                )
                self._client = session.client(
                    "s3",
                    endpoint_url=opts.get("endpoint_url"),
                    config=Config(
                        retries={"mode": "standard"},
                        max_pool_connections=32,
                        connect_timeout=10,
                        read_timeout=120,
                        # Path-style works on MinIO, R2 and AWS; virtual hosts need DNS.
                        s3={"addressing_style": "path"} if opts.get("endpoint_url") else {},
                    ),
                )
            except ProfileNotFound as exc:
                raise UsageError(
                    f"remote {self.spec.name}: AWS profile {opts.get('profile')!r} not found",
                    "Configure it in ~/.aws/config, or re-add the remote with another --profile.",
                ) from exc
            except BotoCoreError as exc:
                raise RemoteError(f"remote {self.spec.name}: {exc}") from exc
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def blob_key(self, digest: str) -> str:
        return self.key(f"blobs/sha256/{hex_of(digest)}")

    def pieces_key(self, digest: str) -> str:
        """The piece list of the file `digest` (named by the whole file's digest)."""
        return self.key(f"pieces/{hex_of(digest)}")

    def ref_key(self, name: str, tag: str) -> str:
        return self.key(f"refs/{name}/{tag}")

    def creation_key(self, digest: str) -> str:
        return self.key(f"created/{hex_of(digest)}.json")

    @property
    def endpoint(self) -> str:
        """Where requests go, in words: the --endpoint-url, else AWS S3 (and its region)."""
        url = self.spec.options.get("endpoint_url")
        if url:
            return str(url)
        region = self.spec.options.get("region")
        return f"AWS S3 ({region})" if region else "AWS S3"

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Translate boto3/botocore failures into one-line RemoteErrors (one boundary).

        Each says which failure it is: no credentials found, "bucket X does not exist",
        "... refused the credentials" (any 403), "cannot reach ..." (connection refused,
        DNS, timeouts, a cut network); anything else names the endpoint's error code."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from s3transfer.exceptions import RetriesExceededError

        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        try:
            yield
        except RegistryError:
            raise
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise RemoteError(
                f"{doing}: no AWS credentials for remote {self.spec.name}",
                "Use the usual AWS chain: AWS_PROFILE or ~/.aws/credentials, AWS_ACCESS_KEY_ID"
                " and AWS_SECRET_ACCESS_KEY, SSO, or an instance role.",
            ) from exc
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "?")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise RemoteError(
                    f"{doing}: bucket {self.bucket} does not exist on {self.endpoint}"
                    f" (remote {self.spec.name})",
                    f"Create it first (e.g. `aws s3 mb s3://{self.bucket}`; the registry never"
                    " creates buckets), or fix the URL: `registry remote rm"
                    f" {self.spec.name}`, then `registry remote add {self.spec.name}"
                    " s3://BUCKET/PREFIX`.",
                ) from exc
            if code in REFUSED_CODES or status == 403:
                raise RemoteError(
                    f"{doing}: {self.endpoint} refused the credentials for {where} ({code})",
                    "Check which credentials the AWS chain picks (`aws sts get-caller-identity`:"
                    " AWS_PROFILE, ~/.aws/credentials, AWS_ACCESS_KEY_ID) and that the bucket"
                    " policy lets them read (and, to push, write) this prefix.",
                ) from exc
            raise RemoteError(f"{doing}: {where}: {code}: {err.get('Message', '')}") from exc
        except (BotoCoreError, RetriesExceededError, OSError) as exc:
            raise RemoteError(
                f"{doing}: cannot reach {self.endpoint} for {where}: {exc}",
                "Check the network and the remote's --endpoint-url (`registry remote ls`)."
                " Nothing half-done is visible on either side: run the same command again"
                " and it resumes where it stopped.",
            ) from exc

    def _is_code(self, exc: Exception, *codes: str) -> bool:
        """Whether a ClientError has one of `codes` (an error code or an HTTP status).

        A missing bucket also answers 404: it matches only when "NoSuchBucket" is asked
        for, so "the object is absent" (404) never hides "the bucket is absent"."""
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        err = exc.response.get("Error", {})
        if err.get("Code") == "NoSuchBucket":
            return "NoSuchBucket" in codes
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return err.get("Code") in codes or status in codes

    def _get_small(self, key: str, limit: int) -> tuple[bytes, dict[str, Any]] | None:
        """Body and response of a small object, None if it does not exist."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_code(exc, "NoSuchKey", "404"):
                return None
            raise
        if int(resp.get("ContentLength", 0)) > limit:
            resp["Body"].close()
            raise IntegrityError(f"s3 object {key} is larger than {limit} bytes; refused")
        with contextlib.closing(resp["Body"]) as body:
            return body.read(), resp

    def _put_if(self, key: str, data: bytes, **conditions: Any) -> bool:
        """PUT with a condition (IfNoneMatch / IfMatch); False if the condition failed."""

        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                **conditions,
            )
        except Exception as exc:
            if self._is_code(exc, "PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise
        return True

    # --- format marker and refs -------------------------------------------------------

    def check_format(self, *, create: bool) -> bool:
        """True if the remote holds a registry (creating the marker on push)."""
        got = self._get_small(self.key(FORMAT_KEY), MAX_REF)
        if got is None:
            if create:
                self._put_if(self.key(FORMAT_KEY), canonical_json(FORMAT), IfNoneMatch="*")
                return True
            return False
        from registry.errors import InvalidInputError
        from registry.untrusted import load_json

        try:
            fmt = load_json(got[0], FORMAT_KEY, max_bytes=1_000_000).get("format")
        except (ValueError, AttributeError, InvalidInputError):
            fmt = None
        if fmt != FORMAT["format"]:
            raise RemoteError(
                f"s3://{self.bucket}/{self.prefix} holds registry format {fmt!r};"
                f" this version reads {FORMAT['format']}",
                "Upgrade the registry, or use another prefix.",
            )
        return True

    def get_ref(self, name: str, tag: str) -> tuple[str, str, dict[str, str]] | None:
        """(digest, etag, metadata) of a ref, None if absent; a malformed ref is an error."""
        got = self._get_small(self.ref_key(name, tag), MAX_REF)
        if got is None:
            return None
        body, resp = got
        try:
            digest = check_digest(body.decode("ascii").strip(), f"ref {name}:{tag}")
        except (UnicodeDecodeError, RegistryError):
            raise IntegrityError(
                f"remote ref {name}:{tag} does not hold a digest", "The remote is corrupt."
            ) from None
        return digest, resp.get("ETag", ""), dict(resp.get("Metadata") or {})

    def list_refs(self) -> list[tuple[str, str]]:
        """(name, tag) of every well-formed key under refs/ (one paginated listing)."""
        base = self.key("refs/")
        out = []
        for key, _size in self._list(base):
            name, sep, tag = key[len(base) :].partition("/")
            try:
                ok = sep and "/" not in tag and refs.parse(f"{name}:{tag}").tag == tag
            except RegistryError:
                ok = False
            if ok:
                out.append((name, tag))
        return out

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])

    # --- listing ----------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every version on the remote with the channels that point at it, newest first."""
        with self.errors("list"):
            if not self.check_format(create=False):
                return []
            pairs = self.list_refs()
            with ThreadPoolExecutor(max_workers=16) as pool:
                got = list(pool.map(lambda p: self.get_ref(*p), pairs))
        versions: dict[tuple[str, str], dict[str, Any]] = {}
        channels: list[tuple[str, str, str]] = []
        for (name, tag), ref in zip(pairs, got, strict=True):
            if ref is None:
                continue  # removed between the listing and the read
            digest, _etag, meta = ref
            parsed = refs.parse(f"{name}:{tag}")
            if parsed.version is not None:
                size = meta.get("size") or ""
                # isascii: a latin-1 header byte such as '\u00b2' passes isdigit(), not int()
                sized = size.isascii() and size.isdigit() and len(size) < 19
                versions[(name, digest)] = {
                    "name": name,
                    "version": parsed.version,
                    "tag": f"{name}:{tag}",
                    "digest": digest,
                    "size": int(size) if sized else None,
                    "channels": [],
                }
            else:
                channels.append((name, tag, digest))
        for name, channel, digest in channels:
            entry = versions.get((name, digest))
            if entry is None:  # a channel whose version ref is gone: still listed
                entry = versions[(name, digest)] = {
                    "name": name, "version": None, "tag": f"{name}@{short(digest)}",
                    "digest": digest, "size": None, "channels": [],
                }  # fmt: skip
            entry["channels"].append(channel)
        out = sorted(versions.values(), key=lambda e: (e["name"], -(e["version"] or 0)))
        for e in out:
            e["channels"].sort()
        return out

    # --- push -------------------------------------------------------------------------

    def push(
        self,
        reg: Registry,
        ref: str,
        *,
        include_base: bool = False,
        actor: str,
        progress: ProgressFactory | None = None,
    ) -> PushResult:
        t0 = time.perf_counter()
        parsed = refs.parse(ref)
        row, bundle = load_local(reg, ref)
        base = bundle.components.get("base_model")
        if include_base and base is not None and base.manifest.external:
            raise UsageError(
                f"--include-base: the base of {row['name']}:v{row['version']} is pinned on the"
                f" Hub ({base.manifest.source}); an S3 remote holds its pin, not a copy",
                "Drop --include-base, or add the bundle with a local --base directory.",
            )
        check_local_blobs(reg, bundle)
        name, version = row["name"], row["version"]
        vtag = f"v{version}"
        result = PushResult(self.spec.name, bundle.digest, f"{name}:{vtag}", parsed.channel)
        files = bundle.file_blobs()
        manifests = bundle.manifest_blobs()
        side = local_side_blobs(reg, bundle.digest)  # policies, gate evidence
        trust = local_trust(reg, bundle.digest)  # attestations, signatures, keys
        side.update(trust.blobs())
        # A file stored here as pieces travels as its pieces and its piece list, never
        # whole: unless the remote holds it already (whole, or its own piece list).
        lists = local_piece_lists(reg, {**files, **side})
        pieces = pieces_of(lists.values())
        whole = {d: s for d, s in {**files, **side}.items() if d not in lists}
        wanted = {**whole, **pieces, **{d: len(b) for d, b in manifests}}
        with self.errors(f"push {name}:{vtag}"):
            with ThreadPoolExecutor(max_workers=4) as pool:
                # The reads before the upload go together (each a round trip; the format marker
                # is the only write, made on a first push before any blob): their results are
                # taken in this order, so a wrong format is the error a push reports first.
                self.client  # noqa: B018  (made here, not raced for by the threads below)
                held = {**wanted, **{d: pl.size for d, pl in lists.items()}}
                fmt = pool.submit(self.check_format, create=True)
                ref_read = pool.submit(self.get_ref, name, vtag)
                have = pool.submit(self.present, held)
                have_lists = pool.submit(self.present_piece_lists, sorted(lists))
                # housekeeping (it never fails a push), done before this push's own uploads
                # begin: a listing of uploads beside their creation makes moto fail (500)
                stale = pool.submit(self.abort_stale_uploads, STALE_UPLOAD_S)
                fmt.result()
                existing = ref_read.result()
                present, listed = have.result(), have_lists.result()
                if existing is not None and existing[0] != bundle.digest:
                    raise self._version_conflict(name, vtag, existing[0], bundle.digest)
                todo = {d: pl for d, pl in lists.items() if d not in present and d not in listed}
                result.blobs = len(wanted) + len(lists)
                result.bytes_total = sum(wanted.values()) + sum(
                    len(pl.to_bytes()) for pl in lists.values()
                )
                with contextlib.suppress(Exception):
                    stale.result()
            send = {d: s for d, s in whole.items() if d not in present}
            send.update({d: s for d, s in pieces_of(todo.values()).items() if d not in present})
            self.upload_blobs(reg, send, progress, f"push {name}:{vtag}")

            # Piece lists and component manifests after every blob they name (together: a
            # few small PUTs each a round trip, so in parallel); the bundle manifest last.
            def put_list(digest: str, pl: PieceList) -> None:
                data = pl.to_bytes()
                if self._put_if(self.pieces_key(digest), data, IfNoneMatch="*"):
                    send[self.pieces_key(digest)] = len(data)  # else another pusher's is there

            def put_manifest(digest: str, data: bytes) -> None:
                if digest not in present:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=self.blob_key(digest),
                        Body=data,
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(hex_of(digest))).decode(),
                    )
                    send[digest] = len(data)

            with ThreadPoolExecutor(max_workers=8) as pool:
                done = [pool.submit(put_list, d, pl) for d, pl in sorted(todo.items())]
                done += [pool.submit(put_manifest, d, data) for d, data in manifests[:-1]]
                for f in done:
                    f.result()  # the first error, after every request has ended
            put_manifest(*manifests[-1])
            result.blobs_sent = len(send)
            result.bytes_sent = sum(send.values())
            # Written once: the first push's record stands (a later one is refused, 412).
            self._put_if(self.creation_key(bundle.digest), creation_record(row), IfNoneMatch="*")
            self.put_trust(bundle.digest, trust, result)  # after the blobs they name
            if existing is None:
                meta = {"size": str(bundle.stored_size)}
                if not self._put_if(
                    self.ref_key(name, vtag), bundle.digest.encode(), IfNoneMatch="*", Metadata=meta
                ):
                    now = self.get_ref(name, vtag)
                    if now is None or now[0] != bundle.digest:
                        raise self._version_conflict(
                            name, vtag, now[0] if now else "?", bundle.digest
                        )
                else:
                    result.refs.append(vtag)
            if parsed.channel is not None and self.move_channel(
                name, parsed.channel, bundle.digest, version
            ):
                result.refs.append(parsed.channel)
        result.seconds = time.perf_counter() - t0
        return result

    def put_trust(self, bundle_digest: str, trust: TrustRecords, result: PushResult) -> None:
        """Index the bundle's trust records (their blobs are already there): signer keys,
        then signatures, then attestations. Only what is missing or changed is written."""
        bundle_hex = hex_of(bundle_digest)
        for key_id, pem in sorted(trust.keys.items()):
            self._put_if(self.key(f"keys/{key_hex(key_id)}.pub"), pem, IfNoneMatch="*")
        for key_id, (digest, _size) in sorted(trust.signatures.items()):
            key = self.key(f"signatures/{bundle_hex}/{key_hex(key_id)}")
            got = self._get_small(key, MAX_REF)
            if got is None or got[0].decode("ascii", "replace").strip() != digest:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=digest.encode())
                result.signatures_sent += 1
        if trust.attestations:
            base = self.key(f"attestations/{bundle_hex}/")
            listed = {key[len(base) :] for key, _size in self._list(base)}
            for digest in sorted(trust.attestations):
                if hex_of(digest) not in listed:
                    self.client.put_object(Bucket=self.bucket, Key=base + hex_of(digest), Body=b"")
                    result.gate_runs_sent += 1

    def _version_conflict(self, name: str, tag: str, theirs: str, ours: str) -> ConflictError:
        return ConflictError(
            f"{name}:{tag} on remote {self.spec.name} is {short(theirs)}, not {short(ours)}:"
            " versions never move",
            "Another registry numbered a different bundle the same; share one database"
            " (team mode) or pull theirs first. Channels, not versions, may be re-pointed.",
        )

    def move_channel(self, name: str, channel: str, digest: str, version: int) -> bool:
        """Point a remote channel at `digest` (compare-and-swap on its ETag)."""
        current = self.get_ref(name, channel)
        if current is not None and current[0] == digest:
            return False
        meta = {"version": str(version)}
        body = digest.encode()
        key = self.ref_key(name, channel)
        ok = (
            self._put_if(key, body, IfNoneMatch="*", Metadata=meta)
            if current is None
            else self._put_if(key, body, IfMatch=current[1], Metadata=meta)
        )
        if not ok:
            raise ConflictError(
                f"channel {name}:{channel} on remote {self.spec.name} moved while pushing",
                f"Run `registry ls --remote {self.spec.name}` to see where it is now, then"
                " push again if it should still move.",
            )
        return True

    def present(self, wanted: dict[str, int]) -> set[str]:
        """Which of `wanted` (digest -> size) the remote holds with the right size."""
        if len(wanted) <= HEAD_LIMIT:

            def head(digest: str) -> str | None:
                try:
                    resp = self.client.head_object(Bucket=self.bucket, Key=self.blob_key(digest))
                except Exception as exc:
                    if self._is_code(exc, "NoSuchKey", "404", "NotFound"):
                        return None
                    raise
                return digest if int(resp["ContentLength"]) == wanted[digest] else None

            with ThreadPoolExecutor(max_workers=8) as pool:
                return {d for d in pool.map(head, wanted) if d is not None}
        base = self.key("blobs/sha256/")
        have = {}
        for key, size in self._list(base):
            have[f"sha256:{key[len(base) :]}"] = size
        return {d for d, s in wanted.items() if have.get(d) == s}

    def present_piece_lists(self, digests: Sequence[str]) -> set[str]:
        """Which of the files `digests` the remote holds a piece list for (one HEAD each
        up to HEAD_LIMIT, else one listing of pieces/). A list is written only after every
        piece it names (by any pusher), so a listed file's pieces are there."""
        if not digests:
            return set()
        if len(digests) <= HEAD_LIMIT:

            def head(digest: str) -> str | None:
                try:
                    self.client.head_object(Bucket=self.bucket, Key=self.pieces_key(digest))
                except Exception as exc:
                    if self._is_code(exc, "NoSuchKey", "404", "NotFound"):
                        return None
                    raise
                return digest

            with ThreadPoolExecutor(max_workers=8) as pool:
                return {d for d in pool.map(head, digests) if d is not None}
        base = self.key("pieces/")
        listed = {hex_name(key[len(base) :]) for key, _size in self._list(base)}
        return {d for d in digests if d in listed}

    def upload_blobs(
        self,
        reg: Registry,
        blobs: dict[str, int],
        progress: ProgressFactory | None,
        label: str,
    ) -> None:
        """Upload blob files in parallel through boto3's transfer manager, verified, each
        byte hashed with SHA-256 once on the client.

        A single-PUT object over plain http is checked by `_SignedPayloadCheck` on the
        hash SigV4 computes anyway. Every other file is re-hashed in a side thread while
        its parts upload; the request that makes the object exist (PutObject, or
        CompleteMultipartUpload after the parts) waits for that hash and is refused if the
        bytes do not match the digest, so a rotten local blob never becomes a remote one
        (boto3 then aborts the multipart upload). The parts read the file in parallel, as a
        plain upload_file does, and carry a CRC32 each (botocore computes it in C; over
        https the payload is unsigned and the CRC32 goes in a trailer).
        """
        if not blobs:
            return
        from concurrent.futures import Future

        from boto3.s3.transfer import create_transfer_manager

        config = upload_config()
        on_bytes = progress(label, sum(blobs.values())) if progress else None
        checks: dict[str, Future[None]] = {}

        def gate(params: dict[str, Any], **_: Any) -> None:
            check = checks.get(params.get("Key", ""))
            if check is not None:
                check.result()  # raises IntegrityError: the request is never sent

        events = self.client.meta.events
        hooks = [f"before-parameter-build.s3.{op}" for op in
                 ("PutObject", "CompleteMultipartUpload")]  # fmt: skip
        for hook in hooks:  # a unique_id is per emitter, not per event: one each
            events.register(hook, gate, unique_id=f"{hook}-registry-verify-{id(self)}")
        signed = _SignedPayloadCheck()
        hooks.append("before-send.s3.PutObject")
        events.register(hooks[-1], signed, unique_id=f"{hooks[-1]}-registry-verify-{id(self)}")
        plain_http = str(self.client.meta.endpoint_url).startswith("http://")
        try:
            with (
                ThreadPoolExecutor(max_workers=4) as hashers,
                create_transfer_manager(self.client, config) as tm,
            ):
                futures = []
                for digest, size in sorted(blobs.items(), key=lambda kv: -kv[1]):
                    path, key = reg.store.path(digest), self.blob_key(digest)
                    single = size < config.multipart_threshold
                    if single and plain_http:
                        signed.blobs[key] = (path, digest, size)
                    else:
                        checks[key] = hashers.submit(_verify_file, path, digest, size)
                    sha = base64.b64encode(bytes.fromhex(hex_of(digest))).decode()
                    extra = (
                        {"ChecksumSHA256": sha}  # S3 checks the whole object against it
                        if single
                        else {"ChecksumAlgorithm": PART_CHECKSUM}  # a CRC32 for every part
                    )
                    futures.append(tm.upload(str(path), self.bucket, key, extra_args=extra,
                                             subscribers=_subscribers(size, on_bytes)))  # fmt: skip
                for f in futures:
                    f.result()
        finally:
            for hook in hooks:
                events.unregister(hook, unique_id=f"{hook}-registry-verify-{id(self)}")

    def abort_stale_uploads(self, older_than: float) -> int:
        """Abort incomplete multipart uploads of blobs started more than `older_than` s ago.

        A killed push leaves its multipart upload open (invisible, but billed). A younger
        one may belong to a push still running, so it is left alone; a bucket lifecycle
        rule (AbortIncompleteMultipartUpload) is the belt to these braces.
        """
        import datetime as dt

        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        n = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key("blobs/")):
            for up in page.get("Uploads", []) or []:
                if up["Initiated"] <= cutoff:
                    with contextlib.suppress(Exception):
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        n += 1
        return n

    # --- pull -------------------------------------------------------------------------

    def resolve(self, ref: str) -> dict[str, Any]:
        """The remote entry (name, version, digest, channels) a reference names."""
        parsed = refs.parse(ref)
        if not self.check_format(create=False):
            raise RemoteError(
                f"remote {self.spec.name} holds no bundles yet",
                f"Push one first: `registry push NAME:vN --remote {self.spec.name}`.",
            )
        if parsed.name is not None and parsed.version is not None:
            got = self.get_ref(parsed.name, f"v{parsed.version}")
            if got is not None:
                return {"name": parsed.name, "version": parsed.version, "digest": got[0],
                        "channels": []}  # fmt: skip
        elif parsed.name is not None and parsed.channel is not None:
            got = self.get_ref(parsed.name, parsed.channel)
            if got is not None:
                v = got[2].get("version", "")
                ok = v.isascii() and v.isdigit() and len(v) <= 9  # never int() of 4,300 digits,
                # nor of '\u00b2' (a latin-1 header byte isdigit() accepts; sync.MAX_VERSION)
                return {"name": parsed.name, "version": int(v) if ok else None,
                        "digest": got[0], "channels": [parsed.channel]}  # fmt: skip
        return pick(parsed, self.list(), self.spec.name)

    @locks.writer("pull")
    def pull(
        self, reg: Registry, ref: str, *, actor: str, progress: ProgressFactory | None = None
    ) -> PullResult:
        t0 = time.perf_counter()
        ref = remote_channel_ref(ref, self.spec.name)
        parsed = refs.parse(ref)
        fetching: dict[str, int] = {}
        with note_kept_blobs(reg, fetching), self.errors(f"pull {ref}"):
            entry = self.resolve(ref)
            bundle = self.fetch_bundle(entry["digest"], entry["name"])
            need = missing_blobs(reg, bundle)
            # A file the remote holds as pieces comes as the pieces this store lacks.
            lists = self.fetch_piece_lists(need)
            names = file_names(bundle)
            fetch = {d: s for d, s in need.items() if d not in lists}
            fetch.update(pieces_lacking(reg.store, lists.values()))
            fetching.update(fetch)
            listed = sum(len(pl.to_bytes()) for pl in lists.values())
            result = PullResult(
                self.spec.name,
                bundle.digest,
                tag="",
                remote_tag=f"{bundle.name}:v{entry['version']}" if entry["version"] else ref,
                # a pieced file counts as its list and its pieces, in both figures
                blobs=len(bundle.file_blobs()) + sum(len(pl.pieces) for pl in lists.values()),
                blobs_fetched=len(fetch) + len(lists),
                bytes_total=sum(bundle.file_blobs().values()) + listed,
                bytes_fetched=sum(fetch.values()) + listed,
            )
            what = piece_names(lists, names)
            self.download_blobs(reg, fetch, progress, f"pull {result.remote_tag}", what=what)
            for digest, pl in sorted(lists.items()):
                where = f"remote {self.spec.name}: {names.get(digest, short(digest))}"
                adopt_pieces(reg.store, pl, where)  # the whole file's sha256, then the list
            store_manifests(reg, bundle)
            trust_in = self.fetch_trust(bundle.digest)  # all network, before any row
            creation, creation_note = self.fetch_creation(bundle.digest)
            if creation_note:
                result.notes.append(creation_note)
            imported = import_bundle(
                reg, bundle, entry["version"], actor, remote=self.spec.name, creation=creation
            )
            # Before the side blobs: the evidence of pulled gate runs comes along with them.
            trust = import_trust(reg, actor, bundle.digest, self.spec.name, **trust_in)
            lacking = fetch_side_blobs(reg, bundle.digest, self._fetch_side)
        result.gate_runs, result.signatures = trust.gate_runs, trust.signatures
        result.notes += trust.notes
        if lacking:
            result.notes.append(
                f"{len(lacking)} policy or gate-evidence blob(s) this registry's database"
                f" names are neither here nor on {self.spec.name} (e.g. {short(lacking[0])});"
                " push from the registry that has them"
            )
        result.tag, result.created = imported.tag, imported.created
        if imported.note:
            result.notes.append(imported.note)
        if parsed.channel is not None:
            result.channel = parsed.channel
            result.tracking = f"{self.spec.name}/{parsed.channel}"
            result.tracking_moved = track_channel(
                reg, self.spec.name, bundle.name, parsed.channel, bundle.digest
            )
        result.seconds = time.perf_counter() - t0
        return result

    def fetch_trust(self, bundle_digest: str) -> dict[str, Any]:
        """The attestations, signatures and signer keys the remote holds for the bundle,
        fetched now (`import_trust`'s arguments; sync.prefetch)."""
        bundle_hex = hex_of(bundle_digest)
        base = self.key(f"attestations/{bundle_hex}/")
        attestations = {}
        for key, _size in self._list(base):
            digest = hex_name(key[len(base) :])
            if digest is not None:
                attestations[digest] = self._blob_loader(digest, MAX_ATTESTATION)
        base = self.key(f"signatures/{bundle_hex}/")
        signatures: dict[str, tuple[str | None, Any]] = {}
        for key, _size in self._list(base):
            key_id = key_id_of(key[len(base) :])
            got = self._get_small(key, MAX_REF) if key_id else None
            if key_id is None or got is None:
                continue
            try:
                digest = check_digest(got[0].decode("ascii").strip(), f"signature by {key_id}")
            except (UnicodeDecodeError, RegistryError):
                signatures[key_id] = (None, _refuse(f"{key} does not hold a digest"))
                continue
            signatures[key_id] = (digest, self._blob_loader(digest, MAX_SIGNATURE))

        def public_key(key_id: str) -> bytes | None:
            got = self._get_small(self.key(f"keys/{key_hex(key_id)}.pub"), MAX_PUBLIC_KEY)
            return got[0] if got else None

        return prefetch(attestations, signatures, public_key)

    def fetch_creation(self, bundle_digest: str) -> tuple[Creation | None, str | None]:
        """The remote's creation record of the bundle, checked (sync.parse_creation):
        (Creation or None, note). Absent on remotes pushed to before records existed."""
        try:
            got = self._get_small(self.creation_key(bundle_digest), MAX_CREATION_RECORD)
        except IntegrityError as exc:  # larger than the limit: refused unread
            return None, f"the creation record on {self.spec.name} refused: {exc}; ignored"
        return parse_creation(got[0] if got else None, bundle_digest, self.spec.name)

    def fetch_piece_lists(self, files: dict[str, int]) -> dict[str, PieceList]:
        """The piece lists the remote holds for `files` (digest -> size), each checked as
        the untrusted input it is (PieceList.from_bytes: schema, the file it names, piece
        digests, sizes adding up to the file's size from its manifest)."""
        if len(files) <= HEAD_LIMIT:
            candidates = list(files)  # one GET each (a 404 is the answer "stored whole")
        else:
            candidates = sorted(self.present_piece_lists(list(files)))
        out: dict[str, PieceList] = {}

        def get(digest: str) -> tuple[str, bytes | None]:
            got = self._get_small(self.pieces_key(digest), MAX_MANIFEST)
            return digest, got[0] if got else None

        with ThreadPoolExecutor(max_workers=8) as pool:
            for digest, data in pool.map(get, candidates):
                if data is None:
                    continue
                try:
                    pl = PieceList.from_bytes(data, digest)
                except IntegrityError as exc:
                    raise IntegrityError(
                        f"remote {self.spec.name}: {exc}",
                        "The remote is corrupt or was tampered with; nothing was imported.",
                    ) from None
                if pl.size != files[digest]:
                    raise IntegrityError(
                        f"remote {self.spec.name}: the piece list of {short(digest)} is for"
                        f" {pl.size} bytes, its manifest says {files[digest]}",
                        "The remote is corrupt or was tampered with; nothing was imported.",
                    )
                out[digest] = pl
        return out

    def _blob_loader(self, digest: str, limit: int) -> Any:
        def load() -> bytes | None:
            got = self._get_small(self.blob_key(digest), limit)  # IntegrityError if larger
            return got[0] if got else None

        return load

    def _fetch_side(self, digest: str) -> bytes | None:
        got = self._get_small(self.blob_key(digest), MAX_MANIFEST)
        return got[0] if got else None

    def fetch_bundle(self, digest: str, name: str | None) -> BundleBlobs:
        """The bundle manifest and its component manifests, each verified."""

        def fetch(d: str) -> bytes:
            got = self._get_small(self.blob_key(d), MAX_MANIFEST)
            if got is None:
                raise IntegrityError(
                    f"remote {self.spec.name} lacks manifest {short(d)}",
                    "The remote is incomplete; push the bundle to it again.",
                )
            return got[0]

        return parse_remote_bundle(
            fetch(digest), digest, lambda _kind, desc: fetch(desc.digest), name=name,
            where=f"remote {self.spec.name}",
        )  # fmt: skip

    def download_blobs(
        self,
        reg: Registry,
        blobs: dict[str, int],
        progress: ProgressFactory | None,
        label: str,
        *,
        what: dict[str, str] | None = None,
    ) -> None:
        """Download blobs in parallel into verifying sinks; each enters the store as soon
        as it is complete and sound, so a re-run fetches only what is still missing.

        Memory is bounded whatever the blob sizes: the sinks are seekable, so each chunk
        goes straight to its offset on disk; what is in memory at once is s3transfer's IO
        queue (at most DOWNLOAD_IO_QUEUE chunks of 256 KiB: 8 MiB; a full queue makes the
        download threads wait) plus one read buffer per thread and the sinks' 1 MiB
        hashing reads."""
        if not blobs:
            return
        from boto3.s3.transfer import create_transfer_manager

        reg.store.init()
        on_bytes = progress(label, sum(blobs.values())) if progress else None
        sinks: list[OffsetSink] = []
        first_error: BaseException | None = None
        failed = ""
        try:
            with create_transfer_manager(self.client, download_config()) as tm:
                futures = []
                for digest, size in sorted(blobs.items(), key=lambda kv: -kv[1]):
                    sink = OffsetSink(reg.store, digest, size)
                    sinks.append(sink)
                    futures.append(
                        tm.download(
                            self.bucket,
                            self.blob_key(digest),
                            # A seekable file object: s3transfer writes each chunk at its
                            # offset instead of buffering out-of-order parts (its non-seekable
                            # path holds them in memory); types-s3transfer declares IO[Any].
                            sink,  # type: ignore[arg-type]
                            subscribers=_subscribers(size, on_bytes),
                        )
                    )
                for sink, fut in zip(sinks, futures, strict=True):
                    try:
                        fut.result()
                        sink.commit()
                    except BaseException as exc:
                        sink.discard()
                        if first_error is None:
                            first_error, failed = exc, sink.digest
        finally:
            for sink in sinks:
                sink.discard()  # no-op for a committed sink
        if first_error is not None:
            named = (what or {}).get(failed)
            if self._is_code(first_error, "NoSuchKey", "404"):  # type: ignore[arg-type]
                raise IntegrityError(
                    f"remote {self.spec.name} lacks "
                    + (named or f"blob {short(failed)}, which its manifests list"),
                    "The remote is incomplete; push the bundle to it again.",
                ) from first_error
            if named and isinstance(first_error, IntegrityError):
                raise IntegrityError(
                    f"remote {self.spec.name}: {named} does not match its digest",
                    "The remote copy is corrupt; nothing referencing it was imported.",
                ) from first_error
            raise first_error
