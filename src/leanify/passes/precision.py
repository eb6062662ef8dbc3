"""Lower-precision floats: `fp16` (ONNX) and `bf16` (PyTorch, saved as .pt2).

Measured on all-MiniLM-L6-v2 on this kind of machine (2-core AMD EPYC, AVX-512 with VNNI and
BF16 but no AVX512-FP16; 2 threads; batch 1 / 32 at sequence 128):
- fp16 ONNX (weights and compute in float16, inputs/outputs float32) on ONNX Runtime's CPU
  provider: 0.94x / 1.10x the fp32 latency (no speed-up; the CPU has no fp16 arithmetic, so
  ORT casts around most ops). It halves the file (90 -> 45 MB). The planner should skip it on
  CPUs without avx512_fp16 / amx_fp16 unless size is the goal; `native_fp16(isa_flags)` says
  which.
- bf16 PyTorch eager: 18.8 ms / 361 ms against fp32 33.5 ms / 783 ms (1.8x / 2.2x faster) on
  this AVX512-BF16 CPU, via oneDNN. Without avx512_bf16 / amx_bf16 it is emulated and slower.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_batch, require_format, write_output
from leanify.passes.export_onnx import MODEL_FILE
from leanify.passes.export_torch import (
    PT2_FILE,
    cosine_gate,
    export_program,
    named_module,
    reference,
    run_torch,
)
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.passes.torch_source import torch_source
from leanify.runtimes.onnxruntime import run_once

FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16", "fp16", "asimdhp"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_fp16(isa_flags: frozenset[str] | set[str]) -> bool:
    return bool(FP16_FLAGS & set(isa_flags))


def native_bf16(isa_flags: frozenset[str] | set[str]) -> bool:
    return bool(BF16_FLAGS & set(isa_flags))


# --- fp16 (ONNX) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fp16Config(PassConfig):
    name: ClassVar[str] = "fp16"

    keep_io_types: bool = True  # inputs and outputs stay float32
    op_block_list: tuple[str, ...] = ()  # op types kept in float32 (besides ORT's defaults)
    min_cosine: float = 0.99


@register(Fp16Config)
def fp16(artifact: Artifact, config: Fp16Config, ctx: PassContext) -> Artifact:
    require_format(artifact, ("onnx",), config.name,
                   fix="Run 'export-onnx' first (fp16 converts ONNX models).")
    onnx = require("onnx", "onnx", "Pass 'fp16'")
    require("onnxruntime", "onnx", "Pass 'fp16'")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(artifact.path))
    if not any(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer):
        raise LeanifyError(
            "pass 'fp16' converts float32 weights, and this model has none (already fp16 or "
            "quantized?).", path=artifact.path, fix="Give the float32 model.",
        )
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # value-clamping notices for tiny weights
            converted = convert_float_to_float16(
                model, keep_io_types=config.keep_io_types,
                op_block_list=[*DEFAULT_OP_BLOCK_LIST, *config.op_block_list],
            )
        path = out / MODEL_FILE
        onnx.save_model(converted, str(path),
                        save_as_external_data=converted.ByteSize() > 1_800_000_000)
        got = run_once(path, batch, ctx.threads)
        cosine = cosine_gate(before, got, batch, config.min_cosine, "the fp16 model",
                             artifact.path)
        return MODEL_FILE, {"precision": "fp16", "precision_check": {"mean_cosine": cosine},
                            "native_fp16": native_fp16(ctx.isa_flags)}

    return write_output(artifact, config, ctx, build)


# --- bf16 (PyTorch) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bf16Config(PassConfig):
    name: ClassVar[str] = "bf16"

    attn_implementation: str = ""  # "": transformers' default (sdpa)
    min_cosine: float = 0.99
    require_native: bool = True  # refuse on CPUs without bf16 arithmetic (it is slower there)


@register(Bf16Config)
def bf16(artifact: Artifact, config: Bf16Config, ctx: PassContext) -> Artifact:
    torch = require("torch", "torch", "Pass 'bf16'")
    flags = ctx.isa_flags
    if not flags:
        from leanify.measure.machine import cpu_info

        flags = frozenset(cpu_info()["isa_flags"])
    if config.require_native and not native_bf16(flags):
        raise LeanifyError(
            "this CPU has no bf16 arithmetic (avx512_bf16 / amx_bf16): bf16 would be emulated "
            "and slower than float32.",
            fix="Skip 'bf16' here, or pass require_native=False to build it anyway.",
        )
    source = torch_source(artifact, config.attn_implementation or None, config.name)
    batch = check_batch(artifact, ctx)
    before = reference(source, batch)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        low = copy.deepcopy(source.model).to(torch.bfloat16).eval()
        module = named_module(source, low, out_dtype=torch.float32)
        program = export_program(module, source, artifact, out / PT2_FILE)
        got = run_torch(program.module(), source, batch, keywords=False)
        cosine = cosine_gate(before, got, batch, config.min_cosine, "the bf16 model",
                             artifact.path)
        extra = {k: v for k, v in source.meta.items() if v is not None}
        extra.update({"precision": "bf16", "precision_check": {"mean_cosine": cosine}})
        return PT2_FILE, extra

    return write_output(artifact, config, ctx, build)
