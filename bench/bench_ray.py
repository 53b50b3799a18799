"""What Ray costs: `registry gates run --on ray` vs local for the data gates, and a rank
sweep locally vs on a two-node Ray cluster on loopback (issue 16).

    .venv/bin/python bench/bench_ray.py [--repeat 5] [--sweep-ranks 2,4,8,16] [--no-sweep]

Starts a two-node cluster on loopback (tests/raycluster.py: a head and a second node
joined by `registry worker`, one CPU each), registers the tiny project, then:

1. dispatch: the three data gates (dataset-audit, chat-template, adapter-compat) as one
   whole `registry gates run` process, locally and with `--on ray:ADDR`, interleaved,
   `--repeat` times; and in one warm process (connected once), gates.engine.run_gates vs
   gates.cluster.RayExecutor.gates. The per-task overhead is (ray - local) / 3.
2. sweep: `registry sweep --from bench:v1 --rank R1,R2,...` locally and `--on ray:ADDR`
   (each in a fresh registry holding the same bundle, so nothing is resumed), once each;
   with 2 cores the ideal ratio is about 1.0 (two one-CPU nodes on the same two cores).
   The digests of the swept bundles are compared: the same on the same CPU kernel path.

Prints medians and ratios; the machine is shared, so quote ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BIN, fmt  # noqa: E402

DATA_GATES = ["dataset-audit", "chat-template", "adapter-compat"]
POLICY = """
[channels.production]
require = ["dataset-audit", "chat-template", "adapter-compat", "target-eval", "regression-eval"]

[gates.dataset-audit]
licenses = ["apache-2.0", "mit", "cc-by-4.0", "unknown"]
eval_sets = ["evals/target.jsonl"]

[gates.target-eval]
eval_set = "evals/target.jsonl"
min_delta = -1.0

[gates.regression-eval]
eval_set = "evals/golden.jsonl"
max_drop = 1.0
"""


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REGISTRY_ACTOR": "bench", "REGISTRY_HOME": str(root)}
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"registry {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _registry(work: Path, tiny: dict[str, Path], name: str) -> Path:
    from registry.repo import Registry
    from tests.gates import model_fixtures as mf

    root = work / name
    reg = Registry.init(root)
    try:
        mf.register_tiny(reg, tiny, "bench")
    finally:
        reg.close()
    policy = mf.write_policy(tiny["evals"].parent, "bench-ray.toml", POLICY)
    _cli(root, "policy", "set", str(policy))
    return root


def dispatch(root: Path, address: str, repeat: int) -> None:
    gates = [a for g in DATA_GATES for a in ("--gate", g)]
    local, ray = [], []
    for _ in range(repeat):
        for where, out in ((None, local), (f"ray:{address}", ray)):
            extra = ["--on", where] if where else []
            t = time.perf_counter()
            _cli(root, "gates", "run", "bench:v1", *gates, *extra)
            out.append(time.perf_counter() - t)
    ml, mr = statistics.median(local), statistics.median(ray)
    print(f"whole process, 3 data gates: local {fmt(ml)}, --on ray {fmt(mr)}"
          f" ({mr / ml:.2f}x); per task +{fmt((mr - ml) / 3)}")  # fmt: skip

    from gates.cluster import RayExecutor
    from gates.engine import run_gates
    from gates.policy import current
    from registry.repo import Registry

    reg = Registry.open(root)
    try:
        pol = current(reg)
        ex = RayExecutor(address)
        ex.connect()
        warm_l, warm_r = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            run_gates(reg, "bench:v1", pol, gate_names=DATA_GATES, actor="bench")
            warm_l.append(time.perf_counter() - t)
            t = time.perf_counter()
            ex.gates(reg, "bench:v1", pol, DATA_GATES, actor="bench")
            warm_r.append(time.perf_counter() - t)
    finally:
        reg.close()
    wl, wr = statistics.median(warm_l), statistics.median(warm_r)
    print(f"warm process, 3 data gates: local {fmt(wl)}, on ray {fmt(wr)} ({wr / wl:.2f}x);"
          f" per task +{fmt((wr - wl) / 3)}")  # fmt: skip


def sweep(work: Path, tiny: dict[str, Path], address: str, ranks: str) -> None:
    out = {}
    for where in (None, f"ray:{address}"):
        root = _registry(work, tiny, f"sweep-{'ray' if where else 'local'}")
        extra = ["--on", where] if where else []
        t = time.perf_counter()
        proc = _cli(root, "sweep", "--from", "bench:v1", "--rank", ranks, "--json", *extra)
        secs = time.perf_counter() - t
        data = json.loads(proc.stdout)
        digests = sorted(p["bundle"]["digest"] for p in data["points"] if p["bundle"])
        out[where or "local"] = (secs, digests)
        print(f"sweep {ranks} {'on ' + where if where else 'locally'}: {fmt(secs)}")
    (tl, dl), (tr, dr) = out["local"], out[f"ray:{address}"]
    print(f"sweep on ray / local: {tr / tl:.2f}x; same bundles: {dl == dr}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sweep-ranks", default="2,4,8,16")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("REGISTRY_TORCH_THREADS", "1")
    print(f"load: {os.getloadavg()[0]:.1f}")

    from gates.tiny import build_tiny_project
    from tests import raycluster

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        tiny = build_tiny_project(work / "tiny", seed=0)
        t = time.perf_counter()
        cluster = raycluster.start(work / "keys")
        print(f"two-node cluster up in {fmt(time.perf_counter() - t)}")
        try:
            dispatch(_registry(work, tiny, "dispatch"), cluster.address, args.repeat)
            if not args.no_sweep:
                sweep(work, tiny, cluster.address, args.sweep_ranks)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            raycluster.stop(cluster.temp_dirs)


if __name__ == "__main__":
    main()
