"""The runtime the models run in: torch configured once (threads, quiet logging), the
device and dtype, whether QLoRA is possible, library versions, and the machine (CPU
model, cores, kernel path) that measured times and fingerprints depend on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from registry.errors import GateError

DTYPES = ("float32", "bfloat16", "float16")


_configured = False


def setup_torch() -> Any:
    """torch, configured once: the thread count and quiet transformers logging."""
    global _configured
    import torch

    if not _configured:
        threads = os.environ.get("REGISTRY_TORCH_THREADS")
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        elif "PYTEST_CURRENT_TEST" in os.environ:
            torch.set_num_threads(1)
        import transformers

        transformers.logging.disable_progress_bar()
        transformers.logging.set_verbosity_error()
        _configured = True
    return torch


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings peft and transformers raise about their own internals."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="peft")
        warnings.filterwarnings("ignore", category=UserWarning, module="peft")
        yield


def select_device() -> str:
    """The device models run on: cuda when a GPU is present, else cpu (REGISTRY_DEVICE wins)."""
    forced = os.environ.get("REGISTRY_DEVICE")
    if forced:
        return forced
    torch = setup_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    """A human label of the device, recorded in every model gate's evidence (the CPU's
    model, cores and kernel path are in `machine()`)."""
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return "cpu"


def resolve_dtype(name: str, device: str) -> Any:
    """The torch dtype for a policy's dtype name ("auto": bfloat16 on CUDA, else float32)."""
    torch = setup_torch()
    if name == "auto":
        name = "bfloat16" if device.startswith("cuda") else "float32"
    if name not in DTYPES:
        raise GateError(f"dtype {name!r} is not one of {', '.join(DTYPES)} or auto")
    return getattr(torch, name)


def qlora_available(device: str) -> bool:
    """Whether 4-bit QLoRA can be used: CUDA and bitsandbytes both present."""
    return device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None


def runtime() -> dict[str, str | None]:
    """Versions of the libraries that produce a model's outputs (for fingerprints)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def kernel_path() -> str | None:
    """torch's CPU kernel path (DEFAULT, AVX2, AVX512, ...: `ATEN_CPU_CAPABILITY` picks
    one; unset, the best the CPU has). Kernels of different paths round differently."""
    torch = setup_torch()
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else None


def machine() -> dict[str, Any]:
    """What a measured time depends on: the CPU model, its cores (all, and those this
    process may use), torch's kernel path and threads; the GPU when there is one."""
    import platform

    torch = setup_torch()
    cpu = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_kernel_path": kernel_path(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
