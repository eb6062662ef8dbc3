"""leanify doctor end to end on small real models: a Hugging Face folder, an ONNX file and a
TorchScript file built directly with torch (not by leanify), and a model whose latency is a
fixed cost. One thread, so that the verdicts do not hinge on how busy the machine is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leanify.diagnose.doctor import DoctorSettings, doctor

STSB = Path(__file__).resolve().parents[2] / "examples" / "data" / "stsb" / "sts-test.csv"
CLI = [sys.executable, "-m", "leanify.cli"]


def stsb_subset(folder: Path, rows: int = 40) -> Path:
    path = folder / "sts-subset.csv"
    path.write_text("\n".join(STSB.read_text(encoding="utf-8").splitlines()[:rows]) + "\n",
                    encoding="utf-8")
    return path


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def overhead_onnx(path: Path, size: int = 384, depth: int = 6) -> Path:
    """An ONNX graph whose cost is a chain of big MatMuls that do not depend on the input's
    size (tied to the input by `sum(x) * 0`, so nothing folds them away) and a tiny
    input-dependent part (`x * 2`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(
        (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32), f"w{i}")
        for i in range(depth)]
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "zero"], ["z"]),
             helper.make_node("Add", ["w0", "z"], ["h0"])]
    for i in range(1, depth):
        nodes.append(helper.make_node("MatMul", [f"h{i - 1}", f"w{i}"], [f"h{i}"],
                                      name=f"big_matmul_{i}"))
    nodes += [helper.make_node("ReduceSum", [f"h{depth - 1}"], ["t"], keepdims=0),
              helper.make_node("Mul", ["t", "zero"], ["tz"]),
              helper.make_node("Mul", ["x", "two"], ["x2"]),
              helper.make_node("Add", ["x2", "tz"], ["y"])]
    graph = helper.make_graph(
        nodes, "fixed_cost",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_hf):
    tmp = tmp_path_factory.mktemp("doctor_hf")
    data = stsb_subset(tmp)
    proc = cli("doctor", str(tiny_hf), "--data", str(data), "--threads", "1",
               "--latency-budget-ms", "500", "--json", str(tmp / "doctor.json"),
               "--html", str(tmp / "doctor.html"), "--trace", str(tmp / "trace.json"))
    return proc, tmp, data


def test_hf_record_holds_every_part(hf_run):
    proc, tmp, _ = hf_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp / "doctor.json").read_text())
    assert rec["schema_version"] == 1 and rec["tool"] == "leanify doctor"
    failed = {k: v for k, v in rec["sections"].items() if v["status"] != "done"}
    assert not failed, failed
    inv = rec["inventory"]
    assert inv["params"] > 900_000 and inv["dtypes"] == {"float32": inv["params"]}
    # 2 layers of 4 linear maps 32x32 and 2 of 32x64 (+ pooler) on 16 tokens: exact count
    assert inv["flops"]["flops"] > 2 * 16 * (2 * (4 * 32 * 32 + 2 * 32 * 64))
    assert inv["flops"]["per_block"]["encoder.layer.0"] == inv["flops"]["per_block"][
        "encoder.layer.1"]
    assert inv["largest_layers"][0]["params"] == 64 * 32
    assert inv["outputs"][0]["name"] == "last_hidden_state"
    curve = rec["latency"]["curve"]
    assert {p["batch_size"] for p in curve["points"]} == {1, 8}
    assert len({p["seq_len"] for p in curve["points"]}) >= 2
    assert rec["latency"]["overhead"]["fitted"]
    assert rec["latency"]["runtimes"]["models"][1]["runtime"] == "onnxruntime"
    assert rec["latency"]["threads"]["measured"] is False  # one thread asked for
    ops = rec["profile"]["operators"]
    assert ops and ops[0]["name"].startswith("aten::") and 0 < ops[0]["share"] <= 1
    assert [r["name"] for r in rec["profile"]["layers"] if "layer" in r["name"]] == [
        "encoder.layer.0", "encoder.layer.1"]
    assert len(rec["spectral"]["layers"]) >= 12
    act = rec["redundancy"]["activations"]
    assert act["data"] == "your data" and act["tokens"] > 100
    assert len(act["blocks"]) == 2 and len(act["attention_heads"]) == 2
    sens = rec["sensitivity"]
    assert [r["layer"] for r in sens["layers"]][:2] == ["encoder.layer.0", "encoder.layer.1"]
    assert 0.9 < sens["all_layers"]["cosine"] <= 1.0 and sens["all_layers"]["relative_error"] > 0
    ctx = rec["context"]
    assert ctx["stats"]["texts"] == 80 and ctx["stats"]["p50"] <= ctx["stats"]["p95"]
    assert ctx["limits"]["position_table"] == 128
    assert set(ctx["padding"]["strategies"]) >= {"pad_to_max_length", "length_bucketing"}
    v = rec["verdict"]
    assert v["bound"] in ("model", "system") and v["recommendations"]
    assert v["claim"]["targets"]["--max-latency-ms"] == 500.0


def test_trace_opens_as_chrome_trace(hf_run):
    _, tmp, _ = hf_run
    trace = json.loads((tmp / "trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("layer::encoder.layer.0") for n in names)
    assert any(e.get("ph") == "X" and "dur" in e for e in events)


def test_terminal_and_html_reports(hf_run):
    proc, tmp, _ = hf_run
    assert "recommended command: leanify optimize" in proc.stdout
    html = (tmp / "doctor.html").read_text()
    assert "<script" not in html and html.count("<svg") >= 4
    for title in ("Latency", "Where the time goes", "Dead weight", "Quantization sensitivity",
                  "Context length", "Recommended command"):
        assert title in html


@pytest.mark.slow  # every optimize candidate on the tiny model: minutes on 2 busy cores
@pytest.mark.acceptance
def test_recommended_command_delivers_its_claim(hf_run, tmp_path):
    """Run the command the doctor recommends, exactly as printed, and check its claim.

    The budget (500 ms) is far above what ONNX Runtime needs for this tiny model (well under
    a millisecond), so the doctor must claim "meets" from its measurement, and optimize must
    then select a model that meets the target (exit 0)."""
    _, tmp, _ = hf_run
    claim = json.loads((tmp / "doctor.json").read_text())["verdict"]["claim"]
    assert claim["runnable"] and claim["expected"] == "meets", claim
    assert claim["argv"][:2] == ["leanify", "optimize"]
    proc = cli(*claim["argv"][1:], "--quiet", cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(next(tmp_path.glob("leanify-out/*/leanify.json")).read_text())
    assert record["targets_met"] and record["selected"]
    assert record["settings"]["targets"]["max_latency_ms"] == claim["targets"][
        "--max-latency-ms"]
    assert record["settings"]["seq_lens"] == [claim["targets"]["--seq-len"]]


def test_onnx_file_not_made_by_leanify(tiny_onnx, tmp_path):
    rec = doctor(tiny_onnx, DoctorSettings(threads=1, trace=tmp_path / "ort.json"))
    assert rec["inventory"]["format"] == "onnx"
    assert rec["profile"]["profiler"] == "onnxruntime"
    assert rec["profile"]["operators"][0]["name"] in {"MatMul", "Add", "Gather", "Softmax",
                                                      "FusedMatMul", "LayerNormalization",
                                                      "Attention", "Gemm", "Transpose"} or \
        rec["profile"]["operators"]
    assert rec["inventory"]["flops"]["flops"] > 0
    assert "encoder.layer.1" in rec["inventory"]["flops"]["per_block"]
    assert [r["layer"] for r in rec["sensitivity"]["layers"]][:2] == ["encoder.layer.0",
                                                                       "encoder.layer.1"]
    assert rec["latency"]["runtimes"] is None and "ONNX Runtime" in rec["latency"][
        "runtimes_note"]
    assert "effective_rank" in rec["redundancy"] and "activations" not in rec["redundancy"]
    assert json.loads((tmp_path / "ort.json").read_text())
    assert rec["verdict"]["claim"]["command"].startswith("leanify optimize ")


def test_an_image_model_reads_your_images(tmp_path):
    """--data DIR of images: the resolution they have against the model's input, int8
    sensitivity on them, the image task in the recommended command."""
    from image_data import colour_cnn, colour_images

    model = colour_cnn(tmp_path / "colour.onnx", size=128)
    data = colour_images(tmp_path / "photos", 3, seed=5, size=48)  # 48-95 px a side
    rec = doctor(model, DoctorSettings(data=data, threads=1))
    images = rec["images"]
    assert images["images"] == 9 and images["model_input"] == {"height": 128, "width": 128}
    assert images["upscaled_share"] == 1.0 and images["smaller"]
    assert rec["sensitivity"]["data"] == "your images"
    assert rec["settings"]["task"] == "image-classification"  # a folder per class
    assert f"--task image-classification --data {data}" in rec["verdict"]["command"]
    assert any(r["action"] == "resolution" for r in rec["verdict"]["recommendations"])
    conv = rec["inventory"]["convolutions"]
    assert conv["pairs"] == 0 and conv["macs_per_image"] == (3 * 3 + 3 * 9) * 128 * 128 + 9


def test_a_pt2_cnn_is_exported_and_compared_in_onnx_runtime(tmp_path):
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                 torch.nn.Linear(16, 4)).eval()
    program = torch.export.export(module, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    rec = doctor(tmp_path / "cnn.pt2", DoctorSettings(threads=1))
    assert rec["sections"]["export"]["status"] == "done", rec["sections"]["export"]
    assert rec["latency"]["runtimes"]["models"][1]["runtime"] == "onnxruntime"
    conv = rec["inventory"]["convolutions"]  # the export's view: one prunable pair
    assert conv["pairs"] == 1 and conv["pair_share"] > 0.9


@pytest.mark.acceptance  # TorchScript's doctor also runs on silero (tests/test_array_models.py)
def test_torchscript_file_not_made_by_leanify(tiny_torchscript):
    rec = doctor(tiny_torchscript, DoctorSettings(threads=1, trust_code=True))
    assert rec["inventory"]["format"] == "torchscript"
    assert rec["profile"]["profiler"] == "torch.profiler" and rec["profile"]["operators"]
    assert rec["inventory"]["flops"]["flops"] > 0
    assert rec["sections"]["redundancy"]["status"] == "failed"  # nothing to hook: said so
    assert rec["redundancy"]["effective_rank"]["layers"]
    assert "sensitivity" not in rec and rec["latency"]["curve"]["points"]
    assert rec["verdict"]["command"].startswith("leanify optimize ")  # freeze candidates
    assert any(r["action"] == "optimize" for r in rec["verdict"]["recommendations"])


def test_fixed_cost_model_is_called_system_bound(tmp_path):
    model = overhead_onnx(tmp_path / "fixed.onnx")
    rec = doctor(model, DoctorSettings(threads=1, latency_budget_ms=0.5))
    fit = rec["latency"]["overhead"]
    assert fit["overhead_bound"] and fit["share_at_typical"] > 0.5, fit
    v = rec["verdict"]
    assert v["bound"] == "system" and "fixed cost" in v["summary"]
    assert v["recommendations"][0]["action"] == "reduce-overhead"
    assert v["claim"]["expected"] == "no"  # the fixed cost alone is over the budget
    assert rec["inventory"]["flops"]["flops"] >= 5 * 2 * 384**3


def test_bad_input_exits_2_without_traceback(tmp_path, tiny_hf):
    missing = cli("doctor", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    inside = cli("doctor", str(tiny_hf), "--json", str(tiny_hf / "doctor.json"))
    assert inside.returncode == 2 and "never writes there" in inside.stderr
    assert not (tiny_hf / "doctor.json").exists()
    task = cli("doctor", str(tiny_hf), "--task", "nonsense")
    assert task.returncode == 2 and "unknown task" in task.stderr


def test_spectral_without_weightwatcher_says_how_to_install(monkeypatch):
    from leanify.diagnose import spectral
    from leanify.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "weightwatcher", None)
    with pytest.raises(MissingDependencyError, match=r"leanify\[diagnose\]"):
        spectral.analyze({"w": np.eye(4, dtype=np.float32)})
