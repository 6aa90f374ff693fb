"""What machine a number was measured on.

Every latency row and every benchmark result carries a fingerprint, so a table measured
on one machine is never silently mixed with another's.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU flags that change which kernels a runtime picks (vector width, FMA, int8/bf16 dot
# products, AMX tiles): two CPUs with one name but different flags are different devices.
KERNEL_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
                "amx_int8", "amx_bf16", "asimd", "sve", "sve2", "i8mm", "bf16")


@lru_cache(maxsize=1)
def cpu_identity() -> dict[str, object]:
    """What identifies a CPU beyond its name: vendor, family/model/stepping, the flags that
    matter to kernels (:data:`KERNEL_FLAGS`) and the cache size (from /proc/cpuinfo)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {"cpu_id": platform.machine(), "cpu_flags": []}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    ident = "/".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model",
                                                  "stepping")) \
        if "vendor_id" in fields else "/".join(fields.get(k, "?") for k in (
            "CPU implementer", "CPU part", "CPU variant", "CPU revision"))
    return {"cpu_id": ident, "cpu_flags": sorted(flags & set(KERNEL_FLAGS)),
            "cpu_cache": fields.get("cache size")}


def usable_cores() -> int:
    """Cores this process may run on (affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def gpu_info() -> dict[str, str]:
    """Name and driver of the first NVIDIA GPU, or {} when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    first = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in first:
        return {}
    name, driver = (p.strip() for p in first.split(",", 1))
    return {"gpu": name, "gpu_driver": driver}


def host_fingerprint() -> dict[str, object]:
    """The host: CPU model, usable cores, OS, Python, torch and hwnas versions."""
    from hwnas import __version__

    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hwnas": __version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    info.update(gpu_info())
    return info
