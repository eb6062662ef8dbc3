"""Pieces of the doctor that need no model: fits, estimates, names, the verdict's claims."""

from __future__ import annotations

import numpy as np
import pytest

from leanify.diagnose import context, latency, redundancy, verdict
from leanify.diagnose.common import layer_key


def points(fn, batches=(1, 8), seqs=(16, 64, 128)):
    return [{"batch_size": b, "seq_len": s, "p50_ms": fn(b * s),
             "throughput_per_s": b * 1000 / fn(b * s)} for b in batches for s in seqs]


@pytest.mark.parametrize("name, key", [
    ("/inner/encoder/layer.3/attention/self/query/MatMul", "encoder.layer.3"),
    ("encoder.layer.11.output.dense", "encoder.layer.11"),
    ("transformer.h.0.mlp.c_fc", "transformer.h.0"),
    ("model.layers.2.self_attn.q_proj", "layers.2"),
    ("/0/Conv", None),
    ("pooler.dense", None),
])
def test_layer_key(name, key):
    assert layer_key(name) == key


def test_fit_flags_a_fixed_cost_and_not_a_proportional_one():
    flat = latency.fit_overhead(points(lambda w: 20.0 + 0.0001 * w), (1, 128), True)
    assert flat["overhead_bound"] and flat["share_at_typical"] > 0.9
    assert flat["intercept_ms"] == pytest.approx(20.0, rel=0.01)
    linear = latency.fit_overhead(points(lambda w: 0.5 + 0.2 * w), (1, 128), True)
    assert not linear["overhead_bound"] and linear["share_at_typical"] < 0.05
    assert linear["per_unit_ms"] == pytest.approx(0.2, rel=0.01)
    one = latency.fit_overhead(points(lambda w: 5.0, batches=(1,), seqs=(16,)), (1, 16), True)
    assert one["fitted"] is False


def test_padding_costs_follow_the_tokens():
    lengths = np.array(([10] * 24 + [200]) * 4)  # long texts spread through the file
    costs = context.padding_costs(lengths, 8, 256, lambda b, s: 1.0 + 0.01 * b * s)
    strat = costs["strategies"]
    assert strat["pad_to_max_length"]["saving"] == 0.0
    assert strat["length_bucketing"]["saving"] > strat["dynamic_padding"]["saving"] > 0.3
    assert strat["truncate_at_p95"]["truncated_texts"] == 4


def test_length_stats_and_rounding():
    stats = context.length_stats(np.arange(1, 101), 64)
    assert (stats["p50"], stats["max"], stats["over_max_length"]) == (50, 100, 36)
    assert sum(stats["histogram"]["counts"]) == 100
    assert context.round_up(9) == 16 and context.round_up(16) == 16 and context.round_up(1) == 8


def test_effective_rank_finds_a_low_rank_matrix():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((64, 4)) @ rng.standard_normal((4, 64))
    full = rng.standard_normal((64, 64))
    out = redundancy.effective_rank({"low": low, "full": full})
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["low"]["rank90"] <= 4 and rows["low"]["low_rank_candidate"]
    assert rows["full"]["rank90"] > 32 and not rows["full"]["low_rank_candidate"]
    assert out["low_rank_candidates"] == ["low"]


def record(p50: float, ort_p50: float | None, intercept: float = 0.0, fmt: str = "hf",
           budget: float | None = None) -> dict:
    curve = {"points": [{"batch_size": 1, "seq_len": 32, "p50_ms": p50,
                         "throughput_per_s": 1000 / p50}], "peak_rss_mb": 300.0}
    runtimes = None
    if ort_p50 is not None:
        runtimes = {"point": {"batch_size": 1, "seq_len": 32}, "models": [
            {"p50_ms": p50, "speedup": 1.0, "speedup_ci95": [1, 1], "peak_rss_mb": 300.0},
            {"p50_ms": ort_p50, "speedup": p50 / ort_p50,
             "speedup_ci95": [p50 / ort_p50 * 0.9, p50 / ort_p50 * 1.1], "peak_rss_mb": 90.0}]}
    return {
        "settings": {"typical": {"batch_size": 1, "seq_len": 32}, "sequence": True,
                     "latency_budget_ms": budget, "memory_budget_mb": None},
        "machine": {"memory_total_mb": 8000.0},
        "inventory": {"format": fmt, "flops": {"per_block": {}}},
        "latency": {"curve": curve, "runtimes": runtimes,
                    "overhead": {"fitted": True, "intercept_ms": intercept,
                                 "share_at_typical": intercept / p50,
                                 "overhead_bound": intercept / p50 > 0.5,
                                 "latency_growth": 1.1, "work_growth": 32}},
    }


def test_claim_meets_only_from_a_measurement():
    v = verdict.decide(record(30.0, 10.0, budget=20.0), "minilm", "data.csv",
                       "embedding-similarity")
    assert v["needs_optimizing"] and v["bound"] == "model"
    claim = v["claim"]
    assert claim["expected"] == "meets" and "measured" in claim["basis"]
    assert claim["argv"][:3] == ["leanify", "optimize", "minilm"]
    assert claim["targets"]["--max-latency-ms"] == 20.0 and "--seq-len 32" in claim["command"]
    assert v["command"] == claim["command"]
    assert any(r["action"] == "optimize" and r["command"] == claim["command"]
               for r in v["recommendations"])


def test_claim_says_no_when_the_fixed_cost_exceeds_the_budget():
    v = verdict.decide(record(30.0, None, intercept=28.0, fmt="onnx", budget=20.0), "m.onnx",
                       None, None)
    assert v["bound"] == "system" and v["system_reasons"]
    assert v["claim"]["expected"] == "no" and "fixed cost" in v["claim"]["basis"]
    assert v["claim"]["runnable"] is False and "YOUR_DATA.csv" in v["claim"]["command"]
    assert v["recommendations"][0]["action"] == "reduce-overhead"


def test_estimates_say_likely_or_no_never_meets():
    likely = verdict.decide(record(30.0, None, fmt="onnx", budget=25.0), "m.onnx", "d.csv",
                            "fidelity")["claim"]
    assert likely["expected"] == "likely"
    too_far = verdict.decide(record(300.0, 250.0, budget=20.0), "m", "d.csv",
                             "fidelity")["claim"]
    assert too_far["expected"] == "no" and "NOT" in too_far["statement"]


def test_torchscript_gets_the_freeze_command_and_pt2_the_export_advice():
    v = verdict.decide(record(30.0, None, fmt="torchscript"), "m.pt", None, None)
    assert v["command"].startswith("leanify optimize m.pt --task fidelity")
    assert v["claim"]["expected"] == "meets" and "already runs 30.00 ms" in v["claim"]["basis"]
    assert v["budgets"]["latency_ms"] == 2000.0 and v["budgets"]["memory_mb"] == 6400
    assert not v["needs_optimizing"]
    freeze = next(r for r in v["recommendations"] if r["action"] == "optimize")
    assert "freeze" in freeze["title"].lower() and freeze["command"] == v["command"]
    slow = verdict.decide(record(3000.0, None, fmt="torchscript"), "m.pt", None, None)
    assert slow["claim"]["expected"] == "uncertain"  # no int8 estimate for TorchScript
    pt2 = verdict.decide(record(30.0, None, fmt="pt2"), "m.pt2", None, None)
    assert pt2["claim"] is None and pt2["command"] is None
    assert any(r["action"] == "export" for r in pt2["recommendations"])


def test_a_cnn_with_prunable_pairs_gets_the_pruning_recommendation():
    with_pairs = record(30.0, None, fmt="onnx")
    with_pairs["settings"]["image_input"] = True
    with_pairs["inventory"]["convolutions"] = {"macs_per_image": 456_000_000, "pairs": 8,
                                               "conv_share": 1.0, "pair_share": 0.96,
                                               "largest": []}
    rec = next(r for r in verdict.decide(with_pairs, "cnn.onnx", None, None)["recommendations"]
               if r["action"] == "channel-pruning")
    assert "8 convolution pairs" in rec["why"] and "96%" in rec["why"]
    assert rec["gain"]["kind"] == "estimated" and rec["gain"]["speedup"] == 6.25  # 1/0.16
    v = verdict.decide(with_pairs, "cnn.onnx", None, None)
    assert rec["command"] == v["claim"]["command"]  # the default candidates include them
    assert "--task image-fidelity --data YOUR_IMAGES_DIR" in rec["command"]
    few = record(30.0, None, fmt="onnx")
    few["inventory"]["convolutions"] = {**with_pairs["inventory"]["convolutions"],
                                        "pair_share": 0.1}
    assert not any(r["action"] == "channel-pruning"
                   for r in verdict.decide(few, "cnn.onnx", None, None)["recommendations"])


def test_images_smaller_than_the_input_get_the_resolution_recommendation(tmp_path):
    from image_data import colour_images

    from leanify.diagnose.resolution import image_sizes
    from leanify.measure.data import read_dataset

    data = read_dataset(colour_images(tmp_path / "c", 4, seed=2, size=48), "image-fidelity")
    small = image_sizes(data, 224, 224)  # photos 48-95 px a side, a 224 x 224 model
    assert small["images"] == 12 and 48 <= small["shorter_side"]["min"] < 96
    assert small["upscaled_share"] == 1.0 and small["smaller"]
    assert small["work_at_p95"] == pytest.approx((small["shorter_side"]["p95"] / 224) ** 2,
                                                 abs=0.005)
    assert not image_sizes(data, 32, 32)["smaller"]  # all larger than a 32 x 32 input
    rec = record(30.0, None, fmt="onnx")
    rec["images"] = small
    (res,) = [r for r in verdict.decide(rec, "m.onnx", "imgs/", "image-fidelity")[
        "recommendations"] if r["action"] == "resolution"]
    assert res["gain"]["speedup"] == round(1 / small["work_at_p95"], 2)
    assert "12 images" in res["why"] and res["risk"]["level"] == "high"
