"""`registry tui` on 10,000 bundles: time to first paint, and keystroke latency.

    .venv/bin/python bench/bench_tui.py [--bundles 10000] [--repeat 5]

Goal (issue 7): the bundles screen paints in under 1 s with 10,000 bundles. Measured:

- process: from starting a fresh interpreter until it has imported the app, opened the
  registry, listed every bundle and painted the first frame of the table (80x24,
  headless): what a user waits for after typing `registry tui`, less the terminal set-up;
- in-process: from constructing the app (registry opened) to that first frame;
- keys: moving the cursor down 50 rows, jumping to the end, and typing a 9-letter filter,
  per key, next to the same on 100 bundles (the table formats only the rows on screen, so
  the two should match).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt  # noqa: E402
from bench.synth import synthetic_registry  # noqa: E402

PROBE = """
import sys, time
from pathlib import Path
from tui.app import RegistryApp
from tui.screens.bundles import BundlesScreen

class Probe(BundlesScreen):
    def reload(self):
        super().reload()
        assert self.table.row_count == int(sys.argv[2])
        self.call_after_refresh(self.app.exit, time.time())

class App(RegistryApp):
    def get_default_screen(self):
        return Probe()

print(App(Path(sys.argv[1])).run(headless=True, size=(80, 24)))
"""


def first_paint_in_process(path: Path, n: int) -> float:
    from tui.app import RegistryApp
    from tui.screens.bundles import BundlesScreen

    t0 = 0.0

    class Probe(BundlesScreen):
        def reload(self) -> None:
            super().reload()
            assert self.table.row_count == n
            self.call_after_refresh(self.app.exit, time.perf_counter() - t0)

    class App(RegistryApp):
        def get_default_screen(self) -> Probe:
            return Probe()

    t0 = time.perf_counter()
    result = App(path).run(headless=True, size=(80, 24))
    assert isinstance(result, float)
    return result


def key_latency(path: Path) -> dict[str, float]:
    from tui.app import RegistryApp
    from tui.widgets.virtual_table import VirtualTable

    out: dict[str, float] = {}

    async def main() -> None:
        app = RegistryApp(path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            table = app.screen.query_one(VirtualTable)
            t = time.perf_counter()
            for _ in range(50):
                await pilot.press("down")
            await pilot.pause()
            out["down (per key)"] = (time.perf_counter() - t) / 50
            t = time.perf_counter()
            await pilot.press("end")
            await pilot.pause()
            out["end"] = time.perf_counter() - t
            assert table.cursor == table.row_count - 1
            await pilot.press("slash")
            t = time.perf_counter()
            await pilot.press(*"model-042")
            await pilot.pause()
            out["filter (per key)"] = (time.perf_counter() - t) / 9
            assert table.row_count == len([r for r in table.rows if "model-042" in r["tag"]])

    asyncio.run(main())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    synthetic_registry(work / "reg", args.bundles)
    synthetic_registry(work / "small", 100)
    try:
        procs = []
        for _ in range(args.repeat):
            t = time.time()  # wall clock: the child reports when it painted on the same clock
            proc = subprocess.run([sys.executable, "-c", PROBE, str(work / "reg"),
                                   str(args.bundles)], capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"probe failed: {proc.stderr[-2000:]}")
            procs.append(float(proc.stdout.strip().splitlines()[-1]) - t)
        inproc = [first_paint_in_process(work / "reg", args.bundles) for _ in range(args.repeat)]
        keys = key_latency(work / "reg")
        baseline = key_latency(work / "small")
    finally:
        shutil.rmtree(work)
    print(f"registry tui, {args.bundles:,} bundles (SQLite), 80x24 headless;"
          f" medians of {args.repeat} runs")  # fmt: skip
    print(f"first paint, whole process:  {fmt(statistics.median(procs))}"
          f"  (min {fmt(min(procs))}, max {fmt(max(procs))}; goal < 1 s)")  # fmt: skip
    print(f"first paint, in process:     {fmt(statistics.median(inproc))}"
          f"  (min {fmt(min(inproc))}, max {fmt(max(inproc))})")  # fmt: skip
    print("keys, through Textual's Pilot (its own pauses included):")
    for name, seconds in keys.items():
        print(
            f"  {name:<18}  {fmt(seconds):>9} with {args.bundles:,}"
            f"  {fmt(baseline[name]):>9} with 100"
        )


if __name__ == "__main__":
    main()
