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


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(
        help="Models to compare: HF folders, .onnx, TorchScript, .pt2 files, or 'minilm'. "
             "The first is the baseline.", show_default=False)],
    batch_size: Annotated[str, typer.Option("--batch-size", "-b",
                                            help="Batch sizes, comma-separated.")] = "1,32",
    seq_len: Annotated[str, typer.Option("--seq-len", "-s",
                                         help="Sequence lengths, comma-separated.")] = "128",
    threads: Annotated[int | None, typer.Option(
        help="Intra-op threads per model (default: all usable cores).", show_default=False)]
    = None,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds (A B A B ...).")] = 3,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds per round, not timed.")] = 0.5,
    min_time: Annotated[float, typer.Option(help="Timed seconds per round, at least.")] = 1.0,
    min_iters: Annotated[int, typer.Option(help="Timed runs per round, at least.")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the record here.",
                                                   show_default=False)] = None,
    sample: Annotated[Path | None, typer.Option(
        help="Inputs: texts (.txt/.jsonl/.csv/.tsv) or arrays named like the model's inputs "
             "(.npz).", show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="Folder with tokenizer.json, for models that ship without one.",
        show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Allow pickled weights (.bin/.pt), read weights-only. Only for "
                               "files you trust.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no table.")] = False,
) -> None:
    """Latency, throughput and memory, side by side, each model in its own process."""
    from leanify.measure.bench import BenchSettings, write_json
    from leanify.measure.bench import bench as run_bench

    settings = BenchSettings(
        batch_sizes=_ints(batch_size, "--batch-size"), seq_lens=_ints(seq_len, "--seq-len"),
        threads=threads, rounds=rounds, warmup_s=warmup, min_time_s=min_time,
        min_iters=min_iters, sample=str(sample) if sample else None,
        tokenizer=str(tokenizer) if tokenizer else None, trust_pickle=trust_pickle,
    )
    if json_path is not None:
        _check_writable(json_path)
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
        help="embedding-similarity | text-classification | fidelity.", show_default=False)],
    data: Annotated[Path, typer.Option(
        help="Evaluation data: CSV/TSV/JSONL/Parquet or STS-B format. A calibration split is "
             "held out of it.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        help="Run folder (default: leanify-out/<model name>).", show_default=False)] = None,
    max_drop: Annotated[float, typer.Option(
        help="Metric points the model may lose (e.g. Spearman x100).")] = 0.5,
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
    batch_size: Annotated[str, typer.Option("--batch-size", "-b")] = "1,32",
    seq_len: Annotated[str, typer.Option("--seq-len", "-s")] = "128",
    threads: Annotated[int | None, typer.Option(
        help="Threads per model (default: all usable cores).", show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds per candidate.")] = 2,
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
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Find the fastest model that keeps its accuracy: export, optimize, quantize, measure.

    Exit code 0 when a model was selected and meets every target; 3 when the run finished but
    no candidate passed the gates or the targets were missed (the best so far is kept).
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
        batch_sizes=tuple(_ints(batch_size, "--batch-size")),
        seq_lens=tuple(_ints(seq_len, "--seq-len")), threads=threads, rounds=rounds,
        calibration_size=calibration_size, calibration_data=calibration_data, resume=resume,
        candidates=[c.strip() for c in candidates.split(",")] if candidates else None,
        text_col=text_col, pair_cols=pairs, label_col=label_col, score_col=score_col,
        trust_pickle=trust_pickle,
    )
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What leanify sees in a model: format, inputs, parameters, size. Loads nothing heavy."""
    import json

    from leanify.models.load import load

    artifact = load(model, tokenizer=tokenizer, trust_pickle=trust_pickle)
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
    for key in ("task", "pooling", "normalize", "tokenizer", "architecture"):
        if key in artifact.meta:
            stdout.print(f"  {key}: {artifact.meta[key]}")


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
    try:
        code = app(args=args, prog_name="leanify", standalone_mode=False)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:
        _fail(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> None:
    err.print("[yellow]Interrupted.[/] No half-written file was left; an optimize run keeps "
              "its finished trials and continues with --resume.")
    sys.exit(130)


def _fail(exc: Exception) -> None:
    from leanify.errors import LeanifyError

    # typer ships its own copy of click: recognise its exceptions by shape, not by class.
    kind = type(exc).__name__
    if kind == "Exit":
        sys.exit(getattr(exc, "exit_code", 0))
    if kind == "Abort":
        _interrupted()
    if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # usage errors: exit 2
        exc.show()
        sys.exit(exc.exit_code)
    if DEBUG:
        err.print_exception(show_locals=False)
    if isinstance(exc, LeanifyError):
        err.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False,
                  soft_wrap=True)
        sys.exit(exc.exit_code)
    err.print(
        f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
        "This is a bug in leanify. Re-run with --debug for the traceback and report it.",
        highlight=False, soft_wrap=True,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
