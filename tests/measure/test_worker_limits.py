"""The measuring workers' memory budget: a model that asks for too much is a clear exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "leanify.cli"]


def constant_of_shape_model(path: Path, floats: int) -> Path:
    """An ONNX graph that builds a `floats`-element constant at run time and adds its sum."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([floats], dtype=np.int64), "shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
             helper.make_node("Add", ["x", "total"], ["y"])]
    graph = helper.make_graph(
        nodes, "grows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_bench_of_a_model_past_the_memory_limit_is_a_clear_error(tmp_path):
    # 8 GB + 4 bytes of float32: it would fit in this machine's RAM, so only the 1 GB budget
    # of the worker (RLIMIT_DATA, set by sandbox.limit_worker) stops it
    model = constant_of_shape_model(tmp_path / "grows.onnx", 2**31 + 1)
    proc = subprocess.run(
        [*CLI, "bench", str(model), "--memory-limit-gb", "1", "--rounds", "1", "--min-iters",
         "1", "--min-time", "0", "--warmup", "0", "-b", "1", "-s", "4", "-q"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "the model grows.onnx asked for more memory than the 1 GB limit" in proc.stderr
    assert "--memory-limit-gb" in proc.stderr and "Traceback" not in proc.stderr


def test_without_a_flag_a_small_model_gets_a_budget_its_size_explains(tmp_path):
    # the same 8 GB ask from a file of a few hundred bytes: the default budget is what such
    # a model can need (2 GB here), not 80% of the machine
    model = constant_of_shape_model(tmp_path / "grows.onnx", 2**31 + 1)
    proc = subprocess.run(
        [*CLI, "bench", str(model), "--rounds", "1", "--min-iters", "1", "--min-time", "0",
         "--warmup", "0", "-b", "1", "-s", "4", "-q"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert "asked for more memory than the 2 GB limit" in proc.stderr


def test_the_default_budget_follows_the_model_size(monkeypatch):
    from leanify import sandbox

    monkeypatch.delenv(sandbox.MEMORY_ENV, raising=False)
    ram = sandbox.memory_limit_gb()
    assert sandbox.model_budget_gb(1000) == 2.0
    assert sandbox.model_budget_gb(2**30) == min(7.0, ram)  # 1 GB of weights: 1 + 6 GB
    assert sandbox.model_budget_gb(100 * 2**30) == ram  # never above 80% of RAM
    monkeypatch.setenv(sandbox.MEMORY_ENV, "1.5")
    assert sandbox.model_budget_gb(2**30) == 1.5  # the user's flag wins


def test_optimize_of_such_a_model_stops_in_its_scoring_child_with_exit_2(tmp_path):
    import numpy as np

    model = constant_of_shape_model(tmp_path / "m" / "grows.onnx", 2**31 + 1) \
        if (tmp_path / "m").mkdir() is None else None
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        np.savez(data / f"r{i}.npz", x=np.ones((1, 4), np.float32))
    proc = subprocess.run(
        [*CLI, "optimize", str(model), "--task", "fidelity", "--data", str(data), "--sample",
         str(data / "r0.npz"), "--out", str(tmp_path / "run"), "-q"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "asked for more memory than the budget leanify gives a model of its size" \
        in proc.stderr and "internal error" not in proc.stderr
