"""`make demo` runs the main job end to end (examples/demo.py, in a fresh interpreter).

The demo is the newcomer's first contact and its steps assert what they show (a blocked
promotion exits 3, v3 fails regression-eval, ...). This test keeps it working: a change
in a gate's defaults once made `registry train` fail inside it while the suite passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


@pytest.mark.timeout(900)  # about 2 minutes on an idle 2-core machine; much more when busy
def test_demo_runs_the_release_flow_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "=== Done in" in proc.stdout

    reg = out / "registry"
    history = json.loads(run_cli("history", "support-bot:production", "--json", registry=reg).out)
    actions = [(e["action"], e["to_tag"]) for e in history]
    # newest first: the incident rollback, the gated promotion of v4, the forced first release
    assert actions[:2] == [("rollback", "support-bot:v1"), ("promote", "support-bot:v4")]
    assert run_cli("audit", "verify", registry=reg).code == 0
    assert run_cli("verify", "--all", registry=reg).code == 0
    # v4 was signed, checked by model_signing on its export, and the rollback event signed
    assert "Verification succeeded" in proc.stdout
    pub = out / "keys" / "release.pub"
    assert run_cli("verify", "support-bot:v4", "--signed-by", pub, registry=reg).code == 0
    assert history[0]["signer"] is not None
    # the second registry pulled production from the loopback S3 remote
    assert run_cli("verify", "--all", registry=out / "registry-2").code == 0
    # ...which a pull never moves: it is a remote-tracking view there, not a channel
    assert "support-bot:team/production is a remote-tracking view" in proc.stdout
