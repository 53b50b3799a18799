"""rollback-test: the bundle a rollback would return to still restores, loads and behaves.

Fingerprints. Every run of this gate records the candidate's own fingerprint in its
evidence: for a few fixed prompts (the first `num_prompts` rows of the eval set), the
prompt's token ids, the greedy completion (`max_new_tokens`) with the gap between the top
two logits at each of its steps, and logit checksums (sum and L2 norm over the prompt's
logits, the top-5 next-token logits), plus the dtype, device, CPU kernel path and
library versions. Promotion to a channel that requires this gate therefore always leaves
a fingerprint of the bundle as it was when it was promoted.

The check. With a channel (`registry gates run REF --channel production`, as promotion
does), the target is the bundle the channel holds now (the one a rollback would return
to; if the channel already holds the candidate, the bundle before it). The target's
fingerprint recorded closest before it entered the channel is looked up, then the
target is materialized from the store (every byte re-hashed) and loaded:

1. with its own tokenizer and template, in this runtime: it must reproduce the
   fingerprint (same prompt ids; top-5 logits, checksums and step margins within
   `max_logit_diff`; the same greedy tokens at every step whose recorded top-2 margin
   exceeds twice that, so a near tie another CPU kernel path breaks the other way is not
   a failure, see `compare_fingerprints`);
2. with the candidate's tokenizer and template (`check_candidate_tokenizer`, when they
   differ from the target's): a serving stack that keeps the new tokenizer and template
   and rolls back only the weights must get the same outputs too.

A target whose blobs are missing or corrupt, that no longer loads, or that behaves
differently fails the gate. A target without any recorded fingerprint fails too, with
the command that records one. Without a channel the gate only records the fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from gates.base import Gate, GateContext, GateResult
from gates.evals import channel_bundle, load_items
from registry.errors import GateError, RegistryError

GATE = "rollback-test"


class RollbackTestGate(Gate):
    """Record this bundle's fingerprint; check the channel's rollback target reproduces its."""

    name = GATE
    version = "2"
    needs_model = True
    description = "the rollback target restores from the store, loads and reproduces its outputs"
    defaults: ClassVar[dict[str, Any]] = {
        "eval_set": "evals/target.jsonl",
        "num_prompts": 4,
        "max_new_tokens": 8,
        # Float32 fingerprints of the tiny model under the DEFAULT and AVX2 kernel paths
        # differ by at most 3e-6 (top-5 logits; step margins 1.5e-5, checksums 2.5e-7 per
        # element; docs/gates-model.md): 0.01 is over 500 times that, room for deeper
        # models, whose rounding differences grow with depth, while any real change of
        # weights moves logits by far more. It leaves 0.4% of greedy steps undecided.
        "max_logit_diff": 0.01,
        "check_candidate_tokenizer": True,
    }

    def run(self, ctx: GateContext) -> GateResult:
        from gates import modeling

        p = ctx.params
        prompts = [it.prompt for it in load_items(ctx, p["eval_set"])[: int(p["num_prompts"])]]
        loaded = modeling.load_bundle(ctx.workdir, ctx.meta("base_model"))
        try:
            own = modeling.fingerprint(loaded, prompts, int(p["max_new_tokens"]))
        finally:
            modeling.free(loaded)
        evidence: dict[str, Any] = {"device": own["device"], "fingerprint": own}
        thresholds = {"max_logit_diff": p["max_logit_diff"]}
        if ctx.channel is None:
            return GateResult.check(
                [], {"checked": False}, thresholds, evidence,
                "recorded this bundle's fingerprint; no channel given, so no rollback target",
            )  # fmt: skip
        target = rollback_target(ctx)
        if target is None:
            return GateResult.check(
                [], {"checked": False}, thresholds, evidence,
                f"recorded this bundle's fingerprint; {ctx.channel} has nothing to roll back to",
            )  # fmt: skip
        return _check_target(ctx, target, evidence, thresholds)


def rollback_target(ctx: GateContext) -> str | None:
    """The bundle a rollback of the channel would return to after this promotion."""
    from registry.channels import previous

    assert ctx.channel is not None
    held = channel_bundle(ctx, ctx.channel)
    if held != ctx.bundle_digest:
        return held
    with ctx.registry.db.read() as conn:
        return previous(conn, ctx.bundle["name"], ctx.channel, ctx.bundle_digest)


def recorded_fingerprint(
    ctx: GateContext, digest: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The target's fingerprint recorded closest before it entered the channel (else the
    first one recorded after), with where it came from."""
    from registry.gate_runs import evidence as load_evidence
    from registry.gate_runs import rows_for

    with ctx.registry.db.read() as conn:
        entered = conn.execute(
            "SELECT created_at FROM event WHERE name = :n AND channel = :c AND to_digest = :d"
            " ORDER BY seq DESC LIMIT 1",
            {"n": ctx.bundle["name"], "c": ctx.channel, "d": digest},
        ).scalar()
        runs = [
            (r["id"], r["evidence_digest"], r["ended_at"])
            for r in reversed(rows_for(conn, digest))
            if r["gate"] == GATE and r["evidence_digest"]
        ]
    before = [r for r in runs if entered is None or r[2] <= entered]
    after = [r for r in runs if entered is not None and r[2] > entered]
    for run in [*reversed(before), *after]:
        try:
            report = load_evidence(ctx.registry, run[1])
        except RegistryError:
            continue
        fp = (report.get("evidence") or {}).get("fingerprint")
        if fp:
            when = "before" if entered is None or run[2] <= entered else "after"
            return fp, {"run": run[0], "recorded_at": run[2], "entered_channel_at": entered,
                        "recorded": f"{when} it entered the channel"}  # fmt: skip
    return None


def _check_target(
    ctx: GateContext, target: str, evidence: dict[str, Any], thresholds: dict[str, Any]
) -> GateResult:
    from gates import modeling
    from gates.engine import materialize
    from registry.bundles import show

    info = show(ctx.registry, target)
    evidence["target"] = {"tag": info["tag"], "digest": target}
    metrics: dict[str, Any] = {"checked": True}
    found = recorded_fingerprint(ctx, target)
    if found is None:
        return GateResult.check(
            [f"{info['tag']} (the rollback target) has no recorded fingerprint: run"
             f" `registry gates run {info['tag']} --gate {GATE}`"],
            metrics, thresholds, evidence, "",
        )  # fmt: skip
    recorded, source = found
    strict = not all("margins" in item for item in recorded["items"])
    evidence["recorded"] = source | {
        "cpu_kernel_path": recorded.get("cpu_kernel_path"),
        "device": recorded.get("device"),
        "comparison": "strict (recorded without step margins)" if strict else "within tolerance",
    }
    prompts = [item["prompt"] for item in recorded["items"]]
    n_new = int(recorded["max_new_tokens"])
    tol = float(ctx.params["max_logit_diff"])
    failures: list[str] = []
    checks: dict[str, Any] = {}
    swap = ctx.params["check_candidate_tokenizer"] and _differs(
        ctx, info, "tokenizer", "chat_template"
    )
    try:
        with materialize(ctx.registry, target) as wd:
            base_meta = info["components"]["base_model"]["meta"]
            ctx.progress(f"restored {info['tag']}; loading it")
            variants: list[tuple[str, Path | None]] = [("own tokenizer", None)]
            if swap:
                variants.append(("candidate tokenizer", ctx.workdir))
            for label, tok_dir in variants:
                loaded = modeling.load_bundle(wd, base_meta, tokenizer_dir=tok_dir)
                try:
                    now = modeling.fingerprint(loaded, prompts, n_new)
                finally:
                    modeling.free(loaded)
                diffs = compare_fingerprints(recorded, now, tol)
                checks[label] = {"mismatches": diffs, "fingerprint": now}
                if diffs:
                    failures.append(f"{info['tag']} with {label}: {diffs[0]}")
    except RegistryError as exc:  # IntegrityError from the store, GateError from loading
        what = "does not load" if isinstance(exc, GateError) else "does not restore from the store"
        failures.append(f"{info['tag']} (the rollback target) {what}: {exc}")
    evidence["checks"] = checks
    metrics["candidate_tokenizer_checked"] = bool(swap)
    metrics["mismatches"] = sum(len(c["mismatches"]) for c in checks.values())
    summary = f"{info['tag']} restores, loads and reproduces its recorded outputs" + (
        " (also with this bundle's tokenizer and template)" if swap else ""
    )
    now_path = modeling.kernel_path()
    if recorded.get("cpu_kernel_path") and recorded["cpu_kernel_path"] != now_path:
        summary += f" (recorded under kernel path {recorded['cpu_kernel_path']}, now {now_path})"
    return GateResult.check(failures, metrics, thresholds, evidence, summary)


def _differs(ctx: GateContext, target: dict[str, Any], *kinds: str) -> bool:
    mine = ctx.bundle["components"]
    theirs = target["components"]
    return any(
        (mine.get(k) or {}).get("digest") != (theirs.get(k) or {}).get("digest") for k in kinds
    )


def compare_fingerprints(recorded: dict[str, Any], now: dict[str, Any], tol: float) -> list[str]:
    """How `now` differs from `recorded` (empty: the same behaviour within `tol`).

    Every check is implied by "every logit within tol", so a model that reproduces its
    logits that closely (another CPU kernel path of the same runtime does, to about 1e-5)
    never fails; a changed tokenization always does. A greedy step is compared only where
    the recorded gap between the top two logits exceeds 2 * tol (each may move by tol):
    at a nearer tie either token is a faithful reproduction, and after the paths part
    the later steps continue from different text, so they are not compared. A fingerprint
    recorded before margins were (no `margins`) keeps the strict comparison: the same
    greedy output and top-5 ids exactly.
    """
    out: list[str] = []
    if len(recorded["items"]) != len(now["items"]):
        return [f"{len(now['items'])} prompts fingerprinted, {len(recorded['items'])} recorded"]
    for i, (a, b) in enumerate(zip(recorded["items"], now["items"], strict=True)):
        where = f"prompt {i + 1}"
        if a["prompt_ids"] != b["prompt_ids"]:
            out.append(
                f"{where} tokenizes differently ({a['prompt_ids'][:8]} -> {b['prompt_ids'][:8]})"
            )
            continue
        if "margins" in a and "margins" in b:
            out += _greedy_within(where, a, b, tol) + _top_within(where, a, b, tol)
        else:
            if a["output_ids"] != b["output_ids"]:
                out.append(f"{where}: greedy output {a['output']!r} is now {b['output']!r}")
            if a["top_ids"] != b["top_ids"]:
                out.append(f"{where}: top-5 next tokens {a['top_ids']} are now {b['top_ids']}")
            else:
                worst = max(
                    abs(x - y) for x, y in zip(a["top_logits"], b["top_logits"], strict=True)
                )
                if worst > tol:
                    out.append(f"{where}: top-5 logits moved by {worst:.3g} > {tol}")
        n = max(1, int(a["numel"]))
        if a["numel"] != b["numel"] or abs(a["logit_sum"] - b["logit_sum"]) / n > tol:
            out.append(f"{where}: logit sum checksum differs")
        elif abs(a["logit_norm"] - b["logit_norm"]) / n**0.5 > tol:
            out.append(f"{where}: logit norm checksum differs")
    return out


def _greedy_within(where: str, a: dict[str, Any], b: dict[str, Any], tol: float) -> list[str]:
    """The greedy outputs agree at every decided step, and their top-2 margins within
    2 * tol, up to the first near tie where they part (None: the output ended)."""
    ra, rb, ma, mb = a["output_ids"], b["output_ids"], a["margins"], b["margins"]
    for j in range(min(len(ra), len(rb)) + 1):
        ta = ra[j] if j < len(ra) else None
        tb = rb[j] if j < len(rb) else None
        if ta is None and tb is None:
            return []
        gap = ma[j] if j < len(ma) else None
        if ta == tb:
            if gap is not None and j < len(mb) and mb[j] is not None and abs(gap - mb[j]) > 2 * tol:
                return [f"{where}: top-2 logit margin at step {j + 1} moved by"
                        f" {abs(gap - mb[j]):.3g} > 2 x {tol}"]  # fmt: skip
            continue
        if gap is None or gap > 2 * tol:
            return [f"{where}: greedy output {a['output']!r} is now {b['output']!r} (step"
                    f" {j + 1}, where the recorded top-2 margin {gap} > 2 x {tol})"]  # fmt: skip
        return []  # a near tie within tolerance: either token reproduces the model
    return []


def _top_within(where: str, a: dict[str, Any], b: dict[str, Any], tol: float) -> list[str]:
    """The top-5 logits within tol rank by rank, and the same ids at every rank whose
    recorded logit is more than 2 * tol from its neighbours' (the 6th included)."""
    out = []
    worst = max(abs(x - y) for x, y in zip(a["top_logits"], b["top_logits"], strict=True))
    if worst > tol:
        out.append(f"{where}: top-5 logits moved by {worst:.3g} > {tol}")
    values = [*a["top_logits"], *([a["sixth_logit"]] if a.get("sixth_logit") is not None else [])]
    for k, (x, y) in enumerate(zip(a["top_ids"], b["top_ids"], strict=True)):
        tie = any(
            0 <= n < len(values) and abs(values[k] - values[n]) <= 2 * tol for n in (k - 1, k + 1)
        )
        if x != y and not tie:
            out.append(f"{where}: top-5 next tokens {a['top_ids']} are now {b['top_ids']}")
            break
    return out
