"""Pickles recognised by their bytes, not their names (docs/design.md, "How data is kept safe").

A pickle can run code when loaded, whatever the file is called, so every ingested file's
first bytes are looked at: a pickle stream (protocol 2+ opens with PROTO; protocol 0/1 is
recognised when its opcodes parse up to STOP), a zip archive holding a `*.pkl` member
(PyTorch's `.bin`/`.pt` format) or a member whose first bytes are any of these (an `.npz`
of object arrays; only each member's first 4 KiB is read, nothing is extracted), a
`.npy` array of dtype object, and gzip/bz2/xz/zlib/zstd data whose first decompressed bytes
are one of these (at most HEAD bytes are decompressed).

Nothing here unpickles or evaluates anything: opcodes are only tokenized
(`pickletools.genops` decodes arguments, it never builds objects) and the `.npy` header is
matched by a strict regular expression, never `eval`'d.
"""

from __future__ import annotations

import bz2
import io
import lzma
import pickletools
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

HEAD = 64 * 1024  # bytes read from each file, and decompressed from a compressed one
_MAX_DEPTH = 2  # compressed inside compressed, at most
_OPCODES = {op.code.encode("latin-1")[0] for op in pickletools.opcodes}
_CODE_OPS = {"GLOBAL", "INST", "STACK_GLOBAL", "REDUCE", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_MEMBER = (".pkl", ".pickle")
_MAX_MEMBERS = 10_000  # zip members whose first bytes are looked at
_MEMBER_HEAD = 4096
_DESCR_KEY_RE = re.compile(r"""['"]descr['"]\s*:\s*""")
_TOKEN_RE = re.compile(r"""'[^'\n]*'|"[^"\n]*"|[()\[\],]|\s+|\d+|.""")
_OBJECT_TYPE_RE = re.compile(r"^[<>|=]?O\d*\Z", re.ASCII)


def sniff_file(path: Path) -> str | None:
    """What pickle `path` holds ("a pickle (protocol 4)", ...), or None when it holds none."""
    with open(path, "rb") as f:
        head = f.read(HEAD)
        if head.startswith(_ZIP_MAGIC):
            return _zip_file(f)
    return sniff_bytes(head, complete=len(head) < HEAD)


def sniff_bytes(head: bytes, *, complete: bool, depth: int = 0) -> str | None:
    """The same for the first bytes of some data (`complete`: they are all of it)."""
    if head.startswith(_NPY_MAGIC):
        return _npy(head)
    if head.startswith(_ZIP_MAGIC):
        return _zip_head(head)
    if (kind := _pickle(head, complete=complete)) is not None:
        return kind
    if depth < _MAX_DEPTH:
        for name, decompress in _COMPRESSORS:
            if (inner := decompress(head)) is not None:
                if isinstance(inner, _Uncheckable):
                    return (
                        f"{name}-compressed data that cannot be checked for a pickle"
                        " (no zstandard module to decompress it)"
                    )
                found = sniff_bytes(inner[0], complete=inner[1], depth=depth + 1)
                return f"a {name}-compressed {found.removeprefix('a ')}" if found else None
    return None


# --- pickle streams ---------------------------------------------------------------------


def _pickle(head: bytes, *, complete: bool) -> str | None:
    if len(head) < 2 or head[0] not in _OPCODES:
        return None
    if head[0] == 0x80:  # PROTO: protocol 2 and later always open with it
        if 2 <= head[1] <= 5 and (len(head) == 2 or head[2] in _OPCODES):
            return f"a pickle (protocol {head[1]})"
        return None
    # Protocol 0/1: no header. A pickle when its opcodes tokenize cleanly up to STOP, or,
    # for one longer than what was read, when many do and one of them imports or calls.
    count, stopped, code = 0, False, False
    try:
        for op, _arg, _pos in pickletools.genops(io.BytesIO(head)):
            count += 1
            code = code or op.name in _CODE_OPS
            if op.name == "STOP":
                stopped = True
                break
    except Exception:  # noqa: BLE001 - not a pickle, or cut off at HEAD
        pass
    if (stopped and count >= 2) or (not complete and count >= 8 and code):
        return "a pickle (protocol 0/1)"
    return None


# --- zip archives (PyTorch checkpoints) -------------------------------------------------


def _pickle_member(names: list[str]) -> str | None:
    for name in names:
        if name.lower().endswith(_PICKLE_MEMBER):
            return f"a zip archive holding the pickle {name} (a PyTorch checkpoint?)"
    return None


def _zip_file(f: io.BufferedReader) -> str | None:
    """List a zip's member names from its central directory; extract nothing."""
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
            if found := _pickle_member(names):
                return found
            # .npz and other archives: each member's first bytes, whatever its name (an
            # object-dtype .npy, a pickle); zipfile decompresses only what is read.
            for info in zf.infolist()[:_MAX_MEMBERS]:
                if info.is_dir():
                    continue
                with zf.open(info) as member:
                    head = member.read(_MEMBER_HEAD)
                found = sniff_bytes(head, complete=len(head) < _MEMBER_HEAD, depth=_MAX_DEPTH)
                if found:
                    return f"a zip archive whose member {info.filename} is {found}"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return "a zip archive whose members cannot be listed"
    return None


def _zip_head(head: bytes) -> str | None:
    """Member names from the local headers among the first bytes (compressed zips)."""
    names, pos = [], 0
    while (pos := head.find(b"PK\x03\x04", pos)) != -1 and pos + 30 <= len(head):
        n = int.from_bytes(head[pos + 26 : pos + 28], "little")
        names.append(head[pos + 30 : pos + 30 + n].decode("utf-8", "replace"))
        pos += 4
    return _pickle_member(names)


# --- .npy arrays ------------------------------------------------------------------------


def _npy(head: bytes) -> str | None:
    """An object-dtype .npy (its data is a pickle); the header dict is never evaluated."""
    if len(head) < 10:
        return "a .npy file whose header cannot be read"
    major = head[6]
    if major == 1:
        size, start = int.from_bytes(head[8:10], "little"), 10
    elif major in (2, 3) and len(head) >= 12:
        size, start = int.from_bytes(head[8:12], "little"), 12
    else:
        return "a .npy file of an unknown version"
    text = head[start : start + size].decode("latin-1")
    types = _descr_types(text)
    if types is None:
        return "a .npy file whose header cannot be read"
    if any(_OBJECT_TYPE_RE.match(t) for t in types):
        return "a NumPy object array (.npy of dtype object, stored as a pickle)"
    return None


def _descr_types(text: str) -> list[str] | None:
    """The type strings of the header's `descr`, or None when it is not plain literals.

    `descr` is a type string ('<f4', '|O') or a list of fields [('name', '<f4', (2,)),
    ('sub', [...])]; the type is each field's second item. Only quoted strings without
    escapes, brackets, commas, digits and spaces may appear, so nothing numpy's reader
    would decode differently (escapes, b'' prefixes) gets past.
    """
    m = _DESCR_KEY_RE.search(text)
    if m is None:
        return None
    pos, depth, types = m.end(), 0, []
    stack: list[int] = []  # per open tuple: how many items seen so far
    while pos < len(text):
        t = _TOKEN_RE.match(text, pos)
        if t is None:
            return None
        pos, tok = t.end(), t.group()
        if tok[0] in "'\"":
            if "\\" in tok:
                return None
            if depth == 0:
                return [tok[1:-1]]
            if stack and stack[-1] == 1:
                types.append(tok[1:-1])
        elif tok in "([":
            depth += 1
            stack.append(0)
            continue
        elif tok in ")]":
            depth -= 1
            stack.pop()
            if depth == 0:
                return types
        elif tok == ",":
            if stack:
                stack[-1] += 1
            continue
        elif not tok.strip() or tok.isdigit():
            continue
        else:
            return None
        if depth == 0:
            return None
    return None


# --- compressed data --------------------------------------------------------------------


class _Uncheckable:
    """What a decompressor returns for its format's data that it cannot decompress here."""


_UNCHECKABLE = _Uncheckable()
# A decompressor's answer: the head's decompressed start and whether that is all of it.
_Inner = tuple[bytes, bool] | _Uncheckable | None


def _stream(make):  # noqa: ANN001, ANN202
    def decompress(head: bytes) -> tuple[bytes, bool] | None:
        d = make()
        try:
            out = d.decompress(head, HEAD)
        except Exception:  # noqa: BLE001 - not this format after all, or cut off
            return None
        done = bool(getattr(d, "eof", False))
        return (out, done) if out else None

    return decompress


def _magic(magic: bytes, decompress):  # noqa: ANN001, ANN202
    return lambda head: decompress(head) if head.startswith(magic) else None


def _zlib(head: bytes) -> tuple[bytes, bool] | None:
    # A bare zlib stream (joblib's compressed pickles): CMF 0x78 and a valid check.
    if len(head) < 2 or head[0] != 0x78 or (head[0] * 256 + head[1]) % 31:
        return None
    return _stream(zlib.decompressobj)(head)


def _zstd(head: bytes) -> _Inner:
    if not head.startswith(b"\x28\xb5\x2f\xfd"):
        return None
    try:
        import zstandard  # optional: not a dependency
    except ImportError:
        return _UNCHECKABLE
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head))
        out = reader.read(HEAD)
    except Exception:  # noqa: BLE001
        return None
    return (out, len(out) < HEAD) if out else None


_COMPRESSORS: tuple[tuple[str, Callable[[bytes], _Inner]], ...] = (
    ("gzip", _magic(b"\x1f\x8b", _stream(lambda: zlib.decompressobj(wbits=31)))),
    ("bzip2", _magic(b"BZh", _stream(bz2.BZ2Decompressor))),
    ("xz", _magic(b"\xfd7zXZ\x00", _stream(lzma.LZMADecompressor))),
    ("zstd", _zstd),
    ("zlib", _zlib),
)
