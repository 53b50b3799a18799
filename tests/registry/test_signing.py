"""`registry sign`, `key generate`, `verify --signed-by` and signed exports.

An exported, signed bundle must verify with OpenSSF model-signing's own CLI and Python API,
without this project. The model-signing checks run on SQLite only (they touch no database);
the registry's own signature bookkeeping runs on both databases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import add_args

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def keypair(cli, path: Path) -> tuple[Path, str]:  # noqa: ANN001
    """`registry key generate PATH`: (public key path, key id)."""
    res = cli("key", "generate", path, "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert Path(info["public"]) == path.with_suffix(".pub")
    assert path.stat().st_mode & 0o777 == 0o600
    return Path(info["public"]), info["id"]


def signed_export(cli, tiny, tmp_path: Path) -> tuple[Path, Path, str]:  # noqa: ANN001
    """support-bot:v1 added, signed with a new key and exported: (dir, public key, key id)."""
    assert cli(*add_args(tiny)).code == 0
    pub, key_id = keypair(cli, tmp_path / "team.pem")
    res = cli("sign", "support-bot:v1", "--key", tmp_path / "team.pem", "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["signer"] == key_id and info["tag"] == "support-bot:v1"
    out = tmp_path / "serve"
    res = cli("export", "support-bot:v1", out)
    assert res.code == 0, res.err
    assert f"(by {key_id})" in res.out
    return out, pub, key_id


def ms_cli_verify(model: Path, pub: Path) -> subprocess.CompletedProcess:
    """model-signing's own CLI, as a user without this project runs it."""
    return subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", "--signature",
         str(model / "registry" / "model.sig"), "--public_key", str(pub), str(model)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def ms_api_verify(model: Path, pub: Path) -> None:
    import model_signing

    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
        model, model / "registry" / "model.sig"
    )


@SQLITE_ONLY
def test_signed_export_verifies_with_model_signing_cli_and_api(
    cli, reg_path, tiny, tmp_path
) -> None:  # noqa: ANN001, E501
    out, pub, key_id = signed_export(cli, tiny, tmp_path)
    sig = out / "registry" / "model.sig"
    from registry import signing
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        stored = signing.signatures(reg, json.loads(cli("show", "support-bot:v1", "--json").out)
                                    ["digest"])  # fmt: skip
        assert [s["signer"] for s in stored] == [key_id]
        assert sig.read_bytes() == reg.store.read_bytes(stored[0]["signature_digest"])
    finally:
        reg.close()
    proc = ms_cli_verify(out, pub)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Verification succeeded" in proc.stdout + proc.stderr
    ms_api_verify(out, pub)
    # The statement is the one model-signing itself makes for the exported directory:
    # same resources and serialization parameters (only the informative model name and
    # the order of ignore_paths, a frozenset there, may differ).
    import model_signing

    lib_sig = tmp_path / "lib.sig"
    model_signing.signing.Config().use_elliptic_key_signer(
        private_key=tmp_path / "team.pem"
    ).set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(
            paths=["registry/model.sig"], ignore_git_paths=True
        )
    ).sign(out, lib_sig)
    ours, theirs = signing.statement(sig.read_bytes()), signing.statement(lib_sig.read_bytes())
    for st in (ours, theirs):
        st["predicate"]["serialization"]["ignore_paths"].sort()
    assert ours["predicate"] == theirs["predicate"]
    assert ours["predicate"]["serialization"] == {
        "method": "files", "hash_type": "sha256", "allow_symlinks": False,
        "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore", "registry/model.sig"],
    }  # fmt: skip
    assert ours["subject"][0]["digest"] == theirs["subject"][0]["digest"]
    assert ours["subject"][0]["name"] == "support-bot"
    files = {r["name"] for r in ours["predicate"]["resources"]}
    assert {"adapter_model.safetensors", "base/config.json", "registry/bundle.json",
            "registry/adapter.json", "chat_template.jinja"} <= files  # fmt: skip
    assert files == {str(p.relative_to(out)) for p in out.rglob("*")
                     if p.is_file() and p != sig}  # fmt: skip


@SQLITE_ONLY
def test_tampered_or_extra_exported_file_fails_model_signing(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    import model_signing  # noqa: F401  (imported before the clock matters)

    out, pub, _ = signed_export(cli, tiny, tmp_path)
    template = out / "chat_template.jinja"
    template.write_text(template.read_text() + "{# injected #}")
    proc = ms_cli_verify(out, pub)
    assert proc.returncode != 0
    assert "chat_template.jinja" in proc.stdout + proc.stderr
    with pytest.raises(ValueError, match="chat_template.jinja"):
        ms_api_verify(out, pub)

    clean = tmp_path / "clean"
    assert cli("export", "support-bot:v1", clean).code == 0
    ms_api_verify(clean, pub)
    (clean / "base" / "extra.py").write_text("import os\n")
    with pytest.raises(ValueError, match=r"Extra files.*base/extra\.py"):
        ms_api_verify(clean, pub)
    proc = ms_cli_verify(clean, pub)
    assert proc.returncode != 0 and "base/extra.py" in proc.stdout + proc.stderr


def test_verify_signed_by_passes_for_signer_fails_for_others(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    assert cli(*add_args(tiny), "--annotation", "n=2").code == 0
    pub, key_id = keypair(cli, tmp_path / "alice.pem")
    other_pub, other_id = keypair(cli, tmp_path / "bob.pem")
    assert cli("sign", "support-bot:v1", "--key", tmp_path / "alice.pem").code == 0

    ok = cli("verify", "support-bot:v1", "--signed-by", pub)
    assert ok.code == 0, ok.err
    assert f"signed by {key_id}: ok" in ok.out

    wrong = cli("verify", "support-bot:v1", "--signed-by", other_pub)
    assert wrong.code == 1
    lines = wrong.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in wrong.err, wrong.err
    assert f"not signed by {other_id}" in lines[0] and key_id in lines[0]

    unsigned = cli("verify", "support-bot:v2", "--signed-by", pub)
    assert unsigned.code == 1
    assert len(unsigned.err.strip().splitlines()) == 1 and "Traceback" not in unsigned.err
    assert "no signatures" in unsigned.err

    both = json.loads(cli("verify", "support-bot:v1", "--signed-by", pub, "--signed-by",
                          other_pub, "--json").out)  # fmt: skip
    assert not both["ok"] and [s["ok"] for s in both["signatures"]] == [True, False]

    assert cli("verify", "--all", "--signed-by", pub).code == 2
    audit = cli("audit", "verify")
    assert audit.code == 0, audit.err + audit.out


def test_tampered_signature_blob_or_row_is_caught(cli, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    from registry import signing
    from registry.repo import Registry

    assert cli(*add_args(tiny)).code == 0
    assert cli(*add_args(tiny), "--annotation", "n=2").code == 0
    pub, key_id = keypair(cli, tmp_path / "alice.pem")
    for ref in ("support-bot:v1", "support-bot:v2"):
        assert cli("sign", ref, "--key", tmp_path / "alice.pem").code == 0
    digests = {r["tag"]: r["digest"] for r in json.loads(cli("ls", "--json").out)}
    reg = Registry.open(reg_path)
    try:
        sig1 = signing.signatures(reg, digests["support-bot:v1"])[0]["signature_digest"]
        sig2 = signing.signatures(reg, digests["support-bot:v2"])[0]["signature_digest"]
        # A valid signature by the same key, of another bundle, put in v1's row.
        with reg.db.write() as conn:
            conn.execute(
                "UPDATE bundle_signature SET signature_digest = :s WHERE bundle_digest = :b",
                {"s": sig2, "b": digests["support-bot:v1"]},
            )
        swapped = cli("verify", "support-bot:v1", "--signed-by", pub)
        assert swapped.code == 1 and len(swapped.err.strip().splitlines()) == 1
        assert "does not match the bundle" in swapped.err
        assert "registry/bundle.json differs" in swapped.err
        with reg.db.write() as conn:
            conn.execute(
                "UPDATE bundle_signature SET signature_digest = :s WHERE bundle_digest = :b",
                {"s": sig1, "b": digests["support-bot:v1"]},
            )
        assert cli("verify", "support-bot:v1", "--signed-by", pub).code == 0
        # Another key's signature of v1 filed under this key.
        keypair(cli, tmp_path / "mallory.pem")
        assert cli("sign", "support-bot:v1", "--key", tmp_path / "mallory.pem").code == 0
        forged = next(s["signature_digest"] for s in signing.signatures(
            reg, digests["support-bot:v1"]) if s["signer"] != key_id)  # fmt: skip
        with reg.db.write() as conn:
            conn.execute(
                "UPDATE bundle_signature SET signature_digest = :s"
                " WHERE bundle_digest = :b AND signer = :k",
                {"s": forged, "b": digests["support-bot:v1"], "k": key_id},
            )
        res = cli("verify", "support-bot:v1", "--signed-by", pub)
        assert res.code == 1 and "does not verify" in res.err and "Key mismatch" in res.err
        with reg.db.write() as conn:
            conn.execute(
                "UPDATE bundle_signature SET signature_digest = :s"
                " WHERE bundle_digest = :b AND signer = :k",
                {"s": sig1, "b": digests["support-bot:v1"], "k": key_id},
            )
        # The stored blob itself edited.
        path = reg.store.path(sig1)
        os.chmod(path, 0o644)
        data = json.loads(path.read_bytes())
        data["dsseEnvelope"]["signatures"][0]["sig"] = data["dsseEnvelope"]["signatures"][0]["sig"][
            ::-1
        ]
        path.write_text(json.dumps(data))
    finally:
        reg.close()
    bad = cli("verify", "support-bot:v1", "--signed-by", pub)
    assert bad.code == 1 and "Traceback" not in bad.err
    assert f"signature by {key_id}" in bad.out and "corrupt" in bad.out  # the blob re-hash
    assert len(bad.err.strip().splitlines()) == 1 and "corrupt" in bad.err
    assert cli("verify", "support-bot:v1").code == 1  # plain verify re-hashes it too


def test_sign_needs_a_key_and_takes_the_configured_one(cli, tiny, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    monkeypatch.delenv("REGISTRY_SIGNING_KEY", raising=False)
    none = cli("sign", "support-bot:v1")
    assert none.code == 2 and "no signing key" in none.err and "key generate" in none.err
    pub, key_id = keypair(cli, tmp_path / "ci.pem")
    monkeypatch.setenv("REGISTRY_SIGNING_KEY", str(tmp_path / "ci.pem"))
    res = cli("sign", "support-bot:v1", "--json")
    assert res.code == 0, res.err
    first = json.loads(res.out)
    assert first["signer"] == key_id
    again = json.loads(cli("sign", "support-bot:v1", "--json").out)  # replaces its own row
    assert again["signer"] == key_id
    verified = json.loads(cli("verify", "support-bot:v1", "--signed-by", pub, "--json").out)
    assert verified["ok"] and verified["signatures"][0]["signature"] == again["signature"]
    assert cli("key", "generate", tmp_path / "ci.pem").code == 2  # never overwrites a key
    assert cli("key", "generate", tmp_path / "x.pub").code == 2


@SQLITE_ONLY
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_openssl_key_signs_and_verifies(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    key, pub = tmp_path / "ossl.pem", tmp_path / "ossl.pub"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                    "-out", str(key)], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)],
                   check=True, capture_output=True)  # fmt: skip
    assert cli(*add_args(tiny)).code == 0
    res = cli("sign", "support-bot:v1", "--key", key)
    assert res.code == 0, res.err
    assert cli("verify", "support-bot:v1", "--signed-by", pub).code == 0
    out = tmp_path / "serve"
    assert cli("export", "support-bot:v1", out).code == 0
    proc = ms_cli_verify(out, pub)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unsigned_export_has_no_signature_and_gc_keeps_signatures(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    out = tmp_path / "plain"
    assert cli("export", "support-bot:v1", out).code == 0
    assert not (out / "registry" / "model.sig").exists()
    pub, _ = keypair(cli, tmp_path / "k.pem")
    assert cli("sign", "support-bot:v1", "--key", tmp_path / "k.pem").code == 0
    assert cli("gc", "--grace", "0", "--force", "--reason", "test").code == 0
    assert cli("verify", "support-bot:v1", "--signed-by", pub).code == 0


PROBE = """
import sys
sys.argv = ["registry"] + sys.argv[1:]
from cli.app import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nLOADED:" + str("model_signing" in sys.modules))
"""


@SQLITE_ONLY
def test_model_signing_is_not_imported_at_start_up(cli, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    r = ["--registry", str(reg_path)]
    for args in (["--help"], ["sign", "--help"], r + ["verify", "support-bot:v1"],
                 ["key", "generate", str(tmp_path / "k.pem")]):  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert proc.stderr.rsplit("LOADED:", 1)[1] == "False", (args, proc.stderr)


def test_signature_made_before_adapter_config_was_published_still_verifies(
    cli, reg_path, tiny, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    # Signatures made before export rewrote adapter_config.json to name the base identity
    # (docs/remotes.md) cover the stored bytes at the top; they stay valid for
    # `registry verify`, and any other difference still fails.
    from registry import export as export_mod

    assert cli(*add_args(tiny)).code == 0
    pub, key_id = keypair(cli, tmp_path / "old.pem")
    with monkeypatch.context() as m:  # this project as it was: nothing rewritten
        m.setattr(export_mod, "published_files", lambda comps, read: {})
        assert cli("sign", "support-bot:v1", "--key", tmp_path / "old.pem").code == 0
    from registry.bundles import list_bundles
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    digest = list_bundles(reg)[0]["digest"]
    published, legacy = (
        export_mod.load_plan(reg, digest),
        export_mod.load_plan(reg, digest, publish=False),
    )
    reg.close()
    assert published["adapter_config.json"] != legacy["adapter_config.json"]  # a real rewrite
    ok = cli("verify", "support-bot:v1", "--signed-by", pub)
    assert ok.code == 0, ok.err
    assert f"signed by {key_id}: ok" in ok.out
