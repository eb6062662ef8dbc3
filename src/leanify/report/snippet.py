"""The few lines of Python a user needs to run the selected model in their own service.

Plain runtime code (onnxruntime, openvino) plus the task's own pre- and post-processing (a
`tokenizers` tokenizer and pooling for text, an .npz of arrays otherwise): no leanify import.
The runtime writes how to open and call the model (`wanted`, `run(feeds)`), with the settings
leanify measured (for OpenVINO, the inference precision that actually ran); the task writes
how `feeds` are made and what `outputs` mean. Paths are relative to the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanify.models.files import SIDECAR

EXAMPLE_INPUTS = "example_inputs.npz"  # the arrays an array model's snippet runs on


def usage_snippet(out: Path, selected: dict[str, Any], task: str, threads: int,
                  max_length: int = 128) -> str | None:
    """Python source that loads `selected` (leanify.json's entry) and runs it on example
    input; None for runtimes without a plain-runtime recipe."""
    from leanify import runtimes, tasks

    path = selected["artifact"]
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    sidecar_file = Path(out) / folder / SIDECAR
    meta = json.loads(sidecar_file.read_text(encoding="utf-8")) if sidecar_file.is_file() else {}
    if (Path(out) / folder / "tokenizer.json").is_file():
        meta["tokenizer"] = f"{folder}/tokenizer.json"
    name = selected.get("runtime") or runtimes.default_for(selected["format"]).name
    runtime = runtimes.all_runtimes().get(name)
    if runtime is None or runtime.snippet is None:
        return None
    head = runtime.snippet(path, selected.get("runtime_settings") or {}, threads)
    if runtime.generates:  # a causal LM: the runtime's own text-in, text-out pipeline
        return "\n".join([*head, 'print(generate("What makes a language model lean?"))']) \
            + "\n"
    spec = tasks.get(task)
    lines = [*head, "", *spec.snippet_inputs(folder, meta, max_length),
             "outputs = run(feeds)"]
    tail = spec.snippet_outputs(meta)
    if tail:
        lines += ["", *tail]
    return "\n".join(lines) + "\n"
