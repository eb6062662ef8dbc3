"""export-tflite: litert-torch in its own environment (.venv-litert), checked in LiteRT.

Real exports, no mocks: the packaged Keras CIFAR-10 CNN in dynamic-range int8, and a
small NCHW torch CNN in full-integer int8 (int8 input and output) calibrated on photographs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from image_data import photo_crops

from leanify import load
from leanify.errors import LeanifyError
from leanify.passes.export_tflite import litert_python
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_runner


@pytest.fixture(scope="module")
def cifar_h5() -> Path:
    (folder,) = find_spec("cifar_10_model").submodule_search_locations
    return Path(folder) / "trained_models" / "cnn_model.h5"


def test_the_exporter_environment_is_installed():
    # CI builds it (make test depends on make litert-env): these tests must run, not skip
    assert litert_python() is not None and litert_python().exists()


def _nchw_cnn():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))

        def forward(self, pixels):
            return self.body(pixels)

    torch.manual_seed(0)
    return Net().eval()


def test_a_keras_file_exports_with_int8_weights_and_keeps_its_answers(cifar_h5, tmp_path):
    from PIL import Image

    source = load(cifar_h5)
    before = cifar_h5.read_bytes()
    q = apply(source, make_config("export-tflite", quantize="dynamic"),
              PassContext(work_dir=tmp_path / "w", threads=1))
    assert cifar_h5.read_bytes() == before
    assert q.format == "tflite" and q.meta["tflite"] == {"quantize": "dynamic",
                                                         "channel_last": False}
    assert q.path.stat().st_size < cifar_h5.stat().st_size / 3  # int8 weights
    # photographs, as the CNN was trained: raw 0-255 RGB at 32x32, channel-last already
    photos = sorted(photo_crops(tmp_path / "photos", per_photo=2, size=32).glob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in photos])
    name = source.input_names[0]
    keras_runner, tflite_runner = open_runner(source, 1), open_runner(q, 1)
    expected = np.concatenate([next(iter(keras_runner.run({name: x[None]}).values()))
                               for x in images])
    got = np.concatenate([next(iter(tflite_runner.run({name: x[None]}).values()))
                          for x in images])
    agree = (got.argmax(1) == expected.argmax(1)).mean()
    assert agree >= 0.9, (agree, got.argmax(1), expected.argmax(1))


def test_a_pt2_file_of_an_nchw_module_exports_channel_last_in_fp32(tmp_path):
    # (an in-memory module, full-integer, below; a Keras file through optimize, beside its
    # ONNX export: tests/test_keras_tflite_models.py, in `make test-acceptance`)
    import torch

    module = _nchw_cnn()
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.from_numpy(x),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    source = load(tmp_path / "cnn.pt2")
    assert source.format == "pt2"
    fp32 = apply(source, make_config("export-tflite"), PassContext(work_dir=tmp_path / "w",
                                                                   threads=1))
    assert fp32.format == "tflite" and fp32.meta["tflite"] == {"quantize": "none",
                                                               "channel_last": True}
    # the source's input name is kept; exported at batch 1, channel-last
    assert fp32.inputs[0].name == "pixels" and fp32.inputs[0].shape == (1, 32, 32, 3)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x[:1])).numpy()
    got = next(iter(open_runner(fp32, 1).run(
        {"pixels": np.ascontiguousarray(x[:1].transpose(0, 2, 3, 1))}).values()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_full_integer_int8_takes_int8_and_is_fed_floats(tmp_path):
    import torch
    from PIL import Image

    photos = sorted(photo_crops(tmp_path / "photos", per_photo=2, size=32).glob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255
                       for p in photos]).transpose(0, 3, 1, 2)
    module = _nchw_cnn()
    source = load(module, example_inputs={"pixels": torch.from_numpy(images[:2].copy())})
    calib = [{"pixels": images[i:i + 4]} for i in range(0, 12, 4)]
    ctx = PassContext(work_dir=tmp_path / "work", threads=1, calibration=lambda: iter(calib))
    q = apply(source, make_config("export-tflite", quantize="full"), ctx)
    assert q.meta["integer_io"] and q.meta["tflite"] == {"quantize": "full",
                                                         "channel_last": True}
    scale, _zero, dtype = q.meta["quantization"]["pixels"]
    assert dtype == "int8" and scale > 0
    assert q.inputs[0].shape == (1, 32, 32, 3)  # exported channel-last, the TFLite layout
    held_out = images[12:]
    with torch.inference_mode():
        expected = module(torch.from_numpy(held_out.copy())).numpy()
    runner = open_runner(q, 1)
    got = np.concatenate([next(iter(runner.run(
        {"pixels": np.ascontiguousarray(x[None].transpose(0, 2, 3, 1))}).values()))
        for x in held_out])
    cosine = np.sum(got * expected, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(
        expected, axis=1)
    assert cosine.mean() > 0.95, cosine

    # the snippet, in a fresh interpreter without leanify, gives what the runner gave
    from leanify.runtimes.litert import snippet

    script = tmp_path / "run.py"
    np.save(tmp_path / "x.npy", np.ascontiguousarray(held_out[:1].transpose(0, 2, 3, 1)))
    script.write_text("\n".join([
        *snippet(str(q.path), {"num_threads": 1}, 1),
        f"x = np.load({str(tmp_path / 'x.npy')!r})",
        f"np.save({str(tmp_path / 'y.npy')!r}, run({{'pixels': x}}))"]))
    proc = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), got[:1], rtol=1e-6, atol=1e-6)


def test_a_missing_exporter_environment_names_the_fix(cifar_h5, tmp_path, monkeypatch):
    monkeypatch.setenv("LEANIFY_LITERT_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(LeanifyError, match="make litert-env"):
        apply(load(cifar_h5), make_config("export-tflite"),
              PassContext(work_dir=tmp_path, threads=1))
