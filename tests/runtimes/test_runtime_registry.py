"""The runtime registry: one module per runtime, formats apart from runtimes, settings schemas."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from leanify import runtimes
from leanify.errors import LeanifyError
from leanify.models.files import SIDECAR
from leanify.models.load import load


def test_every_runtime_module_registers_one_runtime():
    found = runtimes.all_runtimes()
    assert list(found) == ["onnxruntime", "openvino", "torch-eager", "torchscript",
                           "torch-export", "torch-generate", "openvino-genai", "keras",
                           "litert"]
    assert len(runtimes.MODULES) == len(found)
    for runtime in found.values():
        assert runtime.formats and runtime.version(), runtime.name
    assert runtimes.versions()["openvino"] and runtimes.versions()["onnxruntime"]


def test_a_format_has_a_default_runtime():
    assert runtimes.default_for("onnx").name == "onnxruntime"
    assert runtimes.default_for("openvino").name == "openvino"
    assert runtimes.default_for("hf").name == "torch-eager"
    assert runtimes.default_for("keras").name == "keras"
    assert runtimes.default_for("tflite").name == "litert"
    with pytest.raises(LeanifyError, match="no runtime runs models of format 'coreml'"):
        runtimes.default_for("coreml")


def test_an_onnx_file_run_by_openvino(tiny_onnx, tmp_path, example_batch):
    """Format and runtime are separate: the sidecar's run_with picks OpenVINO for an ONNX."""
    shutil.copy(tiny_onnx, tmp_path / "model.onnx")
    (tmp_path / SIDECAR).write_text(json.dumps({"run_with": "openvino",
                                                "runtime": {"inference_precision": "f32"}}))
    artifact = load(tmp_path / "model.onnx")
    assert runtimes.for_artifact(artifact).name == "openvino"
    ids, mask, types = (t.numpy() for t in example_batch())
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    by_ov = runtimes.open_runner(artifact, threads=1)
    assert by_ov.runtime == "openvino" and by_ov.details["inference_precision"] == "f32"
    got = by_ov.run(feeds)["last_hidden_state"]
    by_ort = runtimes.open_runner(load(tiny_onnx), threads=1)
    assert by_ort.runtime == "onnxruntime"
    np.testing.assert_allclose(got, by_ort.run(feeds)["last_hidden_state"], atol=1e-4)


def test_the_sidecar_is_checked_against_its_runtime(tiny_onnx, tmp_path):
    shutil.copy(tiny_onnx, tmp_path / "model.onnx")
    sidecar = tmp_path / SIDECAR
    sidecar.write_text(json.dumps({"run_with": "torchscript"}))
    with pytest.raises(LeanifyError, match="does not run onnx models"):
        load(tmp_path / "model.onnx")
    sidecar.write_text(json.dumps({"run_with": "openvino",
                                   "runtime": {"inference_precision": "f64"}}))
    with pytest.raises(LeanifyError, match="inference_precision='f64' is invalid"):
        load(tmp_path / "model.onnx")
    sidecar.write_text(json.dumps({"runtime": {"allow_spinning": "yes"}}))
    with pytest.raises(LeanifyError, match="allow_spinning='yes' is invalid"):
        load(tmp_path / "model.onnx")


def test_check_settings_names_what_a_runtime_takes():
    with pytest.raises(LeanifyError, match="'num_streams' is not a runtime setting of "
                                           "onnxruntime"):
        runtimes.check_settings(runtimes.get("onnxruntime"), {"num_streams": 2})
    with pytest.raises(LeanifyError, match="takes no runtime settings"):
        runtimes.check_settings(runtimes.get("torch-eager"), {"num_streams": 2})
    with pytest.raises(LeanifyError, match="num_threads=0 is invalid"):
        runtimes.check_settings(runtimes.get("torchscript"), {"num_threads": 0})
    runtimes.check_settings(runtimes.get("torchscript"), {"num_threads": 1})
    with pytest.raises(LeanifyError, match="no runtime named 'tvm'"):
        runtimes.get("tvm")
