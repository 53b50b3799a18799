"""The write-once, content-addressed blob store.

Layout: `blobs/sha256/<2 hex>/<64 hex>`, each file mode 0444, never edited. A blob is
written to `blobs/tmp/` (same filesystem), hashed while written, fsync'd, renamed into
place and its directory fsync'd; only then may anything reference it. Readers need no lock.

A large safetensors file may instead be stored as pieces (registry/pieces.py): each piece
an ordinary blob, plus a piece list at `blobs/pieces/<2 hex>/<64 hex>` named by the whole
file's digest, written only after every piece and its directory are durable. Every reader
here (`has`, `open_stream`, `copy_out`, `read_bytes`, `check`) sees the whole file either way.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from registry.digest import Descriptor, check_digest, hex_of, short
from registry.errors import IntegrityError, InvalidInputError
from registry.pieces import PIECE_SIZE, PieceList, plan

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


_HASH_CHUNK = 4 * 1024 * 1024  # what the pieced ingest hashes at a time
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start write-out of dirty pages, do not wait


def _writeback_starter() -> Callable[[int], None]:
    """A function that starts the disk writing a file's dirty pages without waiting
    (Linux `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`), so a piece's bytes go to
    disk while later pieces are copied and hashed; its fsync then mostly waits for I/O
    already under way. A hint only (durability still comes from the fsync); a no-op where
    the call does not exist."""
    import ctypes

    try:
        call = ctypes.CDLL(None).sync_file_range  # the C library the interpreter links
    except (OSError, AttributeError):
        return lambda fd: None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]

    def start(fd: int) -> None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # an error only means no head start

    return start


def _copy_range(
    src_fd: int, src_off: int, dst_fd: int, dst_off: int, n: int, kernel: list[bool]
) -> int:
    """Copy `n` bytes at `src_off` of `src_fd` to `dst_off` of `dst_fd`: in the kernel
    while `kernel[0]` holds (cleared for good, on this call and later ones, the first time
    the kernel cannot copy between the two files), else through a user-space buffer. The
    bytes copied: fewer than `n` only if the source ended first."""
    done = 0
    while done < n and kernel[0]:
        try:
            got = os.copy_file_range(
                src_fd, dst_fd, min(CHUNK, n - done), src_off + done, dst_off + done
            )
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            kernel[0] = False
            break
        if got == 0:
            return done
        done += got
    if done < n:
        buf = bytearray(min(CHUNK, n - done))
        while done < n:
            view = memoryview(buf)[: min(len(buf), n - done)]
            got = _read_exact(src_fd, view, src_off + done)
            written = 0
            while written < got:
                written += os.pwrite(dst_fd, view[written:got], dst_off + done + written)
            done += got
            if got < len(view):
                break
    return done


def _assemble(store: BlobStore, pl: PieceList, dst_fd: int, durable: bool) -> tuple[str, int]:
    """Copy `pl`'s pieces to their offsets in `dst_fd` (a copier thread, in the kernel
    where it can) and hash what landed, in file order; (digest, bytes hashed)."""
    chunks: queue.Queue[tuple[int, int] | None] = queue.Queue(maxsize=8)
    error: list[BaseException] = []
    stop = threading.Event()

    def copier() -> None:
        kernel, since = [True], 0
        try:
            for offset, piece in pl.offsets():
                pfd = os.open(store.path(piece.digest), os.O_RDONLY)
                try:
                    pos = 0
                    while pos < piece.size and not stop.is_set():
                        k = min(CHUNK, piece.size - pos)
                        if _copy_range(pfd, pos, dst_fd, offset + pos, k, kernel) < k:
                            raise IntegrityError(
                                f"blob {pl.digest} is corrupt (its piece {piece.digest}"
                                f" is shorter than {piece.size} bytes)"
                            )
                        chunks.put((offset + pos, k))
                        pos += k
                        since += k
                        if durable and since >= SYNC_EVERY:
                            os.fdatasync(dst_fd)
                            since = 0
                finally:
                    os.close(pfd)
        except BaseException as exc:  # reported by the hashing thread
            error.append(exc)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=copier, name="piece-copier", daemon=True)
    thread.start()
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    total = 0
    try:
        while (item := chunks.get()) is not None:
            off, k = item
            view = memoryview(buf)[:k]
            got = _read_exact(dst_fd, view, off)
            h.update(view[:got])
            total += got
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                chunks.get(timeout=0.1)
        thread.join()
    if error:
        raise error[0]
    return f"sha256:{h.hexdigest()}", total


def _hash_landed(fd: int, n: int, whole: _BackgroundHash, progress: Progress | None) -> str:
    """The digest of the `n` bytes of `fd` (exactly its size), fed to `whole` as well.

    Both hash the file's page-cache pages in place, through mmap windows of _HASH_CHUNK
    (no copy out of the page cache: a third less CPU than reading into a buffer, measured
    in bench/README.md); at most three windows are mapped, so what the process holds
    stays a few MiB whatever the piece size. `whole` releases each view it is given."""
    import mmap

    h = hashlib.sha256()
    live: collections.deque[tuple[mmap.mmap, memoryview, int]] = collections.deque()

    def unmap() -> None:
        mm, view, seq = live.popleft()
        whole.wait(seq)
        view.release()
        mm.close()

    try:
        for at in range(0, n, _HASH_CHUNK):
            size = min(_HASH_CHUNK, n - at)
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=at)
            view = memoryview(mm)
            live.append((mm, view, whole.update(view[:])))
            with view[:] as mine:
                h.update(mine)
            if progress:
                progress(size)
            if len(live) > 2:
                unmap()
    finally:
        while live:
            unmap()
    return f"sha256:{h.hexdigest()}"


class _BackgroundHash:
    """A sha256 fed from a second thread (hashlib releases the GIL), so two digests of the
    same bytes (a piece's and its whole file's) cost the wall time of one. `update` takes
    a memoryview of the caller's own making (`view[:]`: it is released here once hashed,
    so that an mmap under it can close), whose bytes must not change until `wait` for the
    count `update` returned. An error here reaches the caller at `close`."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[memoryview | None] = queue.Queue()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self.sent = 0
        self._done = 0
        self._thread = threading.Thread(target=self._run, name="whole-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (view := self._q.get()) is not None:
            try:
                if self._error is None:
                    self._h.update(view)
                view.release()
            except BaseException as exc:  # never leave a waiter waiting
                self._error = exc
            finally:
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()

    def update(self, view: memoryview) -> int:
        self.sent += 1
        self._q.put(view)
        return self.sent

    def wait(self, upto: int) -> None:
        with self._cond:
            while self._done < upto:
                self._cond.wait()

    def close(self) -> str:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return f"sha256:{self._h.hexdigest()}"


def _read_exact(fd: int, view: memoryview, offset: int) -> int:
    """preadv until `view` is full or the file ends; the number of bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


class _Durable:
    """fsync, close and rename written temp files on a few threads, so the fsyncs of many
    pieces overlap each other and the reading (the filesystem groups concurrent fsyncs into
    one journal commit). `close` waits for all and raises the first error; the directories
    renamed into (`dirs`) are left for the caller to fsync once each."""

    def __init__(self, workers: int = 4, limit: int = 16) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="piece-fsync")
        self._slots = threading.BoundedSemaphore(limit)  # open temp files at most
        self._futures: list[Future[None]] = []
        self.dirs: set[Path] = set()
        self.pending: set[str] = set()

    def submit(self, fd: int, tmp: Path, dest: Path) -> None:
        self._slots.acquire()
        self._futures.append(self._pool.submit(self._finish, fd, tmp, dest))

    def _finish(self, fd: int, tmp: Path, dest: Path) -> None:
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            self.dirs.add(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for f in self._futures:
            f.result()


def _stored_digests(base: Path) -> Iterator[str]:
    """The digests named by `base/<2 hex>/<64 hex>`, in order (names, not Paths, are
    sorted: sorting 100,000 Paths costs more than listing them)."""
    if not base.is_dir():
        return
    for shard in sorted(os.listdir(base)):
        for name in sorted(os.listdir(base / shard)):
            yield f"sha256:{name}"


class _PiecedReader(io.RawIOBase):
    """A read-only, seekable view of a pieced file's bytes (no verification: copy_out and
    check verify; this serves readers that want a file object, such as the Hub upload)."""

    def __init__(self, store: BlobStore, pl: PieceList) -> None:
        self._store = store
        self._size = pl.size
        self._spans = pl.offsets()
        self._starts = [o for o, _ in self._spans]
        self._pos = 0
        self._fd: int | None = None
        self._fd_index = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _piece_fd(self, index: int) -> int:
        if index != self._fd_index:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            digest = self._spans[index][1].digest
            try:
                self._fd = os.open(self._store.path(digest), os.O_RDONLY)
            except FileNotFoundError:
                raise IntegrityError(f"piece {digest} is missing from the store") from None
            self._fd_index = index
        assert self._fd is not None
        return self._fd

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        import bisect

        view = memoryview(buffer).cast("B")
        total = 0
        while total < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            start, piece = self._spans[i]  # never an empty piece: bisect_right skips them
            want = min(len(view) - total, start + piece.size - self._pos)
            n = _read_exact(self._piece_fd(i), view[total : total + want], self._pos - start)
            if n < want:
                raise IntegrityError(f"piece {piece.digest} is shorter than {piece.size} bytes")
            total += n
            self._pos += n
        return total

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


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

    def _tmpfile(self) -> tuple[int, Path]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        name = self.tmp / f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return fd, name

    def _touch(self, digest: str) -> None:
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
            self._touch(known.digest)
            if progress:
                progress(known.size)
            return known
        src_fd = os.open(src, os.O_RDONLY)
        try:
            if split_above is not None:
                size = os.fstat(src_fd).st_size
                if size > split_above and (ranges := plan(src_fd, size, piece_size)):
                    return self._put_pieces(src, src_fd, size, ranges, progress)
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

    def _put_pieces(
        self,
        src: Path,
        src_fd: int,
        size: int,
        ranges: list[tuple[int, int]],
        progress: Progress | None,
    ) -> Descriptor:
        """Store `ranges` of `src_fd` as piece blobs, then the piece list (docs/design.md,
        "Pieces").

        As for a whole blob, the bytes are copied in the kernel (`copy_file_range`, see
        `_copy_range`) and hashed as read back from the copy, so each name is the digest
        of exactly the bytes stored: a copier thread copies each piece to a temp file
        while this thread hashes the previous one for its piece and, on a second thread,
        for the whole file. A piece already stored is dropped before it is ever fsync'd;
        a new one is fsync'd and renamed by `_Durable`. Memory stays a few MiB (mmap
        windows, see `_hash_landed`), whatever the piece size."""
        whole = _BackgroundHash()
        durable = _Durable()
        copied: queue.Queue[tuple[int, int, Path] | None] = queue.Queue(maxsize=2)
        error: list[BaseException] = []
        stop = threading.Event()
        start_writeback = _writeback_starter()
        last_was_new = [True]  # what the newest hashed piece turned out to be

        def copier() -> None:
            kernel = [True]
            try:
                for offset, n in ranges:
                    if stop.is_set():
                        break
                    fd, tmp = self._tmpfile()
                    try:
                        _copy_range(src_fd, offset, fd, 0, n, kernel)  # short: seen below
                        # Start writing at once if this piece is probably new (the last one
                        # hashed was): a first add keeps the disk busy as the whole-file
                        # copy does, while a release that shares most pieces with an earlier
                        # one does not write pieces it is about to drop.
                        if last_was_new[0]:
                            start_writeback(fd)
                    except BaseException:
                        os.close(fd)
                        tmp.unlink(missing_ok=True)
                        raise
                    copied.put((fd, n, tmp))
            except BaseException as exc:  # reported by the hashing thread
                error.append(exc)
            finally:
                copied.put(None)

        thread = threading.Thread(target=copier, name="piece-copier", daemon=True)
        thread.start()
        pieces: list[Descriptor] = []
        try:
            while (item := copied.get()) is not None:
                fd, n, tmp = item
                try:
                    if os.fstat(fd).st_size != n:  # the source shrank under the copy
                        raise InvalidInputError(f"{src} changed while it was being stored")
                    digest = _hash_landed(fd, n, whole, progress)
                    pieces.append(Descriptor(digest, n))
                    last_was_new[0] = self._keep_piece(fd, tmp, n, digest, durable)
                except BaseException:
                    os.close(fd)
                    tmp.unlink(missing_ok=True)
                    raise
            if error:
                raise error[0]
        finally:
            stop.set()
            while thread.is_alive() or not copied.empty():
                with contextlib.suppress(queue.Empty):
                    if (left := copied.get(timeout=0.1)) is not None:
                        os.close(left[0])
                        left[2].unlink(missing_ok=True)
            thread.join()
            digest = whole.close()
            durable.close()
        if len(pieces) != len(ranges) or os.fstat(src_fd).st_size != size:
            raise InvalidInputError(f"{src} changed while it was being stored")
        for d in sorted(durable.dirs):
            _fsync_dir(d)
        if self.path(digest).exists():  # already stored whole: the pieces stay unreferenced
            self._touch(digest)
        else:
            self.put_piece_list(PieceList(digest, size, tuple(pieces)))
        return Descriptor(digest, size)

    def _keep_piece(self, fd: int, tmp: Path, n: int, digest: str, durable: _Durable) -> bool:
        """A hashed piece's temp file: handed to `durable` (fsync, rename) if the piece is
        new, else closed and removed (its bytes were never fsync'd). Whether it was new."""
        dest = self.path(digest)
        stored = digest in durable.pending  # the same bytes twice in one file
        if not stored:
            with contextlib.suppress(FileNotFoundError):
                if dest.stat().st_size == n:
                    self._touch(digest)
                    stored = True
        if stored:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            return False
        durable.pending.add(digest)
        durable.submit(fd, tmp, dest)
        return True

    def put_piece_list(self, pl: PieceList) -> None:
        """Store the piece list of `pl.digest` (temp, fsync, rename, fsync the directory).
        The caller guarantees every piece is durable. An unreadable list there is replaced."""
        dest = self.pieces_path(pl.digest)
        data = pl.to_bytes()
        with contextlib.suppress(FileNotFoundError):
            if dest.read_bytes() == data:
                self._touch(pl.digest)
                return
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
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)

    def _pieces_or_missing(self, digest: str) -> PieceList:
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
        return cast(BinaryIO, _PiecedReader(self, self._pieces_or_missing(digest)))

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
            return self._check_pieces(digest, size, rehash, memo)
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

    def _check_pieces(
        self, digest: str, size: int | None, rehash: bool, memo: dict[str, str | None] | None
    ) -> str | None:
        try:
            pl = self.piece_list(digest)
        except IntegrityError as exc:
            return f"piece list corrupt ({exc})"
        if pl is None:
            return "missing"
        if size is not None and pl.size != size:
            return f"size {pl.size} != {size}"
        for p in pl.pieces:
            try:
                have = self.path(p.digest).stat().st_size
            except FileNotFoundError:
                return f"piece {p.digest} missing"
            if have != p.size:
                return f"piece {p.digest} size {have} != {p.size}"
        if not rehash:
            return None
        memo = {} if memo is None else memo
        whole = _BackgroundHash()
        bufs = [(bytearray(CHUNK), 0), (bytearray(CHUNK), 0)]
        turn = 0
        try:
            for p in pl.pieces:
                if memo.get(p.digest, None) is not None:
                    return memo[p.digest]
                mine = p.digest not in memo
                h = hashlib.sha256()
                fd = os.open(self.path(p.digest), os.O_RDONLY)
                try:
                    pos = 0
                    while pos < p.size:
                        buf, seq = bufs[turn]
                        whole.wait(seq)
                        view = memoryview(buf)[: min(CHUNK, p.size - pos)]
                        if _read_exact(fd, view, pos) != len(view):
                            return f"piece {p.digest} size changed"
                        bufs[turn] = (buf, whole.update(view[:]))  # a view of its own
                        turn ^= 1
                        if mine:
                            h.update(view)
                        pos += len(view)
                finally:
                    os.close(fd)
                if mine:
                    bad = f"sha256:{h.hexdigest()}" != p.digest
                    memo[p.digest] = f"piece {p.digest} corrupt" if bad else None
                    if bad:
                        return memo[p.digest]
        finally:
            actual = whole.close()
        return None if actual == digest else "corrupt (its pieces reassemble another file)"

    def copy_out(self, digest: str, size: int, dest: Path, *, durable: bool = True) -> None:
        """Write the blob to `dest` (a fresh, writable file), verifying it on the way.

        `durable=False` skips the fsync, for throwaway copies (a gate run's private
        workdir, deleted afterwards) that no crash could leave referenced."""
        src = self.path(digest)
        try:
            src_fd = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            return self._copy_out_pieces(digest, size, dest, durable)
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

    def _copy_out_pieces(self, digest: str, size: int, dest: Path, durable: bool) -> None:
        """Reassemble a pieced file into `dest`: each piece copied into place with
        copy_file_range where the kernel allows (else a user-space copy) by one thread,
        while this one hashes what landed, in order (constant memory); the whole file's
        sha256 must match before `dest` appears."""
        pl = self._pieces_or_missing(digest)
        if pl.size != size:
            raise IntegrityError(f"blob {digest} is corrupt (its piece list says {pl.size} bytes)")
        for p in pl.pieces:
            if not self.path(p.digest).exists():
                raise IntegrityError(f"piece {p.digest} of blob {digest} is missing from the store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                actual, n = _assemble(self, pl, fd, durable)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if actual != digest or n != size:
                raise IntegrityError(
                    f"blob {digest} is corrupt (its pieces reassemble to {short(actual)})"
                )
            os.replace(tmp, dest)
        finally:
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
