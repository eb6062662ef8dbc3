"""The diagnosis work that needs a runtime, run in a child process per runtime.

`torch_probe` (PyTorch formats): FLOPs, profile, weights, spectral and redundancy signals, and
an ONNX export for the runtime comparison and the sensitivity test. `onnx_probe` (ONNX
Runtime): FLOPs and profile of an ONNX input, quantization sensitivity, and for an ONNX input
the weight analyses. Each section records its time, or its error, and never sinks the others.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, MissingDependencyError, first_line


class Sections:
    """Times each section; an error becomes the section's record instead of a crash."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {"sections": {}}

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        status: dict[str, Any] = {"status": "done"}
        try:
            yield
        except MissingDependencyError as exc:
            status = {"status": "skipped", "reason": exc.render()}
        except LeanifyError as exc:
            status = {"status": "failed", "reason": exc.render()}
        except Exception as exc:  # one failing analysis must not lose the others
            status = {"status": "failed", "reason": f"{type(exc).__name__}: {first_line(exc)}",
                      "traceback": traceback.format_exc(limit=4)}
        status["seconds"] = round(time.perf_counter() - t0, 2)
        self.out["sections"][name] = status


def _artifact(req: dict[str, Any]):
    if req.get("artifact") is not None:  # an in-memory module, probed in this process
        return req["artifact"]
    from leanify.models.load import load

    return load(req["path"], tokenizer=req.get("tokenizer"),
                trust_pickle=bool(req.get("trust_pickle")), name=req.get("name"))


def _typical_batch(artifact, req: dict[str, Any]) -> dict[str, np.ndarray]:
    from leanify.models.inputs import InputBuilder

    return InputBuilder(artifact, req.get("sample")).batch(*req["typical"])


def _data_batches(artifact, req: dict[str, Any], names: list[str], batch_size: int = 16
                  ) -> Iterator[dict[str, np.ndarray]]:
    """The user's texts (a sample of them) or images as batches, else one typical batch."""
    texts = req.get("texts") or []
    if req.get("image_batch") is not None:
        yield req["image_batch"]
    elif texts and artifact.tokenizer_path is not None:
        from leanify.measure.data import text_batches

        wanted = [*names, "attention_mask"]
        yield from text_batches(texts, artifact.tokenizer_path, batch_size,
                                req["max_length"], wanted)
    else:
        yield _typical_batch(artifact, req)


def _weights(out: dict[str, Any], sections: Sections, matrices: dict[str, np.ndarray]) -> None:
    from leanify.diagnose import redundancy, spectral

    with sections.run("effective_rank"):
        out.setdefault("redundancy", {})["effective_rank"] = redundancy.effective_rank(matrices)
    with sections.run("spectral"):
        out["spectral"] = spectral.analyze(matrices)


def torch_probe(req: dict[str, Any]) -> dict[str, Any]:
    from leanify.diagnose import inventory, profile, redundancy
    from leanify.diagnose.common import weight_matrices
    from leanify.runtimes import open_runner

    sections = Sections()
    out = sections.out
    artifact = _artifact(req)
    runner = open_runner(artifact, req["threads"], trust_pickle=bool(req.get("trust_pickle")))
    batch = _typical_batch(artifact, req)
    feed = {k: v for k, v in batch.items() if k in runner.input_names}
    inv: dict[str, Any] = {}
    out["inventory"] = inv
    with sections.run("signature"):
        inv["outputs"] = inventory.outputs_of(runner.run(feed))
        state = runner.model.state_dict()
        inv["dtypes"] = inventory.dtype_counts(
            {k: (str(v.dtype).removeprefix("torch."), v.numel()) for k, v in state.items()})
    counted: dict[str, Any] = {"per_module": {}}
    with sections.run("flops"):
        counted = inventory.torch_flops(lambda: runner.run(feed))
        inv["flops"] = inventory.flops_record(counted, tuple(req["typical"]), req["sequence"])
    with sections.run("profile"):
        out["profile"] = profile.torch_profile(lambda: runner.run(feed), runner.model,
                                               req["profile_iters"], req.get("trace"),
                                               req.get("top", profile.TOP))
    matrices: dict[str, np.ndarray] = {}
    with sections.run("weights"):
        matrices = weight_matrices(artifact, runner.model)
        inv["largest_layers"] = inventory.largest(matrices, counted.get("per_module"))
    with sections.run("redundancy"):
        model = runner.model
        blocks = profile.block_modules(model)
        if not blocks:
            raise LeanifyError(f"activation signals need a torch module with named layers; "
                               f"a {artifact.format} file has none to hook.")
        heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
        names = list(runner.input_names)

        def runs():
            for b in _data_batches(artifact, req, names):
                mask = b.get("attention_mask")
                fed = {k: v for k, v in b.items() if k in names}
                yield (lambda fed=fed: runner.run(fed)), mask

        out.setdefault("redundancy", {})["activations"] = redundancy.activations(
            model, runs(), heads, blocks)
        out["redundancy"]["activations"]["data"] = "your data" if req.get("texts") else \
            "bundled sample text"
    runner.close()
    if matrices:
        _weights(out, sections, matrices)
    if req.get("export_dir"):
        with sections.run("export"):
            from leanify.passes.registry import PassContext, apply, make_config

            ctx = PassContext(work_dir=Path(req["export_dir"]), threads=req["threads"])
            exported = apply(artifact, make_config("export-onnx"), ctx)
            out["exported_onnx"] = str(exported.path)
    return out


def runtime_probe(req: dict[str, Any]) -> dict[str, Any]:
    """A model whose runtime leanify has no profiler for (OpenVINO IR, TFLite): its outputs."""
    from leanify.diagnose import inventory
    from leanify.runtimes import for_artifact, open_runner
    from leanify.sandbox import limit_for

    sections = Sections()
    out = sections.out
    artifact = _artifact(req)
    limit_for(artifact)
    out["inventory"] = inv = {}
    with sections.run("signature"):
        runner = open_runner(artifact, req["threads"])
        try:
            inv["outputs"] = inventory.outputs_of(runner.run(_typical_batch(artifact, req)))
        finally:
            runner.close()
    out["sections"]["profile"] = {
        "status": "skipped", "seconds": 0.0,
        "reason": f"leanify reads no per-operator profile from {for_artifact(artifact).name}; "
                  "the latency curve and thread scaling below are measured"}
    return out


def onnx_probe(req: dict[str, Any]) -> dict[str, Any]:
    from leanify.diagnose import inventory, profile, sensitivity
    from leanify.diagnose.common import weight_matrices
    from leanify.runtimes.onnxruntime import run_once

    sections = Sections()
    out = sections.out
    artifact = _artifact(req)
    from leanify.sandbox import limit_for

    limit_for(artifact)  # running the model: the budget a model of its size needs
    threads = req["threads"]
    matrices: dict[str, np.ndarray] = {}
    if req.get("profile"):
        batch = _typical_batch(artifact, req)
        inv: dict[str, Any] = {}
        out["inventory"] = inv
        with sections.run("signature"):
            inv["outputs"] = inventory.outputs_of(run_once(artifact.path, batch, threads))
            inv["dtypes"] = inventory.onnx_dtypes(artifact.path)
        counted: dict[str, Any] = {"per_module": {}}
        with sections.run("flops"):
            events, file = profile.ort_events(artifact.path, batch, threads, 0, "disabled")
            Path(file).unlink(missing_ok=True)
            Path(file).parent.rmdir()
            counted = inventory.onnx_flops(events)
            inv["flops"] = inventory.flops_record(counted, tuple(req["typical"]),
                                                  req["sequence"])
        with sections.run("profile"):
            out["profile"] = profile.ort_profile(artifact.path, batch, threads,
                                                 req["profile_iters"], req.get("trace"),
                                                 req.get("top", profile.TOP))
        with sections.run("weights"):
            matrices = weight_matrices(artifact)
            inv["largest_layers"] = inventory.largest(matrices, counted.get("per_module"))
    with sections.run("convolutions"):  # a CNN: its MACs, and the share pruning can cut
        import onnx

        from leanify.prune.onnx_channels import convolution_summary

        conv = convolution_summary(onnx.load(str(artifact.path), load_external_data=False))
        if conv is not None:
            out.setdefault("inventory", {})["convolutions"] = conv
    if req.get("sensitivity"):
        with sections.run("sensitivity"):
            names = artifact.input_names
            batch = next(_data_batches(artifact, req, names, batch_size=32))
            batch = {k: v for k, v in batch.items() if k in names}
            if set(batch) != set(names):  # images named for another graph's input
                req = {**req, "image_batch": None}
                batch = _typical_batch(artifact, req)
            out["sensitivity"] = sensitivity.per_layer(
                artifact.path, batch, threads, frozenset(req.get("isa_flags", ())))
            out["sensitivity"]["data"] = "your data" if req.get("texts") else \
                "your images" if req.get("image_batch") is not None else \
                "bundled sample text" if artifact.tokenizer_path else "inputs from the signature"
    if matrices:  # after the timing work: weightwatcher brings torch into this process
        _weights(out, sections, matrices)
    return out
