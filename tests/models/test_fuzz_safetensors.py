"""Fuzzing the safetensors header check against the format's own reader.

check_safetensors must answer every file with a tensor table or a LeanifyError, and agree
with the safetensors library: what it accepts the library reads, what the library reads it
accepts (no false refusals).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.errors import LeanifyError
from leanify.models.load import load
from leanify.models.safety import check_safetensors

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
                "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _blob(header: dict | str, data: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


def _valid() -> bytes:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [4], "data_offsets": [24, 56]}}
    return _blob(header, a.tobytes() + b.tobytes())


def _library_reads(blob: bytes) -> bool:
    from safetensors.numpy import load as st_load

    try:
        st_load(blob)
    except Exception:  # the library raises SafetensorError, KeyError (dtypes), ...
        return False
    return True


def _check(path: Path, blob: bytes) -> object:
    path.write_bytes(blob)
    return outcome(lambda: check_safetensors(path), path)


def _numpy_readable(header: object) -> bool:
    """Whether the library's numpy reader knows every dtype (it lacks F4, F8_E8M0, ...)."""
    return isinstance(header, dict) and all(
        isinstance(v, dict) and v.get("dtype") in NUMPY_DTYPES
        for k, v in header.items() if k != "__metadata__")


def test_a_valid_file_passes_and_the_library_agrees(tmp_path):
    blob = _valid()
    assert _library_reads(blob)
    table = _check(tmp_path / "m.safetensors", blob)
    assert set(table) == {"a", "b"} and table["a"]["shape"] == [2, 3]


@fuzz_settings(max_examples=150)
@given(edits=EDITS)
def test_mutated_bytes(tmp_path, edits):
    blob = mutate(_valid(), edits)
    result = _check(tmp_path / "m.safetensors", blob)
    if not isinstance(result, LeanifyError):
        header_len = struct.unpack("<Q", blob[:8])[0]
        if _numpy_readable(json.loads(blob[8:8 + header_len])):
            assert _library_reads(blob), "accepted a file the safetensors library refuses"
    elif _library_reads(blob):
        pytest.fail(f"refused a file the safetensors library reads: {result.render()}")


_DIM = st.one_of(st.integers(0, 5), st.integers(-3, -1), st.integers(2**62, 2**80),
                 st.text(max_size=3), st.floats(allow_nan=False, max_value=10), st.booleans(),
                 st.none())
_ENTRY = st.fixed_dictionaries(
    {"dtype": st.one_of(st.sampled_from([*NUMPY_DTYPES, "F4", "F8_E8M0", "Q4"]),
                        st.integers()),
     "shape": st.one_of(st.lists(_DIM, max_size=4), st.text(max_size=4), st.integers()),
     "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-4, 80), st.text(max_size=2)),
                                        max_size=3), st.text(max_size=3))},
    optional={"extra": st.integers()},
)


@fuzz_settings(max_examples=100)
@given(entries=st.dictionaries(st.text(max_size=4), _ENTRY, max_size=3),
       data_len=st.integers(0, 80))
def test_generated_headers(tmp_path, entries, data_len):
    blob = _blob(entries, bytes(range(data_len)))
    result = _check(tmp_path / "m.safetensors", blob)
    if not isinstance(result, LeanifyError):
        if _numpy_readable(entries):
            assert _library_reads(blob), "accepted a file the safetensors library refuses"
    elif _library_reads(blob):
        pytest.fail(f"refused a file the safetensors library reads: {result.render()}")


@pytest.mark.parametrize(("entry", "words"), [
    ({"dtype": "F32", "shape": "abc", "data_offsets": [0, 12]}, "shape 'abc'"),
    ({"dtype": "F32", "shape": [-3], "data_offsets": [0, 12]}, "non-negative"),
    ({"dtype": "X9", "shape": [3], "data_offsets": [0, 12]}, "unknown dtype 'X9'"),
    ({"dtype": "F32", "shape": [3], "data_offsets": ["0", "12"]}, "data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}, "takes 16 bytes"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 2**70]}, "takes 12 bytes"),
])
def test_bad_tensor_entries_are_named(tmp_path, entry, words):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_blob({"w": entry}, bytes(12)))
    with pytest.raises(LeanifyError, match="tensor 'w'") as exc:
        check_safetensors(path)
    assert words in exc.value.message and str(path) in exc.value.render()


def test_overlapping_tensors_and_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    header = {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
              "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}
    path.write_bytes(_blob(header, bytes(12)))
    with pytest.raises(LeanifyError, match="overlaps"):
        check_safetensors(path)
    header = {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}
    path.write_bytes(_blob(header, bytes(12)))
    with pytest.raises(LeanifyError, match="4 bytes after its last tensor"):
        check_safetensors(path)


def test_shape_abc_in_a_model_folder_is_exit_2_naming_the_file(tmp_path):
    """The issue's case: a model folder whose safetensors header holds shape "abc"."""
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 8}
    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    weights.write_bytes(_valid())
    assert load(folder).meta["params"] == 10  # the valid folder loads
    weights.write_bytes(_blob({"a": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 24]}},
                              bytes(24)))
    result = outcome(lambda: load(folder), weights, folder / "config.json")
    assert isinstance(result, LeanifyError)
    assert str(weights) in result.render() and "shape 'abc'" in result.message
