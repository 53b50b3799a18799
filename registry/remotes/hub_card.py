"""The model card (README.md) of a bundle pushed to the Hugging Face Hub.

What a reviewer on the Hub needs to trust a bundle without the registry: its digest,
version, base model (linked and pinned), dataset version and license, lineage, a table
of every gate run, and how to load it with transformers + peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from registry.digest import short

if TYPE_CHECKING:
    from registry.remotes.sync import BundleBlobs
    from registry.repo import Registry


def _lineage(reg: Registry, ref: str) -> list[str]:
    from registry.bundles import show

    info = show(reg, ref)
    return [p["tag"] or short(p["digest"]) for p in info["lineage"]]


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
    tag = f"{row['name']}:v{row['version']}"
    base = bundle.components.get("base_model")
    front = ["---", "library_name: peft", "tags:", "- peft", "- lora", "- lora-registry"]
    if src is not None:
        front.append(f"base_model: {src[0]}")
    front.append("---")
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
        if meta.get("license"):
            ds_text += f", license {meta['license']}"
    else:
        ds_text = "-"
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
        f"| lineage | {' <- '.join([tag, *lineage]) if lineage else tag + ' (no parent)'} |",
        "",
        "## Gate results",
        "",
    ]
    if runs:
        lines += ["| gate | version | status | result | metrics | policy | finished |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in runs:
            metrics = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(r["metrics"].items())
                if isinstance(v, int | float | str)
            )
            policy = short(r["policy_digest"]) if r.get("policy_digest") else "-"
            result = str(r.get("summary") or "-").replace("|", "\\|")
            lines.append(f"| {r['gate']} | {r['gate_version']} | {r['status']} | {result} |"
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
