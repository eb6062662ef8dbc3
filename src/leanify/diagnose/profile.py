"""Where time goes, from inside: per-operator and per-layer breakdowns.

PyTorch formats: torch.profiler over a few runs at the typical input; layers are timed as
profiler ranges opened and closed by module hooks (the blocks of the model's largest
ModuleList and the root's other children). ONNX: ONNX Runtime's own profiler, its node events
grouped by op type and by the repeated block a node's name points to. `trace` writes the
Chrome-trace JSON both profilers produce; Perfetto (ui.perfetto.dev) and chrome://tracing
open it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leanify.diagnose.common import layer_key, layer_sort_key
from leanify.errors import require

TOP = 15


def _summary(totals: dict[str, float], calls: dict[str, int], runs: int,
             top: int) -> list[dict[str, Any]]:
    grand = sum(totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"name": name, "ms_per_run": round(us / 1000.0 / runs, 4),
             "share": round(us / grand, 4), "calls_per_run": round(calls[name] / runs, 2)}
            for name, us in rows]


# --- PyTorch -------------------------------------------------------------------------------


def block_modules(model: Any) -> list[tuple[str, Any]]:
    """The modules a per-layer breakdown times: every block of the largest ModuleList, and
    the root's other children (embeddings, pooler, head...)."""
    import torch

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return []
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        return [(n, m) for n, m in model.named_children()]
    list_name, blocks = max(lists, key=lambda nm: len(nm[1]))
    out = [(f"{list_name}.{i}", m) for i, m in enumerate(blocks)]
    # the other top-level parts, outside the blocks' ancestry
    ancestors = {list_name.rsplit(".", k)[0] for k in range(list_name.count(".") + 1)}
    stack = list(model.named_children())
    while stack:
        name, module = stack.pop(0)
        if name == list_name:
            continue
        if name in ancestors:
            stack.extend((f"{name}.{c}", m) for c, m in module.named_children())
        else:
            out.append((name, module))
    return out


def torch_profile(run: Callable[[], Any], model: Any, iters: int, trace: str | None,
                  top: int = TOP) -> dict[str, Any]:
    import torch
    from torch.autograd.profiler import record_function

    blocks = block_modules(model)
    handles, open_ranges = [], {}

    def pre(name):
        def hook(_module, _args):
            ctx = record_function(f"layer::{name}")
            ctx.__enter__()
            open_ranges[name] = ctx
        return hook

    def post(name):
        def hook(_module, _args, _out):
            ctx = open_ranges.pop(name, None)
            if ctx is not None:
                ctx.__exit__(None, None, None)
        return hook

    for name, module in blocks:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    try:
        run()  # warm-up, not profiled
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                with record_function("leanify::run"):
                    run()
    finally:
        for h in handles:
            h.remove()
    ops: dict[str, float] = {}
    op_calls: dict[str, int] = {}
    layers: dict[str, float] = {}
    total_us = 0.0
    for evt in prof.key_averages():
        if evt.key == "leanify::run":
            total_us = evt.cpu_time_total
        elif evt.key.startswith("layer::"):
            layers[evt.key[7:]] = evt.cpu_time_total
        elif evt.key.startswith("aten::") and evt.self_cpu_time_total > 0:
            ops[evt.key] = evt.self_cpu_time_total
            op_calls[evt.key] = evt.count
    if trace:
        tmp = Path(trace).with_name(f".{Path(trace).name}.partial")
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, trace)
    return _record("torch.profiler", iters, total_us, ops, op_calls, layers, top, trace)


# --- ONNX Runtime --------------------------------------------------------------------------


def ort_events(path: str | Path, batch: Mapping[str, np.ndarray], threads: int | None,
               iters: int, level: str = "all") -> tuple[list[dict[str, Any]], str]:
    """Profile `iters` runs (after one warm-up run); returns the events and the trace file."""
    ort = require("onnxruntime", "onnx", "Profiling ONNX models")
    scratch = tempfile.mkdtemp(prefix="leanify-ort-profile-")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(scratch, "ort")
    opts.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in batch.items() if k in wanted}
    for _ in range(iters + 1):
        session.run(None, feed)
    file = session.end_profiling()
    events = json.loads(Path(file).read_text(encoding="utf-8"))
    return events, file


def _timed_runs(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    return runs[1:]  # the first run is the warm-up


def ort_profile(path: str | Path, batch: Mapping[str, np.ndarray], threads: int | None,
                iters: int, trace: str | None, top: int = TOP) -> dict[str, Any]:
    events, file = ort_events(path, batch, threads, iters)
    try:
        runs = _timed_runs(events)
        inside = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith(
            "_kernel_time") and any(lo <= e["ts"] <= hi for lo, hi in runs)]
        ops: dict[str, float] = {}
        op_calls: dict[str, int] = {}
        layers: dict[str, float] = {}
        for e in inside:
            op = e.get("args", {}).get("op_name", "?")
            ops[op] = ops.get(op, 0.0) + e["dur"]
            op_calls[op] = op_calls.get(op, 0) + 1
            block = layer_key(e["name"].removesuffix("_kernel_time")) or "outside the blocks"
            layers[block] = layers.get(block, 0.0) + e["dur"]
        n = max(len(runs), 1)
        total_us = sum(hi - lo for lo, hi in runs)
        if trace:
            tmp = Path(trace).with_name(f".{Path(trace).name}.partial")
            shutil.copyfile(file, tmp)
            os.replace(tmp, trace)
    finally:
        shutil.rmtree(Path(file).parent, ignore_errors=True)
    return _record("onnxruntime", n, total_us, ops, op_calls, layers, top, trace)


def _record(profiler: str, runs: int, total_us: float, ops: dict[str, float],
            op_calls: dict[str, int], layers: dict[str, float], top: int,
            trace: str | None) -> dict[str, Any]:
    """One profile record for every runtime: per-run time, top operators, time per block."""
    layer_rows = [{"name": k, "ms_per_run": round(us / 1000.0 / runs, 4),
                   "share": round(us / total_us, 4) if total_us else None}
                  for k, us in layers.items()]
    return {
        "profiler": profiler,
        "runs": runs,
        "ms_per_run": round(total_us / 1000.0 / runs, 4),
        "operators": _summary(ops, op_calls, runs, top),
        "layers": sorted(layer_rows, key=lambda r: layer_sort_key(r["name"])),
        "trace": trace,
    }
