"""The image workload: points are (batch, height); a static H x W is what runs."""

from __future__ import annotations

from leanify.measure import workload
from leanify.models.artifact import Artifact, TensorSpec


def _model(shape, dtype="float32", name="pixels") -> Artifact:
    return Artifact("onnx", None, "m", (TensorSpec(name, dtype, shape),))


def test_image_models_get_the_image_workload():
    static = _model(("batch", 3, 224, 224))
    nhwc = _model(("batch", 160, 128, 3))
    assert workload.for_artifact(static) is workload.IMAGE
    assert workload.image_dims(nhwc) == (None, 160, 128)
    assert workload.for_artifact(_model(("batch", 512))) is workload.ARRAYS
    assert workload.for_artifact(_model(("batch", 8, 224, 224))) is workload.ARRAYS  # 8 ch.
    assert workload.for_artifact(_model(("b", "s"), "int64", "input_ids")) is workload.TEXT
    assert workload.IMAGE.describe(1, 224) == "batch 1 × 224×224 images"


def test_a_static_size_is_what_runs_and_a_dynamic_one_follows_the_request():
    static = _model(("batch", 3, 224, 224))
    assert workload.default_batches(static) == workload.IMAGE_BATCHES
    assert workload.points(static, [1, 8], [128, 512]) == [(1, 224), (8, 224)]
    dynamic = _model(("batch", 3, "h", "w"))
    assert workload.points(dynamic, [1], [160, 320]) == [(1, 160), (1, 320)]
    fixed_batch = _model((1, 3, 96, 96))
    assert workload.default_batches(fixed_batch) == (1,)
