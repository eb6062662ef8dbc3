"""`torch.export` programs (`.pt2`), run as the exported module in eager mode."""

from __future__ import annotations

from typing import Any

from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runtime
from leanify.runtimes.torch_eager import TorchRunner, torch_for


class Pt2Runner(TorchRunner):
    runtime = "torch-export"

    def __init__(self, artifact: Artifact, threads: int | None, trust_pickle: bool = False):
        super().__init__(artifact, threads)
        from leanify.models.load import load_pt2_program

        self.torch = torch_for(threads)
        program = load_pt2_program(artifact.path, trust_pickle)
        self.model = program.module()
        # Inputs exported as keywords must be passed as keywords, the rest by position.
        names = self.artifact.input_names
        try:
            spec = program.call_spec.in_spec
            kwargs_spec = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]
            n_kw = kwargs_spec.num_children
        except (AttributeError, IndexError):
            n_kw = 0
        self.positional, self.keywords = names[: len(names) - n_kw], names[len(names) - n_kw:]

    def _call(self, inputs: dict[str, Any]) -> Any:
        return self.model(*[inputs[n] for n in self.positional],
                          **{n: inputs[n] for n in self.keywords})


RUNTIME = Runtime(
    name="torch-export", formats=("pt2",), module="torch", package="torch",
    open=lambda artifact, threads, trust_pickle=False: Pt2Runner(artifact, threads, trust_pickle),
    extra="torch")
