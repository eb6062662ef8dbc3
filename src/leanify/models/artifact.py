"""The Artifact: a model at rest, with a format, a path and metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["hf", "onnx", "torchscript", "pt2", "torch-module", "openvino", "keras",
                 "tflite"]
FORMATS: tuple[str, ...] = ("hf", "onnx", "torchscript", "pt2", "torch-module", "openvino",
                            "keras", "tflite")


@dataclass(frozen=True)
class TensorSpec:
    """One model input as the model declares it. Dims are ints or symbolic names."""

    name: str
    dtype: str  # numpy dtype name, e.g. "int64", "float32"
    shape: tuple[int | str, ...] | None = None  # None: rank unknown
    low: int | float | None = None  # valid range for integer inputs such as token ids
    high: int | float | None = None  # exclusive
    optional: bool = False


@dataclass(frozen=True)
class Artifact:
    """A model at rest. Immutable: passes write new artifacts, never change this one.

    `path` is the file (onnx, torchscript, pt2, the IR's .xml for openvino) or folder (hf)
    that holds the model; weights in other files (ONNX external data, the IR's .bin) are
    listed in meta["external_data"];
    `None` only for an in-memory torch module (its object rides in `module`).
    """

    format: Format
    path: Path | None
    name: str
    inputs: tuple[TensorSpec, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    module: Any = field(default=None, repr=False, compare=False)

    @property
    def tokenizer_path(self) -> Path | None:
        tok = self.meta.get("tokenizer")
        return Path(tok) if tok else None

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def files(self) -> list[Path]:
        """Every file that makes up the model on disk (weights, graph, external data, config)."""
        if self.path is None:
            return []
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.is_file())
        extra = [Path(p) for p in self.meta.get("external_data", [])]
        return [self.path, *extra]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def sha256(self) -> str | None:
        """Hash over the model's files, in a stable order; None for an in-memory module."""
        if self.path is None:
            return None
        digest = hashlib.sha256()
        root = self.path if self.path.is_dir() else self.path.parent
        for file in self.files():
            digest.update(str(file.relative_to(root)).encode())
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (no tensors, no objects)."""
        return {
            "name": self.name,
            "format": self.format,
            "path": str(self.path) if self.path else None,
            "inputs": [
                {"name": s.name, "dtype": s.dtype, "shape": list(s.shape) if s.shape else None}
                for s in self.inputs
            ],
            "meta": {k: v for k, v in self.meta.items() if _jsonable(v)},
        }


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)
