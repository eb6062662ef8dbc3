"""What every format loader reads beside the model: leanify's sidecar, tokenizer files, JSON,
and the valid range of integer inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError

SIDECAR = "leanify_model.json"  # task, pooling, labels, runtime settings... written by passes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeanifyError(
            f"is not valid JSON ({exc}).", path=path, fix="Repair or re-download the file."
        ) from exc
    if not isinstance(data, dict):
        raise LeanifyError("should hold a JSON object.", path=path, fix="Repair the file.")
    return data


def read_sidecar(model_file: Path) -> dict[str, Any]:
    """Metadata leanify stored beside a model file (task, pooling, labels, lineage)."""
    sidecar = model_file.parent / SIDECAR
    return read_json(sidecar) if sidecar.is_file() else {}


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
