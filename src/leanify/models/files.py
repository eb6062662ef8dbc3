"""What every format loader reads beside the model: leanify's sidecar, tokenizer files, JSON,
and the valid range of integer inputs."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError

SIDECAR = "leanify_model.json"  # task, pooling, labels, runtime settings... written by passes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")

# Limits on what an untrusted text file can make leanify parse. Real configs nest a few
# levels and hold numbers of a few digits; past these a file is damaged or hostile, and
# without them Python's json raises RecursionError / ValueError from deep inside.
MAX_JSON_DEPTH = 64
MAX_NUMBER_CHARS = 40  # a float64 needs at most ~25 characters
MAX_JSON_BYTES = 64 << 20  # config.json, sidecars, tokenizer_config.json: a few KB
MAX_FIELD_CHARS = 1 << 20  # one CSV/TSV field (a text of ~200k words)


def shorten(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters (a message must not quote 10 MB)."""
    text = repr(value)
    size = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({size} characters)"


class _NumberTooLong(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(text)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(text)
    return float(text)


# One decoder for every call: json.loads with hooks builds a new one each time (a third of
# the time of reading a JSONL file).
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, [] is 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads_json(text: str | bytes, path: Path, where: str = "",
               fix: str = "Repair or re-download the file.") -> Any:
    """json.loads for untrusted text: bad JSON, nesting deeper than MAX_JSON_DEPTH and
    numbers longer than MAX_NUMBER_CHARS become a LeanifyError naming `path` (and `where`,
    e.g. "line 4", inside it)."""
    at = f"{where} " if where else ""
    try:
        if isinstance(text, bytes):  # json.loads would guess UTF-16/32 from the first bytes
            text = text.decode("utf-8-sig")
        value = _DECODER.decode(text)
    except _NumberTooLong as exc:
        raise LeanifyError(
            f"{at}holds a number {len(exc.text)} characters long ({shorten(exc.text)}); "
            f"leanify reads numbers of at most {MAX_NUMBER_CHARS} characters.",
            path=path, fix="Write that number shorter (a score as 4.25, an id as 1234), or "
            "repair the file.",
        ) from None
    except RecursionError:
        raise LeanifyError(
            f"{at}nests JSON arrays/objects deeper than {MAX_JSON_DEPTH} levels.",
            path=path, fix=fix,
        ) from None
    except json.JSONDecodeError as exc:
        place = f" at column {exc.colno}" if where else f" at line {exc.lineno} column {exc.colno}"
        raise LeanifyError(f"{at}is not valid JSON ({exc.msg}{place}).", path=path,
                           fix=fix) from exc
    except UnicodeDecodeError as exc:
        raise LeanifyError(f"{at}is not UTF-8 text.", path=path, fix=fix) from exc
    # Only text with that many brackets can nest that deep (str.count is cheap; the walk is not).
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        raise LeanifyError(
            f"{at}nests JSON arrays/objects deeper than {MAX_JSON_DEPTH} levels.",
            path=path, fix=fix,
        )
    return value


def read_json(path: Path) -> dict:
    """A small JSON file holding one object (config.json, a sidecar), checked as untrusted."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise LeanifyError(
            f"is {size / 2**20:.0f} MiB; a JSON settings file is a few KB (leanify reads up "
            f"to {MAX_JSON_BYTES >> 20} MiB).", path=path, fix="Repair or re-download the file.")
    data = loads_json(path.read_bytes(), path)
    if not isinstance(data, dict):
        raise LeanifyError("should hold a JSON object.", path=path, fix="Repair the file.")
    return data


def decode_text(path: Path, max_bytes: int) -> str:
    """A text data file as str: at most `max_bytes`, UTF-8 (a BOM is dropped), no NUL bytes
    (they mean a binary or UTF-16 file, and C libraries cut strings at them)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise LeanifyError(
            f"is {size / 2**20:.0f} MiB; leanify reads text data files up to "
            f"{max_bytes >> 20} MiB.", path=path,
            fix="Give a sample of the rows (a few thousand rows give a stable score).")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LeanifyError(
            f"is not UTF-8 text (undecodable byte 0x{data[exc.start]:02x} on line {line}).",
            path=path, fix="Re-save the file as UTF-8.",
        ) from exc
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise LeanifyError(
            f"holds a NUL byte (\\x00) on line {line}; text data holds none (the file may "
            "be binary, or UTF-16).", path=path,
            fix="Remove the NUL bytes, or re-save the file as UTF-8 text.",
        )
    return text


@contextlib.contextmanager
def csv_field_limit(limit: int = MAX_FIELD_CHARS) -> Iterator[None]:
    """Raise the csv module's field limit (128 KiB) to `limit` for one read, then restore it
    (the limit is process-wide)."""
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def csv_error(path: Path, exc: csv.Error, line: int) -> LeanifyError:
    """A csv.Error as words: a field over the limit is too large (a text that long, or a
    quote left open so that the rest of the file became one field), not a quoting typo."""
    if "field larger than field limit" in str(exc):
        return LeanifyError(
            f"has a field over {MAX_FIELD_CHARS >> 20} MiB of text, starting on line {line}; "
            "leanify reads fields up to that size.", path=path,
            fix="Shorten that text (models read at most a few thousand tokens), or close the "
            "quote that was left open there (an open quote runs the rest of the file into "
            "one field).",
        )
    return LeanifyError(f"is not a readable CSV/TSV file (line {line}: {exc}).", path=path,
                        fix="Repair the file's quoting.")


# The types of the sidecar entries other modules read (null is always allowed).
SIDECAR_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,), "pooling": (str,), "run_with": (str,), "model_type": (str,),
    "normalize": (bool,), "labels": (dict,), "runtime": (dict,), "folded_inputs": (dict,),
    "max_length": (int,), "num_heads": (int,), "hidden_size": (int,), "params": (int,),
}


def read_sidecar(model_file: Path) -> dict[str, Any]:
    """Metadata leanify stored beside a model file (task, pooling, labels, lineage)."""
    sidecar = model_file.parent / SIDECAR
    if not sidecar.is_file():
        return {}
    data = read_json(sidecar)
    for key, types in SIDECAR_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, types)
                                  or (isinstance(value, bool) and bool not in types)):
            raise LeanifyError(
                f"'{key}' is {shorten(value)}; leanify writes a {types[0].__name__} there.",
                path=sidecar, fix="Repair the file, or delete it and re-run the pass that "
                "wrote the model.")
    return data


def tokenizer_beside(model_file: Path) -> dict[str, str]:
    """{"tokenizer": folder} when tokenizer files sit next to the model file, else {}."""
    folder = model_file.parent
    return {"tokenizer": str(folder)} if any((folder / f).exists() for f in TOKENIZER_FILES) \
        else {}


def int_range(name: str, table_rows: int | None) -> tuple[int | None, int | None]:
    """Valid values of an integer input: the embedding table's rows, or by its name."""
    if table_rows:
        return 0, table_rows
    if "mask" in name:
        return 0, 2
    if "type" in name:
        return 0, 1
    return None, None
