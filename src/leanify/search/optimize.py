"""`leanify optimize`: baseline -> candidate pipelines -> gate -> measure -> select -> report.

Every trial is written to a SQLite record in the run folder as it finishes; `resume=True`
reads it back, re-runs nothing that finished (only failures whose cause can go away are
retried: a full disk, a killed child process, an internal error) and re-judges every cached
trial under the current targets. The run folder is locked while a run lives in it. Pass
outputs appear atomically, so a kill at any moment leaves either a finished artifact or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError
from leanify.measure.bench import BenchSession, BenchSettings, Probe, Spawn, write_json
from leanify.measure.machine import machine_info, usable_cores
from leanify.models.artifact import Artifact
from leanify.models.files import SIDECAR, TOKENIZER_FILES
from leanify.models.load import load
from leanify.models.safety import own_outputs, trusting_code
from leanify.passes.registry import PassConfig, PassContext, run_pipeline
from leanify.runlock import LOCK_NAME, RunLock
from leanify.runtimes import for_artifact
from leanify.search.plan import Candidate, Training, plan
from leanify.search.select import (
    OBJECTIVES,
    Targets,
    finalists,
    judge,
    pareto_front,
    select_final,
    target_misses,
)
from leanify.search.store import FILES as STORE_FILES
from leanify.search.store import TrialStore, is_disk_full
from leanify.search.store import remove as remove_store

SCHEMA_VERSION = 1
ORIGINAL = "original"  # the selection's name when no candidate beat the model as it is
Progress = Callable[[int, int, str], None]


@dataclass
class OptimizeSettings:
    task: str
    data: Path
    out: Path
    targets: Targets = field(default_factory=Targets)
    objective: str = "latency"
    batch_sizes: tuple[int, ...] = ()  # (): the workload's default (workload.default_batches)
    seq_lens: tuple[int, ...] = (128,)
    threads: int | None = None
    # Three short rounds rather than two long ones: the speed-up's interval comes from the
    # spread of per-round paired ratios, and two rounds leave one degree of freedom.
    rounds: int = 3
    # The finalists' side-by-side run adds rounds until the best is separated from the
    # runner-up, for at most this long (and at most final_max_rounds rounds).
    final_budget_s: float = 180.0
    final_max_rounds: int = 12
    calibration_size: int = 300
    calibration_data: Path | None = None  # else a calibration split is held out of `data`
    max_length: int = 128
    new_tokens: int = 32  # causal LMs: tokens generated per timed request
    resume: bool = False
    candidates: list[str] | None = None
    text_col: str | None = None
    pair_cols: tuple[str, str] | None = None
    label_col: str | None = None
    score_col: str | None = None
    trust_pickle: bool = False
    trust_code: bool = False  # TorchScript / compiled .pt2 members (see models/safety.py)
    sample: Path | None = None  # an input sample (.npz) for models without a tokenizer
    preprocess: str | None = None  # image tasks: key=value,... or a JSON file (tasks/image.py)
    # --allow-training: prune + distill students on this unlabelled text (never the eval data)
    transfer_data: tuple[Path, ...] = ()
    training_budget_min: float | None = None  # None: no training

    def check(self) -> None:
        from leanify import tasks

        tasks.get(self.task)  # a clear error naming the tasks there are
        if self.objective not in OBJECTIVES:
            raise LeanifyError(f"unknown objective '{self.objective}'.",
                               fix=f"Choose one of: {', '.join(OBJECTIVES)}.")
        if self.rounds < 1:
            raise LeanifyError("--rounds must be at least 1.", fix="Use e.g. --rounds 3.")
        if self.final_budget_s < 0:
            raise LeanifyError("--final-budget-s must be zero or more.",
                               fix="Use e.g. --final-budget-s 180.")
        if self.targets.max_drop < 0:
            raise LeanifyError("--max-drop must be zero or more.", fix="Use e.g. --max-drop 0.5.")
        if self.max_length < 2:
            raise LeanifyError("--max-length must be at least 2 tokens.",
                               fix="Use e.g. --max-length 512.")
        if self.new_tokens < 2:
            raise LeanifyError("--new-tokens must be at least 2 (a first token, then decode).",
                               fix="Use e.g. --new-tokens 128.")
        if self.training_budget_min is not None:
            if not self.transfer_data:
                raise LeanifyError(
                    "--allow-training needs text to distill on.",
                    fix="Pass --transfer-data FILE: sentences from your domain (labels not "
                        "needed), not the evaluation data.")
            for path in self.transfer_data:
                if Path(path).resolve() == Path(self.data).resolve():
                    raise LeanifyError(
                        "the transfer data is the evaluation data: a student trained on it "
                        "would be judged on what it saw.", path=path,
                        fix="Give a different file (e.g. the training split).")
                if not Path(path).is_file():
                    raise LeanifyError("no such file.", path=path,
                                       fix="Check the --transfer-data path.")


@dataclass
class Dependencies:
    """What the search loop calls to plan, build, score and time candidates.

    The defaults are the real ones; tests pass scripted fakes (a planner returning their own
    candidates, an evaluator returning set metrics, and measuring processes answering the
    worker's protocol with set timings) to test the loop itself without real models.
    """

    plan: Callable[..., list[Candidate]] = plan
    build: Callable[[Artifact, Sequence[PassConfig], PassContext], Artifact] = run_pipeline
    # (artifact, dataset, settings, threads, reference) -> metric record; None: _evaluate
    evaluate: Callable[..., dict[str, Any]] | None = None
    spawn: Spawn | None = None  # a measuring process (bench's worker by default)
    probe: Probe | None = None  # how busy the machine is (machine.cpu_busy_fraction)

    def score(self, artifact: Artifact, dataset, settings: OptimizeSettings, threads: int,
              reference: str | None = None) -> dict[str, Any]:
        return (self.evaluate or _evaluate)(artifact, dataset, settings, threads, reference)

    def session(self, models: Sequence[Artifact], settings: BenchSettings) -> BenchSession:
        return BenchSession(models, settings, spawn=self.spawn, probe=self.probe)


# Per-round timing: short rounds (several rounds of paired ratios tell more than one long
# one); min_iters 3 keeps the slowest points (batch 32 x 128 tokens, ~0.3 s a run on 2 cores)
# near the time that two rounds of 5 iterations took.
TRIAL_TIMING = {"warmup_s": 0.2, "min_iters": 3, "min_time_s": 0.3}


def optimize(model: str | os.PathLike | Artifact, settings: OptimizeSettings,
             progress: Progress | None = None,
             deps: Dependencies | None = None) -> dict[str, Any]:
    """Run the whole search; return the record also written to OUT/leanify.json.

    An internal error (not a LeanifyError) escaping the run leaves its traceback in
    OUT/errors/ and names that file in the exception's `traceback_file`. The run folder is
    locked while the run lives; a run that stops before its first trial leaves no trial
    record behind.
    """
    settings.check()
    deps = deps or Dependencies()
    folder = _RunFolder()
    try:
        # workers and passes inherit both: the user's choice, and that the candidates leanify
        # writes under --out are its own (a TorchScript candidate made from safetensors)
        with trusting_code(settings.trust_code), own_outputs(settings.out):
            return _optimize(model, settings, progress, deps, folder)
    except LeanifyError:
        raise
    except KeyboardInterrupt:
        folder.keep = True  # Ctrl-C: the folder stays for the --resume the message suggests
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise LeanifyError("the disk is full.", path=getattr(exc, "filename", None),
                               fix="Free some space, then continue with --resume: finished "
                                   "trials are kept.") from exc
        if folder.out is not None:
            with contextlib.suppress(OSError):
                exc.traceback_file = str(_save_error(  # type: ignore[attr-defined]
                    folder.out, "crash", traceback.format_exc()))
        raise
    finally:
        folder.close()


def _optimize(model: str | os.PathLike | Artifact, settings: OptimizeSettings,
              progress: Progress | None, deps: Dependencies, folder: _RunFolder
              ) -> dict[str, Any]:
    from leanify import tasks
    from leanify.measure.data import read_dataset, split

    task = tasks.get(settings.task)
    tick = progress or (lambda _d, _t, _w: None)
    source = task.prepare(load(model, trust_pickle=settings.trust_pickle), settings.preprocess)
    # Everything that can be wrong with the input is checked before any long work.
    dataset = read_dataset(settings.data, settings.task, text_col=settings.text_col,
                           pair_cols=settings.pair_cols, label_col=settings.label_col,
                           score_col=settings.score_col)
    _check_out_location(settings.out, source, settings)
    task.check(source, dataset)
    if not settings.batch_sizes:
        from leanify.measure.workload import default_batches

        settings.batch_sizes = default_batches(source, settings.sample)
    threads = settings.threads or usable_cores()
    if settings.calibration_data is not None:
        calib_set = read_dataset(settings.calibration_data, settings.task,
                                 text_col=settings.text_col, pair_cols=settings.pair_cols,
                                 label_col=settings.label_col, score_col=settings.score_col)
        if Path(settings.calibration_data).resolve() == Path(settings.data).resolve():
            raise LeanifyError("the calibration data is the evaluation data.",
                               path=settings.calibration_data,
                               fix="Give a different file, or leave --calibration-data out to "
                               "hold a split out of --data.")
        n = min(settings.calibration_size, len(calib_set))
        calibration, evaluation = calib_set.subset(list(range(n))), dataset
    else:
        calibration, evaluation = split(dataset, calibration_size=settings.calibration_size)
    isa_flags = frozenset(machine_info()["cpu"]["isa_flags"])
    training = None
    if settings.training_budget_min is not None:
        training = Training(data=tuple(Path(p).resolve() for p in settings.transfer_data),
                            budget_min=settings.training_budget_min)
    candidates = deps.plan(source, only=settings.candidates, calibration=len(calibration) > 0,
                           batch_sizes=tuple(settings.batch_sizes),
                           isa_flags=isa_flags, training=training,
                           max_drop=settings.targets.max_drop)

    identity = {
        "model": str(source.path), "model_sha256": source.sha256(),
        "data": str(Path(settings.data).resolve()), "data_sha256": _file_sha(settings.data),
        "task": settings.task, "batch_sizes": list(settings.batch_sizes),
        "seq_lens": list(settings.seq_lens), "threads": threads,
        "calibration_size": settings.calibration_size, "max_length": settings.max_length,
        "calibration_data": (str(Path(settings.calibration_data).resolve())
                             if settings.calibration_data else None),
        "calibration_rows": len(calibration), "evaluation_rows": len(evaluation),
        "sample": str(Path(settings.sample).resolve()) if settings.sample else None,
        "preprocess": source.meta.get("preprocess"),
        "training": ({"data": [str(p) for p in training.data],
                      "data_sha256": [_file_sha(p) for p in training.data],
                      "budget_min": training.budget_min} if training else None),
        # a run that allowed code is another run (absent when not: older runs keep their keys)
        **({"trust_code": True} if settings.trust_code else {}),
    }
    # The folder is taken (locked) only now that every input was read and checked.
    out = folder.open(settings.out, source, settings)
    store = TrialStore(out / "trials.db")
    try:
        previous = store.get_run()
        if previous and previous.get("identity") != identity:
            changed = sorted(k for k in identity if previous["identity"].get(k) != identity[k])
            raise LeanifyError(
                f"holds a run with other settings ({', '.join(changed)} differ), so it cannot "
                "be resumed.", path=out, fix="Choose another --out, or repeat the first run's "
                "settings.")
        judging = {"targets": asdict(settings.targets), "objective": settings.objective}
        rejudged = bool(previous) and previous.get("judging") != judging
        store.set_run({"identity": identity, "judging": judging, "started": time.time()})
        started = datetime.now(UTC)
        total = 1 + 3 * len(candidates)
        done = 0

        ctx = PassContext(
            work_dir=out / "work", threads=threads,
            isa_flags=isa_flags, built={},
            calibration=_calibration_batches(source, calibration, settings.max_length),
            sample=Path(settings.sample).resolve() if settings.sample else None,
        )
        tick(done, total, "evaluating the baseline")
        baseline = store.get("baseline")
        if baseline is None:
            t0 = time.time()
            reference = None
            if task.needs_reference:  # the original's outputs, kept for every trial
                reference = str(out / "work" / "reference.npz")
                _reference(source, evaluation, threads, settings.max_length, reference)
            metric = deps.score(source, evaluation, settings, threads, reference)
            baseline = {"name": "baseline", "passes": [], "metric": metric,
                        "format": source.format, "artifact": str(source.path),
                        "size_mb": _size_mb(source), "params": source.meta.get("params"),
                        "reference": reference}
            store.put("baseline", "baseline", 0, "done", baseline, t0)
        done += 1
        results: list[dict[str, Any]] = []
        keys: dict[str, str] = {}
        for position, candidate in enumerate(candidates, 1):
            # keyed by what determines the measurements, never by targets or objective
            key = keys[candidate.name] = _trial_key(identity, candidate)
            cached = store.get(key)
            if cached is not None and not _retry(cached):
                done += 3
                tick(done, total, f"{candidate.name}: already done")
                if cached["status"] == "done":  # re-judged: targets may have changed
                    judge(cached, baseline, settings.targets)
                results.append(cached)
                continue
            t0 = time.time()

            def say(what: str, step: int, name: str = candidate.name, start: int = done) -> None:
                tick(start + step, total, f"{name}: {what}")

            trial = _run_trial(candidate, source, baseline, evaluation, settings, threads, ctx,
                               say, deps)
            done += 3
            if trial.get("traceback"):
                with contextlib.suppress(OSError):  # the disk may be the thing that is full
                    trial["error_file"] = str(
                        _save_error(out, candidate.name, trial["traceback"]).relative_to(out))
            if cached is not None:
                trial["attempts"] = cached.get("attempts", 1) + 1
            if trial["status"] == "done":
                judge(trial, baseline, settings.targets)
            store.put(key, candidate.name, position, trial["status"], trial, t0)
            results.append(trial)
        chosen = finalists([r for r in results if r["status"] == "done"], settings.objective)
        # keyed by the finalist set (and what was measured, and the objective that decides
        # when the finalists are told apart): other targets or objective that change the
        # finalists measure them anew
        final_key = "final-bench-" + hashlib.sha256(json.dumps(
            {"identity": identity, "objective": settings.objective,
             "finalists": sorted(keys[r["name"]] for r in chosen)},
            sort_keys=True).encode()).hexdigest()[:12]
        final = store.get(final_key) if chosen else {"finalists": [], "models": []}
        if final is None:
            tick(total, total, "measuring the finalists side by side")
            final = _final_bench(source, chosen, baseline, settings, threads, deps,
                                 lambda _d, _t, what: tick(total, total, what))
            store.put(final_key, "final-bench", len(candidates) + 1, "done", final, time.time())
        _apply_final(results, final, baseline, settings.targets)
        tick(total, total, "writing the report")
        warnings = list(final.get("warnings", []))
        if rejudged:
            warnings.append("the targets or objective differ from the first run's: every "
                            "cached trial was re-judged from its stored measurements")
        record = _finish(out, source, baseline, results, settings, identity, started,
                         warnings, final)
    finally:
        store.close()
    return record


# --- trials ----------------------------------------------------------------------------


def _run_trial(candidate: Candidate, source: Artifact, baseline: dict[str, Any], evaluation,
               settings: OptimizeSettings, threads: int, ctx: PassContext,
               say: Callable[[str, int], None],
               deps: Dependencies | None = None) -> dict[str, Any]:
    deps = deps or Dependencies()
    trial: dict[str, Any] = {"name": candidate.name, "passes": candidate.passes(),
                             "status": "failed", "accepted": False}
    try:
        say("building", 0)
        artifact = deps.build(source, candidate.pipeline, ctx)
        trial.update(artifact=str(artifact.path), format=artifact.format,
                     size_mb=_size_mb(artifact), params=artifact.meta.get("params"),
                     pass_meta={k: v for k, v in artifact.meta.items()
                                if k in ("fusions", "quantization", "precision", "exporter",
                                         "runtime", "runtime_check", "folded_inputs")})
        say("evaluating", 1)
        trial["metric"] = deps.score(artifact, evaluation, settings, threads,
                                     baseline.get("reference"))
        say("measuring against the baseline", 2)
        with deps.session([source, artifact], _bench_settings(settings, threads,
                                                              settings.rounds)) as session:
            for _ in range(settings.rounds):
                session.run_round()
            record = session.record()
    except LeanifyError as exc:  # the input cannot be optimized this way: not retried
        trial["reason"] = f"failed: {exc.render()}"
        disk_full = _failure_kind(exc) == "disk-full"  # unless a full disk was behind it
        trial.update(error_kind="disk-full" if disk_full else "input", retryable=disk_full)
        return trial
    except Exception as exc:  # a bug in one pass must not sink the other candidates
        kind = _failure_kind(exc)
        trial["reason"] = f"failed {RETRY_CAUSES[kind]}: {type(exc).__name__}: {exc}"
        trial.update(error_kind=kind, retryable=True)  # --resume tries it again
        trial["traceback"] = traceback.format_exc()
        return trial
    trial.update(_latency_fields(record))
    trial["status"] = "done"
    return trial


# Failures whose cause can go away, retried by --resume: space is freed, a killed measuring
# process is not killed again, a bug is fixed. An input failure (the candidate cannot be made
# of this model) would fail the same way and is kept.
RETRY_CAUSES = {
    "disk-full": "because the disk was full",
    "worker-died": "because a child process died",
    "internal": "with an internal error",
}


def _failure_kind(exc: BaseException) -> str:
    from concurrent.futures.process import BrokenProcessPool

    from leanify.measure.bench import WorkerDied

    chain: BaseException | None = exc
    while chain is not None:  # a pass may wrap the OSError that stopped it
        if is_disk_full(chain):
            return "disk-full"
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, (WorkerDied, BrokenProcessPool)):
        return "worker-died"
    return "internal"


def _retry(cached: dict[str, Any]) -> bool:
    """A failed trial marked retryable is run again on resume; one that failed on its input,
    or was judged, is not."""
    if cached.get("status") != "failed":
        return False
    if "retryable" in cached:
        return bool(cached["retryable"])
    kind = cached.get("error_kind")
    if kind is None:  # records written before error kinds
        return str(cached.get("reason", "")).startswith("failed with an internal error")
    return kind in RETRY_CAUSES


def _save_error(out: Path, name: str, text: str) -> Path:
    """OUT/errors/<name>.txt with the full traceback, written atomically."""
    folder = out / "errors"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".txt")
    _write_text(target, text)
    return target


def _bench_settings(settings: OptimizeSettings, threads: int, rounds: int) -> BenchSettings:
    return BenchSettings(batch_sizes=settings.batch_sizes, seq_lens=settings.seq_lens,
                         prompt_tokens=settings.seq_lens,  # causal LMs: the prompt length
                         new_tokens=settings.new_tokens,
                         threads=threads, rounds=rounds,
                         sample=str(settings.sample) if settings.sample else None,
                         **TRIAL_TIMING)


def _final_bench(source: Artifact, chosen: list[dict[str, Any]], baseline: dict[str, Any],
                 settings: OptimizeSettings, threads: int, deps: Dependencies | None = None,
                 tick: Progress | None = None) -> dict[str, Any]:
    """The finalists and the baseline in ONE interleaved run, until the best is told apart.

    Each trial was timed against the baseline on its own; comparing trials through those
    separate runs lets a noisy minute pick the winner. The finalists are measured together,
    round after round, until the best one's paired interval against every other finalist
    excludes a tie, or `final_budget_s` (or `final_max_rounds`) is spent.
    """
    deps = deps or Dependencies()
    tick = tick or (lambda _d, _t, _w: None)
    if not chosen:
        return {"finalists": [], "models": []}
    artifacts = [load(r["artifact"], name=r["name"]) for r in chosen]
    first = max(3, settings.rounds)
    limit = max(first, settings.final_max_rounds)
    t0 = time.monotonic()
    with deps.session([source, *artifacts], _bench_settings(settings, threads, first)) as sess:
        t_rounds = time.monotonic()  # loading the models is not a round
        while True:
            sess.run_round()
            if sess.rounds < first:
                continue
            elapsed = time.monotonic() - t0
            per_round = (time.monotonic() - t_rounds) / sess.rounds
            # more rounds only sharpen latency; size is exact, peak memory is a first visit
            if len(chosen) == 1 or settings.objective != "latency" or sess.rounds >= limit \
                    or elapsed + per_round > settings.final_budget_s:
                break
            fields = _final_fields(sess.record(probe=False))
            trials = [{**r, **fields[r["name"]], "finalist": True} for r in chosen]
            for trial in trials:
                judge(trial, baseline, settings.targets)
            _chosen, how = select_final(trials, settings.objective)
            if len(how.get("tied", [])) <= 1:
                break
            tick(0, 0, f"finalists not yet told apart ({', '.join(how['tied'])}): "
                       f"round {sess.rounds + 1}")
        record = sess.record()
    return {"finalists": [r["name"] for r in chosen], "fields": _final_fields(record),
            "models": record["models"], "warnings": record.get("warnings", []),
            "rounds": sess.rounds, "wall_s": round(time.monotonic() - t0, 1),
            "budget_s": settings.final_budget_s}


def _final_fields(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    fields = {}
    for model in record["models"][1:]:
        sub = {"models": [record["models"][0], model],
               "results": [r for r in record["results"]
                           if r["model"] in (record["models"][0]["name"], model["name"])]}
        fields[model["name"]] = _latency_fields(sub)
    return fields


def _apply_final(results: list[dict[str, Any]], final: dict[str, Any], baseline: dict[str, Any],
                 targets: Targets) -> None:
    """Finalists take their latency from the side-by-side run (trial runs are kept apart);
    only they can be selected."""
    for trial in results:
        fields = final.get("fields", {}).get(trial["name"])
        if fields is None:
            trial["finalist"] = False
            continue
        trial.setdefault("trial_points", trial["points"])
        trial.update(fields)
        trial["finalist"] = True
        judge(trial, baseline, targets)


def _latency_fields(record: dict[str, Any]) -> dict[str, Any]:
    base_name, cand_name = (m["name"] for m in record["models"])
    rows = {(r["model"], r["batch_size"], r["seq_len"]): r for r in record["results"]}
    points = []
    for (model, batch, seq), row in rows.items():
        if model != cand_name:
            continue
        base = rows[(base_name, batch, seq)]
        points.append({
            "batch_size": batch, "seq_len": seq,
            "latency_ms": {k: row["latency_ms"][k] for k in ("p50", "p90", "p99")},
            "baseline_latency_ms": {k: base["latency_ms"][k] for k in ("p50", "p90", "p99")},
            "speedup": row["vs_baseline"]["speedup"],
            "speedup_ci95": row["vs_baseline"]["speedup_ci95"],
            "speedup_rounds": row["vs_baseline"].get("speedup_rounds"),
            "throughput_per_s": row["throughput_per_s"],
            "peak_rss_mb": row["peak_rss_mb"], "baseline_peak_rss_mb": base["peak_rss_mb"],
        })
    primary = min(points, key=lambda p: (p["batch_size"], -p["seq_len"]))
    return {
        "points": points,
        "latency_ms": primary["latency_ms"],
        "baseline_latency_ms": primary["baseline_latency_ms"],
        "primary_point": {"batch_size": primary["batch_size"], "seq_len": primary["seq_len"]},
        "peak_rss_mb": max(p["peak_rss_mb"] for p in points),
        "baseline_peak_rss_mb": max(p["baseline_peak_rss_mb"] for p in points),
        "runtime": record["models"][1]["runtime"],
        # as the runtime reported it (OpenVINO: the inference precision that actually ran)
        "runtime_settings": record["models"][1].get("runtime_settings") or {},
    }


def _trial_key(identity: dict[str, Any], candidate: Candidate) -> str:
    blob = json.dumps({"identity": identity, "passes": [c.key() for c in candidate.pipeline]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- evaluation in a child process -------------------------------------------------------


def _evaluate(artifact: Artifact, dataset, settings: OptimizeSettings, threads: int,
              reference: str | None = None) -> dict[str, Any]:
    """Score a model in a fresh process: its runtime's thread pools never meet another's."""
    if artifact.path is None:  # an in-memory module cannot travel: evaluate here
        return _evaluate_here(artifact, dataset, settings.task, threads, settings.max_length,
                              reference)
    return _in_child(_evaluate_child, str(artifact.path), artifact.meta, dataset,
                     settings.task, threads, settings.max_length, reference)


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a fresh spawned process that dies with this one; an interruption
    (Ctrl-C) or an error here kills it at once rather than waiting for it to finish."""
    from leanify.measure.lifeline import die_with_parent

    pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        return pool.submit(fn, *args).result()
    except BaseException:
        # the executor has no public way to stop a running call: kill its process
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError):
                proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _evaluate_child(path: str, meta: dict[str, Any], dataset, task: str, threads: int,
                    max_length: int, reference: str | None) -> dict[str, Any]:
    from dataclasses import replace

    artifact = load(path)
    artifact = replace(artifact, meta={**meta, **artifact.meta})
    from leanify.sandbox import limit_for

    limit_for(artifact)  # a candidate that asks for far more than its size stops here
    return _evaluate_here(artifact, dataset, task, threads, max_length, reference)


def _evaluate_here(artifact: Artifact, dataset, task: str, threads: int, max_length: int,
                   reference: str | None) -> dict[str, Any]:
    import numpy as np

    from leanify.measure.evaluate import evaluate

    loaded = None
    if reference:
        with np.load(reference, allow_pickle=False) as arrays:
            loaded = {k: arrays[k] for k in arrays.files}
    metric = evaluate(artifact, dataset, task, threads=threads, max_length=max_length,
                      reference=loaded)
    return {"name": metric.name, "value": round(float(metric.value), 4),
            "higher_is_better": metric.higher_is_better, "details": metric.details}


def _reference(source: Artifact, dataset, threads: int, max_length: int, target: str) -> None:
    """The original model's outputs on the evaluation texts, saved for fidelity scoring."""
    if source.path is None:
        _reference_child(source, dataset, threads, max_length, target)
        return
    _in_child(_reference_child, str(source.path), dataset, threads, max_length, target,
              source.meta)


def _reference_child(source: Artifact | str, dataset, threads: int, max_length: int,
                     target: str, meta: dict[str, Any] | None = None) -> None:
    import numpy as np

    from leanify.measure.evaluate import reference_outputs

    artifact = load(source)
    if not isinstance(source, Artifact):
        from leanify.sandbox import limit_for

        limit_for(artifact)
    if meta:  # what the task resolved for the source (image preprocessing)
        from dataclasses import replace

        artifact = replace(artifact, meta={**meta, **artifact.meta})
    arrays = reference_outputs(artifact, dataset, threads=threads, max_length=max_length)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(target).with_suffix(".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, target)


def _calibration_batches(source: Artifact, calibration, max_length: int):
    """The task's transform over the calibration rows (never the evaluation rows)."""
    from leanify import tasks

    if calibration is None:
        return None
    return tasks.get(calibration.task).calibration(
        source, calibration, tasks.EvalSettings(batch_size=16, max_length=max_length))


# --- output ----------------------------------------------------------------------------


def _check_out_location(out: Path, source: Artifact,
                        settings: OptimizeSettings | None = None) -> Path:
    """--out is never the input model's folder nor inside it, nor holds any input."""
    from leanify.paths import check_apart

    out = Path(out).expanduser().resolve()
    inputs: dict[str, Any] = {}
    if source.path is not None:  # a file model's folder too: external data lies beside it
        inputs["model"] = source.path if source.path.is_dir() else source.path.parent
    if settings is not None:
        inputs.update({"--data": settings.data, "--calibration-data": settings.calibration_data,
                       "--sample": settings.sample, "--transfer-data": settings.transfer_data})
    check_apart({"--out": out}, inputs)
    return out


# What a run leaves in its folder before its first trial: such a folder may be reused.
_LEFTOVERS = {"work", "errors", *STORE_FILES, LOCK_NAME}


class _RunFolder:
    """The run folder of one optimize run: checked, locked while the run lives, and left
    without a trial record when the run stopped before its first trial."""

    def __init__(self) -> None:
        self.out: Path | None = None
        self.lock: RunLock | None = None
        self.created = False
        self.keep = False  # keep an empty record and the folder (an interrupted run)

    def open(self, out: Path, source: Artifact, settings: OptimizeSettings) -> Path:
        out = _check_out_location(out, source, settings)
        if out.exists() and not out.is_dir():
            raise LeanifyError("exists and is not a folder.", path=out,
                               fix="Choose a new --out folder.")
        self.created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cannot_write(out, exc) from exc
        self.out = out
        # Locked before looking inside: two runs starting at once must not both see it free.
        self.lock = RunLock(out).acquire()
        runs = _trial_count(out)
        if runs and not settings.resume:
            raise LeanifyError("already holds an optimization run.", path=out,
                               fix="Pass --resume to continue it, or choose another --out.")
        others = sorted(p.name for p in out.iterdir() if p.name not in _LEFTOVERS)
        if not runs and others:
            raise LeanifyError(f"exists and is not empty ({', '.join(others[:3])}).",
                               path=out, fix="Choose a new or empty --out folder.")
        if settings.resume and runs is None and self.created:
            raise LeanifyError("holds no run to resume.", path=out,
                               fix="Run without --resume to start one.")
        if not runs:  # nothing was recorded: start afresh (a stale record would only confuse)
            remove_store(out)
        return out

    def close(self) -> None:
        if self.out is None or self.lock is None:  # never touch a folder another run holds
            return
        try:
            if not self.keep and _trial_count(self.out) == 0:  # no trial: no record left
                remove_store(self.out)
        except (LeanifyError, OSError):  # a damaged record is the user's to look at
            pass
        self.lock.release()
        self.lock = None
        if self.created and not self.keep:  # a folder made for nothing goes too
            with contextlib.suppress(OSError):
                self.out.rmdir()


def _trial_count(out: Path) -> int | None:
    """Trials recorded in OUT/trials.db; None when there is no record."""
    if not (out / "trials.db").exists():
        return None
    store = TrialStore(out / "trials.db")
    try:
        return store.count()
    finally:
        store.close()


def _cannot_write(path: Path, exc: OSError) -> LeanifyError:
    if is_disk_full(exc):
        return LeanifyError("the disk is full.", path=path, fix="Free some space.")
    return LeanifyError(f"cannot write to {path} ({exc.strerror or exc}).", path=path,
                        fix="Make the folder writable (chmod u+w), or choose another --out.")


def _finish(out: Path, source: Artifact, baseline: dict[str, Any], results: list[dict[str, Any]],
            settings: OptimizeSettings, identity: dict[str, Any], started: datetime,
            warnings: list[str], final: dict[str, Any] | None = None) -> dict[str, Any]:
    done = [r for r in results if r["status"] == "done"]
    selected, selection = select_final(done, settings.objective)  # finalists only
    final = final or {}
    if final.get("finalists"):  # best estimates first, as measured side by side
        selection["finalists"] = final["finalists"]
    selection.update(rounds=final.get("rounds"), budget_s=final.get("budget_s"),
                     wall_s=final.get("wall_s"))
    baseline_entry = dict(baseline)
    if selected is not None:  # the baseline's latency from the selected trial's own bench
        baseline_entry["latency_ms"] = selected["baseline_latency_ms"]
        baseline_entry["peak_rss_mb"] = selected["baseline_peak_rss_mb"]
    elif done:
        baseline_entry["latency_ms"] = done[0]["baseline_latency_ms"]
        baseline_entry["peak_rss_mb"] = done[0]["baseline_peak_rss_mb"]
    selected_out = None
    kept = selected is None and _keep_original(done, baseline_entry, source, settings.targets)
    if kept:  # the original, copied byte for byte: OUT/model is what to ship either way
        selected_out = install_model(out, source.path, ORIGINAL, for_artifact(source).name,
                                     files=_original_files(source))
    elif selected is not None:
        selected_out = install_model(out, selected["artifact"], selected["name"],
                                     selected.get("runtime"))
    if selected_out is not None:
        from leanify.report.snippet import usage_snippet

        _write_example_inputs(out, source, settings)

        selected_out["runtime_settings"] = (selected or {}).get("runtime_settings") or {}
        selected_out["snippet"] = usage_snippet(out, selected_out, settings.task,
                                                identity["threads"], settings.max_length)
    misses = selected.get("target_misses", []) if selected else []
    machine = machine_info()
    record = {
        "schema_version": SCHEMA_VERSION,
        "tool": "leanify optimize",
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "task": settings.task,
        "data": identity["data"],
        "settings": {
            "objective": settings.objective, "targets": asdict(settings.targets),
            "batch_sizes": list(settings.batch_sizes), "seq_lens": list(settings.seq_lens),
            "threads": identity["threads"], "rounds": settings.rounds,
            "final_budget_s": settings.final_budget_s,
            "final_max_rounds": settings.final_max_rounds,
            "calibration_size": settings.calibration_size, "max_length": settings.max_length,
            "trust_pickle": settings.trust_pickle, "trust_code": settings.trust_code,
        },
        "machine": machine,
        "versions": machine["versions"],
        "input": {"path": identity["model"], "format": source.format,
                  "sha256": identity["model_sha256"]},
        "baseline": baseline_entry,
        "candidates": results,
        "pareto_front": pareto_front([r for r in done if "latency_ms" in r]),
        "selected": selected_out,
        "selection": selection,
        "targets_met": (selected is not None or kept) and not misses,
        "verdict": _kept_verdict(done) if kept else _verdict(selected, misses, results,
                                                              settings, selection),
        "warnings": warnings,
    }
    write_json(record, out / "leanify.json")
    from leanify.report.html import render_optimize

    _write_text(out / "report.html", render_optimize(record))
    return record


def _write_example_inputs(out: Path, source: Artifact, settings: OptimizeSettings) -> None:
    """An array model's snippet runs on OUT/example_inputs.npz: the user's sample, else the
    first .npz of the data."""
    from leanify import tasks
    from leanify.report.snippet import EXAMPLE_INPUTS
    from leanify.tasks.text import is_text_model

    if is_text_model(source) or "image" in tasks.get(settings.task).reads:
        return  # an image model's snippet reads an image file, not arrays
    data = Path(settings.data)
    example = Path(settings.sample) if settings.sample else \
        (min(data.glob("*.npz"), default=None) if data.is_dir() else data)
    if example is not None and example.suffix.lower() == ".npz":
        tmp = out / f".{EXAMPLE_INPUTS}.partial"
        shutil.copyfile(example, tmp)
        os.replace(tmp, out / EXAMPLE_INPUTS)


def _keep_original(done: list[dict[str, Any]], baseline: dict[str, Any], source: Artifact,
                   targets: Targets) -> bool:
    """Nothing was accepted, yet a candidate kept the accuracy without being faster and the
    original meets every target as it is: then keeping the model is the answer, not a failure.
    (When every candidate lost accuracy, the run says so and exits 3: a looser --max-drop may
    buy speed.)"""
    if source.path is None or "latency_ms" not in baseline:
        return False
    kept_accuracy = [c for c in done if c.get("metric_drop") is not None
                     and c["metric_drop"] <= targets.max_drop]
    return bool(kept_accuracy) and not target_misses(baseline, targets)


def _original_files(source: Artifact) -> list[Path]:
    """The model's own files and, for a single model file, what leanify reads beside it (the
    sidecar, tokenizer files); never the rest of the folder it sits in."""
    files = source.files()
    if source.path is not None and source.path.is_file():
        beside = [source.path.parent / name for name in (SIDECAR, *TOKENIZER_FILES)]
        files += [f for f in beside if f.is_file() and f not in files]
    return files


def _kept_verdict(done: list[dict[str, Any]]) -> str:
    why = " | ".join(f"{c['name']}: {c.get('reason', 'rejected')}" for c in done)
    return ("Keep your model: it meets every target as it is, and no candidate that kept its "
            "accuracy was faster on this machine (model/ in the run folder is an unchanged copy). "
            + why)


def install_model(out: Path, artifact_path: str | os.PathLike, name: str,
                  runtime: Any = None, files: list[Path] | None = None) -> dict[str, Any]:
    """Copy an artifact to OUT/model atomically (its folder, or only `files`, e.g. the user's
    model out of a folder that holds other things); hash its files."""
    src = Path(artifact_path)
    folder = src if src.is_dir() else src.parent
    target = out / "model"
    tmp = out / ".model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if files is None:
        shutil.copytree(folder, tmp)
    else:
        for file in files:
            dest = tmp / Path(file).relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    model_file = target / src.name if not src.is_dir() else target
    artifact = load(model_file)
    return {
        "name": name,
        "artifact": str(model_file.relative_to(out)),
        "format": artifact.format,
        "runtime": runtime,
        "sha256": artifact.sha256(),
        "files": {str(p.relative_to(target)): _file_sha(p) for p in artifact.files()},
    }


def _verdict(selected, misses, results, settings, selection=None) -> str:
    if selected is None:
        failed = [f"{r['name']}: {r.get('reason', 'failed')}" for r in results]
        return "No candidate passed the gates, so no model was written. " + " | ".join(failed)
    text = (f"Selected {selected['name']}: {selected['metric']['name']} "
            f"{selected['metric']['value']:.2f} (drop {selected['metric_drop']:.2f}), "
            f"{_geo_speedup(selected):.2f}× faster (geometric mean over the measured points), "
            f"{selected.get('size_mb', 0):.1f} MB.")
    selection = selection or {}
    if selection.get("tie_within_pct") is not None or len(selection.get("tied", [])) > 1:
        text += f" Among the finalists: {selection['rule']}."
    if misses:
        text += " Targets not met — best so far kept: " + "; ".join(misses) + "."
    return text


def _geo_speedup(trial: dict[str, Any]) -> float:
    s = [p["speedup"] for p in trial["points"]]
    return math.exp(sum(math.log(x) for x in s) / len(s))


def _size_mb(artifact: Artifact) -> float | None:
    return round(artifact.size_bytes() / 2**20, 3) if artifact.path else None


def _file_sha(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
