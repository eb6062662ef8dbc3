""".npz samples: mutated archives and forged .npy headers. read_npz must answer with arrays
or a LeanifyError, never unpickle, and never allocate what a header merely promises."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.errors import LeanifyError
from leanify.models.inputs import MAX_NPZ_BYTES, read_npz


def _valid() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, input_ids=np.arange(16, dtype=np.int64).reshape(2, 8),
             attention_mask=np.ones((2, 8), dtype=np.int64))
    return buf.getvalue()


def _npy(header: str, data: bytes, version: int = 1) -> bytes:
    """An .npy file with a literal header text (what numpy.save writes, forged at will)."""
    text = header.encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    size = len(text).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_valid_sample_reads(tmp_path):
    path = tmp_path / "s.npz"
    path.write_bytes(_valid())
    arrays = read_npz(path)
    assert sorted(arrays) == ["attention_mask", "input_ids"]
    assert arrays["input_ids"].shape == (2, 8) and int(arrays["input_ids"][1, 7]) == 15


@fuzz_settings(max_examples=150)
@given(edits=EDITS)
def test_mutated_samples(tmp_path, edits):
    path = tmp_path / "s.npz"
    path.write_bytes(mutate(_valid(), edits))
    result = outcome(lambda: read_npz(path), path)
    if not isinstance(result, LeanifyError):
        assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in result.values())


_DESCR = st.sampled_from(["'<i8'", "'<f4'", "'|O'", "'|b1'", "[('a', '<i4'), ('b', '|O')]",
                          "'<U10'", "'V0'", "'xx'", "42"])
_SHAPE = st.one_of(st.lists(st.integers(0, 5), max_size=3), st.lists(st.integers(-2, 2**40),
                   max_size=3)).map(lambda dims: repr(tuple(dims)))


@fuzz_settings(max_examples=120)
@given(descr=_DESCR, shape=_SHAPE, fortran=st.booleans(), data=st.binary(max_size=96),
       version=st.sampled_from([1, 2]))
def test_forged_headers(tmp_path, descr, shape, fortran, data, version):
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    path = tmp_path / "s.npz"
    path.write_bytes(_npz({"x.npy": _npy(header, data, version)}))
    result = outcome(lambda: read_npz(path), path)
    if not isinstance(result, LeanifyError):
        assert result["x"].nbytes <= len(data) and not result["x"].dtype.hasobject


@pytest.mark.parametrize(("member", "words"), [
    (_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }", bytes(64)),
     "MiB; leanify reads samples up to"),
    (_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000,), }", bytes(64)),
     "truncated"),
    (_npy("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", bytes(64)),
     "holds Python objects"),
])
def test_forged_headers_are_refused_before_reading(tmp_path, member, words):
    path = tmp_path / "s.npz"
    path.write_bytes(_npz({"x.npy": member}))
    with pytest.raises(LeanifyError, match=words) as exc:
        read_npz(path)
    assert str(path) in exc.value.render()


def test_many_arrays_adding_up_past_the_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("leanify.models.inputs.MAX_NPZ_BYTES", 1000)
    path = tmp_path / "s.npz"
    arrays = {f"a{i}": np.zeros(100, dtype=np.int64) for i in range(2)}  # 800 bytes each
    np.savez(path, **arrays)
    with pytest.raises(LeanifyError, match="more than 0 MiB of arrays"):
        read_npz(path)
    assert MAX_NPZ_BYTES == 1 << 30


def test_other_files_are_refused_with_the_file_named(tmp_path):
    for data in (b"", b"plain text", np.lib.format.magic(1, 0) + b"\x10\x00",
                 _npz({"notes.txt": b"hello"})):
        path = tmp_path / "s.npz"
        path.write_bytes(data)
        result = outcome(lambda p=path: read_npz(p), path)
        assert isinstance(result, LeanifyError) and str(path) in result.render()
