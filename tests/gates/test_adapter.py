"""The adapter-compat gate: shapes and modules from safetensors headers, base identity.

Planted defects: an adapter trained with peft for another (narrower) base, an adapter
naming a module the base lacks, an adapter naming another base, bad rank. The gate must
also read a sharded base and an external base from the local Hugging Face cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import add_args, run_cli

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # any database will do
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def check(
    reg: Any, reg_path: Path, tiny: dict[str, Path], *, adapter: Path | None = None,
    base: str | None = None, policy: str = "",
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Register the tiny bundle (adapter / base swapped) and run adapter-compat on it."""
    from gates.engine import run_gates
    from gates.policy import parse
    from registry.gate_runs import evidence

    args = add_args(tiny, "bot")
    if adapter is not None:
        args[args.index("--adapter") + 1] = str(adapter)
    if base is not None:
        args[args.index("--base") + 1] = base
    added = run_cli(*args, registry=reg_path)
    assert added.code == 0, added.err
    pol = parse("[gates.adapter-compat]\n" + policy, reg_path)
    (rec,) = run_gates(reg, "bot:v1", pol, gate_names=["adapter-compat"], actor="t")
    return rec, evidence(reg, rec.evidence_digest)["evidence"]


def copy_adapter(tiny: dict[str, Path], dest: Path, **config: Any) -> Path:
    shutil.copytree(tiny["adapter"], dest)
    path = dest / "adapter_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **config}))
    return dest


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Llama with hidden size 32 (the tiny one has 64) and a peft LoRA adapter for it."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("other")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=29, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out / "base")
    model = LlamaForCausalLM.from_pretrained(out / "base")  # so peft records the base path
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():  # peft calls a deprecated transformers property
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        get_peft_model(model, lora).save_pretrained(out / "adapter")
    return {"base": out / "base", "adapter": out / "adapter"}


@SQLITE
def test_clean_adapter_passes(reg, reg_path, tiny) -> None:  # noqa: ANN001
    rec, ev = check(reg, reg_path, tiny)
    assert rec.status == "passed", rec.summary
    m = rec.metrics
    assert m["modules"] == 10 and m["shapes_checked"] and m["problems"] == 0
    assert m["r"] == 8 and m["lora_alpha"] == 16 and m["scaling"] == 2.0
    assert m["identity"] == "match" and ev["identity"]["adapter"] == str(tiny["base"])
    assert m["targets_match"] and ev["adapted_module_names"] == sorted(ev["target_modules"])
    assert 0 < m["adapter_share"] < 1 and m["adapter_parameters"] == 2 * 8 * (
        (64 + 64) + (64 + 32) + (64 + 64) + (64 + 128) + (128 + 64)
    )
    q = next(x for x in ev["modules"] if x["module"] == "model.layers.0.self_attn.q_proj")
    assert q["base_tensor"] == "model.layers.0.self_attn.q_proj.weight" and q["base_shape"] == [
        64, 64,
    ]  # fmt: skip


@SQLITE
def test_adapter_trained_for_another_base_fails(reg, reg_path, tiny, other) -> None:  # noqa: ANN001
    rec, ev = check(reg, reg_path, tiny, adapter=other["adapter"])
    assert rec.status == "failed" and "do not fit the base" in rec.summary
    problems = {(p["tensor"], p["problem"]) for p in ev["problems"]}
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    assert (f"{name}.lora_A.weight", "in_features 32 is not the base layer's 64") in problems
    assert (f"{name}.lora_B.weight", "out_features 32 is not the base layer's 64") in problems
    assert rec.metrics["problems"] == 8  # q and v, A and B, two layers
    assert rec.metrics["identity"] == "mismatch"
    assert ev["identity"]["adapter"] == str(other["base"])
    assert ev["identity"]["detail"] == "model.safetensors is 83888 bytes, the bundle's is 313176"
    assert f"trained on {str(other['base'])!r}" in rec.summary


@SQLITE
def test_adapter_naming_a_module_the_base_lacks_fails(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy_adapter(tiny, tmp_path / "adapter")
    weights = load_file(ad / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.1.self_attn."
    weights[prefix + "qkv_proj.lora_A.weight"] = weights[prefix + "q_proj.lora_A.weight"]
    weights[prefix + "qkv_proj.lora_B.weight"] = weights[prefix + "q_proj.lora_B.weight"]
    save_file(weights, ad / "adapter_model.safetensors")
    rec, ev = check(reg, reg_path, tiny, adapter=ad)
    assert rec.status == "failed" and "target modules the base lacks" in rec.summary
    missing = [p for p in ev["problems"] if p["problem"] == "module not in base"]
    assert {p["tensor"] for p in missing} == {
        prefix + "qkv_proj.lora_A.weight", prefix + "qkv_proj.lora_B.weight",
    }  # fmt: skip
    assert missing[0]["base_tensor"] == "model.layers.1.self_attn.qkv_proj.weight"


@SQLITE
def test_target_modules_the_tensors_do_not_adapt_fail(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    # The tensors adapt q, v, o, up and down (the tiny project's targets); the config
    # claims q, k, v, o and gate. Every tensor still fits the base: only the names lie.
    listed = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]
    ad = copy_adapter(tiny, tmp_path / "adapter", target_modules=listed)
    rec, ev = check(reg, reg_path, tiny, adapter=ad)
    assert rec.status == "failed", rec.summary
    assert rec.summary == (
        "target_modules ['gate_proj', 'k_proj', 'o_proj', 'q_proj', 'v_proj'] does not match"
        " the modules the tensors adapt ['down_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"
        " (tensors adapt ['down_proj', 'up_proj'], not listed; no tensor adapts"
        " ['gate_proj', 'k_proj'])"
    )
    assert rec.metrics["problems"] == 0 and not rec.metrics["targets_match"]
    cov = ev["target_coverage"]
    assert cov["not_listed"] == ["down_proj", "up_proj"]
    assert cov["not_adapted"] == ["gate_proj", "k_proj"]


@SQLITE
@pytest.mark.parametrize(
    ("targets", "verdict"),
    [
        (["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
          "mlp.down_proj"], None),
        (r"model\.layers\.\d+\.(self_attn\.(q|v|o)_proj|mlp\.(up|down)_proj)", None),
        ("all-linear", None),
        (["q_proj", "v_proj", "o_proj", "up_proj"], "(tensors adapt ['down_proj'], not listed)"),
        (r".*\.(q_proj|v_proj)", "(tensors adapt ['down_proj', 'o_proj', 'up_proj'], not listed)"),
        (r".*_proj", "(no tensor adapts ['gate_proj', 'k_proj'])"),
        ("(q_proj", "is not a valid regular expression"),
    ],
    ids=["dotted-suffixes", "regex", "all-linear", "list-misses-one", "regex-misses",
         "regex-selects-more", "bad-regex"],
)  # fmt: skip
def test_target_module_specs(reg, reg_path, tiny, tmp_path, targets, verdict) -> None:  # noqa: ANN001
    ad = copy_adapter(tiny, tmp_path / "adapter", target_modules=targets)
    rec, ev = check(reg, reg_path, tiny, adapter=ad)
    if verdict is None:
        assert rec.status == "passed", rec.summary
        assert rec.metrics["targets_match"]
    else:
        assert rec.status == "failed" and verdict in rec.summary, rec.summary
    assert ev["adapted_module_names"] == ["down_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@SQLITE
def test_rank_and_alpha_must_be_positive(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy_adapter(tiny, tmp_path / "adapter", lora_alpha=-16)
    rec, _ = check(reg, reg_path, tiny, adapter=ad)
    assert rec.status == "failed" and "lora_alpha must be positive, got -16" in rec.summary


@SQLITE
def test_rank_pattern_is_honoured(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy_adapter(tiny, tmp_path / "adapter", rank_pattern={"v_proj": 4})
    rec, ev = check(reg, reg_path, tiny, adapter=ad)
    assert rec.status == "failed"  # the tensors are rank 8, the config now says 4 for v_proj
    assert {p["problem"] for p in ev["problems"]} == {"rank 8 is not r=4"}
    assert {p["module"].rsplit(".", 1)[1] for p in ev["problems"]} == {"v_proj"}


@SQLITE
def test_sharded_base_is_read_through_its_index(reg, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    base = tmp_path / "sharded"
    shutil.copytree(tiny["base"], base)
    tensors = load_file(base / "model.safetensors")
    (base / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}  # fmt: skip
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, base / shard)
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    ad = copy_adapter(tiny, tmp_path / "adapter", base_model_name_or_path=str(base))
    rec, ev = check(reg, reg_path, tiny, adapter=ad, base=str(base))
    assert rec.status == "passed", rec.summary
    assert ev["base"]["where"] == "bundle base (2 file(s))" and ev["base"]["tensors"] == 21
    assert rec.metrics["identity"] == "match" and rec.metrics["modules"] == 10


def fake_hub_cache(root: Path, base: Path, repo: str = "tiny-org/tiny-llama") -> Path:
    """A Hugging Face cache holding `base` as repo@COMMIT (files in blobs/, like the Hub)."""
    import hashlib

    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for f in base.iterdir():
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return root


@SQLITE
def test_external_base_from_the_hub_cache(reg, reg_path, tiny, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    cache = fake_hub_cache(tmp_path / "hub", tiny["base"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ad = copy_adapter(tiny, tmp_path / "adapter", base_model_name_or_path="tiny-org/tiny-llama")
    rec, ev = check(reg, reg_path, tiny, adapter=ad, base=f"hf://tiny-org/tiny-llama@{COMMIT}")
    assert rec.status == "passed", rec.summary
    assert rec.metrics["shapes_checked"] and rec.metrics["identity"] == "match"
    assert ev["base"]["where"] == f"hf://tiny-org/tiny-llama@{COMMIT} from the local cache"
    # Without the cache the shapes cannot be checked, and the result says so.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    from gates.engine import run_gates
    from gates.policy import parse

    (rec,) = run_gates(reg, "bot:v1", parse("", tmp_path), gate_names=["adapter-compat"], actor="t")
    assert rec.status == "passed" and not rec.metrics["shapes_checked"]
    assert "shapes NOT checked" in rec.summary


@SQLITE
def test_other_hub_model_fails(reg, reg_path, tiny, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_hub_cache(tmp_path / "hub", tiny["base"])))
    ad = copy_adapter(tiny, tmp_path / "adapter", base_model_name_or_path="meta-llama/Llama-3-8B")
    rec, ev = check(reg, reg_path, tiny, adapter=ad, base=f"hf://tiny-org/tiny-llama@{COMMIT}")
    assert rec.status == "failed"
    assert "'meta-llama/Llama-3-8B'" in rec.summary
    assert f"hf://tiny-org/tiny-llama@{COMMIT}" in rec.summary
    assert ev["identity"]["status"] == "mismatch"


@SQLITE
def test_unverifiable_identity(reg, reg_path, tiny, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    ad = copy_adapter(tiny, tmp_path / "adapter", base_model_name_or_path="some-org/some-model")
    rec, ev = check(reg, reg_path, tiny, adapter=ad)
    assert rec.status == "passed" and ev["identity"]["status"] == "unverifiable"
    from gates.engine import run_gates
    from gates.policy import parse

    strict = parse("[gates.adapter-compat]\nrequire_base_identity = true\n", tmp_path)
    (rec,) = run_gates(reg, "bot:v1", strict, gate_names=["adapter-compat"], actor="t")
    assert rec.status == "failed" and "not in the local Hugging Face cache" in rec.summary
