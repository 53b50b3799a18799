"""Storing and reading pieced files (docs/design.md, "Pieces"): the ingest that copies
each piece into the store and hashes it, for itself and for the whole file, as it landed;
the streaming reassembly behind `export`; the seekable reader behind `open_stream`; and
verify's check of a pieced file. The piece list format and the plan of cuts are
registry/pieces.py; the blob store (registry/store.py) calls in here for pieced files."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from registry.copying import (
    CHUNK,
    SYNC_EVERY,
    Progress,
    copy_range,
    fsync_dir,
    hash_as_copied,
    read_exact,
    start_producer,
    writeback_starter,
)
from registry.digest import Descriptor, short
from registry.errors import IntegrityError, InvalidInputError
from registry.pieces import PieceList

if TYPE_CHECKING:
    import mmap

    from registry.store import BlobStore


HASH_CHUNK = 4 * 1024 * 1024  # what the pieced ingest hashes at a time
WINDOWS = 3  # HASH_CHUNK windows mapped at most, read by the piece's and the file's hash


def _assemble(store: BlobStore, pl: PieceList, dst_fd: int, durable: bool) -> tuple[str, int]:
    """Copy `pl`'s pieces to their offsets in `dst_fd` (a copier thread, in the kernel
    where it can) and hash what landed, in file order; (digest, bytes hashed)."""
    chunks: queue.Queue[tuple[int, int] | None] = queue.Queue(maxsize=8)
    error: list[BaseException] = []
    stop = threading.Event()

    def copier() -> None:
        kernel, since = [True], 0
        for offset, piece in pl.offsets():
            pfd = os.open(store.path(piece.digest), os.O_RDONLY)
            try:
                pos = 0
                while pos < piece.size and not stop.is_set():
                    k = min(CHUNK, piece.size - pos)
                    if copy_range(pfd, pos, dst_fd, offset + pos, k, kernel) < k:
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

    thread = start_producer(copier, chunks, error, "piece-copier")
    return hash_as_copied(chunks, dst_fd, thread, stop, error)


def hash_landed(fd: int, n: int, windows: Windows, progress: Progress | None) -> str:
    """The digest of the `n` bytes of `fd` (exactly its size), fed to the whole file's
    hash as well (`windows.whole`).

    Both hash the file's page-cache pages in place, through mmap windows of HASH_CHUNK
    (no copy out of the page cache: a third less CPU than reading into a buffer, measured
    in bench/README.md), which `windows` keeps mapped until the whole-file hash has read
    them, WINDOWS at most (12 MiB), so what the process holds is bounded whatever the
    piece or file size."""
    import mmap

    h = hashlib.sha256()
    for at in range(0, n, HASH_CHUNK):
        size = min(HASH_CHUNK, n - at)
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=at)
        view = memoryview(mm)
        seq = windows.whole.update(view[:])
        windows.add(mm, view, seq)  # before hashing: closed by `windows` on any error
        with view[:] as mine:
            h.update(mine)
        if progress:
            progress(size)
    return f"sha256:{h.hexdigest()}"


class Windows:
    """The mmap windows of the pieces of one file, each kept mapped until the whole-file
    hash (`whole`) has read it, `limit` at most, across the pieces' boundaries: so neither
    hash waits for the other at the end of each piece, and the scheduler may run either
    ahead by a few windows. A window outliving its piece's descriptor, or its temp file's
    name, is harmless: a mapping holds its file, whose bytes do not change once landed."""

    def __init__(self, whole: BackgroundHash, limit: int) -> None:
        self.whole = whole
        self._limit = limit
        self._live: collections.deque[tuple[mmap.mmap, memoryview, int]] = collections.deque()

    def add(self, mm: mmap.mmap, view: memoryview, seq: int) -> None:
        self._live.append((mm, view, seq))
        while len(self._live) > self._limit:
            self._unmap()

    def _unmap(self) -> None:
        mm, view, seq = self._live.popleft()
        self.whole.wait(seq)
        view.release()
        mm.close()

    def close(self) -> None:
        while self._live:
            self._unmap()


class BackgroundHash:
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


class Durable:
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


class PiecedReader(io.RawIOBase):
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
            n = read_exact(self._piece_fd(i), view[total : total + want], self._pos - start)
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


def put_pieces(
    store: BlobStore,
    src: Path,
    src_fd: int,
    size: int,
    ranges: list[tuple[int, int]],
    progress: Progress | None,
) -> Descriptor:
    """Store `ranges` of `src_fd` as piece blobs, then the piece list (docs/design.md,
    "Pieces").

    As for a whole blob, the bytes are copied in the kernel (`copy_file_range`, see
    `copy_range`) and hashed as read back from the copy, so each name is the digest
    of exactly the bytes stored: a copier thread copies each piece to a temp file
    while this thread hashes the previous one for its piece and, on a second thread,
    for the whole file. A piece already stored is dropped before it is ever fsync'd;
    a new one is fsync'd and renamed by `Durable`. Memory is bounded (at most WINDOWS
    mmap windows, see `hash_landed`), whatever the piece size."""
    whole = BackgroundHash()
    windows = Windows(whole, WINDOWS)
    durable = Durable()
    copied: queue.Queue[tuple[int, int, Path] | None] = queue.Queue(maxsize=2)
    error: list[BaseException] = []
    stop = threading.Event()
    start_writeback = writeback_starter()
    last_was_new = [True]  # what the newest hashed piece turned out to be

    def copier() -> None:
        kernel = [True]
        for offset, n in ranges:
            if stop.is_set():
                break
            fd, tmp = store.tmpfile()
            try:
                copy_range(src_fd, offset, fd, 0, n, kernel)  # short: seen below
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

    thread = start_producer(copier, copied, error, "piece-copier")
    pieces: list[Descriptor] = []
    try:
        while (item := copied.get()) is not None:
            fd, n, tmp = item
            try:
                if os.fstat(fd).st_size != n:  # the source shrank under the copy
                    raise InvalidInputError(f"{src} changed while it was being stored")
                digest = hash_landed(fd, n, windows, progress)
                pieces.append(Descriptor(digest, n))
                last_was_new[0] = _keep_piece(store, fd, tmp, n, digest, durable)
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
        windows.close()
        digest = whole.close()
        durable.close()
    if len(pieces) != len(ranges) or os.fstat(src_fd).st_size != size:
        raise InvalidInputError(f"{src} changed while it was being stored")
    for d in sorted(durable.dirs):
        fsync_dir(d)
    if store.path(digest).exists():  # already stored whole: the pieces stay unreferenced
        store.touch(digest)
    else:
        store.put_piece_list(PieceList(digest, size, tuple(pieces)))
    return Descriptor(digest, size)


def _keep_piece(
    store: BlobStore, fd: int, tmp: Path, n: int, digest: str, durable: Durable
) -> bool:
    """A hashed piece's temp file: handed to `durable` (fsync, rename) if the piece is
    new, else closed and removed (its bytes were never fsync'd). Whether it was new."""
    dest = store.path(digest)
    stored = digest in durable.pending  # the same bytes twice in one file
    if not stored:
        with contextlib.suppress(FileNotFoundError):
            if dest.stat().st_size == n:
                store.touch(digest)
                stored = True
    if stored:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        return False
    durable.pending.add(digest)
    durable.submit(fd, tmp, dest)
    return True


def copy_out_pieces(store: BlobStore, digest: str, size: int, dest: Path, durable: bool) -> None:
    """Reassemble a pieced file into `dest`: each piece copied into place with
    copy_file_range where the kernel allows (else a user-space copy) by one thread,
    while this one hashes what landed, in order (constant memory); the whole file's
    sha256 must match before `dest` appears."""
    pl = store.listed_pieces(digest)
    if pl.size != size:
        raise IntegrityError(f"blob {digest} is corrupt (its piece list says {pl.size} bytes)")
    for p in pl.pieces:
        if not store.path(p.digest).exists():
            raise IntegrityError(f"piece {p.digest} of blob {digest} is missing from the store")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            actual, n = _assemble(store, pl, fd, durable)
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


def check_pieces(
    store: BlobStore,
    digest: str,
    size: int | None,
    rehash: bool,
    memo: dict[str, str | None] | None,
) -> str | None:
    """`BlobStore.check` of a file not stored whole: None if sound, else the reason."""
    try:
        pl = store.piece_list(digest)
    except IntegrityError as exc:
        return f"piece list corrupt ({exc})"
    if pl is None:
        return "missing"
    if size is not None and pl.size != size:
        return f"size {pl.size} != {size}"
    for p in pl.pieces:
        try:
            have = store.path(p.digest).stat().st_size
        except FileNotFoundError:
            return f"piece {p.digest} missing"
        if have != p.size:
            return f"piece {p.digest} size {have} != {p.size}"
    if not rehash:
        return None
    memo = {} if memo is None else memo
    whole = BackgroundHash()
    bufs = [(bytearray(CHUNK), 0), (bytearray(CHUNK), 0)]
    turn = 0
    try:
        for p in pl.pieces:
            if memo.get(p.digest, None) is not None:
                return memo[p.digest]
            mine = p.digest not in memo
            h = hashlib.sha256()
            fd = os.open(store.path(p.digest), os.O_RDONLY)
            try:
                pos = 0
                while pos < p.size:
                    buf, seq = bufs[turn]
                    whole.wait(seq)
                    view = memoryview(buf)[: min(CHUNK, p.size - pos)]
                    if read_exact(fd, view, pos) != len(view):
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
