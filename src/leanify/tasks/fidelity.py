"""`fidelity`: how close a model stays to the original's outputs, with no labels at all.

Rows are texts (or both sentences of a pair file), or arrays: a folder of `.npz` files (or
one), each file one model call with an array per input name (scalars allowed, e.g. an audio
model's sample rate). Metrics:
- text, embeddings: mean cosine x100 of the pooled embeddings;
- text, logits: top-1 agreement x100 (mean KL in details);
- arrays: per output, 100 x (1 - relative L2 error) over all rows (exact agreement for
  integer outputs); the value is the worst output's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure import data as d
from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact
from leanify.tasks import text
from leanify.tasks.base import Batch, Columns, EvalSettings, Metric, Task

MAX_FILES = 100_000  # .npz rows in one data folder


class Fidelity(Task):
    name = "fidelity"
    reads = ("text", "arrays")
    metric = "fidelity"
    needs_reference = True
    plain_text = True
    summary = "no labels: agreement with the original model's outputs (texts or .npz arrays)"

    # --- reading ---------------------------------------------------------------------------

    def read(self, path: str | Path, columns: Columns | None = None) -> Dataset:
        path = Path(path).expanduser()
        if path.is_dir() or path.suffix.lower() == ".npz":
            return read_arrays(path, self.name)
        return super().read(path, columns)

    def extract(self, path: Path, names: list[str], rows: list, columns: Columns) -> Dataset:
        lines = [n for n, _ in rows]
        tc = d.find_column(names, columns.text, d.TEXT_COLUMNS) if not columns.pair else None
        if tc is not None:
            return Dataset(path, self.name, texts=[d.row_text(path, n, r, tc) for n, r in rows],
                           lines=lines)
        pc = None if columns.text else d.find_pair_columns(names, columns.pair)
        if pc is None:
            looked = [columns.text] if columns.text else [
                *d.TEXT_COLUMNS, *(" + ".join(p) for p in d.PAIR_COLUMNS)]
            if columns.pair:
                looked = [" + ".join(columns.pair)]
            raise d.missing_column(path, "text", looked, names, "text_col or pair_cols")
        pairs = [(d.row_text(path, n, r, pc[0]), d.row_text(path, n, r, pc[1])) for n, r in rows]
        return Dataset(path, self.name, texts=[s for p in pairs for s in p], pairs=pairs,
                       lines=lines)

    # --- checks ----------------------------------------------------------------------------

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        self.check_rows(dataset)
        if dataset.arrays is not None:
            from leanify.models.inputs import check_arrays

            for row in dataset.arrays[:1]:  # one file's names stand for all (read_arrays)
                check_arrays(row, artifact, dataset.path)
            return
        text.tokenizer_folder(artifact)

    # --- rows -> inputs --------------------------------------------------------------------

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        if dataset.arrays is not None:
            from leanify.models.inputs import cast_to_model

            return (cast_to_model(row, artifact) for row in dataset.arrays)
        return text.batches(artifact, d.calibration_texts(dataset), settings)

    # --- scoring ---------------------------------------------------------------------------

    def reference(self, runner: Any, artifact: Artifact, dataset: Dataset,
                  settings: EvalSettings) -> dict[str, np.ndarray]:
        if dataset.arrays is None:
            array, kind = text.outputs(runner, artifact, dataset.all_texts(),
                                       settings.batch_size, settings.max_length)
            return {"outputs": array, "kind": np.array(kind)}
        return outputs_per_batch(runner, self.batches(artifact, dataset, settings))

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        if reference is None:
            raise LeanifyError(
                "fidelity compares against the original model's outputs, and none were given.",
                path=dataset.path,
                fix="Pass reference=reference_outputs(original, dataset) or "
                "reference=original_artifact.")
        if dataset.arrays is not None:
            return self._score_arrays(runner, artifact, dataset, settings, reference)
        return self._score_texts(runner, artifact, dataset, settings, reference)

    def _score_texts(self, runner: Any, artifact: Artifact, dataset: Dataset,
                     settings: EvalSettings, reference: dict[str, np.ndarray]) -> Metric:
        texts = dataset.all_texts()
        ref = np.asarray(reference["outputs"], dtype=np.float32)
        if ref.ndim != 2 or ref.shape[0] != len(texts):
            raise LeanifyError(
                f"the reference outputs have shape {list(ref.shape)}; fidelity needs one "
                f"row per text ({len(texts)} texts in this dataset).", path=dataset.path,
                fix="Compute them with reference_outputs(original, dataset).")
        out, kind = text.outputs(runner, artifact, texts, settings.batch_size,
                                 settings.max_length)
        if out.shape != ref.shape:
            raise LeanifyError(
                f"the reference outputs have shape {list(ref.shape)} but the model gives "
                f"{list(out.shape)} on the {len(texts)} texts of this dataset.",
                path=dataset.path,
                fix="Compute the reference with reference_outputs(original, dataset) on the "
                "same texts, with the same kind of model (embeddings vs logits).")
        if kind == "embedding":
            cos = text.cosine_rows(out, ref)
            details = {"texts": len(texts), "output": "embedding",
                       "min_cosine": float(cos.min()) * 100,
                       "p05_cosine": float(np.percentile(cos, 5)) * 100}
            return Metric("cosine_fidelity", float(cos.mean()) * 100, True, details)
        agree = np.argmax(out, axis=1) == np.argmax(ref, axis=1)
        log_p, log_q = text.log_softmax(ref), text.log_softmax(out)
        kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
        details = {"texts": len(texts), "output": "logits", "mean_kl": float(kl.mean()),
                   "max_kl": float(kl.max()), "disagreements": int((~agree).sum())}
        return Metric("top1_agreement", float(agree.mean()) * 100, True, details)

    def _score_arrays(self, runner: Any, artifact: Artifact, dataset: Dataset,
                      settings: EvalSettings, reference: dict[str, np.ndarray]) -> Metric:
        ref_by: dict[str, list[np.ndarray]] = {}
        got_by: dict[str, list[np.ndarray]] = {}
        for i, batch in enumerate(self.batches(artifact, dataset, settings)):
            outputs = runner.run(batch)
            wanted = [k.split("/", 1)[1] for k in reference if k.startswith(f"{i}/")]
            if not wanted:
                raise LeanifyError(
                    f"the reference outputs hold nothing for row {i}.", path=dataset.path,
                    fix="Compute the reference on the same data with reference_outputs.")
            names = _match_outputs(wanted, list(outputs), artifact)
            for ref_name, got_name in names.items():
                a, b = np.asarray(reference[f"{i}/{ref_name}"]), np.asarray(outputs[got_name])
                if a.shape != b.shape:
                    raise LeanifyError(
                        f"output '{got_name}' has shape {list(b.shape)} on row {i}; the "
                        f"original gave {list(a.shape)}.", path=artifact.path,
                        fix="Keep the model's output shapes when optimizing it.")
                ref_by.setdefault(ref_name, []).append(a.ravel())
                got_by.setdefault(ref_name, []).append(b.ravel())
        per_output = {name: _agreement(np.concatenate(ref_by[name]),
                                       np.concatenate(got_by[name])) for name in ref_by}
        worst = min(per_output, key=lambda n: per_output[n]["fidelity"])
        details = {"rows": len(dataset), "outputs": per_output, "worst_output": worst}
        return Metric("output_fidelity", per_output[worst]["fidelity"], True, details)

    # --- snippet ---------------------------------------------------------------------------

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        if "tokenizer" not in artifact_meta:
            folded = artifact_meta.get("folded_inputs") or {}
            lines = ['feeds = dict(np.load("example_inputs.npz"))  # an array per input name']
            lines += [f"assert feeds.get({k!r}, {v!r}) == {v!r}  # folded into the model"
                      for k, v in folded.items()]
            return [*lines, "feeds = {k: v for k, v in feeds.items() if k in wanted}"]
        return text.snippet_inputs(folder, max_length)

    def snippet_outputs(self, artifact_meta: dict[str, Any]) -> list[str]:
        if artifact_meta.get("task") in text.EMBEDDING_TASKS and "tokenizer" in artifact_meta:
            return text.snippet_pooling(artifact_meta)
        return []


def _match_outputs(wanted: list[str], got: list[str], artifact: Artifact) -> dict[str, str]:
    """Reference output names -> this model's (the same names, else the same positions:
    an export may rename outputs)."""
    if set(wanted) <= set(got):
        return {n: n for n in wanted}
    if len(wanted) == len(got):
        return dict(zip(wanted, got, strict=True))
    raise LeanifyError(
        f"the model's outputs ({', '.join(got)}) do not match the original's "
        f"({', '.join(wanted)}).", path=artifact.path,
        fix="Keep the model's outputs when optimizing it.")


def _agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    if not np.issubdtype(ref.dtype, np.floating):
        same = float(np.mean(ref == got)) * 100 if ref.size else 100.0
        return {"fidelity": same, "exact_match": same}
    a, b = ref.astype(np.float64), got.astype(np.float64)
    if not np.isfinite(b).all():
        return {"fidelity": float("nan"), "rel_l2": float("nan"), "max_abs": float("nan")}
    norm = float(np.linalg.norm(a))
    err = float(np.linalg.norm(a - b))
    rel = err / norm if norm > 0 else (0.0 if err == 0 else float("inf"))
    return {"fidelity": max(0.0, 1.0 - rel) * 100, "rel_l2": rel,
            "max_abs": float(np.max(np.abs(a - b))) if a.size else 0.0}


def read_arrays(path: Path, task: str) -> Dataset:
    """Rows of arrays: each `.npz` file in a folder (sorted by name), or the one file given.
    Never unpickles (object arrays are refused)."""
    if not path.exists():
        raise LeanifyError("no such file or folder.", path=path,
                           fix="Give a folder of .npz files (one model call each) or one .npz.")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                 if p.suffix.lower() == ".npz" and p.is_file())
    if not files:
        raise LeanifyError("holds no .npz files.", path=path,
                           fix="Save one model call's inputs per file with numpy.savez.")
    if len(files) > MAX_FILES:
        raise LeanifyError(f"holds {len(files)} .npz files; leanify reads at most {MAX_FILES}.",
                           path=path, fix="Give a sample of your data.")
    from leanify.models.inputs import MAX_NPZ_BYTES, read_npz

    rows, total = [], 0
    for f in files:  # each file is capped by read_npz; so is the folder, as it is read
        rows.append(read_npz(f))
        total += sum(a.nbytes for a in rows[-1].values())
        if total > MAX_NPZ_BYTES:
            raise LeanifyError(f"holds more than {MAX_NPZ_BYTES >> 20} MiB of arrays (by "
                               f"{f.name}); leanify reads data folders up to that size.",
                               path=path, fix="Give a sample of your data.")
    keys = set(rows[0])
    for f, row in zip(files, rows, strict=True):
        if set(row) != keys:
            raise LeanifyError(
                f"holds arrays {', '.join(sorted(row))}; the first file holds "
                f"{', '.join(sorted(keys))}.", path=f,
                fix="Give every file the same input names.")
    return Dataset(path, "fidelity", arrays=rows, lines=list(range(1, len(rows) + 1)))


TASK = Fidelity()


def outputs_per_batch(runner: Any, batches: Any) -> dict[str, np.ndarray]:
    """Every output of every batch, keyed "batch index/output name": a reference to compare
    a candidate's outputs with, batch by batch."""
    ref: dict[str, np.ndarray] = {}
    for i, batch in enumerate(batches):
        for name, value in runner.run(batch).items():
            ref[f"{i}/{name}"] = np.asarray(value)
    return ref
