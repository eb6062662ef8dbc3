"""silero-vad, a real audio model with a scalar input, through every task-level path: loading
its signature, batching its sample (state has the batch in dim 1), fidelity on .npz rows."""

from __future__ import annotations

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.measure.evaluate import evaluate, reference_outputs
from leanify.models.inputs import InputBuilder
from leanify.models.load import load


def test_signatures_declare_the_scalar_sample_rate(silero_onnx, silero_jit):
    onnx_specs = {s.name: s for s in load(silero_onnx).inputs}
    assert onnx_specs["sr"].shape == () and onnx_specs["sr"].dtype == "int64"
    assert onnx_specs["state"].shape[0] == 2 and onnx_specs["state"].shape[2] == 128
    assert load(silero_onnx).meta["params"] > 400_000  # weights sit in If branches
    jit_specs = {s.name: s for s in load(silero_jit, trust_code=True).inputs}
    assert jit_specs["sr"].shape == () and jit_specs["sr"].dtype == "int64"  # `int sr`


def test_a_sample_grows_along_each_inputs_batch_axis(silero_onnx, silero_data):
    _, sample, _, _ = silero_data
    builder = InputBuilder(load(silero_onnx), sample)
    assert builder.rows == 1 and builder.axes == {"input": 0, "state": 1}
    assert builder.sample_length() == 512
    batch = builder.batch(8, 999)  # the sample fixes the length
    assert batch["input"].shape == (8, 512) and batch["state"].shape == (2, 8, 128)
    assert batch["sr"].shape == () and int(batch["sr"]) == 16000


def test_a_scalar_is_refused_where_the_model_wants_an_array(silero_onnx, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.array(1.0, np.float32), state=np.zeros((2, 1, 128), np.float32),
             sr=np.array(16000))
    with pytest.raises(LeanifyError, match="holds a scalar for input 'input'"):
        InputBuilder(load(silero_onnx), bad)


@pytest.mark.parametrize("fmt", ["onnx", "jit"])
def test_fidelity_on_npz_rows_is_exact_against_itself(fmt, silero_onnx, silero_jit,
                                                      silero_data):
    onnx_dir, _, jit_dir, _ = silero_data
    model = load(silero_onnx) if fmt == "onnx" else load(silero_jit, trust_code=True)
    data = read_dataset(onnx_dir if fmt == "onnx" else jit_dir, "fidelity")
    reference = reference_outputs(model, data, threads=1)
    assert len([k for k in reference if k.startswith("0/")]) == (2 if fmt == "onnx" else 1)
    metric = evaluate(model, data, "fidelity", threads=1, reference=reference)
    assert metric.name == "output_fidelity" and metric.value == pytest.approx(100.0)
    probs = np.concatenate([v.ravel() for k, v in reference.items()
                            if k.endswith(("/output", "/output_0"))])
    assert probs.min() >= 0 and probs.max() <= 1 and np.ptp(probs) > 0  # real VAD outputs
    # a perturbed reference scores lower: the metric can fail
    worse = {k: v * 1.1 for k, v in reference.items()}
    assert evaluate(model, data, "fidelity", threads=1, reference=worse).value < 95


def test_rows_with_wrong_names_are_refused_before_running(silero_onnx, silero_data):
    _, _, jit_dir, _ = silero_data  # the TorchScript model's names (x, sr)
    with pytest.raises(LeanifyError, match=r"names input.* x that the model does not have"):
        evaluate(load(silero_onnx), read_dataset(jit_dir, "fidelity"), "fidelity",
                 reference={"0/output": np.zeros((1, 1))})
