"""Keras 3 on its torch backend: `.keras` and `.h5` models, called as the torch modules they
are (no `predict`: its per-call data pipeline costs more than a small model's forward)."""

from __future__ import annotations

from typing import Any

from leanify.models.artifact import Artifact
from leanify.models.keras_file import keras_on_torch
from leanify.runtimes.base import Runtime
from leanify.runtimes.torch_eager import TorchRunner, torch_for


class KerasRunner(TorchRunner):
    runtime = "keras"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        from leanify.models.keras_file import build

        self.torch = torch_for(threads)
        self.model = build(artifact.path)

    def _call(self, inputs: dict[str, Any]) -> Any:
        args = [inputs[n] for n in self.input_names if n in inputs]
        return self.model(args[0] if len(args) == 1 else args)


def snippet(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    return ["import os", "",
            'os.environ["KERAS_BACKEND"] = "torch"  # before the first import of keras',
            "import keras",
            "import numpy as np",
            "import torch", "",
            f"torch.set_num_threads({int(threads)})",
            f'model = keras.saving.load_model("{path}", compile=False)',
            "model.eval()",
            "wanted = [t.name for t in model.inputs]", "", "",
            "def run(feeds):  # first output",
            "    args = [torch.from_numpy(feeds[n]) for n in wanted]",
            "    with torch.inference_mode():",
            "        out = model(args[0] if len(args) == 1 else args)",
            "    out = out[0] if isinstance(out, tuple | list) else out",
            "    return out.detach().numpy()"]


RUNTIME = Runtime(
    name="keras", formats=("keras",), module="keras", package="keras",
    open=lambda artifact, threads, trust_pickle=False: KerasRunner(artifact, threads),
    snippet=snippet, extra="keras", importer=keras_on_torch)
