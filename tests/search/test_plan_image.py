"""Image models get image recipes only: static int8 from calibration images, no text ones."""

from __future__ import annotations

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.load import load
from leanify.search.plan import plan
from leanify.tasks import get


def _cnn(path):
    """Conv -> Relu -> GlobalAveragePool -> Flatten: (batch, 3, 32, 32) -> (batch, 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["scores"])]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                     ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_image_models_plan_static_int8_and_no_text_recipes(tmp_path):
    source = load(_cnn(tmp_path / "cnn.onnx"))
    image = get("image-classification").prepare(source)
    names = [c.name for c in plan(image, only=["all"])]
    assert "onnx-int8-qdq" in names and "openvino-int8" in names
    assert not {"onnx-int8-dynamic", "onnx-fused", "onnx-fp16",
                "openvino-int8-static-shapes"} & set(names)
    qdq = plan(image, only=["onnx-int8-qdq"])[0]
    config = qdq.pipeline[0]
    assert qdq.needs_calibration and config.per_channel and config.activation_type == "uint8"
    assert config.quant_format == "QDQ" and "Conv" in config.op_types
    assert config.float_outputs == ()  # convolution outputs quantized: QLinearConv chains
    nncf = plan(image, only=["openvino-int8"])[0].pipeline[1]
    assert nncf.model_type == "none" and nncf.fast_bias_correction  # a CNN
    # without calibration images nothing static is left to plan
    with pytest.raises(LeanifyError, match="unknown candidate"):
        plan(image, only=["onnx-int8-qdq"], calibration=False)
    # the same model outside an image task plans the array recipes as before
    assert "onnx-int8-dynamic" in [c.name for c in plan(source, only=["all"])]


def test_a_keras_image_model_plans_onnx_and_tflite_at_batch_one(tmp_path):
    from importlib.util import find_spec
    from pathlib import Path

    (folder,) = find_spec("cifar_10_model").submodule_search_locations  # its code needs TF
    source = load(Path(folder) / "trained_models" / "cnn_model.h5")
    image = get("image-fidelity").prepare(source, "size=32,resize=exact,scale=1")
    at_one = {c.name: c for c in plan(image, batch_sizes=(1,))}
    assert {"onnx-fp32", "onnx-int8-qdq", "tflite-fp32", "tflite-int8-dynamic",
            "tflite-int8"} <= set(at_one)
    assert at_one["onnx-fp32"].passes() == ["export-onnx"]  # the export itself
    assert at_one["tflite-int8"].needs_calibration  # full-integer: calibrated activations
    assert not at_one["tflite-int8-dynamic"].needs_calibration
    # exported at batch 1: not planned when a larger batch is measured, unless asked for
    batched = [c.name for c in plan(image, batch_sizes=(1, 8))]
    assert "onnx-fp32" in batched and not any(n.startswith("tflite") for n in batched)
    assert [c.name for c in plan(image, batch_sizes=(1, 8), only=["tflite-fp32"])] == [
        "tflite-fp32"]


def test_cnns_with_convolution_pairs_plan_pruned_int8(tmp_path):
    from image_data import feature_cnn

    pairs = get("image-fidelity").prepare(load(feature_cnn(tmp_path / "pairs.onnx", size=32)))
    by_name = {c.name: c for c in plan(pairs)}
    assert {"pruned50-openvino-int8", "pruned25-openvino-int8", "pruned50-onnx-int8-qdq",
            "pruned25-onnx-int8-qdq"} <= set(by_name)
    pruned = by_name["pruned25-openvino-int8"]
    assert [c.name for c in pruned.pipeline] == ["prune-onnx-channels", "export-openvino",
                                               "nncf-quantize"]
    assert pruned.pipeline[0].keep == 0.25 and pruned.needs_calibration
    # one convolution, no pair: nothing to prune, no pruned candidates
    single = get("image-classification").prepare(load(_cnn(tmp_path / "cnn.onnx")))
    assert not any(c.name.startswith("pruned") for c in plan(single, only=["all"]))
