"""`leanify.runtimes.open_runner`: every runtime gives the PyTorch reference's numbers."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.inputs import InputBuilder
from leanify.models.load import load
from leanify.runtimes import open_runner

TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
ATOL = 1e-4

RUNTIMES = {
    "hf": "torch-eager",
    "onnx": "onnxruntime",
    "onnx-external": "onnxruntime",
    "torchscript": "torchscript",
    "pt2": "torch-export",
    "torch-module": "torch-eager",
}


def main_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The encoder's hidden states, whatever the runtime calls them."""
    for key in ("last_hidden_state", "output_0"):
        if key in outputs:
            return outputs[key]
    raise AssertionError(f"no main output among {sorted(outputs)}")


def reference(module, batch: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()


@pytest.fixture(scope="module")
def batches(tiny_hf, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """A full batch of real tokens, and a padded one with token types set."""
    full = InputBuilder(load(tiny_hf)).batch(2, 16)
    sample = tmp_path_factory.mktemp("texts") / "texts.txt"
    sample.write_text("a short one\n" + "a somewhat longer sentence " * 3 + "\nmid length\n")
    padded = InputBuilder(load(tiny_hf), sample).batch(3, 24)
    padded["token_type_ids"][:, 5:] = 1
    assert (padded["attention_mask"] == 0).any()
    return {"full": full, "padded": padded}


def _artifact(kind: str, request) -> Artifact:
    get = request.getfixturevalue
    if kind == "hf":
        return load(get("tiny_hf"))
    if kind == "onnx":
        return load(get("tiny_onnx"))
    if kind == "onnx-external":
        return load(get("tiny_onnx_external"))
    if kind == "torchscript":
        return load(get("tiny_torchscript"), trust_code=True)
    if kind == "pt2":
        return load(get("tiny_pt2"))
    if kind == "torch-module":
        return load(get("tiny_encoder"), example_inputs=get("example_batch")())
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", list(RUNTIMES))
def test_every_format_matches_the_pytorch_reference(kind, request, batches, tiny_encoder,
                                                    monkeypatch):
    if kind == "onnx-external":  # external data resolves against the model, not the CWD
        monkeypatch.chdir("/")
    artifact = _artifact(kind, request)
    runner = open_runner(artifact)
    assert runner.runtime == RUNTIMES[kind]
    for name, batch in batches.items():
        outputs = runner.run(batch)
        got = main_output(outputs)
        expected = reference(tiny_encoder, batch)
        assert got.shape == expected.shape == (*batch["input_ids"].shape, 32), name
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=f"{kind} {name}")
    again = main_output(runner.run(batches["full"]))
    np.testing.assert_array_equal(again, main_output(runner.run(batches["full"])))
    runner.close()


def test_hf_runner_outputs_and_input_names(tiny_hf, batches):
    runner = open_runner(load(tiny_hf))
    assert set(runner.input_names) == set(TEXT_INPUTS)
    outputs = runner.run(batches["full"])
    assert set(outputs) == {"last_hidden_state", "pooler_output"}
    assert outputs["pooler_output"].shape == (2, 32)


def test_hf_runner_accepts_optional_inputs_left_out(tiny_hf, tiny_encoder, batches):
    batch = batches["full"]
    runner = open_runner(load(tiny_hf))
    out = runner.run({"input_ids": batch["input_ids"]})  # mask and token types are optional
    np.testing.assert_allclose(out["last_hidden_state"], reference(tiny_encoder, batch),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "hf"])
def test_one_thread(kind, request, batches, tiny_encoder):
    import torch

    before = torch.get_num_threads()
    try:
        runner = open_runner(_artifact(kind, request), threads=1)
        if kind == "onnx":
            assert runner.session.get_session_options().intra_op_num_threads == 1
        else:
            assert torch.get_num_threads() == 1
        got = main_output(runner.run(batches["full"]))
        np.testing.assert_allclose(got, reference(tiny_encoder, batches["full"]), atol=ATOL,
                                   rtol=0)
    finally:
        torch.set_num_threads(before)


def test_cnn_onnx_and_module_match_the_model(tiny_cnn, tiny_cnn_onnx):
    import torch

    batch = InputBuilder(load(tiny_cnn_onnx)).batch(3, 128)
    with torch.no_grad():
        expected = tiny_cnn(torch.from_numpy(batch["pixels"])).numpy()
    out = open_runner(load(tiny_cnn_onnx)).run(batch)
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], expected, atol=ATOL, rtol=0)
    module = load(tiny_cnn, example_inputs=torch.zeros(1, 1, 8, 8))
    out = open_runner(module).run({"input": batch["pixels"]})
    np.testing.assert_allclose(out["output_0"], expected, atol=ATOL, rtol=0)


def test_pt2_runs_other_shapes_when_exported_dynamic(tiny_pt2, tiny_encoder, example_batch):
    runner = open_runner(load(tiny_pt2))
    for batch_size, seq in ((1, 8), (5, 40)):
        ids, mask, types = (t.numpy() for t in example_batch(batch_size, seq))
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        runner.check(batch)
        np.testing.assert_allclose(main_output(runner.run(batch)),
                                   reference(tiny_encoder, batch), atol=ATOL, rtol=0)


def test_missing_required_input_is_reported(tiny_onnx, batches):
    runner = open_runner(load(tiny_onnx))
    batch = dict(batches["full"])
    del batch["attention_mask"]
    with pytest.raises(LeanifyError, match=r"lacks required input.*attention_mask") as exc:
        runner.run(batch)
    assert str(tiny_onnx.resolve()) in str(exc.value)


def test_no_runner_for_an_unknown_format(tiny_onnx):
    artifact = Artifact("coreml", tiny_onnx, "m")  # type: ignore[arg-type]
    with pytest.raises(LeanifyError, match="no runtime runs models of format 'coreml'"):
        open_runner(artifact)


# --- the real MiniLM -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_batch() -> dict[str, np.ndarray]:
    return InputBuilder(load("minilm")).batch(2, 64)


@pytest.fixture(scope="module")
def minilm_outputs(minilm_batch) -> dict[str, np.ndarray]:
    return open_runner(load("minilm")).run(minilm_batch)


def test_minilm_hf_runner_matches_eager_reference(minilm_outputs, minilm_batch, minilm_eager):
    got = minilm_outputs["last_hidden_state"]
    assert got.shape == (2, 64, 384)
    assert minilm_outputs["pooler_output"].shape == (2, 384)
    np.testing.assert_allclose(got, reference(minilm_eager, minilm_batch), atol=ATOL, rtol=0)


def test_minilm_onnx_export_matches_eager(minilm_eager, minilm_outputs, minilm_batch,
                                          minilm_path, tmp_path_factory):
    import shutil

    import torch

    folder: Path = tmp_path_factory.mktemp("minilm_onnx")
    path = folder / "model.onnx"
    ids = torch.from_numpy(minilm_batch["input_ids"][:1, :16])
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(minilm_eager), example, str(path), dynamo=False,
            input_names=TEXT_INPUTS, output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in TEXT_INPUTS}, opset_version=17,
        )
    shutil.copy(minilm_path / "tokenizer.json", folder / "tokenizer.json")
    artifact = load(path)
    assert artifact.format == "onnx"
    assert spec_high(artifact, "input_ids") == 30522
    assert artifact.tokenizer_path == folder.resolve()
    batch = InputBuilder(artifact).batch(2, 64)  # the same tokenizer: the same tokens
    for name in TEXT_INPUTS:
        np.testing.assert_array_equal(batch[name], minilm_batch[name])
    got = open_runner(artifact).run(batch)["last_hidden_state"]
    np.testing.assert_allclose(got, minilm_outputs["last_hidden_state"], atol=ATOL, rtol=0)


def spec_high(artifact: Artifact, name: str):
    return next(s.high for s in artifact.inputs if s.name == name)
