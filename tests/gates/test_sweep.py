"""Rank sweeps on the tiny model (gates/sweep.py): the capacity effect rank has, resuming an
interrupted sweep, and the executor seam (gates/executor.py) a Ray executor plugs into.

The world: the tiny base pre-trained on task A (reverse three letters), registered with
the project's task B data (sort three letters) and a 150-step config; the policy's
target-eval judges task B. `make test-paths` runs this file again under the other CPU
kernel paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.gates import model_fixtures as mf

pytest.importorskip("torch")
pytest.importorskip("peft")

ACTOR = "tester"
POLICY = """
[channels.production]
require = ["target-eval", "regression-eval"]

[gates.target-eval]
eval_set = "evals/target.jsonl"   # 120 task B items

[gates.regression-eval]
eval_set = "evals/golden.jsonl"
max_drop = 0.15
"""


@dataclass
class World:
    root: Path
    tiny: dict[str, Path]
    reg: Any
    v1: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The pre-trained tiny base registered with a 150-step task B recipe (about 15 s)."""
    from gates.policy import load_file
    from gates.tiny import build_tiny_project
    from registry import bundles
    from registry.ingest.stage import stage_bundle
    from registry.policy import store
    from registry.repo import Registry

    root = tmp_path_factory.mktemp("sweep")
    tiny = build_tiny_project(root / "tiny", seed=0, pretrain_steps=400, adapter_steps=0)
    reg = Registry.init(root / "reg")
    cfg = mf.write_config(root / "recipe.json", max_steps=150)
    comps, _ = stage_bundle(
        reg, base=str(tiny["base"]), adapter=tiny["adapter"], tokenizer=tiny["tokenizer"],
        chat_template=tiny["chat_template"], dataset=tiny["dataset"], config=cfg,
        from_dir=None, full=False, license=None, allow_pickle=False,
    )  # fmt: skip
    v1 = bundles.add(reg, "bot", comps, actor=ACTOR).tag
    policy = load_file(mf.write_policy(tiny["evals"].parent, "sweep-policy.toml", POLICY))
    store(reg, policy, actor=ACTOR)
    yield World(root, tiny, reg, v1)
    reg.close()


def _train_runs(reg: Any, digest: str) -> list[int]:
    from registry.gate_runs import runs_for

    return [r["id"] for r in runs_for(reg, digest)[1] if r["gate"] == "train"]


# --- the plan ----------------------------------------------------------------------------------


def test_a_plan_is_points_with_their_own_configs_and_a_stable_id(world: World) -> None:
    from gates.sweep import plan_sweep
    from registry import sweeps
    from registry.errors import ReferenceNotFoundError

    def plan(seeds: list[int]) -> Any:
        return plan_sweep(world.reg, world.v1, ranks=[4, 8], alpha=("fixed", 16.0),
                          target_modules=[("q_proj", "v_proj"), "all-linear"], seeds=seeds)  # fmt: skip

    first = plan([3])
    assert [(p.rank, p.alpha, p.modules) for p in first.points] == [
        (4, 16, "q_proj,v_proj"), (4, 16, "all-linear"),
        (8, 16, "q_proj,v_proj"), (8, 16, "all-linear"),
    ]  # fmt: skip
    p = first.points[0]
    hyper = first.hyperparameters[p.key]
    assert (hyper["r"], hyper["lora_alpha"], hyper["seed"]) == (4, 16, 3)
    assert hyper["target_modules"] == ["q_proj", "v_proj"] and hyper["max_steps"] == 150
    assert first.configs[p.key].files == {"recipe.json": (json.dumps(hyper, indent=2,
                                                          sort_keys=True) + "\n").encode()}  # fmt: skip
    assert p.annotations(first.sweep_id)["sweep.target_modules"] == "q_proj,v_proj"
    assert first.gates == ["target-eval", "regression-eval"]  # production's model gates
    assert plan([3]).sweep_id == first.sweep_id and plan([4]).sweep_id != first.sweep_id
    with pytest.raises(ReferenceNotFoundError):  # planning writes nothing
        sweeps.load(world.reg, first.sweep_id)


# --- the capacity effect ---------------------------------------------------------------------

# Measured with this world (150 steps of task B, lr 0.003, batch 16, target modules
# q/v/o/up/down, alpha = 2r), seeds 0/1/2, under ATEN_CPU_CAPABILITY=default, avx2 and
# avx512 (one thread): the figures agreed to 3 decimals on all three paths (the adapters'
# digests differ). Final train loss r=1 1.093/1.051/0.969, r=16 0.596/0.387/0.570: gap
# 0.497/0.664/0.399. Target gain r=1 -0.025/+0.042/+0.033 (95% lower bounds -0.082/
# -0.006/-0.019 against min_delta 0.05), r=16 +0.358/+0.483/+0.242 (lower bounds +0.266/
# +0.393/+0.160): gap 0.383/0.441/0.209. The margins sit well inside the smallest gaps.
MIN_LOSS_GAP = 0.25  # final train loss, r=1 minus r=16 (smallest measured 0.399)
MIN_GAIN_GAP = 0.12  # target-eval's gain, r=16 minus r=1 (smallest measured 0.209)


def test_lower_rank_underfits_the_target_task(world: World) -> None:
    from gates.executor import LocalExecutor
    from gates.sweep import plan_sweep, run_sweep
    from gates.sweep_review import sweep_table
    from registry.bundles import show

    plan = plan_sweep(world.reg, world.v1, ranks=[1, 16], seeds=[0, 1], gates=["target-eval"])
    out = run_sweep(world.reg, plan, LocalExecutor(), actor=ACTOR)
    assert out.errors == {} and len(out.trained) == 4
    table = sweep_table(world.reg, plan.sweep_id)
    by = {(p["rank"], p["seed"]): p for p in table["points"]}
    for seed in (0, 1):
        low, high = by[(1, seed)], by[(16, seed)]
        assert low["trainable_parameters"] * 16 == high["trainable_parameters"]
        assert low["adapter_bytes"] < high["adapter_bytes"]
        # r=1 underfits: its final train loss stays far above r=16's, and it barely moves
        # the target score while r=16 learns the task.
        assert low["train_loss"] - high["train_loss"] > MIN_LOSS_GAP, (low, high)
        assert high["gain"]["value"] - low["gain"]["value"] > MIN_GAIN_GAP, (low, high)
        assert low["gates"]["target-eval"] == "failed"
        assert high["gates"]["target-eval"] == "passed"
    # Every point is a bundle of its own: parent = REF, the point in its annotations and
    # in its config (the recipe that reproduces it).
    info = show(world.reg, by[(16, 1)]["bundle"]["digest"])
    assert info["parent"] == plan.info["digest"]
    assert info["annotations"] == {
        "sweep": plan.sweep_id, "sweep.rank": "16", "sweep.alpha": "32", "sweep.seed": "1",
    }  # fmt: skip
    hyper = info["components"]["config"]["meta"]["hyperparameters"]
    assert (hyper["r"], hyper["lora_alpha"], hyper["seed"]) == (16, 32, 1)
    assert info["components"]["adapter"]["meta"]["r"] == 16
    # Only r=16 passes every gate, so it is the recommendation (its better seed).
    assert table["passing"] == ["r=16 alpha=32"]
    rec = table["recommended"]
    assert rec["group"] == "r=16 alpha=32"
    assert rec["bundle"]["digest"] in {by[(16, 0)]["bundle"]["digest"],
                                       by[(16, 1)]["bundle"]["digest"]}  # fmt: skip
    group = table["groups"][1]
    assert group["seeds"] == [0, 1] and group["gain"]["n"] == 2


# --- resume ----------------------------------------------------------------------------------


def test_an_interrupted_sweep_resumes_where_it_stopped(world: World) -> None:
    from gates.executor import LocalExecutor
    from gates.sweep import plan_sweep, run_sweep
    from registry import sweeps
    from registry.gate_runs import runs_for

    def plan() -> Any:
        return plan_sweep(world.reg, world.v1, ranks=[2, 4], gates=["target-eval"])

    def interrupt(p: Any, phase: str, _message: str) -> None:
        if p.rank == 4 and phase == "progress":  # the second point starts training
            raise KeyboardInterrupt

    first = plan()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(world.reg, first, LocalExecutor(), actor=ACTOR, on_point=interrupt)
    done = sweeps.load(world.reg, first.sweep_id)["points"]
    assert list(done) == ["r2-a4-s0"]
    digest = done["r2-a4-s0"]
    runs_before = [(r["id"], r["gate"]) for r in runs_for(world.reg, digest)[1]]
    assert {g for _, g in runs_before} == {"train", "target-eval"}

    events: list[tuple[int, str]] = []
    again = plan()
    assert again.sweep_id == first.sweep_id  # the same command finds the same sweep
    out = run_sweep(world.reg, again, LocalExecutor(), actor=ACTOR,
                    on_point=lambda p, phase, _m: events.append((p.rank, phase)))  # fmt: skip
    assert out.done == ["r2-a4-s0"] and out.trained == ["r4-a8-s0"] and out.errors == {}
    assert (2, "done") in events and not any(r == 2 and ph == "progress" for r, ph in events)
    # The first point was not retrained: the same bundle, no new train or gate run.
    assert sweeps.load(world.reg, first.sweep_id)["points"]["r2-a4-s0"] == digest
    assert [(r["id"], r["gate"]) for r in runs_for(world.reg, digest)[1]] == runs_before
    # A third run has nothing left to do.
    third = run_sweep(world.reg, plan(), LocalExecutor(), actor=ACTOR)
    assert sorted(third.done) == ["r2-a4-s0", "r4-a8-s0"] and third.trained == []


def test_gates_run_again_under_a_new_policy_without_retraining(world: World) -> None:
    """A point's gate runs count only under the policy they ran under: after `policy set`,
    rerunning the sweep gates every point again but trains nothing."""
    from gates.executor import LocalExecutor
    from gates.policy import current, load_file
    from gates.sweep import plan_sweep, run_sweep
    from registry import sweeps
    from registry.gate_runs import runs_for
    from registry.policy import store

    def plan() -> Any:
        return plan_sweep(world.reg, world.v1, ranks=[2], gates=["target-eval"])

    run_sweep(world.reg, plan(), LocalExecutor(), actor=ACTOR)
    digest = sweeps.load(world.reg, plan().sweep_id)["points"]["r2-a4-s0"]
    trains = _train_runs(world.reg, digest)
    stricter = POLICY.replace(
        'eval_set = "evals/target.jsonl"', 'eval_set = "evals/target.jsonl"\nmin_delta = 0.06'
    )
    path = mf.write_policy(world.tiny["evals"].parent, "sweep-policy-2.toml", stricter)
    store(world.reg, load_file(path), actor=ACTOR)
    try:
        out = run_sweep(world.reg, plan(), LocalExecutor(), actor=ACTOR)
        assert out.trained == [] and out.gated == ["r2-a4-s0"] and out.errors == {}
        assert _train_runs(world.reg, digest) == trains
        evals = [r for r in runs_for(world.reg, digest)[1] if r["gate"] == "target-eval"]
        assert len(evals) == 2 and evals[0]["thresholds"]["min_delta"] == 0.06
    finally:
        original = world.tiny["evals"].parent / "sweep-policy.toml"
        store(world.reg, load_file(original), actor=ACTOR)
        assert current(world.reg).digest != load_file(path).digest


# --- the seam ----------------------------------------------------------------------------------


def test_a_candidate_is_registered_only_when_its_blobs_are_in_the_store(world: World) -> None:
    from gates.executor import TrainJob, run_job
    from gates.train import register_candidate
    from registry.bundles import list_bundles, show
    from registry.errors import InvalidInputError

    info = show(world.reg, world.v1)
    hyper = {**info["components"]["config"]["meta"]["hyperparameters"], "max_steps": 3}
    job = TrainJob(info["digest"], "bot", hyper, {"note": "seam"})
    cand = run_job(world.reg, job)
    # Nothing is registered by training itself; the adapter's files are durable blobs.
    assert cand.adapter.files == {} and cand.adapter.external_files
    assert all(world.reg.store.has(f.digest, f.size) for f in cand.adapter.external_files)
    assert cand.result.status == "passed" and cand.environment["cpu_kernel_path"]
    before = len(list_bundles(world.reg, "bot"))
    weights = next(f for f in cand.adapter.external_files if f.path.endswith(".safetensors"))
    path = world.reg.store.path(weights.digest)
    data = path.read_bytes()
    path.unlink()
    try:
        with pytest.raises(InvalidInputError, match="missing from the store"):
            register_candidate(world.reg, info, cand, name="bot", annotations=job.annotations,
                               policy=None, actor=ACTOR)  # fmt: skip
        assert len(list_bundles(world.reg, "bot")) == before
    finally:
        world.reg.store.put_bytes(data)
    res = register_candidate(world.reg, info, cand, name="bot", annotations=job.annotations,
                             policy=None, actor=ACTOR)  # fmt: skip
    assert res.created and show(world.reg, res.digest)["parent"] == info["digest"]
    (run_id,) = _train_runs(world.reg, res.digest)
    from registry.gate_runs import runs_for

    run = next(r for r in runs_for(world.reg, res.digest)[1] if r["id"] == run_id)
    assert run["environment"] == json.loads(json.dumps(cand.environment))


def test_executor_for_names_where_the_work_runs() -> None:
    from gates.executor import LocalExecutor, executor_for
    from registry.errors import UsageError

    assert isinstance(executor_for(None), LocalExecutor)
    assert executor_for(None).where == "local"
    with pytest.raises(UsageError, match="--on"):
        executor_for("slurm")
