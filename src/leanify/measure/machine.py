"""What the numbers were measured on: CPU, ISA flags, cores, memory, load, package versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd",
    "asimddp", "sve", "i8mm", "bf16",
)
PACKAGES = ("torch", "onnxruntime", "onnx", "openvino", "nncf", "transformers", "tokenizers",
            "numpy", "leanify")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine(),
                                                            platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "model": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "isa_flags": sorted(f for f in ISA_FLAGS if f in flags),
    }


def memory_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def cpu_busy_fraction(seconds: float = 0.5) -> float | None:
    """Share of all cores that other processes kept busy over a short window.

    Called while leanify itself is idle, it tells whether anything else competes for the CPU
    right now (a load average would also count leanify's own work of the last minute).
    """
    import time

    first = _cpu_times()
    time.sleep(seconds)
    second = _cpu_times()
    if first is None or second is None or second[1] == first[1]:
        return None
    return round((second[0] - first[0]) / (second[1] - first[1]), 3)


def machine_info() -> dict:
    return {
        "cpu": cpu_info(),
        "memory_total_mb": memory_total_mb(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
        "load_average": load_average(),
    }


def usable_cores() -> int:
    return cpu_info()["usable_cores"]
