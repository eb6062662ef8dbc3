"""Fuzzing the zip sniffing that tells TorchScript, .pt2 and pickle archives apart (only the
inspection layer: no TorchScript code is loaded here)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.errors import LeanifyError
from leanify.models.safety import sniff_torch_archive, zip_names

KINDS = {"pt2", "torchscript", "pickle", "unknown"}
_NAME = st.one_of(
    st.sampled_from(["archive_format", "constants.pkl", "data.pkl", "code/m.py", "version",
                     "byteorder", "data/0", "models/model.json"]).map(lambda n: f"model/{n}"),
    # zipfile cannot write a name holding NUL (it cuts the name there)
    st.text(min_size=1, max_size=12).filter(lambda n: "\x00" not in n),
)
_ENTRIES = st.lists(st.tuples(_NAME, st.binary(max_size=64)), max_size=6,
                    unique_by=lambda e: e[0])


def _zip(entries: list[tuple[str, bytes]], compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _expected(names: list[str]) -> str:
    """The archive kind, from the entry names alone (what sniff_torch_archive must say)."""
    inner = {n.split("/", 1)[1] for n in names if "/" in n}
    if "archive_format" in inner:
        return "pt2"
    if "constants.pkl" in inner and any(e.startswith("code/") for e in inner):
        return "torchscript"
    return "pickle" if "data.pkl" in inner else "unknown"


@fuzz_settings(max_examples=100)
@given(entries=_ENTRIES, deflate=st.booleans())
def test_archives_with_random_entries_are_told_apart(tmp_path, entries, deflate):
    path = tmp_path / "m.pt"
    path.write_bytes(_zip(entries, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED))
    kind = outcome(lambda: sniff_torch_archive(path), path)
    assert kind == _expected(zip_names(path))


@fuzz_settings(max_examples=150)
@given(entries=_ENTRIES, edits=EDITS)
def test_mutated_archives(tmp_path, entries, edits):
    path = tmp_path / "m.pt"
    path.write_bytes(mutate(_zip(entries, zipfile.ZIP_STORED), edits))
    kind = outcome(lambda: sniff_torch_archive(path), path)
    assert isinstance(kind, LeanifyError) or kind in KINDS


def test_an_entry_name_flagged_utf8_that_is_not_is_a_damaged_archive(tmp_path):
    raw = _zip([("model/\u00e4rchive", b"x")], zipfile.ZIP_STORED)
    assert raw.count("\u00e4".encode()) == 2  # local header and central directory
    path = tmp_path / "m.pt"
    path.write_bytes(raw.replace("\u00e4".encode(), b"\xff\xfe"))
    with pytest.raises(LeanifyError, match="archive is damaged") as exc:
        sniff_torch_archive(path)
    assert str(path) in exc.value.render()


def test_a_truncated_central_directory_is_a_damaged_archive(tmp_path):
    raw = _zip([("model/data.pkl", b"x" * 100), ("model/version", b"3")], zipfile.ZIP_STORED)
    path = Path(tmp_path / "m.pt")
    end = raw.rfind(b"PK\x05\x06")  # end-of-central-directory record
    path.write_bytes(raw[:end - 30] + raw[end:])
    result = outcome(lambda: sniff_torch_archive(path), path)
    assert isinstance(result, LeanifyError) or result in KINDS
