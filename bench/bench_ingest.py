"""Ingest of a 1 GiB safetensors-like file vs `openssl dgst -sha256` on the same file,
and the re-add of the unchanged file (stat cache) inside the process.

    .venv/bin/python bench/bench_ingest.py [--size-mib 1024] [--repeat 3]

Goal (issue 2): ingest throughput / openssl throughput >= 0.80; re-add < 0.1 s.
The file is random bytes (not sparse), written once; the page cache is warm for all
sides. A third baseline, `dd conv=fsync` of the same file, is the disk's floor for any
durable copy: ingest cannot beat it, whatever the hash costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt  # noqa: E402


def make_file(path: Path, size: int) -> None:
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    chunk = os.urandom(16 << 20)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    old = time.time() - 10
    os.utime(path, (old, old))  # outside the stat cache's racy window


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    from registry.repo import Registry
    from registry.store import BlobStore

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-ingest-"))
    size = args.size_mib << 20
    src = work / "model.safetensors"
    make_file(src, size)
    total = src.stat().st_size
    subprocess.run(["openssl", "dgst", "-sha256", str(src)], capture_output=True, check=True)

    ssl_times, ingest_times, dd_times = [], [], []
    for i in range(args.repeat):
        t = time.perf_counter()
        subprocess.run(
            ["dd", f"if={src}", f"of={work / 'dd.out'}", "bs=16M", "conv=fsync"],
            capture_output=True,
            check=True,
        )
        dd_times.append(time.perf_counter() - t)
        os.unlink(work / "dd.out")
        t = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", str(src)], capture_output=True, check=True)
        ssl_times.append(time.perf_counter() - t)
        store = BlobStore(work / f"store{i}")
        store.init()
        t = time.perf_counter()
        store.put_file(src)  # hash while copying + fsync + rename
        ingest_times.append(time.perf_counter() - t)
        shutil.rmtree(work / f"store{i}")
    ssl, ing = statistics.median(ssl_times), statistics.median(ingest_times)
    dd = statistics.median(dd_times)
    gbps = lambda s: total / s / 1e9  # noqa: E731
    print(f"file: {total / 2**30:.2f} GiB; medians of {args.repeat}")
    print(f"openssl dgst -sha256: {fmt(ssl)}  ({gbps(ssl):.2f} GB/s)")
    runs = ", ".join(fmt(t) for t in ingest_times)
    print(f"registry ingest:      {fmt(ing)}  ({gbps(ing):.2f} GB/s)  [{runs}]")
    print(f"dd conv=fsync (durable copy, no hash): {fmt(dd)}  ({gbps(dd):.2f} GB/s)")
    print(f"ratio ingest/openssl throughput: {ssl / ing:.2f}  (goal >= 0.80)")
    print(f"ratio ingest/dd-fsync throughput: {dd / ing:.2f}  (the disk's durable-write floor)")

    reg = Registry.init(work / "reg")
    from registry.bundles import store_file

    store_file(reg, src)  # first add: hashes and stores
    re_times = []
    for _ in range(5):
        t = time.perf_counter()
        store_file(reg, src)
        re_times.append(time.perf_counter() - t)
    re_add = statistics.median(re_times)
    print(f"re-add of the unchanged file (stat cache), median of 5: {fmt(re_add)} (goal < 0.1 s)")
    reg.close()
    if not args.dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
