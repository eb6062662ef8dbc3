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
        cos: dict[str, list[np.ndarray]] = {}
        ref_all: dict[str, list[np.ndarray]] = {}
        got_all: dict[str, list[np.ndarray]] = {}
        agree: dict[str, list[np.ndarray]] = {}
        for i, batch in enumerate(self.batches(artifact, dataset, settings)):
            rows = len(next(iter(batch.values())))
            outputs = runner.run(batch)
            wanted = [k.split("/", 1)[1] for k in reference if k.startswith(f"{i}/")]
            if not wanted:
                raise LeanifyError(
                    f"the reference outputs hold nothing for batch {i}.", path=dataset.path,
                    fix="Compute the reference on the same images with reference_outputs.")
            for ref_name, got_name in _match_outputs(wanted, list(outputs), artifact).items():
                a = np.asarray(reference[f"{i}/{ref_name}"])
                b = np.asarray(outputs[got_name])
                if a.shape != b.shape:
                    raise LeanifyError(
                        f"output '{got_name}' has shape {list(b.shape)} on batch {i}; the "
                        f"original gave {list(a.shape)}.", path=artifact.path,
                        fix="Keep the model's output shapes when optimizing it.")
                per_row = a.ndim >= 1 and a.shape[0] == rows
                a2 = a.reshape(rows, -1) if per_row else a.reshape(1, -1)
                b2 = b.reshape(rows, -1) if per_row else b.reshape(1, -1)
                cos.setdefault(ref_name, []).append(_cosine(a2, b2))
                ref_all.setdefault(ref_name, []).append(a.ravel())
                got_all.setdefault(ref_name, []).append(b.ravel())
                if per_row and a.ndim == 2 and a.shape[1] > 1:
                    agree.setdefault(ref_name, []).append(a.argmax(1) == b.argmax(1))
        per_output: dict[str, dict[str, float]] = {}
        for name, parts in cos.items():
            sims = np.concatenate(parts)
            entry = _agreement(np.concatenate(ref_all[name]), np.concatenate(got_all[name]))
            entry.pop("fidelity", None)
            entry.update({"fidelity": float(np.mean(sims)) * 100 if sims.size else 100.0,
                          "min_cosine": float(np.min(sims)) * 100 if sims.size else 100.0})
            if name in agree:
                entry["top1_agreement"] = float(np.mean(np.concatenate(agree[name]))) * 100
            per_output[name] = entry
        worst = min(per_output, key=lambda n: per_output[n]["fidelity"])
        details = {"rows": len(dataset), "outputs": per_output, "worst_output": worst,
                   "preprocess": image.resolve(artifact).as_dict()}
        return Metric("image_fidelity", per_output[worst]["fidelity"], True, details)

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        return snippet_inputs(artifact_meta)


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
