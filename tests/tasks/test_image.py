"""Image tasks on small CNNs built here: readers, the declared preprocessing, top-1 and
fidelity scoring, and the refusals (decompression bombs, unreadable files, missing paths)."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from image_data import colour_cnn, colour_images, feature_cnn

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.measure.evaluate import evaluate, reference_outputs
from leanify.models.load import load
from leanify.tasks import get
from leanify.tasks import image as im


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    return colour_cnn(root / "colour.onnx"), colour_images(root / "data", 6, seed=1)


def test_folder_csv_jsonl_and_npz_rows_read_the_same_labels(colour, tmp_path):
    _, folder = colour
    data = read_dataset(folder, "image-classification")
    assert len(data) == 18 and data.classes == ("0_red", "1_green", "2_blue")
    files = [p.relative_to(folder) for p in data.images]
    csv = folder / "rows.csv"  # relative paths resolve against the file's folder
    csv.write_text("path,label\n" + "".join(f"{p},{lbl}\n" for p, lbl in
                                            zip(files, data.labels, strict=True)))
    jsonl = folder / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"image": str(p), "label": lbl}) + "\n"
                             for p, lbl in zip(files, data.labels, strict=True)))
    for table in (csv, jsonl):
        rows = read_dataset(table, "image-classification")
        assert rows.labels == data.labels and rows.images == data.images
    npz = tmp_path / "rows.npz"
    arrays = np.stack([np.zeros((8, 8, 3), np.uint8)] * 3)
    np.savez(npz, images=arrays, labels=np.array([2, 0, 1]))
    rows = read_dataset(npz, "image-classification")
    assert rows.labels == ["2", "0", "1"] and rows.images[0].shape == (8, 8, 3)
    # image-fidelity takes any images under the folder, labels or not
    assert len(read_dataset(folder, "image-fidelity")) == 18


def test_bad_image_data_is_refused_naming_the_file(tmp_path):
    missing = tmp_path / "rows.csv"
    missing.write_text("path,label\nnot-there.png,cat\n")
    with pytest.raises(LeanifyError, match=r"line 2 names image 'not-there.png'"):
        read_dataset(missing, "image-classification")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(LeanifyError, match="no class folders"):
        read_dataset(loose, "image-classification")
    with pytest.raises(LeanifyError, match="not a readable image") as err:
        im.decode(loose / "a.png")
    assert "a.png" in str(err.value)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 5)))
    with pytest.raises(LeanifyError, match=r"has shape \[2, 5\]"):
        read_dataset(bad, "image-classification")


def _png_header(path, width: int, height: int) -> None:
    """A PNG whose header declares width x height pixels (and holds almost no data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 60_000, 60_000)  # 3.6 billion pixels declared
    with pytest.raises(LeanifyError, match="decompression bomb") as err:
        im.decode(bomb)
    assert err.value.exit_code == 2 and "bomb.png" in str(err.value)
    fine = tmp_path / "fine.png"
    from PIL import Image

    Image.new("RGB", (5, 4), (10, 20, 30)).save(fine)
    assert im.decode(fine).shape == (4, 5, 3)


def test_preprocessing_is_declared_read_and_applied(colour, tmp_path):
    model, _ = colour
    artifact = load(model)
    pre = im.resolve(artifact)
    assert (pre.height, pre.width, pre.layout, pre.source) == (32, 32, "NCHW", "input shape")
    red = np.zeros((40, 60, 3), np.uint8)
    red[:, :, 0] = 255
    row = pre.apply(red)
    assert row.shape == (3, 32, 32)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert np.allclose(row[:, 5, 5], expected, atol=1e-5)
    bgr = im.resolve(artifact, "color=BGR,mean=0.5,std=0.5,scale=1/255")
    assert np.allclose(bgr.apply(red)[:, 5, 5], [-1, -1, 1], atol=1e-5)  # red is last
    # preprocessor_config.json next to the model (Hugging Face format) is read
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model.read_bytes())
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": 40}, "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32}, "rescale_factor": 1 / 255,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3}))
    hf = im.resolve(load(folder / "model.onnx"))
    assert (hf.shorter, hf.interpolation, hf.mean) == (40, "bicubic", (0.5, 0.5, 0.5))
    assert hf.source.endswith("preprocessor_config.json")
    with pytest.raises(LeanifyError, match="fixed at 32x32"):
        im.resolve(artifact, "size=224")
    with pytest.raises(LeanifyError, match="unknown key 'colour'"):
        im.resolve(artifact, "colour=BGR")
    with pytest.raises(LeanifyError, match="std holds a zero"):
        im.resolve(artifact, "std=0/1/1")


def test_labels_map_to_classes_in_natural_order():
    from leanify.measure.data import Dataset

    def rows(labels, classes=None):
        return Dataset(None, "image-classification", labels=labels, images=[0] * len(labels),
                       classes=classes)

    angles = ["0", "90", "180", "270"]
    assert im.class_map(rows(angles[::-1]), None) == {"0": 0, "90": 1, "180": 2, "270": 3}
    assert im.class_map(rows(["2", "0", "1"]), None) == {"2": 2, "0": 0, "1": 1}
    # a split that lost a class keeps the folder order of the whole dataset
    assert im.class_map(rows(["dog"], ("cat", "dog")), None) == {"dog": 1}
    assert im.class_map(rows(["dog", "cat"]), {"0": "dog", "1": "cat"}) == {"dog": 0, "cat": 1}
    with pytest.raises(LeanifyError, match="'bird'"):
        im.class_map(rows(["bird"]), {"0": "dog", "1": "cat"})


def test_top1_scores_the_colour_cnn_and_fails_with_the_wrong_colour_order(colour):
    model, folder = colour
    data = read_dataset(folder, "image-classification")
    task = get("image-classification")
    right = evaluate(task.prepare(load(model)), data, "image-classification", threads=1)
    assert right.value == pytest.approx(100.0) and right.details["top3"] == 100.0
    # BGR swaps red and blue: only green stays right
    wrong = evaluate(task.prepare(load(model), "color=BGR"), data, "image-classification",
                     threads=1)
    assert wrong.value == pytest.approx(100 / 3)
    assert wrong.details["predicted_counts"] == {"0": 6, "1": 6, "2": 6}


def test_image_fidelity_is_exact_against_itself_and_can_fail(tmp_path):
    model = load(feature_cnn(tmp_path / "features.onnx"))
    data = read_dataset(colour_images(tmp_path / "images", 3, seed=2, labelled=False),
                        "image-fidelity")
    reference = reference_outputs(model, data, threads=1, batch_size=4)
    assert reference["0/scores"].shape == (4, 4, 8, 8) and len(reference) == 3  # 9 images
    same = evaluate(model, data, "image-fidelity", threads=1, batch_size=4, reference=reference)
    assert same.name == "image_fidelity" and same.value == pytest.approx(100.0)
    noisy = {k: v + np.random.default_rng(0).standard_normal(v.shape).astype(v.dtype) * v.std()
             for k, v in reference.items()}
    worse = evaluate(model, data, "image-fidelity", threads=1, batch_size=4, reference=noisy)
    assert 50 < worse.value < 90


def test_image_fidelity_compares_image_by_image_whatever_the_batch(tmp_path):
    # a candidate that runs one image per call (a TFLite export at batch 1) against a
    # reference taken four at a time: the same images, so the same outputs
    model = load(feature_cnn(tmp_path / "features.onnx"))
    data = read_dataset(colour_images(tmp_path / "images", 3, seed=2, labelled=False),
                        "image-fidelity")
    reference = reference_outputs(model, data, threads=1, batch_size=4)
    one_by_one = evaluate(model, data, "image-fidelity", threads=1, batch_size=1,
                          reference=reference)
    assert one_by_one.value == pytest.approx(100.0)
    assert one_by_one.details["rows"] == 9
    shifted = {k: np.roll(v, 1, axis=0) for k, v in reference.items()}  # rows misaligned
    assert evaluate(model, data, "image-fidelity", threads=1, batch_size=1,
                    reference=shifted).value < 99


def test_a_text_model_is_refused_by_image_tasks(colour):
    from leanify.models.artifact import Artifact, TensorSpec

    _, folder = colour
    text = Artifact("onnx", None, "text", (TensorSpec("input_ids", "int64", ("b", "s")),
                                           TensorSpec("attention_mask", "int64", ("b", "s"))))
    with pytest.raises(LeanifyError, match="not an image model"):
        get("image-classification").check(text, read_dataset(folder, "image-classification"))


@pytest.mark.parametrize("options", ["shorter=40,interpolation=lanczos,color=BGR",
                                     "resize=exact,mean=0.5,std=0.5"])
def test_the_usage_snippet_feeds_the_model_as_leanify_did(colour, tmp_path, monkeypatch,
                                                          options):
    from PIL import Image

    from leanify.tasks.image_classification import snippet_inputs

    model, _ = colour
    artifact = get("image-classification").prepare(load(model), options)
    photo = np.random.default_rng(5).integers(0, 256, (50, 70, 3)).astype(np.uint8)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photo).save("photo.jpg", quality=95)
    scope = {"np": np}
    exec("\n".join(snippet_inputs(artifact.meta)), scope)
    expected = im.resolve(artifact).apply(im.decode(tmp_path / "photo.jpg"))[None]
    assert np.allclose(scope["feeds"]["pixels"], expected, atol=1e-5)


def test_bad_images_in_the_data_stop_optimize_before_any_model_runs(colour, tmp_path):
    import os
    import subprocess
    import sys

    model, folder = colour
    data = tmp_path / "data"
    data.mkdir()
    _png_header(data / "bomb.png", 60_000, 60_000)
    (data / "ok.png").write_bytes((folder / "0_red" / "0_red_0.png").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "optimize", str(model),
                           "--task", "image-fidelity", "--data", str(data),
                           "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bomb.png" in proc.stderr and "decompression bomb" in proc.stderr
    assert not (tmp_path / "run").exists()
    # --preprocess is for image tasks only
    with pytest.raises(LeanifyError, match="takes no --preprocess"):
        get("fidelity").prepare(load(model), "size=32")
