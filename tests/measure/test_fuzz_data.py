"""Fuzzing the evaluation-data readers (CSV, TSV, JSONL, text) and the sample-text reader.

Whatever the file holds, reading it ends in a checked Dataset or a LeanifyError naming the
file (and the line or row), within the memory cap and the deadline; the file is unchanged.
Then the issue's cases one by one, in-process and through the CLI.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given
from hypothesis import strategies as st

from leanify.errors import LeanifyError
from leanify.measure import data as data_module
from leanify.measure.data import read_dataset
from leanify.models.files import MAX_FIELD_CHARS, MAX_JSON_DEPTH
from leanify.models.inputs import read_texts

TASKS = ("embedding-similarity", "text-classification", "fidelity")
HEADERS = (["sentence1", "sentence2", "score"], ["sentence", "label"], ["text"])
VALID_CSV = "sentence1,sentence2,score\nA cat.,A dog.,1.5\nRain.,Sun.,0\nYes.,No.,4\n"
VALID_JSONL = "".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                      for a, b, s in (("A cat.", "A dog.", 1.5), ("x", "y", 0), ("p", "q", 4)))

# Text with what breaks readers: separators, quotes, line ends, NUL, long numbers, non-BMP.
_FIELD = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(['"', '""', ",", "\t", "\r", "\n", "\r\n", "\x00", "\ufeff", "\U0001f600",
                     "nan", "inf", "-0", "1e999", "0x1p3", "1" * 5000, "1_000", "٣", " 2.5 "]),
)


def _check(path: Path, task: str):
    result = outcome(lambda: read_dataset(path, task), path)
    if isinstance(result, LeanifyError):
        assert str(path) in result.render()
        return result
    for text in result.all_texts():
        assert text.strip() and "\x00" not in text
    for score in result.scores or []:
        assert math.isfinite(score)
    return result


_PLAIN = st.sampled_from(["A cat sits.", "rain", "1", "0.5", "4", "pos", "neg", "0"])
_CELL = st.one_of(_PLAIN, _PLAIN, _PLAIN, _FIELD)  # mostly plausible, often not


@st.composite
def _table(draw) -> tuple[list[str], list[list[str]]]:
    """A header and rows, most as wide as the header."""
    header = draw(st.sampled_from(HEADERS))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        width = len(header) if draw(st.integers(0, 7)) else draw(st.integers(1, 4))
        rows.append([draw(_CELL) for _ in range(width)])
    return header, rows


@fuzz_settings(max_examples=120)
@given(table=_table(), quoted=st.booleans(), suffix=st.sampled_from([".csv", ".tsv"]),
       task=st.sampled_from(TASKS))
def test_generated_delimited_files(tmp_path, table, quoted, suffix, task):
    header, rows = table
    delimiter = "\t" if suffix == ".tsv" else ","
    if quoted:  # what csv.writer makes of the fields
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
        text = buf.getvalue()
    else:  # fields pasted together, as a careless script writes them
        text = "\n".join(delimiter.join(r) for r in [header, *rows]) + "\n"
    path = tmp_path / f"data{suffix}"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check(path, task)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _CELL,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner,
                                                                 max_size=2),
    max_leaves=6,
)


@st.composite
def _jsonl_rows(draw) -> list:
    header = draw(st.sampled_from(HEADERS))
    value = st.one_of(_CELL, _CELL, st.floats(), st.integers(), _JSON)
    extra = {"extra": _JSON} if "label" in header else {"extra": _JSON, "label": value}
    row = st.fixed_dictionaries(dict.fromkeys(header, value), optional=extra)
    return draw(st.lists(st.one_of(row, row, row, _JSON), max_size=6))


@fuzz_settings(max_examples=100)
@given(rows=_jsonl_rows(), task=st.sampled_from(TASKS))
def test_generated_jsonl_files(tmp_path, rows, task):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _check(path, task)


@fuzz_settings(max_examples=120)
@given(valid=st.sampled_from([("data.csv", VALID_CSV), ("data.jsonl", VALID_JSONL),
                              ("sts-x.csv", "g\tf\t2012\t1\t2.5\tA b.\tC d.\n")]),
       edits=EDITS, task=st.sampled_from(TASKS))
def test_mutated_files(tmp_path, valid, edits, task):
    name, text = valid
    path = tmp_path / name
    path.write_bytes(mutate(text.encode(), edits))
    _check(path, task)


@fuzz_settings(max_examples=80)
@given(edits=EDITS, suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv"]))
def test_mutated_sample_texts(tmp_path, edits, suffix):
    valid = {".txt": "One.\nTwo.\n", ".jsonl": '{"text": "One."}\n{"text": "Two."}\n',
             ".csv": "text\nOne.\n\"Two, three.\"\n", ".tsv": "text\nOne.\nTwo.\n"}[suffix]
    path = tmp_path / f"sample{suffix}"
    path.write_bytes(mutate(valid.encode(), edits))
    result = outcome(lambda: read_texts(path), path)
    if not isinstance(result, LeanifyError):
        assert result and all("\x00" not in t for t in result)


# --- the issue's cases -------------------------------------------------------------------

DEEP = '{"sentence": "a", "label": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
HUGE_SCORE = "sentence1,sentence2,score\na,b,1\nc,d,2\ne,f," + "1" * 5000 + "\n"
CASES = {
    "deep.jsonl": (DEEP, "text-classification", f"line 1 nests JSON arrays/objects deeper "
                   f"than {MAX_JSON_DEPTH}"),
    "score.csv": (HUGE_SCORE, "embedding-similarity", "line 4: score '1111"),
    "score.jsonl": ('{"sentence1": "a", "sentence2": "b", "score": ' + "1" * 5000 + "}\n",
                    "embedding-similarity", "line 1 holds a number 5000 characters long"),
    "nul.csv": ("sentence1,sentence2,score\na,b,1\nc\x00,d,2\ne,f,3\n", "embedding-similarity",
                "NUL byte (\\x00) on line 3"),
    "nul.jsonl": ('{"text": "fine"}\n{"text": "a\\u0000b"}\n', "fidelity",
                  "line 2: 'text' holds a NUL character"),
    "field.csv": ("sentence,label\n" + "x" * (10 << 20) + ",1\n", "text-classification",
                  "has a field over 1 MiB of text, starting on line 2"),
    "quote.csv": ('sentence,label\nok,1\n"never closed,1\n' + "more,0\n" * 200_000,
                  "text-classification", "starting on line 3"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_issue_cases_are_exit_2_naming_the_file_and_line(tmp_path, name):
    text, task, words = CASES[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    result = _check(path, task)
    assert isinstance(result, LeanifyError)
    assert words in result.message, result.message
    assert "quoting" not in result.render() and len(result.render()) < 600


def test_a_field_just_under_the_limit_is_read(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("sentence,label\n" + "x" * (MAX_FIELD_CHARS - 1) + ",1\n", encoding="utf-8")
    dataset = read_dataset(path, "text-classification")
    assert len(dataset.texts[0]) == MAX_FIELD_CHARS - 1


def test_files_and_value_counts_past_the_limits_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_text(VALID_CSV, encoding="utf-8")
    monkeypatch.setattr(data_module, "MAX_DATA_BYTES", 64)
    with pytest.raises(LeanifyError, match="reads text data files up to 0 MiB"):
        read_dataset(path, "embedding-similarity")
    monkeypatch.undo()
    monkeypatch.setattr(data_module, "MAX_VALUES", 8)
    for name, text in (("data.csv", VALID_CSV), ("data.jsonl", VALID_JSONL)):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(LeanifyError, match=r"more than 8 values .* by line 3"):
            read_dataset(path, "embedding-similarity")


def test_sample_texts_refuse_nul_and_huge_fields(tmp_path):
    path = tmp_path / "sample.csv"
    path.write_text("text\nfine\nbad\x00\n", encoding="utf-8")
    with pytest.raises(LeanifyError, match=r"NUL byte .* on line 3"):
        read_texts(path)
    path.write_text('text\n"' + "x" * (MAX_FIELD_CHARS + 1) + '"\n', encoding="utf-8")
    with pytest.raises(LeanifyError, match="field over 1 MiB"):
        read_texts(path)


@pytest.mark.parametrize("name", ["deep.jsonl", "score.csv", "nul.csv", "field.csv"])
def test_the_issue_cases_through_the_cli(tmp_path, name):
    text, task, words = CASES[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "leanify.cli", "optimize", "minilm", "--task", task,
         "--data", str(path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert name in proc.stderr and words.split(" (")[0][:30] in " ".join(proc.stderr.split())


@fuzz_settings(max_examples=60)
@given(edits=EDITS, task=st.sampled_from(TASKS))
def test_mutated_parquet_files(tmp_path, edits, task):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"sentence1": ["A cat.", "Rain.", "Yes."],
                             "sentence2": ["A dog.", "Sun.", "No."], "score": [1.5, 0.0, 4.0]}),
                   buf)
    path = tmp_path / "data.parquet"
    path.write_bytes(mutate(buf.getvalue(), edits))
    _check(path, task)


def test_parquet_past_the_value_limit_is_refused_from_its_footer(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a"] * 10, "label": ["1"] * 10}), path)
    monkeypatch.setattr(data_module, "MAX_VALUES", 19)
    with pytest.raises(LeanifyError, match="holds 10 rows x 2 columns"):
        read_dataset(path, "text-classification")
