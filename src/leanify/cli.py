"""The `leanify` command line: parses arguments, calls the library, prints the result.

Exit codes: 0 success; 2 bad input (a clear message, no traceback); 1 internal error
(traceback with --debug); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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
out = Console()
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

        out.print(f"leanify {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())


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
        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("starting", total=None)

            def tick(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            record = run_bench(models, settings, progress=tick)
    if json_path is not None:
        write_json(record, json_path)
    if not quiet:
        from leanify.report.console import render_bench

        render_bench(record, out)
        if json_path is not None:
            out.print(f"[dim]record written to {json_path}[/]")


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
        out.print_json(json.dumps(described))
        return
    out.print(f"[bold]{artifact.name}[/]  format [cyan]{artifact.format}[/]  "
              f"{described['size_mb']:.1f} MB  {artifact.meta.get('params', '?')} parameters")
    out.print(f"  path: {artifact.path}")
    for spec in artifact.inputs:
        rng = f" in [{spec.low}, {spec.high})" if spec.high is not None else ""
        shape = list(spec.shape) if spec.shape else "?"
        out.print(f"  input {spec.name}: {spec.dtype} {shape}{rng}"
                  + (" (optional)" if spec.optional else ""))
    for key in ("task", "pooling", "normalize", "tokenizer", "architecture"):
        if key in artifact.meta:
            out.print(f"  {key}: {artifact.meta[key]}")


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
    try:
        code = app(args=args, prog_name="leanify", standalone_mode=False)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:
        _fail(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> None:
    err.print("[yellow]Interrupted.[/] Nothing partial was written.")
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
        err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True,
                  markup=True)
        sys.exit(exc.exit_code)
    err.print(
        f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
        "This is a bug in leanify. Re-run with --debug for the traceback and report it.",
        highlight=False, soft_wrap=True,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
