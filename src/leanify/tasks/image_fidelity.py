"""`image-fidelity`: for image models without labels (detectors, OCR, embedders): how close
the model's outputs stay to the original's on the user's images (any images under
`--data DIR`). Per output, the mean cosine x100 between each image's output and the
original's; the value is the worst output's (relative L2 error and top-1 agreement of 2-d
score outputs in details). Quantization noise of a healthy int8 CNN stays above ~99.5."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact
from leanify.tasks import image
from leanify.tasks.base import Batch, Columns, EvalSettings, Metric, Task
from leanify.tasks.fidelity import _agreement, _match_outputs
from leanify.tasks.image_classification import snippet_inputs


class ImageFidelity(Task):
    name = "image-fidelity"
    reads = ("image",)
    metric = "fidelity"
    needs_reference = True
    row_word = "images"
    summary = "images, no labels: agreement with the original model's outputs"

    def read(self, path: str | Path, columns: Columns | None = None) -> Dataset:
        dataset = image.read(path, self.name, labelled=False)
        self.check_rows(dataset)
        return dataset

    def prepare(self, artifact: Artifact, options: str | None = None) -> Artifact:
        return image.prepared(artifact, options)

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        if dataset.images is None:
            raise LeanifyError(
                f"image-fidelity needs images; this dataset was read for '{dataset.task}'.",
                path=dataset.path, fix="Read it with read_dataset(path, 'image-fidelity').")
        self.check_rows(dataset)
        image.resolve(artifact)

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        return image.batches(artifact, dataset, settings.batch_size)

    def reference(self, runner: Any, artifact: Artifact, dataset: Dataset,
                  settings: EvalSettings) -> dict[str, np.ndarray]:
        from leanify.tasks.fidelity import outputs_per_batch

        return outputs_per_batch(runner, self.batches(artifact, dataset, settings))

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        if not reference:
            raise LeanifyError(
                "image-fidelity compares against the original model's outputs, and none "
                "were given.", path=dataset.path,
                fix="Pass reference=reference_outputs(original, dataset) or "
                "reference=original_artifact.")
        got: dict[str, list[np.ndarray]] = {}
        rows_per_batch: list[int] = []
        for batch in self.batches(artifact, dataset, settings):
            rows_per_batch.append(len(next(iter(batch.values()))))
            for name, value in runner.run(batch).items():
                got.setdefault(name, []).append(np.asarray(value))
        ref = _by_output(reference, dataset)
        cos: dict[str, np.ndarray] = {}
        ref_all: dict[str, np.ndarray] = {}
        got_all: dict[str, np.ndarray] = {}
        agree: dict[str, np.ndarray] = {}
        n = len(dataset)
        for ref_name, got_name in _match_outputs(list(ref), list(got), artifact).items():
            a_parts, b_parts = ref[ref_name], got[got_name]
            if _per_row(b_parts, rows_per_batch) and all(x.ndim for x in a_parts) and \
                    sum(len(x) for x in a_parts) >= n:
                # one row per image: compared image by image, whatever batch each model ran
                # (a TFLite export runs batch 1; padding rows of a fixed batch dropped)
                a = np.concatenate(a_parts)[:n].reshape(n, -1)
                b = np.concatenate(b_parts)[:n].reshape(n, -1)
                if a.shape != b.shape:
                    raise _shape_error(got_name, b_parts[0], a_parts[0], artifact)
                if a.shape[1] > 1 and np.concatenate(a_parts).ndim == 2:
                    agree[ref_name] = a.argmax(1) == b.argmax(1)
                cos[ref_name] = _cosine(a, b)
            elif [x.shape for x in a_parts] == [x.shape for x in b_parts]:
                cos[ref_name] = np.concatenate([  # not per image: one comparison per batch
                    _cosine(x.reshape(1, -1), y.reshape(1, -1))
                    for x, y in zip(a_parts, b_parts, strict=True)])
                a = np.concatenate([x.ravel() for x in a_parts])
                b = np.concatenate([x.ravel() for x in b_parts])
            else:
                raise _shape_error(got_name, b_parts[0], a_parts[0], artifact)
            ref_all[ref_name], got_all[ref_name] = a.ravel(), b.ravel()
        per_output: dict[str, dict[str, float]] = {}
        for name, sims in cos.items():
            entry = _agreement(ref_all[name], got_all[name])
            entry.pop("fidelity", None)
            entry.update({"fidelity": float(np.mean(sims)) * 100 if sims.size else 100.0,
                          "min_cosine": float(np.min(sims)) * 100 if sims.size else 100.0})
            if name in agree:
                entry["top1_agreement"] = float(np.mean(agree[name])) * 100
            per_output[name] = entry
        worst = min(per_output, key=lambda n: per_output[n]["fidelity"])
        details = {"rows": len(dataset), "outputs": per_output, "worst_output": worst,
                   "preprocess": image.resolve(artifact).as_dict()}
        return Metric("image_fidelity", per_output[worst]["fidelity"], True, details)

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        return snippet_inputs(artifact_meta)


def _by_output(reference: dict[str, np.ndarray], dataset: Dataset) -> dict[str, list]:
    """The reference ("batch index/output name" keys) as each output's batches, in order."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for key, value in reference.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or not name:
            raise LeanifyError(f"the reference outputs hold a key {key!r}.", path=dataset.path,
                               fix="Compute the reference with reference_outputs.")
        out.setdefault(name, {})[int(index)] = np.asarray(value)
    return {name: [parts[i] for i in sorted(parts)] for name, parts in out.items()}


def _per_row(parts: list[np.ndarray], rows: list[int]) -> bool:
    return len(parts) == len(rows) and all(p.ndim >= 1 and len(p) == r
                                           for p, r in zip(parts, rows, strict=True))


def _shape_error(name: str, got: np.ndarray, ref: np.ndarray, artifact: Artifact):
    return LeanifyError(
        f"output '{name}' has shape {list(got.shape)}; the original gave {list(ref.shape)}.",
        path=artifact.path, fix="Keep the model's output shapes when optimizing it.")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; identical rows (zeros included) are 1, any NaN is 0."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not np.isfinite(b).all():
        return np.zeros(len(a))
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return np.where(same, 1.0, out)


TASK = ImageFidelity()
