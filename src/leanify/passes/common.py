"""Helpers every pass shares: atomic output folders with the sidecar carried over, format
checks, a real batch for output checks, and output comparisons."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, first_line
from leanify.models.artifact import Artifact
from leanify.models.files import SIDECAR
from leanify.models.load import load
from leanify.passes.registry import PassConfig, PassContext

# Task metadata carried from a source artifact to every artifact a pass derives from it (and
# facts later passes use: attention shape for the optimizer, fusions done for the report).
CARRY_KEYS = ("task", "pooling", "normalize", "labels", "max_length",
              "model_type", "num_heads", "hidden_size", "fusions", "quantization", "runtime",
              "run_with", "folded_inputs", "preprocess")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")
CHECK_SHAPE = (3, 24)  # the checks run a shape other than the export example's (2, 16)


def final_path(out: Path) -> Path:
    """The folder `ctx.output_dir` renames its temporary folder to on success."""
    return out.with_name(out.name.removesuffix(".partial"))


def write_output(
    artifact: Artifact, config: PassConfig, ctx: PassContext,
    build: Callable[[Path], tuple[str, dict[str, Any]]],
) -> Artifact:
    """Run `build(tmp_folder) -> (model file name, extra sidecar meta)` atomically.

    Tokenizer files and the source's task metadata are carried into the folder; the result is
    loaded back with `leanify.load`, so it is checked like any user file.
    """
    with ctx.output_dir(config, artifact) as out:
        filename, extra = build(out)
        carry_over(artifact, out, config, extra)
    # leanify wrote this file itself from an input already accepted: a TorchScript output
    # (export-torchscript) is its own code, not the user's
    return load(final_path(out) / filename, name=f"{artifact.name}+{config.name}",
                trust_code=True)


def carry_over(artifact: Artifact, out: Path, config: PassConfig,
               extra: Mapping[str, Any] | None = None) -> None:
    """Copy the tokenizer files and write the sidecar (task metadata + what this pass did)."""
    tok = artifact.tokenizer_path
    if tok is not None and tok.is_dir():
        for name in TOKENIZER_FILES:
            if (tok / name).is_file():
                shutil.copy2(tok / name, out / name)
    sidecar = {k: artifact.meta[k] for k in CARRY_KEYS if artifact.meta.get(k) is not None}
    sidecar["source"] = artifact.name
    sidecar[config.name] = config.params()
    sidecar.update(extra or {})
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str) + "\n",
                               encoding="utf-8")


def require_format(artifact: Artifact, formats: tuple[str, ...], pass_name: str,
                   fix: str) -> None:
    if artifact.format not in formats:
        raise LeanifyError(
            f"pass '{pass_name}' takes {' or '.join(formats)} models; "
            f"{artifact.name} is {artifact.format}.",
            path=artifact.path, fix=fix,
        )


def require_causal_lm(artifact: Artifact, pass_name: str, fix: str) -> None:
    """A pass for causal LMs refuses other models (a Hugging Face folder or GGUF file)."""
    require_format(artifact, ("hf",), pass_name,
                   "Give the Hugging Face folder (or GGUF file) of the causal LM.")
    if artifact.meta.get("task") != "text-generation":
        raise LeanifyError(
            f"pass '{pass_name}' takes causal language models; {artifact.name} is a "
            f"{artifact.meta.get('task')} model.", path=artifact.path, fix=fix)


def check_batch(artifact: Artifact, ctx: PassContext | None = None,
                batch_size: int = CHECK_SHAPE[0],
                seq_len: int = CHECK_SHAPE[1]) -> dict[str, np.ndarray]:
    """A real batch for output checks (from the user's sample when the run has one); for
    text, the last row is half padding."""
    from leanify.models.inputs import InputBuilder

    if artifact.meta.get("preprocess") and ctx is not None and ctx.calibration is not None \
            and ctx.sample is None:
        # an image model: the user's own images (random pixels are far outside what the
        # calibration saw, and a dynamic H/W would otherwise become seq_len pixels)
        first = next(iter(ctx.calibration()), None)
        if first is not None:
            return {k: np.ascontiguousarray(np.asarray(v)[:batch_size])
                    for k, v in first.items()}
    batch = InputBuilder(artifact, ctx.sample if ctx else None).batch(batch_size, seq_len)
    mask = batch.get("attention_mask")
    if mask is not None and mask.ndim == 2 and mask.shape[0] > 1 and mask.shape[1] > 2:
        mask = mask.copy()
        mask[-1, mask.shape[1] // 2:] = 0
        batch["attention_mask"] = mask
    return batch


def max_diff(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
             relative: bool = False) -> dict[str, float]:
    """Max abs difference per shared output; `relative` divides by the reference's scale."""
    out = {}
    for name, a in ref.items():
        if name not in got:
            continue
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(got[name], dtype=np.float64)
        if a.shape != b.shape:
            out[name] = float("inf")
            continue
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if relative:
            diff /= max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
        out[name] = diff
    return out


def mean_cosine(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                mask: np.ndarray | None = None) -> float:
    """Mean cosine similarity of outputs: a quantization gate.

    Outputs shaped (batch, sequence, hidden) are compared token by token over the tokens the
    attention `mask` keeps (padding positions carry no meaning); others sample by sample.
    """
    sims: list[float] = []
    for name, a in ref.items():
        b = got.get(name)
        if b is None or np.shape(a) != np.shape(b):
            return float("-inf")
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.ndim == 0:
            a, b = a.reshape(1, 1), b.reshape(1, 1)
        if mask is not None and a.ndim == 3 and a.shape[:2] == mask.shape:
            keep = mask.astype(bool)
            a, b = a[keep], b[keep]
        else:
            a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        num = np.sum(a * b, axis=1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
        sims.extend((num / den).tolist())
    return float(np.mean(sims)) if sims else float("-inf")


def check_agreement(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                    atol: float, what: str, path: Path | None) -> dict[str, float]:
    """Hidden states: absolute tolerance; logits and other outputs: relative to their scale."""
    diffs = {}
    for name in ref:
        if name not in got:
            raise LeanifyError(f"{what} lacks output '{name}'.", path=path)
        relative = name != "last_hidden_state"
        diffs[name] = max_diff({name: ref[name]}, {name: got[name]}, relative)[name]
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        raise LeanifyError(
            f"{what} disagrees with its source beyond the tolerance {atol:g} ({detail}).",
            path=path,
            fix="Try another exporter or opset, or loosen the pass's atol if you accept this.",
        )
    return diffs


def link_or_copy(src: Path, dst: Path, work_dir: Path) -> None:
    """Hard links for files leanify made (a settings variant of a multi-GB model then costs no
    disk; they are never written again); copies of the user's own files, never links."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve().is_relative_to(Path(work_dir).resolve()):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def run_worker(argv: list[str], artifact: Artifact, *, timeout_s: float, what: str,
               fix: str) -> dict[str, Any]:
    """Run an exporter's worker in its own environment; its facts come back as the last line
    of its stdout, `{"ok": true, ...}` or `{"ok": false, "error": ...}`. A failure or a timeout
    is a LeanifyError naming the model: "`what` could not export this model (reason)"."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONNOUSERSITE": "1"})
    except subprocess.TimeoutExpired as exc:
        raise LeanifyError(f"{what} ran over {timeout_s:g} s on this model.",
                           path=artifact.path, fix=fix) from exc
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    try:
        facts = json.loads(last)
    except json.JSONDecodeError:
        facts = {"ok": False, "error": first_line(RuntimeError(proc.stderr.strip()[-2000:]
                                                                or "no output"))}
    if not facts.get("ok"):
        raise LeanifyError(f"{what} could not export this model ({facts['error']}).",
                           path=artifact.path, fix=fix)
    return facts
