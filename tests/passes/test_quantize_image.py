"""Static QDQ int8 of a CNN calibrated on images through the image task (ORT, per channel,
U8S8, convolution outputs quantized), judged by image fidelity against the float model."""

from __future__ import annotations

import pytest
from image_data import colour_images, feature_cnn

from leanify.measure.data import read_dataset
from leanify.measure.evaluate import evaluate
from leanify.models.load import load
from leanify.passes.registry import PassContext, make_config, run_pipeline
from leanify.search.plan import IMAGE_QDQ
from leanify.tasks import EvalSettings, get


def test_qdq_int8_of_a_cnn_calibrated_on_images(tmp_path):
    import onnx

    task = get("image-fidelity")
    source = task.prepare(load(feature_cnn(tmp_path / "cnn.onnx", size=64)))
    calib = read_dataset(colour_images(tmp_path / "calib", 4, seed=3, labelled=False),
                         "image-fidelity")
    data = read_dataset(colour_images(tmp_path / "eval", 4, seed=4, labelled=False),
                        "image-fidelity")
    ctx = PassContext(work_dir=tmp_path / "work", threads=1,
                      calibration=task.calibration(source, calib, EvalSettings(batch_size=4)))
    int8 = run_pipeline(source, [make_config("quantize-static", **IMAGE_QDQ)], ctx)
    assert int8.meta["preprocess"] == source.meta["preprocess"]  # carried to the candidate
    assert int8.meta["quantization"]["calibration_batches"] == 3  # 12 images, 4 a batch
    graph = onnx.load(str(int8.path)).graph
    produced = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # every convolution reads int8 activations and int8 weights, and its output is quantized
    assert convs and all(produced[n.input[0]] == "DequantizeLinear" and
                         produced[n.input[1]] == "DequantizeLinear" for n in convs)
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    assert sum(consumers.get(n.output[0]) == "QuantizeLinear" for n in convs) >= len(convs) - 1
    metric = evaluate(int8, data, "image-fidelity", threads=1, batch_size=4, reference=source)
    assert 99.0 < metric.value < 100.0  # close, and not the float model itself
    assert metric.value == pytest.approx(metric.details["outputs"]["scores"]["fidelity"])
