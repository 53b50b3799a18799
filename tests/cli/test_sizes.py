"""One unit system for sizes (IEC binary: B, KiB, MiB, GiB), and push/pull summaries whose
two figures are the same kind of sum (what was sent, out of what the remote needs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from registry.output import human_size
from tests.conftest import add_args, run_cli
from tests.registry.remotes.conftest import (  # noqa: F401  (fixtures)
    S3Env,
    add_tiny,
    aws_env,
    cli_ok,
    hub,
    make_registry,
    moto_server,
    s3,
)

DECIMAL_LABEL = re.compile(r"\d (?:KB|kB|MB|GB|TB)\b")


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (113_035_000, "107.8 MiB"), (5 * 2**30, "5.0 GiB"), (3 * 2**40, "3.0 TiB")],
)  # fmt: skip
def test_human_size_is_iec_binary(n: int | None, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_every_size_the_cli_prints_is_in_binary_units(cli, tiny, tmp_path: Path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    outputs = {
        "ls": cli("ls").out,
        "show": cli("show", "support-bot:v1").out,
        "verify": cli("verify", "support-bot:v1").out,
        "export": cli("export", "support-bot:v1", tmp_path / "out").out,
        "gc": cli("gc", "--dry-run").out,
    }
    for name, out in outputs.items():
        assert not DECIMAL_LABEL.search(out), (name, out)
        assert re.search(r"\d(?:\.\d)? (?:B|KiB|MiB|GiB)\b", out), (name, out)
    size = json.loads(cli("ls", "--json").out)[0]["size"]
    assert human_size(size) in outputs["ls"] and human_size(size) in outputs["show"]


def summary_sizes(text: str) -> tuple[str, str]:
    m = re.search(r"sent (\d+) of (\d+) blobs \(([^)]+) of ([^)]+)\)", text)
    assert m, text
    return m.group(3), m.group(4)


def test_s3_push_summary_is_sent_of_needed(make_registry, tiny, s3: S3Env) -> None:  # noqa: ANN001, F811
    reg = make_registry("a")
    cli_ok(reg, "remote", "add", "origin", f"s3://{s3.bucket}/team", "--endpoint-url", s3.endpoint)
    add_tiny(reg, tiny)
    first = cli_ok(reg, "push", "support-bot:v1", "--remote", "origin")
    sent, total = summary_sizes(first)
    assert sent == total  # a first push sends everything the remote needs
    assert not DECIMAL_LABEL.search(first)
    add_tiny(reg, tiny, "--annotation", "n=2")
    res = json.loads(cli_ok(reg, "push", "support-bot:v2", "--remote", "origin", "--json"))
    assert 0 < res["blobs_sent"] < res["blobs"] and 0 < res["bytes_sent"] < res["bytes_total"]
    text = run_cli("push", "support-bot:v1", "--remote", "origin", registry=reg).out
    assert "already there" in text


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_hub_push_summary_is_sent_of_needed(make_registry, tiny, hub) -> None:  # noqa: ANN001, F811
    reg = make_registry("a")
    cli_ok(reg, "remote", "add", "hub", "hf://my-org/support-bot")
    add_tiny(reg, tiny)
    res = json.loads(cli_ok(reg, "push", "support-bot:v1", "--remote", "hub", "--json"))
    # A first push (the local base left off) sends every blob the version holds: N of N.
    assert 0 < res["blobs_sent"] == res["blobs"] and res["bytes_sent"] == res["bytes_total"], res
    add_tiny(reg, tiny, "--annotation", "n=2")
    # v2 shares v1's files; with the base it also holds the base's, which alone are sent.
    res = json.loads(cli_ok(reg, "push", "support-bot:v2", "--remote", "hub", "--include-base",
                            "--json"))  # fmt: skip
    assert 0 < res["blobs_sent"] < res["blobs"] and 0 < res["bytes_sent"] < res["bytes_total"], res
