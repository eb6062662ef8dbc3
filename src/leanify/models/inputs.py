"""Batches for a model: from its tokenizer, from its input signature, or from a user sample file.

Arrays are numpy so that every runner gets the same batch; each runner converts to its runtime.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact, TensorSpec
from leanify.models.files import csv_error, csv_field_limit, decode_text, loads_json

TEXT_SUFFIXES = {".txt", ".jsonl", ".csv", ".tsv"}
SAMPLE_SUFFIXES = TEXT_SUFFIXES | {".npz"}
TEXT_COLUMNS = ("text", "sentence", "sentence1", "content", "query")


class InputBuilder:
    """Builds `{input name: array}` batches of a given batch size and sequence length.

    The source, in order of preference: the user's sample file; the model's tokenizer fed with
    real text (bundled public-domain text unless a text sample is given); the input signature
    (valid ranges, e.g. token ids below the vocabulary size).
    """

    def __init__(self, artifact: Artifact, sample: str | Path | None = None, seed: int = 0):
        self.artifact = artifact
        self.rng = np.random.default_rng(seed)
        self.arrays: dict[str, np.ndarray] | None = None
        self.rows, self.axes = 0, {}
        self.texts: list[str] | None = None
        self.tokenizer = None
        self.bundled = False
        self._pad: tuple[str, int] = ("[PAD]", 0)
        if sample is not None:
            sample = Path(sample)
            if not sample.is_file():
                raise LeanifyError("sample file not found.", path=sample,
                                   fix="Check the --sample path.")
            suffix = sample.suffix.lower()
            if suffix == ".npz":
                self.arrays = read_npz(sample)
                check_arrays(self.arrays, artifact, sample)
                self.rows, self.axes = batch_axes(self.arrays, artifact)
            elif suffix in TEXT_SUFFIXES:
                self.texts = read_texts(sample)
            else:
                raise LeanifyError(
                    f"sample files must be one of {sorted(SAMPLE_SUFFIXES)}.", path=sample,
                    fix="Give texts in .txt/.jsonl/.csv/.tsv, or arrays in .npz.",
                )
        if self.arrays is None and artifact.tokenizer_path is not None and _wants_tokens(artifact):
            self.tokenizer, *pad = load_tokenizer(artifact.tokenizer_path)
            self._pad = (pad[0], pad[1])
            if self.texts is None:
                self.texts, self.bundled = bundled_texts(), True
        if self.texts is not None and self.tokenizer is None:
            raise LeanifyError(
                "a text sample needs the model's tokenizer, and none was found next to the model.",
                path=artifact.path,
                fix="Pass --tokenizer DIR (a folder with tokenizer.json), or give arrays in .npz.",
            )

    @property
    def source(self) -> str:
        if self.arrays is not None:
            return "sample-arrays"
        if self.tokenizer is not None:
            return "tokenizer"
        return "signature"

    def sample_length(self) -> int | None:
        """The length (dim 1) of the sample's first input that has one: what a measured
        point's sequence is when the sample fixes it (e.g. 512 audio samples)."""
        if self.arrays is None:
            return None
        return next((int(a.shape[1]) for k, a in self.arrays.items()
                     if a.ndim >= 2 and self.axes.get(k) == 0), None)

    def batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        if self.arrays is not None:
            out = {k: _resize(v, self.axes[k], batch_size) if k in self.axes else v
                   for k, v in self.arrays.items()}
            # inputs the sample lacks follow the sample's own sequence length
            seq_len = self.sample_length() or seq_len
        elif self.tokenizer is not None:
            out = self._tokenize(batch_size, seq_len)
        else:
            out = {}
        for spec in self.artifact.inputs:  # fill what the other sources did not give
            if spec.name not in out and not spec.optional:
                out[spec.name] = _from_signature(spec, batch_size, seq_len, self.rng,
                                                 self.artifact)
        return {k: _cast(v, self.artifact, k) for k, v in out.items()}

    def _tokenize(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        assert self.texts is not None and self.tokenizer is not None
        tok = self.tokenizer
        tok.enable_truncation(max_length=seq_len)
        tok.enable_padding(length=seq_len, pad_id=self._pad[1], pad_token=self._pad[0])
        texts = self.texts
        rows = []
        for i in range(batch_size):
            if self.bundled:
                # Real text long enough to fill seq_len tokens, a different passage per row.
                start = (i * 37) % len(texts)
                parts, chars = [], 0
                j = start
                while chars < seq_len * 8:
                    parts.append(texts[j % len(texts)])
                    chars += len(parts[-1]) + 1
                    j += 1
                rows.append(" ".join(parts))
            else:
                rows.append(texts[i % len(texts)])
        encodings = tok.encode_batch(rows)
        names = set(self.artifact.input_names)
        out = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64)}
        if "attention_mask" in names:
            out["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if "token_type_ids" in names:
            out["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return out


def _wants_tokens(artifact: Artifact) -> bool:
    return "input_ids" in artifact.input_names


def load_tokenizer(folder: str | Path) -> tuple[Any, str, int]:
    """A fast tokenizer from `folder/tokenizer.json` and its pad token (string, id)."""
    folder = Path(folder)
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise LeanifyError("tokenizing texts needs the Python package 'tokenizers'.",
                           fix="Install it with: pip install 'leanify[torch]'") from exc
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise LeanifyError(
            "has no tokenizer.json (leanify reads fast tokenizers only).", path=folder,
            fix="Save the tokenizer with tokenizer.save_pretrained(...) from transformers, "
            "or point at the model folder it came with.",
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:
        raise LeanifyError(f"is not a readable tokenizer ({exc}).", path=file,
                           fix="Re-save the tokenizer.") from exc
    pad_token = "[PAD]"
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            pad = loads_json(cfg_file.read_bytes(), cfg_file).get("pad_token")
        except (LeanifyError, AttributeError):  # no usable pad token: the default one
            pad = None
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            pad_token = pad
    pad_id = tok.token_to_id(pad_token)
    return tok, pad_token, pad_id if pad_id is not None else 0


_BUNDLED: list[str] | None = None


def bundled_texts() -> list[str]:
    """Public-domain sample text shipped with leanify (see data/PROVENANCE.md)."""
    global _BUNDLED
    if _BUNDLED is None:
        raw = resources.files("leanify.data").joinpath("sample_texts.txt").read_text("utf-8")
        _BUNDLED = [line.strip() for line in raw.splitlines() if line.strip()]
    return _BUNDLED


MAX_SAMPLE_BYTES = 64 << 20  # a sample of texts, not a dataset


def read_texts(path: Path, column: str | None = None) -> list[str]:
    """Texts from .txt (a line each), .jsonl (a field) or .csv/.tsv (a column)."""
    suffix = path.suffix.lower()
    text = decode_text(path, MAX_SAMPLE_BYTES)  # UTF-8, no NUL bytes
    texts: list[str] = []
    if suffix == ".txt":
        texts = [ln.strip() for ln in text.splitlines()]
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            row = loads_json(line, path, f"line {n}", fix="Give one JSON object per line.")
            texts.append(_pick_text(row, column, path, n))
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        line = 1
        try:
            with csv_field_limit():
                for n, row in enumerate(reader, 2):
                    texts.append(_pick_text(row, column, path, n))
                    line = reader.line_num + 1
        except csv.Error as exc:
            raise csv_error(path, exc, line) from exc
    texts = [t for t in texts if t]
    if not texts:
        raise LeanifyError("holds no texts.", path=path, fix="Give at least one non-empty text.")
    return texts


def _pick_text(row: dict, column: str | None, path: Path, line: int) -> str:
    if not isinstance(row, dict):
        raise LeanifyError(f"line {line} is not an object.", path=path,
                           fix="Give one JSON object per line, e.g. {\"text\": \"...\"}.")
    keys = [column] if column else [k for k in TEXT_COLUMNS if k in row]
    if not keys or keys[0] not in row:
        raise LeanifyError(
            f"has no text column (looked for {column or ', '.join(TEXT_COLUMNS)}; found "
            f"{', '.join(map(str, row)) or 'none'}).",
            path=path,
            fix="Name the column 'text'.",
        )
    value = row[keys[0]]
    return str(value).strip() if value is not None else ""


MAX_NPZ_BYTES = 1 << 30  # the arrays of one .npz file, unpacked
MAX_NPZ_ARRAYS = 1000


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; never unpickles (object arrays are refused).

    Every member's header (dtype, shape) is read and checked before any data: a header may
    promise terabytes, and a zip member may unpack to far more than the file's size."""
    fix = "Save it with numpy.savez and plain numeric arrays."
    try:
        if not zipfile.is_zipfile(path):
            raise LeanifyError("is not a readable .npz file (not a zip archive, which "
                               "numpy.savez writes).",
                               path=path, fix=fix)
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if len(members) > MAX_NPZ_ARRAYS:
                raise LeanifyError(f"holds {len(members)} entries; leanify reads at most "
                                   f"{MAX_NPZ_ARRAYS} arrays from a sample.", path=path, fix=fix)
            total = 0
            for info in members:
                total += _npz_member_bytes(zf, info, path, fix)
                if total > MAX_NPZ_BYTES:
                    raise LeanifyError(
                        f"holds more than {MAX_NPZ_BYTES >> 20} MiB of arrays; leanify reads "
                        "samples up to that size.", path=path,
                        fix="Give a smaller sample (a few batches of inputs).")
            out = {}
            for info in members:
                with zf.open(info) as fh:
                    out[info.filename.removesuffix(".npy")] = np.lib.format.read_array(
                        fh, allow_pickle=False)
            return out
    except LeanifyError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: an encrypted member
        raise LeanifyError(f"is not a readable .npz array file ({exc}).", path=path,
                           fix=fix) from exc


def _npz_member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, fix: str) -> int:
    """The bytes an .npz member's array takes, from its .npy header alone."""
    name = info.filename
    if not name.endswith(".npy") or info.is_dir():
        raise LeanifyError(f"holds '{name}', which is not a numpy array (.npy).", path=path,
                           fix=fix)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        header_end = fh.tell()
    if dtype.hasobject:
        raise LeanifyError(
            f"array '{name.removesuffix('.npy')}' holds Python objects, which load only by "
            "unpickling; leanify never unpickles.", path=path, fix=fix)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_NPZ_BYTES:
        raise LeanifyError(
            f"array '{name.removesuffix('.npy')}' has shape {list(shape)} ({dtype}), "
            f"{nbytes / 2**20:.0f} MiB; leanify reads samples up to {MAX_NPZ_BYTES >> 20} MiB.",
            path=path, fix="Give a smaller sample (a few batches of inputs).")
    if info.file_size < header_end + nbytes:
        raise LeanifyError(
            f"array '{name.removesuffix('.npy')}' is truncated: its header promises "
            f"{nbytes} bytes of data, the entry holds {info.file_size - header_end}.",
            path=path, fix=fix)
    return nbytes


def check_arrays(arrays: dict[str, np.ndarray], artifact: Artifact, path: Path) -> None:
    """The arrays fit the model: known names, every required input, no empty arrays, and
    scalars only where the model takes a scalar (e.g. an audio model's sample rate)."""
    names = artifact.input_names
    folded = artifact.meta.get("folded_inputs") or {}  # the runner checks their values
    unknown = sorted(set(arrays) - set(names) - set(folded))
    if unknown:
        raise LeanifyError(
            f"names input(s) {', '.join(unknown)} that the model does not have; the model's "
            f"inputs are: {', '.join(names) or 'unknown'}.",
            path=path,
            fix="Rename the arrays in the .npz to the model's input names.",
        )
    missing = [s.name for s in artifact.inputs if s.name not in arrays and not s.optional]
    if missing and not all(_can_synthesize(s) for s in artifact.inputs if s.name in missing):
        raise LeanifyError(
            f"lacks input(s) {', '.join(missing)} that the model needs.", path=path,
            fix="Add an array for each of them to the .npz.",
        )
    specs = {s.name: s for s in artifact.inputs}
    for name, array in arrays.items():
        if name not in specs:
            continue
        declared = specs[name].shape
        if array.ndim == 0 and declared not in ((), None):
            raise LeanifyError(
                f"holds a scalar for input '{name}', which the model declares with shape "
                f"{list(declared)}.", path=path, fix="Save that array shaped (batch, ...).")
        if array.ndim and 0 in array.shape:
            raise LeanifyError(f"array '{name}' is empty (shape {list(array.shape)}).",
                               path=path, fix="Save at least one row per input.")


def cast_to_model(arrays: dict[str, np.ndarray], artifact: Artifact) -> dict[str, np.ndarray]:
    """Arrays in the dtypes the model declares, contiguous."""
    return {k: _cast(v, artifact, k) for k, v in arrays.items()}


def batch_axes(arrays: dict[str, np.ndarray], artifact: Artifact) -> tuple[int, dict[str, int]]:
    """(rows, {input: its batch axis}) of a sample. The batch is dim 0 of the first input with
    a dynamic first dim; in every input it is the first dynamic dim of that size (a recurrent
    state [layers, batch, hidden] has it in dim 1). Scalars and inputs without such a dim
    have none: they are passed as they are at every batch size."""
    specs = {s.name: s for s in artifact.inputs}

    def dynamic(name: str, axis: int) -> bool:
        shape = specs[name].shape if name in specs else None
        return shape is None or len(shape) != arrays[name].ndim or isinstance(shape[axis], str)

    rows = next((a.shape[0] for k, a in arrays.items() if a.ndim and dynamic(k, 0)), None)
    if rows is None:
        return 0, {}
    axes = {}
    for name, array in arrays.items():
        axis = next((i for i in range(array.ndim) if array.shape[i] == rows
                     and dynamic(name, i)), None)
        if axis is not None:
            axes[name] = axis
    return rows, axes


def _resize(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Rows repeated (or cut) along `axis` to `size`."""
    reps = -(-size // array.shape[axis])
    if reps > 1:
        array = np.concatenate([array] * reps, axis=axis)
    return np.take(array, np.arange(size), axis=axis)


def _can_synthesize(spec: TensorSpec) -> bool:
    return spec.dtype != "unknown" and spec.shape is not None


def _from_signature(
    spec: TensorSpec, batch_size: int, seq_len: int, rng: np.random.Generator,
    artifact: Artifact,
) -> np.ndarray:
    if not _can_synthesize(spec):
        raise LeanifyError(
            f"leanify cannot tell the type and shape of input '{spec.name}' from the model.",
            path=artifact.path,
            fix="Give a sample with --sample FILE.npz holding an array per input name.",
        )
    dtype = np.dtype(spec.dtype)
    # The requested shape: dim 0 is the batch; dim 1 of a token tensor (rank 2, integers) and
    # any other dynamic dim is the sequence. Fixed dims stay; a fixed batch or sequence that
    # differs from the request is refused by the runner's check, never silently measured.
    tokens = len(spec.shape) == 2 and np.issubdtype(dtype, np.integer)
    shape = []
    for i, dim in enumerate(spec.shape):
        if i == 0:
            shape.append(batch_size)
        elif isinstance(dim, str) or (i == 1 and tokens):
            shape.append(seq_len)
        else:
            shape.append(dim)
    if "mask" in spec.name:
        return np.ones(shape, dtype=dtype)
    if "token_type" in spec.name:
        return np.zeros(shape, dtype=dtype)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        if spec.low is None or spec.high is None:
            raise LeanifyError(
                f"input '{spec.name}' is an integer tensor whose valid range leanify cannot "
                "tell from the model.",
                path=artifact.path,
                fix="Give a sample with --sample FILE.npz (or a tokenizer with --tokenizer).",
            )
        return rng.integers(spec.low, spec.high, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _cast(array: np.ndarray, artifact: Artifact, name: str) -> np.ndarray:
    spec = next((s for s in artifact.inputs if s.name == name), None)
    if spec is None or spec.dtype == "unknown" or array.dtype.name == spec.dtype:
        return contiguous(array)
    return contiguous(array.astype(np.dtype(spec.dtype)))


def contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping a scalar a scalar (np.ascontiguousarray makes it 1-d)."""
    return np.require(array, requirements="C")
