"""The model card (README.md) of a bundle pushed to the Hugging Face Hub.

What a reviewer on the Hub needs to trust a bundle without the registry: its digest,
version, base model (linked and pinned), dataset version and license, lineage, a table
of every gate run, and how to load it with transformers + peft.

The YAML front matter is the Hub's model-card metadata (what `huggingface_hub.ModelCard`
and `metadata_load` read and the Hub validates): `base_model` (the base identity,
registry.export.base_identity, when it names a model rather than the "base" folder),
`library_name: peft`, `license`, `datasets` (Hub dataset ids, where the bundle names
some), `pipeline_tag: text-generation`, and a `model-index` holding the latest run of
each evaluation gate (a gate whose name ends in "eval"): each numeric metric with its
value, its name carrying the run's one-line summary (the figure with its interval).

The license is the bundle's `license` annotation, else the dataset's (its card or
`--license`), else the training config's `license`; unknown, it is `other` with
`license_name: unknown` and the card says so.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from registry.digest import short

if TYPE_CHECKING:
    from registry.remotes.sync import BundleBlobs
    from registry.repo import Registry


def _lineage(reg: Registry, ref: str) -> list[str]:
    from registry.bundles import show

    info = show(reg, ref)
    return [p["tag"] or short(p["digest"]) for p in info["lineage"]]


HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}\Z", re.ASCII)
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}\Z")


def card_license(bundle: BundleBlobs) -> tuple[str | None, str]:
    """(license id or None, where it came from) from the bundle's own records."""
    notes = bundle.manifest.annotations
    ds = bundle.components.get("dataset")
    cfg = bundle.components.get("config")
    hyper = cfg.manifest.meta.get("hyperparameters") if cfg is not None else None
    candidates = [
        (notes.get("license"), "the bundle's license annotation"),
        (
            ds.manifest.meta.get("license") if ds is not None else None,
            "the dataset's --license"
            if ds is not None and ds.manifest.meta.get("license_source") == "--license"
            else "the dataset card",
        ),
        (hyper.get("license") if isinstance(hyper, dict) else None, "the training config"),
    ]
    for value, source in candidates:
        if isinstance(value, str) and LICENSE_RE.match(value.strip().lower()):
            return value.strip().lower(), source
    return None, "unknown"


def card_datasets(bundle: BundleBlobs) -> list[str]:
    """Hub dataset ids the bundle names: its `datasets` annotation (comma-separated), or
    the training config's `dataset` / `dataset_name` / `datasets`."""
    found: list[Any] = []
    note = bundle.manifest.annotations.get("datasets") or bundle.manifest.annotations.get("dataset")
    if isinstance(note, str):
        found += note.split(",")
    cfg = bundle.components.get("config")
    hyper = cfg.manifest.meta.get("hyperparameters") if cfg is not None else None
    if isinstance(hyper, dict):
        for key in ("dataset", "dataset_name", "datasets"):
            value = hyper.get(key)
            found += value if isinstance(value, list) else [value]
    out = [d.strip() for d in found if isinstance(d, str) and HF_ID_RE.match(d.strip())]
    return list(dict.fromkeys(out))


def latest_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """gate -> its latest run (`runs` oldest first, as gate-runs.json lists them)."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        out[r["gate"]] = r
    return out


def model_index(name: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Hub's `model-index`: the latest run of each evaluation gate, one result per
    gate, each numeric metric with its value; the run's summary (figure and interval) is
    in each metric's name. Empty when no evaluation gate has run."""
    results = []
    for gate, r in sorted(latest_runs(runs).items()):
        if not gate.endswith("eval"):
            continue
        figures = {
            k: v
            for k, v in sorted((r.get("metrics") or {}).items())
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN
        }
        if not figures:
            continue
        summary = str(r.get("summary") or r["status"])
        inputs = r.get("inputs") or {}
        dataset: dict[str, Any] = {"type": gate, "name": ", ".join(sorted(inputs)) or gate}
        if len(inputs) == 1:
            dataset["revision"] = str(next(iter(inputs.values())))
        results.append({
            "task": {"type": "text-generation", "name": f"{gate} ({r['status']})"},
            "dataset": dataset,
            "metrics": [{"type": k, "value": v, "name": f"{k}: {summary}"}
                        for k, v in figures.items()],
        })  # fmt: skip
    return [{"name": name, "results": results}] if results else []


def front_matter(
    bundle: BundleBlobs, row: dict[str, Any], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The card's metadata, in the Hub's model-card schema."""
    from registry.export import base_identity
    from registry.remotes.hf import manifests

    meta: dict[str, Any] = {}
    identity = base_identity(manifests(bundle))
    if identity is not None and identity[0] != "base":
        meta["base_model"] = identity[0]
    meta["library_name"] = "peft"
    lic, _source = card_license(bundle)
    if lic is None:
        meta["license"], meta["license_name"] = "other", "unknown"
    else:
        meta["license"] = lic
    if datasets := card_datasets(bundle):
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["peft", "lora", "lora-registry"]
    if index := model_index(row["name"], runs):
        meta["model-index"] = index
    return meta


def model_card(
    reg: Registry,
    bundle: BundleBlobs,
    row: dict[str, Any],
    runs: list[dict[str, Any]],
    repo_id: str,
    include_base: bool,
    src: tuple[str, str] | None,
) -> bytes:
    """README.md: the Hub's model card, with what a reviewer needs to trust the bundle.

    `src` is the external base (Hub repo id, commit) the adapter names, or None.
    """
    import yaml

    tag = f"{row['name']}:v{row['version']}"
    base = bundle.components.get("base_model")
    meta = front_matter(bundle, row, runs)
    front = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---"]
    if src is not None:
        base_text = f"[{src[0]}](https://huggingface.co/{src[0]}) at commit `{src[1]}`"
    elif base is not None:
        where = "in `base/`" if include_base else "not uploaded (push with `--include-base`)"
        base_text = f"local base `{short(base.desc.digest, 16)}`, {where}"
    else:
        base_text = "-"
    ds = bundle.components.get("dataset")
    if ds is not None:
        meta = ds.manifest.meta
        splits = meta.get("splits")
        split_text = (
            ", ".join(
                f"{k} {v.get('rows', v) if isinstance(v, dict) else v}"
                for k, v in sorted(splits.items())
            )  # fmt: skip
            if isinstance(splits, dict)
            else ""
        )
        ds_text = f"`{short(ds.desc.digest, 16)}`" + (f" ({split_text})" if split_text else "")
        if ds.manifest.meta.get("license"):
            ds_text += f", license {ds.manifest.meta['license']}"
    else:
        ds_text = "-"
    lic, lic_source = card_license(bundle)
    lic_text = (
        f"{lic} (from {lic_source})"
        if lic
        else "unknown: no license annotation, dataset license or config license (set one"
        " with `registry add ... --annotation license=ID`)"
    )
    lineage = _lineage(reg, f"{row['name']}@{bundle.digest}")
    lines = [
        *front,
        "",
        f"# {tag}",
        "",
        "A LoRA bundle published by lora-registry: adapter, tokenizer, chat template,"
        " dataset version and training config, pinned by one digest.",
        "",
        "| | |",
        "|---|---|",
        f"| bundle | `{bundle.digest}` |",
        f"| version | v{row['version']} |",
        f"| base model | {base_text} |",
        f"| dataset | {ds_text} |",
        f"| license | {lic_text} |",
        f"| lineage | {' <- '.join([tag, *lineage]) if lineage else tag + ' (no parent)'} |",
        "",
        "## Gate results",
        "",
    ]
    if runs:
        lines += ["| gate | version | status | result | metrics | policy | finished |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        latest = {id(r) for r in latest_runs(runs).values()}
        for r in runs:
            status = r["status"] if id(r) in latest else f"{r['status']} (superseded)"
            metrics = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(r["metrics"].items())
                if isinstance(v, int | float | str)
            )
            policy = short(r["policy_digest"]) if r.get("policy_digest") else "-"
            result = str(r.get("summary") or "-").replace("|", "\\|")
            lines.append(f"| {r['gate']} | {r['gate_version']} | {status} | {result} |"
                         f" {metrics or '-'} | `{policy}` | {r['ended_at']} |")  # fmt: skip
        lines += ["", "Each run's evidence is under `registry/evidence/`; all runs are in"
                  " `registry/gate-runs.json`."]  # fmt: skip
    else:
        lines.append("No gate has run on this bundle yet.")
    base_load = (
        f'base = AutoModelForCausalLM.from_pretrained("{src[0]}", revision="{src[1]}")'
        if src is not None
        else f'base = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="base")'
        if include_base
        else "base = AutoModelForCausalLM.from_pretrained(...)  # the bundle's base model"
    )
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        base_load,
        f'model = PeftModel.from_pretrained(base, "{repo_id}", revision="v{row["version"]}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="v{row["version"]}")',
        "```",
        "",
        f"Or, with the registry: `registry pull {tag} --remote NAME` re-verifies every"
        " digest against the manifests under `registry/`. Channel positions (staging,"
        " production, ...) are in `registry/channels.json`; each version is a git tag.",
        "",
    ]
    return "\n".join(lines).encode()
