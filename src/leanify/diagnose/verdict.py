"""The verdict: does the model need optimizing, what bounds it, and what to do, ranked.

Budgets: the user's, else the defaults (latency over 2 s at the typical input, or peak memory
over 80% of the machine's memory, is a red flag). System-bound: most of the latency is a fixed
cost that does not grow with the input (overhead), or memory is near the machine's limit;
model-bound otherwise. Each recommendation carries its gain (measured here, or estimated, and
which), its risk, and a command where leanify has one.

The `leanify optimize` command comes with a concrete claim: the target flags it passes, and
whether the model it produces is expected to meet them, on which basis. "meets" is said only
from a measurement (ONNX Runtime fp32, a candidate optimize always builds for PyTorch models,
measured here under the target); "likely" from an estimate; "no" when even the estimate, or the
fixed cost alone, exceeds the budget.
"""

from __future__ import annotations

import shlex
from typing import Any

DEFAULT_LATENCY_MS = 2000.0
MEMORY_SHARE = 0.8
SLOWER_WITH_THREADS = 0.8  # all cores this much slower than one: a system problem
MARGIN = 0.8  # claim a budget is met only with 20% to spare
INT8_FACTOR = 2.0  # estimated speed-up of int8 on the variable (non-overhead) part
PRUNABLE_SHARE = 0.3  # convolution pairs doing this share of the MACs: worth pruning
OPTIMIZE_FORMATS = ("hf", "onnx", "keras")  # optimize exports, fuses and quantizes these
CLAIM_FORMATS = (*OPTIMIZE_FORMATS, "torchscript")  # optimize takes these


def _typical_p50(record: dict[str, Any]) -> float | None:
    typ = record["settings"]["typical"]
    for p in (record.get("latency") or {}).get("curve", {}).get("points", []):
        if p["batch_size"] == typ["batch_size"] and p["seq_len"] == typ["seq_len"]:
            return p["p50_ms"]
    return None


def budgets(record: dict[str, Any]) -> dict[str, Any]:
    s = record["settings"]
    total = record.get("machine", {}).get("memory_total_mb")
    return {
        "latency_ms": s.get("latency_budget_ms") or DEFAULT_LATENCY_MS,
        "latency_from": "user" if s.get("latency_budget_ms") else "default (2 s)",
        "memory_mb": s.get("memory_budget_mb") or (round(total * MEMORY_SHARE) if total else None),
        "memory_from": "user" if s.get("memory_budget_mb") else "default (80% of RAM)",
        "point": dict(s["typical"]),
    }


SERVER_BOUND = 0.5  # HTTP and client over half the round trip: the server, not the model
BATCHING_PAYS = 1.2  # dynamic batching's p95 at least this much better than one at a time


def _serving_reasons(served: dict[str, Any], budget_ms: float) -> list[str]:
    if not served:
        return []
    reasons = []
    per, batched = served["per_request"], served["dynamic_batching"]
    rate = served["rate_rps"]
    refused = per["rejected_rate"] + per["error_rate"]
    if (per["p95_ms"] or 0) > budget_ms or refused >= 0.01:
        reasons.append(
            f"at {rate:g} requests/s, one request at a time has a p95 of {per['p95_ms']} ms"
            + (f" and refuses or loses {refused:.0%}" if refused >= 0.01 else "")
            + f" (batched: {batched['p95_ms']} ms): the queue, not the model, "
            "is where the time goes")
    share = served.get("server_overhead_share")
    if share is not None and share > SERVER_BOUND:
        reasons.append(f"HTTP and the client take {share:.0%} of the median round trip at "
                       f"{rate:g} requests/s; the model {batched['model_p50_ms']} ms")
    return reasons


def _serving_recommendation(served: dict[str, Any], model_ref: str) -> list[dict[str, Any]]:
    gain = (served or {}).get("p95_gain")
    if not gain or gain < BATCHING_PAYS:
        return []
    per, batched = served["per_request"], served["dynamic_batching"]
    if served.get("kind") == "chat":
        title, how = "Serve with continuous batching", "decoding concurrent chats together"
    else:
        title = "Serve with dynamic batching"
        how = f"batching requests that arrive together (median batch {batched['batch_p50']})"
    return [_rec(
        "serve", title,
        f"At {served['rate_rps']:g} requests/s, one request at a time had a p95 of "
        f"{per['p95_ms']} ms; {how} had {batched['p95_ms']} ms.",
        {"kind": "measured", "speedup": gain,
         "text": f"p95 {gain:.1f}× lower at your rate (leanify loadtest, both measured)"},
        "none", "the outputs are the same; a lone request runs at once",
        f"leanify serve {model_ref}")]


def decide(record: dict[str, Any], model_ref: str, data_ref: str | None,
           task: str | None) -> dict[str, Any]:
    b = budgets(record)
    typ = _typical_p50(record)
    latency = record.get("latency") or {}
    peak = latency.get("curve", {}).get("peak_rss_mb")
    overhead = latency.get("overhead") or {}
    flags, system = [], []
    if typ is not None and typ > b["latency_ms"]:
        flags.append(f"latency {typ:.1f} ms at the typical input is over the budget "
                     f"{b['latency_ms']:g} ms")
    memory_near = peak is not None and b["memory_mb"] is not None and peak > b["memory_mb"]
    if memory_near:
        flags.append(f"peak memory {peak:.0f} MB is over the budget {b['memory_mb']:g} MB")
        system.append("memory is near the limit set for it")
    if overhead.get("overhead_bound"):
        system.append(
            f"a fixed cost of {overhead['intercept_ms']:.2f} ms per call is "
            f"{overhead['share_at_typical']:.0%} of the typical latency; it does not grow "
            f"with the input (latency grew {overhead['latency_growth']:.1f}× while the work "
            f"grew {overhead['work_growth']:.0f}×)")
    threads = latency.get("threads") or {}
    if threads.get("measured") and threads["speedup"] < SLOWER_WITH_THREADS:
        system.append(
            f"{threads['all_threads']} threads ran {1 / max(threads['speedup'], 1e-9):.1f}× "
            "slower than one: the cores are oversubscribed (other processes, or thread pools "
            "fighting)")
    served = record.get("serving") or {}
    system += _serving_reasons(served, b["latency_ms"])
    bound = "system" if system else "model"
    recs = _recommendations(record, typ, overhead, bound, model_ref)
    recs += _serving_recommendation(served, model_ref)
    claim = _claim(record, b, typ, overhead, model_ref, data_ref, task)
    if claim is not None and claim["command"]:
        for r in recs:  # optimize's default candidates include the pruned ones
            if r["action"] in ("optimize", "channel-pruning"):
                r["command"] = claim["command"]
    recs.sort(key=lambda r: -(r["gain"].get("speedup") or 1.0))
    for i, r in enumerate(recs, 1):
        r["rank"] = i
    needs = bool(flags)
    if needs:
        summary = "Needs attention: " + "; ".join(flags) + "."
    else:
        summary = ("Within budget: " + (f"{typ:.1f} ms at the typical input (budget "
                                        f"{b['latency_ms']:g} ms)" if typ is not None else
                                        "latency not measured")
                   + (f", peak memory {peak:.0f} MB" if peak is not None else "") + ".")
    summary += (" System-bound: " + "; ".join(system) + "." if system else
                " Model-bound: the time goes into the model's computation.")
    warnings = list(record.get("warnings", []))
    return {
        "needs_optimizing": needs,
        "bound": bound,
        "system_reasons": system,
        "red_flags": flags,
        "budgets": b,
        "measured": {"latency_ms": typ, "peak_rss_mb": peak},
        "summary": summary,
        "recommendations": recs,
        "command": claim["command"] if claim else None,
        "claim": claim,
        "warnings": warnings,
    }


def _rec(action: str, title: str, why: str, gain: dict[str, Any], risk: str, risk_text: str,
         command: str | None = None) -> dict[str, Any]:
    return {"action": action, "title": title, "why": why, "gain": gain,
            "risk": {"level": risk, "text": risk_text}, "command": command}


def _recommendations(record: dict[str, Any], typ: float | None, overhead: dict[str, Any],
                     bound: str, model_ref: str = "MODEL") -> list[dict[str, Any]]:
    recs = []
    latency = record.get("latency") or {}
    points = latency.get("curve", {}).get("points", [])
    if overhead.get("overhead_bound") and typ:
        a = overhead["intercept_ms"]
        ones = [p for p in points if p["batch_size"] == 1]
        big = max(points, key=lambda p: p["batch_size"]) if points else None
        # capped: a fixed share near 100% would promise an absurd factor
        bound_gain = min(typ / max(typ - a, 1e-9), 10.0)
        gain: dict[str, Any] = {"kind": "estimated", "speedup": round(bound_gain, 2),
                                "text": f"up to {bound_gain:.1f}× if most of the fixed "
                                        f"{a:.2f} ms per call went away"}
        if big and ones and big["batch_size"] > 1:
            base = min(ones, key=lambda p: abs(p["seq_len"] - big["seq_len"]))
            tp = big["throughput_per_s"] / max(base["throughput_per_s"], 1e-9)
            gain["throughput_gain_batching"] = round(tp, 2)
            gain["text"] += (f"; batching {big['batch_size']} inputs per call measured "
                             f"{tp:.1f}× the throughput of one per call")
        recs.append(_rec(
            "reduce-overhead", "Cut the fixed cost per call",
            "Latency barely grows with the input: the cost is outside the math. Batch requests, "
            "look for computations that do not depend on the input (they can be precomputed "
            "or cached), and check the serving path (conversions, per-call setup). Making the "
            "model's math cheaper (quantization, pruning) will not help much.",
            gain, "low", "serving changes; the model's outputs stay the same"))
    rt = latency.get("runtimes")
    sens = record.get("sensitivity") or {}
    fmt = record["inventory"]["format"]
    if fmt in OPTIMIZE_FORMATS:
        gain = {"kind": "estimated", "speedup": None, "text": ""}
        parts = []
        if rt and len(rt.get("models", [])) == 2:
            s = rt["models"][1]["speedup"]
            lo = rt["models"][1]["speedup_ci95"][0]
            gain.update(kind="measured + estimated", measured_runtime_speedup=s,
                        measured_runtime_speedup_ci95=rt["models"][1]["speedup_ci95"])
            parts.append(f"ONNX Runtime fp32 measured {s:.2f}× (95% CI from {lo:.2f}×)")
        else:
            s = 1.0
        est = s * INT8_FACTOR if bound == "model" else s
        gain["speedup"] = round(est, 2)
        if bound == "model":
            parts.append(f"int8 estimated about {INT8_FACTOR:g}× more on the matrix products")
        gain["text"] = "; ".join(parts) or "not measured"
        all_q = sens.get("all_layers")
        if all_q is None:
            risk, risk_text = "medium", "quantization sensitivity not measured"
        else:
            cos = all_q["cosine"]
            risk = "low" if cos >= 0.99 else "medium" if cos >= 0.95 else "high"
            risk_text = (f"all layers int8 kept output cosine {cos:.4f}; optimize's accuracy "
                         "gate rejects any candidate that loses more than --max-drop")
            if sens.get("most_sensitive"):
                risk_text += f"; most sensitive: {', '.join(sens['most_sensitive'][:4])}"
        recs.append(_rec("optimize", "Export, fuse and quantize with leanify optimize",
                         "Faster runtime and int8 matrix products, each candidate checked "
                         "against your data.", gain, risk, risk_text))
    elif fmt == "torchscript":
        recs.append(_rec("optimize", "Freeze it for inference with leanify optimize",
                         "TorchScript that the exporters refuse still gains from torch.jit.freeze "
                         "(and optimize_for_inference: folded batch norms, oneDNN convolutions),"
                         " each candidate checked against your data.",
                         {"kind": "estimated", "speedup": None,
                          "text": "not estimated: optimize measures each candidate"},
                         "low", "outputs are checked on consecutive calls (carried state)"))
    elif fmt == "pt2":
        recs.append(_rec("export", "Export to ONNX, then run leanify optimize",
                         "leanify optimize takes Hugging Face folders, ONNX and TorchScript "
                         "files, not pt2; export with torch.onnx.export and run the doctor on "
                         "the .onnx file.", {"kind": "estimated", "speedup": None,
                                             "text": "not measured for this format"},
                         "low", "an export is checked against the source by the doctor's rerun"))
    ctx = record.get("context") or {}
    costs = (ctx.get("padding") or {}).get("strategies")
    if costs:
        best = max(("dynamic_padding", "length_bucketing"), key=lambda k: costs[k]["saving"])
        saving = costs[best]["saving"]
        if saving > 0.1:
            recs.append(_rec(
                "padding", "Pad per batch, and bucket inputs by length",
                f"Padding every input to {ctx['padding']['max_length']} tokens wastes "
                f"{costs['pad_to_max_length']['padding_share']:.0%} of the tokens; your data's "
                f"p95 is {ctx['stats']['p95']} tokens.",
                {"kind": "estimated", "speedup": round(1 / max(1 - saving, 1e-3), 2),
                 "text": f"{saving:.0%} less time on your data ({best.replace('_', ' ')}, "
                         "estimated from the measured latency curve)"},
                "none", "attention masks make padding invisible to the outputs"))
        trunc = costs["truncate_at_p95"]
        if trunc["saving"] > costs[best]["saving"] + 0.05:
            recs.append(_rec(
                "truncate", f"Truncate inputs at {trunc['length']} tokens",
                "Long inputs are rare in your data; truncation caps the cost of the longest.",
                {"kind": "estimated", "speedup": round(1 / max(1 - trunc["saving"], 1e-3), 2),
                 "text": f"{trunc['saving']:.0%} less time than padding to the maximum"},
                "medium", f"{trunc['truncated_texts']} texts lose their tail; check accuracy"))
    threads = latency.get("threads") or {}
    if threads.get("measured") and threads["speedup"] < SLOWER_WITH_THREADS:
        recs.append(_rec(
            "threads", "Run with fewer threads",
            f"{threads['all_threads']} threads were slower than one on this machine.",
            {"kind": "measured", "speedup": round(1 / max(threads["speedup"], 1e-9), 2),
             "text": f"one thread measured {threads['threads_1_p50_ms']:.2f} ms, "
                     f"{1 / max(threads['speedup'], 1e-9):.1f}× faster"},
            "low", "find the other load on the machine too; measure again when it is quiet"))
    elif threads.get("measured") and not threads.get("scales") and bound == "model":
        n = threads["all_threads"]
        gain_tp = n / max(threads["speedup"], 1e-3)
        recs.append(_rec(
            "threads", "Run single-thread workers instead of one multi-thread model",
            f"{n} threads ran only {threads['speedup']:.2f}× faster than one.",
            {"kind": "estimated", "speedup": None, "throughput_gain": round(gain_tp, 2),
             "text": f"about {gain_tp:.1f}× the throughput with {n} one-thread workers"},
            "low", "latency per request stays at the one-thread figure"))
    red = record.get("redundancy") or {}
    flops = (record["inventory"].get("flops") or {}).get("per_block", {})
    total = sum(flops.values()) or 0
    act = red.get("activations") or {}
    near_id = act.get("near_identity_blocks") or []
    n_blocks = len(act.get("blocks", []))
    hf = record["inventory"]["format"] == "hf"

    def student(layers: int) -> str | None:  # leanify prunes and distills HF encoders
        return (f"leanify distill {model_ref} --layers {max(1, layers)} --data YOUR_TEXT "
                "--out leanify-student") if hf and n_blocks else None

    if near_id and total and len(near_id) < n_blocks:
        share = sum(flops.get(b, 0) for b in near_id) / total
        recs.append(_rec(
            "depth-pruning", f"Drop near-identity blocks ({', '.join(near_id)})",
            "Their output hidden states barely differ from their input.",
            {"kind": "estimated", "speedup": round(1 / max(1 - share, 1e-3), 2),
             "text": f"{share:.0%} of the FLOPs"},
            "high", "needs distillation to recover accuracy",
            student(n_blocks - len(near_id))))
    if act.get("near_dead_neurons") or act.get("near_dead_heads"):
        recs.append(_rec(
            "structured-pruning", "Prune near-dead FFN neurons and attention heads",
            f"{act.get('near_dead_neurons', 0)} FFN neurons and {act.get('near_dead_heads', 0)} "
            "attention heads barely contribute on your data.",
            {"kind": "estimated", "speedup": None, "text": "proportional to what is removed"},
            "medium", "remove them, then check accuracy (distillation recovers the rest)"))
    conv = record["inventory"].get("convolutions") or {}
    if conv.get("pairs") and conv.get("pair_share", 0) >= PRUNABLE_SHARE:
        from leanify.search.plan import PRUNE_KEEPS

        keep = min(PRUNE_KEEPS)
        share = conv["pair_share"]
        left = 1 - share * (1 - keep)
        recs.append(_rec(
            "channel-pruning", "Cut the inner channels of its convolution pairs (no training)",
            f"{conv['pairs']} convolution pairs (conv -> activation -> conv) do {share:.0%} of "
            "the multiply-accumulates. leanify optimize cuts their inner channels on your "
            "images and refits the next convolution by least squares (candidates pruned50-*, "
            "pruned25-* and pruned12-*, then int8).",
            {"kind": "estimated", "speedup": round(1 / max(left, 1e-3), 2),
             "text": f"the MACs fall to {left:.0%} at {keep:.0%} of the inner channels, "
                     "before int8"},
            "medium", "outputs change; the accuracy gate judges each candidate on your images",
            f"leanify optimize {model_ref} --task image-fidelity --data YOUR_IMAGES_DIR"))
    imgs = record.get("images") or {}
    if imgs.get("smaller"):
        side, model = imgs["shorter_side"]["p95"], imgs["model_input"]
        recs.append(_rec(
            "resolution", f"Run at your images' resolution (about {side} px)",
            f"95% of your {imgs['images']} images are at most {side} px on the shorter side "
            f"({imgs['upscaled_share']:.0%} are upscaled to the model's {model['height']}x"
            f"{model['width']}): the model spends its convolutions on interpolated pixels.",
            {"kind": "estimated", "speedup": round(1 / max(imgs["work_at_p95"], 1e-3), 2),
             "text": f"about {imgs['work_at_p95']:.0%} of the convolution work at {side} px"},
            "high", "needs a model trained or fine-tuned at that resolution; check accuracy"))
    spec = (record.get("spectral") or {}).get("summary") or {}
    if spec.get("under_trained") and spec.get("layers"):
        recs.append(_rec(
            "smaller-model", "Consider a smaller model (distillation)",
            f"{spec['under_trained']} of {spec['layers']} layers look under-trained (alpha > 6): "
            "capacity the task may not need.",
            {"kind": "estimated", "speedup": None, "text": "depends on the student's size"},
            "high", "needs training data and a distillation run", student(n_blocks // 2)))
    return recs


def _claim(record: dict[str, Any], b: dict[str, Any], typ: float | None,
           overhead: dict[str, Any], model_ref: str, data_ref: str | None,
           task: str | None) -> dict[str, Any] | None:
    fmt = record["inventory"]["format"]
    if fmt not in CLAIM_FORMATS or typ is None:
        return None
    point = b["point"]
    targets = {"--batch-size": point["batch_size"], "--max-latency-ms": b["latency_ms"]}
    if record["settings"].get("sequence"):
        targets["--seq-len"] = point["seq_len"]
    if record["settings"].get("memory_budget_mb"):
        targets["--max-memory-mb"] = record["settings"]["memory_budget_mb"]
    sample = record["settings"].get("sample")
    image = record["settings"].get("image_input") and not sample
    argv = ["leanify", "optimize", model_ref,
            "--task", task or ("image-fidelity" if image else "fidelity"),
            "--data", data_ref or ("YOUR_NPZ_FOLDER" if sample else
                                   "YOUR_IMAGES_DIR" if image else "YOUR_DATA.csv")]
    if sample:  # an array model: the same sample runs in optimize's checks and timings
        argv += ["--sample", sample]
    if record["settings"].get("trust_code"):  # the user trusted this file's code already
        argv += ["--trust-code"]
    shown = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in targets.items()}
    for flag, value in shown.items():
        argv += [flag, value]
    command = shlex.join(argv)
    budget = b["latency_ms"]
    rt = (record.get("latency") or {}).get("runtimes")
    ort = rt["models"][1] if rt and len(rt.get("models", [])) == 2 else None
    a = overhead.get("intercept_ms", 0.0) if overhead.get("fitted") else 0.0
    best = min(typ, ort["p50_ms"]) if ort else typ
    estimate = a + (best - a) / INT8_FACTOR
    if ort and ort["p50_ms"] <= MARGIN * budget and ort["speedup_ci95"][0] > 1.0:
        expected, basis = "meets", (
            f"measured: ONNX Runtime fp32 (optimize's onnx-fp32 candidate) ran "
            f"{ort['p50_ms']:.2f} ms at this point, faster than the source "
            f"(95% CI of the speed-up from {ort['speedup_ci95'][0]:.2f}×)")
    elif a > budget:
        expected, basis = "no", (f"the fixed cost alone, {a:.2f} ms per call, exceeds the "
                                 f"{budget:g} ms budget; optimizing the math cannot remove it")
    elif estimate <= MARGIN * budget:
        expected, basis = "likely", (f"estimated: {estimate:.2f} ms with int8 "
                                     f"(about {INT8_FACTOR:g}× on the non-overhead part)")
    elif estimate > budget:
        expected, basis = "no", (f"estimated {estimate:.2f} ms with int8 is still over the "
                                 f"{budget:g} ms budget: a smaller model (pruning, "
                                 "distillation) is needed")
    else:
        expected, basis = "uncertain", (f"estimated {estimate:.2f} ms with int8, within 20% "
                                        f"of the {budget:g} ms budget")
    if fmt not in OPTIMIZE_FORMATS:  # no int8 here: only what was measured counts
        expected, basis = ("meets", f"measured: the model already runs {typ:.2f} ms, and "
                           "optimize keeps only faster candidates") if typ <= MARGIN * budget \
            else ("uncertain", "freezing is not estimated: optimize measures it")
    memory = None
    if "--max-memory-mb" in targets:
        limit = targets["--max-memory-mb"]
        if ort and ort.get("peak_rss_mb") is not None:
            ok = ort["peak_rss_mb"] <= MARGIN * limit
            memory = {"expected": "meets" if ok else "uncertain",
                      "basis": f"measured: ONNX Runtime fp32 peaked at {ort['peak_rss_mb']:.0f} MB"}
        else:
            memory = {"expected": "uncertain", "basis": "not measured for a converted model"}
        if memory["expected"] != "meets" and expected == "meets":
            expected = "uncertain"
    words = {"meets": "is expected to meet", "likely": "will likely meet",
             "no": "would NOT meet", "uncertain": "may or may not meet"}[expected]
    statement = (f"The model this command produces {words} "
                 + ", ".join(f"{k} {v}" for k, v in shown.items()
                             if k in ("--max-latency-ms", "--max-memory-mb"))
                 + f" at batch {point['batch_size']}"
                 + (f" × seq {point['seq_len']}" if record["settings"].get("sequence") else "")
                 + f" ({basis}).")
    return {"command": command, "argv": argv, "targets": targets, "expected": expected,
            "basis": basis, "estimated_int8_ms": round(estimate, 3), "memory": memory,
            "runnable": data_ref is not None, "statement": statement}
