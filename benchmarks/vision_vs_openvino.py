"""leanify's optimized vision model against OpenVINO + NNCF default int8 of the same model (the
best peer path for CNNs on CPUs), at batch 1 and batch 32, with top-1 on held-out images.

The peer is built by plain OpenVINO and NNCF in a child process that never imports leanify:
`nncf.quantize(ov.convert_model(model.onnx), nncf.Dataset(calibration images))` with NNCF's
defaults (300 samples, fast bias correction), saved as IR and compiled with OpenVINO's
defaults. It is calibrated on the same images as leanify (`IMAGES/calibration`).

Then, side by side in one sitting:
- every model is timed with `leanify.measure.bench.bench` (each model in its own process,
  rounds interleaved, warm-up excluded; the peer is the baseline, so each ratio is peer p50 /
  model p50 from the same rounds);
- every model is scored on `IMAGES/test` (a folder per class) by an independent scorer in a
  fresh process: plain onnxruntime / openvino / ai-edge-litert + Pillow, preprocessing as
  `preprocessor_config.json` beside the model says (no leanify).

    python benchmarks/vision_vs_openvino.py --leanify-run out/vision/optimized
    python benchmarks/vision_vs_openvino.py --model M.onnx --images DIR --leanify-run RUN
    python benchmarks/vision_vs_openvino.py --also OTHER.tflite ...   # more models to score

Acceptance (issue 14): the selected model keeps top-1 within 0.5 point of fp32 and is at least
1.2x faster than the peer at batch 1 and at batch 32 (2x and 1 point with --allow-training).
Exit 1 when the selected model misses it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "out" / "vision"

# What both the peer's builder and the scorer read: images as the model's
# preprocessor_config.json declares (exact resize, rescale, mean/std; grey when the model has
# one input channel), NCHW float32.
COMMON = r"""
import glob, json, sys
from pathlib import Path
import numpy as np
from PIL import Image

def preprocessing(model_path):
    cfg = json.loads((Path(model_path).parent / "preprocessor_config.json").read_text())
    return cfg

def image(path, cfg, channels):
    img = Image.open(path).convert("L" if channels == 1 else "RGB")
    size = cfg["size"]
    img = img.resize((size["width"], size["height"]), Image.Resampling.BILINEAR)
    x = np.asarray(img, np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    x = x * np.float32(cfg.get("rescale_factor", 1 / 255))
    x = (x - np.asarray(cfg["image_mean"], np.float32)) / np.asarray(cfg["image_std"], np.float32)
    return x.transpose(2, 0, 1)

def labelled(folder):
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    rows = [(f, i) for i, c in enumerate(classes) for f in sorted(glob.glob(f"{folder}/{c}/*"))]
    return rows, classes
"""

PEER_SCRIPT = COMMON + r"""
import nncf, openvino as ov
model_path, calibration, out = sys.argv[1:4]
cfg = preprocessing(model_path)
model = ov.convert_model(model_path)
channels = model.inputs[0].get_partial_shape()[1].get_length()
rows, _ = labelled(calibration)
data = [image(f, cfg, channels)[None] for f, _ in rows]
quantized = nncf.quantize(model, nncf.Dataset(data))
ov.save_model(quantized, out)
print(out)
"""

SCORE_SCRIPT = COMMON + r"""
model_path, config_from, test = sys.argv[1:4]
cfg = preprocessing(config_from)
rows, _ = labelled(test)
if model_path.endswith(".onnx"):
    import onnxruntime as ort
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    channels = sess.get_inputs()[0].shape[1]
    run = lambda x: sess.run(None, {name: x})[0]
elif model_path.endswith(".xml"):
    import openvino as ov
    compiled = ov.Core().compile_model(model_path, "CPU")
    channels = compiled.inputs[0].get_partial_shape()[1].get_length()
    run = lambda x: compiled(x)[0]
else:
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=model_path)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    nhwc = inp["shape"][-1] in (1, 3)
    channels = int(inp["shape"][-1] if nhwc else inp["shape"][1])
    def run(x):
        x = x.transpose(0, 2, 3, 1) if nhwc else x
        scale, zero = inp["quantization"]
        if scale:
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(outp["index"])
        scale, zero = outp["quantization"]
        return (y.astype(np.float32) - zero) * scale if scale else y
correct = 0
for f, label in rows:
    correct += int(np.argmax(run(image(f, cfg, channels)[None])) == label)
print(json.dumps({"top1": 100 * correct / len(rows), "images": len(rows)}))
"""


def child(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": ""}  # the children never see leanify's sources
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO / "model" / "resnet18_mnist.onnx")
    parser.add_argument("--images", type=Path, default=DEMO / "images",
                        help="a folder with calibration/ and test/ (a folder per class each)")
    parser.add_argument("--leanify-run", type=Path, help="a finished `leanify optimize` run")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another model file to time and score (ONNX, IR, TFLite)")
    parser.add_argument("--allow-training", action="store_true",
                        help="judge the selected model by the training targets (2x, 1 point)")
    parser.add_argument("--work", type=Path, help="where the peer is built (default: temp)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the bench record and scores here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import leanify
    from leanify.measure.bench import BenchSettings, bench

    if not args.model.is_file():
        sys.exit(f"{args.model} is missing: run `make demo-vision` (or give --model)")
    scratch = tempfile.TemporaryDirectory(prefix="leanify-vision-peer-")
    work = args.work or Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    peer = work / "peer_int8.xml"
    if not peer.is_file():
        child(PEER_SCRIPT, str(args.model), str(args.images / "calibration"), str(peer))
    print(f"peer (OpenVINO + NNCF default int8): {peer}", flush=True)

    models = {"peer-ov-nncf-int8": peer, "fp32-onnxruntime": args.model}
    if args.leanify_run:
        record = json.loads((args.leanify_run / "leanify.json").read_text())
        chosen = record.get("selected") or sys.exit(f"{args.leanify_run}: nothing selected")
        models[f"selected:{chosen['name']}"] = args.leanify_run / chosen["artifact"]
    for path in args.also:  # a run's model/model.tflite is named after the run
        models[path.parent.parent.name if path.stem == "model" else path.stem] = path
    artifacts = [leanify.load(path, name=name) for name, path in models.items()]
    # a model exported at batch 1 (TFLite) is timed at batch 1, beside the peer, in a second run
    single = [a for a in artifacts if a.inputs[0].shape[:1] == (1,)]
    batched = [a for a in artifacts if a not in single]
    print(f"timing {len(artifacts)} models, threads {args.threads}, {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    timed = bench(batched, BenchSettings(batch_sizes=[1, 32], rounds=args.rounds,
                                         threads=args.threads))
    if single:
        at_one = bench([batched[0], *single], BenchSettings(batch_sizes=[1], rounds=args.rounds,
                                                            threads=args.threads))
        timed["results"] += [r for r in at_one["results"] if r["model"] != batched[0].name]
    scores = {}
    for artifact in artifacts:
        path = artifact.path
        if path.is_dir():  # an IR folder or a TFLite folder: the file inside
            path = next(p for p in sorted(path.iterdir()) if p.suffix in (".xml", ".tflite",
                                                                          ".onnx"))
        scores[artifact.name] = json.loads(child(SCORE_SCRIPT, str(path), str(args.model),
                                                 str(args.images / "test")))["top1"]

    machine = timed["machine"]
    print(f"\nload average start {machine['load_average_start']} end "
          f"{machine['load_average_end']}; busy before/after {machine['cpu_busy_before']:.0%}/"
          f"{machine['cpu_busy_after']:.0%}; baseline: the peer")
    for warning in timed.get("warnings", []):
        print(f"warning: {warning}")
    rows: dict[str, dict] = {}
    for row in timed["results"]:
        entry = rows.setdefault(row["model"], {"size_mb": row["size_mb"]})
        bs = row["batch_size"]
        entry[f"p50_bs{bs}"] = row["latency_ms"]["p50"]
        entry[f"speed_bs{bs}"] = row.get("vs_baseline", {}).get("speedup", 1.0)
    fp32 = scores["fp32-onnxruntime"]
    print(f"{'model':34s} {'bs1 ms':>8s} {'bs32 ms':>8s} {'vs peer bs1':>12s} "
          f"{'vs peer bs32':>13s} {'top-1':>6s} {'MB':>6s}")
    for name, e in rows.items():
        bs32 = (f"{e['p50_bs32']:8.1f} {e['speed_bs1']:11.2f}x {e['speed_bs32']:12.2f}x"
                if "p50_bs32" in e else f"{'-':>8s} {e['speed_bs1']:11.2f}x {'-':>13s}")
        print(f"{name:34s} {e['p50_bs1']:8.2f} {bs32} {scores[name]:6.1f} {e['size_mb']:6.1f}")
    print("vs peer = peer p50 / model p50 (above 1: faster than OpenVINO NNCF default int8); "
          "a batch-1 model is timed at batch 1 only, beside the peer in a second run")
    code = 0
    for name, e in rows.items():
        if name.startswith("selected:"):
            speed, drop = (2.0, 1.0) if args.allow_training else (1.2, 0.5)
            ok = e["speed_bs1"] >= speed and e["speed_bs32"] >= speed and \
                scores[name] >= fp32 - drop
            print(f"{name}: {'PASS' if ok else 'FAIL'} (>= {speed}x the peer at batch 1 and 32, "
                  f"top-1 >= fp32 {fp32:.1f} - {drop})")
            code = code or (0 if ok else 1)
    if args.json:
        args.json.write_text(json.dumps({"bench": timed, "top1": scores, "table": rows},
                                        indent=2))
    scratch.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
