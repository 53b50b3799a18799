"""`--json` on every command that prints a result, and what the new ones print: one JSON
document on stdout and nothing else, errors on stderr, the documented exit code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer.main

from cli.app import app
from registry.output import human_size
from tests.conftest import add_args, run_cli
from tests.fakegates import fake_gates  # noqa: F401  (fixture)

# Commands that print no result, so have no --json (README "Scripting"): keep it short.
NO_RESULT = {
    ("tui",): "an interactive terminal app",
    ("completion",): "prints a shell script to source",
}


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name)


def find(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = typer.main.get_group(app)
    for word in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[word]
    return cmd


def json_only(out: str) -> object:
    """stdout must be exactly one JSON document (one line when piped)."""
    assert out.endswith("\n") and out.count("\n") == 1, out
    return json.loads(out)


def test_every_command_has_json_unless_it_prints_no_result() -> None:
    leaves = list(leaf_commands(typer.main.get_group(app)))
    assert len(leaves) >= 25 and ("gates", "list") in leaves  # the walk really walked
    missing = []
    for path in leaves:
        flags = {o for p in find(path).params for o in getattr(p, "opts", [])}
        if "--json" not in flags and path not in NO_RESULT:
            missing.append(" ".join(path))
    assert missing == [], f"commands without --json (add it, or list them in NO_RESULT): {missing}"
    # The exemptions are real commands, still without --json (else drop them from the list).
    for path in NO_RESULT:
        assert "--json" not in {o for p in find(path).params for o in getattr(p, "opts", [])}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_commands_that_gained_json_print_one_document(cli, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    new = json_only(run_cli("init", tmp_path / "fresh", "--json").out)
    assert new == {"path": str((tmp_path / "fresh").resolve()), "database": "sqlite"}

    pol = tmp_path / "policy.toml"
    pol.write_text('[channels.staging]\nrequire = ["dataset-audit"]\n')
    checked = json_only(cli("policy", "check", pol, "--json").out)
    assert checked["ok"] is True and checked["digest"].startswith("sha256:")
    assert checked["channels"] == {"staging": {"require": ["dataset-audit"], "after": None}}
    assert json_only(cli("policy", "set", pol, "--json").out) == {
        "digest": checked["digest"], "changed": True,
    }  # fmt: skip
    assert json_only(cli("policy", "set", pol, "--json").out)["changed"] is False

    gates = json_only(cli("gates", "list", "--json").out)
    audit = next(g for g in gates if g["gate"] == "dataset-audit")
    assert audit["error"] is None and audit["version"] and "licenses" in audit["defaults"]

    added = json_only(cli("remote", "add", "origin", "s3://bucket/team", "--json").out)
    assert added["name"] == "origin" and added["url"] == "s3://bucket/team"
    assert added["kind"] == "s3"
    assert json_only(cli("remote", "rm", "origin", "--json").out) == {"removed": "origin"}
    assert json.loads(cli("remote", "ls", "--json").out) == []

    assert cli(*add_args(tiny)).code == 0
    dest = tmp_path / "export"
    exported = json_only(cli("export", "support-bot:v1", dest, "--json").out)
    assert exported["tag"] == "support-bot:v1" and exported["dest"] == str(dest)
    assert exported["files"] > 0 and exported["bytes"] > 0 and exported["signature"] is None
    text = cli("export", "support-bot:v1", tmp_path / "export2").out  # the same figures
    assert f"({exported['files']} files, {human_size(exported['bytes'])})" in text

    swept = json_only(cli("gc", "--dry-run", "--json").out)
    assert swept["dry_run"] is True and swept["removed"] == [] and swept["freed"] == 0
    assert swept["grace"] == 3600.0


POLICY = """
[channels.staging]
require = ["fake-outcome", "fake-after"]

[gates.fake-outcome]
outcome = "{outcome}"
"""


def policy(tmp_path: Path, outcome: str) -> Path:
    path = tmp_path / f"policy-{outcome}.toml"
    path.write_text(POLICY.replace("{outcome}", outcome))
    return path


@pytest.mark.usefixtures("fake_gates")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_blocked_promote_json_lists_each_requirement_and_why(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    assert cli("policy", "set", policy(tmp_path, "failed")).code == 0
    assert cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome").code == 3

    res = cli("promote", "support-bot:v1", "--to", "staging", "--json")
    assert res.code == 3  # docs/design.md: 3 = blocked by gates
    out = json_only(res.out)
    assert out["blocked"] is True and out["promoted"] is False and out["exit_code"] == 3
    assert out["channel"] == "staging" and out["ref"] == "support-bot:v1"
    reqs = {r["gate"]: r for r in out["requirements"]}
    assert list(reqs) == ["fake-outcome", "fake-after"]
    failed, missing = reqs["fake-outcome"], reqs["fake-after"]
    assert failed["status"] == "failed" and failed["passed"] is False
    assert isinstance(failed["run"], int) and failed["at"]
    assert "failed" in failed["why"] and "score 0.0 < 0.5" in failed["why"]
    assert missing["status"] == "missing" and missing["run"] is None and missing["why"]
    # The error line goes to stderr, alone; no table there (it is in the JSON).
    lines = res.err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "may not enter staging" in lines[0]
    )

    # A new policy: the old run is stale (it ran under the earlier one).
    assert cli("policy", "set", policy(tmp_path, "passed")).code == 0
    res = cli("promote", "support-bot:v1", "--to", "staging", "--json")
    assert res.code == 3
    stale = json_only(res.out)["requirements"][0]
    assert stale["gate"] == "fake-outcome" and stale["status"] == "stale", stale
    assert "earlier policy" in stale["why"] or "policy" in stale["why"]

    # Once everything passes, --json prints the move, and exit 0.
    assert cli("gates", "run", "support-bot:v1").code == 0
    res = cli("promote", "support-bot:v1", "--to", "staging", "--json")
    assert res.code == 0, res.err
    moved = json_only(res.out)
    assert moved["to_tag"] == "support-bot:v1" and moved["event"]


@pytest.mark.usefixtures("fake_gates")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_dry_run_promote_json(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    pol = policy(tmp_path, "passed")
    res = cli("promote", "support-bot:v1", "--to", "staging", "--policy", pol, "--json")
    assert res.code == 3 and res.err == ""
    out = json_only(res.out)
    assert out["dry_run"] is True and out["allowed"] is False and out["tag"] == "support-bot:v1"
    assert [r["status"] for r in out["requirements"]] == ["missing", "missing"]
    assert out["blockers"] == ["fake-outcome: missing", "fake-after: missing"]
