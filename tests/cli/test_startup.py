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
