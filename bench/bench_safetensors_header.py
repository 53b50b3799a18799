"""safetensors header validation: the project's parser vs `safetensors.safe_open`.

    .venv/bin/python bench/bench_safetensors_header.py [--repeat 201] [--quick]

1. Times reading what ingest needs from a header (tensor names, dtypes, shapes and the
   `__metadata__`, every offset checked) with `registry.ingest.tensors.read_header` and
   with `safe_open(path, framework="numpy")` + `keys()` / `metadata()` /
   `get_slice(name).get_dtype()` / `get_shape()`, on a small file (2 tensors), a ~103 MB
   file (20 tensors) and a file of 2,000 tensors. The two are interleaved (alternating
   which goes first), each figure the median of REPEAT calls in this process; the ratio
   is safe_open / project. Also times a fresh interpreter doing one call each way
   (safe_open imports numpy on its first open, whatever the framework).
2. Writes malformed files and prints which of the two refuses each (a table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from registry.errors import InvalidInputError
from registry.ingest.tensors import TensorInfo, read_header


def write(
    path: Path, header: dict | bytes, data: bytes | int = b"", length: int | None = None
) -> Path:
    """A safetensors file: length, header, data (bytes, or a size: a sparse tail of zeros)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + raw)
        if isinstance(data, int):
            f.truncate(8 + len(raw) + data)
        else:
            f.write(data)
    return path


def layout(shapes: list[tuple[str, str, list[int]]]) -> tuple[dict, int]:
    """Header dict tiling the data section, and the data size."""
    size = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header: dict = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, dtype, shape in shapes:
        n = size[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    return header, pos


def real_file(path: Path, shapes: list[tuple[str, str, list[int]]]) -> Path:
    """Written with zeros (not sparse), header padded to 8 bytes like safetensors does."""
    header, size = layout(shapes)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        chunk = b"\0" * (1 << 22)
        left = size
        while left:
            k = min(left, len(chunk))
            f.write(chunk[:k])
            left -= k
    return path


def project(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    h = read_header(path)
    return h.tensors, h.metadata


def library(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        tensors = {}
        for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            s = f.get_slice(k)
            tensors[k] = TensorInfo(k, s.get_dtype(), tuple(s.get_shape()))
    return tensors, metadata


def interleaved(fns: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(n):
        for k in names if i % 2 else names[::-1]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


FRESH = {
    "project": "from pathlib import Path; from registry.ingest.tensors import read_header;"
    " read_header(Path({p!r}))",
    "safe_open": "from safetensors import safe_open\nwith safe_open({p!r}, framework='numpy') as f:"
    " [f.get_slice(k).get_dtype() for k in f.keys()]",
    "python -c pass": "pass",
}


def fresh_processes(path: Path, n: int) -> dict[str, float]:
    def run(code: str) -> Callable[[], object]:
        return lambda: subprocess.run([sys.executable, "-c", code.format(p=str(path))], check=True)

    return interleaved({k: run(v) for k, v in FRESH.items()}, n)


# --- malformed headers ----------------------------------------------------------------------

F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def cases(tmp: Path) -> list[tuple[str, Path]]:
    def w(
        name: str, header: dict | bytes, data: bytes | int = b"", length: int | None = None
    ) -> tuple[str, Path]:
        return name, write(tmp / f"{len(out)}.safetensors", header, data, length)

    out: list[tuple[str, Path]] = []
    z8, z16 = b"\0" * 8, b"\0" * 16
    out.append(("shorter than 8 bytes", tmp / "short.safetensors"))
    (tmp / "short.safetensors").write_bytes(b"\x02\0\0")
    out.append(w("empty header (length 0)", b"", z8))
    out.append(w("header length beyond the file", b"{}", b"", 1000))
    out.append(w("huge header length (2**63-1)", b"{}", b"", 2**63 - 1))
    out.append(w("header length 100 MB + 1 (in a sparse file)", b"{}", 100_000_001, 100_000_001))
    out.append(w("not JSON", b"{not json"))
    out.append(w("not UTF-8", b'{"w\xff": 1}'))
    out.append(w("JSON array, not an object", b"[1, 2]"))
    out.append(w("header with leading space", b' {"w": ' + json.dumps(F32_2).encode() + b"}", z8))
    out.append(
        w(
            "header padded with trailing spaces (valid)",
            json.dumps({"w": F32_2}).encode() + b"   ",
            z8,
        )
    )
    out.append(w("header padded with NULs", json.dumps({"w": F32_2}).encode() + b"\0\0", z8))
    out.append(w("trailing garbage after the JSON", json.dumps({"w": F32_2}).encode() + b"x", z8))
    out.append(w("valid: one F32[2] tensor", {"w": F32_2}, z8))
    out.append(w("valid: no tensors, no data", {}))
    out.append(
        w("valid: zero-size tensor", {"w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
    )
    out.append(w("__metadata__ value not a string", {"__metadata__": {"a": 1}, "w": F32_2}, z8))
    out.append(w("__metadata__ not an object", {"__metadata__": [1], "w": F32_2}, z8))
    out.append(w("__metadata__ null", {"__metadata__": None, "w": F32_2}, z8))
    out.append(w("tensor entry missing data_offsets", {"w": {"dtype": "F32", "shape": [2]}}, z8))
    out.append(w("tensor entry with an extra key", {"w": {**F32_2, "extra": 1}}, z8))
    out.append(w("tensor entry not an object", {"w": [1, 2]}, z8))
    out.append(w("unknown dtype", {"w": {**F32_2, "dtype": "X9"}}, z8))
    out.append(w("lower-case dtype", {"w": {**F32_2, "dtype": "f32"}}, z8))
    out.append(w("negative shape", {"w": {**F32_2, "shape": [-2]}}, z8))
    out.append(w("float in shape", {"w": {**F32_2, "shape": [2.0]}}, z8))
    out.append(
        w("bool in shape", {"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\0")
    )
    out.append(
        w("shape product overflows 64 bits", {"w": {**F32_2, "shape": [2**32, 2**32, 2]}}, z8)
    )
    out.append(w("shape/size mismatch", {"w": {**F32_2, "shape": [3]}}, z8))
    out.append(w("offsets beyond the data", {"w": {**F32_2, "data_offsets": [0, 80]}}, z8))
    out.append(w("offsets reversed", {"w": {**F32_2, "data_offsets": [8, 0]}}, z16))
    out.append(w("offsets not 2 integers", {"w": {**F32_2, "data_offsets": [0]}}, z8))
    out.append(w("offset > 2**64", {"w": {**F32_2, "data_offsets": [0, 2**65]}}, z8))
    out.append(
        w("gap before the first tensor", {"w": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12)
    )
    out.append(
        w("gap between tensors", {"a": F32_2, "b": {**F32_2, "data_offsets": [12, 20]}}, b"\0" * 20)
    )
    out.append(
        w("overlapping tensors", {"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12)
    )
    out.append(w("two tensors on the same bytes", {"a": F32_2, "b": F32_2}, z8))
    out.append(w("data longer than the tensors", {"w": F32_2}, b"\0" * 12))
    d = json.dumps(F32_2)
    out.append(w("duplicate tensor name (same span)", f'{{"w": {d}, "w": {d}}}'.encode(), z8))
    i64 = json.dumps({"dtype": "I64", "shape": [1], "data_offsets": [0, 8]})
    out.append(w("duplicate tensor name (other dtype)", f'{{"w": {d}, "w": {i64}}}'.encode(), z8))
    two = json.dumps({**F32_2, "data_offsets": [8, 16]})
    out.append(w("duplicate tensor name (other span)", f'{{"w": {d}, "w": {two}}}'.encode(), z16))
    out.append(
        w(
            "duplicate key inside an entry",
            b'{"w": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}',
            z8,
        )
    )
    out.append(w("lone surrogate in a name", b'{"\\ud800": ' + d.encode() + b"}", z8))
    out.append(
        w("NaN in the header", b'{"__metadata__": {"a": NaN}, "w": ' + d.encode() + b"}", z8)
    )
    out.append(
        w(
            "metadata nested 100,000 deep",
            b'{"__metadata__": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        )
    )
    return out


def verdict(fn: Callable[[Path], object], path: Path, expected: type[BaseException]) -> str:
    try:
        fn(path)
    except expected as exc:
        msg = " ".join(str(exc).split()).removeprefix("Error while deserializing header: ")
        return "refused: " + (msg[:58] + "..." if len(msg) > 61 else msg)
    except Exception as exc:  # noqa: BLE001 - the table reports any other failure as such
        return f"CRASH {type(exc).__name__}: {str(exc)[:40]}"
    return "accepted"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=201)
    ap.add_argument("--processes", type=int, default=11, help="fresh interpreters per way")
    ap.add_argument("--quick", action="store_true", help="--repeat 51 --processes 5")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.processes = 51, 5
    from safetensors import SafetensorError, __version__

    print(
        f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, safetensors {__version__}"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        small = [("w", "F32", [4, 3]), ("b", "F16", [3])]
        big = [(f"layers.{i}.weight", "F32", [1024, 1257]) for i in range(20)]
        many = [
            (f"base_model.model.layers.{i}.self_attn.{p}.lora_{ab}.weight", "F32", [8, 64])
            for i in range(250)
            for p in ("q_proj", "k_proj", "v_proj", "o_proj")
            for ab in "AB"
        ]
        files = {
            "small (2 tensors)": real_file(tmp / "small.safetensors", small),
            "103 MB (20 tensors)": real_file(tmp / "big.safetensors", big),
            "2,000 tensors": real_file(tmp / "many.safetensors", many),
        }
        print(f"\n1. read a header: medians of {args.repeat} calls in this process, interleaved")
        print(f"{'file':<22} {'size':>10} {'project':>10} {'safe_open':>10} {'ratio':>7}")
        for label, path in files.items():
            a, b = project(path), library(path)
            assert a == b, f"{label}: the two disagree"
            med = interleaved(
                {"project": lambda p=path: project(p), "lib": lambda p=path: library(p)},
                args.repeat,
            )
            print(f"{label:<22} {path.stat().st_size / 1e6:8.1f} MB {med['project'] * 1e3:7.3f} ms"
                  f" {med['lib'] * 1e3:7.3f} ms {med['lib'] / med['project']:6.2f}x")  # fmt: skip
        med = fresh_processes(files["small (2 tensors)"], args.processes)
        base = med["python -c pass"]
        print(f"\nfresh interpreter, one small file, medians of {args.processes} (interleaved):")
        for k, v in med.items():
            print(f"  {k:<15} {v * 1e3:7.1f} ms  (+{(v - base) * 1e3:5.1f} ms over python -c pass)")
        print(f"  ratio safe_open / project, less the interpreter: "
              f"{(med['safe_open'] - base) / (med['project'] - base):.2f}x")  # fmt: skip

        print("\n2. malformed headers: who refuses what")
        print(f"{'case':<46} {'project (read_header)':<64} safe_open")
        gaps = 0
        for name, path in cases(tmp):
            ours = verdict(project, path, InvalidInputError)
            theirs = verdict(library, path, SafetensorError)
            flag = ""
            if (
                ours.startswith("accepted") != theirs.startswith("accepted")
                or "CRASH" in ours + theirs
            ):
                flag, gaps = " <-- differ", gaps + 1
            print(f"{name:<46} {ours:<64} {theirs}{flag}")
        print(f"\n{gaps} case(s) where the two differ (or one crashes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
