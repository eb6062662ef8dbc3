"""`leanify bench`: side-by-side latency, throughput and memory, each model in its own process.

Why child processes: ONNX Runtime and PyTorch thread pools in one process fight over the cores
(measured: PyTorch eager ~15x slower next to an ORT session on 2 cores). Why interleaved
rounds (A B C A B C ...): drift on a shared machine then hits every model alike, so the
ratios stay honest even when absolute times move.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanify import sandbox
from leanify.errors import LeanifyError, first_line
from leanify.measure import memory, stats, workload
from leanify.measure.lifeline import PARENT_ENV
from leanify.measure.machine import cpu_busy_fraction, machine_info, usable_cores
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.models.safety import trusting_code

SCHEMA_VERSION = 1
BUSY_WARNING = 0.25  # share of all cores used by others, while leanify idles, that we flag
Progress = Callable[[int, int, str], None]  # (done, total, what is running)


@dataclass
class BenchSettings:
    batch_sizes: Sequence[int] | None = (1,)  # None: the workload's default
    seq_lens: Sequence[int] = (128,)
    # causal LMs (the generation workload): prompt lengths, new tokens, timed calls per round
    prompt_tokens: Sequence[int] = (128,)
    new_tokens: int = 32
    generations: int = 1
    threads: int | None = None  # None: every usable core
    rounds: int = 3
    warmup_s: float = 0.5
    min_iters: int = 10
    min_time_s: float = 1.0
    max_time_s: float = 20.0
    sample: str | None = None
    tokenizer: str | None = None
    trust_pickle: bool = False
    trust_code: bool = False  # TorchScript / compiled .pt2 members (see models/safety.py)

    def check(self) -> None:
        if self.batch_sizes is not None and (
                not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes)):
            raise LeanifyError("batch sizes must be positive integers.",
                               fix="Use e.g. --batch-size 1,32.")
        if not self.seq_lens or any(int(s) < 1 for s in self.seq_lens):
            raise LeanifyError("sequence lengths must be positive integers.",
                               fix="Use e.g. --seq-len 16,128.")
        if self.rounds < 1 or self.min_iters < 1:
            raise LeanifyError("rounds and iterations must be at least 1.",
                               fix="Use e.g. --rounds 3.")
        if not self.prompt_tokens or any(int(p) < 1 for p in self.prompt_tokens) or \
                self.new_tokens < 2 or self.generations < 1:
            # the first new token ends the prefill; a decode rate needs at least one more
            raise LeanifyError("prompt tokens must be positive and new tokens at least 2.",
                               fix="Use e.g. --prompt-tokens 512 --new-tokens 128.")
        if self.threads is not None and self.threads < 1:
            raise LeanifyError("threads must be at least 1.", fix="Use e.g. --threads 2.")


@dataclass
class _Model:
    artifact: Artifact
    source: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    samples: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    round_medians: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    peaks: dict[tuple[int, int], float] = field(default_factory=dict)
    first_ms: dict[tuple[int, int], float] = field(default_factory=dict)
    process_peak: float = 0.0
    shapes: dict[tuple[int, int], dict[str, list[int]]] = field(default_factory=dict)
    calls: dict[tuple[int, int], list[list[dict]]] = field(default_factory=dict)  # per round


class WorkerDied(RuntimeError):
    """A measuring process ended without answering (killed, out of memory, crashed)."""


class _Child:
    """One measuring process, spoken to in JSON lines.

    It runs in its own process group, so a Ctrl-C reaches only leanify, which then kills it
    (and anything it started); it kills itself if leanify dies (see worker.die_with_parent).
    """

    def __init__(self, env: dict[str, str], label: str):
        self.label = label
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leanify.measure.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env={**env, PARENT_ENV: str(os.getpid())}, text=True, bufsize=1,
            process_group=0,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            raise WorkerDied(
                f"the measuring process for {self.label} died (exit code "
                f"{self.proc.returncode}); its last output:\n{self.stderr_tail()}"
            )
        reply = json.loads(line)
        if reply.get("ok"):
            return reply
        if reply.get("kind") == "input":
            raise LeanifyError(reply["message"])
        if sandbox.out_of_memory(str(reply.get("message"))):  # past the worker's budget
            raise sandbox.memory_error(self.label, str(reply.get("message")),
                                       reply.get("memory_limit_gb"))
        raise RuntimeError(
            f"measuring {self.label} failed: {reply.get('message')}\n{reply.get('traceback', '')}"
        )

    def stderr_tail(self, lines: int = 20) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self.log.close()

    def kill(self) -> None:
        """Stop it now (Ctrl-C, an error elsewhere): its group, so its own children too."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONUNBUFFERED": "1",
    })
    # The child must import this very leanify, also when it runs from a source tree.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def bench(
    models: Sequence[str | os.PathLike | Artifact],
    settings: BenchSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure every model at every (batch size, sequence length) point; return the record.

    The first model is the baseline: every other model gets ratios against it.
    """
    settings = settings or BenchSettings()
    with trusting_code(settings.trust_code), BenchSession(models, settings, progress) as session:
        for _ in range(settings.rounds):
            session.run_round()
        return session.record()


Spawn = Callable[[dict[str, str], str], Any]  # (env, label) -> a measuring process
Probe = Callable[[], "float | None"]  # share of the CPU others keep busy right now


class BenchSession:
    """The measuring processes of one side-by-side run, kept alive between rounds.

    `run_round()` measures every point once for every model, back to back (round r: for each
    point: for each model), so a caller can add rounds until the answer it needs is clear.
    `spawn` makes one measuring process (anything with `ask(request) -> reply` and `close()`,
    speaking the worker's protocol); `probe` samples how busy the machine is.
    """

    def __init__(self, models: Sequence[str | os.PathLike | Artifact],
                 settings: BenchSettings | None = None, progress: Progress | None = None,
                 spawn: Spawn | None = None, probe: Probe | None = None):
        self.settings = settings or BenchSettings()
        self.settings.check()
        if not models:
            raise LeanifyError("no model to benchmark.", fix="Name at least one model.")
        self.models = models
        self.spawn = spawn or _Child
        self.probe = probe or cpu_busy_fraction
        self.threads = self.settings.threads or usable_cores()
        self.points: list[tuple[int, int]] = []  # known once the models are loaded
        self.rounds = 0
        self._done = 0
        self.tick = progress or (lambda _d, _t, _w: None)
        self.children: list[Any] = []
        self.entries: list[_Model] = []
        self._scratch: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> BenchSession:
        try:
            self.open()
        except BaseException:
            self.close(kill=True)
            raise
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        self.close(kill=exc_type is not None)

    def open(self) -> None:
        settings = self.settings
        self._scratch = tempfile.TemporaryDirectory(prefix="leanify-bench-")
        self.entries = _resolve(self.models, settings, Path(self._scratch.name))
        first = self.entries[0].artifact
        self.generation = workload.for_artifact(first) is workload.GENERATION
        if settings.batch_sizes is None:  # one chat request; text: a request and a batch
            settings.batch_sizes = (1,) if self.generation else (1, 32)
        if self.generation:
            _check_generators(self.entries)
            self.points = sorted({(int(b), int(p)) for b in settings.batch_sizes
                                  for p in settings.prompt_tokens},
                                 key=lambda p: (p[0] * p[1], p[0]))
        else:
            # Smallest first: round 1 then sees each point's memory before larger points grow
            # the allocators' pools, and that first visit is the peak RSS reported for it.
            self.points = workload.points(first, settings.batch_sizes, settings.seq_lens,
                                          settings.sample)
        self.started = datetime.now(UTC)
        self.machine = machine_info()
        self.machine["cpu_busy_before"] = self.probe()
        self.bare_mb = memory.bare_interpreter_rss_mb()
        env = child_env(self.threads)
        for entry in self.entries:  # one at a time: loads must not compete for the cores
            self.tick(self._done, self._total(), f"loading {entry.name}")
            child = self.spawn(env, entry.name)
            self.children.append(child)
            entry.info = child.ask({
                "cmd": "load", "source": entry.source, "name": entry.name,
                "threads": self.threads, "sample": settings.sample,
                "tokenizer": (str(entry.artifact.tokenizer_path)
                              if entry.artifact.tokenizer_path else None),
                "trust_pickle": settings.trust_pickle, "generation": self.generation,
            })
            for point in self.points:  # build and check every batch before any timing
                reply = child.ask({"cmd": "prepare", "batch_size": point[0],
                                   "seq_len": point[1], "new_tokens": settings.new_tokens})
                entry.shapes[point] = reply["shapes"]
            self._done += 1

    def _total(self, rounds: int | None = None) -> int:
        rounds = max(self.settings.rounds, rounds or 0, self.rounds)
        return len(self.entries) * (1 + len(self.points) * rounds)

    def run_round(self, of: int | None = None) -> None:
        """One more round: every point, every model back to back at that point."""
        settings = self.settings
        of = of or max(settings.rounds, self.rounds + 1)
        for point in self.points:
            for entry, child in zip(self.entries, self.children, strict=True):
                self.tick(self._done, self._total(of),
                          f"round {self.rounds + 1}/{of} · {entry.name} · "
                          f"batch {point[0]} × seq {point[1]}")
                if self.generation:
                    reply = child.ask({"cmd": "generate", "batch_size": point[0],
                                       "seq_len": point[1], "new_tokens": settings.new_tokens,
                                       "calls": settings.generations})
                    entry.calls.setdefault(point, []).append(reply["calls"])
                    entry.process_peak = max([entry.process_peak,
                                              *(c["peak_rss_mb"] for c in reply["calls"])])
                    self._done += 1
                    continue
                reply = child.ask({
                    "cmd": "measure", "batch_size": point[0], "seq_len": point[1],
                    "warmup_s": settings.warmup_s, "min_iters": settings.min_iters,
                    "min_time_s": settings.min_time_s, "max_time_s": settings.max_time_s,
                })
                entry.samples.setdefault(point, []).extend(reply["samples_ms"])
                entry.round_medians.setdefault(point, []).append(
                    stats.percentiles(reply["samples_ms"])["p50"])
                entry.peaks.setdefault(point, reply["peak_rss_mb"])
                entry.process_peak = max(entry.process_peak, reply["peak_rss_mb"])
                entry.first_ms.setdefault(point, reply["first_run_ms"])
                self._done += 1
        self.rounds += 1
        if self.rounds >= self.settings.rounds:
            self.tick(self._total(), self._total(), "done")

    def record(self, probe: bool = True) -> dict[str, Any]:
        """The bench record of the rounds run so far (the same format as `bench()`).
        `probe=False` skips sampling how busy the machine is (a half-second pause)."""
        if self.rounds == 0:
            raise ValueError("no round was measured")
        machine = dict(self.machine)
        # A busy machine inflates times: record the load around the run.
        machine["load_average_start"] = machine.pop("load_average", None)
        machine["load_average_end"] = load_average_now()
        machine["cpu_busy_after"] = self.probe() if probe else None
        settings = replace(self.settings, rounds=self.rounds)
        if self.generation:
            return _generation_record(self.entries, self.points, settings, self.threads,
                                      machine, self.bare_mb, self.started, datetime.now(UTC))
        return _record(self.entries, self.points, settings, self.threads, machine,
                       self.bare_mb, self.started, datetime.now(UTC))

    def close(self, kill: bool = False) -> None:
        """Let the measuring processes quit; `kill`: stop them at once (an interruption or
        an error must not wait for a measurement to end)."""
        for child in self.children:
            try:
                if kill and hasattr(child, "kill"):
                    child.kill()
                child.close()
            except Exception:  # a dead process must not hide the error that killed it
                pass
        self.children = []
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _resolve(
    models: Sequence[str | os.PathLike | Artifact], settings: BenchSettings, scratch: Path
) -> list[_Model]:
    """Check every model up front (clear errors before any long work), name them uniquely."""
    entries: list[_Model] = []
    seen: dict[str, int] = {}
    for i, model in enumerate(models):
        artifact = load(model, tokenizer=settings.tokenizer, trust_pickle=settings.trust_pickle)
        source = str(artifact.path) if artifact.path else ""
        if artifact.format == "torch-module":
            source = str(_export_module(artifact, scratch / f"module_{i}.pt2"))
        name = artifact.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        entries.append(_Model(artifact, source, name))
    _share_tokenizer(entries)
    return entries


def _check_generators(entries: list[_Model]) -> None:
    """Generation compares causal LMs only, each on a runtime that generates."""
    from leanify.runtimes import generator_for

    for entry in entries:
        art = entry.artifact
        if workload.for_artifact(art) is not workload.GENERATION:
            raise LeanifyError(
                f"is a {art.meta.get('task') or art.format} model; the baseline is a causal "
                "language model, so every model is timed generating text.", path=art.path,
                fix="Compare causal LMs with causal LMs, and other models in another run.")
        generator_for(art)


def _share_tokenizer(entries: list[_Model]) -> None:
    """A text model without a tokenizer borrows a compared model's, if the vocabularies match.

    Then every model sees the same real tokens, not random ids (an ONNX export often sits in a
    folder without the tokenizer files).
    """
    from dataclasses import replace

    def vocab(artifact: Artifact) -> int | None:
        spec = next((s for s in artifact.inputs if s.name == "input_ids"), None)
        return int(spec.high) if spec and spec.high else None

    donors = [e for e in entries if e.artifact.tokenizer_path and vocab(e.artifact)]
    for entry in entries:
        art = entry.artifact
        if art.tokenizer_path or vocab(art) is None:
            continue
        donor = next((d for d in donors if vocab(d.artifact) == vocab(art)), None)
        if donor is not None:
            meta = {**art.meta, "tokenizer": str(donor.artifact.tokenizer_path),
                    "tokenizer_from": donor.name}
            entry.artifact = replace(art, meta=meta)


def _export_module(artifact: Artifact, target: Path) -> Path:
    """An in-memory module reaches its measuring process as a torch.export program."""
    import torch

    module, example = artifact.module
    # Dynamic where the artifact's signature is symbolic (batch, and sequence for tokens).
    shapes = {spec.name: spec.shape or () for spec in artifact.inputs}
    dims = {k: {i: torch.export.Dim.AUTO for i, d in enumerate(shapes.get(k, ()))
                if isinstance(d, str)} for k in example}
    try:
        program = torch.export.export(module.eval(), (), kwargs=example, dynamic_shapes=dims)
        torch.export.save(program, str(target))
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(
            f"the in-memory module {artifact.name} could not be exported with torch.export to "
            f"be measured in its own process ({first}).",
            fix="Save it yourself as ONNX, TorchScript or .pt2 and benchmark that file.",
        ) from exc
    return target


def _record(
    entries: list[_Model], points: list[tuple[int, int]], settings: BenchSettings, threads: int,
    machine: dict, bare_mb: float, started: datetime, finished: datetime,
) -> dict[str, Any]:
    base = entries[0]
    models_out, results = [], []
    for entry in entries:
        art = entry.artifact
        size = art.size_bytes() if art.path else None
        models_out.append({
            "name": entry.name,
            "format": art.format,
            "path": str(art.path) if art.path else None,
            "measured_as": "pt2 (torch.export)" if art.format == "torch-module" else art.format,
            "runtime": entry.info.get("runtime"),
            # what the runtime reports it ran with (OpenVINO: the inference precision used)
            "runtime_settings": entry.info.get("runtime_settings") or {},
            "params": art.meta.get("params"),
            "size_mb": round(size / 2**20, 3) if size is not None else None,
            "load_s": round(entry.info.get("load_s", 0.0), 3),
            "import_s": round(entry.info.get("import_s", 0.0), 3),
            "rss_runtime_mb": round(entry.info.get("rss_runtime_mb", 0.0) - bare_mb, 1),
            "rss_loaded_mb": round(entry.info.get("rss_loaded_mb", 0.0) - bare_mb, 1),
            "peak_rss_mb": round(entry.process_peak - bare_mb, 1),
            "input_source": entry.info.get("input_source"),
            "pid": entry.info.get("pid"),
            "tokenizer_from": art.meta.get("tokenizer_from"),
        })
        for point in points:
            samples = entry.samples[point]
            summary = stats.summarize(samples)
            p50 = summary["p50"]
            row: dict[str, Any] = {
                "model": entry.name,
                "batch_size": point[0],
                "seq_len": point[1],
                "input_shapes": entry.shapes[point],
                "latency_ms": {k: round(v, 4) for k, v in summary.items()
                               if k in ("p50", "p90", "p99", "mean", "std", "min", "max")},
                "latency_p50_ci95_ms": [round(x, 4) for x in summary["p50_ci95"]],
                "round_p50_ms": [round(x, 4) for x in entry.round_medians[point]],
                "samples": summary["n"],
                "first_run_ms": round(entry.first_ms[point], 3),
                "throughput_per_s": round(point[0] * 1000.0 / p50, 3),
                "peak_rss_mb": round(entry.peaks[point] - bare_mb, 1),
                "size_mb": models_out[-1]["size_mb"],
                "params": models_out[-1]["params"],
            }
            if entry is not base:
                row["vs_baseline"] = _vs_baseline(base, entry, point, p50)
            results.append(row)
    warnings = []
    busy = max(machine.get("cpu_busy_before") or 0.0, machine.get("cpu_busy_after") or 0.0)
    if busy > BUSY_WARNING:
        warnings.append(
            f"other processes kept {busy:.0%} of the CPU busy around this run: absolute times "
            "are inflated and noisy; the interleaved ratios are the numbers to trust, and a "
            "quiet rerun is better still")
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "leanify bench",
        "warnings": warnings,
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round((finished - started).total_seconds(), 1),
        "machine": machine,
        "settings": {**asdict(settings), "threads": threads,
                     "batch_sizes": [p for p in settings.batch_sizes],
                     "seq_lens": sorted({p[1] for p in points})},
        "bare_interpreter_rss_mb": round(bare_mb, 1),
        "workload": workload.for_artifact(entries[0].artifact).as_dict(),
        "models": models_out,
        "results": results,
    }


def _generation_record(
    entries: list[_Model], points: list[tuple[int, int]], settings: BenchSettings,
    threads: int, machine: dict, bare_mb: float, started: datetime, finished: datetime,
) -> dict[str, Any]:
    """The bench record of the generation workload: the same frame as `_record`, rows of
    time to first token, time per output token, decode/prefill tokens/s (generation.py)."""
    from leanify.measure import generation

    record = _record(entries, [], settings, threads, machine, bare_mb, started, finished)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        for point in points:
            rounds = entry.calls[point]
            row = generation.row(entry.name, point, settings.new_tokens,
                                 [c for r in rounds for c in r], rounds, entry.artifact,
                                 bare_mb)
            if entry is not entries[0]:
                base = next(r for r in rows if r["model"] == entries[0].name
                            and (r["batch_size"], r["seq_len"]) == point)
                row["vs_baseline"] = generation.vs_baseline(base, row)
            rows.append(row)
    for model, entry in zip(record["models"], entries, strict=True):
        model["kv_bytes_per_token"] = entry.artifact.meta.get("kv_bytes_per_token")
    record["settings"].update({"prompt_tokens": sorted({p[1] for p in points}),
                               "concurrency": sorted({p[0] for p in points})})
    record["settings"].pop("seq_lens", None)
    record["workload"] = {**workload.GENERATION.as_dict(), "new_tokens": settings.new_tokens,
                          "axes": ["concurrency", "prompt tokens"]}
    record["results"] = rows
    return record


def _vs_baseline(base: _Model, entry: _Model, point: tuple[int, int], p50: float
                 ) -> dict[str, Any]:
    """Speed-up over the baseline from the paired rounds (see stats): the geometric mean of
    the per-round ratios baseline p50 / model p50, and a t-interval over rounds. With one
    round there is no spread to go by: the interval is the bootstrap over that round's
    samples, marked as such."""
    base_rounds, rounds = base.round_medians[point], entry.round_medians[point]
    speedup, lo, hi = stats.paired_ratio_ci(base_rounds, rounds)
    method = "paired-rounds-t"
    if lo is None or hi is None:
        lo, hi = stats.ratio_ci(base.samples[point], entry.samples[point])
        method = "bootstrap-one-round"
    base_p50 = stats.percentiles(base.samples[point])["p50"]
    return {
        "baseline": base.name,
        "speedup": round(speedup, 4),
        "speedup_ci95": [round(lo, 4), round(hi, 4)],
        "speedup_rounds": [round(x, 4) for x in stats.paired_ratios(base_rounds, rounds)],
        "speedup_ci_method": method,
        "latency_ratio": round(p50 / base_p50, 4),
    }


def write_json(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a crash never leaves a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a report atomically, like write_json."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_average_now() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None

