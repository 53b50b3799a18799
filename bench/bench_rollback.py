"""Whole-process `registry rollback NAME:production --reason x`: cost independent of the
registry's size and of the model's size.

    .venv/bin/python bench/bench_rollback.py [--repeat 11] [--mlflow PYTHON]

Two registries, built the same way: one with 10 bundles, one with 10,000 bundles and
100,000 audit events. Each run promotes the next real bundle then times the rollback
(a fresh process each time, as an incident responder runs it). Goals (issue 3): median
under 0.5 s, large/small ratio within 1.2.

With --mlflow PYTHON (an interpreter that has mlflow installed), the same operation in
MLflow is timed for comparison: a fresh Python process that sets a registered model's
alias on a SQLite tracking backend.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, fmt, median_of  # noqa: E402
from bench.synth import add_synthetic_bundles, add_synthetic_events, fake_digest  # noqa: E402


def build(path: Path, tiny: dict, big: bool) -> None:
    from registry.bundles import add
    from registry.ingest.stage import stage_bundle
    from registry.repo import Registry

    reg = Registry.init(path)
    if big:
        add_synthetic_bundles(reg, 10_000 - 10)
        add_synthetic_events(reg, 100_000, [fake_digest(i, "bundle") for i in range(1000)])
    for i in range(10):
        comps, _ = stage_bundle(
            reg,
            base=str(tiny["base"]),
            adapter=tiny["adapter"],
            tokenizer=tiny["tokenizer"],
            chat_template=None,
            dataset=None,
            config=None,
            from_dir=None,
            full=False,
            license=None,
            allow_pickle=False,
        )
        add(reg, "support-bot", comps, annotations={"n": str(i)}, actor="bench")
    pol = path.parent / f"{path.name}-policy.toml"
    pol.write_text("[channels.production]\nrequire = []\n")
    reg.close()
    subprocess.run(
        [str(BIN), "--registry", str(path), "policy", "set", str(pol)],
        check=True,
        capture_output=True,
    )


def bench_rollback(
    path: Path, repeat: int, env: dict[str, str] | None = None
) -> tuple[float, list[float]]:
    def promote(v: int) -> None:
        subprocess.run(
            [
                str(BIN),
                "--registry",
                str(path),
                "promote",
                f"support-bot:v{v}",
                "--to",
                "production",
            ],
            check=True,
            capture_output=True,
            env=env,
        )

    promote(1)
    state = {"v": 1}

    def one() -> None:
        state["v"] = state["v"] % 9 + 2
        promote(state["v"])  # untimed set-up happens inside; subtract below

    times = []
    import time

    for _ in range(repeat):
        one()
        t = time.perf_counter()
        subprocess.run(
            [
                str(BIN),
                "--registry",
                str(path),
                "rollback",
                "support-bot:production",
                "--reason",
                "x",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        times.append(time.perf_counter() - t)
    import statistics

    return statistics.median(times), times


MLFLOW = textwrap.dedent("""
    import sys, mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri("sqlite:///" + sys.argv[1])
    MlflowClient().set_registered_model_alias("support-bot", "production", sys.argv[2])
""")
MLFLOW_SETUP = textwrap.dedent("""
    import sys, mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri("sqlite:///" + sys.argv[1])
    c = MlflowClient()
    c.create_registered_model("support-bot")
    for i in range(10):
        c.create_model_version("support-bot", source=f"/tmp/x{i}")
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--mlflow", default=None, help="python interpreter with mlflow installed")
    args = ap.parse_args()
    from gates.tiny import build_tiny_project

    work = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    tiny = build_tiny_project(work / "tiny")
    build(work / "small", tiny, big=False)
    build(work / "large", tiny, big=True)
    small, st = bench_rollback(work / "small", args.repeat)
    large, lt = bench_rollback(work / "large", args.repeat)
    print(f"registry rollback, medians of {args.repeat} fresh processes (SQLite)")
    print(f"  10 bundles:                         {fmt(small)}")
    print(
        f"  10,000 bundles + 100,000 events:    {fmt(large)}"
        f"  (ratio large/small {large / small:.2f}; goal <= 1.2, median < 500 ms)"
    )
    # With a signing key every event is signed (docs/design.md, "Trust"): interleaved
    # unsigned/signed rounds on the small registry, so both see the same machine load.
    import os

    from registry.keys import generate

    generate(work / "bench.key")
    signed_env = {**os.environ, "REGISTRY_SIGNING_KEY": str(work / "bench.key")}
    plain, signed = [], []
    for _ in range(args.repeat):
        plain += bench_rollback(work / "small", 1)[1]
        signed += bench_rollback(work / "small", 1, signed_env)[1]
    import statistics

    p_med, s_med = statistics.median(plain), statistics.median(signed)
    print(
        f"  10 bundles, event signed by a key:  {fmt(s_med)}"
        f"  (ratio signed/unsigned {s_med / p_med:.2f}, unsigned {fmt(p_med)} interleaved)"
    )
    if args.mlflow:
        db = work / "mlflow.db"
        subprocess.run([args.mlflow, "-c", MLFLOW_SETUP, str(db)], check=True, capture_output=True)
        ml, _ = median_of(
            lambda: subprocess.run(
                [args.mlflow, "-c", MLFLOW, str(db), "1"], check=True, capture_output=True
            ),
            args.repeat,
        )
        print(
            f"  MLflow set_registered_model_alias:  {fmt(ml)}"
            f"  (registry rollback is {ml / large:.1f}x faster)"
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
