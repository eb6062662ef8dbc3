"""The pass registry: one technique = one config dataclass + one function, in one module.

A pass turns an artifact into a new artifact in its own folder under the run's work folder.
It never measures (measurement lives in leanify.measure) and never writes to its input.
Outputs appear atomically: a pass writes into a temporary folder that is renamed into place
only when it has finished, so a crash or Ctrl-C leaves no half-written model behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pkgutil
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact


@dataclass(frozen=True)
class PassConfig:
    """Base of every pass config. Subclasses are frozen dataclasses with a `name`."""

    name: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable hash of the pass and its settings: names its output in the cache."""
        blob = json.dumps({"pass": self.name, **self.params()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def label(self) -> str:
        changed = {k: v for k, v in self.params().items()
                   if v != _default_of(type(self), k)}
        args = ",".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.name}({args})" if args else self.name


def _default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class PassContext:
    """What a pass may use besides its input: a work folder, threads, CPU facts, data."""

    work_dir: Path
    threads: int | None = None
    isa_flags: frozenset[str] = frozenset()
    calibration: Batches | None = None  # the user's calibration split, never the eval split
    sample: Path | None = None  # the user's input sample (.npz) for the passes' output checks
    log: Callable[[str], None] = field(default=lambda _msg: None)
    # Outputs built so far in this run, by input + pass key: pipelines that share a prefix
    # (export-onnx, export-openvino...) build it once. None: always build.
    built: dict[str, Artifact] | None = None

    def finished(self, config: PassConfig, source: Artifact) -> Path | None:
        """The output folder of this exact pass on this exact input, if an earlier run made
        it (outputs appear only complete): costly passes (training) reuse it."""
        final = self.work_dir / "artifacts" / f"{config.name}-{artifact_key(source, config)}"
        return final if final.is_dir() else None

    @contextmanager
    def output_dir(self, config: PassConfig, source: Artifact) -> Iterator[Path]:
        """A fresh folder for the pass's output, renamed into place only on success."""
        final = self.work_dir / "artifacts" / f"{config.name}-{artifact_key(source, config)}"
        tmp = final.with_name(final.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)


def artifact_key(source: Artifact, config: PassConfig) -> str:
    """Names what `config` makes of `source`: stable across runs, so work can be resumed."""
    parent = source.meta.get("artifact_key") or source.sha256() or source.name
    return hashlib.sha256(f"{parent}:{config.key()}".encode()).hexdigest()[:12]


PassFn = Callable[[Artifact, Any, PassContext], Artifact]
_REGISTRY: dict[str, tuple[type[PassConfig], PassFn]] = {}


def register(config_type: type[PassConfig]) -> Callable[[PassFn], PassFn]:
    """Decorator: `@register(MyConfig)` on `def my_pass(artifact, config, ctx) -> Artifact`."""

    def wrap(fn: PassFn) -> PassFn:
        if not config_type.name:
            raise TypeError(f"{config_type.__name__} needs a class attribute `name`")
        _REGISTRY[config_type.name] = (config_type, fn)
        return fn

    return wrap


def _discover() -> None:
    """Import every module of leanify.passes once: each registers its own pass."""
    import leanify.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "registry":
            importlib.import_module(f"leanify.passes.{info.name}")


def available() -> dict[str, type[PassConfig]]:
    _discover()
    return {name: cfg for name, (cfg, _fn) in sorted(_REGISTRY.items())}


def make_config(name: str, **params: Any) -> PassConfig:
    configs = available()
    if name not in configs:
        raise LeanifyError(f"there is no pass named '{name}'.",
                           fix=f"Available passes: {', '.join(configs)}.")
    try:
        return configs[name](**params)
    except TypeError as exc:
        raise LeanifyError(f"bad settings for pass '{name}': {exc}.") from exc


def apply(artifact: Artifact, config: PassConfig, ctx: PassContext) -> Artifact:
    """Run one pass; record its lineage in the new artifact's meta."""
    _discover()
    entry = _REGISTRY.get(config.name)
    if entry is None:
        raise LeanifyError(f"there is no pass named '{config.name}'.")
    out = entry[1](artifact, config, ctx)
    lineage = [*artifact.meta.get("passes", []), config.label()]
    key = artifact_key(artifact, config)
    return dataclasses.replace(out, meta={**out.meta, "passes": lineage, "artifact_key": key,
                                          "parent": artifact.name})


def run_pipeline(artifact: Artifact, configs: Sequence[PassConfig], ctx: PassContext) -> Artifact:
    for config in configs:
        key = artifact_key(artifact, config)
        if ctx.built is not None and key in ctx.built and ctx.built[key].path.exists():
            artifact = ctx.built[key]
            continue
        ctx.log(f"{config.label()} on {artifact.name}")
        artifact = apply(artifact, config, ctx)
        if ctx.built is not None:
            ctx.built[key] = artifact
    return artifact
