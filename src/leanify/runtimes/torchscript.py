"""TorchScript (`torch.jit`) archives, in eager TorchScript.

A TorchScript archive is code: its methods run whatever they were scripted to do.

Settings (`runtime` in leanify_model.json): `num_threads`, torch's intra-op threads. A small
model called one row at a time can lose more to waking a second thread than it gains from it.
"""

from __future__ import annotations

import warnings
from typing import Any

from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runtime
from leanify.runtimes.torch_eager import TorchRunner, torch_for

SCALARS = {"int": int, "float": float, "bool": bool}
SETTINGS = {"num_threads": (int,)}


class TorchScriptRunner(TorchRunner):
    runtime = "torchscript"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        from leanify.runtimes import settings_of

        # Settings from the artifact (a runtime-settings candidate) win over the thread budget.
        self.num_threads = settings_of(artifact).get("num_threads") or threads
        self.torch = torch_for(self.num_threads)
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

    @property
    def details(self) -> dict[str, Any]:
        return {"num_threads": self.torch.get_num_threads()}


def snippet(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    return ["import numpy as np", "import torch", "",
            f"torch.set_num_threads({int(ran.get('num_threads') or threads)})",
            f'model = torch.jit.load("{path}", map_location="cpu").eval()',
            "names = [a.name for a in model.forward.schema.arguments[1:]]",
            "wanted = set(names)",
            "",
            "",
            "def run(feeds):  # first output; a scalar input (a sample rate) goes in as a number",
            "    args = [torch.from_numpy(feeds[n]) if np.ndim(feeds[n]) else feeds[n].item()",
            "            for n in names if n in feeds]",
            "    with torch.inference_mode():",
            "        out = model(*args)",
            "    return (out[0] if isinstance(out, tuple | list) else out).numpy()"]


RUNTIME = Runtime(
    name="torchscript", formats=("torchscript",), module="torch", package="torch",
    open=lambda artifact, threads, trust_pickle=False: TorchScriptRunner(artifact, threads),
    settings=SETTINGS, snippet=snippet, extra="torch")
