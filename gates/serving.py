"""serving-eval: latency, throughput, memory and adapter size against the policy's budget.

For a fixed prompt set (the first `num_prompts` rows of the eval set) and a fixed number
of new tokens (`max_new_tokens`, eos suppressed so every request does the same work),
each request runs alone (batch 1, greedy) `repeats` times after one warm-up request.
Measured for the adapter on the base (peft, unmerged) and for the merged model, each
loaded fresh in the serving `dtype` ("auto": bfloat16 on CUDA, float32 on the CPU).

Peak memory is GPU memory allocated on CUDA; on the CPU it is the process's peak
resident set during that mode (Linux resets the peak per mode; it includes Python and
the libraries, which is what a serving process pays too). The evidence names which.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from gates.base import Gate, GateContext, GateResult
from gates.evals import load_items
from registry.errors import GateError

MODES = ("adapter", "merged")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class ServingEvalGate(Gate):
    """Latency p50/p95, tokens/s and peak memory for adapter-on-base and merged."""

    name = "serving-eval"
    version = "1"
    needs_model = True
    description = "latency p50/p95, tokens/s, peak memory, adapter size vs budget"
    defaults: ClassVar[dict[str, Any]] = {
        "eval_set": "evals/target.jsonl",
        "num_prompts": 8,
        "max_new_tokens": 16,
        "repeats": 3,
        "dtype": "auto",
        "modes": list(MODES),
        "max_p95_latency_ms": 200.0,
        "max_peak_memory_mb": 2048.0,
        "min_tokens_per_s": 0.0,
        "max_adapter_size_mb": 1024.0,
    }

    def run(self, ctx: GateContext) -> GateResult:
        from gates import modeling

        p = ctx.params
        has_adapter = (ctx.workdir / "adapter_config.json").is_file()
        modes = list(p["modes"]) if has_adapter else ["model"]
        if bad := [m for m in modes if m not in (*MODES, "model")]:
            raise GateError(f"serving-eval modes must be adapter and/or merged, not {bad}")
        if not modes:
            raise GateError("serving-eval modes is empty")
        prompts = [it.prompt for it in load_items(ctx, p["eval_set"])[: int(p["num_prompts"])]]
        n_new, repeats = int(p["max_new_tokens"]), max(1, int(p["repeats"]))
        device = modeling.select_device()
        results: dict[str, dict[str, Any]] = {}
        for mode in modes:
            ctx.progress(f"serving {len(prompts)} prompts x {repeats} ({mode})")
            results[mode] = _measure(ctx, mode, prompts, n_new, repeats, str(p["dtype"]), device)
        adapter_bytes = sum(f.stat().st_size for f in ctx.workdir.glob("adapter_*") if f.is_file())
        worst_p95 = max(r["p95_latency_ms"] for r in results.values())
        metrics: dict[str, Any] = {
            "p50_latency_ms": max(r["p50_latency_ms"] for r in results.values()),
            "p95_latency_ms": worst_p95,
            "tokens_per_s": min(r["tokens_per_s"] for r in results.values()),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in results.values()),
            "adapter_size_mb": adapter_bytes / 2**20,
        }
        for mode, r in results.items():
            for key in ("p50_latency_ms", "p95_latency_ms", "tokens_per_s", "peak_memory_mb"):
                metrics[f"{mode}_{key}"] = r[key]
        thresholds = {
            k: p[k]
            for k in (
                "max_p95_latency_ms", "max_peak_memory_mb", "min_tokens_per_s",
                "max_adapter_size_mb",
            )
        }  # fmt: skip
        failures = []
        for mode, r in results.items():
            if r["p95_latency_ms"] > p["max_p95_latency_ms"]:
                failures.append(
                    f"{mode}: p95 latency {r['p95_latency_ms']:.1f} ms > {p['max_p95_latency_ms']}"
                )
            if r["peak_memory_mb"] > p["max_peak_memory_mb"]:
                failures.append(
                    f"{mode}: peak memory {r['peak_memory_mb']:.0f} MB > {p['max_peak_memory_mb']}"
                )
            if r["tokens_per_s"] < p["min_tokens_per_s"]:
                failures.append(
                    f"{mode}: {r['tokens_per_s']:.1f} tokens/s < {p['min_tokens_per_s']}"
                )
        if metrics["adapter_size_mb"] > p["max_adapter_size_mb"]:
            failures.append(
                f"adapter is {metrics['adapter_size_mb']:.1f} MB > {p['max_adapter_size_mb']}"
            )
        evidence = {
            "device": modeling.device_name(device),
            "dtype": str(p["dtype"]),
            "prompts": len(prompts),
            "max_new_tokens": n_new,
            "repeats": repeats,
            "modes": results,
            "adapter_bytes": adapter_bytes,
        }
        summary = ", ".join(
            f"{m} p50 {r['p50_latency_ms']:.1f} / p95 {r['p95_latency_ms']:.1f} ms,"
            f" {r['tokens_per_s']:.0f} tok/s"
            for m, r in results.items()
        )
        return GateResult.check(failures, metrics, thresholds, evidence, summary)


def _measure(
    ctx: GateContext,
    mode: str,
    prompts: list[list[dict[str, str]]],
    n_new: int,
    repeats: int,
    dtype: str,
    device: str,
) -> dict[str, Any]:
    """Load the model for `mode`, warm up once, then time each request."""
    from gates import modeling

    with modeling.peak_memory(device) as mem:
        t0 = time.perf_counter()
        loaded = modeling.load_bundle(
            ctx.workdir, ctx.meta("base_model"), adapter=mode != "model", dtype=dtype,
            device=device,
        )  # fmt: skip
        if mode == "merged":
            loaded = modeling.merged(loaded)
        load_s = time.perf_counter() - t0
        try:
            loaded.generate(prompts[:1], max_new_tokens=n_new, batch_size=1, exact_length=True)
            latencies: list[float] = []
            tokens = 0
            for _ in range(repeats):
                for prompt in prompts:
                    t = time.perf_counter()
                    gen = loaded.generate(
                        [prompt], max_new_tokens=n_new, batch_size=1, exact_length=True
                    )
                    _sync(device)
                    latencies.append((time.perf_counter() - t) * 1000)
                    tokens += len(gen[0].token_ids)
        finally:
            modeling.free(loaded)
    total_s = sum(latencies) / 1000
    return {
        "p50_latency_ms": percentile(latencies, 50),
        "p95_latency_ms": percentile(latencies, 95),
        "mean_latency_ms": sum(latencies) / len(latencies),
        "tokens_per_s": tokens / total_s if total_s > 0 else 0.0,
        "tokens": tokens,
        "requests": len(latencies),
        "load_s": load_s,
        "peak_memory_mb": mem["peak_mb"],
        "memory_method": mem["method"],
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
