"""`image-classification`: top-1 accuracy x100 (top-5 in details) on the user's labelled
images. Rows: a folder per class, a CSV/JSONL of (path, label), or an .npz (images, labels);
the preprocessing is the model's declared one (tasks/image.py)."""

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


class ImageClassification(Task):
    name = "image-classification"
    reads = ("image", "label")
    metric = "top1"
    row_word = "images"
    summary = "images + labels: top-1 accuracy x100 (top-5 in details)"

    def read(self, path: str | Path, columns: Columns | None = None) -> Dataset:
        dataset = image.read(path, self.name, labelled=True,
                             label_col=(columns or Columns()).label)
        self.check_rows(dataset)
        return dataset

    def prepare(self, artifact: Artifact, options: str | None = None) -> Artifact:
        return image.prepared(artifact, options)

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        if dataset.images is None or dataset.labels is None:
            raise LeanifyError(
                "image-classification needs labelled images; this dataset was read for "
                f"'{dataset.task}'.", path=dataset.path,
                fix="Read it with read_dataset(path, 'image-classification').")
        self.check_rows(dataset)
        image.resolve(artifact)
        image.class_map(dataset, image.model_labels(artifact))

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        return image.batches(artifact, dataset, settings.batch_size)

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        names = image.model_labels(artifact)
        mapping = image.class_map(dataset, names)
        parts = [image.first_output(runner.run(b)) for b in self.batches(artifact, dataset,
                                                                         settings)]
        scores = np.concatenate(parts)[:len(dataset)]  # a fixed batch pads the last one
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise LeanifyError(
                f"the model gives outputs shaped {list(scores.shape)}, not one score per "
                "class.", path=artifact.path,
                fix="image-classification needs a classifier; use image-fidelity otherwise.")
        n_classes = scores.shape[1]
        too_big = sorted(k for k, v in mapping.items() if v >= n_classes)
        if too_big:
            raise LeanifyError(
                f"label(s) {', '.join(map(repr, too_big))} map to class ids beyond the "
                f"model's {n_classes} classes.", path=dataset.path,
                fix="Name the classes with the model's class ids or label names.")
        gold = np.asarray([mapping[label] for label in dataset.labels or []])
        # stable sort: ties go to the lower class id, deterministically
        order = np.argsort(-scores, axis=1, kind="stable")
        top1 = float(np.mean(order[:, 0] == gold)) * 100
        k = min(5, n_classes)
        top5 = float(np.mean((order[:, :k] == gold[:, None]).any(axis=1))) * 100
        label_of = names or {}
        details = {
            "top1": top1, f"top{k}": top5, "rows": int(gold.size),
            "label_map": {lbl: label_of.get(str(v), str(v)) for lbl, v in mapping.items()},
            "predicted_counts": {label_of.get(str(c), str(c)): int((order[:, 0] == c).sum())
                                 for c in range(n_classes)},
            "preprocess": image.resolve(artifact).as_dict(),
        }
        return Metric(self.metric, top1, True, details)

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        return snippet_inputs(artifact_meta)

    def snippet_outputs(self, artifact_meta: dict[str, Any]) -> list[str]:
        return ["predicted = outputs.argmax(axis=1)  # class ids"]


def snippet_inputs(meta: dict[str, Any]) -> list[str]:
    """Lines that turn one image file into `feeds`, exactly as leanify fed the model."""
    pre = dict(meta.get("preprocess") or {})
    if not pre:
        return []
    pre["shorter"] = image.Preprocess(**{**pre, "mean": tuple(pre["mean"]),
                                         "std": tuple(pre["std"])}).shorter_side
    pre.pop("source", None)
    return [
        "from PIL import Image, ImageOps",
        "",
        f"pre = {pre!r}",
        "img = ImageOps.exif_transpose(Image.open('photo.jpg')).convert('RGB')  # your image",
        "resample = getattr(Image.Resampling, pre['interpolation'].upper())",
        "if pre['resize'] == 'exact':",
        "    img = img.resize((pre['width'], pre['height']), resample)",
        "else:  # the shorter side to pre['shorter'], then the centre crop",
        "    ratio = pre['shorter'] / min(img.size)",
        "    w = max(pre['width'], round(img.width * ratio))",
        "    h = max(pre['height'], round(img.height * ratio))",
        "    img = img.resize((w, h), resample)",
        "    left, top = (w - pre['width']) // 2, (h - pre['height']) // 2",
        "    img = img.crop((left, top, left + pre['width'], top + pre['height']))",
        "x = np.asarray(img.convert('L'))[:, :, None] if pre['channels'] == 1 else "
        "np.asarray(img)",
        "x = x[:, :, ::-1] if pre['color'] == 'BGR' and pre['channels'] == 3 else x",
        "if not np.issubdtype(np.dtype(pre['dtype']), np.integer):",
        "    x = (x.astype(np.float32) * np.float32(pre['scale']) - np.float32(pre['mean'])) "
        "/ np.float32(pre['std'])",
        "x = x.transpose(2, 0, 1) if pre['layout'] == 'NCHW' else x",
        "feeds = {pre['input']: np.ascontiguousarray(x[None], dtype=pre['dtype'])}",
    ]


TASK = ImageClassification()
