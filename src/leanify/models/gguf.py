"""GGUF files (llama.cpp's format): a static header check, then conversion to a Hugging Face
safetensors folder that every other part of leanify already reads.

Why a header check of our own before any library parses the file: GGUF readers trust the
counts and lengths in the header; a hostile file can then ask for gigabytes or loop for hours.
Here every count and length is bounded by what the file can hold, every tensor's data must lie
inside the file, and nothing is read into memory beyond one bounded string at a time.

Why convert: transformers dequantizes a GGUF into a normal `*ForCausalLM`, so the runners,
tasks and passes work on it unchanged. The converted folder is cached by the file's sha256
(under `LEANIFY_CACHE`, else ~/.cache/leanify), so only the first load pays for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from leanify.errors import LeanifyError, first_line, require
from leanify.models.files import SIDECAR

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_KEY = 1 << 16  # bytes in a metadata key
MAX_STRING = 1 << 24  # bytes in one string value (chat templates are a few KB)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DEPTH = 2  # arrays of arrays, no deeper
DEFAULT_ALIGNMENT = 32
# value type -> struct format of a scalar (8: string, 9: array)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
FIX = "The file is damaged, truncated or not a GGUF model: re-download it."


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # scalars and strings; arrays as their length
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> shape, type
    data_offset: int = 0

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Reader:
    """Bounded reads: every length is checked against what is left of the file first."""

    def __init__(self, fh: BinaryIO, size: int, path: Path):
        self.fh, self.size, self.path = fh, size, path

    def left(self) -> int:
        return self.size - self.fh.tell()

    def fail(self, what: str) -> LeanifyError:
        return LeanifyError(f"is not a valid GGUF file: {what} (at byte {self.fh.tell()}).",
                            path=self.path, fix=FIX)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left():
            raise self.fail(f"{what} needs {n} bytes, the file has {self.left()} left")
        return self.fh.read(n)

    def skip(self, n: int, what: str) -> None:
        if n < 0 or n > self.left():
            raise self.fail(f"{what} needs {n} bytes, the file has {self.left()} left")
        self.fh.seek(n, os.SEEK_CUR)

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        n = self.scalar("<Q", f"the length of {what}")
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes (more than {limit})")
        return self.take(n, what).decode("utf-8", errors="replace")

    def value(self, kind: int, what: str, depth: int = 0) -> Any:
        if kind in SCALARS:
            return self.scalar(SCALARS[kind], what)
        if kind == STRING:
            return self.string(what)
        if kind != ARRAY:
            raise self.fail(f"{what} has unknown value type {kind}")
        if depth >= MAX_DEPTH:
            raise self.fail(f"{what} nests arrays deeper than {MAX_DEPTH}")
        item = self.scalar("<I", f"the item type of {what}")
        count = self.scalar("<Q", f"the length of {what}")
        if item in SCALARS:  # fixed-size items: check the extent and jump over it
            self.skip(count * struct.calcsize(SCALARS[item]), what)
            return count
        if item not in (STRING, ARRAY):
            raise self.fail(f"{what} has unknown item type {item}")
        if count > self.left() // 8:  # every string or array item takes at least 8 bytes
            raise self.fail(f"{what} claims {count} items, more than the file can hold")
        for _ in range(count):
            if item == STRING:
                self.skip(self._string_length(what), what)
            else:
                self.value(ARRAY, what, depth + 1)
        return count

    def _string_length(self, what: str) -> int:
        n = self.scalar("<Q", f"the length of an item of {what}")
        if n > MAX_STRING:
            raise self.fail(f"an item of {what} claims {n} bytes (more than {MAX_STRING})")
        return n


def read_header(path: Path) -> GGUFHeader:
    """Check a GGUF file's header and tensor table without trusting any count in it."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        r = _Reader(fh, size, path)
        if size < 24 or fh.read(4) != MAGIC:
            raise LeanifyError("is not a GGUF file (it does not start with 'GGUF').",
                               path=path, fix=FIX)
        version = r.scalar("<I", "the version")
        if version not in VERSIONS:
            raise LeanifyError(f"is GGUF version {version}; leanify reads versions "
                               f"{', '.join(map(str, VERSIONS))}.", path=path,
                               fix="Re-convert it with a current llama.cpp (convert_hf_to_gguf).")
        n_tensors = r.scalar("<Q", "the tensor count")
        n_kv = r.scalar("<Q", "the metadata count")
        # a metadata entry takes at least 8 + 4 + 1 bytes, a tensor entry 8 + 4 + 8 + 4 + 8
        if n_kv > r.left() // 13:
            raise r.fail(f"it claims {n_kv} metadata entries, more than the file can hold")
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = r.string(f"metadata key {i}", MAX_KEY)
            kind = r.scalar("<I", f"the type of '{key}'")
            metadata[key] = r.value(kind, f"'{key}'")
        if n_tensors > r.left() // 32:
            raise r.fail(f"it claims {n_tensors} tensors, more than the file can hold")
        sizes = _block_sizes()
        tensors: dict[str, dict[str, Any]] = {}
        for i in range(n_tensors):
            name = r.string(f"the name of tensor {i}", MAX_KEY)
            n_dims = r.scalar("<I", f"the rank of '{name}'")
            if not 1 <= n_dims <= MAX_DIMS:
                raise r.fail(f"tensor '{name}' has rank {n_dims} (GGUF allows 1 to {MAX_DIMS})")
            shape = [r.scalar("<Q", f"a dim of '{name}'") for _ in range(n_dims)]
            ggml_type = r.scalar("<I", f"the type of '{name}'")
            offset = r.scalar("<Q", f"the offset of '{name}'")
            if ggml_type not in sizes:
                raise r.fail(f"tensor '{name}' has unknown data type {ggml_type}")
            block, type_size = sizes[ggml_type]
            numel = 1
            for d in shape:
                numel *= d
            if shape[0] % block:
                raise r.fail(f"tensor '{name}' row of {shape[0]} is not a whole number of "
                             f"{block}-value blocks")
            tensors[name] = {"shape": shape, "type": ggml_type, "offset": offset,
                             "nbytes": numel // block * type_size}
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise r.fail(f"general.alignment {alignment!r} is not a power of two")
        data_offset = -(-fh.tell() // alignment) * alignment
    for name, info in tensors.items():
        end = data_offset + info["offset"] + info["nbytes"]
        if info["offset"] % alignment or end > size:
            raise LeanifyError(
                f"is not a valid GGUF file: tensor '{name}' lies at bytes "
                f"{data_offset + info['offset']}-{end}, outside the file ({size} bytes) or "
                "misaligned.", path=path, fix=FIX)
    if not tensors:
        raise LeanifyError("is a GGUF file without tensors.", path=path, fix=FIX)
    return GGUFHeader(version, metadata, tensors, data_offset)


def _block_sizes() -> dict[int, tuple[int, int]]:
    """ggml type -> (values per block, bytes per block), from the gguf package's table."""
    constants = require("gguf.constants", "llm", "Reading GGUF files")
    return {int(k): (int(v[0]), int(v[1])) for k, v in constants.GGML_QUANT_SIZES.items()}


# --- conversion ------------------------------------------------------------------------


def cache_root() -> Path:
    root = os.environ.get("LEANIFY_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "leanify"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(path: Path) -> Path:
    """The Hugging Face folder for a GGUF file, converted once and cached by content."""
    header = read_header(path)
    target = cache_root() / "gguf" / sha256(path)
    if (target / "config.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeanifyError(f"the conversion cache {target.parent} cannot be created ({exc}).",
                           path=path, fix="Point LEANIFY_CACHE at a writable folder.") from exc
    _convert(path, header, target)
    return target


@contextmanager
def _parse_once():
    """transformers parses the GGUF file once for the config, once for the weights and once
    for the tokenizer, and rebuilds gguf's tensor-name table once per submodule (SmolLM2:
    3 parses + 397 tables, most of a minute here). Both are pure functions of their
    arguments: memoize them while converting, then put the originals back."""
    import gguf as gguf_py

    reader_cls, name_map = gguf_py.GGUFReader, gguf_py.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path: Any, mode: str = "r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    gguf_py.GGUFReader = reader
    gguf_py.get_tensor_name_map = lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf_py.GGUFReader, gguf_py.get_tensor_name_map = reader_cls, name_map


def _convert(path: Path, header: GGUFHeader, target: Path) -> None:
    """Dequantize with transformers, then save a plain safetensors folder.

    `save_pretrained` refuses a GGUF-loaded model (its config keeps a quantization_config):
    drop it, build the model from the config, load the state dict, save. Written to a
    temporary folder next to the target, then renamed: a crash leaves no half folder.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require("gguf", "llm", "Converting GGUF files")
    transformers = require("transformers", "llm", "Converting GGUF files")
    torch = require("torch", "llm", "Converting GGUF files")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    folder, name = str(path.parent), path.name
    try:
        with _parse_once():
            loaded = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, local_files_only=True, trust_remote_code=False)
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                folder, gguf_file=name, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError/KeyError/RuntimeError here
        raise LeanifyError(
            f"transformers could not convert this GGUF file ({first_line(exc)}; architecture "
            f"'{header.architecture}').", path=path,
            fix="leanify converts the GGUF architectures transformers supports (llama, "
            "mistral, qwen2, qwen3, phi3, gemma, gpt2...); use the original Hugging Face "
            "folder otherwise.") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(state, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / SIDECAR).write_text(json.dumps({
            "converted_from": {"format": "gguf", "file": path.name, "version": header.version,
                               "architecture": header.architecture,
                               "file_type": header.metadata.get("general.file_type")},
        }, indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted the same file meanwhile: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
