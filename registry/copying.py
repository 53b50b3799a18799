"""Moving a file's bytes into the store: copied in the kernel where it can be
(copy_file_range, or a reflink clone), else through user space, and hashed as they
landed, so a blob's name is the digest of exactly the bytes stored (docs/design.md, "Local
registry"). Used by registry/store.py for whole blobs and registry/piece_io.py for pieces."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
Progress = Callable[[int], None]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_reflink(src_fd: int, dst_fd: int) -> bool:
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
NO_KERNEL_COPY = (
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

    thread = start_producer(copier, chunks, error, "blob-copier")
    return hash_as_copied(chunks, dst_fd, thread, stop, error, progress)


def start_producer(
    body: Callable[[], None], out: queue.Queue[Any], error: list[BaseException], name: str
) -> threading.Thread:
    """Run `body` on a daemon thread named `name` that always ends `out` with None and
    appends any exception it raises to `error`, for the thread consuming `out` to raise
    (`hash_as_copied`, piece_io.put_pieces): the copier side of each copy-then-hash
    pipeline here."""

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # reported by the consuming thread
            error.append(exc)
        finally:
            out.put(None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def hash_as_copied(
    chunks: queue.Queue[tuple[int, int] | None],
    dst_fd: int,
    thread: threading.Thread,
    stop: threading.Event,
    error: list[BaseException],
    progress: Progress | None = None,
) -> tuple[str, int]:
    """(sha256, bytes hashed) of what a copier `thread` lands in `dst_fd`: each (offset,
    length) it puts on `chunks` (None when it ends) is read back from `dst_fd`, in order,
    and hashed. Then the copier is stopped, drained and joined, and the first error it
    appended to `error` is raised here."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    total = 0
    try:
        while (item := chunks.get()) is not None:
            off, k = item
            view = memoryview(buf)[:k]
            got = read_exact(dst_fd, view, off)
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


def copy_hashed(src_fd: int, dst_fd: int, progress: Progress | None) -> tuple[str, int]:
    """Kernel copy where the filesystems allow it, else the user-space pipeline."""
    try:
        return kernel_copy_and_hash(src_fd, dst_fd, progress)
    except OSError as exc:
        if exc.errno not in NO_KERNEL_COPY:
            raise
    os.ftruncate(dst_fd, 0)
    os.lseek(dst_fd, 0, os.SEEK_SET)
    os.lseek(src_fd, 0, os.SEEK_SET)
    return copy_and_hash(src_fd, dst_fd, progress)


SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start write-out of dirty pages, do not wait


def writeback_starter() -> Callable[[int], None]:
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
        call(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # an error only means no head start

    return start


def copy_range(
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
            if exc.errno not in NO_KERNEL_COPY:
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
            got = read_exact(src_fd, view, src_off + done)
            written = 0
            while written < got:
                written += os.pwrite(dst_fd, view[written:got], dst_off + done + written)
            done += got
            if got < len(view):
                break
    return done


def read_exact(fd: int, view: memoryview, offset: int) -> int:
    """preadv until `view` is full or the file ends; the number of bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got
