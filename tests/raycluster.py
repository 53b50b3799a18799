"""A real two-node Ray cluster on loopback for the tests (gates/cluster.py).

`ray start --head --port P --num-cpus 1` and a second `ray start --address 127.0.0.1:P
--num-cpus 1`, each node with its own temp dir, started once per test session and stopped
afterwards: only the processes of these two nodes are stopped (found by their temp dirs),
never another Ray on the machine. The worker nodes sign gate results with their own key
($REGISTRY_SIGNING_KEY in the nodes' environment, which the drivers here do not have).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
REGISTRY = Path(sys.executable).with_name("registry")


@dataclass
class Cluster:
    address: str  # the GCS address, HOST:PORT
    temp_dirs: list[Path]
    worker_key: Path  # the private key the nodes sign with
    worker_key_id: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _short_dir(name: str) -> Path:
    """Ray's socket paths must stay short (AF_UNIX): a temp dir under /tmp, not pytest's."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"rt-{name}-", dir="/tmp"))


def start(home: Path) -> Cluster:
    from registry.keys import generate

    key = home / "worker.pem"
    signing = generate(key, home / "worker.pub")
    # Token authentication with a token of this cluster's own, set for this process (the
    # driver) and the nodes alike: Ray turns token mode on by itself when it finds a
    # ~/.ray/auth_token (an earlier local `ray.init` writes one), and a driver and nodes
    # that disagree cannot connect.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env = {**os.environ, "REGISTRY_SIGNING_KEY": str(key), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    head, other = _short_dir("head"), _short_dir("node")
    common = ["--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", "100000000"]
    try:
        subprocess.run(
            [str(RAY), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
             "--include-dashboard=false", "--temp-dir", str(head), *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # The second node joins the way the README says a worker does: `registry worker`,
        # which checks this machine, then runs `ray start --address ... --block`.
        subprocess.Popen(
            [str(REGISTRY), "worker", "--address", f"127.0.0.1:{port}", "--key", str(key),
             "--cpus", "1", "--", "--node-ip-address", "127.0.0.1", "--temp-dir", str(other),
             "--object-store-memory", "100000000"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_nodes(f"127.0.0.1:{port}", 2)
    except BaseException:
        stop([head, other])
        raise
    return Cluster(f"127.0.0.1:{port}", [head, other], key, signing.id)


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _wait_for_nodes(address: str, n: int, timeout: float = 90.0) -> None:
    """Connect this process as a driver and wait until `n` nodes are alive and each has run
    a task. A node the GCS lists as alive may not yet have a worker, or its CPU in the
    scheduler's view, and SPREAD then puts every task of the first test on the other node
    (CI saw it once): a task pinned to each node waits until both really take work."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    deadline = time.monotonic() + timeout
    while len(alive := [node["NodeID"] for node in ray.nodes() if node["Alive"]]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} has fewer than {n} nodes")
        time.sleep(0.2)
    probe = ray.remote(num_cpus=1)(_node_id)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in alive
    ]
    ran = ray.get(refs, timeout=max(1.0, deadline - time.monotonic()))
    if sorted(ran) != sorted(alive):
        raise RuntimeError(f"the Ray cluster at {address}: tasks ran on {ran}, not on {alive}")
    while ray.available_resources().get("CPU", 0) < n:  # the probes' CPUs are free again
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} has not freed its {n} CPUs")
        time.sleep(0.1)


def _pids_of(temp_dirs: list[Path]) -> list[int]:
    """Processes whose command line names one of these temp dirs, and their children."""
    marks = [str(d) for d in temp_dirs]
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry.name)] = ppid
        if any(m in cmd for m in marks):
            found.add(int(entry.name))
    grew = True
    while grew:
        kids = {p for p, pp in parents.items() if pp in found and p not in found}
        grew = bool(kids)
        found |= kids
    return sorted(found - {os.getpid()})


def stop(temp_dirs: list[Path]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        pids = _pids_of(temp_dirs)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.1)
    for d in temp_dirs:
        shutil.rmtree(d, ignore_errors=True)
