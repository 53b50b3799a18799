"""The fast paths of issue 17 give what the general paths give, and refuse what they refuse:
bundle manifests recognised by their canonical form (registry/manifest.py), the `ls`
table rendered by SQLite (registry/bundles.py `ls_table`) and `ls --json` rows built by
SQLite."""

from __future__ import annotations

import json
import random

import pytest

from registry import manifest as m
from registry.digest import Descriptor, sha256_bytes
from registry.errors import RegistryError
from registry.manifest import BundleManifest
from tests.fakegates import fake_gates  # noqa: F401  (fixture)

D = {k: Descriptor(sha256_bytes(k.encode()), 100 + i) for i, k in enumerate(m.KINDS)}


def strict(data: bytes) -> BundleManifest:
    """The general path: load_json's walk, the canonical-form check, from_dict."""
    return BundleManifest.from_dict(m._loads(data, "bundle manifest"))


def outcome(fn, data: bytes) -> tuple[str, object]:  # noqa: ANN001
    try:
        return "ok", fn(data)
    except RegistryError as exc:
        return "refused", exc.one_line()


def unsorted(obj: dict, *, reverse_top: bool) -> str:
    """Compact JSON with the top-level keys, or the components, in reverse order."""
    if reverse_top:
        obj = dict(reversed(list(obj.items())))
    else:
        obj = {**obj, "components": dict(reversed(list(obj["components"].items())))}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def manifest(annotations: dict[str, str] | None = None, **kw) -> bytes:  # noqa: ANN003
    b = BundleManifest(kw.get("name", "support-bot"), kw.get("components", D),
                       kw.get("parent"), annotations or {})  # fmt: skip
    return b.to_bytes()


def test_canonical_manifests_take_the_fast_path_and_equal_the_strict_parse() -> None:
    cases = [
        manifest(),
        manifest({"n": "1", "git": "abc", "": "empty key", "é": "naïve ✓", "a,b": "c}:{"}),
        manifest({"},components:{": "},name:", "z": "}},,{{"}),  # the cut points, unquoted
        manifest(parent=sha256_bytes(b"p"), components={"adapter": D["adapter"]}),
        manifest(components={}),
        manifest(components={"base_model": Descriptor(D["adapter"].digest, 2**63 - 1)}),
    ]
    for data in cases:
        fast = m._canonical_bundle(data)
        assert fast is not None, data
        assert fast == strict(data) == BundleManifest.from_bytes(data)
        assert fast.to_bytes() == data
    # strings that need an escape are canonical too, but left to the strict path
    escaped = manifest({"q": 'say "hi"', "nl": "a\nb", "bs": "C:\\x", "ctl": "\x01"})
    # and so are annotations that quote the places the fast path cuts at
    cuts = manifest({"a": '},"components":{', "b": '},"name":"x'})
    for data in (escaped, cuts):
        assert m._canonical_bundle(data) is None
        assert BundleManifest.from_bytes(data) == strict(data)


def test_bad_bundle_manifests_are_refused_with_the_strict_paths_words() -> None:
    good = manifest({"n": "1"})
    text = good.decode()
    big = manifest(components={"adapter": Descriptor(D["adapter"].digest, 1)}).decode()
    bad = {
        "size 2**63": big.replace('"size":1}', f'"size":{2**63}}}'),
        "size of 25 digits": big.replace('"size":1}', '"size":1' + "0" * 24 + "}"),
        "negative size": big.replace('"size":1}', '"size":-1}'),
        "float size": big.replace('"size":1}', '"size":1.0}'),
        "leading zero": big.replace('"size":1}', '"size":01}'),
        "space": text.replace(',"name"', ', "name"'),
        "keys unsorted": unsorted(json.loads(text), reverse_top=True),
        "duplicate annotation": text.replace('{"n":"1"}', '{"n":"1","n":"1"}'),
        "unknown kind": big.replace('"adapter":', '"adapterx":'),
        "components unsorted": unsorted(json.loads(manifest()), reverse_top=False),
        "name with a newline": text.replace('"support-bot"', '"support-bot\\n"'),
        "name with capitals": text.replace('"support-bot"', '"Support"'),
        "lone surrogate": text.replace('"1"', '"\\ud800"'),
        "NaN": text.replace('"1"', "NaN"),
        "nested annotation": text.replace('"1"', '{"x":' * 80 + "1" + "}" * 80),
        "list": "[" + text + "]",
        "bad digest": text.replace("sha256:", "sha257:", 1),
        "extra key": text[:-1] + ',"x":1}',
        "BOM": "\ufeff" + text,
    }
    for label, data in bad.items():
        raw = data.encode("utf-8", "surrogatepass")
        assert m._canonical_bundle(raw) is None, label
        want = outcome(strict, raw)
        assert want[0] == "refused", label
        assert outcome(BundleManifest.from_bytes, raw) == want, label
    assert "integer too large" in outcome(strict, bad["size 2**63"].encode())[1]  # type: ignore[operator]
    assert "not in canonical JSON form" in outcome(strict, bad["space"].encode())[1]  # type: ignore[operator]
    assert "not valid UTF-8" in outcome(strict, b'{"annotations":{"\xff":"1"}}')[1]  # type: ignore[operator]


def test_bundle_names_end_where_they_seem_to() -> None:
    with pytest.raises(RegistryError):
        m.check_name("support-bot\n")  # "$" would match before a final newline
    assert m.check_name("support-bot") == "support-bot"


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CHARS = st.text(
    st.characters(codec="utf-8") | st.sampled_from(list('"\\\x00\x1f:,{}[] \n')), max_size=8
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(CHARS, CHARS, max_size=4),
    st.lists(
        st.tuples(st.integers(0, 600), st.sampled_from(list('"\\{}[],: 0159-.ae\x00'))), max_size=4
    ),  # fmt: skip
    st.integers(0, 2**64),
)
def test_fuzz_fast_bundle_path_agrees_with_the_strict_path(ann, edits, size) -> None:  # noqa: ANN001
    """Valid manifests and byte edits of them: the fast path returns the strict parse or
    defers to it, never accepts what it refuses; from_bytes answers as the strict path."""
    comps = {"adapter": Descriptor(D["adapter"].digest, min(size, 2**63 - 1))}
    text = manifest(ann, components=comps).decode()
    if size >= 2**63:
        text = text.replace(f'"size":{2**63 - 1}', f'"size":{size}')
    for pos, ch in edits:
        pos = min(pos, len(text))
        text = text[:pos] + ch + text[pos + 1 :]
    data = text.encode("utf-8", "surrogatepass")
    want = outcome(strict, data)
    fast = m._canonical_bundle(data)
    if fast is not None:
        assert want == ("ok", fast)
    assert outcome(BundleManifest.from_bytes, data) == want


def test_fuzz_random_bytes_never_get_past_the_fast_path() -> None:
    rng = random.Random(17)
    base = manifest({"n": "1"})
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        fast = m._canonical_bundle(bytes(data))
        if fast is not None:  # only edits that keep the form (a digit, a letter)
            assert fast == strict(bytes(data))


# --- `ls` rendered by SQLite --------------------------------------------------------------


def test_sql_human_size_is_human_size() -> None:
    import sqlite3

    from registry.bundles import _HUMAN_SQL, _LS_ODD
    from registry.output import human_size

    sizes = list(range(0, 5000)) + [
        k * 1024**u + d
        for u in range(1, 6)
        for k in (1, 2, 10, 100, 999, 1000, 1023, 1024)
        for d in (-1, 0, 1, 51, 52, 53, 102, 103, 1024**u // 20, 1024**u // 20 + 1)
    ]
    rng = random.Random(0)
    sizes += [rng.randrange(2**53) for _ in range(20000)] + [2**53 - 1]
    # exact ties (n / 1024 ends in 5 hundredths: 1.25 KiB, ...), rounded half to even
    sizes += [
        (512 * q + 256) // 5 * 1024**u for q in range(10, 10000) if q % 5 == 2 for u in (0, 1)
    ]
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (size INTEGER, created_at TEXT DEFAULT 'x')")
    con.executemany("INSERT INTO t (size) VALUES (?)", [(s,) for s in sizes if s >= 0])
    got = con.execute(f"SELECT size, {_HUMAN_SQL}, {_LS_ODD} FROM t").fetchall()
    bad = [(s, h, human_size(s)) for s, h, odd in got if not odd and h != human_size(s)]
    assert not bad, bad[:5]
    # larger sizes (float(n) rounds) are rendered in Python
    assert {s for s, _, odd in got if odd} == {s for s in sizes if s >= 2**53}


@pytest.mark.usefixtures("fake_gates")
def test_ls_table_is_render_ls_line_for_line(cli, reg, tiny, tmp_path, monkeypatch) -> None:  # noqa: ANN001, E501
    from registry import bundles, tracking
    from registry.present import ls_table_lines, render_ls, render_ls_table
    from tests.conftest import add_args
    from tests.registry.test_channels import write_policy

    for i in range(3):
        assert cli(*add_args(tiny), "--annotation", f"n={i}").code == 0
    assert cli("policy", "set", write_policy(tmp_path, tiny)).code == 0
    for v in ("v1", "v2"):
        assert cli("gates", "run", f"support-bot:{v}", "--gate", "fake-outcome").code == 0
    assert cli("promote", "support-bot:v1", "--to", "staging", "--reason", "t").code == 0
    v3 = bundles.list_bundles(reg)[0]
    tracking.record(reg, "origin", "support-bot", "production", v3["digest"])
    odd = [0, 1023, 1024, 52 * 1024 // 10 + 1, 2**53 - 1, 2**53, 2**63 - 1]
    with reg.db.write() as conn:
        for i, size in enumerate(odd):
            conn.execute(
                "INSERT INTO bundle (digest, name, version, parent, size, created_at, created_by)"
                " VALUES (:d, :n, :v, NULL, :s, :t, 'x')",
                {"d": sha256_bytes(str(i).encode()), "n": f"odd-{i % 3}", "v": i + 1,
                 "s": size, "t": "2026-01-01T00:00:00.000000Z"},
            )  # fmt: skip

    def gates(counts: dict[str, int]) -> str:
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    if reg.db.postgres:
        assert bundles.ls_table(reg) is None and bundles.list_bundles_json(reg) is None
        return
    monkeypatch.setattr(bundles, "_LS_BATCH", 2)  # a streamed listing takes several fetches
    for kw in ({}, {"limit": 1}, {"limit": 4}, {"name": "support-bot"}, {"name": "odd-1"},
               {"name": "odd-2", "limit": 1}, {"name": "nothing"}):  # fmt: skip
        table = bundles.ls_table(reg, **kw)
        assert table is not None
        listing = bundles.ls_rows(reg, **kw)
        want = render_ls(listing, gates)
        assert render_ls_table(table, gates) == want, kw
        with bundles.ls_table_stream(reg, **kw) as streamed:  # what `registry ls` writes
            assert streamed is not None and not isinstance(streamed.lines, list)
            assert streamed.count == len(listing.rows), kw
            assert "\n".join(ls_table_lines(streamed, gates)) == want, kw
        parts = bundles.list_bundles_json(reg, **kw)
        assert parts is not None
        assert json.loads("[" + ",".join(parts) + "]") == bundles.list_bundles(reg, **kw), kw
    table = bundles.ls_table(reg)
    assert table is not None and len(table.special) == 5  # 3 with extras, 2 odd sizes
    shown = cli("ls").out
    assert shown.startswith(render_ls(bundles.ls_rows(reg), gates) + "\n")
    assert "REMOTE/CHANNEL: remote-tracking view" in shown
    assert "staging" in shown and "origin/production" in shown and "1 passed" in shown
