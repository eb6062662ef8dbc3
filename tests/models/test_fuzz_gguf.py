"""Fuzzing the GGUF header check: mutated files written by the gguf package itself.

read_header must answer every file with a header or a LeanifyError naming it, within the
memory budget and the deadline (tests/fuzzing.py), and never change the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzzing import EDITS, fuzz_settings, mutate, outcome
from hypothesis import given

from leanify.models.gguf import read_header


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "valid.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.ones((3, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    assert not isinstance(outcome(lambda: read_header(path), path), Exception)
    return data


@fuzz_settings(max_examples=150)
@given(edits=EDITS)
def test_mutated_gguf_headers_are_read_or_refused(valid, tmp_path_factory, edits):
    path = Path(tmp_path_factory.mktemp("m")) / "model.gguf"
    path.write_bytes(mutate(valid, edits))
    outcome(lambda: read_header(path), path)
