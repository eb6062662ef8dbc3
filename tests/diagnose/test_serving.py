"""doctor --rate: the model served at the user's rate, one at a time and batched."""

import json
import subprocess
import sys

from leanify.diagnose.verdict import _serving_reasons, _serving_recommendation


def _mode(p50, p95, refused=0.0, http=1.0, model=3.0, batch=1.0):
    return {"p50_ms": p50, "p95_ms": p95, "rejected_rate": refused, "error_rate": 0.0,
            "throughput_rps": 40.0, "batch_p50": batch, "queue_p50_ms": 1.0,
            "model_p50_ms": model, "http_and_client_p50_ms": http}


def test_a_queue_bound_rate_is_a_system_problem_and_batching_is_recommended():
    served = {"rate_rps": 40, "per_request": _mode(90, 400, refused=0.05),
              "dynamic_batching": _mode(12, 30, batch=4.0), "p95_gain": 400 / 30,
              "server_overhead_share": 1 / 12}
    reasons = _serving_reasons(served, budget_ms=100)
    assert len(reasons) == 1 and "one request at a time has a p95 of 400 ms" in reasons[0]
    (rec,) = _serving_recommendation(served, "model.onnx")
    assert rec["action"] == "serve" and rec["command"] == "leanify serve model.onnx"
    assert rec["gain"]["kind"] == "measured" and rec["gain"]["speedup"] > 13


def test_a_fast_model_behind_a_slow_server_is_called_server_bound():
    served = {"rate_rps": 10, "per_request": _mode(8, 9), "dynamic_batching": _mode(8, 9,
                                                                                  http=6.0),
              "p95_gain": 1.0, "server_overhead_share": 0.75}
    reasons = _serving_reasons(served, budget_ms=100)
    assert reasons == ["HTTP and the client take 75% of the median round trip at 10 "
                       "requests/s; the model 3.0 ms"]
    assert _serving_recommendation(served, "m") == []  # batching does not pay here


def test_doctor_rate_measures_both_modes_and_reports_them(text_onnx, tmp_path):
    out, html = tmp_path / "doctor.json", tmp_path / "doctor.html"
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "doctor", str(text_onnx),
                           "--rate", "30", "--json", str(out), "--html", str(html), "-q"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(out.read_text())["serving"]
    assert served["rate_rps"] == 30
    for mode in ("per_request", "dynamic_batching"):
        m = served[mode]
        assert m["sent"] > 50 and m["answered"] + round(m["rejected_rate"] * m["sent"]) \
            + round(m["error_rate"] * m["sent"]) == m["sent"]
        assert m["p95_ms"] >= m["p50_ms"] > 0 and m["model_p50_ms"] > 0
    assert served["per_request"]["batch_p50"] == 1
    assert "Serving at your rate" in html.read_text()


def test_a_chat_server_is_recommended_for_continuous_batching():
    served = {"rate_rps": 2, "kind": "chat", "per_request": _mode(9000, 16000, batch=None),
              "dynamic_batching": _mode(4000, 6000, batch=None), "p95_gain": 16000 / 6000,
              "server_overhead_share": None}
    (rec,) = _serving_recommendation(served, "out/llm")
    assert rec["title"] == "Serve with continuous batching"
    assert "decoding concurrent chats together had 6000 ms" in rec["why"]
    assert _serving_reasons(served, budget_ms=10_000)[0].startswith(
        "at 2 requests/s, one request at a time has a p95 of 16000 ms")
