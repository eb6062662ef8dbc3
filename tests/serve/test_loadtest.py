"""`leanify loadtest`: the statistics on scripted outcomes, the open loop against a slow
server, loopback only, and a real run against `leanify serve` with its JSON and HTML."""

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

from leanify.errors import LeanifyError
from leanify.serve.loadtest import LoadSettings, Outcome, loopback_url, run_loadtest, summarize


def test_summary_counts_answers_rejections_and_errors_and_judges_the_budget():
    outcomes = ([Outcome(200, v / 1000, {"queue": 1.0, "model": 4.0, "batch": 2.0})
                 for v in range(1, 101)]
                + [Outcome(429, 0.001, {}), Outcome(0, 10.0, {}, "ReadTimeout")])
    p = summarize(outcomes, rate=10, duration_s=10, wall_s=10.5, budget_ms=96)
    assert (p["sent"], p["answered"], p["rejected"], p["errors"]) == (102, 100, 1, 1)
    assert p["p50_ms"] == pytest.approx(50.5) and p["p95_ms"] == pytest.approx(95.05)
    assert p["error_kinds"] == ["ReadTimeout"]
    assert p["server"] == {"queue_p50_ms": 1.0, "model_p50_ms": 4.0, "batch_p50": 2.0,
                           "http_and_client_p50_ms": 45.5}
    assert p["holds_budget"] is False  # p95 fits, but 2% were refused or lost
    clean = summarize(outcomes[:100], rate=10, duration_s=10, wall_s=10, budget_ms=96)
    assert clean["holds_budget"] is True
    assert summarize(outcomes[:100], 10, 10, 10, budget_ms=90)["holds_budget"] is False


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000/v1/embeddings",
                                 "http://example.com/v1/embeddings", "ftp://127.0.0.1/x"])
def test_only_loopback_servers_are_load_tested(url):
    with pytest.raises(LeanifyError, match="not a loopback URL"):
        loopback_url(url)
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "loadtest", url, "--data",
                           "examples/data/stsb/sts-test.csv"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "loopback" in proc.stderr


def _slow_server():
    import socket

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/slow")
    async def slow():
        await asyncio.sleep(0.3)
        return {"ok": True}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, port


def test_the_load_is_open_loop_a_slow_server_does_not_slow_it_down():
    server, thread, port = _slow_server()
    try:
        settings = LoadSettings(url=f"http://127.0.0.1:{port}/slow", rates=(40.0,),
                                duration_s=2.0, timeout_s=10)
        record = run_loadtest(settings, ["x"])
    finally:
        server.should_exit = True
        thread.join(10)
    point = record["points"][0]
    # 40/s for 2 s is about 80 arrivals whatever the server does; a closed loop of the same
    # concurrency would have sent far fewer to a server taking 0.3 s each
    assert 55 <= point["sent"] <= 110 and point["answered"] == point["sent"]
    assert point["p50_ms"] >= 300


def test_a_ramp_against_leanify_serve_writes_json_and_html(server, tmp_path):
    out_json, out_html = tmp_path / "load.json", tmp_path / "load.html"
    proc = subprocess.run(
        [sys.executable, "-m", "leanify.cli", "loadtest", f"{server.url}/v1/embeddings",
         "--data", "examples/data/stsb/sts-test.csv", "--text-col", "sentence1",
         "--rates", "10,30", "--duration", "1.5", "--p95-budget-ms", "5000",
         "--json", str(out_json), "--html", str(out_html)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out_json.read_text())
    assert [p["rate_rps"] for p in record["points"]] == [10.0, 30.0]
    for p in record["points"]:
        assert p["sent"] > 0 and p["answered"] == p["sent"] and p["errors"] == 0
        assert p["p95_ms"] >= p["p50_ms"] > 0
        assert p["server"]["model_p50_ms"] > 0 and p["server"]["batch_p50"] >= 1
    assert record["best_rate_rps"] == 30.0 and "30 req/s" in record["verdict"]
    html = out_html.read_text()
    assert "<svg" in html and "Latency against load" in html and "budget 5000 ms" in html
