"""Errors the user can fix. The CLI turns them into one clear paragraph and exit code 2."""

from __future__ import annotations

from pathlib import Path


class LeanifyError(Exception):
    """A problem with the user's input or environment, explained in words.

    `path` names the file at fault; `fix` says what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = self.message
        if self.path and self.path not in text:
            text = f"{self.path}: {text}"
        if self.fix:
            text = f"{text} {self.fix}"
        return text


class MissingDependencyError(LeanifyError):
    """An optional extra is not installed."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed.",
            fix=f"Install it with: pip install 'leanify[{extra}]'",
        )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries append pages of context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or raise a clear error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose) from exc
