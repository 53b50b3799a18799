"""The write-once, content-addressed blob store.

Layout: `blobs/sha256/<2 hex>/<64 hex>`, each file mode 0444, never edited. A blob is
written to `blobs/tmp/` (same filesystem), hashed while written, fsync'd, renamed into
place and its directory fsync'd; only then may anything reference it. Readers need no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from registry.digest import Descriptor, check_digest, hex_of
from registry.errors import IntegrityError

CHUNK = 8 * 1024 * 1024
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
Progress = Callable[[int], None]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    """Clone `src` into `dst` copy-on-write where the filesystem can (btrfs, XFS, ...)."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF):
            return False
        raise


def hash_fd(fd: int, progress: Progress | None = None) -> tuple[str, int]:
    """sha256 and size of what `fd` holds from its current offset."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
            if progress:
                progress(n)
    return f"sha256:{h.hexdigest()}", size


SYNC_EVERY = 128 * 1024 * 1024
_NO_KERNEL_COPY = (
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EOPNOTSUPP,
    errno.EBADF,
    errno.ENOTSUP,
)


def kernel_copy_and_hash(
    src_fd: int, dst_fd: int, progress: Progress | None = None
) -> tuple[str, int]:
    """Copy with copy_file_range (no user-space copy) and hash what landed in `dst`.

    A copier thread moves 16 MiB chunks in the kernel and starts writeback every 128 MiB,
    so the disk writes while the next chunks are copied; this thread hashes each chunk as
    read back from `dst` (the page cache), so the digest is of exactly the stored bytes
    even if the source changes meanwhile. Raises OSError when the kernel cannot copy
    between these files (the caller falls back to `copy_and_hash`).
    """
    size = os.fstat(src_fd).st_size
    # Probe once on the calling thread, so "unsupported" surfaces before any thread runs.
    first = min(CHUNK, size)
    done = 0
    while done < first:
        n = os.copy_file_range(src_fd, dst_fd, first - done, done, done)
        if n == 0:
            break
        done += n
    chunks: queue.Queue[tuple[int, int] | None] = queue.Queue(maxsize=8)
    error: list[BaseException] = []
    stop = threading.Event()

    def copier() -> None:
        off, since = done, done
        chunks.put((0, done))
        try:
            while off < size and not stop.is_set():
                k = min(CHUNK, size - off)
                got = 0
                while got < k:
                    n = os.copy_file_range(src_fd, dst_fd, k - got, off + got, off + got)
                    if n == 0:  # the source shrank under us
                        break
                    got += n
                chunks.put((off, got))
                off += got
                since += got
                if got < k:
                    break
                if since >= SYNC_EVERY:
                    os.fdatasync(dst_fd)
                    since = 0
        except BaseException as exc:  # reported by the hashing thread
            error.append(exc)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=copier, name="blob-copier", daemon=True)
    thread.start()
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    total = 0
    try:
        while (item := chunks.get()) is not None:
            off, k = item
            view = memoryview(buf)[:k]
            got = os.preadv(dst_fd, [view], off)
            h.update(view[:got])
            total += got
            if progress:
                progress(got)
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                chunks.get(timeout=0.1)
        thread.join()
    if error:
        raise error[0]
    return f"sha256:{h.hexdigest()}", total


def copy_and_hash(src_fd: int, dst_fd: int, progress: Progress | None = None) -> tuple[str, int]:
    """Copy `src` to `dst` and hash the bytes in one pass (user space).

    Reading+hashing and writing run in two threads (hashlib and os.write release the GIL),
    so the copy costs about as much as the hash alone. The writer starts writeback every
    64 MiB so the final fsync does not pay for the whole file at once.
    """
    h = hashlib.sha256()
    free: queue.Queue[bytearray] = queue.Queue()
    full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    for _ in range(4):
        free.put(bytearray(CHUNK))
    error: list[BaseException] = []

    def writer() -> None:
        since_sync = 0
        try:
            while (item := full.get()) is not None:
                buf, n = item
                view = memoryview(buf)[:n]
                while view:
                    written = os.write(dst_fd, view)
                    view = view[written:]
                since_sync += n
                if since_sync >= 64 * 1024 * 1024:
                    os.fdatasync(dst_fd)
                    since_sync = 0
                free.put(buf)
        except BaseException as exc:  # reported by the reader thread
            error.append(exc)
            while full.get() is not None:
                pass

    thread = threading.Thread(target=writer, name="blob-writer", daemon=True)
    thread.start()
    size = 0
    try:
        with os.fdopen(os.dup(src_fd), "rb", buffering=0) as src:
            while not error:
                buf = free.get()
                n = src.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
                size += n
                full.put((buf, n))
                if progress:
                    progress(n)
    finally:
        full.put(None)
        thread.join()
    if error:
        raise error[0]
    return f"sha256:{h.hexdigest()}", size


def _copy(src_fd: int, dst_fd: int, progress: Progress | None) -> tuple[str, int]:
    """Kernel copy where the filesystems allow it, else the user-space pipeline."""
    try:
        return kernel_copy_and_hash(src_fd, dst_fd, progress)
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    os.ftruncate(dst_fd, 0)
    os.lseek(dst_fd, 0, os.SEEK_SET)
    os.lseek(src_fd, 0, os.SEEK_SET)
    return copy_and_hash(src_fd, dst_fd, progress)


class BlobStore:
    """Blobs under `root/blobs`, named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "blobs"
        self.tmp = self.root / "tmp"

    def init(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        h = hex_of(check_digest(digest))
        return self.root / "sha256" / h[:2] / h

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def _tmpfile(self) -> tuple[int, Path]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        name = self.tmp / f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return fd, name

    def _touch(self, digest: str) -> None:
        """Refresh a reused blob's mtime so a concurrent gc's grace period protects it."""
        with contextlib.suppress(OSError):
            os.utime(self.path(digest))

    def _commit(self, tmp: Path, digest: str) -> None:
        """Rename a durable temp file into place (or drop it if the blob already exists)."""
        dest = self.path(digest)
        if dest.exists():
            tmp.unlink()
            self._touch(digest)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)

    def put_bytes(self, data: bytes) -> Descriptor:
        """Store `data`; returns its descriptor. Idempotent."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if self.has(digest, len(data)):
            self._touch(digest)
        else:
            fd, tmp = self._tmpfile()
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
            self._commit(tmp, digest)
        return Descriptor(digest, len(data))

    def put_file(
        self, src: Path, *, known: Descriptor | None = None, progress: Progress | None = None
    ) -> Descriptor:
        """Store the content of `src`, hashing it while it is copied (or cloned).

        `known` is a descriptor from the stat cache: if that blob is already stored the file
        is neither read nor copied.
        """
        if known is not None and self.has(known.digest, known.size):
            self._touch(known.digest)
            if progress:
                progress(known.size)
            return known
        src_fd = os.open(src, os.O_RDONLY)
        try:
            fd, tmp = self._tmpfile()
            try:
                if _try_reflink(src_fd, fd):
                    # Hash the clone, not the source: the clone is what gets stored.
                    read_fd = os.open(tmp, os.O_RDONLY)
                    try:
                        digest, size = hash_fd(read_fd, progress)
                    finally:
                        os.close(read_fd)
                else:
                    digest, size = _copy(src_fd, fd, progress)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
        finally:
            os.close(src_fd)
        self._commit(tmp, digest)
        return Descriptor(digest, size)

    def read_bytes(self, digest: str, *, verify: bool = True) -> bytes:
        """The content of a blob (for manifests and other small blobs)."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"blob {digest} is missing from the store") from None
        if verify and f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise IntegrityError(f"blob {digest} is corrupt (its content has another digest)")
        return data

    def check(self, digest: str, size: int | None, *, rehash: bool = True) -> str | None:
        """None if the blob is sound, else a short reason ("missing", "size", "corrupt")."""
        path = self.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return "missing"
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
            raise IntegrityError(f"blob {digest} is missing from the store") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if _try_reflink(src_fd, fd):
                    actual, n = hash_fd(src_fd)
                else:
                    actual, n = _copy(src_fd, fd, None)
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
        """Every stored blob's digest (for gc and verify --all)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for shard in sorted(base.iterdir()):
            for entry in sorted(shard.iterdir()):
                yield f"sha256:{entry.name}"

    def remove(self, digest: str) -> int:
        """Delete a blob (gc only). Returns the bytes freed."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size
