"""Fuzzing the OpenVINO IR loader: mutated .xml graphs and .bin weights end in an Artifact or
a LeanifyError naming the file, never a C++ trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.models.load import load

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[bytes, bytes]:
    """(xml, bin) of x[batch, 4] @ w[4, 3] + b[3], converted from ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    b = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    folder = tmp_path_factory.mktemp("ir")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(folder / "t.onnx"))
    ov.save_model(ov.convert_model(str(folder / "t.onnx")), str(folder / "model.xml"),
                  compress_to_fp16=False)
    return (folder / "model.xml").read_bytes(), (folder / "model.bin").read_bytes()


def _write(folder: Path, xml: bytes, weights: bytes) -> Path:
    (folder / "model.bin").write_bytes(weights)
    path = folder / "model.xml"
    path.write_bytes(xml)
    return path


def test_the_valid_ir_loads(tmp_path, ir):
    artifact = load(_write(tmp_path, *ir))
    assert artifact.format == "openvino" and artifact.meta["params"] == 15


@fuzz_settings(max_examples=60)
@given(edits=EDITS, target=st.sampled_from(["xml", "xml", "bin"]))
def test_mutated_ir(tmp_path, ir, edits, target):
    xml, weights = ir
    if target == "xml":
        xml = mutate(xml, edits)
    else:
        weights = mutate(weights, edits)
    path = _write(tmp_path, xml, weights)
    outcome(lambda: load(path), path, tmp_path / "model.bin")
