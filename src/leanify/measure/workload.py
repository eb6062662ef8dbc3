"""Workloads: what one measured point is.

A point is (batch, length): for text models the length is tokens per row; for array models
(audio, sensor data, any non-text input) it is the sample's own length along its first
dynamic dim after the batch (e.g. 512 audio samples), which the user's sample fixes. Bench
rows keep the keys `batch_size` and `seq_len` for both, and say which workload they measured.
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
        return f"batch {batch} × {length} {self.length}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "axes": ["batch", self.length]}


TEXT = Workload("text", "tokens")
ARRAYS = Workload("arrays", "samples")
# causal LMs: (concurrent requests, prompt tokens) x a fixed count of new tokens; timed as
# prefill + decode (see measure/generation.py)
GENERATION = Workload("generation", "prompt tokens")


def for_artifact(artifact: Artifact) -> Workload:
    if artifact.meta.get("task") == "text-generation":
        return GENERATION
    return TEXT if "input_ids" in artifact.input_names else ARRAYS


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
    return (1, 32)


def points(artifact: Artifact, batch_sizes: Sequence[int], seq_lens: Sequence[int],
           sample: str | Path | None = None) -> list[tuple[int, int]]:
    """The (batch, length) points to measure, smallest first; a sample's length wins over
    the requested lengths (the model runs the user's real shape)."""
    fixed = sample_length(artifact, sample)
    lengths = [fixed] if fixed is not None else [int(s) for s in seq_lens]
    return sorted({(int(b), int(s)) for b in batch_sizes for s in lengths},
                  key=lambda p: (p[0] * p[1], p[0]))
