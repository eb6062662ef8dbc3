"""Dataset readers, checks, splits and batches, on the real STS-B and SST-2 files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import (
    Dataset,
    calibration_texts,
    check_labels,
    read_dataset,
    split,
    text_batches,
)

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
STS_TEST = DATA / "stsb" / "sts-test.csv"
STS_DEV = DATA / "stsb" / "sts-dev.csv"
SST2_DEV = DATA / "sst2" / "dev.tsv"


def _raw_sts_lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n") if line]


def _error(path: Path, *args, **kwargs) -> LeanifyError:
    with pytest.raises(LeanifyError) as info:
        read_dataset(path, *args, **kwargs)
    assert str(path) in str(info.value)  # every data error names the file
    assert info.value.fix
    return info.value


# --- real files ------------------------------------------------------------------------


def test_sts_test_reads_every_row_with_extra_fields_and_quotes():
    ds = read_dataset(STS_TEST, "embedding-similarity")
    raw = _raw_sts_lines(STS_TEST)
    assert len(ds) == 1379 == len(raw)
    assert ds.texts is None and ds.labels is None
    assert ds.pairs[0] == ("A girl is styling her hair.", "A girl is brushing her hair.")
    assert ds.scores[0] == pytest.approx(2.5)
    assert all(0.0 <= s <= 5.0 for s in ds.scores)
    # A line with two attribution fields parses, its sentences are fields 5 and 6.
    extra = [i for i, f in enumerate(raw) if len(f) == 9]
    assert len(extra) == 284
    i = extra[0]
    assert ds.pairs[i] == (raw[i][5], raw[i][6])
    assert ds.scores[i] == pytest.approx(float(raw[i][4]))
    # Bare quotes stay in the text (no CSV quote handling).
    quoted = [j for j, f in enumerate(raw) if '"' in f[5] or '"' in f[6]]
    assert len(quoted) == 50
    assert ds.pairs[quoted[0]] == (raw[quoted[0]][5], raw[quoted[0]][6])
    assert ds.lines[:3] == [1, 2, 3]


def test_sts_dev_and_fidelity_uses_both_sentences():
    ds = read_dataset(STS_DEV, "embedding-similarity")
    assert len(ds) == 1500
    fid = read_dataset(STS_DEV, "fidelity")
    assert len(fid) == 1500 and len(fid.texts) == 3000
    assert fid.texts[:2] == list(ds.pairs[0])
    sub = fid.subset([3, 1])
    assert sub.pairs == [ds.pairs[3], ds.pairs[1]]
    assert sub.texts == [*ds.pairs[3], *ds.pairs[1]]


def test_sts_format_detected_by_content(tmp_path):
    lines = STS_TEST.read_text(encoding="utf-8").split("\n")[:20]
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = read_dataset(path, "embedding-similarity")
    assert len(ds) == 20
    assert ds.pairs[0][0] == "A girl is styling her hair."


def test_sst2_dev_tsv():
    ds = read_dataset(SST2_DEV, "text-classification")
    assert len(ds) == 872
    assert sorted(set(ds.labels)) == ["0", "1"]
    assert ds.labels.count("0") == 428
    assert ds.texts[0].startswith("it 's a charming and often affecting journey")
    assert ds.lines[0] == 2  # line 1 is the header
    fid = read_dataset(SST2_DEV, "fidelity")
    assert fid.texts == ds.texts and fid.pairs is None


# --- formats ---------------------------------------------------------------------------


def test_csv_with_quotes_and_custom_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('review,stars\n"great, really",pos\nbad film,neg\n"he said ""no""",neg\n',
                    encoding="utf-8")
    ds = read_dataset(path, "text-classification", text_col="review", label_col="stars")
    assert ds.texts == ["great, really", "bad film", 'he said "no"']
    assert ds.labels == ["pos", "neg", "neg"]
    assert ds.lines == [2, 3, 4]


def test_csv_pairs_default_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,score\na,b,1\nc,d,2.5\ne,f,4\n", encoding="utf-8")
    ds = read_dataset(path, "embedding-similarity")
    assert ds.pairs == [("a", "b"), ("c", "d"), ("e", "f")]
    assert ds.scores == [1.0, 2.5, 4.0]


def test_tsv_pair_cols_override(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("q\td\tsim\nx\ty\t0.1\nu\tv\t0.9\nw\tz\t0.5\n", encoding="utf-8")
    ds = read_dataset(path, "embedding-similarity", pair_cols=("q", "d"), score_col="sim")
    assert ds.pairs[1] == ("u", "v") and ds.scores == [0.1, 0.9, 0.5]


def test_jsonl_labels_as_strings(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0.0},
            {"text": "meh", "label": "neutral"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = read_dataset(path, "text-classification")
    assert ds.texts == ["good", "bad", "meh"]
    assert ds.labels == ["1", "0", "neutral"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    table = pa.table({"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"],
                      "score": [0.5, 1.5, 4.0]})
    pq.write_table(table, path)
    ds = read_dataset(path, "embedding-similarity")
    assert ds.pairs == [("a", "x"), ("b", "y"), ("c", "z")]
    assert ds.scores == [0.5, 1.5, 4.0]


def test_unreadable_parquet(tmp_path):
    import pyarrow  # noqa: F401  required (the all extra): missing, this fails

    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really a parquet file")
    assert "Parquet" in str(_error(path, "fidelity"))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    err = _error(path, "fidelity")
    assert "pyarrow" in str(err) and "pip install" in err.fix


def test_txt_for_fidelity(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("first line\n\nsecond line\n", encoding="utf-8")
    assert read_dataset(path, "fidelity").texts == ["first line", "second line"]
    _error(path, "text-classification")


# --- bad data --------------------------------------------------------------------------


def test_missing_and_empty_files(tmp_path):
    err = _error(tmp_path / "nope.csv", "fidelity")
    assert "not found" in str(err)
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert "empty" in str(_error(empty, "fidelity"))
    blank = tmp_path / "blank.tsv"
    blank.write_text("\n  \n", encoding="utf-8")
    assert "empty" in str(_error(blank, "fidelity"))
    header_only = tmp_path / "header.csv"
    header_only.write_text("sentence,label\n", encoding="utf-8")
    assert "no rows" in str(_error(header_only, "text-classification"))


def test_missing_columns_lists_columns_found(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("body,verdict\nhello,1\n", encoding="utf-8")
    err = _error(path, "text-classification")
    assert "columns found: body, verdict" in str(err)
    err = _error(path, "text-classification", text_col="body")
    assert "label" in str(err) and "body, verdict" in str(err)
    err = _error(path, "embedding-similarity")
    assert "sentence1 + sentence2" in str(err)
    err = _error(path, "fidelity", text_col="missing")
    assert "missing" in str(err) and "body, verdict" in str(err)


def test_non_numeric_score_names_line_and_value(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,score\na,b,1\nc,d,high\ne,f,2\n", encoding="utf-8")
    err = _error(path, "embedding-similarity")
    assert "line 3" in str(err) and "'high'" in str(err)
    sts = tmp_path / "sts-bad.csv"
    lines = STS_TEST.read_text(encoding="utf-8").split("\n")[:5]
    fields = lines[3].split("\t")
    fields[4] = "n/a"
    lines[3] = "\t".join(fields)
    sts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = _error(sts, "embedding-similarity")
    assert "line 4" in str(err) and "'n/a'" in str(err)
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"sentence1": "a", "sentence2": "b", "score": "nan"}\n', encoding="utf-8")
    assert "line 1" in str(_error(nan, "embedding-similarity"))


def test_empty_text_names_line(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("sentence\tlabel\nfine\t1\n   \t0\n", encoding="utf-8")
    err = _error(path, "text-classification")
    assert "line 3" in str(err) and "empty" in str(err)
    path = tmp_path / "empty_label.tsv"
    path.write_text("sentence\tlabel\nfine\t1\nalso fine\t\n", encoding="utf-8")
    assert "line 3" in str(_error(path, "text-classification"))


def test_unreadable_encoding_names_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("sentence,label\nok,1\ncaf\u00e9,0\n".encode("latin-1"))
    err = _error(path, "text-classification")
    assert "UTF-8" in str(err) and "line 3" in str(err)


def test_too_few_rows_and_constant_scores(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("sentence1,sentence2,score\na,b,1\nc,d,2\n", encoding="utf-8")
    err = _error(path, "embedding-similarity")
    assert "needs at least 3" in str(err)
    flat = tmp_path / "flat.csv"
    flat.write_text("sentence1,sentence2,score\na,b,1\nc,d,1\ne,f,1\n", encoding="utf-8")
    assert "Spearman" in str(_error(flat, "embedding-similarity"))


def test_malformed_rows(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("sentence,label\nhello,1\nhello, world,0\n", encoding="utf-8")
    err = _error(path, "text-classification")
    assert "line 3" in str(err) and "3 comma-separated fields" in str(err)
    sts = tmp_path / "sts-short.csv"
    sts.write_text("main-news\tx\t2012\t1\t3.0\tonly one sentence\n" * 3 +
                   "main-news\tx\t2012\t1\t3.0\ta\tb\n", encoding="utf-8")
    err = _error(sts, "embedding-similarity")
    assert "line 1" in str(err) and "at least 7" in str(err)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok", "label": 1}\n{"text": oops}\n', encoding="utf-8")
    assert "line 2" in str(_error(bad_json, "text-classification"))
    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text('["a", 1]\n', encoding="utf-8")
    assert "line 1" in str(_error(not_obj, "text-classification"))
    missing_key = tmp_path / "missing.jsonl"
    missing_key.write_text('{"text": "ok", "label": 1}\n{"text": "no label"}\n', encoding="utf-8")
    assert "line 2" in str(_error(missing_key, "text-classification"))


def test_unknown_suffix_and_task(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    assert ".xlsx" in str(_error(path, "fidelity"))
    with pytest.raises(LeanifyError, match="unknown task"):
        read_dataset(STS_TEST, "regression")
    with pytest.raises(LeanifyError, match="two columns"):
        read_dataset(STS_TEST, "embedding-similarity", pair_cols=("sentence1",))


# --- split -----------------------------------------------------------------------------


def test_split_disjoint_deterministic_sizes():
    ds = read_dataset(STS_TEST, "embedding-similarity")
    cal, ev = split(ds, calibration_size=300, seed=0)
    assert len(cal) == 1379 // 5 == 275  # never more than 20% of the rows
    assert len(cal) + len(ev) == len(ds)
    assert not set(cal.lines) & set(ev.lines)
    assert sorted(cal.lines + ev.lines) == ds.lines
    assert cal.lines == sorted(cal.lines)  # file order kept
    again, _ = split(ds, calibration_size=300, seed=0)
    assert again.lines == cal.lines
    other, _ = split(ds, calibration_size=300, seed=1)
    assert other.lines != cal.lines
    small_cal, small_ev = split(ds, calibration_size=50, seed=0)
    assert len(small_cal) == 50 and len(small_ev) == 1329
    # Calibration texts come from the calibration rows only.
    texts = calibration_texts(cal)
    cal_sentences = {s for p in cal.pairs for s in p}
    assert set(texts) == cal_sentences
    assert len(texts) == len(set(texts))
    ev_only = {s for p in ev.pairs for s in p} - cal_sentences
    assert not ev_only & set(texts)


def test_split_small_and_big():
    ds = Dataset(Path("x"), "fidelity", texts=[f"t{i}" for i in range(10)],
                 lines=list(range(1, 11)))
    cal, ev = split(ds, calibration_size=300)
    assert len(cal) == 2 and len(ev) == 8
    big = Dataset(Path("x"), "fidelity", texts=[f"t{i}" for i in range(2000)])
    cal, ev = split(big, calibration_size=300, seed=3)
    assert len(cal) == 300 and len(ev) == 1700
    assert not set(cal.texts) & set(ev.texts)
    assert split(ds, calibration_size=0)[0].texts == []
    with pytest.raises(LeanifyError):
        split(ds, calibration_size=-1)


# --- labels ----------------------------------------------------------------------------


def test_check_labels_by_id_and_name():
    ds = read_dataset(SST2_DEV, "text-classification")
    model = {"0": "negative", "1": "positive"}
    assert check_labels(ds, model) == {"1": 1, "0": 0}
    named = ds.subset(range(4))
    named.labels = ["positive", "NEGATIVE", "1", "negative"]
    assert check_labels(named, model) == {"positive": 1, "NEGATIVE": 0, "1": 1, "negative": 0}
    assert check_labels(ds, None) == {"1": 1, "0": 0}
    assert check_labels(read_dataset(STS_TEST, "fidelity"), model) == {}


def test_check_labels_unknown():
    ds = read_dataset(SST2_DEV, "text-classification").subset(range(5))
    ds.labels = ["0", "neutral", "1", "mixed", "neutral"]
    with pytest.raises(LeanifyError) as info:
        check_labels(ds, {"0": "negative", "1": "positive"})
    text = str(info.value)
    assert str(SST2_DEV) in text
    assert "'neutral', 'mixed'" in text and "0='negative', 1='positive'" in text
    with pytest.raises(LeanifyError, match="no label names"):
        check_labels(ds, None)


# --- batches ---------------------------------------------------------------------------


def test_text_batches_dynamic_padding_and_truncation(minilm_path):
    from transformers import AutoTokenizer

    texts = ["short.", "a somewhat longer sentence than the first one is", "x " * 300, "mid one"]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    batches = list(text_batches(texts, minilm_path, 2, 16, names))
    assert len(batches) == 2
    first, second = batches
    assert set(first) == set(names)
    assert all(a.dtype == np.int64 for a in first.values())
    reference = AutoTokenizer.from_pretrained(minilm_path)
    for batch, chunk in ((first, texts[:2]), (second, texts[2:])):
        expected = reference(chunk, padding=True, truncation=True, max_length=16,
                             return_tensors="np")
        for name in names:
            np.testing.assert_array_equal(batch[name], expected[name])
    assert first["input_ids"].shape[1] < 16  # padded to the longest in the batch, not 16
    assert second["input_ids"].shape == (2, 16)  # truncated
    only = next(text_batches(texts, minilm_path, 4, 8, ["input_ids"]))
    assert list(only) == ["input_ids"]


def test_text_batches_without_tokenizer(tmp_path, minilm_path):
    with pytest.raises(LeanifyError, match=r"tokenizer\.json"):
        next(text_batches(["a"], tmp_path, 1, 8, ["input_ids"]))
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(minilm_path / "tokenizer.json", folder / "tokenizer.json")
    batch = next(text_batches(["a b", "a"], folder, 2, 8, ["input_ids", "attention_mask"]))
    assert batch["input_ids"][1, -1] == 0  # [PAD] by default
