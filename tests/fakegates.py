"""Test gates with outcomes the test chooses, for exercising the engine and promotion.

These stand in for real gates only where the engine's and the policy's own behaviour is
under test; the real gates have their own tests in tests/gates/.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from gates.base import Gate, GateContext, GateResult


class OutcomeGate(Gate):
    """Passes or fails as the policy says; reads the eval set it is given."""

    name = "fake-outcome"
    version = "2"
    defaults: dict[str, Any] = {"outcome": "passed", "eval_set": "", "min_score": 0.5}

    def run(self, ctx: GateContext) -> GateResult:
        rows = 0
        if ctx.params["eval_set"]:
            rows = len(ctx.input_file(ctx.params["eval_set"]).read_text().splitlines())
        score = 1.0 if ctx.params["outcome"] == "passed" else 0.0
        return GateResult.check(
            []
            if score >= ctx.params["min_score"]
            else [f"score {score} < {ctx.params['min_score']}"],
            {"score": score, "rows": rows},
            {"min_score": ctx.params["min_score"]},
            {
                "adapter_r": ctx.meta("adapter").get("r"),
                "workdir_has_adapter": (ctx.workdir / "adapter_config.json").is_file(),
            },
            "fine",
        )


class RaisingGate(Gate):
    name = "fake-raise"
    defaults: dict[str, Any] = {}

    def run(self, ctx: GateContext) -> GateResult:
        raise RuntimeError("the gate crashed")


class AfterGate(Gate):
    """Must run after fake-outcome and sees its result."""

    name = "fake-after"
    after = ("fake-outcome",)
    defaults: dict[str, Any] = {}

    def run(self, ctx: GateContext) -> GateResult:
        prior = ctx.results.get("fake-outcome")
        return GateResult("passed", {"saw_prior": prior is not None})


FAKES = {c.name: c for c in (OutcomeGate, RaisingGate, AfterGate)}


@pytest.fixture
def fake_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add the fake gates to the entry-point catalog for this test."""
    from gates import catalog

    real = catalog.entry_points()
    extra = {
        n: EntryPoint(n, f"tests.fakegates:{c.__name__}", catalog.GROUP) for n, c in FAKES.items()
    }
    monkeypatch.setattr(catalog, "entry_points", lambda: {**real, **extra})
    catalog.load.cache_clear()
    yield
    catalog.load.cache_clear()


# --- the model gates with a fixed model: real names, keys, verdicts and evidence formats ------
#
# Each subclasses the real gate (so its policy keys, defaults, statistics and evidence are
# the real ones) and replaces only the model with outputs the test writes down, in the
# bundle's annotation `fixed.<gate>` ("key=value;key=value"):
#
#   fixed.target-eval / fixed.regression-eval: wrong=3,4   the items (0-based) the bundle
#       answers wrong (with the row's `wrong`, default "I do not know"); every other item
#       it answers right. The baseline answers each row's `baseline` (default: right).
#   fixed.train: steps=200;final=0.4;overfit=1   loss curves falling to `final`; with
#       overfit=1 the validation loss turns up after step 100.
#   fixed.serving-eval: adapter=1.1;merged=0.9   each mode's latency / the base's.
#
# Register them in place of the real gates with the `fixed_model_gates` fixture.


def fixed_spec(ctx: GateContext, gate: str) -> dict[str, str]:
    """The bundle's `fixed.<gate>` annotation as a dict."""
    text = (ctx.bundle.get("annotations") or {}).get(f"fixed.{gate}", "")
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def fixed_comparison(ctx: GateContext, gate: str) -> dict[str, Any]:
    """What gates.evals.compare_with_baseline returns, from the fixed answers."""
    from gates.evals import _references, clusters_of, load_items, scorer

    p = ctx.params
    spec = fixed_spec(ctx, gate)
    wrong = {int(i) for i in spec.get("wrong", "").split(",") if i.strip()}
    items = load_items(ctx, p["eval_set"])
    refs = _references(items, p["eval_set"])
    score = scorer(p["metric"])
    outs = [it.row.get("wrong", "I do not know") if i in wrong else ref
            for i, (it, ref) in enumerate(zip(items, refs, strict=True))]  # fmt: skip
    base = [str(it.row.get("baseline", ref)) for it, ref in zip(items, refs, strict=True)]
    s = [score(o, r) for o, r in zip(outs, refs, strict=True)]
    b = [score(o, r) for o, r in zip(base, refs, strict=True)]
    per_item = [
        {"prompt": it.prompt_text, "reference": ref, "output": o, "baseline_output": bo,
         "score": si, "baseline_score": bi}
        for it, ref, o, bo, si, bi in zip(items, refs, outs, base, s, b, strict=True)
    ]  # fmt: skip
    return {
        "score": sum(s) / len(s), "baseline_score": sum(b) / len(b), "scores": s,
        "baseline_scores": b, "clusters": clusters_of(items, str(p["cluster_key"]), p["eval_set"]),
        "items": len(items), "per_item": per_item, "about": {"baseline": "base"}, "device": "cpu",
    }  # fmt: skip


def _with_fixed_answers(gate: Any, ctx: GateContext) -> GateResult:
    from unittest import mock

    import gates.evals

    def compare(c: GateContext) -> dict[str, Any]:
        return fixed_comparison(c, gate.name)

    with mock.patch.object(gates.evals, "compare_with_baseline", compare):
        return super(type(gate), gate).run(ctx)


def _fixed_classes() -> dict[str, type]:
    """The fixed-model gates (built lazily: importing them costs nothing at collection)."""
    import math

    from gates.evals import RegressionEvalGate, TargetEvalGate
    from gates.serving import CPU, REFERENCE, ServingEvalGate, _judge, _ratios, _summary
    from gates.train import TrainGate, _thin, _window_mean, overfitting

    class FixedTargetEval(TargetEvalGate):
        def run(self, ctx: GateContext) -> GateResult:
            return _with_fixed_answers(self, ctx)

    class FixedRegressionEval(RegressionEvalGate):
        def run(self, ctx: GateContext) -> GateResult:
            return _with_fixed_answers(self, ctx)

    class FixedTrain(TrainGate):
        def run(self, ctx: GateContext) -> GateResult:
            spec, p = fixed_spec(ctx, "train"), ctx.params
            steps, final = int(spec.get("steps", 200)), float(spec.get("final", 0.4))
            rises = spec.get("overfit") == "1"

            def loss(step: int) -> float:
                return final + 2.2 * math.exp(-step / 30)

            train = [[s, round(loss(s) + 0.03 * math.sin(s), 6)] for s in range(1, steps + 1)]
            val = [[s, round(loss(s) + 0.1 + (0.006 * max(0, s - 100) if rises else 0.0), 6)]
                   for s in range(10, steps + 1, 10)]  # fmt: skip
            fit = overfitting(train, val, p["max_val_loss_rise"], p["val_patience"],
                              p["min_val_loss_rise"])  # fmt: skip
            first, last = _window_mean(train, 0, 10), _window_mean(train, steps - 10, 10)
            metrics = {
                "steps": steps, "examples": 4, "sequences": 4, "truncated_rate": 0.0,
                "initial_train_loss": first, "final_train_loss": last,
                "best_val_loss": fit.get("best_val_loss"),
                "final_val_loss": fit.get("final_val_loss"), "val_loss_rise": fit.get("rise"),
                "overfitting": fit["flagged"], "seconds": 1.0, "trainable_parameters": 128,
                "reproduced": True,
            }  # fmt: skip
            thresholds = {k: p[k] for k in ("max_val_loss_rise", "min_val_loss_rise")}
            thresholds["val_patience"] = fit.get("patience")
            evidence = {
                "device": "cpu", "quantization": None, "hyperparameters": {"max_steps": steps},
                "ignored_hyperparameters": [], "validation_split": True,
                "validation_rows_without_answer": 0, "train_rows_without_answer": 0,
                "overfitting": fit, "train_loss": _thin(train), "val_loss": val,
                "reproduced": True,
            }  # fmt: skip
            failures = []
            if fit["flagged"]:
                failures.append(
                    f"overfitting: validation loss stayed at least {fit['rise']:.1%} above its"
                    f" best (step {fit['best_step']}) for the last {fit['patience']}"
                    " evaluations while the training loss kept falling"
                )
            ok = f"reproduced the bundle's adapter; train loss {first:.3f} -> {last:.3f}"
            return GateResult.check(failures, metrics, thresholds, evidence, ok)

    class FixedServing(ServingEvalGate):
        def run(self, ctx: GateContext) -> GateResult:
            spec, p = fixed_spec(ctx, "serving-eval"), ctx.params
            factor = {REFERENCE: 1.0} | {m: float(spec.get(m, 1.0)) for m in p["modes"]}
            rounds = [20.0 + (r % 3) for r in range(12)]
            timed = {m: [(ms * f, 16, ms * f) for ms in rounds] for m, f in factor.items()}
            results = {m: _summary(t, {"peak_mb": 512.0 + 100 * (m == "merged"),
                                       "method": "fixed"}) for m, t in timed.items()}  # fmt: skip
            modes = [m for m in results if m != REFERENCE]
            ratios = {m: _ratios(timed[REFERENCE], timed[m], CPU) for m in modes}
            metrics: dict[str, Any] = {"adapter_size_mb": 0.01}
            for mode in [*modes, REFERENCE]:
                for key in ("p50_latency_ms", "p95_latency_ms", "tokens_per_s", "peak_memory_mb"):
                    metrics[f"{mode}_{key}"] = results[mode][key]
            for mode, r in ratios.items():
                metrics[f"{mode}_latency_ratio"] = r["latency_ratio"]
                metrics[f"{mode}_tokens_per_s_ratio"] = r["tokens_per_s_ratio"]
            metrics["tokens_per_s_ratio"] = min(r["tokens_per_s_ratio"] for r in ratios.values())
            failures = _judge(p, results, ratios, 0.01)
            thresholds = {k: p[k] for k in
                          ("max_adapter_latency_ratio", "max_merged_latency_ratio",
                           "min_tokens_per_s_ratio")}  # fmt: skip
            evidence = {"device": "cpu", "machine": {"cpu": "fixed"}, "modes": results,
                        "ratios": ratios, "notes": []}  # fmt: skip
            summary = "; ".join(
                f"{m} {r['latency_ratio']:.2f}x base latency, {r['tokens_per_s_ratio']:.2f}x"
                " base tokens/s" for m, r in ratios.items()
            )  # fmt: skip
            return GateResult.check(failures, metrics, thresholds, evidence, summary)

    return {
        "target-eval": FixedTargetEval, "regression-eval": FixedRegressionEval,
        "train": FixedTrain, "serving-eval": FixedServing,
    }  # fmt: skip


class _FixedLoader:
    """An entry point that loads a fixed-model gate class (what catalog.load calls)."""

    def __init__(self, name: str) -> None:
        self.name, self.value = name, f"tests.fakegates (fixed {name})"

    def load(self) -> type:
        return _fixed_classes()[self.name]


def use_fixed_model_gates(mp: pytest.MonkeyPatch) -> None:
    """Put the fixed-model gates in the catalog in place of the real model gates."""
    from gates import catalog

    real = catalog.entry_points()
    extra = {
        n: _FixedLoader(n) for n in ("target-eval", "regression-eval", "train", "serving-eval")
    }
    mp.setattr(catalog, "entry_points", lambda: {**real, **extra})
    catalog.load.cache_clear()


@pytest.fixture
def fixed_model_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model gates, with the model replaced by the bundle's `fixed.*` annotations."""
    from gates import catalog

    use_fixed_model_gates(monkeypatch)
    yield
    catalog.load.cache_clear()
