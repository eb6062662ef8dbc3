"""Limits for processes that touch untrusted model files.

Two uses. The measuring workers call `limit_worker()` first thing: a model that allocates past
the memory budget then fails inside the worker with an allocation error, which the parent turns
into a clear message (`memory_error`) instead of the machine swapping or the OOM killer firing.
`run_isolated()` runs one parsing function (TorchScript and .pt2 inspection) in a fresh child
with the same memory budget, a CPU-time cap, a scratch folder as its working and temp folder,
file writes confined to that folder (Linux Landlock, where the kernel has it; an mmap of a file
opened for writing is stopped at the open, which RLIMIT_FSIZE alone would not do), no TCP, and
only JSON facts coming back (never a pickle).

The memory budget is RLIMIT_DATA, not RLIMIT_AS: torch, onnxruntime and openvino reserve
address space they never touch (threads' stacks, allocator arenas), so an address-space cap
low enough to matter breaks them; RLIMIT_DATA counts private writable memory, what a
declared-too-large tensor really asks for, and refuses it at mmap time, before pages exist.
Measured on a 2-core machine with torch, onnxruntime, openvino and transformers imported and
one session of each runtime: 1.27 GB of address space, 0.32 GB of private data (a 0.5 GB
RLIMIT_DATA ran all three); the address space grows with the thread count.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError

MEMORY_ENV = "LEANIFY_MEMORY_LIMIT_GB"  # the budget; children inherit it
LIMITED_ENV = "LEANIFY_LIMITED"  # set inside a process that already runs under the limits
MEMORY_FLAG = "--memory-limit-gb"
PARSE_CPU_S = 120  # CPU seconds one inspection may use
PARSE_WALL_S = 300
_PARENT = "LEANIFY_INSPECTING_FOR"  # the inspection child dies with the process it works for
# What allocators say when a request is refused (Python, PyTorch, ONNX Runtime, OpenVINO, C++).
OOM_WORDS = ("MemoryError", "can't allocate memory", "bad_alloc", "Failed to allocate memory",
             "out of memory", "Cannot allocate memory", "not enough memory")


def memory_limit_gb() -> float:
    """The memory budget of one model process: the flag's value, else 80% of physical RAM."""
    text = os.environ.get(MEMORY_ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
        raise LeanifyError(f"{MEMORY_FLAG} (or {MEMORY_ENV}) must be a positive number of GB, "
                           f"got {text!r}.", fix=f"Use e.g. {MEMORY_FLAG} 8.")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return round(0.8 * ram / 2**30, 1)


def set_memory_limit(gb: float | None) -> None:
    """Make `gb` the budget of this process's model children (bench, doctor, optimize)."""
    if gb is not None:
        if gb <= 0:
            raise LeanifyError(f"{MEMORY_FLAG} must be positive, got {gb}.",
                               fix=f"Use e.g. {MEMORY_FLAG} 8.")
        os.environ[MEMORY_ENV] = str(gb)


# A model's process needs its weights a few times over (the runtime's own copy, packed int8
# blocks, activations at large batches) plus about 1 GB of libraries; a model file that asks
# for far more than that is hostile or broken. MiniLM at batch 32 x 128 tokens: < 1 GB.
WEIGHT_COPIES = 6
FLOOR_GB = 2.0


def model_budget_gb(model_bytes: int) -> float:
    """The budget of a process running one model: the user's --memory-limit-gb if given,
    else max(2 GB, 1 GB + 6x the model's files), never above 80% of RAM."""
    if os.environ.get(MEMORY_ENV):
        return memory_limit_gb()
    wanted = max(FLOOR_GB, 1.0 + WEIGHT_COPIES * model_bytes / 2**30)
    return round(min(wanted, memory_limit_gb()), 2)


def limit_for(artifact: Any) -> None:
    """In a child that runs one model (scoring, profiling): the budget such a model needs."""
    if artifact.path is not None:
        limit_memory(model_budget_gb(artifact.size_bytes()))


def current_limit_gb() -> float | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else round(soft / 2**30, 2)


def limit_memory(gb: float) -> None:
    limit = int(gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def limit_worker() -> None:
    """Called by a measuring worker before it loads anything."""
    limit_memory(memory_limit_gb())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.environ[LIMITED_ENV] = "1"


def is_limited() -> bool:
    return os.environ.get(LIMITED_ENV) == "1"


def out_of_memory(text: str) -> bool:
    return any(word.lower() in text.lower() for word in OOM_WORDS)


def memory_error(label: str, detail: str = "", gb: float | None = None) -> LeanifyError:
    """`gb`: the budget the failing process ran under, where it is known."""
    first = detail.strip().splitlines()[0] if detail.strip() else ""
    said = f" ({first[:160]}{'...' if len(first) > 160 else ''})" if first else ""
    who = f"the model {label}" if label else "the model"
    limit = (f"the {gb:g} GB limit" if gb else
             "the budget leanify gives a model of its size (1 GB + 6x its files, at least "
             "2 GB)" if not os.environ.get(MEMORY_ENV) else
             f"the {memory_limit_gb():g} GB limit")
    return LeanifyError(
        f"{who} asked for more memory than {limit}{said}, so leanify stopped it.",
        fix=f"If the model really needs that much, pass {MEMORY_FLAG} with a larger value "
        "(at most what the machine has); otherwise fix the model (a tensor or shape that "
        "asks for more than it should).",
    )


# --- Landlock: file writes only under one folder ----------------------------------------

_WRITE_RIGHTS = {1: 0b1_1111_1111_0010}  # WRITE_FILE, REMOVE_*, MAKE_* (ABI 1)
_REFER, _TRUNCATE = 1 << 13, 1 << 14
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def confine_writes(folder: str) -> bool:
    """Allow this process (and its children) to create or write files only under `folder`,
    and (kernel ABI >= 4) no TCP bind/connect, (>= 6) no signals to processes outside.
    Returns False where the kernel has no Landlock; the other limits still hold."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return False
    create, add_rule, restrict = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return False
    fs = _WRITE_RIGHTS[1] | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        parent = os.open(folder, os.O_PATH | os.O_DIRECTORY)
        try:
            rule = _PathBeneath(fs, parent)
            if libc.syscall(add_rule, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                return False
        finally:
            os.close(parent)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by Landlock
            return False
        return libc.syscall(restrict, ruleset, ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


# --- One function in a limited child -----------------------------------------------------


def run_isolated(target: str, kwargs: dict[str, Any], label: str) -> Any:
    """Call `module:function(**kwargs)` in a limited child; return its JSON result.

    A LeanifyError in the child comes back as one; running out of memory or CPU time becomes
    a LeanifyError naming `label`; anything else is an internal error with the child's
    traceback.
    """
    with tempfile.TemporaryDirectory(prefix="leanify-inspect-") as scratch:
        env = {**os.environ, "TMPDIR": scratch, "HOME": scratch, LIMITED_ENV: "1",
               MEMORY_ENV: str(memory_limit_gb()), _PARENT: str(os.getpid())}
        # The child must import this very leanify, also when it runs from a source tree.
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        request = json.dumps({"target": target, "kwargs": kwargs, "scratch": scratch})
        try:
            proc = subprocess.run(
                [sys.executable, "-P", "-m", "leanify.sandbox"], input=request, capture_output=True,
                text=True, cwd=scratch, env=env, timeout=PARSE_WALL_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise LeanifyError(f"inspecting {label} took longer than {PARSE_WALL_S} s, so "
                               "leanify stopped it.", fix="Check the file; it may be crafted "
                               "to hang.") from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {}
    if reply.get("ok"):
        return reply["value"]
    if reply.get("kind") == "input":
        raise LeanifyError(reply["message"], path=reply.get("path"), fix=reply.get("fix"))
    text = f"{reply.get('message', '')}\n{proc.stderr}"
    if reply.get("kind") == "memory" or out_of_memory(text):
        raise memory_error(label, reply.get("message", ""))
    if proc.returncode in (-24, -9) and not reply:  # SIGXCPU, or killed at the hard CPU limit
        raise LeanifyError(f"inspecting {label} used more than {PARSE_CPU_S} s of CPU, so "
                           "leanify stopped it.", fix="Check the file; it may be crafted "
                           "to hang.")
    raise RuntimeError(f"inspecting {label} failed in its child process (exit code "
                       f"{proc.returncode}): {reply.get('message', '')}\n"
                       f"{reply.get('traceback') or proc.stderr[-4000:]}")


def _child_main() -> None:
    import importlib
    import traceback

    from leanify.measure.lifeline import die_with_parent

    die_with_parent(int(os.environ[_PARENT]) if os.environ.get(_PARENT, "").isdigit() else None)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the model's code prints must not pass for the reply
    request = json.loads(sys.stdin.read())
    limit_worker()
    resource.setrlimit(resource.RLIMIT_CPU, (PARSE_CPU_S, PARSE_CPU_S + 5))
    confined = confine_writes(request["scratch"])
    try:
        module, name = request["target"].split(":")
        value = getattr(importlib.import_module(module), name)(**request["kwargs"])
        reply = {"ok": True, "value": value, "confined": confined}
    except LeanifyError as exc:
        reply = {"ok": False, "kind": "input", "message": exc.message, "path": exc.path,
                 "fix": exc.fix}
    except MemoryError as exc:
        reply = {"ok": False, "kind": "memory", "message": f"MemoryError: {exc}"}
    except Exception as exc:
        reply = {"ok": False, "kind": "internal", "message": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc()}
    proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _child_main()
