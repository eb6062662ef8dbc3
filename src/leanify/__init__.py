"""leanify: diagnose, optimize and honestly benchmark ML models.

Heavy runtimes (torch, onnxruntime) are imported only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Artifact", "LeanifyError", "bench", "load", "open_runner"]

if TYPE_CHECKING:
    from leanify.errors import LeanifyError
    from leanify.measure.bench import bench
    from leanify.models.artifact import Artifact
    from leanify.models.load import load
    from leanify.runtimes import open_runner

_LAZY = {
    "load": "leanify.models.load",
    "open_runner": "leanify.runtimes",
    "Artifact": "leanify.models.artifact",
    "LeanifyError": "leanify.errors",
    "bench": "leanify.measure.bench",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leanify' has no attribute {name!r}")
