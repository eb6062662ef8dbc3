"""Outputs never land on inputs: one check that every command runs before it writes.

An output (a file such as --json, or a folder such as --out) conflicts with an input (the
model file or folder, data, calibration data, a sample, a tokenizer) when they are the same
file, when the output lies inside an input folder, or when an input lies inside the output
folder (`distill pruned/model --out pruned` would rewrite its own input). Symlinks are
resolved first, and existing files are compared by inode, so a link or a hard link to the
model is caught as well.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from leanify.errors import LeanifyError

PathLike = str | os.PathLike
# label -> one path, or several (e.g. --data a.txt,b.txt); None: not given
Paths = Mapping[str, "PathLike | Iterable[PathLike] | None"]


def _expand(paths: Paths) -> list[tuple[str, Path]]:
    items: list[tuple[str, Path]] = []
    for label, value in paths.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        items.extend((label, Path(v).expanduser().resolve()) for v in values if str(v))
    return items


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_apart(outputs: Paths, inputs: Paths) -> None:
    """Raise a LeanifyError naming both paths when an output could overwrite an input.

    `outputs` and `inputs` map a label (the option, e.g. "--json", or "the model") to a path.
    Inputs that do not exist (aliases such as 'minilm', names of built-in data) are skipped.
    """
    sources = [(label, path) for label, path in _expand(inputs) if path.exists()]
    for option, out in _expand(outputs):
        for label, src in sources:
            if _same(out, src):
                how = "is"
            elif src.is_dir() and (out.is_relative_to(src) or _holds(src, out)):
                how = "is inside"
            elif src.is_relative_to(out) or _holds(out, src):
                how = "holds"
            else:
                continue
            raise LeanifyError(
                f"{option} {out} {how} the input {label} {src}; leanify never writes there "
                "(it never changes its inputs).", path=out,
                fix={"is": f"Choose another {option} path.",
                     "is inside": f"Choose a {option} path outside {src}.",
                     "holds": f"Choose a {option} folder that does not contain {src}."}[how])


def _holds(folder: Path, path: Path) -> bool:
    """`folder` holds `path` under another spelling (a bind mount): compare by inode."""
    return folder.is_dir() and any(_same(folder, parent) for parent in path.parents)


def model_paths(model: PathLike | None) -> list[Path]:
    """What `model` names on disk (nothing for an alias): a folder, or a file with the side
    files named after it (model.onnx.data, the .bin of an OpenVINO model.xml)."""
    if model is None:
        return []
    path = Path(model).expanduser()
    if not path.exists():
        return []
    if path.is_dir():
        return [path]
    stem = path.name.split(".")[0]
    return [path, *(p for p in path.parent.glob(f"{glob.escape(stem)}.*")
                    if p != path and p.is_file())]
