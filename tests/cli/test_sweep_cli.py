"""`registry sweep` and `registry sweep show`: the table, the recommendation, JSON, the plot,
and refusals that leave the registry as it was (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import add_args, expect_refused
from tests.gates.model_fixtures import write_config, write_policy

# target-eval with a floor every candidate clears, so a short sweep on the untrained tiny
# base has a recommendation; the figures are still the gate's own.
POLICY = """
[channels.production]
require = ["adapter-compat", "target-eval"]

[gates.target-eval]
eval_set = "evals/target.jsonl"
min_delta = -1.0
"""
SWEEP = ["sweep", "--from", "support-bot:v1", "--rank", "1,2", "--gates",
         "adapter-compat,target-eval"]  # fmt: skip


def _bundle(cli, tiny: dict[str, Path], tmp_path: Path, *, policy: bool = True) -> None:  # noqa: ANN001
    args = add_args(tiny)
    args[args.index("--config") + 1] = str(write_config(tmp_path / "recipe.json", max_steps=30))
    assert cli(*args).code == 0
    if policy:
        path = write_policy(tiny["evals"].parent, "sweep-cli-policy.toml", POLICY)
        assert cli("policy", "set", path).code == 0


def test_sweep_prints_the_table_and_recommends_a_bundle(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("torch")
    _bundle(cli, tiny, tmp_path)
    res = cli(*SWEEP)
    assert res.code == 0, (res.out, res.err)
    sweep_id = re.search(r"^sweep ([0-9a-f]{12}): ", res.out, re.M).group(1)  # type: ignore[union-attr]
    header = next(line for line in res.out.splitlines() if line.startswith("RANK"))
    for column in ("PARAMS", "ADAPTER", "PEAK MB", "TRAIN LOSS", "VAL LOSS", "GAIN [95%]",
                   "TRAIN", "TARGET-EVAL", "ADAPTER-COMPAT", "ALL", "PARETO"):  # fmt: skip
        assert column in header
    assert re.search(
        r"^recommended: support-bot:v[23] sha256:[0-9a-f]{64} \(r=[12] ", res.out, re.M
    )
    assert "passing every gate: r=1 alpha=2, r=2 alpha=4" in res.out
    # Progress went to stderr, one line per point at least (not a terminal: no steps).
    assert "[r=1 alpha=2 seed=0] registered support-bot:v2" in res.err

    # The same table later, from the records alone.
    show = cli("sweep", "show", sweep_id)
    assert show.code == 0 and show.out == res.out
    # Rerunning resumes: nothing is trained again.
    again = cli(*SWEEP, "--json")
    assert again.code == 0
    data = json.loads(again.out)
    assert data["run"] == {"trained": [], "gated": [], "done": ["r1-a2-s0", "r2-a4-s0"],
                           "errors": {}}  # fmt: skip
    assert data["sweep"] == sweep_id and data["executor"] == "local"
    assert again.err == ""  # --json is quiet


def test_sweep_show_json_and_plot(cli, tiny, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("torch")
    _bundle(cli, tiny, tmp_path)
    run = cli(*SWEEP, "--json")
    assert run.code == 0, run.err
    sweep_id = json.loads(run.out)["sweep"]
    res = cli("sweep", "show", sweep_id[:6], "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert set(data) >= {"sweep", "name", "from", "gates", "points", "groups", "passing",
                         "pareto", "recommended", "rule"}  # fmt: skip
    assert data["gates"] == ["adapter-compat", "target-eval"]
    assert [(p["rank"], p["alpha"], p["seed"]) for p in data["points"]] == [(1, 2, 0), (2, 4, 0)]
    for p in data["points"]:
        assert p["bundle"]["tag"].startswith("support-bot:v")
        assert p["gates"] == {"train": "passed", "adapter-compat": "passed",
                              "target-eval": "passed"}  # fmt: skip
        assert p["trainable_parameters"] > 0 and p["adapter_bytes"] > 0
        assert p["gain"]["lower"] <= p["gain"]["value"] <= p["gain"]["upper"]
    assert (
        data["points"][1]["trainable_parameters"] == 2 * data["points"][0]["trainable_parameters"]
    )
    assert data["recommended"]["bundle"]["digest"] in {
        p["bundle"]["digest"] for p in data["points"]
    }

    png, svg = tmp_path / "sweep.png", tmp_path / "sweep.svg"
    assert cli("sweep", "show", sweep_id, "--plot", png).code == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000
    assert cli("sweep", "show", sweep_id, "--plot", svg).code == 0
    text = svg.read_text("utf-8")
    assert "<svg" in text and f"Sweep {sweep_id}" in text and "LoRA rank" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "4,x"], "--rank: 'x' is not an integer >= 1"),
        (["--rank", "0"], "--rank: '0' is not an integer >= 1"),
        (["--rank", "9" * 5000], "is not an integer >= 1"),
        (["--rank", "4", "--target-modules", "q proj"], "--target-modules: 'q proj'"),
        (["--rank", "4", "--seeds", "1,-2"], "--seeds: '-2'"),
        (["--rank", "4", "--alpha", "big"], "--alpha: 'big'"),
        (["--rank", "4", "--gates", "train"], "--gates: train is the sweep's own"),
        (["--rank", "4", "--gates", "target-evl"], "unknown gate 'target-evl'"),
        (["--rank", "4", "--on", "slurm"], "--on must be ray"),
        (["--rank", "4", "--plot", "table.pdf"], "--plot: table.pdf must end in .png or .svg"),
    ],
)
def test_bad_sweep_input_is_one_line_and_changes_nothing(
    cli,
    reg_path,
    tiny,
    tmp_path,
    args,
    message,  # noqa: ANN001
) -> None:
    _bundle(cli, tiny, tmp_path)
    expect_refused(cli, reg_path, ["sweep", "--from", "support-bot:v1", *args], 2, message)


def test_sweep_needs_a_policy_and_a_bundle_with_a_recipe(cli, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    _bundle(cli, tiny, tmp_path, policy=False)
    expect_refused(cli, reg_path, [*SWEEP[:5]], 2, "no policy is set")
    expect_refused(cli, reg_path, ["sweep", "--rank", "4"], 2, "needs --from REF and --rank")
    expect_refused(cli, reg_path, ["sweep", "show", "abcdef"], 2, "no sweep 'abcdef'")
