"""Statuses are coloured on a terminal only: run in a real pseudo-terminal they carry ANSI
colour codes; piped, or with NO_COLOR set, they never do."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import add_args
from tests.fakegates import fake_gates  # noqa: F401  (fixture)

RED, GREEN, RESET = "\033[1;31m", "\033[32m", "\033[0m"
POLICY = '[channels.staging]\nrequire = ["fake-outcome"]\n\n[gates.fake-outcome]\noutcome = "{o}"\n'


def run(args: list[str], *, tty: bool, env: dict[str, str] | None = None) -> str:
    """stdout of `registry ARGS` in a fresh process: on a pseudo-terminal, or a pipe."""
    cmd = [sys.executable, "-m", "cli", *args]
    full_env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    full_env.update({"TERM": "xterm-256color", **(env or {})})
    if not tty:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            cmd, stdin=follower, stdout=follower, stderr=subprocess.PIPE, env=full_env
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.fixture
def gated(cli, tiny, tmp_path: Path, fake_gates) -> None:  # noqa: ANN001, F811
    """v1 with a FAILED run, v2 with a PASSED one."""
    assert cli(*add_args(tiny)).code == 0
    assert cli(*add_args(tiny), "--annotation", "n=2").code == 0
    for version, outcome in ((1, "failed"), (2, "passed")):
        pol = tmp_path / f"{outcome}.toml"
        pol.write_text(POLICY.replace("{o}", outcome))
        assert cli("policy", "set", pol).code == 0
        cli("gates", "run", f"support-bot:v{version}")


@pytest.mark.usefixtures("gated")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_statuses_are_coloured_on_a_terminal_only(reg_path: Path) -> None:
    r = ["--registry", str(reg_path)]
    shown = run([*r, "gates", "show", "support-bot:v1"], tty=True)
    assert f"{RED}FAILED{RESET}" in shown, shown
    passed = run([*r, "gates", "show", "support-bot:v2"], tty=True)
    assert f"{GREEN}PASSED{RESET}" in passed
    listed = run([*r, "ls"], tty=True)
    assert f"{RED}1 failed{RESET}" in listed and f"{GREEN}1 passed{RESET}" in listed
    # Colour codes never change the alignment: each data row's columns line up.
    rows = [line for line in listed.splitlines() if line.startswith("support-bot")]
    plain = [line.replace(RED, "").replace(GREEN, "").replace(RESET, "") for line in rows]
    assert len({line.index("sha256:") for line in plain}) == 1

    for args in (["gates", "show", "support-bot:v1"], ["ls"]):
        piped = run([*r, *args], tty=False)
        assert "\033[" not in piped and ("FAILED" in piped or "1 failed" in piped)
        no_color = run([*r, *args], tty=True, env={"NO_COLOR": "1"})
        assert "\033[" not in no_color and ("FAILED" in no_color or "1 failed" in no_color)


class Terminal(io.StringIO):
    """A stream that says it is a terminal (what colour_enabled asks)."""

    def isatty(self) -> bool:
        return True


def test_table_colours_status_cells_after_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.output import status, table

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    rows = [("target-eval", status("failed"), "1.0"), ("safety", status("passed"), "12.5")]
    coloured = table(["GATE", "STATUS", "SECONDS"], rows, stream=Terminal())
    plain = table(["GATE", "STATUS", "SECONDS"], rows, stream=io.StringIO())
    assert f"{RED}FAILED{RESET}  1.0" in coloured and f"{GREEN}PASSED{RESET}  12.5" in coloured
    assert "\033[" not in plain
    strip = coloured.replace(RED, "").replace(GREEN, "").replace(RESET, "")
    assert strip == plain  # the codes add nothing else, and move no column
    monkeypatch.setenv("NO_COLOR", "1")
    assert table(["GATE", "STATUS", "SECONDS"], rows, stream=Terminal()) == plain
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: an empty value does not disable
    assert table(["GATE", "STATUS", "SECONDS"], rows, stream=Terminal()) == coloured
