"""`leanify.models.load.load`: every format, what it reports, sniffing, pickle safety, and that
the user's files are left exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.inputs import InputBuilder
from leanify.models.load import load
from leanify.runtimes import open_runner

TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

VOCAB = 30522  # MiniLM's (and the tiny BERT's) vocabulary
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")



# --- helpers -----------------------------------------------------------------------------


def tensor_count(state) -> int:
    return sum(int(t.numel()) for t in state.values())


def safetensors_numel(file: Path) -> int:
    """Parameter count read straight from a safetensors file, independently of leanify."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(file), framework="pt") as fh:
        for key in fh.keys():
            total += int(np.prod(fh.get_slice(key).get_shape()))
    return total


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under `folder`: content hash, size and modification time."""
    state = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            st = file.stat()
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            state[str(file.relative_to(folder))] = (digest, st.st_size, st.st_mtime_ns)
    return state


def copy_hf(src: Path, dst: Path, *, weights: bool = True) -> Path:
    dst.mkdir(parents=True)
    for file in src.iterdir():
        if weights or file.suffix != ".safetensors":
            shutil.copy(file, dst / file.name)
    return dst


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def spec(artifact: Artifact, name: str):
    return next(s for s in artifact.inputs if s.name == name)


class Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def minilm() -> Artifact:
    return load("minilm")


@pytest.fixture(scope="module")
def torch_params(tiny_encoder) -> int:
    return sum(int(p.numel()) for p in tiny_encoder.parameters())


# --- Hugging Face folders --------------------------------------------------------------


def test_minilm_alias(minilm, minilm_path):
    root = minilm_path.resolve()
    assert minilm.format == "hf"
    assert minilm.name == "minilm"
    assert minilm.path == root
    assert minilm.meta["task"] == "sentence-embedding"
    assert minilm.meta["pooling"] == "mean"
    assert minilm.meta["normalize"] is True
    assert minilm.meta["weights_format"] == "safetensors"
    assert minilm.meta["architecture"] == "BertModel"
    assert minilm.meta["max_length"] == 512
    assert 22_600_000 < minilm.meta["params"] < 22_800_000
    assert minilm.meta["params"] == safetensors_numel(root / "model.safetensors")
    assert minilm.tokenizer_path == root
    assert (minilm.tokenizer_path / "tokenizer.json").is_file()
    assert minilm.input_names == TEXT_INPUTS
    ids = spec(minilm, "input_ids")
    assert (ids.dtype, ids.low, ids.high, ids.optional) == ("int64", 0, VOCAB, False)
    assert spec(minilm, "attention_mask").optional
    assert spec(minilm, "token_type_ids").high == 2
    # The folder's files, Sentence-Transformers' subfolders included.
    files = minilm.files()
    assert root / "model.safetensors" in files
    assert root / "1_Pooling" / "config.json" in files
    assert minilm.size_bytes() == sum(f.stat().st_size for f in files)
    json.dumps(minilm.describe())  # JSON-ready


def test_minilm_alias_and_path_agree(minilm, minilm_path):
    by_path = load(minilm_path)
    assert by_path.format == minilm.format
    assert by_path.inputs == minilm.inputs
    assert by_path.meta == minilm.meta
    assert by_path.name == minilm_path.name


def test_tiny_hf_folder(tiny_hf, torch_params):
    artifact = load(tiny_hf)
    assert artifact.format == "hf"
    assert artifact.path == tiny_hf.resolve()
    assert artifact.name == tiny_hf.name
    assert artifact.meta["params"] == safetensors_numel(tiny_hf / "model.safetensors")
    assert artifact.meta["params"] == torch_params
    assert artifact.meta["task"] == "feature-extraction"  # no modules.json: not ST
    assert "pooling" not in artifact.meta
    assert artifact.meta["max_length"] == 128
    assert artifact.meta["model_type"] == "bert"
    assert artifact.tokenizer_path == tiny_hf.resolve()
    assert artifact.input_names == TEXT_INPUTS
    assert spec(artifact, "input_ids").high == VOCAB
    assert spec(artifact, "token_type_ids").high == 2
    assert artifact.size_bytes() == sum(f.stat().st_size for f in tiny_hf.iterdir())


@pytest.mark.parametrize(("architecture", "task"), [
    ("BertForSequenceClassification", "text-classification"),
    ("BertForTokenClassification", "token-classification"),
    ("BertForMaskedLM", "fill-mask"),
    ("BertForQuestionAnswering", "question-answering"),
    ("BertModel", "feature-extraction"),
])
def test_hf_task_from_architecture(tiny_hf, tmp_path, architecture, task):
    folder = copy_hf(tiny_hf, tmp_path / "m")
    edit_config(folder, architectures=[architecture])
    artifact = load(folder)
    assert artifact.meta["task"] == task
    assert artifact.meta["architecture"] == architecture


def test_hf_folder_without_token_types_or_tokenizer(tiny_hf, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_hf / name, folder / name)
    edit_config(folder, type_vocab_size=0)
    artifact = load(folder)
    assert artifact.input_names == ["input_ids", "attention_mask"]
    assert artifact.tokenizer_path is None


def test_sentence_transformers_pooling_modes(tiny_hf, tmp_path):
    folder = copy_hf(tiny_hf, tmp_path / "st")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    artifact = load(folder)
    assert artifact.meta["task"] == "sentence-embedding"
    assert artifact.meta["pooling"] == "cls"
    assert artifact.meta["normalize"] is False


# --- ONNX ------------------------------------------------------------------------------


def test_onnx_file(tiny_onnx, torch_params):
    import onnx

    artifact = load(tiny_onnx)
    assert artifact.format == "onnx"
    assert artifact.path == tiny_onnx.resolve()
    assert artifact.name == "model.onnx"
    assert artifact.input_names == TEXT_INPUTS
    for s in artifact.inputs:
        assert s.dtype == "int64"
        assert s.shape == ("batch", "sequence")
    assert (spec(artifact, "input_ids").low, spec(artifact, "input_ids").high) == (0, VOCAB)
    assert spec(artifact, "attention_mask").high == 2
    assert spec(artifact, "token_type_ids").high == 2  # the token-type table has 2 rows
    model = onnx.load(str(tiny_onnx))
    expected = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert artifact.meta["params"] == expected
    assert 0.9 * torch_params < artifact.meta["params"] <= torch_params  # pooler may be pruned
    assert artifact.meta["outputs"] == ["last_hidden_state"]
    assert artifact.meta["opset"] == 17
    assert artifact.meta["external_data"] == []
    assert artifact.tokenizer_path is None  # nothing beside it
    assert artifact.files() == [tiny_onnx.resolve()]
    assert artifact.size_bytes() == tiny_onnx.stat().st_size


def test_cnn_onnx_signature(tiny_cnn_onnx):
    artifact = load(tiny_cnn_onnx)
    (pixels,) = artifact.inputs
    assert (pixels.name, pixels.dtype, pixels.shape) == ("pixels", "float32", ("batch", 1, 8, 8))
    assert pixels.low is None and pixels.high is None
    assert artifact.meta["outputs"] == ["logits"]
    assert artifact.meta["params"] == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 16 * 10 + 10


def _check_external(artifact: Artifact, onnx_path: Path, reference: Artifact) -> None:
    data = onnx_path.parent / "model.onnx.data"
    assert artifact.format == "onnx"
    assert artifact.meta["external_data"] == [str(data.resolve())]
    assert artifact.files() == [onnx_path.resolve(), data.resolve()]
    assert artifact.size_bytes() == onnx_path.stat().st_size + data.stat().st_size
    assert artifact.size_bytes() > reference.size_bytes() * 0.9  # the weights are counted
    assert artifact.inputs == reference.inputs
    assert artifact.meta["params"] == reference.meta["params"]


def test_onnx_external_data(tiny_onnx_external, tiny_onnx, monkeypatch):
    # Run from the model's folder: see test_onnx_external_data_from_any_directory for the rest.
    monkeypatch.chdir(tiny_onnx_external.parent)
    artifact = load(tiny_onnx_external)
    _check_external(artifact, tiny_onnx_external, load(tiny_onnx))


def test_onnx_external_data_from_any_directory(tiny_onnx_external, tiny_onnx, tmp_path,
                                               monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the model's folder
    artifact = load(tiny_onnx_external)
    _check_external(artifact, tiny_onnx_external, load(tiny_onnx))


def test_onnx_external_sha256_is_stable_and_covers_the_data(tiny_onnx_external, tmp_path,
                                                            monkeypatch):
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in tiny_onnx_external.parent.iterdir():
        shutil.copy(file, copy / file.name)
    monkeypatch.chdir(tiny_onnx_external.parent)
    first = load(tiny_onnx_external).sha256()
    assert first == load(tiny_onnx_external).sha256()
    assert len(first) == 64
    monkeypatch.chdir(copy)
    assert load(copy / "model.onnx").sha256() == first  # content, not location
    data = copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the weights
    data.write_bytes(bytes(raw))
    assert load(copy / "model.onnx").sha256() != first


def test_onnx_sha256_differs_between_models(tiny_onnx, tiny_cnn_onnx):
    assert load(tiny_onnx).sha256() != load(tiny_cnn_onnx).sha256()
    assert load(tiny_onnx).sha256() == load(str(tiny_onnx)).sha256()


@pytest.mark.parametrize("with_config", [False, True], ids=["bare", "with-config"])
def test_optimum_style_folder_loads_as_onnx(tiny_onnx, tiny_hf, tmp_path, with_config):
    folder = tmp_path / "optimum"
    folder.mkdir()
    shutil.copy(tiny_onnx, folder / "model.onnx")
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_hf / name, folder / name)
    if with_config:  # Optimum writes config.json too, but no PyTorch weights
        shutil.copy(tiny_hf / "config.json", folder / "config.json")
    artifact = load(folder)
    assert artifact.format == "onnx"
    assert artifact.path == (folder / "model.onnx").resolve()
    assert artifact.tokenizer_path == folder.resolve()
    assert artifact.input_names == TEXT_INPUTS
    assert InputBuilder(artifact).source == "tokenizer"


def test_folder_with_two_onnx_files_is_ambiguous(tiny_onnx, tiny_cnn_onnx, tmp_path):
    shutil.copy(tiny_onnx, tmp_path / "a.onnx")
    shutil.copy(tiny_cnn_onnx, tmp_path / "b.onnx")
    with pytest.raises(LeanifyError, match=r"exactly one \.onnx") as exc:
        load(tmp_path)
    assert str(tmp_path.resolve()) in str(exc.value)


# --- TorchScript and .pt2 --------------------------------------------------------------


def test_torchscript(tiny_torchscript, torch_params):
    with pytest.raises(LeanifyError, match="--trust-code"):
        load(tiny_torchscript)  # TorchScript is code: refused unless trusted
    artifact = load(tiny_torchscript, trust_code=True)  # inspected in the limited child
    assert artifact.format == "torchscript"
    assert artifact.path == tiny_torchscript.resolve()
    assert artifact.input_names == TEXT_INPUTS
    assert all(s.dtype == "int64" and s.shape == ("batch", "sequence") for s in artifact.inputs)
    assert spec(artifact, "input_ids").high == VOCAB
    assert spec(artifact, "token_type_ids").high == 2
    assert artifact.meta["params"] == torch_params


@pytest.mark.parametrize("name", ["model", "model.ts", "model.jit", "model.pth", "weights.bin"])
def test_torchscript_is_sniffed_not_guessed_from_the_suffix(tiny_torchscript, tmp_path, name):
    target = tmp_path / name
    shutil.copy(tiny_torchscript, target)
    artifact = load(target, trust_code=True)
    assert artifact.format == "torchscript"
    assert artifact.input_names == TEXT_INPUTS


def test_pt2_renamed_to_pt_is_still_pt2(tiny_pt2, tmp_path):
    target = tmp_path / "exported.pt"
    shutil.copy(tiny_pt2, target)
    assert load(target).format == "pt2"


def test_onnx_renamed_to_pt_is_not_taken_for_torch(tiny_onnx, tmp_path):
    target = tmp_path / "model.pt"
    shutil.copy(tiny_onnx, target)
    with pytest.raises(LeanifyError, match="does not recognise") as exc:
        load(target)
    assert str(target.resolve()) in str(exc.value)


def test_pt2(tiny_pt2, torch_params):
    import pickle as pickle_module

    import torch

    real_torch_load, real_loads = torch.load, pickle_module.loads
    artifact = load(tiny_pt2)
    assert artifact.format == "pt2"
    assert artifact.path == tiny_pt2.resolve()
    assert artifact.input_names == TEXT_INPUTS
    for s in artifact.inputs:
        assert s.dtype == "int64"
        assert len(s.shape) == 2
        assert all(isinstance(d, str) for d in s.shape)  # exported with dynamic dims
    assert spec(artifact, "input_ids").high == VOCAB
    assert artifact.meta["params"] == torch_params
    # The weights-only guards are lifted again once loading is done.
    assert torch.load is real_torch_load
    assert pickle_module.loads is real_loads


# --- in-memory modules -----------------------------------------------------------------


def test_module_with_tuple_example(tiny_encoder, example_batch, torch_params):
    artifact = load(tiny_encoder, example_inputs=example_batch())
    assert artifact.format == "torch-module"
    assert artifact.path is None
    assert artifact.name == "Encoder"
    assert artifact.input_names == TEXT_INPUTS  # from forward's signature
    for s in artifact.inputs:
        assert (s.dtype, s.shape) == ("int64", ("batch", "sequence"))
    assert spec(artifact, "input_ids").high == VOCAB
    assert spec(artifact, "token_type_ids").high == 2
    assert artifact.meta["params"] == torch_params
    assert artifact.meta["class"].endswith("Encoder")
    module, example = artifact.module
    assert module is tiny_encoder
    assert list(example) == TEXT_INPUTS
    assert artifact.files() == [] and artifact.size_bytes() == 0 and artifact.sha256() is None
    json.dumps(artifact.describe())


def test_module_with_dict_example(tiny_encoder, example_batch):
    ids, mask, types = example_batch(3, 5)
    artifact = load(tiny_encoder, name="enc",
                    example_inputs={"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": types})
    assert artifact.name == "enc"
    assert artifact.input_names == TEXT_INPUTS
    assert spec(artifact, "attention_mask").high == 2
    assert artifact.module[1]["input_ids"] is ids


def test_module_with_a_single_image_tensor(tiny_cnn):
    import torch

    artifact = load(tiny_cnn, example_inputs=torch.zeros(2, 1, 8, 8))
    (image,) = artifact.inputs
    assert (image.name, image.dtype, image.shape) == ("input", "float32", ("batch", 1, 8, 8))
    assert artifact.meta["params"] == sum(p.numel() for p in tiny_cnn.parameters())


def test_module_integer_inputs_get_their_range_from_the_example():
    import torch

    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(10, 4)

        def forward(self, x, idx):
            return x + self.table(idx)

    artifact = load(Lookup(), example_inputs=(torch.zeros(2, 4), torch.tensor([3, 7])))
    x, idx = artifact.inputs
    assert (x.name, x.dtype, x.low) == ("x", "float32", None)
    assert (idx.name, idx.dtype, idx.shape, idx.low, idx.high) == ("idx", "int64", ("batch",),
                                                                   3, 8)


def test_module_needs_example_inputs(tiny_encoder):
    with pytest.raises(LeanifyError, match="example inputs"):
        load(tiny_encoder)


def test_module_example_inputs_must_be_tensors(tiny_encoder):
    with pytest.raises(LeanifyError, match="'input_ids' is a list"):
        load(tiny_encoder, example_inputs={"input_ids": [[1, 2]]})


def test_load_refuses_objects_that_are_not_models():
    with pytest.raises(LeanifyError, match="got a dict"):
        load({"weights": 1})


# --- arguments -------------------------------------------------------------------------


def test_tokenizer_override(tiny_onnx, tiny_hf):
    plain = load(tiny_onnx)
    assert plain.tokenizer_path is None
    artifact = load(tiny_onnx, tokenizer=tiny_hf)
    assert artifact.tokenizer_path == tiny_hf.resolve()
    assert artifact.inputs == plain.inputs
    assert InputBuilder(artifact).source == "tokenizer"
    assert InputBuilder(plain).source == "signature"


def test_tokenizer_override_replaces_the_models_own(tiny_hf, minilm_path):
    artifact = load(tiny_hf, tokenizer=str(minilm_path))
    assert artifact.tokenizer_path == minilm_path.resolve()


def test_name_override_and_reload(tiny_onnx):
    artifact = load(tiny_onnx, name="baseline")
    assert artifact.name == "baseline"
    assert load(artifact) is artifact
    assert load(str(tiny_onnx)) == load(tiny_onnx)


# --- the user's files are never touched ------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_hf", "tiny_onnx", "tiny_onnx_external",
                                     "tiny_torchscript", "tiny_pt2", "minilm_path"])
def test_model_files_are_never_modified(request, fixture, monkeypatch):
    source = request.getfixturevalue(fixture)
    folder = source if source.is_dir() else source.parent
    before = snapshot(folder)
    artifact = load(source, trust_code=fixture == "tiny_torchscript")
    sha = artifact.sha256()
    runner = open_runner(artifact)
    outputs = runner.run(InputBuilder(artifact).batch(2, 16))
    runner.close()
    assert outputs and all(np.isfinite(v).all() for v in outputs.values())
    assert snapshot(folder) == before
    assert load(source, trust_code=fixture == "tiny_torchscript").sha256() == sha


# --- pickles: refused by default, never executed ---------------------------------------


def _pickle_files(tmp_path: Path, target: Path) -> list[Path]:
    import torch

    raw = pickle.dumps(Payload(target))
    files = []
    for name, data in (("evil.pt", raw), ("evil.bin", raw), ("evil", raw),
                       ("evil2.pth", pickle.dumps(Payload(target), protocol=2))):
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    torch.save(Payload(target), tmp_path / "evil_zip.pt")  # torch's zip format, data.pkl
    files.append(tmp_path / "evil_zip.pt")
    return files


def test_payload_is_live(tmp_path):
    """Control: the payload really runs when unpickled, so the tests below mean something."""
    target = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(Payload(target)))
    assert target.exists()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "SOMEFILE"
    for file in _pickle_files(tmp_path, target):
        with pytest.raises(LeanifyError) as exc:
            load(file)
        message = str(exc.value)
        assert str(file.resolve()) in message
        assert "--trust-pickle" in message
        assert "pickle" in message
        assert not target.exists(), file.name


def test_malicious_pickle_does_not_run_even_when_trusted(tmp_path):
    target = tmp_path / "SOMEFILE"
    for file in _pickle_files(tmp_path, target):
        with pytest.raises(LeanifyError, match="weights-only") as exc:
            load(file, trust_pickle=True)
        assert str(file.resolve()) in str(exc.value)
        assert not target.exists(), file.name


def test_state_dict_checkpoint(tiny_encoder, tmp_path):
    import torch

    file = tmp_path / "weights.pt"
    torch.save(tiny_encoder.state_dict(), file)
    with pytest.raises(LeanifyError, match="--trust-pickle"):
        load(file)
    with pytest.raises(LeanifyError) as exc:
        load(file, trust_pickle=True)
    message = str(exc.value)
    assert "state dict" in message
    assert "architecture" in message
    assert str(file.resolve()) in message


@pytest.fixture
def hf_bin(tiny_hf, tiny_encoder, tmp_path) -> Path:
    """The tiny BERT as an old-style HF folder: pytorch_model.bin, no safetensors."""
    import torch

    folder = copy_hf(tiny_hf, tmp_path / "hf_bin", weights=False)
    torch.save(tiny_encoder.inner.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_hf_pickle_weights_are_refused_without_trust(hf_bin):
    with pytest.raises(LeanifyError) as exc:
        load(hf_bin)
    message = str(exc.value)
    assert str((hf_bin / "pytorch_model.bin").resolve()) in message
    assert "--trust-pickle" in message


def test_hf_pickle_weights_load_weights_only_when_trusted(hf_bin, tiny_encoder, example_batch):
    import torch

    artifact = load(hf_bin, trust_pickle=True)
    assert artifact.format == "hf"
    assert artifact.meta["weights_format"] == "pickle (weights_only)"
    assert "params" not in artifact.meta  # not read without unpickling
    with pytest.raises(LeanifyError, match="--trust-pickle"):
        open_runner(artifact)  # the runner asks again
    runner = open_runner(artifact, trust_pickle=True)
    ids, mask, types = example_batch()
    out = runner.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                      "token_type_ids": types.numpy()})
    with torch.no_grad():
        expected = tiny_encoder(ids, mask, types).numpy()
    np.testing.assert_allclose(out["last_hidden_state"], expected, atol=1e-4)


def test_hf_malicious_pickle_weights_never_run(hf_bin, tmp_path):
    target = tmp_path / "SOMEFILE"
    (hf_bin / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(target)))
    with pytest.raises(LeanifyError, match="--trust-pickle"):
        load(hf_bin)
    artifact = load(hf_bin, trust_pickle=True)
    with pytest.raises(LeanifyError) as exc:
        open_runner(artifact, trust_pickle=True)
    assert str(hf_bin.resolve()) in str(exc.value)
    assert not target.exists()


def test_hf_auto_map_is_refused(tiny_hf, tmp_path):
    folder = copy_hf(tiny_hf, tmp_path / "remote")
    edit_config(folder, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    with pytest.raises(LeanifyError) as exc:
        load(folder)
    message = str(exc.value)
    assert "auto_map" in message
    assert str((folder / "config.json").resolve()) in message


def test_weights_only_guard_blocks_pickle_inside_pt2_loading(tmp_path):
    """The guard load_pt2_program relies on: a payload neither unpickles nor runs."""
    import torch

    from leanify.models.safety import weights_only_torch_load

    target = tmp_path / "SOMEFILE"
    raw = pickle.dumps(Payload(target))
    (tmp_path / "evil.pt").write_bytes(raw)
    archive = tmp_path / "x.pt2"
    with weights_only_torch_load(archive, trust_pickle=False):
        with pytest.raises(LeanifyError, match="pickle"):
            pickle.loads(raw)
        with pytest.raises(LeanifyError, match="pickle"):
            torch.load(tmp_path / "evil.pt", weights_only=False)  # forced weights-only
    with weights_only_torch_load(archive, trust_pickle=True):
        with pytest.raises(LeanifyError, match="pickle"):
            torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not target.exists()
