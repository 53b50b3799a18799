"""How far the demo's verdicts sit from their thresholds, per CPU kernel path and seed.

    .venv/bin/python bench/demo_margins.py [--paths default,avx2] [--seeds 0,1,2,3] [-j 2]

Runs `examples/demo.py` once per (ATEN_CPU_CAPABILITY, DEMO_SEED), one torch thread each,
`-j` at a time, then reads the gate runs of v3 (must fail production) and v4 (must pass)
and prints each verdict's margin: how far the judged bound is from the threshold, in the
direction of the verdict the demo narrates (positive = the verdict holds). A margin near
zero means a new CPU or seed could flip the demo. Paths the CPU lacks are skipped.
Figures go into bench/README.md with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = str(Path(sys.executable).parent / "registry")


def runs(reg: Path, tag: str) -> dict[str, dict]:
    out = subprocess.run([REGISTRY, "--registry", str(reg), "gates", "show", tag, "--json"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    latest: dict[str, dict] = {}
    for r in json.loads(out)["runs"]:
        latest[r["gate"]] = r  # newest last
    return latest


def margins(reg: Path) -> dict[str, float | str]:
    v3, v4 = runs(reg, "support-bot:v3"), runs(reg, "support-bot:v4")
    m: dict[str, float | str] = {}

    def g(runs_: dict, gate: str) -> tuple[dict, dict]:
        r = runs_.get(gate) or {"metrics": {}, "thresholds": {}}
        return r["metrics"], r["thresholds"]

    t, th = g(v4, "target-eval")
    m["v4 target: lower - min_delta"] = t["delta_lower"] - th["min_delta"]
    r, th = g(v4, "regression-eval")
    m["v4 regression: max_drop - upper"] = th["max_drop"] - r["drop_upper"]
    r, th = g(v3, "regression-eval")
    m["v3 regression: lower - max_drop"] = r["drop_lower"] - th["max_drop"]
    s, th = g(v4, "safety-eval")
    m["v4 safety: refusal lower - min"] = s["refusal_rate_lower"] - th["min_refusal_rate"]
    m["v4 safety: max - over-refusal upper"] = (
        th["max_over_refusal_rate"] - s["over_refusal_rate_upper"]
    )
    s, th = g(v3, "safety-eval")
    m["v3 safety: refusal rate"] = s["refusal_rate"]
    c, th = g(v4, "calibration")
    m["v4 calibration: max_ece - upper"] = th["max_ece"] - c["ece_upper"]
    x, th = g(v4, "merge-equivalence")
    m["v4 merge: max diff / limit"] = x["max_abs_logit_diff"] / th["max_abs_logit_diff"]
    m["v4 merge: top-1 - min"] = x["top1_agreement"] - th["min_top1_agreement"]
    sv, th = g(v4, "serving-eval")
    for k in ("adapter_latency_ratio", "merged_latency_ratio"):
        if k in sv:
            m[f"v4 serving: {k} / limit"] = sv[k] / th[f"max_{k}"]
    for tag, rr in (("v3", v3), ("v4", v4)):
        tr, th = g(rr, "train")
        m[f"{tag} train: overfitting"] = str(tr.get("overfitting"))
        m[f"{tag} train: status"] = rr.get("train", {}).get("status", "?")
    for tag, rr in (("v3", v3), ("v4", v4)):
        m[f"{tag} gates failed"] = ",".join(sorted(k for k, v in rr.items()
                                                   if v["status"] != "passed")) or "-"  # fmt: skip
    return m


def one(path: str, seed: int, work: Path) -> tuple[str, int, float, int, dict]:
    out = work / f"{path}-{seed}"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": path, "DEMO_SEED": str(seed),
           "REGISTRY_TORCH_THREADS": "1"}  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), str(out)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    secs = time.perf_counter() - t0
    (work / f"{path}-{seed}.log").write_text(proc.stdout + proc.stderr)
    found = margins(out / "registry") if (out / "registry").exists() else {}
    return path, seed, secs, proc.returncode, found


def available(path: str) -> bool:
    """Whether the CPU has the kernel path (torch reports a forced path it cannot run)."""
    flag = {"default": None, "avx2": "avx2", "avx512": "avx512f"}[path]
    if flag is None:
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in line.split() for line in text.splitlines() if line.startswith("flags"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default="default,avx2,avx512")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("-j", type=int, default=2)
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if available(p)]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="demo-margins-"))
    print(f"kernel paths {paths}, seeds {seeds}; logs in {work}", flush=True)
    with ThreadPoolExecutor(args.j) as pool:
        results = list(pool.map(lambda ps: one(*ps, work), [(p, s) for p in paths for s in seeds]))
    keys = list(dict.fromkeys(k for *_, m in results for k in m))
    cols = [f"{p}/{s}" for p, s, *_ in results]
    print(f"\n{'':40} " + " ".join(f"{c:>12}" for c in cols))
    print(f"{'demo exit code':40} " + " ".join(f"{rc:>12}" for _, _, _, rc, _ in results))
    print(f"{'demo seconds':40} " + " ".join(f"{t:>12.0f}" for _, _, t, _, _ in results))
    for k in keys:
        vals = [m.get(k, "") for *_, m in results]
        cells = [f"{v:>+12.3f}" if isinstance(v, float) else f"{str(v):>12}" for v in vals]
        print(f"{k:40} " + " ".join(cells))


if __name__ == "__main__":
    main()
