"""Fuzzing the JSON files of a model folder: config.json, modules.json and leanify's sidecar.
Wrong types, bad JSON, deep nesting and huge numbers must end in a LeanifyError naming the
file (or a loaded model), never a crash further on."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.errors import LeanifyError
from leanify.models.files import MAX_JSON_DEPTH
from leanify.models.load import load

CONFIG = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
          "vocab_size": 8, "type_vocab_size": 2, "max_position_embeddings": 16,
          "num_hidden_layers": 1, "id2label": {"0": "neg", "1": "pos"}}
KEYS = [*CONFIG, "auto_map", "hidden_size", "label2id"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=8,
)


def _folder(root: Path, config: bytes | dict) -> Path:
    folder = root / "model"
    folder.mkdir(exist_ok=True)
    data = np.arange(8, dtype=np.float32).tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}})
    (folder / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header.encode() + data)
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    (folder / "config.json").write_bytes(raw)
    return folder


def _load(folder: Path):
    files = sorted(p for p in folder.iterdir() if p.is_file())
    result = outcome(lambda: load(folder), *files)
    if not isinstance(result, LeanifyError):
        assert isinstance(result.meta["task"], str)
        for spec in result.inputs:
            assert spec.high is None or isinstance(spec.high, int)
    return result


def test_the_valid_folder_loads(tmp_path):
    artifact = load(_folder(tmp_path, CONFIG))
    assert artifact.meta["task"] == "text-classification" and artifact.meta["params"] == 8
    assert artifact.meta["labels"] == {"0": "neg", "1": "pos"}


@fuzz_settings(max_examples=150)
@given(changes=st.dictionaries(st.sampled_from(KEYS), JSON, min_size=1, max_size=3))
def test_config_values_of_any_type(tmp_path, changes):
    _load(_folder(tmp_path, {**CONFIG, **changes}))


@fuzz_settings(max_examples=100)
@given(edits=EDITS)
def test_mutated_config_bytes(tmp_path, edits):
    _load(_folder(tmp_path, mutate(json.dumps(CONFIG).encode(), edits)))


@fuzz_settings(max_examples=80)
@given(modules=JSON, sidecar=st.dictionaries(
    st.sampled_from(["task", "pooling", "normalize", "labels", "runtime", "run_with"]), JSON,
    max_size=3))
def test_modules_json_and_sidecar(tmp_path, modules, sidecar):
    folder = _folder(tmp_path, CONFIG)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "leanify_model.json").write_text(json.dumps(sidecar))
    _load(folder)


@pytest.mark.parametrize(("config", "words"), [
    (b'{"vocab_size": "abc"}', "'vocab_size' is 'abc'"),
    (b'{"architectures": 5}', "'architectures' is 5"),
    (b'{"id2label": [1, 2]}', "'id2label'"),
    (b'{"vocab_size": 0}', "'vocab_size' is 0; it should be a positive integer"),
    (b'{"vocab_size": ' + b"1" * 5000 + b"}", "a number 5000 characters long"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", f"deeper than {MAX_JSON_DEPTH}"),
    (b'{"vocab_size": 8,,}', "not valid JSON"),
    (b"[1, 2]", "should hold a JSON object"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_bad_config_json_is_named(tmp_path, config, words):
    folder = _folder(tmp_path, config)
    result = _load(folder)
    assert isinstance(result, LeanifyError)
    assert words in result.message and str(folder / "config.json") in result.render()


def test_bad_config_through_the_cli_is_exit_2_without_a_traceback(tmp_path):
    folder = _folder(tmp_path, b'{"vocab_size": "abc", "architectures": ["BertModel"]}')
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "info", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "config.json" in proc.stderr and "vocab_size" in proc.stderr
