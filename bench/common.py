"""Helpers shared by the benchmarks: timing, medians, synthetic registries."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = [sys.executable, "-m", "cli"]
BIN = Path(sys.executable).parent / "registry"


def use_bytecode() -> None:
    """Time commands as an installed package runs them: from compiled bytecode. With
    PYTHONDONTWRITEBYTECODE set (as in some shells and CI images) every child process
    would compile the project's modules from source again, about 150 ms of each
    `registry` command on the development machine."""
    import compileall

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for package in ("cli", "registry", "gates", "tui"):
        compileall.compile_dir(ROOT / package, quiet=1)


use_bytecode()  # every benchmark imports this module before it times anything


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_of(fn: Callable[[], object], n: int) -> tuple[float, list[float]]:
    times = [timed(fn) for _ in range(n)]
    return statistics.median(times), times


def run_process(args: list[str], cwd: Path | None = None) -> None:
    """Run the installed `registry` console script, as a user would."""
    proc = subprocess.run(
        [str(BIN), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "REGISTRY_ACTOR": "bench"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"registry {' '.join(args)} failed: {proc.stderr}")


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
