"""`registry report`: the release report of a bundle, as HTML (rendered in a real headless
chromium) and as Markdown, built from a registry made through the real CLI.

The registry: three versions of support-bot from the byte-fixed project (gates/tiny/fixed.py)
gated by the real train / target-eval / regression-eval / serving-eval gates with the model
replaced by fixed outputs (tests/fakegates.py, `fixed.*` annotations), so every figure is
known by construction:

- v1 (r=8): target 20 of 40 wrong (the baseline is right on 4): +0.40, lower bound 0.250
  >= min_delta 0.2; nothing regressed; serving 1.12x / 0.93x. Promoted to production.
- v2 (r=16, 6 rows, parent v1): 7 golden items regressed (drop 0.175, bound 0.270 > 0.1:
  FAIL) and the validation loss turns up (overfitting: FAIL).
- v3 (parent v2): target 10 wrong (+0.65 >= 0.488), golden item 5 regressed (drop 0.025,
  bound 0.080 <= 0.1: PASS); a first target-eval run under a stricter policy (min_delta
  0.6: FAIL) is superseded. Signed; its gate runs are attested. Promoted to staging.

`REGISTRY_REPORT_SCREENSHOT=docs/report.png` also writes the README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import add_args, run_cli
from tests.fakegates import fake_gates, use_fixed_model_gates  # noqa: F401 (fixture)
from tests.tui import add_bundle, build_project, cli_ok, fixed_clock

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = os.environ.get("REGISTRY_REPORT_SCREENSHOT", "")

POLICY = """\
[channels.staging]
require = ["train", "target-eval", "regression-eval"]

[channels.production]
require = ["train", "target-eval", "regression-eval", "serving-eval"]
after = "staging"

[gates.target-eval]
eval_set = "evals/target.jsonl"
min_delta = {min_delta}

[gates.regression-eval]
eval_set = "evals/golden.jsonl"
max_drop = 0.1

[gates.serving-eval]
eval_set = "evals/target.jsonl"
"""


def _rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _policy(root: Path, min_delta: float) -> Path:
    _rows(root / "evals/target.jsonl", [
        {"prompt": f"sort item {i}", "completion": f"a b {i}", "wrong": "c b a",
         "baseline": f"a b {i}" if i < 4 else "no idea"}
        for i in range(40)
    ])  # fmt: skip
    _rows(root / "evals/golden.jsonl", [
        {"prompt": f"golden question {i}", "completion": f"golden answer {i}"} for i in range(40)
    ])  # fmt: skip
    (root / "policy.toml").write_text(POLICY.format(min_delta=min_delta))
    return root / "policy.toml"


def _wrong(a: int, b: int) -> str:
    return "wrong=" + ",".join(str(i) for i in range(a, b))


def build_release(root: Path, mp: pytest.MonkeyPatch) -> Path:
    """The registry described in the module docstring, through the CLI."""
    fixed_clock(mp)
    mp.setattr("registry.config.os_user", lambda: "tester")
    use_fixed_model_gates(mp)
    reg = root / "reg"
    cli_ok(root, "init", reg)
    v1, v2 = build_project(root / "p1"), build_project(root / "p2", r=16, rows=6)
    policy = _policy(root / "policy", 0.2)
    strict = _policy(root / "strict", 0.6)
    cli_ok(reg, "policy", "set", policy, "--reason", "release policy")
    add_bundle(
        reg,
        v1,
        "-a",
        f"fixed.target-eval={_wrong(20, 40)}",
        "-a",
        "fixed.train=final=0.6",
        "-a",
        "fixed.serving-eval=adapter=1.12;merged=0.93",
    )
    add_bundle(
        reg,
        v2,
        "--parent",
        "support-bot:v1",
        "-a",
        f"fixed.target-eval={_wrong(15, 40)}",
        "-a",
        f"fixed.regression-eval={_wrong(5, 12)}",
        "-a",
        "fixed.train=overfit=1",
    )
    add_bundle(reg, v2, "--parent", "support-bot:v2", "-a", f"fixed.target-eval={_wrong(30, 40)}",
               "-a", "fixed.regression-eval=wrong=5", "-a", "fixed.train=final=0.35",
               "-a", "fixed.serving-eval=adapter=1.08;merged=0.97")  # fmt: skip
    cli_ok(reg, "gates", "run", "support-bot:v1")
    cli_ok(reg, "promote", "support-bot:v1", "--to", "staging", "--reason", "green")
    cli_ok(reg, "promote", "support-bot:v1", "--to", "production", "--reason", "first release")
    assert run_cli("gates", "run", "support-bot:v2", registry=reg).code == 3
    key = root / "keys/release.pem"
    cli_ok(reg, "key", "generate", key)
    mp.setenv("REGISTRY_SIGNING_KEY", str(key))
    assert run_cli("gates", "run", "support-bot:v3", "--gate", "target-eval", "--policy", strict,
                   registry=reg).code == 3  # fmt: skip
    cli_ok(reg, "gates", "run", "support-bot:v3")
    cli_ok(reg, "sign", "support-bot:v3", "--key", key)
    cli_ok(reg, "promote", "support-bot:v3", "--to", "staging", "--reason", "candidate")
    mp.delenv("REGISTRY_SIGNING_KEY")
    return reg


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gates import catalog

    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REGISTRY_HOME", raising=False)
        mp.delenv("REGISTRY_DATABASE_URL", raising=False)
        mp.setenv("REGISTRY_ACTOR", "tester")
        reg = build_release(root, mp)
    catalog.load.cache_clear()
    return reg


def _report(reg: Path, tmp: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp / f"r{len(list(tmp.iterdir()))}"
    res = run_cli("report", *args, "-o", str(out), "--json", registry=reg)
    assert res.code == 0, res.err + res.out
    return out.read_text(encoding="utf-8"), json.loads(res.out)


def _text(html: str) -> str:
    """The page's text: tags dropped, whitespace collapsed (what a reader sees)."""
    body = re.sub(r"<svg.*?</svg>", " ", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())


# --- the content ------------------------------------------------------------------------------


def test_report_against_production_shows_every_gate_figure_and_mark(
    release: Path, tmp_path: Path
) -> None:
    html, info = _report(release, tmp_path, "support-bot:v3")
    assert info["bundle"] == "support-bot:v3" and info["against"] == "support-bot:v1"
    assert info["bytes"] == len(html.encode()) and info["format"] == "html"
    assert info["sections"] == ["bundle", "gates", "promotion", "trends", "loss", "items",
                                "changes", "serving", "trust"]  # fmt: skip
    text = _text(html)
    assert "Compared with support-bot:v1 (channel production)" in text
    # every current gate with its result mark
    for gate in ("train", "target-eval", "regression-eval", "serving-eval"):
        assert re.search(rf"<td>{gate}</td><td><span class=\"mark mark-pass\">PASS</span>", html)
    # figure, interval, bound, threshold and mark side by side (values from the statistics)
    assert "delta 0.65 [0.4882, 0.7499] (95%) lower bound >= 0.2 (min_delta) 0.4882 PASS" in text
    assert "drop 0.025 [-0.0319, 0.07952] (95%) upper bound <= 0.1 (max_drop) 0.07952 PASS" in text
    assert "adapter_latency_ratio 1.08 - value <= 1.5 (max_adapter_latency_ratio) 1.08 PASS" in text
    assert "val_loss_rise" in text and "(max_val_loss_rise)" in text
    # the stricter policy's run failed and is superseded, under another policy
    assert re.search(r"target-eval #\d+ FAIL [\d: -]+ superseded by #\d+", text), text


def test_report_shows_component_diff_lineage_and_history(release: Path, tmp_path: Path) -> None:
    html, _ = _report(release, tmp_path, "support-bot:v3", "--against", "production")
    text = _text(html)
    assert "adapter changed" in text and "tokenizer unchanged" in text
    assert "adapter r 8 16 changed" in text
    assert "adapter lora_alpha 16 32 changed" in text
    assert "dataset rows 4 6 changed" in text
    assert "config hyperparameters.lora_r 8 16 changed" in text
    assert "annotation" in text and "fixed.train final=0.6 final=0.35" in text
    # lineage: parent v2, then v1
    assert re.search(r"support-bot:v2 sha256:\w+ parent support-bot:v1 sha256:\w+ ancestor 2",
                     text)  # fmt: skip
    # who promoted what, and the readiness of each channel
    assert "History of support-bot:production" in text
    assert re.search(r"promote - support-bot:v1 tester first release", text)
    assert re.search(r"promote support-bot:v1 support-bot:v3 tester candidate", text)
    assert "production all gates READY" in text
    # signatures and attestations
    assert re.search(r"Audit chain: intact, \d+ events", text)
    assert re.search(r"key:[0-9a-f]{16} sha256:", text)
    assert re.search(r"[45] of 5 gate runs carry a signed attestation", text)


def test_report_items_loss_curves_trends_and_serving(release: Path, tmp_path: Path) -> None:
    html, _ = _report(release, tmp_path, "support-bot:v3")
    text = _text(html)
    # the one golden item that regressed: prompt, expected, before, after
    assert "1 items regressed and 26 improved" in text, text
    assert ("regression-eval #" in text and "golden question 5 golden answer 5 golden answer 5"
            " I do not know 1 -> 0") in text  # fmt: skip
    # loss curves summarized in words beside the plot
    assert re.search(r"train run #\d+: train loss 2\.\d+ at step 1 -> 0\.\d+ at step 200", text)
    assert "overfitting: not flagged" in text
    # trends: one row per version and judged figure, v2's failures marked
    assert re.search(r"v2 regression-eval drop 0.175 \[[-\d.]+, 0.2703\] 0.1 FAIL", text), text
    assert re.search(r"v1 target-eval delta 0.4 \[0.2501, [\d.]+\] 0.2 PASS", text)
    assert "target-eval delta: v1 0.4, v2 0.275, v3 0.65 (threshold 0.2)" in text
    # serving per mode and ratio
    assert re.search(r"adapter [\d.]+ [\d.]+ [\d.]+ 512", text)
    assert "adapter: 1.08x the base's latency" in text
    # plots are inline SVG with text labels; nothing is fetched
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == 3
    trends, loss, serving = svgs  # in the page's order
    assert ">step<" in loss and ">validation loss<" in loss
    assert ">version<" in trends and "target-eval: delta" in trends
    assert ">latency / base<" in serving
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html


def test_failing_bundle_marks_failures(release: Path, tmp_path: Path) -> None:
    html, info = _report(release, tmp_path, "support-bot:v2")
    assert info["against"] == "support-bot:v1"
    text = _text(html)
    assert re.search(r"<td>regression-eval</td><td><span class=\"mark mark-fail\">FAIL", html)
    assert re.search(r"<td>train</td><td><span class=\"mark mark-fail\">FAIL", html)
    assert "drop 0.175 [0.06308, 0.2703] (95%) upper bound <= 0.1 (max_drop) 0.2703 FAIL" in text
    assert "overfitting: FLAGGED" in text
    assert "7 items regressed" in text
    assert "staging all gates BLOCKED" in text


def test_markdown_has_the_same_content(release: Path, tmp_path: Path) -> None:
    md, info = _report(release, tmp_path, "support-bot:v3", "--format", "md")
    assert info["format"] == "md" and "<svg" not in md
    assert md.startswith("# Release report: support-bot:v3\n")
    assert "| target-eval | ✅ **PASS** |" in md
    assert re.search(r"\| `delta` \| 0.65 \| \[0.4882, 0.7499\] \(95%\) \| lower bound >= 0.2", md)
    assert "| target-eval | `#" not in md
    assert re.search(r"\| regression-eval #\d+ \| `golden question 5` \| `golden answer 5` \|"
                     r" `golden answer 5` \| `I do not know` \| 1 -> 0 \|", md)  # fmt: skip
    assert "| adapter | `r` | 8 | 16 | changed |" in md
    assert "*train and validation loss*: train run #" in md
    assert "*metric trends per version*: " in md and "regression-eval drop: v1 0," in md
    assert re.search(r"❌ \*\*FAIL\*\* \| [\d: -]+ \| superseded by #\d+ \|", md)


def test_same_registry_same_bytes_and_stdout(release: Path, tmp_path: Path) -> None:
    a, _ = _report(release, tmp_path, "support-bot:v3")
    b, _ = _report(release, tmp_path, "support-bot:v3")
    assert a == b
    res = run_cli("report", "support-bot:v3", "-o", "-", "--format", "md", registry=release)
    assert res.code == 0 and res.out.startswith("# Release report: support-bot:v3")


def test_default_path_and_against_parent(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = run_cli("report", "support-bot:v1", registry=release)
    assert res.code == 0, res.err
    page = (tmp_path / "report-support-bot-v1.html").read_text()
    # v1 is production and has no parent: nothing to compare with, said so
    assert "nothing to compare with: production holds this bundle and no parent" in _text(page)
    res = run_cli("report", "support-bot:v3", "--against", "support-bot:v2", "--json",
                  registry=release)  # fmt: skip
    assert json.loads(res.out)["path"] == "report-support-bot-v3.html"
    assert "against support-bot:v2" not in res.out and json.loads(res.out)["against"] == (
        "support-bot:v2"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["support-bot:v9"], "support-bot:v9"),
        (["support-bot:v3", "--format", "pdf"], "--format must be one of html, md"),
        (["support-bot:v3", "-o", "-", "--json"], "cannot go with -o -"),
        (["support-bot:v3", "--against", "nope:v1"], "nope"),
    ],
)
def test_bad_input_is_one_line(release: Path, args: list[str], message: str) -> None:
    res = run_cli("report", *args, registry=release)
    assert res.code == 2, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.err


def test_report_on_both_databases(
    cli: Any,
    tiny_fixed: dict[str, Path],
    reg_path: Path,
    fake_gates: None,  # noqa: F811
) -> None:
    """The report reads the same records on SQLite and PostgreSQL (a fake gate's figure)."""
    p = tiny_fixed
    assert cli(*add_args(p)).code == 0
    assert cli("policy", "set", p["policy"]).code == 0
    assert cli("gates", "run", "support-bot").code == 0
    res = cli("report", "support-bot", "-o", "-", "--format", "md")
    assert res.code == 0, res.err
    assert re.search(r"\| `score` \| 1 \| - \| value >= 0.5 \(min_score\) \| 1 \| ✅ \*\*PASS\*\* \|",
                     res.out)  # fmt: skip
    assert "| fake-after | ✅ **PASS** |" in res.out


@pytest.fixture
def tiny_fixed(tmp_path: Path) -> dict[str, Path]:
    return build_project(tmp_path / "project")


# --- in a real browser --------------------------------------------------------------------------


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed here")
def test_chromium_renders_the_report(release: Path, tmp_path: Path) -> None:
    html, _ = _report(release, tmp_path, "support-bot:v3")
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    res = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "<title>Release report: support-bot:v3</title>" in dom
    for gate in ("train", "target-eval", "regression-eval", "serving-eval"):
        assert f"<td>{gate}</td>" in dom
    assert dom.count('class="mark mark-pass">PASS<') >= 8
    assert 'class="mark mark-fail">FAIL<' in dom  # the superseded run
    svgs = re.findall(r"<svg.*?</svg>", dom, flags=re.S)
    assert len(svgs) == 3
    trends, loss, serving = svgs
    assert ">step<" in loss and ">loss (nats per token)<" in loss
    assert ">version<" in trends and ">ratio to the base model<" in serving
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "report.png"
    size = "1200,3300" if SCREENSHOT else "1200,2400"  # the README's reaches a plot
    res = _chromium(tmp_path, f"--screenshot={shot.resolve()}", f"--window-size={size}",
                    "--hide-scrollbars", page.as_uri())  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    if SCREENSHOT:  # a 64-colour palette: a third of the bytes, the same picture to the eye
        from PIL import Image

        with Image.open(shot) as img:
            img.convert("RGB").quantize(64).save(shot, optimize=True)


def test_matplotlib_only_in_the_report() -> None:
    """The report's plots and the sweep's plot are the only code that imports matplotlib."""
    root = Path(__file__).resolve().parents[2]
    users = sorted(
        str(p.relative_to(root))
        for pkg in ("registry", "gates", "tui", "cli")
        for p in (root / pkg).rglob("*.py")
        if re.search(r"^\s*(import|from) matplotlib", p.read_text(encoding="utf-8"), re.M)
    )
    assert users == ["gates/report/plots.py", "gates/sweep_review.py"]


def test_start_up_imports_no_matplotlib(release: Path) -> None:
    """`registry --help`, `report --help` and `ls` never import matplotlib; only writing an
    HTML report does (tests/cli/test_startup.py checks the other heavy modules)."""
    import sys

    probe = (
        "import sys\nfrom cli.app import main\nsys.argv = ['registry'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MPL' if 'matplotlib' in sys.modules else 'NONE', file=sys.stderr)\n"
    )
    for args, expect in (
        (["--help"], "NONE"),
        (["report", "--help"], "NONE"),
        (["-R", str(release), "ls"], "NONE"),
        (["-R", str(release), "report", "support-bot:v3", "--format", "md", "-o", "-"], "NONE"),
        (["-R", str(release), "report", "support-bot:v3", "-o", "-"], "MPL"),
    ):
        res = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=False,
            cwd=Path(__file__).resolve().parents[2], timeout=120,
        )  # fmt: skip
        assert res.stderr.strip().splitlines()[-1] == expect, (args, res.stderr[-500:])
