"""Workloads: what one measured point is.

A point is (batch, length): for text models the length is tokens per row; for array models
(audio, sensor data, any non-text input) it is the sample's own length along its first
dynamic dim after the batch (e.g. 512 audio samples), which the user's sample fixes; for
image models (one (batch, 3, H, W) or (batch, H, W, 3) input) it is the image height (the
width is the model's, or the same as the height): a static H x W is what runs, whatever
lengths are asked for; a dynamic one runs square images of each requested side. Bench
rows keep the keys `batch_size` and `seq_len` for all, and say which workload they measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from leanify.models.artifact import Artifact


@dataclass(frozen=True)
class Workload:
    name: str
    length: str  # what the second coordinate counts

    def describe(self, batch: int, length: int) -> str:
        if self is IMAGE:
            return f"batch {batch} × {length}×{length} images"
        return f"batch {batch} × {length} {self.length}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "axes": ["batch", self.length]}


TEXT = Workload("text", "tokens")
ARRAYS = Workload("arrays", "samples")
# causal LMs: (concurrent requests, prompt tokens) x a fixed count of new tokens; timed as
# prefill + decode (see measure/generation.py)
GENERATION = Workload("generation", "prompt tokens")

IMAGE = Workload("image", "height")
IMAGE_BATCHES = (1, 8)  # a request, a small batch: on CPU larger image batches add little


def image_dims(artifact: Artifact) -> tuple[int | None, int | None, int | None] | None:
    """(batch, height, width) of an image model's one input (None where dynamic), or None
    when the model is not an image model: exactly one required input, rank 4, float or
    uint8, with 1 or 3 channels in dim 1 (NCHW) or dim 3 (NHWC)."""
    required = [s for s in artifact.inputs if not s.optional]
    if len(required) != 1 or required[0].shape is None or len(required[0].shape) != 4:
        return None
    spec = required[0]
    if not (spec.dtype.startswith("float") or spec.dtype == "uint8"):
        return None
    shape = spec.shape
    if shape[1] in (1, 3):
        h, w = shape[2], shape[3]
    elif shape[3] in (1, 3):
        h, w = shape[1], shape[2]
    else:
        return None

    def fixed(dim: int | str) -> int | None:
        return dim if isinstance(dim, int) and dim > 0 else None

    return fixed(shape[0]), fixed(h), fixed(w)


def for_artifact(artifact: Artifact) -> Workload:
    if artifact.meta.get("task") == "text-generation":
        return GENERATION
    if "input_ids" in artifact.input_names:
        return TEXT
    return IMAGE if image_dims(artifact) is not None else ARRAYS


def sample_length(artifact: Artifact, sample: str | Path | None) -> int | None:
    """The length an .npz sample fixes for `artifact` (None: no sample, or none fixed)."""
    if sample is None or Path(sample).suffix.lower() != ".npz":
        return None
    from leanify.models.inputs import InputBuilder

    return InputBuilder(artifact, sample).sample_length()


def default_batches(artifact: Artifact, sample: str | Path | None = None) -> tuple[int, ...]:
    """Batch sizes measured unless asked otherwise: 1 and 32 for text (a request, a batch of
    requests); for an array model with a sample, the sample's own batch (a VAD or a sensor
    model runs chunk by chunk: its real workload is the sample's shape)."""
    if sample is not None and Path(sample).suffix.lower() == ".npz" and \
            for_artifact(artifact) is ARRAYS:
        from leanify.models.inputs import InputBuilder

        rows = InputBuilder(artifact, sample).rows
        if rows:
            return (rows,)
    if for_artifact(artifact) is GENERATION:
        return (1,)  # one chat request at a time; ask for concurrency with --batch-size
    dims = image_dims(artifact)
    if dims is not None:
        return (dims[0],) if dims[0] else IMAGE_BATCHES  # a fixed batch is the only one
    return (1, 32)


def points(artifact: Artifact, batch_sizes: Sequence[int], seq_lens: Sequence[int],
           sample: str | Path | None = None) -> list[tuple[int, int]]:
    """The (batch, length) points to measure, smallest first; a sample's length wins over
    the requested lengths (the model runs the user's real shape)."""
    fixed = sample_length(artifact, sample)
    dims = image_dims(artifact)
    if fixed is None and dims is not None and dims[1] is not None:
        fixed = dims[1]  # a static image size is what runs
    lengths = [fixed] if fixed is not None else [int(s) for s in seq_lens]
    return sorted({(int(b), int(s)) for b in batch_sizes for s in lengths},
                  key=lambda p: (p[0] * p[1], p[0]))
