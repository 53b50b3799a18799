"""serving-eval judges ratios against the base timed in the same rounds, so its verdict
does not depend on how loaded the machine is.

A tiny random Llama (no pre-training: serving cost does not depend on what the weights
learned) with an untrained LoRA adapter (lora_B = 0 still computes the LoRA path) and a
prompt-tuning adapter, which cannot be merged.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gates.serving import ServingEvalGate
from registry.errors import PolicyError
from tests.gates import model_fixtures as mf

ACTOR = "tester"
SECTION = (
    '[gates.serving-eval]\neval_set = "evals/target.jsonl"\nnum_prompts = 4\nrepeats = 6\n'
    "max_new_tokens = 8\n"
)
# A busy loop that ends by itself, should the test die before it kills it.
HOG = "import time\nend = time.monotonic() + 180\nwhile time.monotonic() < end:\n    pass\n"


@dataclass
class Serving:
    root: Path
    evals_root: Path
    reg: Any
    lora: str
    prompt: str

    def run(self, tag: str, name: str, extra: str = "") -> tuple[Any, dict[str, Any]]:
        """The run record and its report (report["evidence"] is the gate's evidence)."""
        from gates.engine import run_gates
        from gates.policy import load_file
        from registry.gate_runs import evidence

        policy = load_file(mf.write_policy(self.evals_root, name, SECTION + extra))
        (rec,) = run_gates(self.reg, tag, policy, gate_names=["serving-eval"], actor=ACTOR)
        return rec, evidence(self.reg, rec.evidence_digest)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gates.tiny import build_tiny_project
    from registry.repo import Registry

    root = tmp_path_factory.mktemp("serving")
    tiny = build_tiny_project(root / "tiny", seed=0, adapter_steps=0)
    torch.manual_seed(0)
    prompt_dir = root / "prompt-adapter"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny["base"]),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    ).save_pretrained(prompt_dir)
    reg = Registry.init(root / "reg")

    def add(name: str, adapter: Path) -> str:
        return mf.register_tiny(reg, tiny, name, adapter=adapter, actor=ACTOR).tag

    yield Serving(root, tiny["evals"].parent, reg, add("bot", tiny["adapter"]),
                  add("prompt-bot", prompt_dir))  # fmt: skip
    reg.close()


@pytest.fixture(scope="module")
def idle(serving: Serving) -> tuple[Any, dict[str, Any]]:
    return serving.run(serving.lora, "serving.toml")


def test_ratio_verdict_holds_when_other_processes_load_the_cpu(
    serving: Serving, idle: tuple[Any, dict[str, Any]]
) -> None:
    rec, report = idle
    assert rec.status == "passed", rec.summary
    # two busy loops per core: the gate gets well under a core, whatever else runs
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        loaded, loaded_report = serving.run(serving.lora, "serving.toml")
    finally:
        for h in hogs:
            h.kill()
            h.wait(timeout=30)
    assert loaded.status == rec.status, loaded.summary
    for key in ("adapter_latency_ratio", "merged_latency_ratio", "tokens_per_s_ratio"):
        assert abs(math.log(loaded.metrics[key] / rec.metrics[key])) < math.log(1.35), key
    # ... while the absolute figures an absolute budget would judge did move.
    assert loaded.metrics["base_p50_latency_ms"] > 1.25 * rec.metrics["base_p50_latency_ms"]
    machines = [r["evidence"]["machine"] for r in (report, loaded_report)]
    assert machines[0]["cpu_kernel_path"] == machines[1]["cpu_kernel_path"]


def test_measures_base_adapter_merged_interleaved(idle: tuple[Any, dict[str, Any]]) -> None:
    rec, report = idle
    ev = report["evidence"]
    assert set(ev["modes"]) == {"base", "adapter", "merged"}
    assert ev["rounds"] == 4 * 6
    for mode, r in ev["modes"].items():
        assert r["requests"] == 24 and r["tokens"] == 24 * 8, mode
        assert len(r["latencies_ms"]) == len(r["cpu_ms"]) == 24
        assert r["peak_memory_mb"] > 50
    # base and adapter share one model; merged is a copy, reported as if alone
    assert ev["modes"]["base"]["peak_memory_mb"] == ev["modes"]["adapter"]["peak_memory_mb"]
    assert "merged copy added" in ev["modes"]["merged"]["memory_method"]
    # the verdict is the median of per-round paired ratios, on the CPU of CPU time (what a
    # request computed, not how long it waited for a core)
    assert ev["ratio_clock"].startswith("cpu:")
    for mode in ("adapter", "merged"):
        rounds = zip(ev["modes"][mode]["cpu_ms"], ev["modes"]["base"]["cpu_ms"], strict=True)
        paired = statistics.median(m / b for m, b in rounds)
        assert rec.metrics[f"{mode}_latency_ratio"] == pytest.approx(paired, rel=1e-3)
    # absolute budgets are off by default, so not judged
    assert report["thresholds"] == {
        "max_adapter_latency_ratio": 1.5, "max_merged_latency_ratio": 1.25,
        "min_tokens_per_s_ratio": 0.6,
    }  # fmt: skip
    assert "absolute_budgets" not in ev
    assert ev["machine"]["cpu_cores"] >= 1 and ev["machine"]["torch_threads"] == 1


def test_too_tight_limits_fail_with_their_true_reasons(serving: Serving) -> None:
    # An adapter at most half as slow as its base, and an adapter of under 100 bytes:
    # neither is true of any LoRA adapter. The loose absolute budgets pass and are
    # recorded with the machine they hold for.
    rec, report = serving.run(
        serving.lora, "serving-tight.toml",
        "max_adapter_latency_ratio = 0.5\nmax_adapter_size_mb = 0.0001\n"
        "max_p95_latency_ms = 100000\nmin_tokens_per_s = 0.5\n",
    )  # fmt: skip
    ev = report["evidence"]
    assert rec.status == "failed"
    reasons = rec.summary.split("; ")
    assert len(reasons) == 2, rec.summary
    ratio = rec.metrics["adapter_latency_ratio"]
    assert reasons[0].startswith(f"adapter: latency {ratio:.2f}x the base's") and ratio > 0.5
    assert reasons[1] == f"adapter is {ev['adapter_bytes'] / 2**20:.1f} MB > 0.0001"
    assert ev["adapter_bytes"] > 100
    assert report["thresholds"]["max_p95_latency_ms"] == 100000
    judged = ev["absolute_budgets"]["judged"]
    assert judged == {"max_p95_latency_ms": 100000, "min_tokens_per_s": 0.5,
                      "max_adapter_size_mb": 0.0001}  # fmt: skip
    assert "pinned hardware" in ev["absolute_budgets"]["note"]
    assert ev["device"] == "cpu" or ev["device"].startswith("cuda")
    assert ev["machine"]["cpu"] and ev["machine"]["cpu_kernel_path"]


def test_prompt_tuning_skips_the_merged_mode_with_a_note(serving: Serving) -> None:
    rec, report = serving.run(serving.prompt, "serving.toml")
    ev = report["evidence"]
    assert rec.status == "passed", rec.summary
    assert set(ev["modes"]) == {"base", "adapter"}
    (note,) = ev["notes"]
    assert note.startswith("merged mode skipped:") and "cannot be merged" in note
    assert note in rec.summary
    assert "merged_latency_ratio" not in rec.metrics and rec.metrics["adapter_latency_ratio"] > 0


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("max_p95_latency_ms", 200, True),
        ("max_p95_latency_ms", 200.0, True),
        ("max_peak_memory_mb", None, True),
        ("max_adapter_latency_ratio", 2, True),
        ("max_p95_latency_ms", "fast", False),
        ("max_peak_memory_mb", True, False),
        ("min_tokens_per_s", float("nan"), False),
        ("max_adapter_size_mb", -1.0, False),
    ],
)
def test_limits_must_be_numbers(key: str, value: object, ok: bool) -> None:
    params = {**ServingEvalGate.defaults, key: value}
    if ok:
        ServingEvalGate.check_params(params)
    else:
        with pytest.raises(PolicyError, match=key):
            ServingEvalGate.check_params(params)
