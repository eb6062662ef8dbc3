"""The resolution the user's images have, against the one the model computes at: vision's
context length. Read from the files' headers (nothing decoded), or an .npz's array shape.

An image smaller than the model's input is upscaled before the model sees it: the model then
spends its convolutions on interpolated pixels. When most images are well below the input
size, a model at their resolution (retrained or fine-tuned there; a fully convolutional one
may run there directly) would cost about (their side / the input's side)^2 of the work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanify.measure.data import Dataset

SMALLER = 0.75  # the images' p95 shorter side below this share of the input's: worth a look


def image_sizes(dataset: Dataset, height: int, width: int, limit: int = 5000) -> dict[str, Any]:
    """Width and height percentiles of the data's images against the model's input."""
    from PIL import Image

    sizes = []
    for item in (dataset.images or [])[:limit]:
        if isinstance(item, np.ndarray):
            sizes.append((int(item.shape[1]), int(item.shape[0])))
        else:
            with Image.open(item) as im:  # the header only: decoding waits for the pixels
                sizes.append(im.size)
    if not sizes:
        return {"images": 0}
    w = np.array([s[0] for s in sizes])
    h = np.array([s[1] for s in sizes])
    shorter = np.minimum(w, h)
    model_side = min(height, width)

    def pct(a: np.ndarray) -> dict[str, int]:
        return {"p50": int(np.percentile(a, 50)), "p95": int(np.percentile(a, 95)),
                "min": int(a.min()), "max": int(a.max())}

    p95 = float(np.percentile(shorter, 95))
    return {"images": len(sizes), "width": pct(w), "height": pct(h),
            "shorter_side": pct(shorter), "model_input": {"height": height, "width": width},
            "upscaled_share": round(float(np.mean(shorter < model_side)), 4),
            "work_at_p95": round(min(1.0, (p95 / model_side) ** 2), 4),
            "smaller": p95 < SMALLER * model_side}
