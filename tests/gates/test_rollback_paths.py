"""rollback-test across CPU kernel paths of the same runtime.

torch picks its CPU kernels at start-up (`ATEN_CPU_CAPABILITY`: default is scalar code,
avx2 and avx512 vectorized ones), and kernels of different paths round differently: a
fingerprint recorded on one machine must still be reproduced on another of the same
runtime, while a different model must not be. Here a fingerprint is recorded under
ATEN_CPU_CAPABILITY=default in one process and checked under avx2 in another, through
the gate and the registry, on a tiny Llama pre-trained 200 steps (so greedy steps are
decided by real margins) with two different LoRA adapters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gates.rollback import compare_fingerprints
from tests.gates import model_fixtures as mf

ACTOR = "tester"
POLICY = '[gates.rollback-test]\neval_set = "evals/target.jsonl"\n'
# Run rollback-test on a bundle in a fresh process (its kernel path fixed at start-up).
RUN = """
import json, sys
from pathlib import Path
from gates.engine import run_gates
from registry.gate_runs import evidence
from gates.policy import load_file
from registry.repo import Registry
reg = Registry.open(Path(sys.argv[1]))
(rec,) = run_gates(reg, sys.argv[2], load_file(Path(sys.argv[3])), gate_names=["rollback-test"],
                   channel=sys.argv[4] or None, actor="tester")
print(json.dumps({"status": rec.status, "summary": rec.summary,
                  "evidence": evidence(reg, rec.evidence_digest)["evidence"]}))
"""


def _run_under(capability: str, reg: Path, tag: str, policy: Path, channel: str = "") -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "REGISTRY_TORCH_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(reg), tag, str(policy), channel],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """v1 (the project's adapter) fingerprinted under DEFAULT and promoted; then
    rollback-test of v2 (another adapter) on that channel under AVX2."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from gates.tiny import build_tiny_project
    from gates.train import train_bundle
    from registry.channels import promote
    from registry.repo import Registry

    root = tmp_path_factory.mktemp("rollback-paths")
    tiny = build_tiny_project(root / "tiny", seed=0, pretrain_steps=200)
    reg = Registry.init(root / "reg")
    v1 = mf.register_tiny(reg, tiny, "bot", actor=ACTOR).tag
    cfg = mf.write_config(root / "other.json", max_steps=10, eval_steps=5)
    v2 = train_bundle(reg, v1, name="bot", config=cfg, actor=ACTOR).tag
    policy = mf.write_policy(tiny["evals"].parent, "rollback.toml", POLICY)
    recorded = _run_under("default", root / "reg", v1, policy)
    promote(reg, v1, "production", actor=ACTOR, reason="test", force=True)
    checked = _run_under("avx2", root / "reg", v2, policy, "production")
    yield {"reg": reg, "v1": v1, "v2": v2, "recorded": recorded, "checked": checked}
    reg.close()


def test_fingerprint_recorded_under_default_reproduces_under_avx2(paths: dict) -> None:
    recorded, checked = paths["recorded"], paths["checked"]
    assert recorded["status"] == "passed", recorded["summary"]
    assert recorded["evidence"]["fingerprint"]["cpu_kernel_path"] == "DEFAULT"
    now = checked["evidence"]["checks"]["own tokenizer"]["fingerprint"]
    if now["cpu_kernel_path"] != "AVX2":
        pytest.skip(f"this CPU has no AVX2 kernels (got {now['cpu_kernel_path']})")
    assert checked["status"] == "passed", checked["summary"]
    assert checked["evidence"]["target"]["tag"] == paths["v1"]
    assert checked["evidence"]["recorded"]["cpu_kernel_path"] == "DEFAULT"
    assert checked["evidence"]["recorded"]["comparison"] == "within tolerance"
    assert "recorded under kernel path DEFAULT, now AVX2" in checked["summary"]
    old = recorded["evidence"]["fingerprint"]
    # The paths really compute differently (bitwise), but within the tolerance.
    pairs = list(zip(old["items"], now["items"], strict=True))
    assert any(a["logit_sum"] != b["logit_sum"] for a, b in pairs)
    assert compare_fingerprints(old, now, 1e-4) == []  # 100 times tighter still passes
    for a, b in pairs:
        assert a["output_ids"] == b["output_ids"]
        assert len(a["margins"]) == len(a["output_ids"]) + 1
        assert max(abs(x - y) for x, y in zip(a["margins"], b["margins"], strict=True)) < 1e-4


def test_a_different_adapter_does_not_reproduce_the_fingerprint(paths: dict) -> None:
    old = paths["recorded"]["evidence"]["fingerprint"]
    other = paths["checked"]["evidence"]["fingerprint"]  # v2's own, recorded under AVX2
    diffs = compare_fingerprints(old, other, 0.01)
    assert any("checksum differs" in d for d in diffs)
    assert any("greedy output" in d or "margin" in d for d in diffs)
    assert compare_fingerprints(other, other, 0.01) == []


def test_every_gate_run_records_kernel_path_and_threads(paths: dict) -> None:
    from registry.gate_runs import runs_for

    _, runs = runs_for(paths["reg"], paths["v2"])
    (run,) = [r for r in runs if r["gate"] == "rollback-test"]
    assert run["environment"]["cpu_kernel_path"] in ("AVX2", "DEFAULT")
    assert run["environment"]["torch_threads"] == 1
    _, runs = runs_for(paths["reg"], paths["v1"])
    (run,) = [r for r in runs if r["gate"] == "rollback-test"]
    assert run["environment"]["cpu_kernel_path"] == "DEFAULT"


def test_environment_of_a_gate_without_a_model_imports_no_torch() -> None:
    code = (
        "import sys; from gates.engine import environment; env = environment();"
        " print('torch' in sys.modules, 'cpu_kernel_path' in env)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert proc.stdout.split() == ["False", "False"]


# --- the comparison, on constructed fingerprints ----------------------------------------


def _item(output_ids: list[int], margins: list[float] | None, **extra: Any) -> dict[str, Any]:
    item = {
        "prompt_ids": [1, 2, 3], "output": " ".join(map(str, output_ids)),
        "output_ids": output_ids, "logit_sum": 10.0, "logit_norm": 5.0, "numel": 100,
        "top_ids": [7, 8, 9, 10, 11], "top_logits": [5.0, 4.0, 3.0, 2.0, 1.0],
        "sixth_logit": 0.0, **extra,
    }  # fmt: skip
    if margins is not None:
        item["margins"] = margins
    return item


def _fp(*items: dict[str, Any]) -> dict[str, Any]:
    return {"items": list(items), "max_new_tokens": 4}


def test_greedy_steps_are_compared_only_where_the_margin_decides_them() -> None:
    tol = 0.01
    recorded = _fp(_item([4, 5, 6], [1.0, 0.015, 1.0, 1.0]))
    # Step 2 was a near tie (0.015 < 2 x tol): the other token, and whatever follows, is fine.
    parted = _fp(_item([4, 9, 3, 3], [1.0, 0.012, 0.5, 0.5, 0.5]))
    assert compare_fingerprints(recorded, parted, tol) == []
    # Step 1 was decided (margin 1.0): a different token there is a different model.
    (diff,) = compare_fingerprints(recorded, _fp(_item([9, 5, 6], [1.0, 0.015, 1.0, 1.0])), tol)
    assert "greedy output" in diff and "step 1" in diff
    # The same tokens, but a decided margin moved by more than 2 x tol.
    (diff,) = compare_fingerprints(recorded, _fp(_item([4, 5, 6], [1.0, 0.015, 0.9, 1.0])), tol)
    assert "margin at step 3" in diff
    # Ending early (eos) where the recorded step was decided fails too.
    (diff,) = compare_fingerprints(recorded, _fp(_item([4, 5], [1.0, 0.015, 1.0])), tol)
    assert "greedy output" in diff and "step 3" in diff


def test_an_old_fingerprint_without_margins_is_compared_strictly() -> None:
    old = _fp(_item([4, 5, 6], None))
    near_tie = _fp(_item([4, 9, 3, 3], [1.0, 0.012, 0.5, 0.5, 0.5]))
    (diff,) = compare_fingerprints(old, near_tie, 0.01)
    assert "greedy output" in diff
    assert compare_fingerprints(old, _fp(_item([4, 5, 6], [1.0, 1.0, 1.0, 1.0])), 0.01) == []


def test_top5_ids_may_swap_only_within_a_near_tie() -> None:
    tie = {"top_logits": [5.0, 4.0, 3.0, 2.005, 2.0], "sixth_logit": 0.0}
    recorded = _fp(_item([4], [1.0, 1.0], **tie))
    swapped = _fp(_item([4], [1.0, 1.0], **tie, top_ids=[7, 8, 9, 11, 10]))
    assert compare_fingerprints(recorded, swapped, 0.01) == []
    (diff,) = compare_fingerprints(recorded, _fp(_item([4], [1.0, 1.0], **tie,
                                                       top_ids=[8, 7, 9, 10, 11])), 0.01)  # fmt: skip
    assert "top-5 next tokens" in diff
    strict = _fp(_item([4], None, **tie))
    (diff,) = compare_fingerprints(strict, swapped, 0.01)
    assert "top-5 next tokens" in diff
