"""The write-once, content-addressed blob store.

Layout: `blobs/sha256/<2 hex>/<64 hex>`, each file mode 0444, never edited. A blob is
written to `blobs/tmp/` (same filesystem), hashed while written, fsync'd, renamed into
place and its directory fsync'd; only then may anything reference it. Readers need no lock.

A large safetensors file may instead be stored as pieces (registry/pieces.py for the
format, registry/piece_io.py for the I/O): each piece an ordinary blob, plus a piece list
at `blobs/pieces/<2 hex>/<64 hex>` named by the whole file's digest, written only after
every piece and its directory are durable. Every reader here (`has`, `open_stream`,
`copy_out`, `read_bytes`, `check`) sees the whole file either way. How bytes are copied
and hashed is registry/copying.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from registry.copying import Progress, copy_hashed, fsync_dir, hash_fd, try_reflink
from registry.digest import Descriptor, check_digest, hex_of
from registry.errors import IntegrityError
from registry.piece_io import PiecedReader, check_pieces, copy_out_pieces, put_pieces
from registry.pieces import PIECE_SIZE, PieceList, plan


def _stored_digests(base: Path) -> Iterator[str]:
    """The digests named by `base/<2 hex>/<64 hex>`, in order (names, not Paths, are
    sorted: sorting 100,000 Paths costs more than listing them)."""
    if not base.is_dir():
        return
    for shard in sorted(os.listdir(base)):
        for name in sorted(os.listdir(base / shard)):
            yield f"sha256:{name}"


class BlobStore:
    """Blobs under `root/blobs`, named by their sha256 (and piece lists, named by the
    digest of the file they reassemble)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "blobs"
        self.tmp = self.root / "tmp"

    def init(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob `digest` is stored whole (it may be pieced instead: `has`)."""
        h = hex_of(check_digest(digest))
        return self.root / "sha256" / h[:2] / h

    def pieces_path(self, digest: str) -> Path:
        """Where the piece list of the file `digest` is stored, if it is pieced."""
        h = hex_of(check_digest(digest))
        return self.root / "pieces" / h[:2] / h

    def has(self, digest: str, size: int | None = None) -> bool:
        """Whether the file `digest` (of `size` bytes) is stored: whole, or as a piece list
        that parses with every piece present. Anything less counts as absent, so an add or
        a pull stores it again (repairing what is missing)."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            try:
                pl = self.piece_list(digest)
            except IntegrityError:
                return False
            return (
                pl is not None
                and (size is None or pl.size == size)
                and all(self.path(p.digest).exists() for p in pl.pieces)
            )
        return size is None or st.st_size == size

    def piece_list(self, digest: str) -> PieceList | None:
        """The piece list of `digest`; None when it is stored whole or not at all.
        IntegrityError if the list is there but unreadable."""
        try:
            data = self.pieces_path(digest).read_bytes()
        except FileNotFoundError:
            return None
        return PieceList.from_bytes(data, digest)

    def size_of(self, digest: str) -> int | None:
        """The stored size of file `digest` (whole or pieced), None if absent or unreadable."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            pass
        try:
            pl = self.piece_list(digest)
        except IntegrityError:
            return None
        return pl.size if pl is not None else None

    def iter_piece_lists(self) -> Iterator[str]:
        """The digest of every file stored as pieces (for gc and verify --all)."""
        return _stored_digests(self.root / "pieces")

    def tmpfile(self) -> tuple[int, Path]:
        """A new temp file in `blobs/tmp/` (same filesystem as the blobs), open read-write:
        write it, fsync it, then `adopt` it under its digest (or unlink it)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        name = self.tmp / f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return fd, name

    def touch(self, digest: str) -> None:
        """Refresh a reused blob's mtime so a concurrent gc's grace period protects it (a
        pieced file: its piece list and every piece)."""
        try:
            os.utime(self.path(digest))
            return
        except OSError:
            pass
        with contextlib.suppress(OSError, IntegrityError):
            os.utime(self.pieces_path(digest))
            pl = self.piece_list(digest)
            for p in pl.pieces if pl else ():
                with contextlib.suppress(OSError):
                    os.utime(self.path(p.digest))

    def adopt(self, tmp: Path, digest: str) -> None:
        """Rename a durable temp file from `tmpfile` into place as `digest`, which the
        caller has verified it holds (or drop it if the blob already exists)."""
        dest = self.path(digest)
        if dest.exists():
            tmp.unlink()
            self.touch(digest)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)

    def put_bytes(self, data: bytes) -> Descriptor:
        """Store `data`; returns its descriptor. Idempotent."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if self.has(digest, len(data)):
            self.touch(digest)
        else:
            fd, tmp = self.tmpfile()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            self.adopt(tmp, digest)
        return Descriptor(digest, len(data))

    def put_file(
        self,
        src: Path,
        *,
        known: Descriptor | None = None,
        progress: Progress | None = None,
        split_above: int | None = None,
        piece_size: int = PIECE_SIZE,
    ) -> Descriptor:
        """Store the content of `src`, hashing it while it is copied (or cloned).

        `known` is a descriptor from the stat cache: if that blob is already stored the file
        is neither read nor copied. With `split_above`, a larger file that registry.pieces
        can split (valid safetensors whose tensors tile its data) is stored as pieces of
        at most `piece_size` bytes plus a piece list; the descriptor is the whole file's.
        """
        if known is not None and self.has(known.digest, known.size):
            self.touch(known.digest)
            if progress:
                progress(known.size)
            return known
        src_fd = os.open(src, os.O_RDONLY)
        try:
            if split_above is not None:
                size = os.fstat(src_fd).st_size
                if size > split_above and (ranges := plan(src_fd, size, piece_size)):
                    return put_pieces(self, src, src_fd, size, ranges, progress)
            fd, tmp = self.tmpfile()
            try:
                if try_reflink(src_fd, fd):
                    # Hash the clone, not the source: the clone is what gets stored.
                    read_fd = os.open(tmp, os.O_RDONLY)
                    try:
                        digest, size = hash_fd(read_fd, progress)
                    finally:
                        os.close(read_fd)
                else:
                    digest, size = copy_hashed(src_fd, fd, progress)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
        finally:
            os.close(src_fd)
        self.adopt(tmp, digest)
        return Descriptor(digest, size)

    def put_piece_list(self, pl: PieceList) -> None:
        """Store the piece list of `pl.digest` (temp, fsync, rename, fsync the directory).
        The caller guarantees every piece is durable. An unreadable list there is replaced."""
        dest = self.pieces_path(pl.digest)
        data = pl.to_bytes()
        with contextlib.suppress(FileNotFoundError):
            if dest.read_bytes() == data:
                self.touch(pl.digest)
                return
        fd, tmp = self.tmpfile()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)

    def listed_pieces(self, digest: str) -> PieceList:
        """The piece list of a file not stored whole; IntegrityError if there is none."""
        pl = self.piece_list(digest)
        if pl is None:
            raise IntegrityError(f"blob {digest} is missing from the store")
        return pl

    def open_stream(self, digest: str) -> BinaryIO:
        """A read-only, seekable stream of the file's bytes, whole or reassembled from its
        pieces. It does not verify (copy_out and check do). IntegrityError if missing."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            pass
        return cast(BinaryIO, PiecedReader(self, self.listed_pieces(digest)))

    def read_bytes(self, digest: str, *, verify: bool = True) -> bytes:
        """The content of a blob (for manifests and other small blobs)."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            with self.open_stream(digest) as f:
                data = f.read()
        if verify and f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise IntegrityError(f"blob {digest} is corrupt (its content has another digest)")
        return data

    def check(
        self,
        digest: str,
        size: int | None,
        *,
        rehash: bool = True,
        memo: dict[str, str | None] | None = None,
    ) -> str | None:
        """None if the blob is sound, else a short reason ("missing", "size", "corrupt").

        A pieced file: its list readable and valid, every piece present with its size, and
        with `rehash` each piece's sha256 and the whole file's in one pass; the reason names
        the bad piece. `memo` (piece digest -> reason, one per verify run) skips re-hashing
        a piece an earlier file of the run shared; the whole file is always re-hashed."""
        path = self.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return check_pieces(self, digest, size, rehash, memo)
        if size is not None and st.st_size != size:
            return f"size {st.st_size} != {size}"
        if rehash:
            fd = os.open(path, os.O_RDONLY)
            try:
                actual, _ = hash_fd(fd)
            finally:
                os.close(fd)
            if actual != digest:
                return "corrupt"
        return None

    def copy_out(self, digest: str, size: int, dest: Path, *, durable: bool = True) -> None:
        """Write the blob to `dest` (a fresh, writable file), verifying it on the way.

        `durable=False` skips the fsync, for throwaway copies (a gate run's private
        workdir, deleted afterwards) that no crash could leave referenced."""
        src = self.path(digest)
        try:
            src_fd = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            return copy_out_pieces(self, digest, size, dest, durable)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if try_reflink(src_fd, fd):
                    actual, n = hash_fd(src_fd)
                else:
                    actual, n = copy_hashed(src_fd, fd, None)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if actual != digest or n != size:
                raise IntegrityError(f"blob {digest} is corrupt (re-hash gave {actual})")
            os.replace(tmp, dest)
        finally:
            os.close(src_fd)
            tmp.unlink(missing_ok=True)

    def iter_digests(self) -> Iterator[str]:
        """Every digest stored in `blobs/sha256` (whole blobs and pieces; pieced files are
        `iter_piece_lists`), for gc and verify --all."""
        return _stored_digests(self.root / "sha256")

    def remove(self, digest: str) -> int:
        """Delete a blob (gc only), or if it is not stored whole its piece list (its
        pieces are blobs of their own, which gc judges separately). Returns the bytes freed."""
        path = self.path(digest)
        if not path.exists():
            path = self.pieces_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size
