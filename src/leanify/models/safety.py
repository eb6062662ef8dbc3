"""File checks done before any heavy loader sees a file: format sniffing, truncation, pickles.

Untrusted model files are an attack vector. Pickle executes code on load, so leanify never
unpickles by default; when the user opts in, tensors are still read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

from leanify.errors import LeanifyError

TRUST_FLAG = "--trust-pickle (Python: trust_pickle=True)"


def zip_names(path: Path) -> list[str] | None:
    """Entry names if `path` is a zip archive (TorchScript, .pt2 and torch.save all are)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
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


def check_safetensors(path: Path) -> dict[str, dict]:
    """Validate a safetensors file's header and length without loading tensors.

    Returns the tensor table (name -> dtype, shape, data_offsets). A truncated or corrupt file
    raises a LeanifyError naming the file.
    """
    fix = "The file is damaged or incomplete: re-download or re-save the model."
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise LeanifyError("is not a safetensors file (too short).", path=path, fix=fix)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len <= 0 or header_len > min(size - 8, 100 << 20):
            raise LeanifyError("has a corrupt safetensors header.", path=path, fix=fix)
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LeanifyError("has a corrupt safetensors header.", path=path, fix=fix) from exc
    if not isinstance(header, dict):
        raise LeanifyError("has a corrupt safetensors header.", path=path, fix=fix)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise LeanifyError("has a corrupt safetensors header.", path=path, fix=fix) from exc
    expected = 8 + header_len + end
    if size < expected:
        raise LeanifyError(
            f"is truncated: the header promises {expected} bytes but the file has {size}.",
            path=path,
            fix=fix,
        )
    return tensors


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
