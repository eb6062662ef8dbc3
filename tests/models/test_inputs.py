"""`leanify.models.inputs`: batches from the tokenizer, the signature, and sample files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.inputs import InputBuilder, bundled_texts, read_texts
from leanify.models.load import load

TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
VOCAB = 30522


@pytest.fixture(scope="module")
def hf_artifact(tiny_hf) -> Artifact:
    return load(tiny_hf)


@pytest.fixture(scope="module")
def onnx_artifact(tiny_onnx) -> Artifact:
    return load(tiny_onnx)


@pytest.fixture(scope="module")
def tokenizer(tiny_hf):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_hf / "tokenizer.json"))


# --- from the tokenizer ----------------------------------------------------------------


@pytest.mark.parametrize("source", ["tiny_hf", "minilm"])
def test_tokenizer_batch_is_full_of_real_tokens(request, source, tokenizer):
    artifact = load(request.getfixturevalue(source) if source != "minilm" else "minilm")
    builder = InputBuilder(artifact)
    assert builder.source == "tokenizer"
    assert builder.bundled
    batch = builder.batch(4, 128)
    assert list(batch) == TEXT_INPUTS
    for array in batch.values():
        assert array.shape == (4, 128)
        assert array.dtype == np.int64
        assert array.flags["C_CONTIGUOUS"]
    ids = batch["input_ids"]
    assert (batch["attention_mask"] == 1).all()  # every row long enough: no padding
    assert (batch["token_type_ids"] == 0).all()
    assert ids.min() >= 0 and ids.max() < VOCAB
    pad, unk = tokenizer.token_to_id("[PAD]"), tokenizer.token_to_id("[UNK]")
    assert not (ids == pad).any()
    assert (ids == unk).mean() < 0.05  # real text, not noise
    assert (ids[:, 0] == tokenizer.token_to_id("[CLS]")).all()
    assert (ids[:, -1] == tokenizer.token_to_id("[SEP]")).all()
    assert len({row.tobytes() for row in ids}) == 4  # a different passage per row
    for row in ids:
        assert len(np.unique(row)) > 40  # words, not a repeated token


def test_tokenizer_batch_decodes_to_bundled_text(hf_artifact, tokenizer):
    ids = InputBuilder(hf_artifact).batch(1, 32)["input_ids"][0]
    decoded = tokenizer.decode(ids.tolist())
    assert len(decoded.split()) >= 10

    def letters(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    assert letters(decoded)[:60] in letters(" ".join(bundled_texts()))


@pytest.mark.parametrize(("batch_size", "seq_len"), [(1, 8), (3, 17), (2, 512)])
def test_tokenizer_batch_shapes(hf_artifact, batch_size, seq_len):
    batch = InputBuilder(hf_artifact).batch(batch_size, seq_len)
    assert {k: v.shape for k, v in batch.items()} == {
        n: (batch_size, seq_len) for n in TEXT_INPUTS}


def test_batches_are_deterministic(hf_artifact, onnx_artifact):
    for artifact in (hf_artifact, onnx_artifact):
        first = InputBuilder(artifact).batch(3, 24)
        again = InputBuilder(artifact).batch(3, 24)
        for name in first:
            np.testing.assert_array_equal(first[name], again[name])


def test_text_sample_rows_cycle_and_pad(hf_artifact, tokenizer, tmp_path):
    sample = tmp_path / "texts.txt"
    sample.write_text("hello world\n\nthe quick brown fox jumps\nshort\n")
    builder = InputBuilder(hf_artifact, sample)
    assert builder.source == "tokenizer" and not builder.bundled
    batch = builder.batch(5, 12)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (5, 12)
    decoded = [tokenizer.decode(row.tolist()) for row in ids]
    assert decoded[:3] == ["hello world", "the quick brown fox jumps", "short"]
    assert decoded[3:] == decoded[:2]  # fewer texts than rows: they repeat
    assert mask[0].tolist() == [1] * 4 + [0] * 8  # [CLS] hello world [SEP] then padding
    assert (ids[mask == 0] == tokenizer.token_to_id("[PAD]")).all()


def test_text_sample_is_truncated_to_seq_len(hf_artifact, tmp_path):
    sample = tmp_path / "long.jsonl"
    sample.write_text(json.dumps({"text": "word " * 500}) + "\n")
    batch = InputBuilder(hf_artifact, sample).batch(2, 16)
    assert batch["input_ids"].shape == (2, 16)
    assert (batch["attention_mask"] == 1).all()


# --- from the signature ----------------------------------------------------------------


def test_signature_batch_for_onnx_without_tokenizer(onnx_artifact):
    builder = InputBuilder(onnx_artifact)
    assert builder.source == "signature"
    batch = builder.batch(3, 20)
    assert list(batch) == TEXT_INPUTS
    for array in batch.values():
        assert (array.shape, array.dtype) == ((3, 20), np.int64)
    ids = batch["input_ids"]
    assert ids.min() >= 0 and ids.max() < VOCAB
    assert len(np.unique(ids)) > 30  # spread over the vocabulary
    assert ids.max() > 1000
    assert (batch["attention_mask"] == 1).all()
    assert (batch["token_type_ids"] == 0).all()


def test_signature_batch_depends_on_the_seed(onnx_artifact):
    a = InputBuilder(onnx_artifact, seed=1).batch(2, 16)["input_ids"]
    b = InputBuilder(onnx_artifact, seed=1).batch(2, 16)["input_ids"]
    c = InputBuilder(onnx_artifact, seed=2).batch(2, 16)["input_ids"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_signature_batch_for_hf_without_tokenizer_skips_optional_inputs(tiny_hf, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_hf / name, folder / name)
    builder = InputBuilder(load(folder))
    assert builder.source == "signature"
    batch = builder.batch(2, 10)
    assert list(batch) == ["input_ids"]
    assert batch["input_ids"].shape == (2, 10)
    assert batch["input_ids"].max() < VOCAB


def test_cnn_onnx_gets_float_images(tiny_cnn_onnx):
    batch = InputBuilder(load(tiny_cnn_onnx)).batch(3, 128)
    assert list(batch) == ["pixels"]
    pixels = batch["pixels"]
    assert (pixels.shape, pixels.dtype) == ((3, 1, 8, 8), np.float32)
    assert np.isfinite(pixels).all()
    assert pixels.std() > 0.5  # noise, not zeros


def test_in_memory_cnn_gets_float_images(tiny_cnn):
    import torch

    artifact = load(tiny_cnn, example_inputs=torch.zeros(1, 1, 8, 8))
    batch = InputBuilder(artifact).batch(4, 64)
    assert batch["input"].shape == (4, 1, 8, 8)
    assert batch["input"].dtype == np.float32


# --- text sample files -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("a.txt", "first line\n\n  second line  \r\nthird\n", ["first line", "second line", "third"]),
    ("a.jsonl", '{"text": "one"}\n\n{"text": " two ", "label": 1}\n{"sentence": "three"}\n'
                '{"text": null}\n', ["one", "two", "three"]),
    ("a.csv", 'id,text\n1,hello\n2,"a, quoted, text"\n3,\n', ["hello", "a, quoted, text"]),
    ("a.tsv", "text\tlabel\nfoo bar\t1\nbaz, qux\t0\n", ["foo bar", "baz, qux"]),
    ("a.csv", "query,score\nwhat is it,0.5\n", ["what is it"]),
])
def test_read_texts(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_texts(path) == expected


def test_read_texts_with_a_named_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("title,body\nt1,first body\nt2,second body\n")
    assert read_texts(path, column="body") == ["first body", "second body"]


def test_jsonl_bad_line_names_its_number(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(LeanifyError, match="line 3 is not valid JSON") as exc:
        read_texts(path)
    assert str(path) in str(exc.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n["a", "list"]\n')
    with pytest.raises(LeanifyError, match="line 2 is not an object"):
        read_texts(path)


def test_csv_without_a_text_column_names_the_columns_found(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,body,label\n1,hi,0\n")
    with pytest.raises(LeanifyError) as exc:
        read_texts(path)
    message = str(exc.value)
    assert str(path) in message
    assert "id, body, label" in message
    assert "text" in message  # what it looked for


@pytest.mark.parametrize(("name", "raw", "words"), [
    ("empty.txt", b"\n  \n", "holds no texts"),
    ("latin1.txt", "caf\xe9\n".encode("latin-1"), "UTF-8"),
    ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), "UTF-8"),
])
def test_unreadable_text_samples(tmp_path, name, raw, words):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(LeanifyError, match=words) as exc:
        read_texts(path)
    assert str(path) in str(exc.value)


def test_builder_rejects_missing_and_unknown_sample_files(hf_artifact, tmp_path):
    with pytest.raises(LeanifyError, match="not found") as exc:
        InputBuilder(hf_artifact, tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in str(exc.value)
    other = tmp_path / "sample.parquet"
    other.write_bytes(b"PAR1")
    with pytest.raises(LeanifyError, match=r"\.npz") as exc:
        InputBuilder(hf_artifact, other)
    assert str(other) in str(exc.value)


def test_text_sample_needs_a_tokenizer(onnx_artifact, tmp_path):
    sample = tmp_path / "a.txt"
    sample.write_text("hello\n")
    with pytest.raises(LeanifyError, match="tokenizer") as exc:
        InputBuilder(onnx_artifact, sample)
    assert "--tokenizer" in str(exc.value)


# --- .npz sample files -----------------------------------------------------------------


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_rows_are_tiled_to_the_batch(onnx_artifact, tmp_path):
    ids = np.array([[101, 2000, 2001, 102], [101, 3000, 102, 0]], dtype=np.int32)
    mask = (ids != 0).astype(np.int64)
    sample = _npz(tmp_path / "s.npz", input_ids=ids, attention_mask=mask,
                  token_type_ids=np.zeros_like(mask))
    builder = InputBuilder(onnx_artifact, sample)
    assert builder.source == "sample-arrays"
    batch = builder.batch(5, 128)
    assert batch["input_ids"].dtype == np.int64  # cast to what the model declares
    np.testing.assert_array_equal(batch["input_ids"], ids[[0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], mask[[0, 1, 0, 1, 0]])
    one = builder.batch(1, 128)
    np.testing.assert_array_equal(one["input_ids"], ids[:1])


def test_npz_with_only_some_inputs_fills_the_rest_to_match(onnx_artifact, tmp_path):
    ids = np.array([[101, 2000, 102]], dtype=np.int64)
    sample = _npz(tmp_path / "s.npz", input_ids=ids)
    batch = InputBuilder(onnx_artifact, sample).batch(2, 16)
    assert batch["attention_mask"].shape == batch["input_ids"].shape == (2, 3)


def test_npz_with_a_pickled_object_array_is_refused(onnx_artifact, tmp_path):
    sample = _npz(tmp_path / "s.npz", input_ids=np.array([[1, "two", None]], dtype=object))
    with pytest.raises(LeanifyError, match=r"holds Python objects.*never unpickles") as exc:
        InputBuilder(onnx_artifact, sample)
    assert str(sample) in str(exc.value)


def test_npz_scalar_is_refused(onnx_artifact, tmp_path):
    sample = _npz(tmp_path / "s.npz", input_ids=np.array(5))
    with pytest.raises(LeanifyError, match="scalar"):
        InputBuilder(onnx_artifact, sample)


def test_npz_that_is_not_an_npz(onnx_artifact, tmp_path):
    sample = tmp_path / "s.npz"
    sample.write_bytes(b"not a zip at all")
    with pytest.raises(LeanifyError, match=r"not a readable \.npz"):
        InputBuilder(onnx_artifact, sample)


def test_npz_with_zero_rows_is_refused(onnx_artifact, tmp_path):
    sample = _npz(tmp_path / "s.npz", input_ids=np.zeros((0, 8), dtype=np.int64))
    with pytest.raises(LeanifyError):
        InputBuilder(onnx_artifact, sample).batch(2, 8)
