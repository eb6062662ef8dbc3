"""File checks done before any heavy loader sees a file: format sniffing, truncation, pickles.

Untrusted model files are an attack vector. Pickle executes code on load, so leanify never
unpickles by default; when the user opts in, tensors are still read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

from leanify.errors import LeanifyError
from leanify.models.files import loads_json, shorten

TRUST_FLAG = "--trust-pickle (Python: trust_pickle=True)"
TRUST_CODE_FLAG = "--trust-code (Python: trust_code=True)"
# Members of a .pt2 archive that are code, not data: AOTInductor packages hold a shared
# library (its constructor runs on load) and compile flags whose "compiler" torch passes to
# system(); ExecuTorch and MTIA payloads are compiled programs too.
CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
CODE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".o", ".cpp", ".c", ".h", ".py",
                 "_compile_flags.json", "_linker_flags.json")
# torch's serde ScalarType -> bytes per element (schema.py; unknown types are not checked)
ELEMENT_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1,
                 13: 2, 28: 2, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8}


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


TRUST_CODE_ENV = "LEANIFY_TRUST_CODE"  # set while a command runs with --trust-code
OUTPUTS_ENV = "LEANIFY_OWN_OUTPUTS"  # folders a running command writes its own models to


def code_trusted(explicit: bool | None, path: Path | None = None) -> bool:
    """The caller's choice, else what the enclosing command allows (inherited by the
    measuring workers and by the passes' loads of their own outputs). A file under a folder
    the running command writes its candidates to is leanify's own output (e.g. the
    TorchScript that torch-dynamic-int8 makes from a safetensors model)."""
    if explicit is not None:
        return bool(explicit)
    if os.environ.get(TRUST_CODE_ENV) == "1":
        return True
    own = [Path(p) for p in os.environ.get(OUTPUTS_ENV, "").split(os.pathsep) if p]
    return path is not None and any(path.resolve().is_relative_to(folder) for folder in own)


@contextlib.contextmanager
def own_outputs(folder: str | os.PathLike | None) -> Iterator[None]:
    """Within the block (and its child processes) files under `folder` are leanify's own."""
    before = os.environ.get(OUTPUTS_ENV)
    folders = [p for p in (before or "").split(os.pathsep) if p]
    if folder is not None:
        folders.append(str(Path(folder).expanduser().resolve()))
    os.environ[OUTPUTS_ENV] = os.pathsep.join(folders)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OUTPUTS_ENV, None)
        else:
            os.environ[OUTPUTS_ENV] = before


@contextlib.contextmanager
def trusting_code(trust: bool) -> Iterator[None]:
    """Within the block (and in the processes it starts) loads allow code when `trust`."""
    before = os.environ.get(TRUST_CODE_ENV)
    if trust:
        os.environ[TRUST_CODE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUST_CODE_ENV, None)
        else:
            os.environ[TRUST_CODE_ENV] = before


def refuse_code(path: Path, what: str) -> LeanifyError:
    return LeanifyError(
        f"{what} is code, not just weights: loading it runs whatever its author wrote (it can "
        "write files or start programs), so leanify will not load it by default.",
        path=path,
        fix=f"If you trust where it came from, pass {TRUST_CODE_FLAG}; leanify then inspects it "
        "in a child process with memory, CPU and file-write limits. Better: export the model "
        "to ONNX or to a plain torch.export .pt2 (torch.export.save) and load that.",
    )


def unsafe_member_name(name: str) -> bool:
    """An absolute name or one with '..' segments would land outside any folder it is
    extracted to (zip slip)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


def check_pt2_archive(path: Path, trust_pickle: bool, trust_code: bool) -> None:
    """Refuse what torch.export.load would execute or blow up on, before torch sees the file.

    Reads only the zip directory and the small JSON payload configs: member names (zip slip,
    compiled code), pickled payloads, and every tensor's declared size against the bytes the
    archive really stores for it (torch allocates the declared shape for an empty record).
    """
    fix = "Re-save it with torch.export.save from a model you trust."
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                if unsafe_member_name(info.filename):
                    raise LeanifyError(
                        f"holds an entry named '{info.filename}', which points outside the "
                        "archive's folder; leanify refuses such archives.", path=path, fix=fix)
            entries = {i.filename.split("/", 1)[1]: i for i in infos if "/" in i.filename}
            code = [e for e in entries if e.startswith(CODE_DIRS) or e.endswith(CODE_SUFFIXES)]
            if code and not trust_code:
                raise refuse_code(path, f"This archive's entry '{code[0]}' (compiled model code)")
            for config_name in sorted(e for e in entries if e.startswith(("data/weights/",
                                       "data/constants/")) and e.endswith("_config.json")):
                folder = config_name.rsplit("/", 1)[0]
                _check_payloads(path, zf, entries, config_name, folder, trust_pickle)
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise LeanifyError(f"the archive is damaged ({exc}).", path=path,
                           fix="Re-save or re-download the model.") from exc


def _check_payloads(path: Path, zf: zipfile.ZipFile, entries: dict, config_name: str,
                    folder: str, trust_pickle: bool) -> None:
    bad = LeanifyError(f"has a damaged payload table '{config_name}'.", path=path,
                       fix="Re-save it with torch.export.save.")
    try:
        table = loads_json(zf.read(entries[config_name]), path, f"entry '{config_name}'")["config"]
        items = list(table.items())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise bad from exc
    for fqn, meta in items:
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise bad
        name = meta["path_name"]
        if name.startswith(("custom_obj_", "opaque_obj_")):
            raise LeanifyError(
                f"stores '{fqn}' as a pickled Python object, which only a full unpickle "
                "(it can run any code) reads; leanify never runs one, whatever the flags.",
                path=path, fix="Export the model without custom objects (ONNX or a plain .pt2).")
        if meta.get("use_pickle"):
            if not trust_pickle:
                raise refuse_pickle(path, f"The archive's tensor '{fqn}'")
            continue  # read by torch.load, which weights_only_torch_load keeps weights-only
        record = entries.get(f"{folder}/{name}")
        stored = record.file_size if record is not None else 0
        needed = _declared_bytes(meta.get("tensor_meta"))
        if needed is not None and needed > stored:
            raise LeanifyError(
                f"declares tensor '{fqn}' of {needed:,} bytes, but the archive stores "
                f"{stored:,} bytes for it; leanify refuses it before allocating anything.",
                path=path, fix="The file is damaged or crafted: re-export the model.")


def _declared_bytes(tensor_meta: object) -> int | None:
    """Bytes a tensor's sizes, strides and offset reach into its storage; None when symbolic."""
    if not isinstance(tensor_meta, dict):
        return None
    try:
        sizes = [d["as_int"] for d in tensor_meta["sizes"]]
        strides = [d["as_int"] for d in tensor_meta["strides"]]
        offset = tensor_meta.get("storage_offset", {"as_int": 0})["as_int"]
        element = ELEMENT_BYTES.get(int(tensor_meta["dtype"]))
    except (KeyError, TypeError, ValueError):
        return None
    if element is None or not all(isinstance(v, int) for v in (*sizes, *strides, offset)):
        return None
    if any(s == 0 for s in sizes):
        return 0
    reach = offset + sum((s - 1) * abs(st) for s, st in zip(sizes, strides, strict=False)) + 1
    return max(reach, 0) * element


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
    case pickled tensors load, still through the weights-only reader. A full unpickle
    (pickle.loads, torch's object unpickler) is refused whatever the flags.
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
            if not trust_pickle:
                raise refuse_pickle(path, "part of this archive") from exc
            raise LeanifyError(
                "holds a pickle that is more than tensors (a weights-only read refused it); "
                "leanify never runs a full unpickle, --trust-pickle included.", path=path,
                fix="Re-save the model with plain tensors (torch.export.save, ONNX).") from exc

    def refuse_loads(*_args, **_kwargs):
        raise refuse_pickle(path, "an object in this archive")

    patches = [mock.patch("torch.load", safe_load), mock.patch("pickle.loads", refuse_loads),
               mock.patch("torch._C._pickle_load_obj", refuse_loads)]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield
