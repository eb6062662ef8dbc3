"""`leanify doctor`: measure what is wrong with a model before optimizing it.

One call, one record (`schema_version` 1, documented in the README): inventory, latency
curves with a fixed-overhead fit, thread scaling, a runtime comparison, per-operator and
per-layer profile, spectral metrics, redundancy signals, per-layer quantization sensitivity,
context-length statistics and the verdict with its recommended command.

Runtimes never share a process: timing goes through `measure.bench` (a process per model);
the PyTorch analyses run in one child process, the ONNX Runtime ones in another.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanify.diagnose import context as ctxmod
from leanify.diagnose import inventory, latency
from leanify.diagnose.common import in_child
from leanify.diagnose.probes import Sections, onnx_probe, runtime_probe, torch_probe
from leanify.diagnose.verdict import decide
from leanify.errors import LeanifyError
from leanify.measure.machine import cpu_busy_fraction, machine_info, usable_cores
from leanify.measure.workload import image_dims
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.models.safety import trusting_code

SCHEMA_VERSION = 1
TORCH_FORMATS = ("hf", "torchscript", "pt2", "torch-module", "keras")
# exported to ONNX for the runtime comparison
EXPORTED = ("hf", "torch-module", "keras", "pt2")
HEAVY_MS = 1000.0  # a typical run slower than this: fewer curve points
Progress = Callable[[int, int, str], None]


@dataclass
class DoctorSettings:
    data: Path | None = None
    task: str | None = None  # default: inferred from the model and the data
    latency_budget_ms: float | None = None
    memory_budget_mb: float | None = None
    trace: Path | None = None
    quick: bool = True
    threads: int | None = None
    tokenizer: str | None = None
    sample: Path | None = None  # an input sample (.npz) for models without a tokenizer
    trust_pickle: bool = False
    trust_code: bool = False  # TorchScript / compiled .pt2 members (see models/safety.py)
    top: int = 15
    rate: float | None = None  # requests/s to serve: measure the server around the model
    outputs: tuple[Path, ...] = ()  # files the caller will write (--json, --html): checked first

    def check(self) -> None:
        if self.task is not None:
            from leanify import tasks

            tasks.get(self.task)  # a clear error naming the tasks there are
        for name, value in (("--latency-budget-ms", self.latency_budget_ms),
                            ("--memory-budget-mb", self.memory_budget_mb)):
            if value is not None and not value > 0:
                raise LeanifyError(f"{name} must be a positive number, got {value}.",
                                   fix=f"Use e.g. {name} 100.")
        if self.threads is not None and self.threads < 1:
            raise LeanifyError("threads must be at least 1.", fix="Use e.g. --threads 2.")
        if self.rate is not None and not 0 < self.rate <= 5000:
            raise LeanifyError(f"--rate must be between 0 and 5000 requests/s, got {self.rate}.",
                               fix="Use e.g. --rate 20.")


def check_output(path: str | os.PathLike, artifact: Artifact | None = None,
                 option: str = "output") -> Path:
    """A file leanify may write: its folder exists and is writable, not inside the model."""
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise LeanifyError(f"is a folder; {option} needs a file path.", path=target,
                           fix="Give a file name, e.g. doctor.json.")
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise LeanifyError("cannot be written (its folder is missing or read-only).",
                           path=target, fix="Choose a path in a writable folder.")
    if artifact is not None and artifact.path is not None:
        root = artifact.path if artifact.path.is_dir() else artifact.path.parent
        if target.is_relative_to(root.resolve()):
            raise LeanifyError("is inside the input model's folder; leanify never writes there.",
                               path=target, fix=f"Write {option} somewhere else.")
    return target


def _read_images(settings: DoctorSettings, artifact: Artifact) -> tuple[Any, str]:
    """An image model's --data: its images (a folder per class or any images under a folder,
    a CSV/JSONL of paths, an .npz) and the image task they read as."""
    from leanify.measure.data import read_dataset

    order = [settings.task] if settings.task else ["image-classification", "image-fidelity"]
    for i, task in enumerate(order):
        try:
            return read_dataset(settings.data, task), task
        except LeanifyError:
            if i == len(order) - 1:
                raise
    raise AssertionError("unreachable")


def _read_data(settings: DoctorSettings, artifact: Artifact) -> tuple[list[str], str | None]:
    """The data's texts and the task it reads as (for the recommended optimize command)."""
    if settings.data is None:
        return [], settings.task
    from leanify.measure.data import read_dataset

    if settings.task:
        order = [settings.task]
    elif artifact.meta.get("task") == "text-classification":
        order = ["text-classification", "fidelity"]
    elif artifact.meta.get("task") == "sentence-embedding":
        order = ["embedding-similarity", "fidelity"]
    else:
        order = ["fidelity"]
    if Path(settings.data).is_dir() or Path(settings.data).suffix.lower() == ".npz":
        order = ["fidelity"]  # arrays, one model call per .npz file
    for i, task in enumerate(order):
        try:
            dataset = read_dataset(settings.data, task)
        except LeanifyError:
            if i == len(order) - 1:
                raise
            continue
        return dataset.all_texts(), task
    raise AssertionError("unreachable")


def _sample(texts: list[str], n: int) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


def _fixed_dims(artifact: Artifact, sample: Path | None = None
                ) -> tuple[int | None, int | None]:
    if sample is not None and Path(sample).suffix.lower() == ".npz":
        from leanify.models.inputs import InputBuilder

        builder = InputBuilder(artifact, sample)  # its batch axes say what can grow
        return (None if builder.axes else builder.rows or None), None
    batch = seq = None
    for spec in artifact.inputs:
        if spec.shape and isinstance(spec.shape[0], int) and artifact.format != "hf":
            batch = spec.shape[0]
        if spec.name == "input_ids" and spec.shape and len(spec.shape) > 1 and \
                isinstance(spec.shape[1], int):
            seq = spec.shape[1]
    return batch, seq


def _plan_points(sequence: bool, typical: tuple[int, int], max_len: int,
                 stats: dict[str, Any] | None, quick: bool, heavy: bool,
                 fixed: tuple[int | None, int | None]) -> tuple[list[int], list[int]]:
    if fixed[0] is not None:
        batches = [fixed[0]]
    elif heavy:
        batches = [1] if sequence else [1, 2]
    elif sequence:
        batches = [1, 8] if quick else [1, 8, 32]
    else:
        batches = [1, 4, 16] if quick else [1, 4, 16, 64]
    if not sequence:
        return batches, [typical[1]]
    if fixed[1] is not None:
        return batches, [fixed[1]]
    seqs = {16, 64, typical[1]}
    if stats:
        seqs |= {ctxmod.round_up(stats["p50"]), ctxmod.round_up(stats["p95"])}
    if not quick:
        seqs |= {32, 128, 256}
    if heavy:
        seqs = {min(seqs), typical[1]} | ({ctxmod.round_up(stats["p50"])} if stats else set())
    return batches, sorted(s for s in seqs if s <= max(max_len, typical[1]))


def doctor(model: str | os.PathLike | Artifact, settings: DoctorSettings | None = None,
           progress: Progress | None = None) -> dict[str, Any]:
    """Diagnose `model`; return the record (see the README for its schema)."""
    settings = settings or DoctorSettings()
    settings.check()
    with trusting_code(settings.trust_code):
        return _doctor(model, settings, progress)


def _doctor(model: str | os.PathLike | Artifact, settings: DoctorSettings,
            progress: Progress | None) -> dict[str, Any]:
    tick = progress or (lambda _d, _t, _w: None)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    artifact = load(model, tokenizer=settings.tokenizer, trust_pickle=settings.trust_pickle)
    trace = str(check_output(settings.trace, artifact, "--trace")) if settings.trace else None
    for path in settings.outputs:
        check_output(path, artifact)
    if artifact.meta.get("task") == "text-generation":
        return _doctor_llm(model, artifact, settings, tick, started, t0)
    images, image_batch, texts, task = None, None, [], settings.task
    if settings.data is not None and image_dims(artifact) is not None and (
            settings.task is None or settings.task.startswith("image")):
        try:
            images, task = _read_images(settings, artifact)
        except LeanifyError:
            if settings.task:  # asked for an image task: its reader's error stands
                raise
    if images is None:  # texts, or arrays (.npz) for an image-shaped model
        texts, task = _read_data(settings, artifact)
    threads = settings.threads or usable_cores()
    from leanify.measure.workload import sample_length

    fixed_length = sample_length(artifact, settings.sample)
    # a sample fixes the inputs' length: the curve then runs over batch sizes only
    sequence = latency.has_sequence(artifact) and fixed_length is None
    limits = ctxmod.max_length_of(artifact)
    max_len = ctxmod.effective_max_length(limits)
    fixed = _fixed_dims(artifact, settings.sample)
    parent = Sections()
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": "leanify doctor",
        "started": started.isoformat(timespec="seconds"),
        "input": {"model": str(model) if not isinstance(model, Artifact) else model.name,
                  "path": str(artifact.path) if artifact.path else None,
                  "format": artifact.format, "name": artifact.name},
        "machine": machine_info(),
        "warnings": [],
    }
    record["machine"]["cpu_busy_before"] = cpu_busy_fraction()
    stats = None
    lengths = None
    if texts and sequence and artifact.tokenizer_path is not None:
        lengths = ctxmod.token_lengths(texts, artifact.tokenizer_path)
        stats = ctxmod.length_stats(lengths, max_len)
    elif texts and artifact.tokenizer_path is None:
        record["warnings"].append("the model has no tokenizer files, so --data could not be "
                                  "tokenized: pass --tokenizer DIR for the context analysis")
    if not sequence:  # the length label bench gives the point (a static image's size)
        from leanify.measure.workload import points

        seq = fixed_length or points(artifact, [1], [1], settings.sample)[0][1]
    elif fixed[1] is not None:
        seq = fixed[1]
    elif stats:
        seq = min(ctxmod.round_up(stats["p95"]), max_len)
    else:
        seq = min(128, max_len)
    typical = (fixed[0] or 1, seq)
    sample = _sample(texts, 256 if settings.quick else 1024) if artifact.tokenizer_path else []
    record["settings"] = {
        "data": str(settings.data) if settings.data else None, "task": task,
        "sample": str(settings.sample) if settings.sample else None,
        "trust_code": settings.trust_code,
        "latency_budget_ms": settings.latency_budget_ms,
        "memory_budget_mb": settings.memory_budget_mb, "quick": settings.quick,
        "threads": threads, "sequence": sequence, "image_input": image_dims(artifact) is not None,
        "typical": {"batch_size": typical[0], "seq_len": typical[1]},
        "typical_rule": ("batch 1 × the data's 95th-percentile token length (rounded up to a "
                         "multiple of 8, capped at the model's maximum)" if stats else
                         "batch 1 × 128 tokens (capped at the model's maximum)" if sequence
                         else "batch 1"),
        "texts_sampled": len(sample),
    }
    record["inventory"] = inventory.static(artifact)
    if images is not None:  # the resolution they have; a batch of them for the sensitivity
        from leanify import tasks
        from leanify.diagnose.resolution import image_sizes
        from leanify.tasks.image import batches

        prepared = tasks.get(task).prepare(artifact)
        pre = prepared.meta["preprocess"]
        record["images"] = image_sizes(images, pre["height"], pre["width"])
        record["images"]["preprocess_from"] = pre.get("source")
        image_batch = next(batches(prepared, images.subset(list(range(min(32, len(images))))),
                                   32), None)
    total = 6 + (settings.rate is not None)
    step = [0]

    def say(what: str) -> None:
        tick(step[0], total, what)
        step[0] += 1

    def sub(prefix: str) -> Progress:
        return lambda _d, _t, what: tick(step[0], total, f"{prefix}: {what}")

    req = {"path": str(artifact.path) if artifact.path else None, "name": artifact.name,
           "tokenizer": str(artifact.tokenizer_path) if artifact.tokenizer_path else None,
           "trust_pickle": settings.trust_pickle, "threads": threads,
           "sample": str(settings.sample) if settings.sample else None,
           "typical": list(typical), "sequence": sequence, "texts": sample,
           "max_length": max_len, "trace": trace, "top": settings.top,
           "profile_iters": 5 if settings.quick else 20,
           "isa_flags": record["machine"]["cpu"]["isa_flags"], "image_batch": image_batch}
    bench_extra = {"tokenizer": settings.tokenizer, "trust_pickle": settings.trust_pickle,
                   "sample": str(settings.sample) if settings.sample else None}
    with tempfile.TemporaryDirectory(prefix="leanify-doctor-") as scratch:
        say("profiling, FLOPs, weights and activations"
            if artifact.format in TORCH_FORMATS else "profiling and quantization sensitivity"
            if artifact.format == "onnx" else "the model's outputs")
        if artifact.format in TORCH_FORMATS:
            req["export_dir"] = scratch if artifact.format in EXPORTED else None
            if artifact.format == "torch-module":
                result = torch_probe({**req, "artifact": artifact})
            else:
                result = in_child(torch_probe, req)
        elif artifact.format == "onnx":
            result = in_child(onnx_probe, {**req, "profile": True, "sensitivity": True})
        else:  # OpenVINO IR, TFLite: no profiler leanify reads; outputs and timings only
            result = in_child(runtime_probe, req)
        _merge(record, result, parent)
        heavy = (record.get("profile") or {}).get("ms_per_run", 0) > HEAVY_MS
        batches, seqs = _plan_points(sequence, typical, max_len, stats, settings.quick, heavy,
                                     fixed)
        lat: dict[str, Any] = {}
        record["latency"] = lat
        exported = result.get("exported_onnx")
        say("latency curve" + (" (and ONNX Runtime alongside)" if exported else ""))
        with parent.run("latency_curve"):
            other = load(exported, name=f"{artifact.name} (ONNX Runtime fp32)") \
                if exported else None
            lat["curve"] = latency.curve(artifact, batches, seqs, threads, settings.quick,
                                         sub("latency curve"), other=other, **bench_extra)
            lat["overhead"] = latency.fit_overhead(lat["curve"]["points"], typical, sequence)
            lat["runtimes"] = latency.runtimes(lat["curve"], typical)
        if lat.get("runtimes") is None:
            lat["runtimes_note"] = (
                "the model already runs in ONNX Runtime" if artifact.format == "onnx" else
                f"leanify exports Hugging Face folders, Keras, .pt2 files and modules to ONNX; a "
                f"{artifact.format} file is not compared" if not exported else
                "the comparison did not finish")
        typ_p50 = next((p["p50_ms"] for p in lat.get("curve", {}).get("points", [])
                        if (p["batch_size"], p["seq_len"]) == typical), None)
        say("thread scaling")
        if typ_p50 is not None:
            with parent.run("thread_scaling"):
                lat["threads"] = latency.thread_scaling(
                    artifact, typical, threads, typ_p50, settings.quick, sub("one thread"),
                    **bench_extra)
        say("quantization sensitivity")
        if exported:
            with parent.run("sensitivity_child"):
                sens = in_child(onnx_probe, {**req, "path": exported, "trace": None,
                                             "profile": False, "sensitivity": True,
                                             "tokenizer": None})
                record["sensitivity"] = sens.get("sensitivity")
                conv = (sens.get("inventory") or {}).get("convolutions")
                if conv:  # the export's convolutions: what pruning it can cut
                    record["inventory"]["convolutions"] = conv
                parent.out["sections"].update(sens["sections"])
    if settings.rate is not None:
        say(f"serving at {settings.rate:g} requests/s")
        record["serving"] = _serve(model, artifact, settings, texts, threads, record)
    say("context length")
    if stats is not None and lengths is not None:
        with parent.run("context"):
            record["context"] = _context(stats, lengths, limits, lat, typical)
    say("verdict")
    for w in (lat.get("curve") or {}).get("warnings", []):
        if w not in record["warnings"]:
            record["warnings"].append(w)
    record["machine"]["cpu_busy_after"] = cpu_busy_fraction()
    record["sections"] = parent.out["sections"]
    record["verdict"] = decide(record, record["input"]["model"],
                               str(settings.data) if settings.data else None, task)
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    tick(total, total, "done")
    return record


def _doctor_llm(model: Any, artifact: Artifact, settings: DoctorSettings, tick: Progress,
                started: datetime, t0: float) -> dict[str, Any]:
    """A causal LM: weights, decode's memory bound, prompt lengths, KV cache (diagnose/llm.py)."""
    from leanify.diagnose.llm import doctor_llm

    texts: list[str] = []
    if settings.data is not None:
        from leanify.measure.data import read_dataset

        texts = read_dataset(settings.data, "perplexity").texts or []
    threads = settings.threads or usable_cores()
    ref = str(model) if not isinstance(model, Artifact) else model.name
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "tool": "leanify doctor",
        "started": started.isoformat(timespec="seconds"),
        "input": {"model": ref, "path": str(artifact.path) if artifact.path else None,
                  "format": artifact.format, "name": artifact.name},
        "machine": machine_info(), "warnings": [],
        "settings": {"data": str(settings.data) if settings.data else None,
                     "task": "perplexity", "threads": threads, "quick": settings.quick,
                     "sequence": True, "latency_budget_ms": settings.latency_budget_ms,
                     "memory_budget_mb": settings.memory_budget_mb,
                     "typical": {"batch_size": 1, "seq_len": None}},
        "inventory": inventory.static(artifact),
    }
    record["machine"]["cpu_busy_before"] = cpu_busy_fraction()
    steps, total = [0], 5 + (settings.rate is not None)

    def say(what: str) -> None:
        tick(steps[0], total, what)
        steps[0] += 1

    if settings.rate is not None:  # before the verdict, which weighs it
        say(f"serving at {settings.rate:g} requests/s")
        record["serving"] = _serve(model, artifact, settings, texts, threads, record)
    doctor_llm(ref, artifact, record, texts, str(settings.data) if settings.data else None,
               threads, settings.quick, settings.latency_budget_ms, settings.memory_budget_mb,
               say)
    record["settings"]["typical"]["seq_len"] = record["verdict"]["budgets"]["point"]["seq_len"]
    record["machine"]["cpu_busy_after"] = cpu_busy_fraction()
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    tick(total, total, "done")
    return record


def _serve(model: Any, artifact: Artifact, settings: DoctorSettings, texts: list[str],
           threads: int, record: dict[str, Any]) -> dict[str, Any] | None:
    from leanify.diagnose.serving import serving
    from leanify.serve.model import check_servable, is_chat_model

    try:
        check_servable(artifact)
    except LeanifyError as exc:
        record["warnings"].append(f"--rate: not measured ({exc.message})")
        return None
    if isinstance(model, Artifact) or artifact.path is None:
        record["warnings"].append("--rate: an in-memory model cannot be served; give a path")
        return None
    extra = [*(("--tokenizer", settings.tokenizer) if settings.tokenizer else ()),
             *(("--trust-pickle",) if settings.trust_pickle else ()),
             *(("--trust-code",) if settings.trust_code else ())]
    chat = is_chat_model(artifact)
    return serving(str(model), settings.rate, texts, threads, extra=tuple(extra),
                   duration_s=(10.0 if settings.quick else 30.0) if chat else
                   (4.0 if settings.quick else 10.0), chat=chat)


def _merge(record: dict[str, Any], result: dict[str, Any], parent: Sections) -> None:
    inv = result.get("inventory") or {}
    record["inventory"].update(inv)
    for key in ("profile", "spectral", "redundancy", "sensitivity"):
        if key in result:
            record[key] = result[key]
    parent.out["sections"].update(result.get("sections", {}))


def _context(stats: dict[str, Any], lengths, limits: dict[str, Any], lat: dict[str, Any],
             typical: tuple[int, int]) -> dict[str, Any]:
    points = (lat.get("curve") or {}).get("points", [])
    out: dict[str, Any] = {"stats": stats, "limits": limits}
    if not points:
        return out
    fit = lat.get("overhead") or {}
    if not fit.get("fitted"):
        return out
    measured = {(p["batch_size"], p["seq_len"]): p["p50_ms"] for p in points}

    def at(batch: int, seq: int) -> float:  # the fit: monotone, robust to a noisy point
        return fit["intercept_ms"] + fit["per_unit_ms"] * batch * seq

    out["latency_at_lengths"] = {
        name: {"seq_len": n, "batch_size": 1,
               "p50_ms": round(measured.get((1, n), at(1, n)), 3),
               "source": "measured" if (1, n) in measured else "fitted"}
        for name, n in (("p50", ctxmod.round_up(stats["p50"])),
                        ("p95", ctxmod.round_up(stats["p95"])),
                        ("max_length", stats["max_length"]))}
    batch = max(p["batch_size"] for p in points)
    out["padding"] = ctxmod.padding_costs(lengths, batch, stats["max_length"], at)
    out["padding"]["estimated_from"] = ("the linear fit of the measured curve "
                                        "(latency = a + b × tokens)")
    return out


def write_reports(record: dict[str, Any], json_path: str | os.PathLike | None = None,
                  html_path: str | os.PathLike | None = None) -> None:
    """Write the record and the HTML report, each atomically."""
    from leanify.measure.bench import write_json

    if json_path is not None:
        write_json(record, json_path)
    if html_path is not None:
        from leanify.report.doctor import render_doctor_html

        target = Path(html_path)
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_text(render_doctor_html(record), encoding="utf-8")
        os.replace(tmp, target)
