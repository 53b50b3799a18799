"""`registry gates run --on ray` on a real two-node Ray cluster on loopback (tests/raycluster.py).

A gate run on a worker must be recorded exactly as the same run in this process would be
(same status, metrics, thresholds, inputs and evidence) apart from the environment,
which names the worker's host and Ray node; a worker with its own key signs what it ran;
a gate that cannot finish on the cluster is an `error`, never a pass. All the Ray tests
of the suite share one cluster (its start is about 10 s on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.gates import model_fixtures as mf

pytest.importorskip("torch")

POLICY = """
[channels.production]
require = ["dataset-audit", "chat-template", "adapter-compat", "target-eval"]

[gates.dataset-audit]
licenses = ["apache-2.0", "mit", "cc-by-4.0", "unknown"]
eval_sets = ["evals/target.jsonl"]

[gates.target-eval]
eval_set = "evals/target.jsonl"
min_delta = -1.0
"""
GATES = ["dataset-audit", "chat-template", "adapter-compat", "target-eval"]
WHERE = {"executor", "host", "ray_node"}  # what only a worker's environment says


@pytest.fixture
def project(tmp_path: Path, tiny: dict[str, Path]) -> tuple[Path, str, Path]:
    """A registry holding the tiny project as support-bot:v1, and the policy file."""
    from registry.repo import Registry

    root = tmp_path / "reg"
    reg = Registry.init(root)
    try:
        tag = mf.register_tiny(reg, tiny, "support-bot").tag
    finally:
        reg.close()
    return root, tag, mf.write_policy(tiny["evals"].parent, "ray-policy.toml", POLICY)


def _runs(root: Path, tag: str) -> list[dict]:
    res = run_cli("gates", "show", tag, "--json", registry=root)
    assert res.code == 0, res.err
    return json.loads(res.out)["runs"]


def _newest(runs: list[dict], ids: list[int]) -> dict[str, dict]:
    return {r["gate"]: r for r in runs if r["id"] in ids}


def test_ray_runs_are_recorded_as_local_ones(ray_cluster, project, monkeypatch) -> None:  # noqa: ANN001
    root, tag, policy = project
    args = ["gates", "run", tag, "--policy", str(policy), "--json"]
    for g in GATES:
        args += ["--gate", g]
    local = run_cli(*args, registry=root)
    assert local.code == 0, local.err
    on_ray = run_cli(*args, "--on", f"ray:{ray_cluster.address}", registry=root)
    assert on_ray.code == 0, on_ray.err

    local_ids = [r["id"] for r in json.loads(local.out)]
    ray_ids = [r["id"] for r in json.loads(on_ray.out)]
    assert [r["gate"] for r in json.loads(on_ray.out)] == GATES
    runs = _runs(root, tag)
    here, there = _newest(runs, local_ids), _newest(runs, ray_ids)
    nodes = set()
    for g in GATES:
        a, b = here[g], there[g]
        for col in ("status", "metrics", "thresholds", "inputs", "gate_version", "policy_digest"):
            assert a[col] == b[col], (g, col)
        assert a["evidence_digest"] == b["evidence_digest"], g  # the same evidence, byte for byte
        env_a, env_b = a["environment"], b["environment"]
        assert env_b["executor"] == "ray" and env_b["host"] and env_b["ray_node"]
        assert not WHERE & set(env_a)
        # The same libraries, Python, platform and device; torch's kernel path and threads
        # are recorded once a process has imported torch (this test process always has).
        lazy = {"cpu_kernel_path", "torch_threads"}
        assert {k: v for k, v in env_b.items() if k not in WHERE | lazy} == {
            k: v for k, v in env_a.items() if k not in lazy
        }, g
        if g == "target-eval":
            assert env_b["cpu_kernel_path"] == env_a["cpu_kernel_path"]
        nodes.add(env_b["ray_node"])
        # The worker signed what it ran with its own key; the driver has none.
        assert a["signer"] is None
        assert b["signer"] == ray_cluster.worker_key_id and b["attestation"]
    assert len(nodes) == 2  # one task per node at a time (1 CPU each, SPREAD): both worked
    # The signed rows verify, and the audit chain holds with the Ray runs in it.
    assert run_cli("audit", "verify", registry=root).code == 0


def test_a_gate_that_cannot_finish_on_ray_is_an_error(ray_cluster, project) -> None:  # noqa: ANN001
    from registry.repo import Registry

    root, tag, policy = project
    reg = Registry.open(root)
    try:
        shown = json.loads(run_cli("show", tag, "--json", registry=root).out)
        files = shown["components"]["tokenizer"]["files"]
        blob = reg.store.path(files[0]["digest"])
    finally:
        reg.close()
    os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))
    res = run_cli(
        "gates", "run", tag, "--policy", str(policy), "--gate", "chat-template", "--json",
        "--on", f"ray:{ray_cluster.address}", registry=root,
    )  # fmt: skip
    assert res.code == 1, res.err
    (rec,) = json.loads(res.out)
    assert rec["status"] == "error" and "corrupt" in rec["summary"], rec
    (run,) = [r for r in _runs(root, tag) if r["id"] == rec["id"]]
    assert run["status"] == "error" and run["environment"]["executor"].startswith("ray")


def test_bad_executor_is_refused_before_anything_runs(project) -> None:  # noqa: ANN001
    root, tag, policy = project
    before = _runs(root, tag)
    res = run_cli("gates", "run", tag, "--policy", str(policy), "--on", "slurm", registry=root)
    assert res.code == 2 and "not an executor" in res.err and "Traceback" not in res.err
    assert _runs(root, tag) == before


def test_ctrl_c_cancels_the_tasks_still_running(ray_cluster) -> None:  # noqa: ANN001
    import signal
    import time

    import ray

    from gates.cluster import _as_completed

    ray.init(address=ray_cluster.address, ignore_reinit_error=True)
    ref = ray.remote(_sleep).options(num_cpus=1).remote(120)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    old = signal.signal(signal.SIGALRM, signal.default_int_handler)  # "Ctrl-C" in 1.5 s
    try:
        with pytest.raises(KeyboardInterrupt):
            list(_as_completed(ray, {ref: "sleep"}))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    t = time.monotonic()
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref, timeout=30)
    assert time.monotonic() - t < 30  # cancelled, not slept out


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


SWEEP_POLICY = """
[channels.production]
require = ["adapter-compat", "target-eval"]

[gates.target-eval]
eval_set = "evals/target.jsonl"
min_delta = -1.0
"""


def _sweep_registry(root: Path, tiny: dict[str, Path], recipe: Path) -> Path:
    from tests.conftest import add_args

    assert run_cli("init", str(root)).code == 0
    args = add_args(tiny)
    args[args.index("--config") + 1] = str(recipe)
    assert run_cli(*args, registry=root).code == 0
    policy = mf.write_policy(tiny["evals"].parent, "ray-sweep-policy.toml", SWEEP_POLICY)
    assert run_cli("policy", "set", str(policy), registry=root).code == 0
    return root


def test_a_sweep_on_ray_gives_the_local_bundles_and_verdicts(ray_cluster, tiny, tmp_path) -> None:  # noqa: ANN001
    """Same CPU kernel path here and on the nodes (they inherit this environment), so
    training is bitwise the same: the same adapters, so the same bundle digests."""
    recipe = mf.write_config(tmp_path / "recipe.json", max_steps=30)
    sweep = ["sweep", "--from", "support-bot:v1", "--rank", "1,2", "--json"]
    here = _sweep_registry(tmp_path / "local", tiny, recipe)
    there = _sweep_registry(tmp_path / "ray", tiny, recipe)
    local = run_cli(*sweep, registry=here)
    assert local.code == 0, local.err
    on_ray = run_cli(*sweep, "--on", f"ray:{ray_cluster.address}", registry=there)
    assert on_ray.code == 0, on_ray.err
    a, b = json.loads(local.out), json.loads(on_ray.out)
    assert a["sweep"] == b["sweep"] and b["executor"].startswith("ray")

    def verdicts(data: dict) -> list[tuple]:
        return [(p["key"], p["bundle"]["digest"], p["gates"]) for p in data["points"]]

    assert verdicts(a) == verdicts(b)
    assert a["recommended"]["bundle"]["digest"] == b["recommended"]["bundle"]["digest"]
    # Trained and gated on the cluster's nodes, recorded here.
    for p in b["points"]:
        runs = _runs(there, p["bundle"]["digest"])
        assert {r["environment"].get("executor") for r in runs} == {"ray"}, p["key"]
