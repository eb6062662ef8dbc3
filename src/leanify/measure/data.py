"""Evaluation data: read a dataset file, check it, split it, and turn texts into model batches.

Every problem with the data becomes a LeanifyError naming the file, the line or row where it
applies, and the fix, and it does so while reading: before any model runs.

Formats: CSV and TSV with a header row, JSONL (one object per line), Parquet (needs pyarrow),
plain text (one text per line, fidelity only), and the STS Benchmark format (tab-separated, no
header: genre, filename, year, id, score, sentence1, sentence2, sometimes two attribution
fields; read without quote handling, since its sentences hold bare `"` characters).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.files import (
    MAX_FIELD_CHARS,
    MAX_NUMBER_CHARS,
    csv_error,
    csv_field_limit,
    decode_text,
    loads_json,
    shorten,
)
from leanify.models.inputs import load_tokenizer

TEXT_COLUMNS = ("sentence", "text", "content", "review", "document", "query")
PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("text1", "text2"),
    ("sentence_a", "sentence_b"),
    ("text_a", "text_b"),
    ("premise", "hypothesis"),
)
SCORE_COLUMNS = ("score", "similarity_score", "similarity", "label")
LABEL_COLUMNS = ("label", "labels", "target", "class", "category")

STS_COLUMNS = ("genre", "filename", "year", "id", "score", "sentence1", "sentence2")
STS_EXTRA = ("source", "author")  # attribution fields on some StackExchange pairs
_STS_NAME = re.compile(r"^sts-.*\.csv$", re.IGNORECASE)

SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".txt")
_MAX_LISTED = 10
# What one data file may make leanify hold: a file past these is not evaluation data a CPU
# scores in reasonable time, and its rows (Python objects, ~100 bytes a value) would take
# gigabytes. IMDB's 50k reviews are 66 MiB and 100k values.
MAX_DATA_BYTES = 128 << 20
MAX_VALUES = 2_000_000  # rows x columns


@dataclass
class Dataset:
    """Rows of one evaluation file, already checked.

    A row is a text (`texts`), a sentence pair (`pairs`) or one model call's input arrays
    (`arrays`: {input name: array}), with a gold `score` (similarity) or a `label`
    (classification; kept as the string read, mapped to the model's classes later).
    For a pair file read for `fidelity`, `pairs` holds the rows and `texts` every sentence
    (sentence1, sentence2 of row 0, then of row 1, ...). `lines` gives each row's line number
    (or row number for JSONL/Parquet) in the file, for messages.
    """

    path: Path
    task: str
    texts: list[str] | None = None
    pairs: list[tuple[str, str]] | None = None
    scores: list[float] | None = None
    labels: list[str] | None = None
    lines: list[int] | None = None
    arrays: list[dict[str, np.ndarray]] | None = None
    # image rows: a file path or a decoded HxW[xC] array each; `classes` is the label
    # vocabulary in class order when the data declares one (a folder per class), kept by
    # subsets so a split never renumbers the classes
    images: list[Any] | None = None
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        if self.pairs is not None:
            return len(self.pairs)
        if self.arrays is not None:
            return len(self.arrays)
        if self.images is not None:
            return len(self.images)
        return len(self.texts) if self.texts is not None else 0

    def subset(self, indices: Sequence[int]) -> Dataset:
        """The rows at `indices`, in that order (a new Dataset; this one is unchanged)."""
        idx = [int(i) for i in indices]
        n = len(self)
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise IndexError(f"row index {bad[0]} is out of range for {n} rows")

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in idx]

        pairs = pick(self.pairs)
        if pairs is not None:
            texts = _flatten(pairs) if self.texts is not None else None
        else:
            texts = pick(self.texts)
        return Dataset(self.path, self.task, texts, pairs, pick(self.scores), pick(self.labels),
                       pick(self.lines), pick(self.arrays), pick(self.images), self.classes)

    def all_texts(self) -> list[str]:
        """Every text the rows hold, both sentences of a pair included, in row order."""
        if self.texts is not None:
            return list(self.texts)
        return _flatten(self.pairs or [])


def _flatten(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [s for pair in pairs for s in pair]


# --- reading ---------------------------------------------------------------------------


def read_dataset(
    path: str | Path,
    task: str,
    *,
    text_col: str | None = None,
    pair_cols: Sequence[str] | None = None,
    label_col: str | None = None,
    score_col: str | None = None,
) -> Dataset:
    """Read and check an evaluation file for `task` (a name from leanify.tasks).

    Default columns: `sentence1`/`sentence2` + `score` for embedding-similarity; `sentence`
    (or `text`) + `label` for text-classification; for fidelity a text column, or both
    sentences of a pair file, or arrays (.npz files). Name other columns with text_col,
    pair_cols, label_col, score_col.
    """
    from leanify import tasks

    if pair_cols is not None and (isinstance(pair_cols, str) or len(pair_cols) != 2):
        raise LeanifyError(f"pair_cols must name two columns, got {pair_cols!r}.",
                           fix="Give the two sentence columns, e.g. sentence1,sentence2.")
    columns = tasks.Columns(text=text_col, pair=tuple(pair_cols) if pair_cols else None,
                            label=label_col, score=score_col)
    return tasks.get(task).read(path, columns)


def check_file(path: str | Path, suffixes: Sequence[str] = SUFFIXES) -> Path:
    """The data file exists, is a file and is not empty."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LeanifyError("dataset file not found.", path=path,
                           fix="Check the path to the evaluation data.")
    if path.is_dir():
        raise LeanifyError("is a folder, not a dataset file.", path=path,
                           fix=f"Point at one file ({', '.join(suffixes)}).")
    if path.stat().st_size == 0:
        raise LeanifyError("dataset file is empty.", path=path,
                           fix="Give a file with at least one row of data.")
    return path


def read_rows(path: str | Path, *, plain_text: bool = False
              ) -> tuple[Path, list[str], list[Row]]:
    """(path, column names, rows) of a data file; `plain_text` lets a .txt file be one text
    per line."""
    path = check_file(path)
    columns, rows = _read_rows(path, plain_text)
    if not rows:
        raise LeanifyError("holds a header but no rows of data.", path=path,
                           fix="Add rows below the header.")
    return path, columns, rows


Row = tuple[int, dict[str, Any]]  # (line or row number, values by column)


def _read_rows(path: Path, plain_text: bool) -> tuple[list[str], list[Row]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    text = decode_text(path, MAX_DATA_BYTES)
    if not text.strip():
        raise LeanifyError("dataset file is empty (only whitespace).", path=path,
                           fix="Give a file with at least one row of data.")
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    if suffix == ".json":
        raise LeanifyError("leanify reads JSON Lines (.jsonl), not a single JSON document.",
                           path=path, fix="Write one JSON object per line and name it .jsonl.")
    if _is_sts(path, text):
        return _read_sts(path, text)
    if suffix == ".txt":
        if not plain_text:
            raise LeanifyError(
                "a plain .txt file holds texts only; this task needs columns.",
                path=path, fix="Give a CSV, TSV, JSONL or Parquet file with a header.",
            )
        rows: list[Row] = []
        for n, line in enumerate(_split_lines(text), 1):
            if line.strip():
                _count_values(path, len(rows) + 1, n)
                rows.append((n, {"text": line.rstrip("\r")}))
        return ["text"], rows
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    raise LeanifyError(
        f"leanify does not read '{suffix or 'no suffix'}' dataset files.", path=path,
        fix=f"Give one of: {', '.join(SUFFIXES)} (or an STS-B file, sts-*.csv).",
    )


def _count_values(path: Path, total: int, line: int) -> None:
    if total > MAX_VALUES:
        raise LeanifyError(
            f"holds more than {MAX_VALUES:,} values (rows x columns) by line {line}; leanify "
            "reads evaluation files up to that size.", path=path,
            fix="Give a sample of the rows (a few thousand rows give a stable score).")


def _split_lines(text: str) -> Iterator[str]:
    """text.split("\\n"), one line at a time (a list of 40 million short lines would take
    gigabytes)."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end + 1


def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, each with its ending (\\n, \\r\\n or \\r), as the csv module
    wants them; unlike io.StringIO, which copies the text 4 bytes a character."""
    for match in _LINE.finditer(text):
        yield match.group()


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def _first_line(text: str) -> str:
    for line in _split_lines(text):
        if line.strip():
            return line.rstrip("\r")
    return ""


def _is_float(value: str) -> bool:
    if len(value) > MAX_NUMBER_CHARS:
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_sts(path: Path, text: str) -> bool:
    """STS-B: by content (7+ tab fields, a number in the fifth), or by name (sts-*.csv) when
    the first line is tab-separated and not a header."""
    fields = _first_line(text).split("\t")
    if len(fields) >= len(STS_COLUMNS) and _is_float(fields[4]):
        return True
    known = {c.lower() for c in (*TEXT_COLUMNS, *SCORE_COLUMNS, *LABEL_COLUMNS, *STS_COLUMNS)}
    known.update(c for pair in PAIR_COLUMNS for c in pair)
    header_like = any(f.strip().lower() in known for f in fields)
    return bool(_STS_NAME.match(path.name)) and len(fields) > 1 and not header_like


def _read_sts(path: Path, text: str) -> tuple[list[str], list[Row]]:
    rows: list[Row] = []
    width = len(STS_COLUMNS)
    total = 0
    for n, raw in enumerate(_split_lines(text), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")  # no quote handling: sentences hold bare '"'
        if len(fields) < width:
            raise LeanifyError(
                f"line {n} has {len(fields)} tab-separated fields; the STS-B format needs at "
                f"least {width} ({', '.join(STS_COLUMNS)}).",
                path=path, fix="Repair that line, or give a CSV/TSV with a header row.",
            )
        names = list(STS_COLUMNS) + [
            STS_EXTRA[i] if i < len(STS_EXTRA) else f"extra_{i + 1}"
            for i in range(len(fields) - width)
        ]
        total += len(fields)
        _count_values(path, total, n)
        rows.append((n, dict(zip(names, fields, strict=True))))
    return list(STS_COLUMNS), rows


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[list[str], list[Row]]:
    # TSV files (GLUE and the like) do not quote; CSV files may.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(_lines(text), delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    rows: list[Row] = []
    start, total = 1, 0  # the line the record being read starts on (quoted fields span lines)
    try:
        with csv_field_limit():
            for fields in reader:
                if not any(f.strip() for f in fields):
                    start = reader.line_num + 1
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    header_line = reader.line_num
                elif len(fields) != len(header):
                    sep = "tab" if delimiter == "\t" else "comma"
                    raise LeanifyError(
                        f"line {reader.line_num} has {len(fields)} {sep}-separated fields; the "
                        f"header (line {header_line}) has {len(header)}.",
                        path=path,
                        fix="Repair that line (a text holding the separator must be quoted in "
                        "CSV; TSV texts cannot hold tabs).",
                    )
                else:
                    rows.append((reader.line_num, dict(zip(header, fields, strict=True))))
                total += len(fields)
                _count_values(path, total, reader.line_num)
                start = reader.line_num + 1
    except csv.Error as exc:
        raise csv_error(path, exc, start) from exc
    return header or [], rows


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[Row]]:
    rows: list[Row] = []
    columns: dict[str, None] = {}
    total = 0
    for n, line in enumerate(_split_lines(text), 1):
        if not line.strip():
            continue
        obj = loads_json(line, path, f"line {n}", fix="Give one JSON object per line.")
        if not isinstance(obj, dict):
            raise LeanifyError(
                f"line {n} holds a JSON {type(obj).__name__}, not an object.", path=path,
                fix='Give one JSON object per line, e.g. {"sentence": "...", "label": 1}.',
            )
        total += max(1, len(obj))
        _count_values(path, total, n)
        columns.update(dict.fromkeys(obj))
        rows.append((n, obj))
    return list(columns), rows


def _read_parquet(path: Path) -> tuple[list[str], list[Row]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise LeanifyError(
            "reading Parquet files needs the Python package 'pyarrow', which is not installed.",
            path=path, fix="Install it with: pip install pyarrow (or give CSV, TSV or JSONL).",
        ) from exc
    sample = "Give a sample of the rows (a few thousand rows give a stable score)."
    if path.stat().st_size > MAX_DATA_BYTES:
        raise LeanifyError(f"is {path.stat().st_size / 2**20:.0f} MiB; leanify reads data "
                           f"files up to {MAX_DATA_BYTES >> 20} MiB.", path=path, fix=sample)
    try:
        # Sizes from the footer first: a small file can unpack to gigabytes.
        meta = pq.ParquetFile(path).metadata
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        values = meta.num_rows * max(1, meta.num_columns)
        if values > MAX_VALUES or unpacked > MAX_DATA_BYTES:
            raise LeanifyError(
                f"holds {meta.num_rows:,} rows x {meta.num_columns} columns, "
                f"{unpacked / 2**20:.0f} MiB unpacked; leanify reads up to {MAX_VALUES:,} values "
                f"and {MAX_DATA_BYTES >> 20} MiB.", path=path, fix=sample)
        table = pq.read_table(path)
    except LeanifyError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise LeanifyError(f"is not a readable Parquet file ({exc}).", path=path,
                           fix="Re-write the file, or give CSV, TSV or JSONL.") from exc
    return list(table.column_names), list(enumerate(table.to_pylist(), 1))


# --- columns and values ----------------------------------------------------------------


def _where(path: Path, n: int) -> str:
    kind = "row" if path.suffix.lower() in (".parquet",) else "line"
    return f"{kind} {n}"


def missing_column(path: Path, what: str, looked_for: Sequence[str], columns: Sequence[str],
                     option: str) -> LeanifyError:
    return LeanifyError(
        f"has no {what} column (looked for {', '.join(looked_for)}); columns found: "
        f"{', '.join(map(str, columns)) or 'none'}.",
        path=path,
        fix=f"Rename the column, or name it with {option}.",
    )


def find_column(columns: Sequence[str], wanted: str | None,
                defaults: Sequence[str]) -> str | None:
    """The column to use: the one asked for, else the first default present (exact, then
    case-insensitive)."""
    candidates = [wanted] if wanted else list(defaults)
    for name in candidates:
        if name in columns:
            return name
    lowered = {str(c).lower(): c for c in columns}
    for name in candidates:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def find_pair_columns(columns: Sequence[str],
                      wanted: Sequence[str] | None) -> tuple[str, str] | None:
    options = [tuple(wanted)] if wanted else list(PAIR_COLUMNS)
    for a, b in options:
        ca, cb = find_column(columns, a, ()), find_column(columns, b, ())
        if ca is not None and cb is not None:
            return ca, cb
    return None


def row_text(path: Path, n: int, row: dict, col: str) -> str:
    if col not in row:
        raise LeanifyError(f"{_where(path, n)} has no '{col}' field.", path=path,
                           fix=f"Give every row a '{col}'.")
    value = row[col]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, str):
        if isinstance(value, dict | list):
            raise LeanifyError(f"{_where(path, n)}: '{col}' holds a {type(value).__name__}, "
                               "not text.", path=path, fix=f"Make '{col}' a string.")
        value = str(value)
    if not value.strip():
        raise LeanifyError(f"{_where(path, n)} has an empty '{col}'.", path=path,
                           fix="Fill in the text or drop that row.")
    if len(value) > MAX_FIELD_CHARS:  # the CSV reader's limit, for every format
        raise LeanifyError(
            f"{_where(path, n)}: '{col}' holds {len(value):,} characters; leanify reads texts "
            f"up to {MAX_FIELD_CHARS:,}.", path=path,
            fix="Shorten that text (models read at most a few thousand tokens).")
    _refuse_nul(path, n, col, value)
    return value


def _refuse_nul(path: Path, n: int, col: str, value: str) -> None:
    # JSONL writes it as \\u0000 and Parquet stores it as is; tokenizers and C libraries
    # would cut the text there.
    if "\x00" in value:
        raise LeanifyError(f"{_where(path, n)}: '{col}' holds a NUL character (\\x00).",
                           path=path, fix="Remove the NUL characters from the data.")


def row_score(path: Path, n: int, row: dict, col: str) -> float:
    if col not in row:
        raise LeanifyError(f"{_where(path, n)} has no '{col}' field.", path=path,
                           fix=f"Give every row a numeric '{col}'.")
    value = row[col]
    fix = "Give every row a numeric gold score (e.g. 0 to 5 for STS-B)."
    if isinstance(value, str) and len(value.strip()) > MAX_NUMBER_CHARS:
        raise LeanifyError(
            f"{_where(path, n)}: score {shorten(value)} in column '{col}' is not a number "
            f"leanify reads (over {MAX_NUMBER_CHARS} characters).", path=path, fix=fix)
    try:
        if isinstance(value, bool):
            raise ValueError
        score = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float range
        score = math.nan
    if not math.isfinite(score):
        raise LeanifyError(
            f"{_where(path, n)}: score {shorten(value)} in column '{col}' is not a finite "
            "number.", path=path, fix=fix)
    return score


def row_label(path: Path, n: int, row: dict, col: str) -> str:
    if col not in row:
        raise LeanifyError(f"{_where(path, n)} has no '{col}' field.", path=path,
                           fix=f"Give every row a '{col}'.")
    value = row[col]
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))  # 1.0 from JSON or Parquet is label "1"
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        text = ""
    else:
        text = str(value).strip()
    if not text:
        raise LeanifyError(f"{_where(path, n)} has an empty label in column '{col}'.",
                           path=path, fix="Give every row a label, or drop the row.")
    _refuse_nul(path, n, col, text)
    return text


# --- splitting -------------------------------------------------------------------------


def split(dataset: Dataset, calibration_size: int = 300, seed: int = 0
          ) -> tuple[Dataset, Dataset]:
    """Split rows into (calibration, evaluation): disjoint, the same for the same seed.

    At most `calibration_size` rows and never more than 20% of the dataset go to calibration,
    so the evaluation keeps at least 80%. Both parts keep the file's row order. For pair
    files a row (both sentences) goes wholly to one side.
    """
    if calibration_size < 0:
        raise LeanifyError(f"calibration size must be 0 or more, got {calibration_size}.",
                           fix="Use e.g. a calibration size of 300.")
    n = len(dataset)
    n_cal = min(int(calibration_size), n // 5)
    order = np.random.default_rng(seed).permutation(n)
    cal = np.sort(order[:n_cal])
    ev = np.sort(order[n_cal:])
    return dataset.subset(cal.tolist()), dataset.subset(ev.tolist())


def calibration_texts(dataset: Dataset) -> list[str]:
    """The distinct texts of the dataset's rows (both sentences of pairs), in row order."""
    return list(dict.fromkeys(dataset.all_texts()))


# --- labels ----------------------------------------------------------------------------


def check_labels(dataset: Dataset, model_labels: dict[str, str] | None) -> dict[str, int]:
    """Map each dataset label to a model class index, or raise naming the unknown labels.

    A dataset label matches a model label name (id2label value; exactly, else ignoring case)
    or a class id written as a string ("0", "1"). `model_labels` is id2label with string
    keys; None when the model has no label names (then only class ids can match).
    Returns {} for tasks other than text-classification.
    """
    if dataset.task != "text-classification" or not dataset.labels:
        return {}
    found = list(dict.fromkeys(dataset.labels))
    model_labels = {str(k): str(v) for k, v in (model_labels or {}).items()}
    by_name = {v: int(k) for k, v in model_labels.items() if k.lstrip("-").isdigit()}
    lower: dict[str, list[int]] = {}
    for name, idx in by_name.items():
        lower.setdefault(name.lower(), []).append(idx)
    mapping: dict[str, int] = {}
    unknown = []
    for label in found:
        if label in by_name:
            mapping[label] = by_name[label]
        elif label in model_labels and label.isdigit():
            mapping[label] = int(label)
        elif len(lower.get(label.lower(), [])) == 1:
            mapping[label] = lower[label.lower()][0]
        elif not model_labels and label.isdigit():
            mapping[label] = int(label)
        else:
            unknown.append(label)
    if unknown:
        shown = ", ".join(map(shorten, unknown[:_MAX_LISTED]))
        more = f" (and {len(unknown) - _MAX_LISTED} more)" if len(unknown) > _MAX_LISTED else ""
        if model_labels:
            known = ", ".join(f"{k}={v!r}" for k, v in sorted(model_labels.items(),
                                                              key=lambda kv: _id_key(kv[0])))
            msg = (f"holds label(s) {shown}{more} that the model does not know; the model's "
                   f"labels are {known}.")
            fix = ("Relabel the data with the model's label names or ids, or name another "
                   "label column with label_col.")
        else:
            msg = (f"holds label(s) {shown}{more}, but the model has no label names "
                   "(id2label), so only class ids (0, 1, ...) can be matched.")
            fix = "Write the labels as class ids, or add id2label to the model's config."
        raise LeanifyError(msg, path=dataset.path, fix=fix)
    return mapping


def _id_key(key: str) -> tuple[int, str]:
    return (int(key), key) if key.lstrip("-").isdigit() else (1 << 30, key)


# --- tokenizing ------------------------------------------------------------------------


def text_batches(
    texts: Sequence[str],
    tokenizer_folder: str | Path,
    batch_size: int,
    max_length: int,
    input_names: Sequence[str],
    *,
    pad_to: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Tokenized batches in text order: int64 arrays padded to the longest text of each batch
    (or to `pad_to` tokens, for models exported with a fixed sequence length), truncated at
    `max_length` tokens, holding only the keys in `input_names`."""
    if batch_size < 1 or max_length < 2:
        raise LeanifyError(f"batch size ({batch_size}) must be at least 1 and max length "
                           f"({max_length}) at least 2.", fix="Use e.g. batch size 32, "
                           "max length 128.")
    tok, pad_token, pad_id = load_tokenizer(tokenizer_folder)
    tok.no_padding()
    tok.no_truncation()
    tok.enable_truncation(max_length=max_length)
    # length=None pads to the longest text of each batch.
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, length=pad_to)
    wanted = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in input_names]
    for start in range(0, len(texts), batch_size):
        encodings = tok.encode_batch(list(texts[start:start + batch_size]))
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            attr = {"input_ids": "ids", "attention_mask": "attention_mask",
                    "token_type_ids": "type_ids"}[name]
            out[name] = np.array([getattr(e, attr) for e in encodings], dtype=np.int64)
        yield out
