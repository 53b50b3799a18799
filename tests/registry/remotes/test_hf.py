"""The Hugging Face Hub remote: the real huggingface_hub client against our Hub-compatible
test server (tests/registry/remotes/hubserver.py), and what it publishes loaded with transformers
and peft exactly as a user would load a model repo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import add_args, run_cli
from tests.registry.remotes.conftest import HF_TEST_TOKEN, add_tiny, cli_ok

# peft calls a deprecated transformers property while loading; nothing for us to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

REPO = "my-org/support-bot"
POLICY = "[channels.production]\nrequire = []\n"


def add_hub(reg: Path, name: str = "hub", repo: str = REPO, *extra: str) -> None:
    cli_ok(reg, "remote", "add", name, f"hf://{repo}", *extra)


def push_json(reg: Path, *args: str) -> dict:
    return json.loads(cli_ok(reg, "push", *args, "--json"))


def pull_json(reg: Path, ref: str, remote: str = "hub") -> dict:
    return json.loads(cli_ok(reg, "pull", ref, "--remote", remote, "--json"))


def record_gate_run(
    reg_path: Path, ref: str, gate: str, status: str, summary: str | None = None, **metrics: Any
) -> None:
    """Record a gate run the way the engine does (evidence blob, then the gate_run row)."""
    from gates.base import GateResult
    from gates.engine import record
    from registry import refs
    from registry.db import now
    from registry.repo import Registry

    class Recorded:
        name, version = gate, "1"

    reg = Registry.open(reg_path)
    with reg.db.read() as conn:
        digest = refs.resolve(conn, ref)["digest"]
    record(reg, digest, Recorded, None, {}, GateResult(status, metrics=metrics,
           summary=summary or f"{gate} {status}"), now(), "tester")  # fmt: skip
    reg.close()


def files_at(server: Any, rev: str) -> dict[str, Any]:
    repo = server.state.repos[REPO]
    return server.state.resolve(repo, rev).files


def content(server: Any, rev: str, path: str) -> bytes:
    return server.state.content(files_at(server, rev)[path])


def logits(model: Any, tokenizer: Any) -> Any:
    import torch

    ids = tokenizer("sort c a b", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def reference_logits(tiny: dict[str, Path]) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tiny["adapter"]).eval()
    return logits(model, AutoTokenizer.from_pretrained(tiny["tokenizer"]))


def test_push_publishes_a_peft_repo_that_transformers_and_pull_load(
    make_registry, tiny, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from huggingface_hub import snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = make_registry("a")
    bundle = add_tiny(a, tiny)
    record_gate_run(a, "support-bot:v1", "dataset-audit", "passed", duplicate_rate=0.0)
    record_gate_run(a, "support-bot:v1", "target-eval", "failed",
                    "+0.012 (95% bound >= -0.031)", delta=0.012)  # fmt: skip
    add_hub(a, "hub", REPO, "--private")
    out = push_json(a, "support-bot:v1", "--remote", "hub", "--include-base")
    assert out["refs"] == ["v1"] and out["blobs_sent"] == out["blobs"]
    repo = hub.state.repos[REPO]
    assert repo.private and sorted(repo.tags) == ["v1"]
    files = files_at(hub, "v1")
    for path in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "base/config.json",
        "base/model.safetensors",
        "dataset/train.jsonl",
        "config/train.yaml",
        "registry/bundle.json",
        "registry/components/adapter.json",
        "registry/gate-runs.json",
        "registry/versions.json",
        "registry/channels.json",
        "registry/files/adapter/README.md",
    ):
        assert path in files, path
    assert files["adapter_model.safetensors"].sha256  # went through LFS, not inline
    assert (
        content(hub, "v1", "registry/bundle.json")
        == (a / "blobs" / "sha256" / bundle["digest"][7:9] / bundle["digest"][7:]).read_bytes()
    )
    card = content(hub, "v1", "README.md").decode()
    assert card.startswith("---\nlibrary_name: peft\n")  # a local base named by a path: none
    # The adapter was added naming its base by this machine's path; the Hub copy does not.
    assert str(tiny["base"]) in (tiny["adapter"] / "adapter_config.json").read_text()
    published = json.loads(content(hub, "v1", "adapter_config.json"))
    assert published["base_model_name_or_path"] == "base"
    assert content(hub, "v1", "registry/files/adapter/adapter_config.json") == (
        tiny["adapter"] / "adapter_config.json").read_bytes()  # fmt: skip
    assert bundle["digest"] in card and "| bundle |" in card and "| lineage |" in card
    assert "| dataset-audit | 1 | passed | dataset-audit passed | duplicate_rate=0 |" in card
    # each result with its interval, as `gates show` prints it
    assert "| target-eval | 1 | failed | +0.012 (95% bound >= -0.031) | delta=0.012 |" in card
    assert "dataset | `sha256:" in card and "license" in card
    runs = json.loads(content(hub, "v1", "registry/gate-runs.json"))
    assert [(r["gate"], r["status"]) for r in runs] == [
        ("dataset-audit", "passed"),
        ("target-eval", "failed"),
    ]
    assert all(f"registry/evidence/{r['evidence_digest'][7:]}.json" in files for r in runs)

    # An unchanged push sends nothing and makes no commit.
    commits = len(repo.commits)
    again = push_json(a, "support-bot:v1", "--remote", "hub")
    assert again["blobs_sent"] == 0 and again["refs"] == [] and len(repo.commits) == commits

    # What snapshot_download returns loads directly with transformers and peft.
    expected = reference_logits(tiny)
    snap = Path(snapshot_download(REPO, revision="v1"))
    tokenizer = AutoTokenizer.from_pretrained(snap)
    base = AutoModelForCausalLM.from_pretrained(snap / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, snap).eval()
    assert torch.allclose(logits(model, tokenizer), expected)
    assert tokenizer.chat_template == (tiny["chat_template"]).read_text()

    # What pull returns (exported) loads the same, every digest re-verified on the way.
    b = make_registry("b")
    add_hub(b)
    pulled = pull_json(b, "support-bot:v1")
    assert pulled["digest"] == bundle["digest"] and pulled["tag"] == "support-bot:v1"
    assert "ok" in cli_ok(b, "verify", "support-bot:v1")
    # It keeps when and by whom it was created (registry/created.json), and says who pulled.
    mine, theirs = (json.loads(cli_ok(r, "show", "support-bot:v1", "--json")) for r in (a, b))
    assert "registry/created.json" in files
    assert (theirs["created_at"], theirs["created_by"]) == (mine["created_at"], mine["created_by"])
    assert theirs["pulled"]["remote"] == "hub" and theirs["pulled"]["creation_from_remote"]
    assert mine["pulled"] is None
    cli_ok(b, "export", "support-bot:v1", b.parent / "out")
    out_dir = b.parent / "out"
    assert (out_dir / "adapter_config.json").read_bytes() == content(
        hub, "v1", "adapter_config.json")  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(out_dir / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out_dir).eval()
    assert torch.allclose(logits(model, AutoTokenizer.from_pretrained(out_dir)), expected)

    # The token comes from the environment; without it the private repo is invisible.
    assert HF_TEST_TOKEN not in json.dumps(out)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    res = run_cli("pull", "support-bot:v1", "--remote", "hub", registry=b)
    assert res.code == 1 and "(unauthorized)" in res.err and res.err.count("\n") == 1


def test_versions_tags_and_channels_on_the_hub(make_registry, tiny, hub) -> None:
    from cli.commands.remote import ls_remote
    from registry.repo import Registry

    a, b = make_registry("a"), make_registry("b")
    policy = a.parent / "policy.toml"
    policy.write_text(POLICY)
    cli_ok(a, "policy", "set", policy)
    v1 = add_tiny(a, tiny)
    v2 = add_tiny(a, tiny, "--annotation", "note=v2")
    add_hub(a)
    add_hub(b)
    cli_ok(a, "promote", "support-bot:v1", "--to", "production")
    first = push_json(a, "support-bot:production", "--remote", "hub", "--include-base")
    assert first["refs"] == ["v1", "production"]
    lfs_bytes = hub.state.lfs_uploaded
    out = push_json(a, "support-bot:v2", "--remote", "hub", "--include-base")
    assert out["refs"] == ["v2"] and out["blobs_sent"] == 0  # every file blob is shared
    assert hub.state.lfs_uploaded == lfs_bytes  # nothing large sent twice
    assert sorted(hub.state.repos[REPO].tags) == ["v1", "v2"]
    reg = Registry.open(b)
    listed = ls_remote(reg, "hub")
    reg.close()
    assert [(e["tag"], e["digest"], e["channels"]) for e in listed] == [
        ("support-bot:v2", v2["digest"], []),
        ("support-bot:v1", v1["digest"], ["production"]),
    ]
    assert pull_json(b, "support-bot:production")["tag"] == "support-bot:v1"

    cli_ok(a, "promote", "support-bot:v2", "--to", "production")
    moved = push_json(a, "support-bot:production", "--remote", "hub")
    assert moved["refs"] == ["production"]
    channels = json.loads(content(hub, "main", "registry/channels.json"))
    assert channels["channels"] == {"production": {"digest": v2["digest"], "version": 2}}
    got = pull_json(b, "support-bot:production")
    assert got["tag"] == "support-bot:v2" and got["tracking"] == "hub/production"
    assert got["tracking_moved"]
    # The tracking view moved; no local channel exists or moved.
    view = json.loads(cli_ok(b, "history", "support-bot:hub/production", "--json"))
    assert view["digest"] == v2["digest"]
    assert run_cli("history", "support-bot:production", registry=b).code == 2

    # main follows production: a rollback's push shows v1's files on main again.
    cli_ok(a, "rollback", "support-bot:production", "--reason", "incident")
    assert push_json(a, "support-bot:production", "--remote", "hub")["refs"] == ["production"]
    assert json.loads(content(hub, "main", "registry/bundle.json"))["annotations"] == {}
    assert "base/model.safetensors" in files_at(hub, "main")  # v1 was pushed with its base
    assert pull_json(b, "support-bot:production")["tag"] == "support-bot:v1"

    # Versions never move; one repo holds one bundle name.
    c = make_registry("c")
    add_tiny(c, tiny, "--annotation", "team=c")
    add_hub(c)
    res = run_cli("push", "support-bot:v1", "--remote", "hub", registry=c)
    assert res.code == 1 and "versions never move" in res.err
    cli_ok(c, *add_args(tiny, "other-bot"))
    res = run_cli("push", "other-bot:v1", "--remote", "hub", registry=c)
    assert res.code == 2 and "holds bundles named support-bot" in res.err


def test_an_external_base_is_referenced_not_uploaded(make_registry, tiny, hub) -> None:
    import torch
    from huggingface_hub import HfApi, snapshot_download
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    api = HfApi()
    api.create_repo("base-org/tiny-base")
    base_commit = api.upload_folder(
        repo_id="base-org/tiny-base", folder_path=tiny["base"], commit_message="base"
    ).oid
    a = make_registry("a")
    args = add_args(tiny)
    args[args.index("--base") + 1] = f"hf://base-org/tiny-base@{base_commit}"
    bundle = json.loads(cli_ok(a, *args, "--json"))
    add_hub(a)
    res = run_cli("push", "support-bot:v1", "--remote", "hub", "--include-base", registry=a)
    assert res.code == 2 and "referenced, not copied" in res.err
    push_json(a, "support-bot:v1", "--remote", "hub")
    files = files_at(hub, "v1")
    assert not any(p.startswith("base/") for p in files)
    published = json.loads(content(hub, "v1", "adapter_config.json"))
    assert published["base_model_name_or_path"] == "base-org/tiny-base"
    assert published["revision"] == base_commit
    assert (
        content(hub, "v1", "registry/files/adapter/adapter_config.json")
        == (tiny["adapter"] / "adapter_config.json").read_bytes()
    )
    card = content(hub, "v1", "README.md").decode()
    assert "base_model: base-org/tiny-base" in card and base_commit in card

    # A user loads the repo by name alone: peft fetches the pinned base from the Hub.
    expected = reference_logits(tiny)
    model = AutoPeftModelForCausalLM.from_pretrained(REPO, revision="v1", dtype=torch.float32)
    snap = snapshot_download(REPO, revision="v1")
    assert torch.allclose(logits(model.eval(), AutoTokenizer.from_pretrained(snap)), expected)

    b = make_registry("b")
    add_hub(b)
    pulled = pull_json(b, "support-bot:v1")
    assert pulled["digest"] == bundle["digest"]
    assert "ok" in cli_ok(b, "verify", "support-bot:v1")
    # It keeps when and by whom it was created (registry/created.json), and says who pulled.
    mine, theirs = (json.loads(cli_ok(r, "show", "support-bot:v1", "--json")) for r in (a, b))
    assert "registry/created.json" in files
    assert (theirs["created_at"], theirs["created_by"]) == (mine["created_at"], mine["created_by"])
    assert theirs["pulled"]["remote"] == "hub" and theirs["pulled"]["creation_from_remote"]
    assert mine["pulled"] is None
    cli_ok(b, "export", "support-bot:v1", b.parent / "out")
    # export publishes the same adapter_config.json as the Hub; the stored one beside it
    out = b.parent / "out"
    assert (out / "adapter_config.json").read_bytes() == content(hub, "v1", "adapter_config.json")
    assert (out / "registry/files/adapter/adapter_config.json").read_bytes() == (
        tiny["adapter"] / "adapter_config.json"
    ).read_bytes()


def test_a_local_base_left_off_the_hub_must_already_be_in_the_store(
    make_registry, tiny, hub
) -> None:
    a, b = make_registry("a"), make_registry("b")
    add_tiny(a, tiny)
    add_hub(a)
    out = push_json(a, "support-bot:v1", "--remote", "hub")
    assert "local base model was not uploaded" in out["notes"][0]
    add_hub(b)
    res = run_cli("pull", "support-bot:v1", "--remote", "hub", registry=b)
    assert res.code == 1 and "base model is not on hf://" in res.err
    assert json.loads(cli_ok(b, "ls", "--json")) == []
    cli_ok(b, "add", "scratch", "--base", tiny["base"], "--full")  # now the store holds the base
    assert pull_json(b, "support-bot:v1")["tag"] == "support-bot:v1"
    assert "ok" in cli_ok(b, "verify", "support-bot:v1")


def test_a_tampered_repo_is_refused_on_pull(make_registry, tiny, hub) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    a, b = make_registry("a"), make_registry("b")
    add_tiny(a, tiny)
    add_hub(a)
    add_hub(b)
    push_json(a, "support-bot:v1", "--remote", "hub", "--include-base")
    api = HfApi()
    weights = bytearray(content(hub, "v1", "adapter_model.safetensors"))
    weights[-1] ^= 1
    evil = api.create_commit(REPO, [CommitOperationAdd("adapter_model.safetensors",
                                                       bytes(weights))],
                             commit_message="tamper").oid  # fmt: skip
    api.delete_tag(REPO, tag="v1")
    api.create_tag(REPO, tag="v1", revision=evil)
    res = run_cli("pull", "support-bot:v1", "--remote", "hub", registry=b)
    assert res.code == 1 and "does not match its digest" in res.err
    assert json.loads(cli_ok(b, "ls", "--json")) == []
    for scratch in (b / "blobs" / "tmp", b / "tmp"):  # nothing half-downloaded left behind
        assert not [p for p in scratch.rglob("*") if p.is_file()]


def test_an_interrupted_hub_push_resumes_without_resending(
    make_registry, tiny, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub._commit_api as commit_api
    from huggingface_hub import HfApi

    a = make_registry("a")
    add_tiny(a, tiny)
    add_hub(a)
    fail = {"commit": 1, "tag": 0}

    def flaky(real: Any, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if fail[name]:
                fail[name] -= 1
                raise OSError("connection reset by peer")  # the network died here
            return real(*args, **kwargs)

        return call

    # The commit request dies after the LFS uploads; then the tag request after the commit.
    monkeypatch.setattr(commit_api, "_send_commit", flaky(commit_api._send_commit, "commit"))
    monkeypatch.setattr(HfApi, "create_tag", flaky(HfApi.create_tag, "tag"))
    res = run_cli("push", "support-bot:v1", "--remote", "hub", "--include-base", registry=a)
    assert res.code == 1 and "cannot reach hf://" in res.err and res.err.count("\n") == 1
    repo = hub.state.repos[REPO]
    assert len(repo.commits) == 1 and repo.tags == {}  # LFS objects uploaded, nothing visible
    uploaded = hub.state.lfs_uploaded
    assert uploaded > 0
    fail["tag"] = 1  # this time the commit lands but the tag does not
    res = run_cli("push", "support-bot:v1", "--remote", "hub", "--include-base", registry=a)
    assert res.code == 1 and repo.tags == {} and len(repo.commits) == 2
    assert hub.state.lfs_uploaded == uploaded  # nothing large sent twice
    from cli.commands.remote import ls_remote
    from registry.repo import Registry

    reg = Registry.open(a)
    assert ls_remote(reg, "hub") == []  # a version exists only once it is tagged
    reg.close()
    out = push_json(a, "support-bot:v1", "--remote", "hub", "--include-base")
    assert out["refs"] == ["v1"] and len(repo.commits) == 2 and repo.tags["v1"]
    assert hub.state.lfs_uploaded == uploaded


def test_add_pins_a_hub_base_by_asking_the_hub(make_registry, tiny, hub) -> None:  # noqa: ANN001
    """Online, `--base hf://org/name@main` asks the Hub: the branch resolves to its commit
    now, every file (LFS and small ones) is listed with its sha256, and nothing of the base
    is stored. A partial download in the cache does not shrink the pinned file list."""
    import hashlib

    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo("base-org/tiny-llama")
    first = api.upload_folder(repo_id="base-org/tiny-llama", folder_path=tiny["base"]).oid
    # A partial snapshot in the cache, as `AutoConfig.from_pretrained` leaves behind.
    hf_hub_download("base-org/tiny-llama", "config.json", revision=first)
    expected = {p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
                for p in tiny["base"].iterdir()}  # fmt: skip

    reg = make_registry("a")
    args = add_args(tiny, "hub-bot")
    args[args.index("--base") + 1] = "hf://base-org/tiny-llama@main"
    cli_ok(reg, *args)
    base = json.loads(cli_ok(reg, "show", "hub-bot:v1", "--json"))["components"]["base_model"]
    assert base["source"] == f"hf://base-org/tiny-llama@{first}"
    assert base["meta"]["revision"] == first and base["meta"]["requested_revision"] == "main"
    listed = {f["path"]: f["digest"] for f in base["files"]}
    assert {k: v for k, v in listed.items() if k != ".gitattributes"} == expected  # as the Hub has
    config = json.loads((tiny["base"] / "config.json").read_text())
    assert base["meta"]["model_type"] == config["model_type"]  # parsed as from a local dir
    assert base["meta"]["num_hidden_layers"] == config["num_hidden_layers"]
    weights = next(f["digest"] for f in base["files"] if f["path"] == "model.safetensors")
    assert not (reg / "blobs" / "sha256" / weights[7:9] / weights[7:]).exists()

    # main moves on: a new add pins the new commit, the first bundle keeps the old one.
    second = api.upload_file(path_or_fileobj=b'{"do_sample": false}\n',
                             path_in_repo="generation_config.json",
                             repo_id="base-org/tiny-llama").oid  # fmt: skip
    cli_ok(reg, *args)
    moved = json.loads(cli_ok(reg, "show", "hub-bot:v2", "--json"))["components"]["base_model"]
    assert moved["meta"]["revision"] == second != first
    assert "generation_config.json" in {f["path"] for f in moved["files"]}
    pinned = json.loads(cli_ok(reg, "show", "hub-bot:v1", "--json"))["components"]["base_model"]
    assert pinned["meta"]["revision"] == first

    # A full commit needs no resolving; an unknown repo is one line, and nothing is added.
    args[args.index("--base") + 1] = f"hf://base-org/tiny-llama@{first}"
    cli_ok(reg, *args)
    args[args.index("--base") + 1] = "hf://base-org/nope@main"
    before = cli_ok(reg, "ls", "--json")
    res = run_cli(*args, registry=reg)
    assert res.code != 0 and res.err.startswith("error: ") and res.err.count("\n") == 1, res.err
    assert cli_ok(reg, "ls", "--json") == before


def test_the_pushed_card_is_hub_metadata_with_eval_results(make_registry, tiny, hub) -> None:
    """The card as the Hub serves it, read back with huggingface_hub's own parsers."""
    from huggingface_hub import ModelCard, hf_hub_download, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    a = make_registry("a")
    args = add_args(tiny)
    args[args.index("--base") + 1] = str(tiny["base"])
    cli_ok(a, *args, "--annotation", "license=Apache-2.0",
           "--annotation", "datasets=acme/support-tickets,not a hub id")  # fmt: skip
    record_gate_run(a, "support-bot:v1", "dataset-audit", "passed", duplicate_rate=0.0)
    record_gate_run(a, "support-bot:v1", "target-eval", "failed", "+0.001 (95% bound >= -0.05)",
                    delta=0.001)  # fmt: skip
    record_gate_run(a, "support-bot:v1", "target-eval", "passed", "+0.012 (95% bound >= 0.004)",
                    delta=0.012, lower=0.004, passed=True)  # fmt: skip
    add_hub(a)
    push_json(a, "support-bot:v1", "--remote", "hub")
    path = hf_hub_download(REPO, "README.md", revision="v1")
    meta = metadata_load(path)
    assert meta is not None
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["acme/support-tickets"]
    assert "base_model" not in meta  # the adapter named its base by a path: nothing to link
    card = ModelCard.load(path)
    assert card.data.license == "apache-2.0" and card.data.library_name == "peft"
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "support-bot"
    # the latest target-eval run only (the failed one is superseded); no non-eval gate
    got = {(r.dataset_type, r.metric_type): r for r in results}
    assert set(got) == {("target-eval", "delta"), ("target-eval", "lower")}
    delta = got[("target-eval", "delta")]
    assert delta.metric_value == 0.012 and delta.task_type == "text-generation"
    assert delta.metric_name == "delta: +0.012 (95% bound >= 0.004)"  # the interval
    assert card.data.eval_results is not None and len(card.data.eval_results) == 2
    text = Path(path).read_text()
    assert "| target-eval | 1 | failed (superseded) |" in text
    assert "| license | apache-2.0 (from the bundle's license annotation) |" in text

    # No license anywhere: `other`, named unknown, and the card says how to set one.
    c = make_registry("c")
    add_tiny(c, tiny, name="other-bot")
    add_hub(c, "hub2", "my-org/other-bot")
    push_json(c, "other-bot:v1", "--remote", "hub2")
    meta = metadata_load(hf_hub_download("my-org/other-bot", "README.md", revision="v1"))
    assert meta is not None and "model-index" not in meta
    if meta["license"] != "other":  # the tiny dataset card may name one
        assert meta["license"] and "license_name" not in meta
    else:
        assert meta["license_name"] == "unknown"


def test_main_follows_the_channel_named(make_registry, tiny, hub, monkeypatch) -> None:
    """Default: main shows production; `--main CHANNEL` another channel. Run with Xet
    on in the client: the test Hub has none, so the push falls back to LFS by itself."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils._runtime import is_xet_available

    monkeypatch.delenv("HF_HUB_DISABLE_XET")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    assert is_xet_available()  # else this test proves nothing about the fallback
    a = make_registry("a")
    policy = a.parent / "policy.toml"
    policy.write_text(POLICY + "[channels.staging]\nrequire = []\n")
    cli_ok(a, "policy", "set", policy)
    v1 = add_tiny(a, tiny)
    v2 = add_tiny(a, tiny, "--annotation", "note=v2")
    add_hub(a)
    cli_ok(a, "promote", "support-bot:v1", "--to", "production")
    cli_ok(a, "promote", "support-bot:v2", "--to", "staging")

    def main_digest() -> str:
        from registry.digest import sha256_bytes

        return sha256_bytes(content(hub, "main", "registry/bundle.json"))

    assert push_json(a, "support-bot:production", "--remote", "hub")["refs"] == [
        "v1", "production"]  # fmt: skip
    assert hub.state.xet_write_token_requests >= 1 and hub.state.lfs_uploaded > 0
    assert hf_constants.HF_HUB_DISABLE_XET is False  # only for that push
    # production then staging: main still shows production's bundle; v2 is tagged anyway
    pushed = push_json(a, "support-bot:staging", "--remote", "hub", "--include-base")
    assert pushed["refs"] == ["v2", "staging"]
    assert main_digest() == v1["digest"]
    v2_files = files_at(hub, "v2")
    assert json.loads(hub.state.content(v2_files["registry/bundle.json"]))["annotations"] == {
        "note": "v2"}  # fmt: skip
    assert "adapter_model.safetensors" in v2_files
    assert sorted(hub.state.repos[REPO].branches) == ["main"]  # the side branch is gone
    channels = json.loads(content(hub, "main", "registry/channels.json"))["channels"]
    assert {c: e["digest"] for c, e in channels.items()} == {
        "production": v1["digest"], "staging": v2["digest"]}  # fmt: skip
    b = make_registry("b")
    add_hub(b)
    assert pull_json(b, "support-bot:staging")["digest"] == v2["digest"]

    # --main staging moves main to staging's bundle; the next default push moves it back.
    push_json(a, "support-bot:staging", "--remote", "hub", "--main", "staging")
    assert main_digest() == v2["digest"]
    commits = len(hub.state.repos[REPO].commits)
    push_json(a, "support-bot:staging", "--remote", "hub", "--main", "staging")
    assert len(hub.state.repos[REPO].commits) == commits  # nothing to change: no commit
    push_json(a, "support-bot:v2", "--remote", "hub")
    assert main_digest() == v1["digest"]
    res = run_cli("push", "support-bot:v2", "--remote", "hub", "--main", "canary", registry=a)
    assert res.code == 2 and "has no canary channel" in res.err and res.err.count("\n") == 1


def test_ls_remote_says_which_failure_it_is(make_registry, tiny, hub, monkeypatch) -> None:
    """Unauthorized, refused, missing, unreachable: each says so (exit 1), never "empty"."""
    import huggingface_hub.constants as hf_constants

    from tests.registry.remotes.conftest import free_port

    a = make_registry("a")
    add_tiny(a, tiny)
    add_hub(a, "hub", REPO, "--private")
    add_hub(a, "missing", "my-org/never-pushed")
    push_json(a, "support-bot:v1", "--remote", "hub")
    assert "support-bot:v1" in cli_ok(a, "ls", "--remote", "hub")

    res = run_cli("ls", "--remote", "missing", registry=a)
    assert res.code == 1 and "hf://my-org/never-pushed does not exist" in res.err
    assert "no bundles" not in res.err + res.out and res.err.count("\n") == 1

    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    res = run_cli("ls", "--remote", "hub", registry=a)
    assert res.code == 1 and "refused the credentials" in res.err, res.err
    assert "hf_wrong_token" not in res.err and res.err.count("\n") == 1

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    res = run_cli("ls", "--remote", "hub", registry=a)
    assert res.code == 1 and "no Hub token is set (unauthorized)" in res.err, res.err

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    res = run_cli("ls", "--remote", "hub", registry=a)
    assert res.code == 1 and "cannot reach hf://my-org/support-bot" in res.err, res.err
    assert res.err.count("\n") == 1
