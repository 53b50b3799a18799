"""Structural validation of relative paths from manifests, remotes and input directories.

Paths are checked as sequences of components, never with string filters: relative, POSIX
separators only, no empty, `.` or `..` components, no drive letters, no NUL or control
characters, no backslashes or percent-encoded separators.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from registry.errors import InvalidInputError, UnsafePathError

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_ENCODED_SEP_RE = re.compile(r"%(2f|5c|2e)", re.IGNORECASE)
MAX_PATH_LENGTH = 4096


def check_relpath(path: str) -> str:
    """Return `path` unchanged if it is a safe, normalized relative POSIX path."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError("empty path in manifest")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePathError(f"path longer than {MAX_PATH_LENGTH} characters")
    if not _is_utf8(path):
        raise UnsafePathError(
            f"path {_shown(path)} is not valid UTF-8",
            "Rename the file: bundle paths are UTF-8 text.",
        )
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise UnsafePathError(f"path {path!r} contains a control character")
    if "\\" in path or _ENCODED_SEP_RE.search(path):
        raise UnsafePathError(f"path {path!r} contains a backslash or an encoded separator")
    if path.startswith("/") or _DRIVE_RE.match(path):
        raise UnsafePathError(f"path {path!r} is absolute")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"path {path!r} is not normalized (empty, '.' or '..' part)")
    if str(PurePosixPath(path)) != path:
        raise UnsafePathError(f"path {path!r} is not normalized")
    return path


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name (surrogateescape)
        return False
    return True


def _shown(text: str, limit: int = 200) -> str:
    """repr of a path, shortened, with undecodable bytes escaped."""
    shown = repr(text if len(text) <= limit else text[:limit] + "...")
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux and macOS)


def check_user_path(path: Path | str, what: str) -> Path:
    """A path the user typed (an option or argument): short enough for the OS, and text.

    Checked before any file access, so an over-long path is a clean usage error rather
    than the OS's ENAMETOOLONG, and a non-UTF-8 name is refused before it could reach a
    manifest.
    """
    text = os.fspath(path)
    if len(text) > MAX_PATH_LENGTH:
        raise InvalidInputError(
            f"{what}: path is longer than {MAX_PATH_LENGTH} characters ({len(text)})",
            "Use a shorter path, or cd closer to the file.",
        )
    if not _is_utf8(text):
        raise InvalidInputError(
            f"{what}: path {_shown(text)} is not valid UTF-8",
            "Rename it to a UTF-8 name.",
        )
    for part in Path(text).parts:
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidInputError(
                f"{what}: a path component is longer than {MAX_NAME_BYTES} bytes",
                "No file system holds such a name; check the path.",
            )
    return Path(text)


def join_inside(root: Path, relpath: str) -> Path:
    """`root / relpath` after checking `relpath`; the result cannot leave `root`."""
    check_relpath(relpath)
    target = root.joinpath(*relpath.split("/"))
    # Structural check above is the guard; this one catches symlinked parents in `root`.
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(target.parent)
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        raise UnsafePathError(f"path {relpath!r} leaves its directory through a symlink")
    return target


def resolve_inside(root: Path, relpath: str) -> Path:
    """The real path of `root / relpath`, every symlink followed (the file itself too),
    or UnsafePathError when that leaves `root`. For files that are read, never written:
    `join_inside` checks only the parent, since a target being written may not exist."""
    target = join_inside(root, relpath)
    real_root = os.path.realpath(root)
    real = os.path.realpath(target)
    if not real.startswith(real_root + os.sep):
        raise UnsafePathError(f"path {relpath!r} leaves {root} through a symlink")
    return Path(real)


def walk_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under `root` as (relative POSIX path, path), sorted.

    A symlink is followed only if it resolves inside `root`; one that leaves it is an
    error, not silently skipped, because the user asked to register that directory.
    """
    real_root = os.path.realpath(root)
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in list(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if not _is_utf8(rel):
                check_relpath(rel)  # raises: a non-UTF-8 name cannot go in a manifest
            if full.is_symlink():
                real = os.path.realpath(full)
                if real != real_root and not real.startswith(real_root + os.sep):
                    raise UnsafePathError(f"{rel} is a symlink that leaves {root}")
                if name in dirnames:
                    raise UnsafePathError(f"{rel} is a symlinked directory; copy it in instead")
            if name in dirnames:
                continue
            if not full.is_file():
                raise UnsafePathError(f"{rel} is not a regular file")
            out.append((check_relpath(rel), full))
    out.sort()
    return out
