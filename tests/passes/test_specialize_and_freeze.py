"""Passes for models that branch on a scalar input or stay in TorchScript, on silero-vad."""

from __future__ import annotations

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.models.inputs import InputBuilder
from leanify.models.load import load
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_runner
from leanify.tasks import get as get_task


def _ctx(tmp_path, source, data_dir, sample):
    """A context whose calibration batches are the fidelity task's transform over rows."""
    data = read_dataset(data_dir, "fidelity")
    calibration = get_task("fidelity").calibration(source, data.subset(range(min(6, len(data)))))
    return PassContext(work_dir=tmp_path / "work", threads=1, calibration=calibration,
                       sample=sample)


def test_specialize_folds_the_sample_rate_and_keeps_outputs(silero_onnx, silero_data, tmp_path):
    import onnx

    onnx_dir, sample, _, _ = silero_data
    source = load(silero_onnx)
    ctx = _ctx(tmp_path, source, onnx_dir, sample)
    out = apply(source, make_config("specialize-inputs"), ctx)
    assert out.meta["folded_inputs"] == {"sr": 16000}
    assert out.input_names == ["input", "state"]
    graph = onnx.load(str(out.path)).graph
    assert not any(n.op_type == "If" and n.input and n.input[0] == "sr" for n in graph.node)
    assert len(graph.node) > 20  # the 16 kHz branch, inlined
    batch = InputBuilder(source, sample).batch(4, 512)
    before = open_runner(source, 1).run(batch)
    after = open_runner(out, 1).run(batch)  # sr is accepted with its folded value
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6)
    other = {**batch, "sr": np.array(8000)}
    with pytest.raises(LeanifyError, match="folded into this model as 16000"):
        open_runner(out, 1).run(other)


def test_specialize_refuses_when_the_data_varies(silero_onnx, silero_data, tmp_path):
    onnx_dir, _, _, _ = silero_data
    varied = tmp_path / "varied"
    varied.mkdir()
    for i, f in enumerate(sorted(onnx_dir.glob("*.npz"))[:4]):
        arrays = dict(np.load(f))
        np.savez(varied / f.name, **{**arrays, "sr": np.array(8000 if i % 2 else 16000)})
    source = load(silero_onnx)
    with pytest.raises(LeanifyError, match="no scalar input has one value"):
        apply(source, make_config("specialize-inputs"), _ctx(tmp_path, source, varied, None))


@pytest.mark.parametrize("optimize", [False, True])
def test_freeze_torchscript_keeps_outputs_over_calls(optimize, silero_jit, silero_data,
                                                     tmp_path):
    _, _, jit_dir, sample = silero_data
    source = load(silero_jit, trust_code=True)
    ctx = PassContext(work_dir=tmp_path / "work", threads=1, sample=sample)
    out = apply(source, make_config("freeze-torchscript", optimize_for_inference=optimize), ctx)
    assert out.format == "torchscript" and out.meta["freeze_check"]["max_diff"]
    rows = read_dataset(jit_dir, "fidelity").arrays[:6]
    a, b = open_runner(source, 1), open_runner(out, 1)
    for row in rows:  # state carried from call to call, the same in both
        np.testing.assert_allclose(b.run(row)["output_0"], a.run(row)["output_0"], atol=1e-5)


def test_freeze_takes_torchscript_only(silero_onnx, tmp_path):
    ctx = PassContext(work_dir=tmp_path / "work", threads=1)
    with pytest.raises(LeanifyError, match="takes torchscript models"):
        apply(load(silero_onnx), make_config("freeze-torchscript"), ctx)
