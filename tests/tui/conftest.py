"""Fixtures for the TUI tests: registries built once per run from the deterministic project
with the real CLI, then copied for each test; the gates the tests use.

The registries are SQLite directories (the TUI calls the same service functions whose CLI
tests run on both databases), built under a fixed clock that starts at 2026-03-02 09:00
and ticks one minute per stored timestamp (timestamps are data, so the audit chain stays
valid), so every screen shows the same digests and times on every run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from registry.repo import Registry
from tests.conftest import run_cli
from tests.fakegates import (
    fake_gates,  # noqa: F401  (fixture used through getfixturevalue)
)
from tests.tui import (
    FAKE_GATES,
    REVIEW_GATES,
    HeldGate,
    add_bundle,
    add_gates,
    build_project,
    cli_ok,
    fixed_clock,
    write,
)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No registry or database from the environment; the actor is `tester`.

    The local identity is the OS user (registry.identity); snapshots must not depend on
    the login name of the machine that renders them, so it is `tester` here too."""
    monkeypatch.delenv("REGISTRY_HOME", raising=False)
    monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)
    monkeypatch.delenv("REGISTRY_SIGNING_KEY", raising=False)
    monkeypatch.setenv("REGISTRY_ACTOR", "tester")
    monkeypatch.setattr("registry.config.os_user", lambda: "tester")


@pytest.fixture(scope="session")
def projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Path]]:
    """Two versions of the project: v2 has LoRA rank 16 and two more training rows."""
    base = tmp_path_factory.mktemp("tui-project")
    return build_project(base / "v1"), build_project(base / "v2", r=16, rows=6)


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory, projects: Any) -> dict[str, Path]:
    """`two`: support-bot:v1 and v2 (parent v1) and the test policy, no gate run yet.
    `released`: then v1 and v2 gated and promoted through staging into production."""
    from gates import catalog

    root = tmp_path_factory.mktemp("tui-registries")
    v1, v2 = projects
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REGISTRY_HOME", raising=False)
        mp.delenv("REGISTRY_DATABASE_URL", raising=False)
        mp.setenv("REGISTRY_ACTOR", "tester")
        mp.setattr("registry.config.os_user", lambda: "tester")
        fixed_clock(mp)
        add_gates(mp, FAKE_GATES)
        two = root / "two"
        Registry.init(two).close()
        add_bundle(two, v1)
        add_bundle(two, v2, "--parent", "support-bot:v1")
        cli_ok(two, "policy", "set", v1["policy"], "--reason", "test policy")
        released = root / "released"
        shutil.copytree(two, released)
        for v in ("v1", "v2"):
            cli_ok(released, "gates", "run", f"support-bot:{v}")
            cli_ok(released, "promote", f"support-bot:{v}", "--to", "staging", "--reason", "green")
            cli_ok(
                released, "promote", f"support-bot:{v}", "--to", "production", "--reason", "ship"
            )
    catalog.load.cache_clear()
    return {"two": two, "released": released}


def copy_of(template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "reg"
    shutil.copytree(template, dest)
    return dest


@pytest.fixture
def two_bundles(request: pytest.FixtureRequest, templates: dict[str, Path], tmp_path: Path) -> Path:
    """A registry of its own: support-bot:v1 and v2, the policy set, no gate run yet."""
    request.getfixturevalue("fake_gates")
    return copy_of(templates["two"], tmp_path)


@pytest.fixture
def released(request: pytest.FixtureRequest, templates: dict[str, Path], tmp_path: Path) -> Path:
    """A registry of its own: v1 then v2 promoted through staging into production."""
    request.getfixturevalue("fake_gates")
    return copy_of(templates["released"], tmp_path)


@pytest.fixture
def held_gate(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[type[HeldGate]]:
    """fake-held in the gate catalog (next to the fake gates): it waits for the test."""
    from gates import catalog

    request.getfixturevalue("fake_gates")
    real = catalog.entry_points()
    ep = EntryPoint("fake-held", "tests.tui:HeldGate", catalog.GROUP)
    monkeypatch.setattr(catalog, "entry_points", lambda: {**real, "fake-held": ep})
    catalog.load.cache_clear()
    HeldGate.release.clear()
    HeldGate.started.clear()
    yield HeldGate
    HeldGate.release.set()
    catalog.load.cache_clear()


REVIEW_POLICY = """\
[channels.staging]
require = ["fake-outcome", "train", "fake-regression"]

[gates.fake-outcome]
eval_set = "evals/target.jsonl"
"""


@pytest.fixture
def reviewed(two_bundles: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`two_bundles` under a policy requiring train-like and regression-like gates (loss
    curves, drops with intervals, per-item evidence: tests/tui/__init__.py), run once on
    each version: v1's drop passes max_drop, v2's (rank 16) fails it."""
    fixed_clock(monkeypatch)
    add_gates(monkeypatch, {**FAKE_GATES, **REVIEW_GATES})
    policy = write(two_bundles.parent / "review/policy.toml", REVIEW_POLICY)
    write(two_bundles.parent / "review/evals/target.jsonl", '{"prompt": "a", "answer": "a"}\n')
    cli_ok(two_bundles, "policy", "set", policy, "--reason", "review policy")
    cli_ok(two_bundles, "gates", "run", "support-bot:v1")
    res = run_cli("gates", "run", "support-bot:v2", registry=two_bundles)
    assert res.code == 3, res.err + res.out  # fake-regression failed
    return two_bundles
