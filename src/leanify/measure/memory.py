"""Resident memory read from the OS (Linux /proc), never from allocator bookkeeping."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: the peak is the best the OS tells us
        return peak_rss_mb()
    return kb / 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is absent)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kb //= 1024  # bytes there
    return kb / 1024


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0). False if unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def bare_interpreter_rss_mb() -> float:
    """Peak RSS of a bare Python interpreter, measured in its own process."""
    code = "from leanify.measure.memory import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return float(out.stdout.strip())
