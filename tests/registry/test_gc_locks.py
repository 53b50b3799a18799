"""gc cannot lose data: writers hold the gc lock shared, gc holds it exclusive
(registry/locks.py), grace rules, and stale lock records. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, add_args, run_cli

FORCE = ("--grace", "0", "--force", "--reason", "test")

HOLDER = """
import sys, time
from pathlib import Path
from registry import locks
from registry.repo import Registry
reg = Registry.open(Path(sys.argv[1]))
hold = locks.exclusive if sys.argv[2] == "exclusive" else locks.writing
with hold(reg, "holder-" + sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
reg.close()
"""


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_DATABASE_URL", "REGISTRY_HOME")}
    e["PYTHONPATH"] = str(ROOT)
    return e


def hold(reg_path: Path, kind: str, seconds: float) -> subprocess.Popen[str]:
    """A process holding the gc lock (`shared` or `exclusive`) for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(reg_path), kind, str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read() if proc.stderr else ""
    return proc


def registry_cmd(reg_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--registry", str(reg_path), *args],
        capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120,
    )  # fmt: skip


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def record(reg_path: Path, name: str, **fields: object) -> Path:
    from registry import locks

    d = reg_path / "locks" / "holders"
    d.mkdir(parents=True, exist_ok=True)
    data = {"kind": "shared", "what": "add", "pid": os.getpid(), "host": locks.hostname(),
            "boot": locks.boot_id(), "started": locks.process_started_at(os.getpid()),
            "since": "2024-01-01T00:00:00.000000Z", **fields}  # fmt: skip
    path = d / name
    path.write_text(json.dumps(data))
    return path


# --- the race ----------------------------------------------------------------------------


def test_adds_racing_a_gc_loop_lose_nothing(cli, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    """4 writers x 3 adds of fresh 6 MiB bases while `gc --grace 0 --force` loops."""
    writers, rounds = 4, 3
    bases = []
    for i in range(writers * rounds):
        base = tmp_path / f"base{i}"
        shutil.copytree(tiny["base"], base)
        header = json.dumps({"w": {"dtype": "U8", "shape": [6 << 20],
                                   "data_offsets": [0, 6 << 20]}}).encode()  # fmt: skip
        (base / "model-extra.safetensors").write_bytes(
            len(header).to_bytes(8, "little") + header + os.urandom(6 << 20)
        )
        bases.append(base)
    done = threading.Event()
    adds: list[subprocess.CompletedProcess[str]] = []
    gcs: list[subprocess.CompletedProcess[str]] = []

    def writer(w: int) -> None:
        for r in range(rounds):
            args = add_args(tiny, f"bot{w}")
            args[args.index("--base") + 1] = str(bases[w * rounds + r])
            adds.append(registry_cmd(reg_path, *args))

    def collector() -> None:
        while not done.is_set():
            gcs.append(registry_cmd(reg_path, "gc", *FORCE, "--wait", "60"))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    gc_thread.join()
    assert len(adds) == writers * rounds
    for a in adds:
        assert a.returncode == 0, a.stderr
        assert "unexpected" not in a.stderr
    assert gcs and all(g.returncode == 0 for g in gcs), [g.stderr for g in gcs if g.returncode]
    assert not any("unexpected" in g.stderr for g in gcs)
    assert len(gcs) >= 2  # gc ran during the adds, not only after them
    listed = json.loads(cli("ls", "--json").out)
    assert len(listed) == writers * rounds
    res = cli("verify", "--all")
    assert res.code == 0, res.out + res.err
    assert res.out.rstrip().endswith(": ok")
    assert not list((reg_path / "locks" / "holders").glob("*.json"))  # every record went


# --- grace rules -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_short_or_negative_grace_is_refused(cli, reg, reg_path) -> None:  # noqa: ANN001
    stray = reg.store.put_bytes(b"orphan")
    refused = (("--grace", "10"), ("--grace", "0"), ("--grace", "-1"), ("--grace", "nan"),
               ("--grace", "0", "--force"), ("--grace", "-1", "--force", "--reason", "x"))  # fmt: skip
    for args in refused:
        res = cli("gc", *args)
        assert res.code == 2, (args, res.out, res.err)
        assert res.err.startswith("error: ") and res.err.count("\n") == 1, res.err
        assert res.out == ""
    assert "--force --reason" in cli("gc", "--grace", "10").err
    assert reg.store.has(stray.digest)
    assert "would remove sha256:" in cli("gc", "--dry-run", "--grace", "0").out  # deletes nothing
    res = cli("gc", "--grace", "0", "--force", "--reason", "disk full")
    assert res.code == 0 and "forced: disk full" in res.err
    assert not reg.store.has(stray.digest)
    log = [json.loads(line) for line in (reg_path / "locks" / "gc.log").read_text().splitlines()]
    assert log[-1]["forced"] == "disk full" and log[-1]["removed"] == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_temp_files_of_live_writers_and_young_ones_are_kept(cli, reg_path) -> None:  # noqa: ANN001
    tmp = reg_path / "blobs" / "tmp"
    old = time.time() - 7200
    live = tmp / f"{os.getpid()}-1-{time.time_ns() - 10**9}"  # this process: still writing
    dead = tmp / f"{dead_pid()}-1-{time.time_ns()}"
    young = tmp / f"{dead_pid()}-2-{time.time_ns()}"
    for p in (live, dead, young):
        p.write_bytes(b"partial")
    os.utime(live, (old, old))
    os.utime(dead, (old, old))
    res = cli("gc")
    assert res.code == 0, res.err
    assert "1 temp files" in res.out and "1 of running writers" in res.out
    assert live.exists() and young.exists() and not dead.exists()
    res = cli("gc", *FORCE)
    assert live.exists() and not young.exists()


# --- lock records ------------------------------------------------------------------------


def test_stale_lock_records_are_reported_and_removed_live_ones_kept(cli, reg_path) -> None:  # noqa: ANN001
    gone = dead_pid()
    dead = record(reg_path, "shared-dead.json", pid=gone, what="add")
    reused = record(reg_path, "shared-reused.json", started=1.0, what="pull")  # pid reuse
    rebooted = record(reg_path, "shared-boot.json", boot="another-boot", what="sign")
    live = record(reg_path, "shared-live.json", what="live-add")
    other = record(reg_path, "shared-other.json", host="elsewhere.example", pid=1)
    res = cli("gc")
    assert res.code == 0, res.err
    assert res.out.count("removed stale lock record") == 3, res.out
    assert f"stale lock record of add (pid {gone} on " in res.out
    assert not dead.exists() and not reused.exists() and not rebooted.exists()
    assert live.exists() and other.exists()  # a live holder, and one this host cannot judge
    assert "removed stale" not in cli("gc").out


def test_live_shared_lock_makes_gc_wait_then_refuse(cli, reg, reg_path) -> None:  # noqa: ANN001
    stray = reg.store.put_bytes(b"orphan")
    holder = hold(reg_path, "shared", 30)
    try:
        t0 = time.monotonic()
        res = cli("gc", *FORCE, "--wait", "1")
        assert res.code == 1, res.out + res.err
        assert time.monotonic() - t0 >= 0.9
        assert "locked by writers" in res.err and f"holder-shared (pid {holder.pid} " in res.err
        assert res.err.count("\n") == 1
        assert reg.store.has(stray.digest)  # nothing was deleted without the lock
    finally:
        holder.kill()
        holder.wait()
    # the holder died by SIGKILL: the kernel (and the server) dropped its lock; its record
    # is stale, and gc reports and removes it
    res = cli("gc", *FORCE, "--wait", "5")
    assert res.code == 0, res.err
    assert f"stale lock record of holder-shared (pid {holder.pid} " in res.out
    assert not reg.store.has(stray.digest)


def test_gc_waits_for_a_writer_that_finishes(cli, reg, reg_path) -> None:  # noqa: ANN001
    holder = hold(reg_path, "shared", 1.5)
    t0 = time.monotonic()
    res = cli("gc", *FORCE, "--wait", "30")
    assert res.code == 0, res.err
    assert time.monotonic() - t0 >= 1.0
    assert holder.wait(timeout=30) == 0
    assert "stale" not in res.out  # a clean release leaves no record


def test_writer_waits_for_gc_and_names_it(cli, reg_path, tiny, monkeypatch) -> None:  # noqa: ANN001
    from registry import locks

    holder = hold(reg_path, "exclusive", 30)
    try:
        monkeypatch.setattr(locks, "WRITER_WAIT_S", 1.0)
        res = cli(*add_args(tiny))
        assert res.code == 1, res.out + res.err
        assert "locked by gc" in res.err and f"holder-exclusive (pid {holder.pid} " in res.err
    finally:
        holder.kill()
        holder.wait()
    assert cli(*add_args(tiny)).code == 0
    assert cli("verify", "--all").code == 0


def test_gc_inside_a_writing_process_refuses_at_once(cli, reg) -> None:  # noqa: ANN001
    from registry import locks

    with locks.writing(reg, "add"):
        t0 = time.monotonic()
        res = cli("gc", "--wait", "30")
        assert res.code == 1 and "itself writing" in res.err
        assert time.monotonic() - t0 < 5
    assert cli("gc").code == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_team_gc_waits_for_a_writer_on_another_machine(cli, reg, reg_path, tmp_path) -> None:  # noqa: ANN001
    """Another user's registry (own store, same database) holding the lock shared blocks gc
    here through the advisory lock, and gc names the holder from pg_stat_activity."""
    from registry.repo import Registry

    other = tmp_path / "bob"
    Registry.init(other, reg.cfg.database_url).close()
    holder = hold(other, "shared", 30)
    try:
        res = cli("gc", *FORCE, "--wait", "1")
        assert res.code == 1, res.out + res.err
        assert "locked by writers" in res.err and f"holder-shared (pid {holder.pid} " in res.err
    finally:
        holder.kill()
        holder.wait()
    assert cli("gc", *FORCE, "--wait", "10").code == 0  # the server dropped the dead session's lock
    assert run_cli("gc", *FORCE, registry=other).code == 0
