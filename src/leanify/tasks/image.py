"""Images for image tasks: reading the user's images, and the declared preprocessing.

Rows come from a folder per class (the folder names are the labels), a CSV/TSV/JSONL file of
(path, label) rows (relative paths resolve against the file's folder), an `.npz` with an
`images` array (N, H, W[, C], uint8 or 0-1 floats) and optionally `labels`, or, for tasks
without labels, any images under a folder. Pillow decodes; a file whose header declares more
than MAX_PIXELS pixels is refused before it is decoded (a decompression bomb).

The preprocessing (`Preprocess`) is one declared spec, resolved in this order: the user's
`--preprocess` (key=value,... or a JSON file in the preprocessor_config.json format), the
spec a pass carried in the model's sidecar, `preprocessor_config.json` next to the model
(Hugging Face image processors), and last the model's own input shape (static H/W, NCHW or
NHWC) with ImageNet defaults. The resolved spec rides in the artifact's meta ("preprocess"),
so every candidate built from the model is fed exactly as the original was.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, first_line
from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact, TensorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
MAX_PIXELS = 50_000_000  # ~7000 x 7000: far beyond any model input, far below a bomb
MAX_IMAGES = 100_000
PATH_COLUMNS = ("path", "image", "file", "filename", "image_path")
LABEL_COLUMNS = ("label", "labels", "target", "class", "category")
NPZ_IMAGES = ("images", "image", "x", "data")
NPZ_LABELS = ("labels", "label", "y", "targets")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
PREPROCESSOR_CONFIG = "preprocessor_config.json"
CONFIG = "config.json"


# --- the preprocessing spec -------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """How one decoded image becomes one row of the model's input.

    resize "shorter": the shorter side to `shorter` pixels (aspect kept), then the centre
    `height` x `width` crop; "exact": straight to `height` x `width`. Then pixel values
    x `scale`, minus `mean`, over `std` (per channel, in the model's channel order), in
    `color` order (RGB or BGR; channels=1: grey) and `layout`.
    """

    input: str
    height: int
    width: int
    layout: str = "NCHW"
    resize: str = "shorter"
    shorter: int = 0  # 0: the crop's larger side / 0.875 (the usual ImageNet margin)
    interpolation: str = "bilinear"
    scale: float = 1 / 255
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    color: str = "RGB"
    channels: int = 3
    dtype: str = "float32"
    batch: int = 0  # 0: the model takes any batch size; else the one it declares
    source: str = "input shape"  # where the spec came from, for the record

    def check(self, where: Path | None) -> Preprocess:
        def bad(what: str, fix: str) -> LeanifyError:
            return LeanifyError(f"image preprocessing: {what}", path=where, fix=fix)

        if self.layout not in ("NCHW", "NHWC"):
            raise bad(f"layout '{self.layout}' is neither NCHW nor NHWC.", "Use layout=NCHW "
                      "or layout=NHWC.")
        if self.resize not in ("shorter", "exact"):
            raise bad(f"resize '{self.resize}' is unknown.", "Use resize=shorter or "
                      "resize=exact.")
        if self.interpolation not in INTERPOLATIONS:
            raise bad(f"interpolation '{self.interpolation}' is unknown.",
                      f"Use one of: {', '.join(INTERPOLATIONS)}.")
        if self.color not in ("RGB", "BGR"):
            raise bad(f"color '{self.color}' is neither RGB nor BGR.", "Use color=RGB or BGR.")
        if self.channels not in (1, 3):
            raise bad(f"{self.channels} channels; leanify feeds 1 (grey) or 3.",
                      "Give a model whose image input has 1 or 3 channels.")
        if not (0 < self.height <= 8192 and 0 < self.width <= 8192 and 0 <= self.shorter
                <= 8192):
            raise bad(f"size {self.height}x{self.width} (shorter side {self.shorter}) is out "
                      "of range.", "Use sizes between 1 and 8192 pixels.")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise bad(f"{name} has {len(values)} values for {self.channels} channels.",
                          f"Give {self.channels} values, e.g. {name}=0.5/0.5/0.5.")
        if any(v == 0 for v in self.std) or not np.isfinite(
                [self.scale, *self.mean, *self.std]).all():
            raise bad("std holds a zero, or a value is not finite.",
                      "Give finite values and a non-zero std.")
        return self

    @property
    def shorter_side(self) -> int:
        return self.shorter or round(max(self.height, self.width) / 0.875)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def apply(self, image: np.ndarray) -> np.ndarray:
        """One decoded image (H, W, 3 uint8 RGB) -> one model row (C, H, W or H, W, C)."""
        pillow()
        from PIL import Image

        pil = Image.fromarray(image)
        resample = getattr(Image.Resampling, self.interpolation.upper())
        if self.resize == "exact":
            pil = pil.resize((self.width, self.height), resample)
        else:
            w, h = pil.size
            ratio = self.shorter_side / min(w, h)
            # never smaller than the crop (a very wide image keeps its height at the crop's)
            nw = max(self.width, round(w * ratio))
            nh = max(self.height, round(h * ratio))
            pil = pil.resize((nw, nh), resample)
            left, top = (nw - self.width) // 2, (nh - self.height) // 2
            pil = pil.crop((left, top, left + self.width, top + self.height))
        array = np.asarray(pil)
        if self.channels == 1:
            array = np.asarray(pil.convert("L"))[:, :, None]
        elif self.color == "BGR":
            array = array[:, :, ::-1]
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            out = array.astype(self.dtype)  # an integer input takes raw pixels
        else:
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
            out = ((array.astype(np.float32) * np.float32(self.scale) - mean) / std)
            out = out.astype(self.dtype)
        return out.transpose(2, 0, 1) if self.layout == "NCHW" else out


def image_input(artifact: Artifact) -> tuple[TensorSpec, str]:
    """The model's image input and its layout: a rank-4 float (or uint8) input with 1 or 3
    channels in dim 1 (NCHW) or dim 3 (NHWC)."""
    found = []
    for spec in artifact.inputs:
        if spec.optional or spec.shape is None or len(spec.shape) != 4:
            continue
        if not (spec.dtype.startswith("float") or spec.dtype == "uint8"):
            continue
        c1, c3 = spec.shape[1], spec.shape[3]
        if c1 in (1, 3):
            found.append((spec, "NCHW"))
        elif c3 in (1, 3):
            found.append((spec, "NHWC"))
    required = [s for s in artifact.inputs if not s.optional]
    if len(found) != 1 or len(required) != 1:
        described = ", ".join(f"{s.name} {s.dtype}{list(s.shape) if s.shape else ''}"
                              for s in artifact.inputs) or "none found"
        raise LeanifyError(
            f"is not an image model leanify can feed: it needs exactly one input shaped "
            f"(batch, 3, H, W) or (batch, H, W, 3); its inputs are: {described}.",
            path=artifact.path,
            fix="Use the fidelity task with .npz rows for models with other inputs.")
    return found[0]


def _dims(spec: TensorSpec, layout: str) -> tuple[int | None, int | None, int]:
    h, w = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else (spec.shape[1],
                                                                     spec.shape[2])
    c = spec.shape[1] if layout == "NCHW" else spec.shape[3]
    return (h if isinstance(h, int) and h > 0 else None,
            w if isinstance(w, int) and w > 0 else None, int(c))


def _from_hf(config: dict[str, Any], base: dict[str, Any], where: Path) -> dict[str, Any]:
    """The fields a Hugging Face image processor config declares."""
    out = dict(base)
    size = config.get("size")
    crop = config.get("crop_size")
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    do_crop = config.get("do_center_crop", crop is not None)
    if config.get("do_resize", True) and isinstance(size, dict):
        if "shortest_edge" in size:
            out.update(resize="shorter", shorter=int(size["shortest_edge"]))
            if do_crop and isinstance(crop, dict):
                out.update(height=int(crop["height"]), width=int(crop["width"]))
            else:
                out.update(height=int(size["shortest_edge"]), width=int(size["shortest_edge"]))
        elif "height" in size and "width" in size:
            out.update(height=int(size["height"]), width=int(size["width"]))
            if do_crop and isinstance(crop, dict):
                out.update(resize="shorter", shorter=min(int(size["height"]),
                                                         int(size["width"])),
                           height=int(crop["height"]), width=int(crop["width"]))
            else:
                out.update(resize="exact")
    if config.get("do_rescale", True):
        out["scale"] = float(config.get("rescale_factor", 1 / 255))
    else:
        out["scale"] = 1.0
    if config.get("do_normalize", True):
        if "image_mean" in config:
            out["mean"] = tuple(float(v) for v in config["image_mean"])
        if "image_std" in config:
            out["std"] = tuple(float(v) for v in config["image_std"])
    else:
        out["mean"], out["std"] = (0.0,), (1.0,)
    if config.get("resample") in PIL_RESAMPLE:
        out["interpolation"] = PIL_RESAMPLE[config["resample"]]
    out["source"] = str(where)
    return out


def _parse_options(text: str) -> dict[str, Any]:
    """`key=value,...` (lists with '/': mean=0.5/0.5/0.5), or a JSON file (HF format or the
    spec's own keys)."""
    path = Path(text).expanduser()
    if text.endswith(".json") or path.is_file():
        if not path.is_file():
            raise LeanifyError("no such preprocessing file.", path=path,
                               fix="Give a JSON file, or key=value pairs.")
        from leanify.models.files import read_json

        data = read_json(path)
        return {"__json__": data, "__path__": str(path)}
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise LeanifyError(f"--preprocess: '{part}' is not key=value.",
                               fix="Write e.g. --preprocess size=224,color=BGR.")
        out[key.strip().lower()] = value.strip()
    return out


_NUMBER_KEYS = {"height": int, "width": int, "shorter": int, "channels": int, "scale": float}


def _apply_options(base: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    if "__json__" in options:
        data = options["__json__"]
        known = {f.name for f in fields(Preprocess)}
        if set(data) & known and not set(data) & {"image_mean", "do_resize", "size"}:
            out.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()
                        if k in known})
            out["source"] = options["__path__"]
            return out
        return _from_hf(data, out, Path(options["__path__"]))
    keys = {f.name for f in fields(Preprocess)} - {"input", "source", "dtype", "batch"}
    for key, value in options.items():
        try:
            if key == "size":
                h, _, w = value.lower().partition("x")
                out["height"], out["width"] = int(h), int(w or h)
            elif key in ("crop",):
                h, _, w = value.lower().partition("x")
                out["height"], out["width"] = int(h), int(w or h)
                out["resize"] = "shorter"
            elif key in ("mean", "std"):
                out[key] = tuple(float(v) for v in value.split("/"))
            elif key in _NUMBER_KEYS:
                out[key] = _NUMBER_KEYS[key](eval_fraction(value))
            elif key in ("layout", "color"):
                out[key] = value.upper()
            elif key in keys:
                out[key] = value.lower()
            else:
                raise LeanifyError(
                    f"--preprocess: unknown key '{key}'.",
                    fix=f"Use: size, crop, {', '.join(sorted(keys))}.")
        except ValueError as exc:
            raise LeanifyError(f"--preprocess: {key}={value} is not a valid value.",
                               fix="Give numbers for sizes, mean, std and scale (e.g. "
                               "mean=0.5/0.5/0.5, scale=1/255).") from exc
    out["source"] = "--preprocess" if out.get("source") == "input shape" else \
        f"{out.get('source')} + --preprocess"
    return out


def eval_fraction(value: str) -> float:
    """'1/255' or '0.0039' as a number (no eval of anything else)."""
    num, slash, den = value.partition("/")
    return float(num) / float(den) if slash else float(value)


def resolve(artifact: Artifact, options: str | None = None) -> Preprocess:
    """The preprocessing for `artifact` (see the module docstring for the order)."""
    spec, layout = image_input(artifact)
    h, w, c = _dims(spec, layout)
    batch = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 0
    fixed = {"input": spec.name, "layout": layout, "channels": c, "dtype": spec.dtype,
             "batch": batch}
    carried = artifact.meta.get("preprocess")
    if isinstance(carried, dict) and not options:
        known = {f.name for f in fields(Preprocess)}
        values = {**{k: v for k, v in carried.items() if k in known}, **fixed}
        for key in ("mean", "std"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        try:
            return Preprocess(**values).check(artifact.path)
        except TypeError as exc:  # a sidecar edited by hand
            raise LeanifyError(f"the sidecar's 'preprocess' entry is incomplete "
                               f"({first_line(exc)}).", path=artifact.path,
                               fix="Restore it, or declare --preprocess.") from exc
    base: dict[str, Any] = {**fixed, "height": h or w or 224, "width": w or h or 224,
                            "source": "input shape"}
    folder = artifact.path if artifact.path is not None and artifact.path.is_dir() else (
        artifact.path.parent if artifact.path is not None else None)
    hf = folder / PREPROCESSOR_CONFIG if folder is not None else None
    if hf is not None and hf.is_file():
        from leanify.models.files import read_json

        base = _from_hf(read_json(hf), base, hf)
    if options:
        base = _apply_options(base, _parse_options(options))
    base.update(fixed)  # the model's own layout, channels, dtype and batch always win
    try:
        pre = Preprocess(**base)
    except TypeError as exc:
        raise LeanifyError(f"image preprocessing: {first_line(exc)}.", path=artifact.path,
                           fix="Check the --preprocess keys.") from exc
    pre.check(Path(pre.source) if pre.source.endswith(".json") else artifact.path)
    if (h and pre.height != h) or (w and pre.width != w):
        raise LeanifyError(
            f"image preprocessing makes {pre.height}x{pre.width} images, but the model's "
            f"input '{spec.name}' is fixed at {h}x{w}.", path=artifact.path,
            fix=f"Declare size={h}x{w} (or leave the size out).")
    return pre


def prepared(artifact: Artifact, options: str | None = None) -> Artifact:
    """The artifact with its resolved preprocessing in meta (carried to every candidate)."""
    pre = resolve(artifact, options)
    return replace(artifact, meta={**artifact.meta, "preprocess": pre.as_dict()})


def model_labels(artifact: Artifact) -> dict[str, str] | None:
    """id2label: the model's meta, else config.json next to the model."""
    if artifact.meta.get("labels"):
        return {str(k): str(v) for k, v in artifact.meta["labels"].items()}
    if artifact.path is None:
        return None
    folder = artifact.path if artifact.path.is_dir() else artifact.path.parent
    config = folder / CONFIG
    if config.is_file():
        from leanify.models.files import read_json

        id2label = read_json(config).get("id2label")
        if isinstance(id2label, dict) and id2label:
            return {str(k): str(v) for k, v in id2label.items()}
    return None


# --- decoding ---------------------------------------------------------------------------


def pillow() -> None:
    """Pillow is there (the `vision` extra), else a clear error naming it."""
    from leanify.errors import require

    require("PIL.Image", "vision", "Image tasks")


def decode(item: Any, header_only: bool = False) -> np.ndarray | None:
    """A row (a path or an array) as an (H, W, 3) uint8 RGB array; EXIF orientation
    applied, as a viewer shows the photo. `header_only`: check the file's header (format,
    declared size) and decode nothing: what reading the data does, before any model runs."""
    if isinstance(item, np.ndarray):
        return None if header_only else _array_rgb(item)
    pillow()
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(item)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise LeanifyError(
                        f"declares {w}x{h} pixels, more than leanify decodes "
                        f"({MAX_PIXELS:,}): a decompression bomb or a far larger image than "
                        "any model input.", path=path,
                        fix="Resize the image (or drop it from the data).")
                if header_only:
                    return None
                im = ImageOps.exif_transpose(im)
                return np.asarray(im.convert("RGB"))
    except LeanifyError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise LeanifyError(f"is refused as a decompression bomb ({first_line(exc)}).",
                           path=path, fix="Resize the image (or drop it from the data).") \
            from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise LeanifyError(f"is not a readable image ({first_line(exc)}).", path=path,
                           fix="Re-save it as PNG or JPEG, or drop it from the data.") from exc


def _array_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=2)
    if np.issubdtype(array.dtype, np.floating):  # 0-1 floats
        array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255)
    return np.ascontiguousarray(array[:, :, :3].astype(np.uint8))


def batches(artifact: Artifact, dataset: Dataset, batch_size: int) -> Iterator[dict]:
    """The rows as model batches, in row order (the model's declared batch size wins)."""
    pre = resolve(artifact)
    size = pre.batch or max(1, int(batch_size))
    rows = dataset.images or []
    for start in range(0, len(rows), size):
        chunk = [pre.apply(decode(item)) for item in rows[start:start + size]]
        if pre.batch and len(chunk) < pre.batch:  # a fixed batch: the last one is padded
            chunk += [chunk[-1]] * (pre.batch - len(chunk))
        yield {pre.input: np.ascontiguousarray(np.stack(chunk))}


def first_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    for name in ("logits", "output", "probs"):
        if name in outputs:
            return np.asarray(outputs[name])
    return np.asarray(next(iter(outputs.values())))


# --- reading ----------------------------------------------------------------------------


def _images_under(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    if len(files) > MAX_IMAGES:
        raise LeanifyError(f"holds {len(files)} images; leanify reads at most {MAX_IMAGES}.",
                           path=folder, fix="Give a sample of your images.")
    return files


def _checked(dataset: Dataset) -> Dataset:
    """Every image file's header read (a bomb or a broken file is refused now, not in the
    middle of an evaluation)."""
    for item in dataset.images or []:
        decode(item, header_only=True)
    return dataset


def _no_images(path: Path, labelled: bool) -> LeanifyError:
    how = ("a folder per class (e.g. cat/1.jpg, dog/2.jpg), a CSV/JSONL of path,label rows, "
           "or an .npz with 'images' and 'labels'") if labelled else \
        f"a folder of images ({', '.join(IMAGE_SUFFIXES)})"
    return LeanifyError("holds no images.", path=path, fix=f"Give {how}.")


def read(path: str | Path, task: str, labelled: bool,
         label_col: str | None = None) -> Dataset:
    path = Path(path).expanduser()
    if not path.exists():
        raise LeanifyError("no such file or folder.", path=path,
                           fix="Check the path to the images.")
    if path.is_dir():
        return _checked(_read_folder(path, task, labelled))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, task, labelled)
    if suffix in (".csv", ".tsv", ".jsonl", ".ndjson"):
        return _checked(_read_table(path, task, labelled, label_col))
    if suffix in IMAGE_SUFFIXES and not labelled:
        return _checked(Dataset(path, task, images=[path], lines=[1]))
    raise LeanifyError(
        f"leanify does not read '{suffix or 'no suffix'}' image data.", path=path,
        fix="Give a folder of images, a CSV/JSONL of path,label rows, or an .npz.")


def _read_folder(path: Path, task: str, labelled: bool) -> Dataset:
    if not labelled:
        files = _images_under(path)
        if not files:
            raise _no_images(path, labelled)
        return Dataset(path, task, images=list(files), lines=list(range(1, len(files) + 1)))
    classes = sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: natural_key(d.name))
    loose = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if loose and not classes:
        raise LeanifyError(
            f"holds {len(loose)} images but no class folders; image-classification reads "
            "a folder per class.", path=path,
            fix="Move each image into a folder named by its class (or use image-fidelity).")
    images, labels = [], []
    for folder in classes:
        for file in _images_under(folder):
            images.append(file)
            labels.append(folder.name)
    if not images:
        raise _no_images(path, labelled)
    return Dataset(path, task, labels=labels, images=images,
                   lines=list(range(1, len(images) + 1)),
                   classes=tuple(d.name for d in classes))


def _read_table(path: Path, task: str, labelled: bool, label_col: str | None) -> Dataset:
    from leanify.measure import data as d

    path, names, rows = d.read_rows(path)
    pc = d.find_column(names, None, PATH_COLUMNS)
    if pc is None:
        raise d.missing_column(path, "image path", PATH_COLUMNS, names, "a 'path' header")
    lc = d.find_column(names, label_col, LABEL_COLUMNS) if labelled else None
    if labelled and lc is None:
        raise d.missing_column(path, "label", [label_col] if label_col else LABEL_COLUMNS,
                               names, "label_col")
    images, labels = [], []
    for n, row in rows:
        rel = Path(d.row_text(path, n, row, pc))
        file = rel if rel.is_absolute() else path.parent / rel
        if not file.is_file():
            raise LeanifyError(f"{d._where(path, n)} names image '{rel}', which does not "
                               "exist.", path=path,
                               fix="Paths are read relative to the data file's folder.")
        images.append(file)
        if lc is not None:
            labels.append(d.row_label(path, n, row, lc))
    return Dataset(path, task, labels=labels if labelled else None, images=images,
                   lines=[n for n, _ in rows])


def _read_npz(path: Path, task: str, labelled: bool) -> Dataset:
    from leanify.models.inputs import read_npz

    arrays = read_npz(path)
    key = next((k for k in NPZ_IMAGES if k in arrays), None)
    if key is None:
        raise LeanifyError(
            f"holds no image array (looked for {', '.join(NPZ_IMAGES)}; found "
            f"{', '.join(arrays) or 'none'}).", path=path,
            fix="Save the images as numpy.savez(file, images=..., labels=...).")
    images = arrays[key]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)) \
            or 0 in images.shape or not (np.issubdtype(images.dtype, np.integer)
                                         or np.issubdtype(images.dtype, np.floating)):
        raise LeanifyError(
            f"array '{key}' has shape {list(images.shape)} ({images.dtype}); leanify reads "
            "(N, H, W) or (N, H, W, C) numbers.", path=path,
            fix="Save images as uint8 (0-255) or floats (0-1), channels last.")
    labels = None
    if labelled:
        lkey = next((k for k in NPZ_LABELS if k in arrays), None)
        if lkey is None or arrays[lkey].shape != (len(images),):
            raise LeanifyError(
                f"needs a 'labels' array of {len(images)} values, one per image.", path=path,
                fix="Save it as numpy.savez(file, images=..., labels=...).")
        labels = [str(v) for v in arrays[lkey].tolist()]
    return Dataset(path, task, labels=labels, images=list(images),
                   lines=list(range(1, len(images) + 1)))


def natural_key(name: str) -> tuple:
    """Numbers sort as numbers: '0', '90', '180', '270' stay in that order."""
    return (0, int(name), name) if name.lstrip("-").isdigit() else (1, 0, name)


def class_map(dataset: Dataset, names: dict[str, str] | None,
              n_classes: int | None = None) -> dict[str, int]:
    """Each label -> class id: the model's id2label names; else ids when the labels are
    exactly 0..k-1; else the data's classes (folder names) in order, the i-th to class i."""
    found = list(dict.fromkeys(dataset.labels or []))
    if names:
        by_name = {v: int(k) for k, v in names.items() if k.lstrip("-").isdigit()}
        if all(label in by_name for label in found):
            return {label: by_name[label] for label in found}
        if not all(label.isdigit() and label in names for label in found):
            unknown = [label for label in found if label not in by_name][:10]
            raise LeanifyError(
                f"holds label(s) {', '.join(map(repr, unknown))} that the model does not "
                f"know; its labels are {', '.join(sorted(by_name, key=by_name.get))}.",
                path=dataset.path, fix="Name the classes with the model's label names.")
        return {label: int(label) for label in found}
    vocab: Sequence[str] = dataset.classes or sorted(found, key=natural_key)
    if all(v.isdigit() for v in vocab) and sorted(int(v) for v in vocab) == list(
            range(len(vocab))):
        return {label: int(label) for label in found}
    index = {label: i for i, label in enumerate(vocab)}
    return {label: index[label] for label in found}

