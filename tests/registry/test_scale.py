"""verify / gc memoize manifests by digest without hiding a problem or losing a blob; the
fast `ls` paths print what `list_bundles` returns (issue 17). On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from registry.digest import Descriptor
from registry.manifest import BundleManifest, ComponentManifest
from tests.fakegates import fake_gates  # noqa: F401  (fixture)
from tests.registry.test_channels import write_policy

N = 3


@pytest.fixture
def shared(cli, tiny):  # noqa: ANN001, ANN201
    """N versions of support-bot: N bundle manifests naming the same component manifests."""
    for i in range(N):
        assert cli(*[*_add(tiny), "--annotation", f"n={i}"]).code == 0
    return cli


def _add(tiny: dict) -> list[str]:
    from tests.conftest import add_args

    return add_args(tiny)


def _bundles(reg) -> list[tuple[str, str]]:  # noqa: ANN001
    with reg.db.read() as conn:
        rows = conn.execute("SELECT digest, name, version FROM bundle ORDER BY version").all()
    return [(r[0], f"{r[1]}:v{r[2]}") for r in rows]


def _corrupt(reg, digest: str) -> None:  # noqa: ANN001
    path = reg.store.path(digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a re-hash can tell
    path.write_bytes(bytes(data))


def _components(reg, digest: str) -> dict[str, Descriptor]:  # noqa: ANN001
    return BundleManifest.from_bytes(reg.store.read_bytes(digest)).components


def _verify(cli) -> tuple[int, list[dict]]:  # noqa: ANN001
    res = cli("verify", "--all", "--json")
    return res.code, json.loads(res.out)["problems"]


def test_corrupt_shared_file_blob_is_reported_naming_every_bundle(shared, reg) -> None:  # noqa: ANN001
    cli = shared
    bundles = _bundles(reg)
    adapter = _components(reg, bundles[0][0])["adapter"]
    comp = ComponentManifest.from_bytes(reg.store.read_bytes(adapter.digest))
    weights = next(f for f in comp.files if f.path.endswith(".safetensors"))
    assert all(_components(reg, d)["adapter"] == adapter for d, _ in bundles)  # really shared
    _corrupt(reg, weights.digest)
    code, problems = _verify(cli)
    assert code == 1
    assert [(p["digest"], p["reason"]) for p in problems] == [(weights.digest, "corrupt")]
    assert problems[0]["bundles"] == [tag for _, tag in bundles]
    assert problems[0]["where"] == f"{bundles[0][1]} adapter/{weights.path}"
    text = cli("verify", "--all")
    assert text.code == 1
    assert f"in {N} bundles: support-bot:v1, support-bot:v2, support-bot:v3" in text.out
    # one bundle's own verify sees it too (the memo is per run, never carried over)
    one = json.loads(cli("verify", "support-bot:v3", "--json").out)
    assert [p["digest"] for p in one["problems"]] == [weights.digest]
    assert one["problems"][0]["bundles"] == ["support-bot:v3"]


def test_corrupt_shared_component_manifest_and_missing_bundle_manifest(shared, reg) -> None:  # noqa: ANN001
    cli = shared
    bundles = _bundles(reg)
    tokenizer = _components(reg, bundles[0][0])["tokenizer"]
    _corrupt(reg, tokenizer.digest)
    os.unlink(reg.store.path(bundles[1][0]))  # v2's own manifest is gone
    code, problems = _verify(cli)
    assert code == 1
    found = {p["digest"]: p for p in problems}
    assert set(found) == {tokenizer.digest, bundles[1][0]}
    assert found[tokenizer.digest]["reason"] == "corrupt"
    # v2's manifest is unreadable, so only v1 and v3 are known to name the tokenizer
    assert found[tokenizer.digest]["bundles"] == ["support-bot:v1", "support-bot:v3"]
    assert found[bundles[1][0]]["reason"] == "missing"
    assert found[bundles[1][0]]["bundles"] == ["support-bot:v2"]


def test_bundle_manifest_is_hashed_once_by_verify(shared, reg, monkeypatch) -> None:  # noqa: ANN001
    """Each unique manifest blob is read (and hashed) once per verify run."""
    import builtins

    from registry import verify as verify_mod

    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def counting(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(os.fspath(path))
        return real_open(path, *a, **k)

    def os_counting(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(os.fspath(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", counting)  # every way a blob is opened
    monkeypatch.setattr(os, "open", os_counting)
    report = verify_mod.verify(reg, all_blobs=True)
    monkeypatch.undo()
    assert report.ok
    blobs = [p for p in opened if "/blobs/sha256/" in p]
    assert len(blobs) == len(set(blobs)) == report.checked  # every blob once, none twice
    comps = {d.digest for d in _components(reg, _bundles(reg)[0][0]).values()}
    assert len(comps) == 6


@pytest.mark.usefixtures("fake_gates")
def test_gc_keeps_every_blob_a_bundle_gate_run_or_policy_reaches(
    shared, reg, tmp_path, tiny
) -> None:  # noqa: ANN001, E501
    cli = shared
    assert cli("policy", "set", write_policy(tmp_path, tiny)).code == 0
    run = cli("gates", "run", "support-bot:v2", "--gate", "fake-outcome")
    assert run.code == 0, run.err + run.out
    orphan = reg.store.put_bytes(b"nothing references this").digest
    old = time.time() - 7200
    for p in (reg.store.root / "sha256").rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))  # every blob is past the grace period
    stored = set(reg.store.iter_digests())
    expected = stored - _naive_reachable(reg)
    assert expected == {orphan}
    res = json.loads(cli("gc", "--grace", "0", "--force", "--reason", "test", "--json").out)
    assert res["removed"] == [orphan]
    assert set(reg.store.iter_digests()) == stored - {orphan}
    assert cli("verify", "--all").code == 0


def _naive_reachable(reg) -> set[str]:  # noqa: ANN001
    """Reachability the slow way: every bundle's manifests parsed afresh, every run's
    evidence and attestation, every policy's blobs (what gc must keep)."""
    from registry import gate_runs
    from registry.untrusted import load_json

    out: set[str] = set()
    with reg.db.read() as conn:
        bundles = [r[0] for r in conn.execute("SELECT digest FROM bundle")]
        out |= {d for d, _ in gate_runs.evidence_blobs(conn)}
        out |= {d for d, _ in gate_runs.attestation_blobs(conn)}
        policies = [
            r[0]
            for r in conn.execute("SELECT DISTINCT policy_digest FROM event")
            if r[0] is not None
        ]
        out |= {r[0] for r in conn.execute("SELECT signature_digest FROM bundle_signature")}
    for b in bundles:
        out.add(b)
        for desc in _components(reg, b).values():
            out.add(desc.digest)
            comp = ComponentManifest.from_bytes(reg.store.read_bytes(desc.digest))
            out |= {f.digest for f in comp.files}
    for p in policies:
        out.add(p)
        manifest = load_json(reg.store.read_bytes(p), "policy")
        out.add(manifest["policy"])
        out |= set((manifest.get("files") or {}).values())
    assert policies, "the policy set above names a policy"
    return out


def test_descriptor_memo_still_refuses_what_from_dict_refuses() -> None:
    from registry.errors import InvalidInputError

    good = {"digest": "sha256:" + "a" * 64, "size": 1}
    base = {"schema": "registry.bundle.v1", "name": "m", "parent": None, "annotations": {}}
    assert BundleManifest.from_dict({**base, "components": {"adapter": good}})
    for bad in ({**good, "size": True}, {**good, "size": -1}, {**good, "x": 1}, [1]):
        with pytest.raises(InvalidInputError):
            BundleManifest.from_dict({**base, "components": {"adapter": bad}})


@pytest.mark.usefixtures("fake_gates")
def test_ls_json_and_table_match_list_bundles(shared, reg, tmp_path, tiny) -> None:  # noqa: ANN001
    from registry.bundles import list_bundles

    cli = shared
    assert cli("policy", "set", write_policy(tmp_path, tiny)).code == 0
    assert cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome").code == 0
    assert cli("promote", "support-bot:v1", "--to", "staging", "--reason", "t").code == 0
    expected = list_bundles(reg)
    assert [b["tag"] for b in expected] == ["support-bot:v3", "support-bot:v2", "support-bot:v1"]
    assert expected[2]["channels"] == ["staging"] and expected[2]["gates"] == {"passed": 1}
    assert json.loads(cli("ls", "--json").out) == expected  # every bundle, every field
    assert json.loads(cli("ls", "--json", "--limit", "2").out) == expected[:2]
    assert json.loads(cli("ls", "support-bot", "--json", "-n", "1").out) == expected[:1]
    lines = cli("ls").out.splitlines()
    assert lines[0].split() == ["TAG", "DIGEST", "SIZE", "CREATED", "GATES", "CHANNELS"]
    assert [ln.split()[0] for ln in lines[1:]] == [b["tag"] for b in expected]
    assert (
        lines[3].endswith("1 passed  staging") and lines[3].split()[1] == expected[2]["digest"][:19]
    )
    col = lines[0].index("DIGEST")
    assert all(ln.index("sha256:") == col for ln in lines[1:])  # columns aligned
    assert cli("ls", "--limit", "1").out.splitlines()[1:] == lines[1:2]
    assert cli("ls", "--limit", "0").code == 2  # usage error


def test_ls_empty_registry(cli) -> None:  # noqa: ANN001
    assert "No bundles yet" in cli("ls").out
    assert json.loads(cli("ls", "--json").out) == []


def test_paths_are_strings_not_tmp(tmp_path: Path) -> None:
    """The memo's string blob path is the store's own path."""
    from registry.store import BlobStore
    from registry.verify import Manifests, _blob_path

    store = BlobStore(tmp_path)
    store.init()
    d = store.put_bytes(b"x").digest
    assert _blob_path(Manifests(store)._base, d) == str(store.path(d))
