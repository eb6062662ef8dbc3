"""The task registry and the fidelity task on arrays (no model needed for most of it)."""

from __future__ import annotations

import numpy as np
import pytest

from leanify import tasks
from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.tasks.fidelity import _agreement, read_arrays


def test_every_task_module_registers_one_task():
    assert tasks.names() == ("embedding-similarity", "text-classification", "fidelity",
                             "image-classification", "image-fidelity", "perplexity")
    for task in tasks.all_tasks().values():
        assert task.metric and task.reads and task.summary
    with pytest.raises(LeanifyError, match="unknown task 'bleu'"):
        tasks.get("bleu")


def test_arrays_read_from_a_folder_of_npz(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=np.full((1, 4), i, np.float32), sr=np.array(16000))
    (tmp_path / "notes.txt").write_text("not data")
    data = read_dataset(tmp_path, "fidelity")
    assert len(data) == 3 and data.texts is None
    assert [float(r["x"][0, 0]) for r in data.arrays] == [0.0, 1.0, 2.0]
    assert data.arrays[0]["sr"].shape == ()  # a scalar stays a scalar
    assert len(data.subset([2, 0]).arrays) == 2
    single = read_dataset(tmp_path / "1.npz", "fidelity")
    assert len(single) == 1


def test_array_rows_must_agree_and_never_unpickle(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    np.savez(tmp_path / "b.npz", y=np.zeros(3))
    with pytest.raises(LeanifyError, match="the first file holds x"):
        read_arrays(tmp_path, "fidelity")
    bad = tmp_path / "bad" / "c.npz"
    bad.parent.mkdir()
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(LeanifyError, match="holds Python objects"):
        read_arrays(bad.parent, "fidelity")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeanifyError, match=r"holds no \.npz files"):
        read_arrays(tmp_path / "empty", "fidelity")


def test_agreement_is_relative_l2_for_floats_and_exact_for_ints():
    ref = np.array([1.0, 2.0, 2.0])
    assert _agreement(ref, ref)["fidelity"] == 100.0
    near = _agreement(ref, ref * 1.01)
    assert near["fidelity"] == pytest.approx(99.0) and near["rel_l2"] == pytest.approx(0.01)
    assert _agreement(ref, -ref)["fidelity"] == 0.0  # never below zero
    assert np.isnan(_agreement(ref, np.array([1.0, np.nan, 2.0]))["fidelity"])
    assert _agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))["fidelity"] == 75.0
    assert _agreement(np.zeros(3), np.zeros(3))["fidelity"] == 100.0
