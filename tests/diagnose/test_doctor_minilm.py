"""leanify doctor on the real MiniLM and the bundled STS-B test set (the acceptance run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STSB = Path(__file__).resolve().parents[2] / "examples" / "data" / "stsb" / "sts-test.csv"


@pytest.fixture(scope="module")
def minilm_doctor(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("doctor_minilm")
    proc = subprocess.run(
        [sys.executable, "-m", "leanify.cli", "doctor", "minilm", "--data", str(STSB),
         "--json", str(tmp / "doctor.json"), "--html", str(tmp / "doctor.html")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    return proc, tmp


@pytest.mark.slow
@pytest.mark.acceptance
def test_minilm_record_within_four_minutes(minilm_doctor):
    proc, tmp = minilm_doctor
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp / "doctor.json").read_text())
    assert rec["wall_s"] < 240, rec["sections"]
    assert {k for k, v in rec["sections"].items() if v["status"] != "done"} == set()
    inv = rec["inventory"]
    assert 22_000_000 < inv["params"] < 23_000_000
    assert inv["flops"]["per_block"]["encoder.layer.5"] > 0 and len(inv["largest_layers"]) == 10
    assert len(rec["latency"]["curve"]["points"]) >= 4
    assert rec["latency"]["runtimes"]["models"][1]["runtime"] == "onnxruntime"
    assert any(o["name"] == "aten::addmm" for o in rec["profile"]["operators"][:3])
    spectral = rec["spectral"]["layers"]
    assert len(spectral) == 37 and sum(r["alpha"] is not None for r in spectral) >= 36
    assert 2.0 < rec["spectral"]["summary"]["mean_alpha"] < 6.0  # a trained model
    sens = rec["sensitivity"]
    assert [r["layer"] for r in sens["layers"]] == [f"encoder.layer.{i}" for i in range(6)]
    assert sens["all_layers"]["cosine"] > 0.95
    stats = rec["context"]["stats"]
    assert stats["texts"] == 2 * 1379 and stats["p50"] < stats["p95"] <= stats["max"] < 128
    assert rec["redundancy"]["activations"]["data"] == "your data"
    v = rec["verdict"]
    assert v["recommendations"] and v["claim"]["command"].startswith(
        "leanify optimize minilm --task embedding-similarity --data ")
    assert "recommended command" in proc.stdout


@pytest.mark.slow
@pytest.mark.acceptance  # the main suite renders the Keras model's doctor report instead
def test_minilm_report_renders_in_headless_chromium(minilm_doctor, browser_screenshot):
    _, tmp = minilm_doctor
    png, console, proc = browser_screenshot(tmp / "doctor.html", "doctor-minilm", height=6000)
    assert png.exists() and png.stat().st_size > 50_000, proc.stderr[-2000:]
    assert console == [], console
