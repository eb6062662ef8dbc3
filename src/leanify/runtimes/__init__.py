"""Runtimes as plug-ins: each module here defines one `RUNTIME` and its Runner.

Adding a runtime is one module plus its line in MODULES. Modules import their engine lazily
(inside `open`), so listing runtimes costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runner, Runtime, check_settings

# module name -> one runtime each; the first runtime listing a format is that format's default
MODULES = ("onnxruntime", "openvino", "torch_eager", "torchscript", "torch_export",
           "torch_generate", "openvino_genai", "keras", "litert")

_RUNTIMES: dict[str, Runtime] = {}


def all_runtimes() -> dict[str, Runtime]:
    if not _RUNTIMES:
        for name in MODULES:
            runtime = importlib.import_module(f"leanify.runtimes.{name}").RUNTIME
            _RUNTIMES[runtime.name] = runtime
    return _RUNTIMES


def get(name: str) -> Runtime:
    runtimes = all_runtimes()
    if name not in runtimes:
        raise LeanifyError(f"there is no runtime named '{name}'.",
                           fix=f"Use one of: {', '.join(runtimes)}.")
    return runtimes[name]


def default_for(fmt: str) -> Runtime:
    """The runtime that runs a format unless the artifact says otherwise."""
    for runtime in all_runtimes().values():
        if fmt in runtime.formats:
            return runtime
    raise LeanifyError(f"no runtime runs models of format '{fmt}'.")


def for_artifact(artifact: Artifact) -> Runtime:
    """The runtime an artifact runs on: its sidecar's `run_with`, else its format's default."""
    name = artifact.meta.get("run_with")
    if not name:
        return default_for(artifact.format)
    runtime = get(str(name))
    if artifact.format not in runtime.formats:
        raise LeanifyError(
            f"the sidecar asks for runtime {runtime.name}, which does not run "
            f"{artifact.format} models.", path=artifact.path,
            fix=f"{runtime.name} runs {', '.join(runtime.formats)}; remove 'run_with'.")
    return runtime


def generator_for(artifact: Artifact) -> Runtime:
    """The runtime that generates text with a causal LM: the sidecar's `run_with` when that
    runtime generates, else the first generating runtime for the artifact's format."""
    chosen = for_artifact(artifact)
    if chosen.generates:
        return chosen
    for runtime in all_runtimes().values():
        if runtime.generates and artifact.format in runtime.formats:
            return runtime
    raise LeanifyError(
        f"no runtime generates text with {artifact.format} models.", path=artifact.path,
        fix="Generation runs on Hugging Face causal-LM folders and GGUF files.")


def open_generator(artifact: Artifact, threads: int | None = None) -> Runner:
    """Open a causal LM in its generating runtime (a Runner with `generate`)."""
    return generator_for(artifact).open(artifact, threads)


def settings_of(artifact: Artifact) -> dict[str, Any]:
    """The settings in the artifact's meta that its runtime understands."""
    settings = artifact.meta.get("runtime") or {}
    allowed = for_artifact(artifact).settings
    return {k: v for k, v in settings.items() if k in allowed and v is not None}


def open_runner(artifact: Artifact, threads: int | None = None, *,
                trust_pickle: bool = False) -> Runner:
    """Open the artifact in its runtime. `threads` caps intra-op threads (None: runtime default)."""
    return for_artifact(artifact).open(artifact, threads, trust_pickle=trust_pickle)


def versions() -> dict[str, str | None]:
    """The installed version of every runtime's package (None: not installed)."""
    return {r.package: r.version() for r in all_runtimes().values()}


__all__ = ["MODULES", "Runner", "Runtime", "all_runtimes", "check_settings", "default_for",
           "for_artifact", "generator_for", "get", "open_generator", "open_runner",
           "settings_of", "versions"]
