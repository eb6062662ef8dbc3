"""File checks done before any heavy loader sees a file: format sniffing, truncation, pickles.

Untrusted model files are an attack vector. Pickle executes code on load, so leanify never
unpickles by default; when the user opts in, tensors are still read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

from leanify.errors import LeanifyError
from leanify.models.files import loads_json, shorten

TRUST_FLAG = "--trust-pickle (Python: trust_pickle=True)"


def zip_names(path: Path) -> list[str] | None:
    """Entry names if `path` is a zip archive (TorchScript, .pt2 and torch.save all are)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    # ValueError: e.g. an entry name flagged UTF-8 that is not; EOFError, NotImplementedError:
    # a central directory cut short or using a zip feature Python lacks
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise LeanifyError(
            f"the archive is damaged ({exc}).", path=path, fix="Re-save or re-download the model."
        ) from exc


def sniff_torch_archive(path: Path) -> str:
    """Tell a TorchScript archive, a torch.export archive and a plain pickle apart."""
    names = zip_names(path)
    if names is None:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80":  # pickle protocol opcode: a legacy torch.save file
            return "pickle"
        return "unknown"
    # Entries sit under one top folder named after the file: "<root>/<entry>".
    entries = {n.split("/", 1)[1] for n in names if "/" in n}
    if "archive_format" in entries:
        return "pt2"
    if "constants.pkl" in entries and any(e.startswith("code/") for e in entries):
        return "torchscript"
    if "data.pkl" in entries:
        return "pickle"
    return "unknown"


def refuse_pickle(path: Path, what: str) -> LeanifyError:
    return LeanifyError(
        f"{what} is a Python pickle, which can run arbitrary code when loaded, so leanify will not "
        "load it by default.",
        path=path,
        fix=f"If you trust where it came from, pass {TRUST_FLAG}; tensors are then read with "
        "torch.load(weights_only=True). Better: save the model as safetensors, ONNX or .pt2.",
    )


# Bits per element of each dtype the safetensors format defines.
SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
    "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6,
    "F6_E3M2": 6,
}
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit
MAX_DIMS = 64


def check_safetensors(path: Path) -> dict[str, dict]:
    """Validate a safetensors file's header and length without loading tensors.

    Returns the tensor table (name -> dtype, shape, data_offsets). Checked as the format
    requires, so that no reader downstream meets a surprise: a known dtype, a shape of
    non-negative ints, offsets that hold exactly dtype x shape bytes, tensors that neither
    overlap nor leave gaps, and data that fills the file to its end.
    """
    fix = "The file is damaged or incomplete: re-download or re-save the model."
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise LeanifyError("is not a safetensors file (too short).", path=path, fix=fix)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len <= 0 or header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise LeanifyError(
                f"has a corrupt safetensors header (it declares {header_len} bytes of header; "
                f"the file has {size}).", path=path, fix=fix)
        text = fh.read(header_len)
    try:
        header = loads_json(text, path, fix=fix)
    except LeanifyError as exc:
        raise LeanifyError(f"has a corrupt safetensors header (it {exc.message.rstrip('.')}).",
                           path=path, fix=fix) from exc
    if not isinstance(header, dict):
        raise LeanifyError("has a corrupt safetensors header (not a JSON object).", path=path,
                           fix=fix)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LeanifyError("has a corrupt safetensors header ('__metadata__' must map names "
                           "to strings).", path=path, fix=fix)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = sorted((_tensor_span(path, name, entry, fix), name) for name, entry in tensors.items())
    data_len = size - 8 - header_len
    end = 0
    for (begin, stop), name in spans:
        if begin != end:
            what = "overlaps the previous tensor" if begin < end else "leaves a gap before it"
            raise LeanifyError(
                f"has a corrupt safetensors header: tensor {shorten(name)} starts at byte "
                f"{begin}, which {what} (ends at {end}).", path=path, fix=fix)
        end = stop
    if data_len < end:
        raise LeanifyError(
            f"is truncated: the header promises {8 + header_len + end} bytes but the file has "
            f"{size}.", path=path, fix=fix)
    if data_len > end:
        raise LeanifyError(
            f"has {data_len - end} bytes after its last tensor's data, which the safetensors "
            "format does not allow.", path=path, fix=fix)
    return tensors


def _tensor_span(path: Path, name: str, entry: object, fix: str) -> tuple[int, int]:
    """(begin, end) of one tensor's data, checked against its dtype and shape."""
    def bad(why: str) -> LeanifyError:
        return LeanifyError(f"has a corrupt safetensors header: tensor {shorten(name)} {why}.",
                            path=path, fix=fix)

    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise bad("needs 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_BITS:
        raise bad(f"has an unknown dtype {shorten(dtype)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_count(d) for d in shape):
        raise bad(f"has shape {shorten(shape)}, not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets)) \
            or offsets[0] > offsets[1]:
        raise bad(f"has data_offsets {shorten(offsets)}, not two integers [begin, end] with "
                  "begin <= end")
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise bad(f"of {dtype} and shape {shape} takes {bits / 8:g} bytes, but its data_offsets "
                  f"hold {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def _count(value: object) -> bool:
    """A non-negative int (JSON true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@contextlib.contextmanager
def weights_only_torch_load(path: Path, trust_pickle: bool) -> Iterator[None]:
    """Force every torch.load inside the block to weights_only=True.

    torch.export.load falls back to weights_only=False (and plain pickle.loads) for some
    payloads. Inside this block those paths refuse, unless the user trusts the file, in which
    case opaque objects may load but tensors still go through the weights-only reader.
    """
    import pickle
    from unittest import mock

    import torch

    real_load = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise refuse_pickle(path, "part of this archive") from exc

    def refuse_loads(*_args, **_kwargs):
        raise refuse_pickle(path, "an object in this archive")

    patches = [mock.patch("torch.load", safe_load)]
    if not trust_pickle:
        patches.append(mock.patch("pickle.loads", refuse_loads))
        patches.append(mock.patch("torch._C._pickle_load_obj", refuse_loads))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield
