"""GGUF files: the static header check refuses hostile or damaged headers before any library
parses them (exit 2, naming the file), without allocating what the header claims."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.gguf import read_header
from leanify.models.load import load


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(*, magic=b"GGUF", version=3, kvs=None, n_kv=None, tensors=None,
               n_tensors=None, data=b"\0" * 128) -> bytes:
    """A GGUF file written by hand, so each field can be made hostile on its own."""
    kvs = kvs if kvs is not None else [_s("general.architecture") + struct.pack("<I", 8)
                                       + _s("llama")]
    tensors = tensors if tensors is not None else [
        _s("tok.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 4)
        + struct.pack("<I", 0) + struct.pack("<Q", 0)]  # f32, 8 x 4 values = 128 bytes
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else
                               n_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + data


@pytest.fixture
def write(tmp_path):
    def _write(raw: bytes, name: str = "model.gguf") -> Path:
        path = tmp_path / name
        path.write_bytes(raw)
        return path
    return _write


def test_a_file_written_by_the_gguf_package_passes(tmp_path):
    import gguf

    path = tmp_path / "ok.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    assert header.architecture == "llama" and header.metadata["tokenizer.ggml.tokens"] == 3
    assert header.tensors["blk.0.attn_q.weight"]["nbytes"] == 32 * 32 * 2
    assert read_header(Path(path)).data_offset % 32 == 0


@pytest.mark.parametrize(("raw", "message"), [
    (gguf_bytes(magic=b"GGML"), "does not start with 'GGUF'"),
    (gguf_bytes(version=99), "GGUF version 99"),
    (gguf_bytes(n_kv=2**63), "metadata entries, more than the file can hold"),
    (gguf_bytes(n_tensors=2**40), "tensors, more than the file can hold"),
    (gguf_bytes(kvs=[struct.pack("<Q", 2**62) + b"key"]), "claims 4611686018427387904 bytes"),
    (gguf_bytes(kvs=[_s("t") + struct.pack("<I", 8) + struct.pack("<Q", 2**40)]),
     "claims 1099511627776 bytes"),
    (gguf_bytes(kvs=[_s("a") + struct.pack("<IIQ", 9, 4, 2**50)]), "needs 4503599627370496"),
    (gguf_bytes(kvs=[_s("a") + struct.pack("<IIQ", 9, 8, 2**50)]), "claims 1125899906842624 "
     "items"),
    (gguf_bytes(kvs=[_s("a") + struct.pack("<IIQIQIQ", 9, 9, 1, 9, 1, 9, 1)]),
     "nests arrays deeper"),
    (gguf_bytes(kvs=[_s("a") + struct.pack("<I", 77)]), "unknown value type 77"),
    (gguf_bytes(tensors=[_s("w") + struct.pack("<IQQIQ", 2, 8, 4, 0, 2**20)]),
     "outside the file"),
    (gguf_bytes(tensors=[_s("w") + struct.pack("<IQQIQ", 2, 2**31, 2**31, 0, 0)]),
     "outside the file"),
    (gguf_bytes(tensors=[_s("w") + struct.pack("<IQIQ", 1, 8, 999, 0)]), "unknown data type"),
    (gguf_bytes(tensors=[_s("w") + struct.pack("<I", 9) + b"\0" * 80]), "rank 9"),
    (gguf_bytes()[:60], "needs"),
    (gguf_bytes(tensors=[]), "without tensors"),
])
def test_hostile_headers_are_refused_fast(write, raw, message):
    path = write(raw)
    start = time.perf_counter()
    with pytest.raises(LeanifyError, match=message) as info:
        load(path)
    assert time.perf_counter() - start < 1.0  # no allocation or loop of the claimed sizes
    assert str(path) in info.value.render()


def test_cli_exit_2_names_the_file(write, tmp_path):
    path = write(gguf_bytes(n_kv=2**63), "evil.gguf")
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "info", str(path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LEANIFY_CACHE": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "evil.gguf" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
