"""TorchScript (`torch.jit`) archives, in eager TorchScript.

A TorchScript archive is code: its methods run whatever they were scripted to do.
"""

from __future__ import annotations

import warnings
from typing import Any

from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runtime
from leanify.runtimes.torch_eager import TorchRunner, torch_for

SCALARS = {"int": int, "float": float, "bool": bool}


class TorchScriptRunner(TorchRunner):
    runtime = "torchscript"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        self.torch = torch_for(threads)
        with warnings.catch_warnings():  # TorchScript is deprecated, and still asked for
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = self.torch.jit.load(str(artifact.path), map_location="cpu").eval()
        # forward's declared types: an `int sr` argument takes a Python int, not a tensor
        self.kinds = {a.name: str(a.type) for a in self.model.forward.schema.arguments[1:]}

    def _call(self, inputs: dict[str, Any]) -> Any:
        args = []
        for name in self.input_names:
            if name not in inputs:
                continue
            value = inputs[name]
            cast = SCALARS.get(self.kinds.get(name, "Tensor"))
            args.append(cast(value.item()) if cast else value)
        return self.model(*args)


RUNTIME = Runtime(
    name="torchscript", formats=("torchscript",), module="torch", package="torch",
    open=lambda artifact, threads, trust_pickle=False: TorchScriptRunner(artifact, threads),
    extra="torch")
