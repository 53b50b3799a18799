"""Shared fixtures: the tiny model project (built once per run), registries on SQLite and
PostgreSQL, and an in-process CLI runner.

Every registry fixture is parametrized over both databases: a PostgreSQL registry gets a
fresh database of its own on the server at 127.0.0.1:5432 (override with
REGISTRY_TEST_PG), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PG_ADMIN = os.environ.get("REGISTRY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny project (base, tokenizer, adapter, dataset, config, evals), built once."""
    from gates.tiny import build_tiny_project

    return build_tiny_project(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A two-node Ray cluster on loopback (tests/raycluster.py), shared by the Ray tests of
    one module and stopped after it: an idle cluster's daemons take about a fifth of this
    machine's CPU, which the timing tests that follow (serving-eval) must not share."""
    from tests import raycluster

    cluster = raycluster.start(tmp_path_factory.mktemp("ray"))
    try:
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        raycluster.stop(cluster.temp_dirs)


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; yields its URL and drops it afterwards."""
    import psycopg

    name = f"reg_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}; .ci/run starts it")
    return request.param


@pytest.fixture
def database_url(backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
    else:
        with pg_database() as url:
            yield url


@pytest.fixture
def reg_path(tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialized, empty registry directory (on the parametrized database)."""
    from registry.repo import Registry

    monkeypatch.delenv("REGISTRY_HOME", raising=False)
    monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)
    monkeypatch.setenv("REGISTRY_ACTOR", "tester")
    path = tmp_path / "reg"
    Registry.init(path, database_url).close()
    return path


@pytest.fixture
def me(reg_path: Path) -> str:
    """The authenticated user commands record here: the OS user, or the PostgreSQL role."""
    from registry.repo import Registry

    r = Registry.open(reg_path)
    try:
        return r.whoami.user
    finally:
        r.close()


@pytest.fixture
def reg(reg_path: Path) -> Iterator[object]:
    from registry.repo import Registry

    r = Registry.open(reg_path)
    yield r
    r.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str | Path, registry: Path | None = None) -> CliResult:
    """Run `registry ARGS` in-process, as the console script does; capture output."""
    from cli.app import main

    argv = (
        ["registry"] + (["--registry", str(registry)] if registry else []) + [str(a) for a in args]
    )
    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(reg_path: Path):  # noqa: ANN201
    """`cli("ls", "--json")` runs a command against the test registry."""
    return lambda *args: run_cli(*args, registry=reg_path)


def add_args(tiny: dict[str, Path], name: str = "support-bot") -> list[str]:
    """The `registry add` arguments for the tiny project."""
    return [
        "add", name, "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]),
        "--tokenizer", str(tiny["tokenizer"]), "--chat-template", str(tiny["chat_template"]),
        "--dataset", str(tiny["dataset"]), "--config", str(tiny["config"]),
    ]  # fmt: skip


# --- refusals: what bad input must leave unchanged (docs/design.md, exit codes) ---------


def snapshot(reg_path: Path) -> tuple:
    """Every stored blob and every database row: what must not change."""
    from registry.repo import Registry

    blobs = sorted(
        str(p.relative_to(reg_path)) for p in (reg_path / "blobs").rglob("*") if p.is_file()
    )
    reg = Registry.open(reg_path)
    with reg.db.read() as conn:
        tables = {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").all()
            for t in ("bundle", "bundle_component", "channel", "event", "gate_run", "setting")
        }
    reg.close()
    return blobs, tables


def copy(src: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(src, dest)
    return dest


def expect_refused(cli, reg_path: Path, args: list, code: int, message: str) -> None:  # noqa: ANN001
    before = snapshot(reg_path)
    res = cli(*args)
    assert res.code == code, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert "Traceback" not in res.err
    assert message in lines[0], lines[0]
    assert snapshot(reg_path) == before
