"""Whole-process start-up: `registry --help`, and `registry ls --json` on 10,000 bundles.

    .venv/bin/python bench/bench_cli.py [--bundles 10000] [--repeat 15]

Goals (issue 2): `ls --json` with 10,000 bundles under 0.5 s median; `--help` under
0.35 s median. The baseline measured in the same run is `python -c pass` (interpreter
start-up alone), so the ratio shows what the command adds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, fmt, median_of  # noqa: E402
from bench.synth import synthetic_registry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    synthetic_registry(work / "reg", args.bundles)

    def run(cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=work / "reg")

    base, _ = median_of(lambda: run([sys.executable, "-c", "pass"]), args.repeat)
    helpt, _ = median_of(lambda: run([str(BIN), "--help"]), args.repeat)
    lst, times = median_of(lambda: run([str(BIN), "ls", "--json"]), args.repeat)
    print(f"medians of {args.repeat} runs; registry with {args.bundles} bundles (SQLite)")
    print(f"python -c pass (baseline):  {fmt(base)}")
    print(
        f"registry --help:            {fmt(helpt)}  ({helpt / base:.1f}x baseline; goal < 350 ms)"
    )
    print(
        f"registry ls --json:         {fmt(lst)}  ({lst / base:.1f}x baseline; goal < 500 ms)"
        f"  min {fmt(min(times))} max {fmt(max(times))}"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
