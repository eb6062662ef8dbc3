"""Post-training channel pruning of ONNX CNNs: which pairs, which channels, the refit, and the
pass around it (calibration from the image task, the drift check, the sidecar)."""

from __future__ import annotations

import numpy as np
import pytest
from image_data import colour_images, feature_cnn

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.models.load import load
from leanify.passes.registry import PassContext, make_config, run_pipeline
from leanify.prune.onnx_channels import conv_macs, find_pairs, prune_onnx_channels
from leanify.tasks import EvalSettings, get


def _pair_model(duplicated: bool, group: int = 1, seed: int = 0, norm: bool = False):
    """x [N, 3, 12, 12] -> Conv A (16 out, 3x3, pad 1) -> [BatchNormalization] -> Relu ->
    Conv B (8 out, 3x3, stride 2, pad 1, no bias) -> y. With `duplicated`, A's channels 8-15
    copy 0-7 (half the inner channels carry nothing new: an exact refit exists)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w_a = rng.normal(size=(16, 3, 3, 3)).astype(np.float32)
    b_a = rng.normal(size=16).astype(np.float32)
    if duplicated:
        w_a[8:], b_a[8:] = w_a[:8], b_a[:8]
    w_b = rng.normal(size=(8, 16 // group, 3, 3)).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 16).astype(np.float32) for _ in range(4)]
    if duplicated:
        for v in bn:
            v[8:] = v[:8]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wa", "ba"], ["a0" if norm else "a"], name="A",
                          pads=[1, 1, 1, 1]),
         *([helper.make_node("BatchNormalization", ["a0", "s", "t", "m", "v"], ["a"],
                             name="bn")] if norm else []),
         helper.make_node("Relu", ["a"], ["r"], name="act"),
         helper.make_node("Conv", ["r", "wb"], ["y"], name="B", pads=[1, 1, 1, 1],
                          strides=[2, 2], group=group)],
        "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w_a, "wa"), numpy_helper.from_array(b_a, "ba"),
         numpy_helper.from_array(w_b, "wb"),
         *([numpy_helper.from_array(v, n) for v, n in zip(bn, "stmv", strict=True)]
           if norm else [])])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _batches(n: int = 4, size: int = 16, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(size, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("norm", [False, True])
def test_duplicated_channels_are_pruned_and_refitted_exactly(norm):
    model = _pair_model(duplicated=True, norm=norm)
    pruned, summary = prune_onnx_channels(model, _batches(), keep=0.5, round_to=8, ridge=1e-7)
    weights = {t.name: t.dims for t in pruned.graph.initializer}
    assert weights["wa"] == [8, 3, 3, 3] and weights["ba"] == [8]
    assert weights["wb"] == [8, 8, 3, 3]
    if norm:  # the batch norm between keeps the same channels
        assert all(weights[n] == [8] for n in "stmv")
    assert "wb_refit_bias" in weights  # B had no bias; the refit adds one
    [pair] = summary.pairs
    assert (pair.channels_before, pair.channels_after) == (16, 8)
    assert pair.rel_error < 1e-3
    x = _batches(1, 8, seed=7)[0]["x"]  # images the fit never saw
    np.testing.assert_allclose(_run(pruned, x), _run(model, x), rtol=1e-3, atol=1e-3)
    assert summary.macs_after < 0.55 * summary.macs_before


def test_refit_beats_plain_channel_removal():
    """Without redundancy the refit cannot be exact, but it must beat dropping the channels
    and keeping B's old weights (what pruning without reconstruction does)."""
    from onnx import numpy_helper

    model = _pair_model(duplicated=False)
    pruned, summary = prune_onnx_channels(model, _batches(), keep=0.5, round_to=8)
    x = _batches(1, 32, seed=9)[0]["x"]
    ref = _run(model, x)
    w_b = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["wb"]
    w_a = {t.name: t for t in pruned.graph.initializer}
    kept_a = numpy_helper.to_array(w_a["wa"])
    all_a = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["wa"]
    kept = [int(np.flatnonzero((all_a == w).all(axis=(1, 2, 3)))[0]) for w in kept_a]
    naive = _pair_model(duplicated=False)
    for t in naive.graph.initializer:
        if t.name == "wb":
            t.CopyFrom(numpy_helper.from_array(w_b * np.isin(np.arange(16), kept)[None, :,
                                                                                 None, None],
                                               "wb"))
    err = np.linalg.norm(_run(pruned, x) - ref) / np.linalg.norm(ref)
    naive_err = np.linalg.norm(_run(naive, x) - ref) / np.linalg.norm(ref)
    assert err < 0.7 * naive_err
    assert summary.pairs[0].rel_error == pytest.approx(err, abs=0.1)


def test_pairs_it_cannot_edit_are_skipped():
    pairs, skipped = find_pairs(_pair_model(duplicated=False, group=2))
    assert pairs == [] and "grouped convolution" in skipped[0]
    with pytest.raises(LeanifyError, match="between 0 and 1"):
        prune_onnx_channels(_pair_model(False), _batches(), keep=1.0)


def test_macs_per_convolution():
    macs = conv_macs(_pair_model(duplicated=False))
    assert macs == {"A": 16 * 3 * 9 * 12 * 12, "B": 8 * 16 * 9 * 6 * 6}


def test_pass_on_a_cnn_calibrated_on_images(tmp_path):
    import onnx

    task = get("image-fidelity")
    source = task.prepare(load(feature_cnn(tmp_path / "cnn.onnx", size=32)))
    assert find_pairs(onnx.load(str(source.path)))[0], "the test CNN has a conv pair"
    calib = read_dataset(colour_images(tmp_path / "calib", 4, seed=3, labelled=False),
                         "image-fidelity")
    ctx = PassContext(work_dir=tmp_path / "work", threads=1,
                      calibration=task.calibration(source, calib, EvalSettings(batch_size=4)))
    pruned = run_pipeline(source, [make_config("prune-onnx-channels", keep=0.5)], ctx)
    assert pruned.meta["preprocess"] == source.meta["preprocess"]
    record = pruned.meta["pruning"]
    assert record["pairs"] and record["macs_after"] < record["macs_before"]
    assert record["calibration_images"] == 12
    assert pruned.meta["prune_check"]["mean_cosine"] >= 0.9
    assert source.path.read_bytes() != pruned.path.read_bytes()
    with pytest.raises(LeanifyError, match="calibration"):
        run_pipeline(source, [make_config("prune-onnx-channels", keep=0.25)],
                     PassContext(work_dir=tmp_path / "w2", threads=1))


def test_the_doctors_view_of_where_the_macs_are():
    from leanify.prune.onnx_channels import convolution_summary

    summary = convolution_summary(_pair_model(duplicated=False))
    assert summary["pairs"] == 1 and summary["pair_share"] == 1.0
    assert summary["macs_per_image"] == 16 * 3 * 9 * 144 + 8 * 16 * 9 * 36
    assert [r["node"] for r in summary["largest"]] == ["A", "B"]  # A: 62k, B: 41k MACs
    assert convolution_summary(_pair_model(False, group=2))["pairs"] == 0
