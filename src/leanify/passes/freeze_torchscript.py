"""`freeze-torchscript`: a TorchScript archive frozen for inference (torch.jit.freeze inlines
parameters and attributes that are never written; `optimize_for_inference` also folds batch
norms and moves convolutions to oneDNN).

For models that cannot leave TorchScript (the ONNX exporter and torch.export's TorchScript
converter both refuse silero-vad's scripted control flow), this is the optimization left; the
search's gate decides whether it pays. On silero-vad 6.2.3 (2 threads, `leanify bench`, each
model in its own process, quiet machine) the frozen model ran 0.90x to 1.17x the scripted
one from run to run at batch 1, and about the same at batch 16: no reliable gain there.
Outputs are checked on two calls in a row (stateful models carry state between calls).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_agreement, check_batch, require_format, write_output
from leanify.passes.registry import PassConfig, PassContext, register

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class FreezeTorchScriptConfig(PassConfig):
    name: ClassVar[str] = "freeze-torchscript"

    optimize_for_inference: bool = False
    atol: float = 1e-4  # relative to the outputs' scale


def _run_twice(artifact: Artifact, path: Path, batch: dict[str, np.ndarray],
               threads: int | None) -> dict[str, np.ndarray]:
    """Outputs of two calls in a row on a fresh load (the second sees any carried state)."""
    from dataclasses import replace

    from leanify.runtimes import open_runner

    runner = open_runner(replace(artifact, path=path), threads)
    try:
        first = runner.run(batch)
        second = runner.run(batch)
    finally:
        runner.close()
    return {**{f"first/{k}": v for k, v in first.items()},
            **{f"second/{k}": v for k, v in second.items()}}


@register(FreezeTorchScriptConfig)
def freeze_torchscript(artifact: Artifact, config: FreezeTorchScriptConfig,
                       ctx: PassContext) -> Artifact:
    require_format(artifact, ("torchscript",), config.name,
                   fix="Give a TorchScript archive (torch.jit.save).")
    torch = require("torch", "torch", f"Pass '{config.name}'")
    batch = check_batch(artifact, ctx)
    before = _run_twice(artifact, artifact.path, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(artifact.path), map_location="cpu").eval()
                frozen = torch.jit.freeze(module)
                if config.optimize_for_inference:
                    frozen = torch.jit.optimize_for_inference(frozen)
                torch.jit.save(frozen, str(out / MODEL_FILE))
        except Exception as exc:  # torch.jit raises RuntimeError with TorchScript source
            raise LeanifyError(f"torch.jit could not freeze the model ({first_line(exc)}).",
                               path=artifact.path,
                               fix="Keep the scripted model as it is.") from exc
        got = _run_twice(artifact, out / MODEL_FILE, batch, ctx.threads)
        diffs = check_agreement({k: v for k, v in before.items() if _floating(v)},
                                got, config.atol, "the frozen model", artifact.path)
        return MODEL_FILE, {"freeze_check": {"max_diff": diffs}}

    return write_output(artifact, config, ctx, build)


def _floating(value: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(value).dtype, np.floating)
