"""`registry init/add/ls/show/diff/verify/gc/export` end to end, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.conftest import add_args, run_cli


def test_init_creates_layout(reg_path: Path, backend: str) -> None:
    assert (reg_path / "registry.toml").is_file()
    assert (reg_path / "blobs" / "sha256").is_dir()
    assert (reg_path / "registry.db").exists() == (backend == "sqlite")


def test_add_is_content_addressed_and_idempotent(cli, tiny) -> None:  # noqa: ANN001
    first = cli(*add_args(tiny), "--json")
    assert first.code == 0, first.err
    a = json.loads(first.out)
    assert a["tag"] == "support-bot:v1" and a["created"]
    again = json.loads(cli(*add_args(tiny), "--json").out)
    assert again == {**a, "created": False}
    other = json.loads(cli(*add_args(tiny), "--license", "apache-2.0", "--json").out)
    assert other["tag"] == "support-bot:v2" and other["digest"] != a["digest"]
    listed = json.loads(cli("ls", "--json").out)
    assert [r["tag"] for r in listed] == ["support-bot:v2", "support-bot:v1"]


def test_show_records_parsed_metadata(cli, tiny) -> None:  # noqa: ANN001
    cli(*add_args(tiny))
    info = json.loads(cli("show", "support-bot:v1", "--json").out)
    comps = info["components"]
    assert set(comps) == {
        "base_model",
        "adapter",
        "tokenizer",
        "chat_template",
        "dataset",
        "config",
    }
    ad = comps["adapter"]["meta"]
    assert ad["peft_type"] == "LORA" and ad["r"] == 8 and ad["lora_alpha"] == 16
    assert ad["target_modules"] == sorted(["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    assert ad["weights"]["parameters"] > 0 and ad["scaling"] == 2.0
    assert comps["base_model"]["meta"]["model_type"] == "llama"
    assert comps["base_model"]["meta"]["weights"]["dtypes"] == ["F32"]
    tok = comps["tokenizer"]["meta"]
    assert tok["special_tokens"]["eos_token"] == "<|end|>" and tok["vocab_size"] == 29
    ds = comps["dataset"]["meta"]
    rows = {s: len((tiny["dataset"] / f"{s}.jsonl").read_text().splitlines())
            for s in ("train", "validation")}  # fmt: skip
    assert ds["splits"] == rows == {"train": 600, "validation": 100} and ds["license"] == "mit"
    assert ds["format"] == "chat"
    assert comps["config"]["meta"]["hyperparameters"]["max_seq_len"] == 32
    text = cli("show", "support-bot:v1").out
    assert "peft_type: LORA" in text and "support-bot:v1" in text


def test_every_reference_form_resolves(cli, tiny) -> None:  # noqa: ANN001
    digest = json.loads(cli(*add_args(tiny), "--json").out)["digest"]
    hexd = digest.split(":")[1]
    for ref in (
        "support-bot",
        "support-bot:v1",
        f"support-bot@sha256:{hexd[:8]}",
        f"support-bot@{hexd[:12]}",
        f"sha256:{hexd[:10]}",
        digest,
    ):
        out = cli("show", ref, "--json")
        assert out.code == 0, (ref, out.err)
        assert json.loads(out.out)["digest"] == digest


def test_from_trainer_output_and_lineage(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    v1 = json.loads(cli(*add_args(tiny), "--json").out)
    out = tmp_path / "out"
    shutil.copytree(tiny["trainer_output"], out)
    (out / "optimizer.pt").write_bytes(b"\x80\x04not really a pickle")
    (out / "trainer_state.json").write_text("{}")
    res = cli(
        "add",
        "support-bot",
        "--from",
        out,
        "--base",
        tiny["base"],
        "--dataset",
        tiny["dataset"],
        "--config",
        tiny["config"],
        "--parent",
        "support-bot:v1",
        "--json",
    )
    assert res.code == 0, res.err
    assert "skipped 2 file(s)" in res.err and "optimizer.pt" in res.err
    info = json.loads(cli("show", "support-bot:v2", "--json").out)
    assert info["lineage"][0]["digest"] == v1["digest"]
    assert {f["path"] for f in info["components"]["tokenizer"]["files"]} >= {"tokenizer.json"}
    assert "chat_template" in info["components"]
    d = json.loads(cli("diff", "support-bot:v1", "support-bot:v2", "--json").out)
    assert d["components"]["base_model"]["status"] == "unchanged"


def test_full_finetune_registers_without_adapter(cli, tiny) -> None:  # noqa: ANN001
    res = cli("add", "full-bot", "--full", "--base", tiny["base"], "--tokenizer", tiny["tokenizer"])
    assert res.code == 0, res.err
    info = json.loads(cli("show", "full-bot:v1", "--json").out)
    assert "adapter" not in info["components"]
    assert info["annotations"] == {"adaptation": "full"} and info["adaptation"] == "full"
    assert cli("add", "x", "--base", tiny["base"]).code == 2  # neither --adapter nor --full


def test_every_adaptation_registers_with_its_type(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    """LoRA, QLoRA, IA3 and prompt tuning (adapters made with peft on the tiny base)."""
    import torch
    from peft import IA3Config, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def peft_adapter(config, out: Path) -> Path:  # noqa: ANN001
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["base"]), config)
        model.save_pretrained(out)
        return out

    ia3 = peft_adapter(IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj"],
                                 feedforward_modules=["down_proj"]), tmp_path / "ia3")  # fmt: skip
    prompt = peft_adapter(PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                          tmp_path / "prompt")  # fmt: skip
    qlora_cfg = tmp_path / "qlora.yaml"
    qlora_cfg.write_text(
        tiny["config"].read_text() + "load_in_4bit: true\nbnb_4bit_quant_type: nf4\n"
    )

    def add(name: str, adapter: Path, config: Path = tiny["config"]) -> dict:
        args = add_args(tiny, name)
        args[args.index("--adapter") + 1] = str(adapter)
        args[args.index("--config") + 1] = str(config)
        res = cli(*args)
        assert res.code == 0, res.err
        return json.loads(cli("show", name, "--json").out)

    lora = add("lora-bot", tiny["adapter"])
    assert (
        lora["adaptation"] == "lora" and "quantization" not in lora["components"]["config"]["meta"]
    )
    qlora = add("qlora-bot", tiny["adapter"], qlora_cfg)
    assert qlora["adaptation"] == "qlora"
    assert qlora["components"]["config"]["meta"]["quantization"] == "4bit"
    # the same adapter bytes: only the recipe says it was trained on a 4-bit base
    assert qlora["components"]["adapter"]["digest"] == lora["components"]["adapter"]["digest"]
    a = add("ia3-bot", ia3)
    assert a["adaptation"] == "ia3"
    assert a["components"]["adapter"]["meta"]["peft_type"] == "IA3"
    assert a["components"]["adapter"]["meta"]["feedforward_modules"] == ["down_proj"]
    p = add("prompt-bot", prompt)
    assert p["adaptation"] == "prompt_tuning"
    assert p["components"]["adapter"]["meta"]["num_virtual_tokens"] == 4
    assert "adapts    prompt_tuning" in cli("show", "prompt-bot").out


def test_diff_reports_changed_files_and_meta(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    cli(*add_args(tiny))
    ds = tmp_path / "ds"
    shutil.copytree(tiny["dataset"], ds)
    with open(ds / "train.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "sort b a c"},
                        {"role": "assistant", "content": "a b c"},
                    ]
                }
            )
            + "\n"
        )
    args = add_args(tiny)
    args[args.index("--dataset") + 1] = str(ds)
    cli(*args)
    d = json.loads(cli("diff", "support-bot:v1", "support-bot:v2", "--json").out)
    assert d["components"]["dataset"]["status"] == "changed"
    assert d["components"]["dataset"]["files"]["changed"] == ["train.jsonl"]
    assert d["components"]["dataset"]["meta"]["splits.train"] == [600, 601]
    assert d["components"]["adapter"]["status"] == "unchanged"
    assert "C train.jsonl" in cli("diff", "support-bot:v1", "support-bot:v2").out


def test_verify_reports_every_corrupt_and_missing_blob(cli, reg_path, tiny) -> None:  # noqa: ANN001
    cli(*add_args(tiny))
    assert cli("verify", "--all").code == 0
    info = json.loads(cli("show", "support-bot:v1", "--json").out)
    files = {f["path"]: f["digest"] for f in info["components"]["adapter"]["files"]}
    blob = lambda d: reg_path / "blobs" / "sha256" / d[7:9] / d[7:]  # noqa: E731
    corrupt = blob(files["adapter_model.safetensors"])
    os.chmod(corrupt, 0o644)
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    blob(files["adapter_config.json"]).unlink()
    res = cli("verify", "support-bot:v1", "--json")
    assert res.code == 1
    problems = {p["digest"]: p["reason"] for p in json.loads(res.out)["problems"]}
    assert problems == {
        files["adapter_model.safetensors"]: "corrupt",
        files["adapter_config.json"]: "missing",
    }


def test_gc_removes_only_unreachable_blobs_past_grace(cli, reg, tiny) -> None:  # noqa: ANN001
    cli(*add_args(tiny))
    stray = reg.store.put_bytes(b"orphan")
    assert cli("gc", "--dry-run", "--grace", "0").out.count("would remove sha256:") == 1
    assert reg.store.has(stray.digest)
    assert cli("gc").out.startswith("removed 0 blobs")  # default grace keeps the young orphan
    assert cli("gc", "--grace", "0", "--force", "--reason", "test").code == 0
    assert not reg.store.has(stray.digest)
    assert cli("verify", "--all").code == 0


def test_export_loads_with_transformers_and_peft(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    cli(*add_args(tiny))
    dest = tmp_path / "exp"
    res = cli("export", "support-bot:v1", dest)
    assert res.code == 0, res.err
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(dest, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(dest / "base", local_files_only=True)
    model = PeftModel.from_pretrained(base, dest, local_files_only=True)
    msgs = [{"role": "user", "content": "sort c a b"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    from gates.tiny import render

    assert text == render(msgs, add_generation_prompt=True)
    assert text.endswith("<|assistant|>")
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        assert model(**ids).logits.shape[-1] == len(tok)
    assert json.loads((dest / "registry" / "bundle.json").read_text())["name"] == "support-bot"
    assert run_cli("export", "support-bot:v1", dest, registry=dest.parent / "nope").code == 2


def test_external_base_pinned_from_local_hf_cache(cli, tiny, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(tiny["base"].iterdir()):
        blob = repo / "blobs" / f.name
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / f.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = add_args(tiny)
    args[args.index("--base") + 1] = "hf://org/tiny@main"
    res = cli(*args, "--json")
    assert res.code == 0, res.err
    info = json.loads(cli("show", "support-bot:v1", "--json").out)
    base = info["components"]["base_model"]
    assert base["source"] == f"hf://org/tiny@{commit}"
    assert base["meta"]["revision"] == commit and base["meta"]["requested_revision"] == "main"
    assert any(f["path"] == "model.safetensors" for f in base["files"])
    # Nothing of the external base is stored: the bundle is only as big as the rest.
    assert info["size"] < sum(f.stat().st_size for f in tiny["base"].iterdir())
    args[args.index("--base") + 1] = "hf://org/other@main"
    missing = cli(*args)
    assert missing.code == 2 and "not in the local Hugging Face cache" in missing.err
    # A partial snapshot (files are cached one by one) is refused, not pinned as the base.
    (snap / "model.safetensors").unlink()
    args[args.index("--base") + 1] = f"hf://org/tiny@{commit}"
    before = cli("ls", "--json").out
    partial = cli(*args)
    assert partial.code == 2 and "holds no weights (a partial download)" in partial.err
    assert cli("ls", "--json").out == before


def test_unreachable_hub_falls_back_to_the_cache_and_says_so(
    cli, tiny, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(tiny["base"].iterdir()):
        shutil.copy(f, snap / f.name)
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    args = add_args(tiny)
    args[args.index("--base") + 1] = f"hf://org/tiny@{commit}"
    res = cli(*args)
    assert res.code == 0, res.err
    assert "could not be reached" in res.err and "pinned from the local cache" in res.err
    base = json.loads(cli("show", "support-bot:v1", "--json").out)["components"]["base_model"]
    assert base["source"] == f"hf://org/tiny@{commit}"
    args[args.index("--base") + 1] = "hf://org/other@main"
    res = cli(*args)
    assert res.code != 0 and res.err.count("\n") == 1, res.err
    assert "could not be reached" in res.err and "not in the local cache" in res.err
