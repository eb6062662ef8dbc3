"""`leanify prune` / `leanify distill` and `optimize --allow-training`, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from leanify.errors import LeanifyError
from leanify.models.load import load

CLI = [sys.executable, "-m", "leanify.cli"]
SAMPLE = str(resources.files("leanify.data").joinpath("sample_texts.txt"))


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pruned(tiny_hf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pruned"
    proc = run("prune", str(tiny_hf), "--layers", "1", "--ffn-keep", "0.5", "--out", str(out),
               "--calibration-data", SAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert "saved" in proc.stdout
    return out


def test_prune_cli_writes_a_model_transformers_loads(pruned, tiny_hf):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(pruned / "model")
    assert model.config.num_hidden_layers == 1 and model.config.intermediate_size == 32
    record = json.loads((pruned / "leanify.json").read_text())
    assert record["tool"] == "leanify prune" and record["schema_version"] == 1
    assert record["output"]["params"] < record["input"]["params"]
    assert record["prune"]["kept_layers"] in ([0], [1])
    assert set(record["output"]["files"]) >= {"config.json", "model.safetensors",
                                              "tokenizer.json"}


def test_distill_cli_trains_the_pruned_student_and_resumes(pruned, tmp_path):
    out = tmp_path / "student"
    args = ("distill", str(pruned / "model"), "--data", SAMPLE, "--out", str(out),
            "--epochs", "0.3", "--batch-size", "32", "--quiet")
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "leanify.json").read_text())
    assert record["distill"]["steps"] > 0 and record["distill"]["stopped"] == "done"
    assert load(out / "model").format == "hf"

    again = run(*args)  # the folder is taken: a clear error, not an overwrite
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run(*args, "--resume")  # nothing left to train: reused
    assert resumed.returncode == 0, resumed.stderr


def test_distill_cli_prunes_first_when_asked(tiny_hf, tmp_path):
    out = tmp_path / "small"
    proc = run("distill", str(tiny_hf), "--layers", "1", "--data", SAMPLE, "--out", str(out),
               "--epochs", "0.2", "--batch-size", "32")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "leanify.json").read_text())
    assert [p.split("(")[0] for p in record["passes"]] == ["prune-transformer", "distill"]


def test_prune_and_distill_errors_are_clear(tiny_hf, tmp_path):
    inside = run("prune", str(tiny_hf), "--layers", "1", "--out", str(tiny_hf / "out"))
    assert inside.returncode == 2 and "never writes there" in inside.stderr
    no_teacher = run("distill", str(tiny_hf), "--data", SAMPLE, "--out", str(tmp_path / "x"))
    assert no_teacher.returncode == 2 and "no teacher" in no_teacher.stderr
    nothing = run("prune", str(tiny_hf), "--out", str(tmp_path / "y"))
    assert nothing.returncode == 2 and "removed no parameters" in nothing.stderr
    assert "Traceback" not in inside.stderr + no_teacher.stderr + nothing.stderr


def test_plan_adds_students_only_when_training_is_allowed(tiny_hf):
    from leanify.search.plan import Training, plan

    source = load(tiny_hf)
    assert not [c for c in plan(source) if c.name.startswith("student-")]
    candidates = plan(source, training=Training(data=(Path(SAMPLE),), budget_min=5))
    students = [c for c in candidates if c.name.startswith("student-")]
    assert students
    steps = [c.name for c in students[0].pipeline]
    assert steps[:3] == ["prune-transformer", "distill", "export-onnx"]
    assert students[0].pipeline[0].layers == 1  # half of the tiny model's 2 layers


def test_optimize_refuses_training_on_the_evaluation_data(tmp_path):
    from leanify.search.optimize import OptimizeSettings

    data = tmp_path / "eval.txt"
    data.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(LeanifyError, match="evaluation data"):
        OptimizeSettings(task="fidelity", data=data, out=tmp_path / "o",
                         transfer_data=(data,), training_budget_min=5).check()
    with pytest.raises(LeanifyError, match="needs text to distill"):
        OptimizeSettings(task="fidelity", data=data, out=tmp_path / "o",
                         training_budget_min=5).check()


@pytest.mark.acceptance
def test_optimize_with_training_measures_a_student(tiny_hf, tmp_path):
    out = tmp_path / "run"
    data = tmp_path / "eval.txt"
    data.write_text("\n".join(f"Sentence number {i} is about {w}." for i, w in
                              enumerate(["rain", "cats", "music", "stocks", "war"] * 8)),
                    encoding="utf-8")
    proc = run("optimize", str(tiny_hf), "--task", "fidelity", "--data", str(data),
               "--out", str(out), "--candidates", "student-onnx-int8-dynamic",
               "--allow-training", "--transfer-data", SAMPLE, "--training-budget-min", "0.2",
               "--max-drop", "100", "--rounds", "1", "--batch-size", "1", "--seq-len", "16",
               timeout=600)
    # --max-drop 100 and a one-layer int8 ONNX student of a model this small (PyTorch's
    # per-call overhead dominates the baseline): the student passes, is selected, exit 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "leanify.json").read_text())
    student = record["candidates"][0]
    assert student["name"] == "student-onnx-int8-dynamic"
    assert student["status"] == "done", student
    assert any(p.startswith("distill") for p in student["passes"])
    assert student["accepted"], student["reason"]
    assert record["selected"]["name"] == "student-onnx-int8-dynamic" and record["targets_met"]
