"""leanify bench: isolated processes, interleaved rounds, the documented record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from leanify import load
from leanify.errors import LeanifyError
from leanify.measure.bench import BenchSettings, bench

QUICK = dict(rounds=2, warmup_s=0.05, min_iters=3, min_time_s=0.05)


@pytest.fixture(scope="module")
def two_models(tiny_hf, tiny_onnx):
    ticks: list[str] = []
    record = bench([tiny_hf, tiny_onnx],
                   BenchSettings(batch_sizes=[1, 4], seq_lens=[8, 16], **QUICK),
                   progress=lambda done, total, what: ticks.append(what))
    return record, ticks


def test_record_has_documented_fields(two_models):
    record, _ = two_models
    assert record["schema_version"] == 1
    cpu = record["machine"]["cpu"]
    assert cpu["model"] and cpu["usable_cores"] >= 1 and isinstance(cpu["isa_flags"], list)
    assert record["machine"]["versions"]["torch"].startswith("2.13")
    assert record["machine"]["versions"]["onnxruntime"]
    assert len(record["results"]) == 2 * 4
    for row in record["results"]:
        for key in ("model", "batch_size", "seq_len", "throughput_per_s", "peak_rss_mb",
                    "size_mb", "params"):
            assert key in row, key
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        lo, hi = row["latency_p50_ci95_ms"]
        assert lo <= lat["p50"] <= hi
        assert row["samples"] >= 2 * 3
        assert row["throughput_per_s"] == pytest.approx(row["batch_size"] * 1000 / lat["p50"],
                                                        rel=1e-3)
        assert row["input_shapes"]["input_ids"] == [row["batch_size"], row["seq_len"]]
        assert row["peak_rss_mb"] > 0 and row["size_mb"] > 0 and row["params"] > 0


def test_each_model_in_its_own_process(two_models):
    record, _ = two_models
    pids = [m["pid"] for m in record["models"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    runtimes = {m["name"]: m["runtime"] for m in record["models"]}
    assert set(runtimes.values()) == {"torch-eager", "onnxruntime"}


def test_rounds_interleave_models(two_models):
    record, ticks = two_models
    names = [m["name"] for m in record["models"]]
    timed = [t for t in ticks if t.startswith("round")]
    order = [next(n for n in names if f"· {n} ·" in t) for t in timed]
    # A B A B ...: the models alternate at every point of every round.
    assert order == names * (len(order) // 2)
    assert sum(t.startswith("round 1/") for t in timed) == sum(t.startswith("round 2/")
                                                               for t in timed)


def test_ratios_against_the_first_model(two_models):
    record, _ = two_models
    base = record["models"][0]["name"]
    for row in record["results"]:
        if row["model"] == base:
            assert "vs_baseline" not in row
            continue
        vs = row["vs_baseline"]
        base_row = next(r for r in record["results"] if r["model"] == base
                        and (r["batch_size"], r["seq_len"]) == (row["batch_size"], row["seq_len"]))
        assert vs["baseline"] == base
        # paired by round: the geometric mean of the per-round ratios of medians
        per_round = [b / c for b, c in zip(base_row["round_p50_ms"], row["round_p50_ms"],
                                           strict=True)]
        assert vs["speedup_rounds"] == pytest.approx(per_round, rel=1e-3)
        assert vs["speedup"] == pytest.approx(
            (per_round[0] * per_round[1]) ** 0.5, rel=1e-3)
        assert vs["speedup_ci_method"] == "paired-rounds-t"
        assert vs["speedup_ci95"][0] <= vs["speedup"] <= vs["speedup_ci95"][1]


def test_onnx_without_tokenizer_borrows_the_baselines(tmp_path, tiny_hf, tiny_onnx):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(tiny_onnx.read_bytes())
    record = bench([tiny_hf, lone], BenchSettings(batch_sizes=[1], seq_lens=[8], rounds=1,
                                                  warmup_s=0, min_iters=1, min_time_s=0))
    onnx_model = record["models"][1]
    assert onnx_model["input_source"] == "tokenizer"
    assert onnx_model["tokenizer_from"] == record["models"][0]["name"]


def test_in_memory_module_is_measured_in_a_child(tiny_cnn):
    import torch

    artifact = load(tiny_cnn, example_inputs=(torch.randn(2, 1, 8, 8),))
    record = bench([artifact], BenchSettings(batch_sizes=[1, 8], seq_lens=[1], rounds=1,
                                             warmup_s=0, min_iters=2, min_time_s=0))
    assert record["models"][0]["measured_as"] == "pt2 (torch.export)"
    assert record["models"][0]["pid"] != os.getpid()
    shapes = [r["input_shapes"]["input"] for r in record["results"]]
    assert sorted(shapes) == [[1, 1, 8, 8], [8, 1, 8, 8]]


def test_bad_settings_are_refused_before_work(tiny_onnx):
    with pytest.raises(LeanifyError, match="batch sizes"):
        bench([tiny_onnx], BenchSettings(batch_sizes=[0]))
    with pytest.raises(LeanifyError, match="no model"):
        bench([], BenchSettings())


def test_error_in_a_child_becomes_a_clear_error(tmp_path, tiny_pt2):
    import numpy as np

    sample = tmp_path / "wrong.npz"
    np.savez(sample, not_an_input=np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(LeanifyError, match="not_an_input"):
        bench([tiny_pt2], BenchSettings(batch_sizes=[1], seq_lens=[4], rounds=1,
                                        sample=str(sample)))


def test_cli_bench_real_minilm_against_its_onnx_export(tmp_path, minilm_eager):
    """The acceptance scenario, shortened: real MiniLM vs its ONNX export, with a ratio."""
    import copy

    import torch

    onnx_path = tmp_path / "minilm.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(1000, 2000, (1, 16))
    torch.onnx.export(copy.deepcopy(minilm_eager),
                      (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(onnx_path),
                      dynamo=False, input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "b", 1: "s"} for n in names}, opset_version=17)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "leanify.cli", "bench", "minilm", str(onnx_path),
         "--batch-size", "1,2", "--seq-len", "32", "--rounds", "2", "--min-time", "0.2",
         "--warmup", "0.1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert [m["name"] for m in record["models"]] == ["minilm", "minilm.onnx"]
    assert record["models"][0]["params"] == pytest.approx(22.7e6, rel=0.01)
    ratios = [r["vs_baseline"]["speedup"] for r in record["results"] if "vs_baseline" in r]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert "speed-up vs minilm" in proc.stdout
    assert "baseline" in proc.stdout
