"""Fuzzing the ONNX loader: mutated protobuf bytes, and external-data entries (`location`,
`offset`, `length`) of every shape, checked before onnx or ONNX Runtime see them.

Every case must end in an Artifact or a LeanifyError (exit 2) naming the file; when the
loader accepts external data, ONNX Runtime must be able to read it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.errors import LeanifyError
from leanify.models.load import load

onnx = pytest.importorskip("onnx")


def _model():
    """x[batch, 4] @ w[4, 3] + b[3]: a small valid graph with two initializers."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    b = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def inline_bytes() -> bytes:
    return _model().SerializeToString()


def _with_external(folder: Path, entries: list[tuple[str, str]] | None = None) -> Path:
    """model.onnx whose tensor 'w' keeps its 48 bytes in w.data (after 16 bytes of padding);
    `entries` replaces its external-data entries."""
    from onnx import TensorProto

    model = _model()
    w = model.graph.initializer[0]
    (folder / "w.data").write_bytes(bytes(16) + w.raw_data)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in entries if entries is not None else [("location", "w.data"),
                                                           ("offset", "16"), ("length", "48")]:
        w.external_data.add(key=key, value=value)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _ort_reads(path: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
    assert out.shape == (1, 3)


def test_the_valid_models_load(tmp_path, inline_bytes):
    path = tmp_path / "inline.onnx"
    path.write_bytes(inline_bytes)
    assert load(path).meta["params"] == 15
    ext = _with_external(tmp_path)
    artifact = load(ext)
    assert artifact.meta["external_data"] == [str((tmp_path / "w.data").resolve())]
    _ort_reads(ext)


@fuzz_settings(max_examples=120)
@given(edits=EDITS)
def test_mutated_protobuf_bytes(tmp_path, inline_bytes, edits):
    path = tmp_path / "model.onnx"
    path.write_bytes(mutate(inline_bytes, edits))
    outcome(lambda: load(path), path)


_NUMBER = st.one_of(st.integers(0, 80).map(str), st.integers(-5, -1).map(str),
                    st.just("abc"), st.just(""), st.just("1e3"), st.just(" 16"), st.just("0x10"),
                    st.just("١٦"), st.integers(10**19, 10**40).map(str), st.text(max_size=4))
_LOCATION = st.one_of(st.sampled_from(["w.data", "./w.data", "sub/../w.data", "../w.data",
                                       "/etc/hostname", "missing.data", "", ".", "w.data\x00x",
                                       "model.onnx"]), st.text(max_size=6))
_EXTRA = st.tuples(st.sampled_from(["location", "offset", "length", "checksum", "basepath",
                                    "__class__", ""]), st.text(max_size=4))


@st.composite
def _entries(draw) -> list[tuple[str, str]]:
    """Mostly-valid entries (the valid value of each key is one choice among bad ones), in
    any order, some left out, sometimes with extra ones."""
    entries = []
    for key, valid, bad in (("location", "w.data", _LOCATION), ("offset", "16", _NUMBER),
                            ("length", "48", _NUMBER)):
        value = draw(st.one_of(st.just(valid), st.just(valid), st.none(), bad))
        if value is not None:
            entries.append((key, value))
    entries += draw(st.lists(_EXTRA, max_size=1))
    return draw(st.permutations(entries))


@fuzz_settings(max_examples=120)
@given(entries=_entries())
def test_external_data_entries(tmp_path, entries):
    path = _with_external(tmp_path, entries)
    result = outcome(lambda: load(path), path, tmp_path / "w.data")
    if not isinstance(result, LeanifyError):
        _ort_reads(path)  # what the loader accepted, ONNX Runtime reads


@pytest.mark.parametrize(("entries", "words"), [
    ([("location", "w.data"), ("offset", "abc"), ("length", "48")], "offset 'abc'"),
    ([("location", "w.data"), ("offset", "16"), ("length", "-48")], "length '-48'"),
    ([("location", "w.data"), ("offset", "40"), ("length", "48")], "truncated"),
    ([("location", "w.data"), ("offset", "0"), ("length", "32")], "needs 48 bytes"),
    ([("location", "../w.data"), ("offset", "16"), ("length", "48")], "outside"),
    ([("location", "w.data"), ("offset", "16"), ("offset", "16")], "repeats"),
    ([("location", "w.data"), ("basepath", "/")], "unknown external-data entry 'basepath'"),
    ([("offset", "16"), ("length", "48")], "names no usable external data file"),
])
def test_bad_external_data_is_named(tmp_path, entries, words):
    path = _with_external(tmp_path, entries)
    result = outcome(lambda: load(path), path, tmp_path / "w.data")
    assert isinstance(result, LeanifyError)
    assert words in result.message and "'w'" in result.message
    assert str(tmp_path) in result.render()


def test_offset_abc_through_the_cli_is_exit_2_without_a_traceback(tmp_path):
    path = _with_external(tmp_path, [("location", "w.data"), ("offset", "abc"),
                                     ("length", "48")])
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "info", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "model.onnx" in proc.stderr and "offset 'abc'" in proc.stderr
