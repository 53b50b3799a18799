"""Peak memory of a block of work: GPU allocations on CUDA, else the process's peak
resident set."""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _proc_status_kb(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (Linux), in kB: `VmRSS`
    (resident now) or `VmHWM` (peak resident); None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, Any]]:
    """Peak memory of the block in MB: GPU allocations on CUDA, else the process's peak
    resident set (Linux resets it through /proc/self/clear_refs; elsewhere it is the
    peak since the process started). The dict is filled in when the block ends; its
    `start_mb` (what was in use when the block began, where known) lets a caller tell
    what the block itself added."""
    out: dict[str, Any] = {}
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() / 2**20
        yield out
        torch.cuda.synchronize()
        out.update(
            peak_mb=torch.cuda.max_memory_allocated() / 2**20, start_mb=start,
            method="cuda_max_allocated",
        )  # fmt: skip
        return
    reset = False
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    start_kb = _proc_status_kb("VmRSS")
    yield out
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        out.update(
            peak_mb=hwm / 1024, start_mb=start_kb / 1024 if start_kb is not None else None,
            method="rss_peak" if reset else "rss_peak_since_start",
        )  # fmt: skip
    else:
        kb: float = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb / 1024 if sys.platform == "darwin" else kb
        out.update(peak_mb=kb / 1024, start_mb=None, method="rss_peak_since_start")
