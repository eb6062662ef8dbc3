"""Every bad input gives a LeanifyError naming the file at fault; the CLI turns it into exit
code 2 and one clear message, never a traceback.

Each case builds its broken input under the test's tmp_path (fixtures are copied, never
changed in place), then is checked through the Python API and through `leanify info` and
`leanify bench` in a subprocess.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.inputs import InputBuilder
from leanify.models.load import load
from leanify.runtimes import open_runner

MODEL_INPUTS = "input_ids, attention_mask, token_type_ids"
BENCH_ARGS = ["--rounds", "1", "--min-iters", "1", "--min-time", "0", "--warmup", "0",
              "-b", "1", "-s", "8", "--quiet"]

@dataclass
class Case:
    model: Path  # what the user points leanify at
    named: Path  # the file the message must name
    words: tuple[str, ...]  # also in the message
    api: Callable[[], object]  # the Python call that must raise
    extra: tuple[str, ...] = ()  # CLI options the case needs
    never: Path | None = None  # a file that must not come to exist (pickle payloads)


class Payload:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _loads(path: Path, **kwargs) -> Callable[[], object]:
    return lambda: load(path, **kwargs)


def _half(src: Path, dst: Path) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])
    return dst


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def only(*commands: str):
    """The CLI commands a case applies to (default: info and bench); none for API-only cases."""

    def mark(case):
        case.commands = commands
        return case

    return mark


# --- the cases -------------------------------------------------------------------------


def missing(tmp, get):
    path = tmp / "no_such_model.onnx"
    return Case(path, path, ("no such file",), _loads(path))


def empty_file(tmp, get):
    path = _file(tmp, "empty.onnx", b"")
    return Case(path, path, ("empty",), _loads(path))


def truncated_onnx(tmp, get):
    path = _half(get("tiny_onnx"), tmp / "truncated.onnx")
    return Case(path, path, ("ONNX",), _loads(path))


def garbage_onnx(tmp, get):
    path = _file(tmp, "garbage.onnx", random.Random(0).randbytes(4096))
    return Case(path, path, ("ONNX",), _loads(path))


def truncated_safetensors(tmp, get):
    folder = _copy_tree(get("tiny_hf"), tmp / "hf")
    weights = folder / "model.safetensors"
    _half(get("tiny_hf") / "model.safetensors", weights)
    return Case(folder, weights, ("truncated",), _loads(folder))


def corrupt_safetensors_header(tmp, get):
    folder = _copy_tree(get("tiny_hf"), tmp / "hf")
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[8:40] = b"\xff" * 32  # the JSON header's first bytes
    weights.write_bytes(bytes(raw))
    return Case(folder, weights, ("corrupt",), _loads(folder))


def huge_safetensors_header_length(tmp, get):
    folder = _copy_tree(get("tiny_hf"), tmp / "hf")
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[:8] = (1 << 40).to_bytes(8, "little")
    weights.write_bytes(bytes(raw))
    return Case(folder, weights, ("corrupt",), _loads(folder))


def bare_safetensors(tmp, get):
    path = tmp / "weights.safetensors"
    shutil.copy(get("tiny_hf") / "model.safetensors", path)
    return Case(path, path, ("architecture", "config.json"), _loads(path))


def unknown_suffix(tmp, get):
    path = _file(tmp, "model.xyz", random.Random(1).randbytes(2048))
    return Case(path, path, ("does not recognise", ".xyz"), _loads(path))


def not_a_model_folder(tmp, get):
    folder = tmp / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("# not a model\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return Case(folder, folder, ("not a Hugging Face model folder",), _loads(folder))


def _external_copy(tmp, get) -> Path:
    src = get("tiny_onnx_external")
    folder = tmp / "ext"
    folder.mkdir()
    shutil.copy(src, folder / "model.onnx")
    return folder / "model.onnx"


def onnx_data_escapes_folder(tmp, get):
    import onnx

    path = _external_copy(tmp, get)
    shutil.copy(get("tiny_onnx_external").parent / "model.onnx.data", tmp / "outside.bin")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(model, str(path))
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location \
        == onnx.TensorProto.EXTERNAL
    return Case(path, path, ("../outside.bin", "outside"), _loads(path))


def onnx_data_missing(tmp, get):
    path = _external_copy(tmp, get)
    return Case(path, path, ("model.onnx.data",), _loads(path))


def onnx_data_truncated(tmp, get):
    path = _external_copy(tmp, get)
    data = _half(get("tiny_onnx_external").parent / "model.onnx.data",
                 path.parent / "model.onnx.data")
    return Case(path, data, ("truncated",), _loads(path))


def config_not_json(tmp, get):
    folder = _copy_tree(get("tiny_hf"), tmp / "hf")
    (folder / "config.json").write_text('{"model_type": "bert",')
    return Case(folder, folder / "config.json", ("not valid JSON",), _loads(folder))


def config_not_an_object(tmp, get):
    folder = _copy_tree(get("tiny_hf"), tmp / "hf")
    (folder / "config.json").write_text("[1, 2, 3]")
    return Case(folder, folder / "config.json", ("JSON object",), _loads(folder))


def config_auto_map(tmp, get):
    folder = _copy_tree(get("tiny_hf"), tmp / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return Case(folder, folder / "config.json", ("auto_map",), _loads(folder))


def pickle_payload(tmp, get):
    never = tmp / "SOMEFILE"
    path = _file(tmp, "evil.pt", pickle.dumps(Payload(never)))
    return Case(path, path, ("--trust-pickle",), _loads(path), never=never)


def state_dict_trusted(tmp, get):
    import torch

    path = tmp / "weights.pt"
    torch.save(get("tiny_encoder").state_dict(), path)
    return Case(path, path, ("state dict", "architecture"), _loads(path, trust_pickle=True),
                extra=("--trust-pickle",))


def hf_pickle_weights(tmp, get):
    import torch

    folder = tmp / "hf_bin"
    folder.mkdir()
    for file in get("tiny_hf").iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, folder / file.name)
    torch.save(get("tiny_encoder").inner.state_dict(), folder / "pytorch_model.bin")
    return Case(folder, folder / "pytorch_model.bin", ("--trust-pickle",), _loads(folder))


def truncated_torchscript(tmp, get):
    path = _half(get("tiny_torchscript"), tmp / "model.pt")
    return Case(path, path, (), _loads(path, trust_code=True), ("--trust-code",))


def torchscript_is_code(tmp, get):
    """TorchScript runs its author's code on load: refused unless the user trusts it."""
    path = tmp / "model.pt"
    shutil.copy(get("tiny_torchscript"), path)
    return Case(path, path, ("is code", "--trust-code", "ONNX"), _loads(path))


def truncated_pt2(tmp, get):
    path = _half(get("tiny_pt2"), tmp / "model.pt2")
    return Case(path, path, ("torch.export",), _loads(path))


def tokenizer_folder_without_tokenizer(tmp, get):
    folder = tmp / "tok"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here")
    model = get("tiny_onnx")
    return Case(model, folder, ("tokenizer",), _loads(model, tokenizer=folder),
                extra=("--tokenizer", str(folder)))


@only("bench")  # info takes no sample
def npz_with_wrong_names(tmp, get):
    sample = tmp / "sample.npz"
    np.savez(sample, ids=np.zeros((2, 8), dtype=np.int64), mask=np.ones((2, 8), dtype=np.int64))
    model = get("tiny_onnx")
    return Case(model, sample, ("ids, mask", MODEL_INPUTS),
                lambda: InputBuilder(load(model), sample), extra=("--sample", str(sample)))


@only()  # a runner-level check: no CLI path sends unknown names
def unknown_input_name(tmp, get):
    model = get("tiny_onnx").resolve()

    def api():
        runner = open_runner(load(model))
        batch = InputBuilder(runner.artifact).batch(1, 8)
        batch["pixel_values"] = np.zeros((1, 3, 4, 4), dtype=np.float32)
        runner.run(batch)

    return Case(model, model, ("'pixel_values'", MODEL_INPUTS), api)


@only("bench")  # info does not run the model
def static_pt2_other_shape(tmp, get):
    model = get("static_pt2")

    def api():
        runner = open_runner(load(model))
        runner.check({"input_ids": np.ones((1, 8), dtype=np.int64),
                      "attention_mask": np.ones((1, 8), dtype=np.int64),
                      "token_type_ids": np.zeros((1, 8), dtype=np.int64)})

    return Case(model, model, ("'input_ids'", "[2, 16]", "[1, 8]"), api)


def markup_in_path(tmp, get):
    path = tmp / "exports[/v2]" / "model.onnx"
    return Case(path, path, ("no such file",), _loads(path))


CASES = [missing, empty_file, truncated_onnx, garbage_onnx, truncated_safetensors,
         corrupt_safetensors_header, huge_safetensors_header_length, bare_safetensors,
         unknown_suffix, not_a_model_folder, onnx_data_escapes_folder, onnx_data_missing,
         onnx_data_truncated, config_not_json, config_not_an_object, config_auto_map,
         pickle_payload, state_dict_trusted, hf_pickle_weights, truncated_torchscript,
         torchscript_is_code,
         truncated_pt2, tokenizer_folder_without_tokenizer, npz_with_wrong_names,
         unknown_input_name, static_pt2_other_shape, markup_in_path]


@pytest.fixture(scope="module")
def static_pt2(tmp_path_factory, tiny_encoder) -> Path:
    """The tiny encoder exported without dynamic shapes: it runs batch 2 x seq 16 only."""
    import torch

    path = tmp_path_factory.mktemp("static_pt2") / "static.pt2"
    ids = torch.arange(1000, 1032).reshape(2, 16)
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    program = torch.export.export(copy.deepcopy(tiny_encoder), example)
    torch.export.save(program, str(path))
    return path


@pytest.fixture
def build(request, tmp_path):
    """Build a case in this test's tmp_path (resolved, so messages name it verbatim)."""
    tmp = tmp_path.resolve()

    def make(case) -> Case:
        return case(tmp, request.getfixturevalue)

    return make


def _params(commands: bool = False) -> list:
    """One param per case (per case and CLI command it applies to)."""
    params = []
    for case in CASES:
        if not commands:
            params.append(pytest.param(case, id=case.__name__))
            continue
        for command in getattr(case, "commands", ("info", "bench")):
            params.append(pytest.param(case, command, id=f"{case.__name__}-{command}"))
    return params


# --- the Python API --------------------------------------------------------------------


@pytest.mark.parametrize("case", _params())
def test_api_raises_a_clear_error(build, case):
    c = build(case)
    with pytest.raises(LeanifyError) as exc:
        c.api()
    message = str(exc.value)
    assert exc.value.path == str(c.named), message
    assert str(c.named) in message
    for word in c.words:
        assert word in message
    assert exc.value.fix, "the error should say what to do"
    assert "Traceback" not in message
    if c.never is not None:
        assert not c.never.exists()


def test_static_pt2_batch_at_another_shape_is_refused(static_pt2):
    """What bench does: build the batch for (1, 8), check it, then time it."""
    artifact = load(static_pt2)
    runner = open_runner(artifact)
    with pytest.raises(LeanifyError, match=r"\[2, 16\]"):
        batch = InputBuilder(artifact).batch(1, 8)
        runner.check(batch)
        assert batch["input_ids"].shape == (1, 8), "built a batch of another shape"


def test_static_pt2_runs_at_its_exported_shape(static_pt2, tiny_encoder, example_batch):
    import torch

    runner = open_runner(load(static_pt2))
    ids, mask, types = example_batch(2, 16)
    out = runner.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                      "token_type_ids": types.numpy()})
    with torch.no_grad():
        expected = tiny_encoder(ids, mask, types).numpy()
    np.testing.assert_allclose(out["output_0"], expected, atol=1e-4, rtol=0)


# --- the command line ------------------------------------------------------------------


@pytest.mark.parametrize(("case", "command"), _params(commands=True))
def test_cli_exits_2_with_the_file_named(build, case, command, tmp_path):
    c = build(case)
    args = [command, str(c.model), *c.extra]
    if command == "bench":
        args += BENCH_ARGS
    env = {**os.environ, "COLUMNS": "200", "LEANIFY_DEBUG": "0"}
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    stderr = proc.stderr
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert str(c.named) in stderr, stderr[-2000:]
    for word in c.words:
        assert word in stderr, stderr[-2000:]
    assert "error" in stderr
    if c.never is not None:
        assert not c.never.exists()
