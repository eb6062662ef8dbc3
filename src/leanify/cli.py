"""The `leanify` command line: parses arguments, calls the library, prints the result.

Exit codes: 0 success; 2 bad input (a clear message, no traceback); 1 internal error
(traceback with --debug); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    name="leanify",
    help="Diagnose, optimize and honestly benchmark ML models on CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True)
stdout = Console()
DEBUG = False


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"expected positive integers separated by commas, got {text!r}",
                                 param_hint=option)
    return values


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")]
    = False,
) -> None:
    """leanify: find out what is wrong with a model, fix it, and prove it."""
    if version:
        from leanify import __version__

        stdout.print(f"leanify {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        stdout.print(ctx.get_help())


TrustCode = Annotated[bool, typer.Option(
    "--trust-code", help="Allow models that are code (TorchScript, .pt2 archives with compiled "
    "members); leanify runs them with memory/CPU limits, inspection also with file writes "
    "confined. Only for files you trust.")]
MemoryLimit = Annotated[float | None, typer.Option(
    "--memory-limit-gb", help="Memory each model process may use (default: 80% of RAM); a "
    "model that asks for more stops with a clear error.", show_default=False)]


def _limits(memory_limit_gb: float | None) -> None:
    from leanify.sandbox import set_memory_limit

    set_memory_limit(memory_limit_gb)


SAMPLE_HELP = ("Inputs to run: arrays named like the model's inputs (.npz; scalars allowed, "
               "e.g. a sample rate), or texts (.txt/.jsonl/.csv/.tsv).")


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(
        help="Models to compare: HF folders, .onnx, TorchScript, .pt2, GGUF files, or "
             "'minilm' / 'smollm2'. "
             "The first is the baseline.", show_default=False)],
    batch_size: Annotated[str | None, typer.Option(
        "--batch-size", "-b", help="Batch sizes, comma-separated (default 1,32; for causal "
        "LMs the concurrent requests, default 1).", show_default=False)] = None,
    seq_len: Annotated[str, typer.Option("--seq-len", "-s",
                                         help="Sequence lengths, comma-separated.")] = "128",
    prompt_tokens: Annotated[str, typer.Option(
        help="Causal LMs: prompt lengths in tokens, comma-separated.")] = "128",
    new_tokens: Annotated[int, typer.Option(help="Causal LMs: tokens generated per call.")]
    = 32,
    threads: Annotated[int | None, typer.Option(
        help="Intra-op threads per model (default: all usable cores).", show_default=False)]
    = None,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds (A B A B ...).")] = 3,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds per round, not timed.")] = 0.5,
    min_time: Annotated[float, typer.Option(help="Timed seconds per round, at least.")] = 1.0,
    min_iters: Annotated[int, typer.Option(help="Timed runs per round, at least.")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the record here.",
                                                   show_default=False)] = None,
    sample: Annotated[Path | None, typer.Option(help=SAMPLE_HELP, show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="Folder with tokenizer.json, for models that ship without one.",
        show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Allow pickled weights (.bin/.pt), read weights-only. Only for "
                               "files you trust.")] = False,
    trust_code: TrustCode = False,
    memory_limit_gb: MemoryLimit = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
) -> None:
    """Latency, throughput and memory, side by side, each model in its own process."""
    from leanify.measure.bench import BenchSettings, write_json
    from leanify.measure.bench import bench as run_bench

    settings = BenchSettings(
        batch_sizes=_ints(batch_size, "--batch-size") if batch_size else None,
        seq_lens=_ints(seq_len, "--seq-len"),
        prompt_tokens=_ints(prompt_tokens, "--prompt-tokens"), new_tokens=new_tokens,
        threads=threads, rounds=rounds, warmup_s=warmup, min_time_s=min_time,
        min_iters=min_iters, sample=str(sample) if sample else None,
        tokenizer=str(tokenizer) if tokenizer else None, trust_pickle=trust_pickle,
        trust_code=trust_code,
    )
    _limits(memory_limit_gb)
    if json_path is not None:
        _check_writable(json_path)
        _check_apart({"--json": json_path}, models,
                     {"--sample": sample, "--tokenizer": tokenizer})
    if quiet:
        record = run_bench(models, settings)
    else:
        with _progress() as tick:
            record = run_bench(models, settings, progress=tick)
    if json_path is not None:
        write_json(record, json_path)
    if not quiet:
        from leanify.report.console import render_bench

        render_bench(record, stdout)
        if json_path is not None:
            stdout.print(f"[dim]record written to {json_path}[/]")


@app.command()
def optimize(
    model: Annotated[str, typer.Argument(help="The model to optimize: an HF folder, an .onnx "
                                              "file, or 'minilm'.", show_default=False)],
    task: Annotated[str, typer.Option(
        help="embedding-similarity | text-classification | fidelity | perplexity | "
             "image-classification | image-fidelity.", show_default=False)],
    data: Annotated[Path, typer.Option(
        help="Evaluation data: CSV/TSV/JSONL/Parquet or STS-B format, or for array models a "
             "folder of .npz files (one model call each). A calibration split is held out "
             "of it.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        help="Run folder (default: leanify-out/<model name>).", show_default=False)] = None,
    max_drop: Annotated[float, typer.Option(
        help="Metric points the model may lose (e.g. Spearman x100); for perplexity, the "
             "relative increase allowed in percent.")] = 0.5,
    max_latency_ms: Annotated[float | None, typer.Option(
        help="Latency target at the smallest batch and longest sequence.",
        show_default=False)] = None,
    max_size_mb: Annotated[float | None, typer.Option(help="Size target on disk.",
                                                      show_default=False)] = None,
    max_memory_mb: Annotated[float | None, typer.Option(help="Peak memory target.",
                                                        show_default=False)] = None,
    objective: Annotated[str, typer.Option(
        help="What 'best' means among accepted candidates: latency | size | memory.")]
    = "latency",
    batch_size: Annotated[str | None, typer.Option(
        "--batch-size", "-b", help="Batch sizes, comma-separated (default: 1,32 for text; "
        "the sample's own batch for array models).", show_default=False)] = None,
    seq_len: Annotated[str, typer.Option("--seq-len", "-s")] = "128",
    max_length: Annotated[int, typer.Option(
        help="Tokens per text when scoring (perplexity: the window length).")] = 128,
    new_tokens: Annotated[int, typer.Option(
        help="Causal LMs: tokens generated per timed request (the prompt is --seq-len).")] = 32,
    threads: Annotated[int | None, typer.Option(
        help="Threads per model (default: all usable cores).", show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds per candidate.")] = 3,
    final_budget_s: Annotated[float, typer.Option(
        help="Seconds the finalists' side-by-side run may add rounds to tell the best apart "
             "from the runner-up.")] = 180.0,
    calibration_size: Annotated[int, typer.Option(
        help="Rows held out of --data for calibration (never evaluated on).")] = 300,
    calibration_data: Annotated[Path | None, typer.Option(
        help="A separate file for calibration (then all of --data is evaluated).",
        show_default=False)] = None,
    candidates: Annotated[str | None, typer.Option(
        help="Only these candidates, comma-separated.", show_default=False)] = None,
    text_col: Annotated[str | None, typer.Option(show_default=False)] = None,
    pair_cols: Annotated[str | None, typer.Option(help="Two columns, e.g. s1,s2.",
                                                  show_default=False)] = None,
    label_col: Annotated[str | None, typer.Option(show_default=False)] = None,
    score_col: Annotated[str | None, typer.Option(show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped run in --out; "
                                         "finished trials are not re-run.")] = False,
    sample: Annotated[Path | None, typer.Option(help=SAMPLE_HELP, show_default=False)] = None,
    preprocess: Annotated[str | None, typer.Option(
        help="Image tasks: how images become inputs, as key=value pairs (size=224, "
             "resize=shorter|exact, shorter=256, interpolation=bilinear|bicubic|lanczos, "
             "scale=1/255, mean=0.485/0.456/0.406, std=..., color=RGB|BGR) or a "
             "preprocessor_config.json. Default: the model's preprocessor_config.json, "
             "else its input shape with ImageNet values.", show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    trust_code: TrustCode = False,
    memory_limit_gb: MemoryLimit = None,
    allow_training: Annotated[bool, typer.Option(
        "--allow-training", help="Also try students: half the layers, distilled on "
        "--transfer-data, then quantized (takes up to --training-budget-min).")] = False,
    transfer_data: Annotated[str | None, typer.Option(
        help="Unlabelled text from your domain for distillation (files, comma-separated); "
             "never the evaluation data.", show_default=False)] = None,
    training_budget_min: Annotated[float, typer.Option(
        help="Time budget of one distillation, minutes.")] = 40.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Find the fastest model that keeps its accuracy: export, optimize, quantize, measure.

    Exit code 0 when a model was selected and meets every target (or, when no candidate was
    faster, the original meets them and is kept); 3 when the run finished but no candidate
    passed the gates or the targets were missed (the best so far is kept).
    """
    from leanify.search.optimize import OptimizeSettings
    from leanify.search.optimize import optimize as run_optimize
    from leanify.search.select import Targets

    pairs = None
    if pair_cols:
        names = [c.strip() for c in pair_cols.split(",") if c.strip()]
        if len(names) != 2:
            raise typer.BadParameter("expected two column names, e.g. s1,s2",
                                     param_hint="--pair-cols")
        pairs = (names[0], names[1])
    if out is None:
        out = Path("leanify-out") / Path(model.rstrip("/")).name
    settings = OptimizeSettings(
        task=task, data=data, out=out, objective=objective,
        targets=Targets(max_drop=max_drop, max_latency_ms=max_latency_ms,
                        max_size_mb=max_size_mb, max_memory_mb=max_memory_mb),
        batch_sizes=tuple(_ints(batch_size, "--batch-size")) if batch_size else (),
        seq_lens=tuple(_ints(seq_len, "--seq-len")), threads=threads, rounds=rounds,
        final_budget_s=final_budget_s, max_length=max_length, new_tokens=new_tokens,
        calibration_size=calibration_size, calibration_data=calibration_data, resume=resume,
        candidates=[c.strip() for c in candidates.split(",")] if candidates else None,
        text_col=text_col, pair_cols=pairs, label_col=label_col, score_col=score_col,
        trust_pickle=trust_pickle, trust_code=trust_code, sample=sample,
        preprocess=preprocess,
        transfer_data=tuple(Path(f.strip()) for f in (transfer_data or "").split(",")
                            if f.strip()),
        training_budget_min=training_budget_min if allow_training else None,
    )
    _limits(memory_limit_gb)
    if quiet:
        record = run_optimize(model, settings)
    else:
        with _progress() as tick:
            record = run_optimize(model, settings, progress=tick)
        from leanify.report.console import render_optimize

        render_optimize(record, stdout, settings.out.resolve())
    if not record["selected"] or not record["targets_met"]:
        raise typer.Exit(3)


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="A model path or alias.", show_default=False)],
    tokenizer: Annotated[Path | None, typer.Option(help="Folder with tokenizer.json.",
                                                   show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    trust_code: TrustCode = False,
    memory_limit_gb: MemoryLimit = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What leanify sees in a model: format, inputs, parameters, size. Loads nothing heavy."""
    import json

    from leanify.models.load import load

    _limits(memory_limit_gb)
    artifact = load(model, tokenizer=tokenizer, trust_pickle=trust_pickle, trust_code=trust_code)
    described = artifact.describe()
    described["size_mb"] = round(artifact.size_bytes() / 2**20, 3)
    if as_json:
        stdout.print_json(json.dumps(described))
        return
    stdout.print(f"[bold]{artifact.name}[/]  format [cyan]{artifact.format}[/]  "
              f"{described['size_mb']:.1f} MB  {artifact.meta.get('params', '?')} parameters")
    stdout.print(f"  path: {artifact.path}")
    for spec in artifact.inputs:
        rng = f" in [{spec.low}, {spec.high})" if spec.high is not None else ""
        shape = list(spec.shape) if spec.shape else "?"
        stdout.print(f"  input {spec.name}: {spec.dtype} {shape}{rng}"
                  + (" (optional)" if spec.optional else ""))
    for key in ("task", "pooling", "normalize", "tokenizer", "architecture", "runtime"):
        if artifact.meta.get(key) not in (None, {}):
            stdout.print(f"  {key}: {artifact.meta[key]}")


@app.command()
def doctor(
    model: Annotated[str, typer.Argument(help="A model path or alias.", show_default=False)],
    data: Annotated[Path | None, typer.Option(
        help="Your data (CSV/TSV/JSONL/Parquet or STS-B): token lengths, activations, and the "
             "--data of the recommended command.", show_default=False)] = None,
    task: Annotated[str | None, typer.Option(
        help="embedding-similarity | text-classification | fidelity (default: from the model "
             "and the data).", show_default=False)] = None,
    latency_budget_ms: Annotated[float | None, typer.Option(
        help="Latency budget at the typical input (default 2000).", show_default=False)] = None,
    memory_budget_mb: Annotated[float | None, typer.Option(
        help="Peak memory budget (default 80% of RAM).", show_default=False)] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the record here.",
                                                   show_default=False)] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report here.",
                                              show_default=False)] = None,
    trace: Annotated[Path | None, typer.Option(
        help="Write a Chrome-trace JSON of the profiled runs (opens in Perfetto).",
        show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick/--full",
                                        help="Few points and short repeats, or more of both.")]
    = True,
    threads: Annotated[int | None, typer.Option(
        help="Threads (default: all usable cores).", show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Folder with tokenizer.json.",
                                                   show_default=False)] = None,
    sample: Annotated[Path | None, typer.Option(help=SAMPLE_HELP, show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    rate: Annotated[float | None, typer.Option(
        help="Requests/s you serve: serve the model at that rate, one request at a time and "
             "with dynamic batching, and split server overhead from model time.",
        show_default=False)] = None,
    trust_code: TrustCode = False,
    memory_limit_gb: MemoryLimit = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no report.")]
    = False,
) -> None:
    """What is wrong with a model, measured: where time goes, dead weight, quantization
    sensitivity, context length; a verdict and the optimize command to run."""
    from leanify.diagnose.doctor import DoctorSettings, check_output, write_reports
    from leanify.diagnose.doctor import doctor as run_doctor

    for path, option in ((json_path, "--json"), (html, "--html")):
        if path is not None:
            check_output(path, option=option)
    _check_apart({"--json": json_path, "--html": html, "--trace": trace}, [model],
                 {"--data": data, "--sample": sample, "--tokenizer": tokenizer})
    settings = DoctorSettings(
        data=data, task=task, latency_budget_ms=latency_budget_ms,
        memory_budget_mb=memory_budget_mb, trace=trace, quick=quick, threads=threads,
        tokenizer=str(tokenizer) if tokenizer else None, trust_pickle=trust_pickle,
        trust_code=trust_code, sample=sample, rate=rate,
        outputs=tuple(p for p in (json_path, html) if p is not None))
    _limits(memory_limit_gb)
    if quiet:
        record = run_doctor(model, settings)
    else:
        with _progress() as tick:
            record = run_doctor(model, settings, progress=tick)
    write_reports(record, json_path, html)
    if not quiet:
        from leanify.report.doctor import render_doctor

        render_doctor(record, stdout)
        for path in (json_path, html, trace):
            if path is not None:
                stdout.print(f"[dim]written: {path}[/]")


PRUNE_HELP = "Encoder layers to keep (0: all)."


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="A Hugging Face model folder or alias.",
                                         show_default=False)],
    out: Annotated[Path, typer.Option(help="Output folder (OUT/model, OUT/leanify.json).")],
    layers: Annotated[int, typer.Option(help=PRUNE_HELP)] = 0,
    ffn_keep: Annotated[float, typer.Option(
        help="Fraction of FFN neurons kept in every layer.")] = 1.0,
    importance: Annotated[str, typer.Option(
        help="activation | magnitude | taylor (classifiers).")] = "activation",
    round_to: Annotated[int, typer.Option(help="Widths rounded to a multiple of this.")] = 16,
    calibration_data: Annotated[Path | None, typer.Option(
        help="Text the importance is measured on (any data format leanify reads).",
        show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    trust_code: TrustCode = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Structured pruning: drop encoder layers and FFN neurons; the result is still a normal
    Hugging Face model (config.json updated, safetensors) that from_pretrained loads."""
    from leanify.apply import apply_passes
    from leanify.passes.prune_transformer import PruneTransformerConfig

    config = PruneTransformerConfig(layers=layers, ffn_keep=ffn_keep, importance=importance,
                                    round_to=round_to)
    _check_apart({"--out": out}, [model], {"--calibration-data": calibration_data})
    record = apply_passes(model, [config], out, calibration_data=calibration_data,
                          trust_pickle=trust_pickle, trust_code=trust_code, log=_log(quiet),
                          tool="leanify prune")
    _print_shrink(record, out)


@app.command()
def distill(
    model: Annotated[str, typer.Argument(
        help="The teacher (with --layers/--ffn-keep: pruned into the student first), or a "
             "student leanify pruned (its teacher is recorded).", show_default=False)],
    data: Annotated[str, typer.Option(
        help="Transfer text: file(s) of sentences from your domain (not the evaluation data), "
             "separated by commas; labels are used when a classifier's file has them.")],
    out: Annotated[Path, typer.Option(help="Output folder (OUT/model, OUT/leanify.json).")],
    teacher: Annotated[str | None, typer.Option(
        help="The teacher, when MODEL is a student leanify did not prune.",
        show_default=False)] = None,
    layers: Annotated[int, typer.Option(help=PRUNE_HELP)] = 0,
    ffn_keep: Annotated[float, typer.Option(help="Fraction of FFN neurons kept.")] = 1.0,
    epochs: Annotated[float, typer.Option()] = 2.0,
    batch_size: Annotated[int, typer.Option()] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-4,
    hidden_weight: Annotated[float, typer.Option(
        help="Weight of the hidden-state loss (student layer -> the teacher layer it was kept "
             "from).")] = 0.0,
    budget_min: Annotated[float, typer.Option(
        help="Time budget in minutes; the best state so far is kept.")] = 40.0,
    calibration_data: Annotated[Path | None, typer.Option(
        help="Text pruning importance is measured on (default: the first transfer file).",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue a stopped run in --out from its last checkpoint.")] = False,
    trust_code: TrustCode = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Knowledge distillation into a smaller student (pruned from MODEL with --layers /
    --ffn-keep), on CPU, with checkpoints, early stopping on a held-out dev split and --resume."""
    import os as _os

    from leanify.apply import apply_passes
    from leanify.passes.distill import DistillConfig
    from leanify.passes.prune_transformer import PruneTransformerConfig

    files = [f.strip() for f in data.split(",") if f.strip()]
    inputs = {"--data": files, "--teacher": teacher}
    _check_apart({"--out": out}, [model], {**inputs, "--calibration-data": calibration_data})
    configs: list = []
    if layers or ffn_keep < 1:
        configs.append(PruneTransformerConfig(layers=layers, ffn_keep=ffn_keep))
    configs.append(DistillConfig(
        data=_os.pathsep.join(str(Path(f).resolve()) for f in files),
        teacher=str(Path(teacher).resolve()) if teacher and Path(teacher).exists() else
        (teacher or ""), epochs=epochs, batch_size=batch_size, lr=lr,
        hidden_weight=hidden_weight, time_budget_min=budget_min))
    record = apply_passes(model, configs, out,
                          calibration_data=calibration_data or (files[0] if files else None),
                          threads=threads, resume=resume, trust_code=trust_code,
                          log=_log(quiet), tool="leanify distill", inputs=inputs)
    _print_shrink(record, out)


@app.command()
def serve(
    model: Annotated[str, typer.Argument(
        help="A run folder from `leanify optimize` (serves its selected model), or any text "
             "encoder or causal LM leanify loads.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Inputs per model call, at most.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        help="How long the oldest queued input waits for others to batch with (0: a batch is "
             "what queued while the model was busy).")] = 0.0,
    max_queue: Annotated[int, typer.Option(
        help="Inputs waiting, at most; beyond it requests get 429 with Retry-After.")] = 256,
    max_queue_ms: Annotated[float, typer.Option(
        help="Work ahead of a request (its own included), in ms at the rate the model "
             "sustains, at most (429 beyond): set it to your latency budget. Chat models queue "
             "up to --timeout-s.")] = 1000.0,
    timeout_s: Annotated[float, typer.Option(
        help="Per-request timeout (504); for chats, until the first token.")] = 10.0,
    max_new_tokens: Annotated[int, typer.Option(
        help="Chat models: tokens per completion, at most.")] = 512,
    max_sequences: Annotated[int, typer.Option(
        help="Chat models: chats decoded together (continuous batching), at most; the rest "
             "wait in the queue.")] = 8,
    max_inputs: Annotated[int, typer.Option(help="Inputs per request, at most.")] = 64,
    max_body_kb: Annotated[int, typer.Option(help="Request body size, at most.")] = 1024,
    api_key: Annotated[str | None, typer.Option(
        envvar="LEANIFY_API_KEY", help="Require 'Authorization: Bearer KEY' (env "
        "LEANIFY_API_KEY). Needed to bind a non-loopback address.", show_default=False)] = None,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="Serve a non-loopback address without a key (your own network "
                          "guards it).")] = False,
    threads: Annotated[int | None, typer.Option(
        help="Intra-op threads (default: what the run measured, else all cores).",
        show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="Folder with tokenizer.json, for models that ship without one.",
        show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    trust_code: TrustCode = False,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Serve from a local Ray cluster (Ray Serve), the same endpoints.")]
    = False,
    replicas: Annotated[int, typer.Option(help="With --ray: model replicas.")] = 2,
    max_replicas: Annotated[int | None, typer.Option(
        help="With --ray: autoscale up to this many replicas on queue length.",
        show_default=False)] = None,
) -> None:
    """An HTTP server for the model: dynamic batching, a bounded queue, OpenAI-shaped
    /v1/embeddings (or /v1/classify, or /v1/chat/completions with streaming for causal LMs),
    /health, /ready and Prometheus /metrics."""
    from leanify.errors import LeanifyError
    from leanify.serve.app import LOOPBACK, Limits
    from leanify.serve.app import serve as run_server
    from leanify.serve.model import resolve

    if host not in LOOPBACK and not api_key and not no_auth:
        raise LeanifyError(
            f"binding {host} puts the model on the network with no API key.",
            fix="Give --api-key KEY (or LEANIFY_API_KEY), or --no-auth if your own network "
                "guards it; or bind 127.0.0.1.")
    for name, value in (("--max-batch", max_batch), ("--max-queue", max_queue),
                        ("--max-inputs", max_inputs), ("--max-body-kb", max_body_kb),
                        ("--max-new-tokens", max_new_tokens),
                        ("--max-sequences", max_sequences)):
        if value < 1:
            raise LeanifyError(f"{name} must be at least 1.", fix=f"Give a positive {name}.")
    if max_wait_ms < 0 or timeout_s <= 0 or max_queue_ms <= 0:
        raise LeanifyError("--max-wait-ms must be >= 0, --timeout-s and --max-queue-ms > 0.",
                           fix="Use e.g. --max-wait-ms 5 --timeout-s 10 --max-queue-ms 100.")
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms,
                    max_queue=max(max_queue, max_inputs), max_queue_ms=max_queue_ms,
                    timeout_s=timeout_s,
                    max_body_bytes=max_body_kb * 1024, max_inputs=max_inputs,
                    max_new_tokens=max_new_tokens, max_sequences=max_sequences)
    source = resolve(model, tokenizer=str(tokenizer) if tokenizer else None,
                     trust_pickle=trust_pickle, trust_code=trust_code, threads=threads)
    from leanify.serve.model import check_servable

    check_servable(source.artifact)  # a bad model is exit 2 before the port is bound
    if ray:
        if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
            raise LeanifyError("--replicas must be at least 1 and --max-replicas at least "
                               "--replicas.", fix="Use e.g. --replicas 2 --max-replicas 4.")
        from leanify.serve.ray_serve import serve_ray

        raise typer.Exit(serve_ray(source, limits, host=host, port=port, api_key=api_key,
                                   replicas=replicas, max_replicas=max_replicas,
                                   say=lambda msg: err.print(escape(msg))))
    raise typer.Exit(run_server(source, limits, host=host, port=port, api_key=api_key,
                                say=lambda msg: err.print(escape(msg))))


@app.command()
def loadtest(
    url: Annotated[str, typer.Argument(
        help="The endpoint on this machine, e.g. http://127.0.0.1:8000/v1/embeddings.",
        show_default=False)],
    data: Annotated[Path, typer.Option(
        help="Texts to send, one request each (.txt one per line, or .csv/.jsonl/.parquet "
             "with a text column).", show_default=False)],
    rates: Annotated[str, typer.Option(help="Request rates to try, per second, in order.")]
    = "5,20,50",
    duration: Annotated[float, typer.Option(help="Seconds per rate.")] = 10.0,
    p95_budget_ms: Annotated[float | None, typer.Option(
        help="The p95 a rate must hold (with <1% errors and 429s).", show_default=False)]
    = None,
    timeout_s: Annotated[float, typer.Option(help="Per-request timeout.")] = 10.0,
    text_col: Annotated[str | None, typer.Option(
        help="Column holding the text (default: 'text', else the first column).",
        show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LEANIFY_API_KEY",
                                                show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        help="The 'model' field of each request (servers of several models need it).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the arrival times.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the record here.",
                                                   show_default=False)] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write the page here.",
                                                   show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Open-loop load (Poisson arrivals) at a ramp of rates: p50/p95/p99, errors and 429s per
    rate, the server's queue/model split, and the highest rate within a p95 budget."""
    from leanify.errors import LeanifyError
    from leanify.serve.loadtest import LoadSettings, run_loadtest

    try:
        rate_list = tuple(float(r) for r in rates.replace(" ", "").split(",") if r)
    except ValueError:
        rate_list = ()
    if not rate_list:
        raise LeanifyError(f"--rates {rates!r} is not a list of numbers.",
                           fix="Use e.g. --rates 5,20,50.")
    settings = LoadSettings(url=url, rates=rate_list, duration_s=duration, timeout_s=timeout_s,
                            p95_budget_ms=p95_budget_ms, api_key=api_key, seed=seed,
                            model=model)
    settings.check()
    for path in (json_path, html_path):
        if path is not None:
            _check_writable(path)
    texts = _texts_of(data, text_col)
    record = run_loadtest(settings, texts, say=_log(quiet))
    from leanify.measure.bench import write_json, write_text

    if json_path is not None:
        write_json(record, json_path)
    if html_path is not None:
        from leanify.report.loadtest import render_loadtest_html

        write_text(render_loadtest_html(record), html_path)
    stdout.print(escape(record["verdict"]))


def _texts_of(data: Path, column: str | None) -> list[str]:
    from leanify.errors import LeanifyError
    from leanify.measure.data import read_rows

    path, columns, rows = read_rows(data, plain_text=True)
    name = column or ("text" if "text" in columns else columns[0])
    if name not in columns:
        raise LeanifyError(f"has no column '{name}' (columns: {', '.join(columns)}).",
                           path=path, fix="Name the text column with --text-col.")
    texts = [str(r[name]) for _, r in rows if r.get(name) not in (None, "")]
    if not texts:
        raise LeanifyError(f"column '{name}' holds no text.", path=path,
                           fix="Point --text-col at the column with the sentences.")
    return texts


def _log(quiet: bool) -> Callable[[str], None]:
    return (lambda _msg: None) if quiet else (lambda msg: err.print(escape(msg)))


def _print_shrink(record: dict, out: Path) -> None:
    before, after = record["input"].get("params"), record["output"].get("params")
    ratio = f" ({after / before:.0%} of the input)" if before and after else ""
    count = f"{after:,}" if after else "?"
    stdout.print(f"[bold green]saved[/] {out / 'model'}: {count} parameters{ratio}")
    result = record.get("distill") or {}
    if result:
        stdout.print(f"  distillation {result['stopped']} after {result['steps']} steps "
                     f"({result['wall_s'] / 60:.1f} min); best dev {result['dev_metric']} "
                     f"{result['best_dev']:.4f}")


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[int, int, str], None]]:
    """A progress bar on stderr, gone when the work is done."""
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def tick(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        yield tick


def _check_apart(outputs: dict[str, Path | None], models: list[str], inputs: dict) -> None:
    """No output of the command may land on, in, or around one of its inputs."""
    from leanify.paths import check_apart, model_paths

    check_apart(outputs, {"model": [p for m in models for p in model_paths(m)], **inputs})


def _check_writable(path: Path) -> None:
    from leanify.errors import LeanifyError

    parent = path.expanduser().resolve().parent
    if path.exists() and path.is_dir():
        raise LeanifyError("is a folder; --json needs a file path.", path=path,
                           fix="Give a file name such as bench.json.")
    if not parent.exists() or not os.access(parent, os.W_OK):
        raise LeanifyError("cannot be written (its folder is missing or read-only).", path=path,
                           fix="Choose a path in a writable folder.")


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns every failure into a clear message and the right exit code."""
    global DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        DEBUG = True
        args.remove("--debug")
    DEBUG = DEBUG or os.environ.get("LEANIFY_DEBUG") == "1"
    # Libraries' own progress bars and chatter would drown ours (children inherit this).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _watch_sigint() as interrupted:
        try:
            code = app(args=args, prog_name="leanify", standalone_mode=False)
        except KeyboardInterrupt:
            _interrupted(args)
        except Exception as exc:
            _fail(exc, args)
    # typer turns a KeyboardInterrupt into a plain exit code 130: tell it apart by the signal
    if interrupted and code == 130:
        _interrupted(args)
    sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def _watch_sigint() -> Iterator[list[bool]]:
    """Ctrl-C still raises KeyboardInterrupt (training saves a checkpoint on it); the list
    records that it came, since typer swallows the exception."""
    import signal

    seen: list[bool] = []

    def on_sigint(signum: int, frame: object) -> None:
        seen.append(True)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave the handler alone
        previous = None
    try:
        yield seen
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


RESUMABLE = ("optimize", "distill")  # commands with a run folder that --resume continues


def _interrupted(args: list[str] | None = None) -> None:
    import shlex

    args = list(args or [])
    command = next((a for a in args if not a.startswith("-")), None)
    if command in RESUMABLE:
        again = shlex.join(["leanify", *args, *([] if "--resume" in args else ["--resume"])])
        err.print(f"[yellow]Interrupted;[/] resume with `{escape(again)}` (finished work is "
                  "kept).", highlight=False, soft_wrap=True)
    else:
        err.print("[yellow]Interrupted.[/] No half-written file was left.", highlight=False)
    sys.exit(130)


def _fail(exc: Exception, args: list[str] | None = None) -> None:
    from leanify.errors import LeanifyError

    # typer ships its own copy of click: recognise its exceptions by shape, not by class.
    kind = type(exc).__name__
    if kind == "Exit":
        sys.exit(getattr(exc, "exit_code", 0))
    if kind == "Abort":
        _interrupted(args)
    if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # usage errors: exit 2
        exc.show()
        sys.exit(exc.exit_code)
    if DEBUG:
        err.print_exception(show_locals=False)
    exc = _environment_error(exc) or exc
    if isinstance(exc, LeanifyError):
        err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False,
                  soft_wrap=True)
        sys.exit(exc.exit_code)
    saved = _save_traceback(exc)
    where = f"the traceback is in {saved}" if saved else "re-run with --debug for the traceback"
    first = (str(exc).strip().splitlines() or [""])[0]
    err.print(
        f"[bold red]internal error:[/] {type(exc).__name__}: {escape(first)} — a bug in "
        f"leanify; {escape(where)}; please report it.",
        highlight=False, soft_wrap=True,
    )
    sys.exit(1)


def _environment_error(exc: Exception) -> Exception | None:
    """A full disk, a folder leanify may not write to, or a model asking for more memory
    than its budget is the user's to fix (exit 2), not a bug: say what, and what to do."""
    import errno

    from leanify.errors import LeanifyError
    from leanify.sandbox import memory_error, out_of_memory

    if not isinstance(exc, LeanifyError) and out_of_memory(f"{type(exc).__name__}: {exc}"):
        # a child that runs a model does so under a budget its size explains (sandbox.py)
        return memory_error("", str(exc))
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    where = exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LeanifyError("the disk is full.", path=where,
                            fix="Free some space, then run the command again (optimize and "
                                "distill continue with --resume).")
    if exc.errno == errno.EROFS and where:
        return LeanifyError(f"cannot write to {where} (a read-only file system).", path=where,
                            fix="Choose an output path on a writable disk.")
    if exc.errno in (errno.EACCES, errno.EPERM) and where:
        return LeanifyError(f"permission denied for {where}.", path=where,
                            fix="Check its permissions, or choose another path.")
    return None


def _save_traceback(exc: BaseException) -> str | None:
    """Where the traceback of an internal error lies: the run folder's copy when the command
    saved one (optimize: OUT/errors/), else a new file in the temp folder."""
    import tempfile
    import traceback

    saved = getattr(exc, "traceback_file", None)
    if saved and Path(saved).is_file():
        return str(saved)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="leanify-crash-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        return None
    return path


if __name__ == "__main__":
    main()
