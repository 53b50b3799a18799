"""Untrusted files (issue 13): pickles found by their bytes, `auto_map` at any depth, files a
policy names kept inside its directory, and no database password written or printed.

One row per case: how the input is built, the exit code, a fragment of the one-line error,
and the registry exactly as it was (`snapshot`, from tests/conftest.py)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN, add_args, copy, expect_refused, pg_database, run_cli, snapshot
from tests.fakegates import fake_gates  # noqa: F401  (fixture)

MARKER = "pwned"


@pytest.fixture
def seeded(cli, tiny):  # noqa: ANN001, ANN201
    """A registry holding one bundle, so 'unchanged' is a real claim."""
    assert cli(*add_args(tiny)).code == 0
    return cli


def evil_p0(marker: Path) -> bytes:
    """A protocol-0 pickle that would run `touch MARKER` if anything unpickled it."""
    return b"cposix\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR."


def evil(marker: Path, protocol: int = 4) -> bytes:
    """The same call, in a binary protocol (built with pickletools-free raw opcodes)."""
    cmd = f"touch {marker}"
    if protocol < 2:
        return evil_p0(marker)

    class Call:  # pickled as os.system(cmd) by __reduce__; never loaded
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (cmd,))

    return pickle.dumps(Call(), protocol=protocol)


def npy_object(marker: Path) -> bytes:
    """A .npy object array as numpy.save writes it: header, then a pickle."""
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + evil(marker, 2)


def npy_floats() -> bytes:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8


def npz_object(marker: Path, compression: int = zipfile.ZIP_STORED) -> bytes:
    """An .npz (a zip of .npy members) holding an object array, as numpy.savez writes it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("weights.npy", npy_floats())
        zf.writestr("meta.npy", npy_object(marker))
    return buf.getvalue()


def torch_zip(marker: Path) -> bytes:
    """The layout torch.save writes: a zip whose archive/data.pkl is the pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", evil(marker, 2))
        zf.writestr("archive/data/0", b"\0" * 64)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _args(tiny: dict, **dirs: Path) -> list:
    args = add_args(tiny)
    for opt, value in dirs.items():
        args[args.index(f"--{opt.replace('_', '-')}") + 1] = str(value)
    return args


def in_dir(kind: str, rel: str, content: Callable[[Path], bytes]) -> Callable:
    """A builder: copy the tiny project's `kind` dir, add `rel` holding `content(marker)`."""

    def build(tiny: dict, tmp_path: Path) -> list:
        d = copy(tiny[kind], tmp_path, kind)
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(content(tmp_path / MARKER))
        return _args(tiny, **{kind: d})

    return build


def edit_json(kind: str, rel: str, change: Callable[[dict], None]) -> Callable:
    """A builder: copy `kind`, change its JSON file `rel` in place."""

    def build(tiny: dict, tmp_path: Path) -> list:
        d = copy(tiny[kind], tmp_path, kind)
        path = d / rel
        data = json.loads(path.read_text()) if path.exists() else {}
        change(data)
        path.write_text(json.dumps(data))
        return _args(tiny, **{kind: d})

    return build


def from_trainer_output(rel: str, change: Callable[[dict], None]) -> Callable:
    def build(tiny: dict, tmp_path: Path) -> list:
        d = copy(tiny["trainer_output"], tmp_path, "out")
        data = json.loads((d / rel).read_text())
        change(data)
        (d / rel).write_text(json.dumps(data))
        args = _args(tiny)
        i = args.index("--adapter")
        del args[i : i + 2]
        i = args.index("--tokenizer")
        del args[i : i + 2]
        return [*args, "--from", str(d)]

    return build


def single_file(opt: str, name: str, content: Callable[[Path], bytes]) -> Callable:
    def build(tiny: dict, tmp_path: Path) -> list:
        path = tmp_path / name
        path.write_bytes(content(tmp_path / MARKER))
        return _args(tiny, **{opt: path})

    return build


def _text_config_auto_map(cfg: dict) -> None:
    cfg["text_config"] = {"auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}


def _auto_map(cfg: dict) -> None:
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.Evil", None]}


def _auto_map_in_list(cfg: dict) -> None:
    cfg["sub_configs"] = [{"name": "ok"}, {"auto_map": {"AutoConfig": "x.Y"}}]


def escaped_auto_map(tiny: dict, tmp_path: Path) -> list:
    """`"auto\\u005fmap"` is auto_map to every JSON parser: spelling it so does not hide it."""
    d = copy(tiny["tokenizer"], tmp_path, "tokenizer")
    text = (d / "tokenizer_config.json").read_text().rstrip().rstrip("}")
    (d / "tokenizer_config.json").write_text(text + ', "auto\\u005fmap": {"AutoTokenizer": "e.E"}}')
    return _args(tiny, tokenizer=d)


REFUSED = [
    # --- pickles by content, whatever the name --------------------------------------------
    ("npy-object-array", in_dir("adapter", "extra.npy", npy_object), "NumPy object array"),
    ("npz-object-array", in_dir("adapter", "extra.npz", npz_object),
     "zip archive whose member meta.npy is a NumPy object array"),
    ("npz-deflated-object-array",
     in_dir("adapter", "extra.npz", lambda m: npz_object(m, zipfile.ZIP_DEFLATED)),
     "zip archive whose member meta.npy is a NumPy object array"),
    ("pkl-gz", in_dir("adapter", "optimizer.pkl.gz", lambda m: gzip.compress(evil(m))),
     "optimizer.pkl.gz is a gzip-compressed pickle"),
    ("bz2-pickle", in_dir("base", "state.bz2", lambda m: bz2.compress(evil(m, 5))),
     "bzip2-compressed pickle"),
    ("suffixless-pickle", in_dir("adapter", "optimizer", evil), "optimizer is a pickle (protocol 4)"),
    ("suffixless-pickle-in-tokenizer", in_dir("tokenizer", "extra/state", lambda m: evil(m, 2)),
     "extra/state is a pickle (protocol 2)"),
    ("protocol-0-pickle", in_dir("adapter", "notes.txt", evil_p0), "notes.txt is a pickle (protocol 0/1)"),
    ("protocol-1-pickle", in_dir("base", "rng_state", lambda m: pickle.dumps([1, "a", {"b": 2}], 1)),
     "rng_state is a pickle (protocol 0/1)"),
    ("torch-zip-renamed", in_dir("adapter", "weights.dat", torch_zip),
     "zip archive holding the pickle archive/data.pkl"),
    ("torch-zip-as-safetensors", in_dir("adapter", "adapter_model.safetensors", torch_zip),
     "adapter_model.safetensors is a zip archive holding the pickle"),
    ("pickle-as-safetensors", in_dir("base", "model.safetensors", evil),
     "model.safetensors is a pickle (protocol 4)"),
    ("torch-zip-gz", in_dir("adapter", "ckpt.gz", lambda m: gzip.compress(torch_zip(m))),
     "gzip-compressed zip archive holding the pickle"),
    ("torch-zip-bin", in_dir("adapter", "weights.bin", torch_zip), "weights.bin is a pickle file"),
    ("npy-in-dataset", in_dir("dataset", "data/features.npy", npy_object), "NumPy object array"),
    ("pickle-chat-template", single_file("chat_template", "t.jinja", evil_p0),
     "chat template t.jinja is a pickle"),
    ("pickle-training-config", single_file("config", "train.yaml", evil),
     "config train.yaml is a pickle"),
    # --- auto_map at any depth, in any JSON file of a model component ---------------------
    ("auto-map-text-config", edit_json("base", "config.json", _text_config_auto_map),
     "config.json has text_config.auto_map"),
    ("auto-map-tokenizer-config", edit_json("tokenizer", "tokenizer_config.json", _auto_map),
     "tokenizer_config.json has auto_map"),
    ("auto-map-tokenizer-config-in-base", edit_json("base", "tokenizer_config.json", _auto_map),
     "tokenizer_config.json has auto_map"),
    ("auto-map-generation-config", edit_json("base", "generation_config.json", _auto_map_in_list),
     "generation_config.json has sub_configs[1].auto_map"),
    ("auto-map-adapter-config", edit_json("adapter", "adapter_config.json", _text_config_auto_map),
     "adapter_config.json has text_config.auto_map"),
    ("auto-map-processor-config", edit_json("base", "preprocessor_config.json", _auto_map),
     "preprocessor_config.json has auto_map"),
    ("auto-map-escaped", escaped_auto_map, "tokenizer_config.json has auto_map"),
    ("auto-map-from-trainer-output", from_trainer_output("tokenizer_config.json", _auto_map),
     "tokenizer_config.json has auto_map"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_untrusted_file_refused(seeded, reg_path, tiny, tmp_path, build, message) -> None:  # noqa: ANN001
    expect_refused(seeded, reg_path, build(tiny, tmp_path), 2, message)
    assert not (tmp_path / MARKER).exists()  # nothing was unpickled


def test_allow_pickle_stores_content_pickles_never_loads_them(
    seeded, reg_path, tiny, tmp_path
) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    (ad / "optimizer").write_bytes(evil(tmp_path / MARKER))
    (ad / "state.pkl.gz").write_bytes(gzip.compress(evil(tmp_path / MARKER)))
    (ad / "extra.npy").write_bytes(npy_object(tmp_path / MARKER))
    (ad / "weights.dat").write_bytes(torch_zip(tmp_path / MARKER))
    res = seeded(*_args(tiny, adapter=ad), "--allow-pickle")
    assert res.code == 0, res.err
    assert not (tmp_path / MARKER).exists()


def test_legitimate_files_are_still_accepted(seeded, tiny, tmp_path) -> None:  # noqa: ANN001
    """Look-alikes of what is refused: a float .npy, a zip and a gzip without pickles, JSON
    that merely mentions auto_map as a value, README text, and dataset JSON with the key."""
    ad = copy(tiny["adapter"], tmp_path, "ad")
    (ad / "floats.npy").write_bytes(npy_floats())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes/readme.txt", "hello")
        zf.writestr("floats.npy", npy_floats())
    (ad / "extras.zip").write_bytes(buf.getvalue())
    (ad / "log.json.gz").write_bytes(gzip.compress(b'{"loss": 0.1}\n' * 500))
    (ad / "notes.json").write_text(json.dumps({"comment": "auto_map is refused", "k": "\u00e9"}))
    (ad / "NOTES.md").write_text("# Notes\n\nTrained for 3 epochs. Loss went down.\n")
    ds = copy(tiny["dataset"], tmp_path, "ds")
    (ds / "schema.json").write_text(json.dumps({"fields": {"auto_map": "a column"}}))
    assert seeded(*_args(tiny, adapter=ad, dataset=ds)).code == 0


# --- files a policy names stay inside the policy's directory -----------------------------

POLICY = """
[channels.staging]
require = ["fake-outcome"]
{extra}
[gates.fake-outcome]
eval_set = "evals/target.jsonl"
"""


def policy_dir(tmp_path: Path, tiny: dict, *, extra: str = "", text: str | None = None) -> Path:
    d = tmp_path / "policy"
    (d / "evals").mkdir(parents=True)
    (d / "keys").mkdir()
    (d / "policy.toml").write_text(text if text is not None else POLICY.format(extra=extra))
    return d


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A secret outside the policy's directory (think /etc/passwd)."""
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return secret


@pytest.mark.usefixtures("fake_gates")
def test_eval_set_symlink_leaving_policy_dir(seeded, reg_path, tiny, tmp_path, outside) -> None:  # noqa: ANN001
    d = policy_dir(tmp_path, tiny)
    os.symlink(outside, d / "evals" / "target.jsonl")
    for cmd in ("set", "check"):
        expect_refused(
            seeded, reg_path, ["policy", cmd, d / "policy.toml"], 2,
            "policy names evals/target.jsonl, which resolves outside the policy's directory",
        )  # fmt: skip


@pytest.mark.usefixtures("fake_gates")
def test_eval_set_through_symlinked_directory(seeded, reg_path, tiny, tmp_path, outside) -> None:  # noqa: ANN001
    d = policy_dir(tmp_path, tiny)
    (d / "evals").rmdir()
    (outside.parent / "target.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    os.symlink(outside.parent, d / "evals")
    expect_refused(seeded, reg_path, ["policy", "set", d / "policy.toml"], 2, "resolves outside")


def test_default_eval_set_symlink_leaving_policy_dir(
    seeded, reg_path, tiny, tmp_path, outside
) -> None:  # noqa: ANN001
    # target-eval's default eval_set is evals/target.jsonl: not named, but read if present.
    d = policy_dir(tmp_path, tiny, text='[channels.staging]\nrequire = ["target-eval"]\n')
    os.symlink(outside, d / "evals" / "target.jsonl")
    expect_refused(
        seeded, reg_path, ["policy", "set", d / "policy.toml"], 2,
        "policy names evals/target.jsonl, which resolves outside",
    )  # fmt: skip


@pytest.mark.usefixtures("fake_gates")
@pytest.mark.parametrize("where", ["actors", "gate_signers", "admin"])
def test_key_file_symlink_leaving_policy_dir(seeded, reg_path, tiny, tmp_path, where) -> None:  # noqa: ANN001
    keydir = tmp_path / "elsewhere"
    assert run_cli("key", "generate", keydir / "bob.key").code == 0
    extra = {
        "actors": 'actors = ["keys/bob.pub"]\n',
        "gate_signers": 'gate_signers = ["keys/bob.pub"]\n',
        "admin": '\n[admin]\nactors = ["keys/bob.pub"]\n',
    }[where]
    d = policy_dir(tmp_path, tiny, extra=extra)
    (d / "evals" / "target.jsonl").write_text("{}\n")
    os.symlink(keydir / "bob.pub", d / "keys" / "bob.pub")
    expect_refused(
        seeded, reg_path, ["policy", "set", d / "policy.toml"], 2,
        "policy names keys/bob.pub, which resolves outside",
    )  # fmt: skip


@pytest.mark.usefixtures("fake_gates")
def test_symlink_inside_policy_dir_is_fine(seeded, tiny, tmp_path) -> None:  # noqa: ANN001
    d = policy_dir(tmp_path, tiny)
    (d / "data").mkdir()
    (d / "data" / "target.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    os.symlink("../data/target.jsonl", d / "evals" / "target.jsonl")
    res = seeded("policy", "set", d / "policy.toml")
    assert res.code == 0, res.err


# --- secrets: never written to registry.toml, never printed ------------------------------

SECRET = "s3cr3t-Pa55"


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_HOME", raising=False)
    monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)


def one_line_error(res, code: int, fragment: str) -> str:  # noqa: ANN001
    assert res.code == code, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert fragment in lines[0], lines[0]
    assert SECRET not in res.err + res.out
    return lines[0]


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:5432/reg",
    f"postgresql://127.0.0.1/reg?user=bob&password={SECRET}",
], ids=["userinfo", "query"])  # fmt: skip
def test_init_refuses_password_it_would_write(tmp_path, monkeypatch, url) -> None:  # noqa: ANN001
    _clean(monkeypatch)
    line = one_line_error(
        run_cli("init", tmp_path / "reg", "--database-url", url), 2, "has a password"
    )
    assert "PGPASSFILE" in line and "$REGISTRY_DATABASE_URL" in line
    assert not (tmp_path / "reg").exists()  # nothing created


def test_registry_toml_with_password_refused(reg_path, monkeypatch) -> None:  # noqa: ANN001
    before = snapshot(reg_path)
    toml = reg_path / "registry.toml"
    good = toml.read_bytes()
    toml.write_text(f'format = 1\ndatabase_url = "postgresql://bob:{SECRET}@127.0.0.1:5432/reg"\n')
    line = one_line_error(run_cli("ls", registry=reg_path), 2, "database_url with a password")
    assert "PGPASSFILE" in line
    toml.write_bytes(good)
    assert snapshot(reg_path) == before


@pytest.mark.parametrize("command", ["ls", "init"])
def test_connection_failure_is_one_line_without_password(tmp_path, monkeypatch, command) -> None:  # noqa: ANN001
    _clean(monkeypatch)
    monkeypatch.setenv(
        "REGISTRY_DATABASE_URL", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/reg"
    )
    reg = tmp_path / "reg"
    if command == "ls":
        reg.mkdir()
        (reg / "registry.toml").write_text("format = 1\n")
        res = run_cli("ls", registry=reg)
    else:
        res = run_cli("init", reg)
    line = one_line_error(res, 1, "cannot connect to PostgreSQL at 127.0.0.1:1/reg (")
    assert "Traceback" not in res.err and "bob:" not in line
    assert SECRET not in (reg / "registry.toml").read_text()


def test_environment_url_may_carry_a_password(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """$REGISTRY_DATABASE_URL is never written, so it may hold one (the test server trusts
    local connections: any password is accepted)."""
    import psycopg

    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}; .ci/run starts it")
    _clean(monkeypatch)
    with pg_database() as url:
        scheme, rest = url.split("://", 1)
        user, host = rest.split("@", 1)
        monkeypatch.setenv("REGISTRY_DATABASE_URL", f"{scheme}://{user}:{SECRET}@{host}")
        res = run_cli("init", tmp_path / "reg")
        assert res.code == 0, res.err
        assert SECRET not in (tmp_path / "reg" / "registry.toml").read_text()
        assert run_cli("ls", registry=tmp_path / "reg").code == 0


def test_redaction_helpers() -> None:
    from registry.config import redact, redact_url, url_password, url_target

    url = f"postgresql+psycopg://bob:{SECRET}@db.example:5433/reg?sslmode=require"
    assert url_password(url) == SECRET
    assert redact_url(url) == "postgresql+psycopg://bob:***@db.example:5433/reg?sslmode=require"
    assert url_target(url) == "db.example:5433/reg"
    assert SECRET not in redact(f"failed at {url} with {SECRET}", url)
    assert url_password("postgresql://bob@db/reg") is None
    assert (
        redact_url("postgresql://h/db?password=x&user=u") == "postgresql://h/db?password=***&user=u"
    )
