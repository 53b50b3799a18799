"""Commands that need no model import nothing heavy (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import add_args, run_cli

HEAVY = ("torch", "transformers", "peft", "boto3", "botocore", "huggingface_hub", "textual",
         "sqlalchemy", "sqlmodel", "alembic", "matplotlib", "ray")  # fmt: skip

PROBE = """
import json, sys
args, heavy = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["registry"] + args
from cli.app import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nLOADED:" + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""


def loaded_after(args: list[str], cwd: Path) -> list[str]:
    """Heavy top-level packages imported by running `registry ARGS` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "LOADED:" in proc.stderr, proc.stderr
    return json.loads(proc.stderr.rsplit("LOADED:", 1)[1])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_light_commands_import_nothing_heavy(cli, reg_path, tiny) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    policy = reg_path.parent / "policy.toml"
    policy.write_text("[channels.staging]\nrequire = []\n")
    assert cli("policy", "set", policy).code == 0
    assert cli("promote", "support-bot:v1", "--to", "staging").code == 0
    assert cli(*add_args(tiny), "--annotation", "k=v").code == 0
    assert cli("promote", "support-bot:v2", "--to", "staging").code == 0
    r = ["--registry", str(reg_path)]
    for args in (
        ["--help"],
        ["-h"],
        ["--version"],
        ["completion", "bash"],
        r + ["ls"],
        r + ["ls", "--json"],
        r + ["show", "support-bot:v1"],
        r + ["history", "support-bot:staging"],
        r + ["audit", "verify"],
        r + ["verify", "support-bot:v1"],
        r + ["diff", "support-bot:v1", "support-bot:v2"],
        r + ["rollback", "support-bot:staging", "--reason", "test"],
    ):
        assert loaded_after(args, reg_path.parent) == [], args
    moves = json.loads(run_cli("history", "support-bot:staging", "--json", registry=reg_path).out)
    assert moves[0]["action"] == "rollback"  # the probe really ran the command


def test_help_shows_required_marks_without_markup_escapes() -> None:
    res = run_cli("rollback", "--help")
    assert res.code == 0
    assert "[required]" in res.out and "\\[" not in res.out


def test_invoked_name_skips_the_global_options() -> None:
    from cli.app import invoked_name

    assert invoked_name(["--registry", "ls", "show", "x:v1"]) == "show"  # "ls" is a path
    assert invoked_name(["-R", "/r", "--debug", "gates", "run"]) == "gates"
    assert invoked_name(["--registry=/r", "ls", "-n", "3"]) == "ls"
    assert invoked_name(["--debug", "--help"]) is None
    assert invoked_name([]) is None


def test_main_builds_only_the_invoked_command_with_the_same_help(capsys, monkeypatch) -> None:  # noqa: ANN001
    """`main` hands Typer only the command it runs (cli.app.only_invoked): each command's
    and group's help is what the whole app gives, and one command is built, not 70."""
    import contextlib

    import typer.main

    import cli.app as cli_app

    app = cli_app.app
    names = [c.name or c.callback.__name__.lower().replace("_", "-")
             for c in app.registered_commands] + [g.name for g in app.registered_groups]  # fmt: skip
    assert len(names) > 20 and {"ls", "gates", "promote"} <= set(names)
    built: list[str] = []
    real = typer.main.get_command_from_info

    def counting(command_info, **kwargs):  # noqa: ANN001, ANN003, ANN202
        built.append(command_info.name or command_info.callback.__name__)
        return real(command_info, **kwargs)

    def help_of(name: str, *, whole: bool) -> str:
        built.clear()
        monkeypatch.setattr(typer.main, "get_command_from_info", counting)
        monkeypatch.setattr(sys, "argv", ["registry", name, "--help"])
        if whole:
            monkeypatch.setattr(cli_app, "only_invoked", lambda *_: contextlib.nullcontext())
        try:
            cli_app.main()
        except SystemExit as stop:
            assert stop.code in (0, None), name
        finally:
            monkeypatch.undo()
        return capsys.readouterr().out

    for name in names:
        full = help_of(name, whole=True)
        assert len(built) >= len(names), name  # every command was built
        assert help_of(name, whole=False) == full, name
        group = next((g for g in app.registered_groups if g.name == name), None)
        expected = 1 if group is None else len(group.typer_instance.registered_commands)
        assert len(built) <= max(expected, 1), (name, built)
    assert len(app.registered_commands) + len(app.registered_groups) == len(names)  # restored
