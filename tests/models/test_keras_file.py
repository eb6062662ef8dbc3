"""Keras files: the packaged Keras-2 H5 CNN (cifar-10-model), .keras archives built here, and
the layers that are code."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from leanify import load
from leanify.errors import LeanifyError
from leanify.models.keras_file import keras_on_torch
from leanify.runtimes import open_runner


@pytest.fixture(scope="session")
def cifar_h5() -> Path:
    from importlib.util import find_spec

    # the package's own code imports TensorFlow: only its model file is used
    (folder,) = find_spec("cifar_10_model").submodule_search_locations
    return Path(folder) / "trained_models" / "cnn_model.h5"


def _small_model(lambda_layer: bool = False):
    keras = keras_on_torch()
    inputs = keras.Input(shape=(16, 16, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_the_packaged_h5_loads_from_its_config_alone(cifar_h5):
    artifact = load(cifar_h5)
    assert artifact.format == "keras"
    (spec,) = artifact.inputs
    assert spec.shape == ("batch", 32, 32, 3) and spec.dtype == "float32"
    assert artifact.meta["params"] == 969_418  # as Keras' own summary counts them
    assert artifact.meta["code_layers"] == []


def test_the_runner_gives_what_keras_predict_gives(cifar_h5):
    artifact = load(cifar_h5)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    runner = open_runner(artifact, threads=1)
    (out,) = runner.run({artifact.input_names[0]: x}).values()
    expected = keras_on_torch().saving.load_model(str(cifar_h5), compile=False).predict(
        x, verbose=0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.shape == (4, 10)


def test_a_keras_archive_round_trips(tmp_path):
    model = _small_model()
    path = tmp_path / "small.keras"
    model.save(path)
    artifact = load(path)
    assert artifact.inputs[0].name == "pixels"
    assert artifact.inputs[0].shape == ("batch", 16, 16, 3)
    assert artifact.meta["params"] == sum(int(np.prod(w.shape)) for w in model.weights)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    (out,) = open_runner(artifact, threads=1).run({"pixels": x}).values()
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_a_lambda_layer_is_code_and_needs_trust(tmp_path):
    path = tmp_path / "lambda.keras"
    _small_model(lambda_layer=True).save(path)
    with pytest.raises(LeanifyError, match="--trust-code") as caught:
        load(path)
    assert Path(caught.value.path) == path
    artifact = load(path, trust_code=True)
    assert artifact.meta["code_layers"] == ["Lambda"]


@pytest.mark.parametrize("damage", ["truncated", "no-config", "not-keras", "weights-only"])
def test_damaged_keras_files_are_refused_with_the_file_named(damage, tmp_path, cifar_h5):
    good = tmp_path / "good.keras"
    _small_model().save(good)
    path = tmp_path / ("bad.h5" if damage in ("not-keras", "weights-only") else "bad.keras")
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[:200])
    elif damage == "no-config":
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
            for name in src.namelist():
                if name != "config.json":
                    dst.writestr(name, src.read(name))
    elif damage == "not-keras":
        path.write_bytes(b"this is not a model at all" * 10)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("dense/kernel", data=np.zeros((3, 3), np.float32))
    with pytest.raises(LeanifyError) as caught:
        load(path)
    assert Path(caught.value.path) == path
    assert caught.value.fix


def test_keras_runs_on_torch_even_when_the_environment_says_otherwise():
    # the backend is fixed at keras' first import: leanify sets it before that
    assert keras_on_torch().backend.backend() == "torch"
    assert os.environ.get("KERAS_BACKEND") == "torch"
