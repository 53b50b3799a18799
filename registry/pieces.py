"""Pieces: a large safetensors file stored as its header plus one blob per tensor.

A file above the store's `split_above` threshold whose safetensors header parses and whose
tensors tile the data section exactly is stored as pieces (docs/design.md, "Pieces"):
the header (bytes [0, 8 + header length)) and each tensor's data region, in offset order,
each an ordinary blob; a region larger than `piece_size` is cut into fixed-size pieces and
an empty tensor makes none. A piece list (`blobs/pieces/<2 hex>/<64 hex>`, named by the
WHOLE file's digest) reassembles the file byte for byte, so every manifest, remote and
signature keeps seeing the whole file and its sha256, while two files that share tensors
share their blobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from registry.digest import Descriptor, canonical_json, is_digest, short
from registry.errors import IntegrityError, RegistryError

SCHEMA = "lora-registry/pieces/v1"
SPLIT_ABOVE = 64 * 1024 * 1024  # default `[store] split_above`
PIECE_SIZE = 64 * 1024 * 1024  # default `[store] piece_size`
MIN_PIECE_SIZE = 64 * 1024


@dataclass(frozen=True)
class PieceList:
    """The pieces, in order, whose concatenation is the file `digest` of `size` bytes."""

    digest: str
    size: int
    pieces: tuple[Descriptor, ...]

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "schema": SCHEMA,
                "digest": self.digest,
                "size": self.size,
                "pieces": [p.to_dict() for p in self.pieces],
            }
        )

    def offsets(self) -> list[tuple[int, Descriptor]]:
        """(offset in the file, piece) for every piece."""
        out, pos = [], 0
        for p in self.pieces:
            out.append((pos, p))
            pos += p.size
        return out

    @classmethod
    def from_bytes(cls, data: bytes, digest: str) -> PieceList:
        """Parse an untrusted piece list of file `digest`; IntegrityError if it is not one."""
        from registry.untrusted import load_json

        what = f"piece list of {short(digest)}"
        try:
            obj = load_json(data, what)
        except RegistryError as exc:
            raise IntegrityError(f"{what} is unreadable ({exc})") from None
        if not isinstance(obj, dict) or set(obj) != {"schema", "digest", "size", "pieces"}:
            raise IntegrityError(f"{what} is not a piece list (wrong keys)")
        if obj["schema"] != SCHEMA:
            raise IntegrityError(f"{what} has schema {str(obj['schema'])[:60]!r}, not {SCHEMA}")
        if obj["digest"] != digest:
            raise IntegrityError(f"{what} names another file ({str(obj['digest'])[:80]})")
        size, raw = obj["size"], obj["pieces"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"{what} has an invalid size")
        if not isinstance(raw, list):
            raise IntegrityError(f"{what} has no list of pieces")
        pieces = []
        for i, p in enumerate(raw):
            if (
                not isinstance(p, dict)
                or set(p) != {"digest", "size"}
                or not is_digest(p["digest"])
                or not isinstance(p["size"], int)
                or isinstance(p["size"], bool)
                or p["size"] < 0
            ):
                raise IntegrityError(f"{what} has a malformed piece (#{i})")
            pieces.append(Descriptor(p["digest"], p["size"]))
        if sum(p.size for p in pieces) != size:
            raise IntegrityError(f"{what}: its pieces do not add up to {size} bytes")
        return cls(digest, size, tuple(pieces))


def _cut(begin: int, end: int, piece_size: int) -> list[tuple[int, int]]:
    return [(o, min(piece_size, end - o)) for o in range(begin, end, piece_size)]


def plan(fd: int, size: int, piece_size: int) -> list[tuple[int, int]] | None:
    """The (offset, length) pieces covering [0, size) of the file open as `fd`, or None to
    store it whole (not safetensors, tensors not tiling the data section, or a size that
    is not the file's). The header is parsed by registry.ingest.tensors.read_header, the
    same checks as at ingest; it reopens the file by descriptor (/dev/fd), so `fd`'s own
    offset is left alone."""
    from registry.ingest.tensors import read_header

    if piece_size <= 0:
        raise ValueError("piece_size must be positive")
    try:
        if os.fstat(fd).st_size != size:
            return None
        header = read_header(Path(f"/dev/fd/{fd}"))
    except (RegistryError, OSError):
        return None
    start = header.data_start
    pieces = _cut(0, start, piece_size)
    pos = start
    for begin, end in header.spans:
        if start + begin != pos:  # read_header checked this; a plan must tile regardless
            return None
        pieces += _cut(start + begin, start + end, piece_size)
        pos = start + end
    if pos != size:
        return None
    return pieces
