"""Whole-process `verify --all` and `gc --dry-run` at 10 vs 10,000 bundles sharing their
components, and `ls` / `ls --json` at 100,000 bundles (issue 17).

    .venv/bin/python bench/bench_scale.py [--bundles 10000] [--ls-bundles 100000] [--repeat 7]

Registries (bench/synth.py): 10 and `--bundles` real bundles whose manifests all name the
same six component manifests (17 small file blobs); `--ls-bundles` synthetic bundle rows
for `ls`. Every command is a fresh process, all of them run once per round, rounds
interleaved, so a busy machine slows each alike; the figures are medians, and each ratio
is taken within a round (median [min-max] over the rounds).

`--compare TREE` also runs every registry command with the code of TREE (a copy of
cli/, registry/, gates/ and tui/ from before a change), interleaved with the current code,
and prints before/after ratios.

Goals: verify and gc at 10,000 within 2x the 10-bundle cost plus the bytes that really
need re-hashing (`floor`: a Python process that reads and sha256s every blob of the large
store, less interpreter start-up), i.e. (large - floor) / small <= 2; `ls` and `ls --json`
at 100,000 bundles under 0.5 s median. Exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BIN, fmt  # noqa: E402

BUILD = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from bench.synth import shared_registry, synthetic_registry
work, n, n_ls = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
shared_registry(work / "small", 10)
shared_registry(work / "large", n)
synthetic_registry(work / "huge", n_ls)
"""
HASH_WALK = """
import hashlib, os, sys
for d, _, names in os.walk(sys.argv[1]):
    for n in names:
        fd = os.open(os.path.join(d, n), os.O_RDONLY)
        data = os.read(fd, 65536)
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        os.close(fd)
        hashlib.sha256(data).hexdigest()
"""  # read as registry.verify.read_small reads a manifest (os.open/os.read, not open())


@dataclass
class Run:
    secs: float  # wall clock, the whole process
    first: float  # seconds to its first byte of output (a streamed table's first screen)
    cpu: float  # user + system seconds: steadier than wall time on a shared machine
    kib: int  # peak RSS


def run(cmd: list[str], old: str | None = None) -> Run:
    """One whole process, its output read and discarded; with `old`, the registry code is
    imported from that tree instead (PYTHONPATH wins over the editable install's finder)."""
    env = {**os.environ, "REGISTRY_ACTOR": "bench"}
    if old:
        env["PYTHONPATH"] = old
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = None
    while os.read(proc.stdout.fileno(), 1 << 16):
        first = first if first is not None else time.perf_counter() - t
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        why = proc.stderr.read().decode(errors="replace")
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {why}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(elapsed, elapsed if first is None else first, cpu, usage.ru_maxrss)


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}x [{min(xs):.2f}-{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=10_000)
    ap.add_argument("--ls-bundles", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument(
        "--compare",
        metavar="TREE",
        help="also run each registry command with the packages of this copy of the tree"
        " (cli/, registry/, gates/, tui/ as before a change), interleaved: before/after",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        t = time.perf_counter()
        small, large, huge = work / "small", work / "large", work / "huge"
        # built in a child, so this process stays small: a child's peak RSS (wait4)
        # includes what it inherited from its parent before exec
        subprocess.run([sys.executable, "-c", BUILD, str(work), str(args.bundles),
                        str(args.ls_bundles)], check=True)  # fmt: skip
        print(f"built registries in {fmt(time.perf_counter() - t)}")

        def reg(path: Path, *rest: str) -> list[str]:
            return [str(BIN), "--registry", str(path), *rest]

        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "floor: hash every blob (large)": [
                sys.executable,
                "-c",
                HASH_WALK,
                str(large / "blobs"),
            ],
            "verify --all (10)": reg(small, "verify", "--all"),
            f"verify --all ({args.bundles})": reg(large, "verify", "--all"),
            "gc --dry-run (10)": reg(small, "gc", "--dry-run"),
            f"gc --dry-run ({args.bundles})": reg(large, "gc", "--dry-run"),
            "ls (10)": reg(small, "ls"),
            f"ls ({args.ls_bundles})": reg(huge, "ls"),
            f"ls --json ({args.ls_bundles})": reg(huge, "ls", "--json"),
        }
        runs: dict[str, list[Run]] = {k: [] for k in cases}
        if args.compare:
            for key in [k for k in cases if cases[k][0] == str(BIN)]:
                runs[f"before: {key}"] = []
        for _ in range(args.repeat):
            for key, cmd in cases.items():
                runs[key].append(run(cmd))
                if f"before: {key}" in runs:
                    runs[f"before: {key}"].append(run(cmd, args.compare))
    finally:
        shutil.rmtree(work)

    times = {k: [r.secs for r in v] for k, v in runs.items()}
    cpu = {k: [r.cpu for r in v] for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.repeat} interleaved rounds (whole processes, SQLite)")
    for key, rs in runs.items():
        print(
            f"  {key:34s} {fmt(med[key]):>10s}  CPU {fmt(statistics.median(cpu[key])):>10s}"
            f"  first output {fmt(statistics.median(r.first for r in rs)):>10s}"
            f"  peak RSS {statistics.median(r.kib for r in rs) / 1024:.1f} MiB"
        )
    keys = list(cases)
    missed = []
    for small_key, large_key in ((keys[2], keys[3]), (keys[4], keys[5])):
        for what, t in (("wall", times), ("CPU", cpu)):
            s, big, floor, base = t[small_key], t[large_key], t[keys[1]], t[keys[0]]
            raw = [b / a for a, b in zip(s, big, strict=True)]
            rounds = zip(s, big, floor, base, strict=True)
            net = [(b - max(0.0, f - p)) / a for a, b, f, p in rounds]
            ok = statistics.median(net) <= 2.0
            if what == "wall":  # the goal is wall time; CPU time is the steadier witness
                missed += [] if ok else [large_key]
            print(
                f"{large_key} / {small_key} ({what}): {spread(raw)}; less the re-hash floor:"
                f" {spread(net)} (goal <= 2x){'' if ok else '  MISSED'}"
            )
    for key in keys[7:]:
        ok = med[key] < 0.5
        missed += [] if ok else [key]
        ratio = [b / a for a, b in zip(times[keys[6]], times[key], strict=True)]
        first = statistics.median(r.first for r in runs[key])
        print(
            f"{key}: {fmt(med[key])}, first output at {fmt(first)} ({spread(ratio)} of ls at 10;"
            f" goal < 500 ms){'' if ok else '  MISSED'}"
        )
    if args.compare:
        for small_key, large_key in ((keys[2], keys[3]), (keys[4], keys[5])):
            a, b = times[f"before: {small_key}"], times[f"before: {large_key}"]
            ratio = [y / x for x, y in zip(a, b, strict=True)]
            print(f"before: {large_key} / {small_key}: {spread(ratio)}")
    for key in [k for k in cases if f"before: {k}" in times]:
        speedup = [b / a for a, b in zip(times[key], times[f"before: {key}"], strict=True)]
        print(f"before / after, {key}: {spread(speedup)}")
    if missed:
        raise SystemExit(f"goal missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
