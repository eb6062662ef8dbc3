"""Pruned + distilled + int8 students of all-MiniLM-L6-v2, against the quantize-only anchors.

Embeddings: MiniLM -> a student with half the encoder layers (the ones whose removal changes the
output least, measured on STS-B train sentences), distilled with leanify's trainer on the
sentences of the STS-B and SST-2 training splits (unlabelled), exported to ONNX, fused and
dynamic-int8 quantized. Checked side by side (each model in its own process, rounds
interleaved) against Optimum's avx512_vnni dynamic int8 of the unpruned model:
- encoder FLOPs at seq 128 (target: >= 40% fewer),
- STS-B test Spearman x100 by an independent plain-onnxruntime scorer (target: >= 81.0),
- latency at bs 1 / seq 128 and bs 32 / seq 128 (target: <= 0.6x the anchor),
- distillation wall time (target: < 45 min on 2 cores).
The student is left in DIR/student.onnx with its tokenizer files beside it.

Classification: MiniLM fine-tuned on SST-2 train (a subset) is the teacher; a pruned student is
distilled from it (KL on logits + labels), both int8: SST-2 dev accuracy within 1.0 point,
student at least 2x faster than the teacher's own int8 (same recipe, side by side).

    python benchmarks/distill_minilm.py --out DIR --optimum-python PY   [--part embedding]

PY is a Python with `optimum-onnx[onnxruntime]` (see benchmarks/quantize_vs_optimum.py). The
work is resumable: rerun the same command and finished steps (and training checkpoints) are
reused. Data is read from ../shared/data (or --data-dir): STS-B and SST-2 with their
PROVENANCE.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
POST_TRAINING = [("export-onnx", {}), ("ort-optimize", {}), ("quantize-dynamic", {})]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sst2_rows(path: Path) -> tuple[list[str], list[int]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]


def encoder_flops(folder: Path, seq: int = 128) -> int:
    """FLOPs of one sequence through the encoder (embeddings to last hidden state)."""
    import torch
    from transformers import AutoModel

    from leanify.prune.flops import count_flops

    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    ids = torch.full((1, seq), 1000, dtype=torch.long)
    return count_flops(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def context(work: Path, threads: int, calibration_texts: list[str], tokenizer: Path):
    from leanify.measure.data import text_batches
    from leanify.measure.machine import cpu_info
    from leanify.passes.registry import PassContext

    def batches():
        yield from text_batches(calibration_texts, tokenizer, 16, 128,
                                ["input_ids", "attention_mask", "token_type_ids"])

    return PassContext(work_dir=work, threads=threads, calibration=batches,
                       isa_flags=frozenset(cpu_info()["isa_flags"]),
                       log=lambda msg: log(f"  {msg}"))


def run(source, steps, ctx):
    from leanify.passes.registry import make_config, run_pipeline

    return run_pipeline(source, [make_config(name, **params) for name, params in steps], ctx)


def bench_pair(models, threads: int, rounds: int) -> dict[str, dict]:
    """p50 latency and ratio to the first model, at bs1/128 and bs32/128, one sitting."""
    from leanify.measure.bench import BenchSettings, bench

    log(f"timing {', '.join(m.name for m in models)} (load average "
        f"{os.getloadavg()[0]:.2f})")
    record = bench(models, BenchSettings(batch_sizes=[1, 32], seq_lens=[128], rounds=rounds,
                                         threads=threads))
    table: dict[str, dict] = {}
    for row in record["results"]:
        entry = table.setdefault(row["model"], {"size_mb": row["size_mb"]})
        bs = row["batch_size"]
        entry[f"p50_bs{bs}"] = row["latency_ms"]["p50"]
        entry[f"ratio_bs{bs}"] = row.get("vs_baseline", {}).get("latency_ratio", 1.0)
    table["_load_average"] = {"start": record["machine"]["load_average_start"],
                              "end": record["machine"]["load_average_end"]}
    return table


# --- embeddings ---------------------------------------------------------------------------


def embedding_part(args, out: Path) -> dict:
    from quantize_vs_optimum import build_anchor, stsb_in_child

    import leanify
    from leanify.measure.data import read_dataset

    work = out / "work-embedding"
    sts_train = read_dataset(args.data_dir / "stsb" / "sts-train.csv", "embedding-similarity")
    sst_texts, _ = sst2_rows(args.data_dir / "sst2" / "train.tsv")
    transfer = out / "transfer-embedding.txt"  # the unlabelled sentences, one per line
    texts = list(dict.fromkeys(t for t in sts_train.all_texts() + sst_texts if t.strip()))
    transfer.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n",
                        encoding="utf-8")
    teacher = leanify.load("minilm")
    ctx = context(work, args.threads, sts_train.all_texts()[:256], teacher.path)

    t0 = time.perf_counter()
    pruned = run(teacher, [("prune-transformer", {"layers": args.layers,
                                                  "ffn_keep": args.ffn_keep})], ctx)
    student = run(pruned, [("distill", {"data": str(transfer), "epochs": args.epochs,
                                        "time_budget_min": args.budget_min})], ctx)
    distill_record = student.meta["distill"]
    log(f"student {student.path}: {distill_record['stopped']} after "
        f"{distill_record['steps']} steps, {distill_record['wall_s'] / 60:.1f} min of training "
        f"(this call {time.perf_counter() - t0:.0f} s)")
    int8 = run(student, POST_TRAINING, ctx)
    teacher_int8 = run(teacher, POST_TRAINING, ctx)

    # the deliverable: DIR/student.onnx + tokenizer, checkable with plain onnxruntime
    shutil.copy2(int8.path, out / "student.onnx")
    for name in TOKENIZER_FILES:
        if (Path(student.path) / name).is_file():
            shutil.copy2(Path(student.path) / name, out / name)

    flops_teacher, flops_student = encoder_flops(teacher.path), encoder_flops(student.path)
    models = []
    if args.optimum_python:
        anchor = build_anchor(args.optimum_python, work)
        models.append(leanify.load(anchor, name="optimum-int8"))
    models += [leanify.load(teacher_int8.path, name="teacher-int8"),
               leanify.load(out / "student.onnx", name="student-int8")]
    table = bench_pair(models, args.threads, args.rounds)
    scores = {m.name: stsb_in_child(m.path, teacher.path, args.threads) for m in models}
    result = {
        "layers": pruned.meta["prune"]["kept_layers"],
        "intermediate_size": pruned.meta["prune"]["intermediate_size"],
        "encoder_gflops_seq128": {"teacher": flops_teacher / 1e9,
                                  "student": flops_student / 1e9},
        "flops_reduction": 1 - flops_student / flops_teacher,
        "distill": {k: distill_record[k] for k in ("steps", "total_steps", "epochs", "best_dev",
                                                   "stopped", "wall_s", "train_texts")},
        "stsb": scores, "latency": table,
    }
    base = "optimum-int8" if args.optimum_python else "teacher-int8"
    print("\nEMBEDDINGS (STS-B test Spearman x100; latency p50 ms; ratios vs "
          f"{base}, one sitting)")
    for m in models:
        e = table[m.name]
        print(f"  {m.name:14s} STS-B {scores[m.name]:6.2f}  bs1/128 {e['p50_bs1']:7.2f} ms "
              f"({e['ratio_bs1']:.3f}x)  bs32/128 {e['p50_bs32']:7.1f} ms "
              f"({e['ratio_bs32']:.3f}x)  {e['size_mb']:.1f} MB")
    checks = {
        "encoder FLOPs >= 40% fewer": result["flops_reduction"] >= 0.40,
        "student STS-B >= 81.0": scores["student-int8"] >= 81.0,
        "distillation < 45 min": distill_record["wall_s"] < 45 * 60,
    }
    if args.optimum_python:
        s = table["student-int8"]
        checks["bs1/128 <= 0.6x Optimum int8"] = s["ratio_bs1"] <= 0.6
        checks["bs32/128 <= 0.6x Optimum int8"] = s["ratio_bs32"] <= 0.6
    print(f"  encoder GFLOPs/seq128 {flops_teacher / 1e9:.2f} -> {flops_student / 1e9:.2f} "
          f"({result['flops_reduction']:.0%} fewer); distillation "
          f"{distill_record['wall_s'] / 60:.1f} min")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    result["checks"] = checks
    return result


# --- classification -----------------------------------------------------------------------


def fine_tune(folder: Path, texts: list[str], labels: list[int], out: Path, threads: int,
              epochs: float, seed: int = 0) -> None:
    """MiniLM + a fresh classification head, fine-tuned on SST-2 (AdamW, warm-up, decay)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from leanify.train.distill import collate, length_batches

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1})
    ids = tok(texts, truncation=True, max_length=128)["input_ids"]
    batches = length_batches([len(x) for x in ids], 32, np.random.default_rng(seed))
    total = int(len(batches) * epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    warm = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / (total - warm))))
    y = torch.tensor(labels)
    model.train()
    t0 = time.perf_counter()
    for step, b in enumerate((batches * 2)[:total], 1):
        loss = model(**collate([ids[i] for i in b], tok.pad_token_id), labels=y[b]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 200 == 0:
            log(f"  fine-tune step {step}/{total} loss {float(loss):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    tmp.rename(out)


def onnx_accuracy(model: Path, tokenizer: Path, texts: list[str], labels: list[int],
                  threads: int) -> float:
    """Plain onnxruntime + tokenizers, in a fresh process: argmax of the logits vs gold."""
    code = r"""
import sys, json, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
model, tok_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = json.load(sys.stdin)
tok = Tokenizer.from_file(tok_dir + "/tokenizer.json")
tok.enable_truncation(128)
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
names = {i.name for i in sess.get_inputs()}
right = 0
for start in range(0, len(data["texts"]), 32):
    enc = tok.encode_batch(data["texts"][start:start + 32])
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), np.int64); mask = np.zeros_like(ids)
    for r, e in enumerate(enc):
        ids[r, :len(e.ids)] = e.ids; mask[r, :len(e.ids)] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    logits = sess.run(None, {k: v for k, v in feed.items() if k in names})[0]
    right += int((logits.argmax(-1) == np.array(data["labels"][start:start + 32])).sum())
print(100.0 * right / len(data["texts"]))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(tokenizer), str(threads)],
                          input=json.dumps({"texts": texts, "labels": labels}),
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def classification_part(args, out: Path) -> dict:
    import leanify

    work = out / "work-classification"
    work.mkdir(parents=True, exist_ok=True)
    train_texts, train_labels = sst2_rows(args.data_dir / "sst2" / "train.tsv")
    dev_texts, dev_labels = sst2_rows(args.data_dir / "sst2" / "dev.tsv")
    teacher_dir = out / "sst2-teacher"
    if not teacher_dir.is_dir():
        rng = np.random.default_rng(0)
        pick = rng.permutation(len(train_texts))[:args.sst2_finetune]
        log(f"fine-tuning the SST-2 teacher on {len(pick)} training sentences")
        t0 = time.perf_counter()
        fine_tune(leanify.load("minilm").path, [train_texts[i] for i in pick],
                  [train_labels[i] for i in pick], teacher_dir, args.threads, epochs=1.0)
        log(f"teacher fine-tuned in {(time.perf_counter() - t0) / 60:.1f} min")
    teacher = leanify.load(teacher_dir, name="sst2-teacher")
    ctx = context(work, args.threads, train_texts[:256], teacher.path)
    t0 = time.perf_counter()
    pruned = run(teacher, [("prune-transformer", {"layers": args.cls_layers,
                                                  "ffn_keep": args.cls_ffn_keep,
                                                  "importance": "taylor"})], ctx)
    student = run(pruned, [("distill", {"data": str(args.data_dir / "sst2" / "train.tsv"),
                                        "epochs": args.cls_epochs,
                                        "time_budget_min": args.budget_min})], ctx)
    log(f"classifier student distilled ({time.perf_counter() - t0:.0f} s this call)")
    teacher_int8 = run(teacher, POST_TRAINING, ctx)
    student_int8 = run(student, POST_TRAINING, ctx)
    models = [leanify.load(teacher_int8.path, name="teacher-int8"),
              leanify.load(student_int8.path, name="student-int8")]
    table = bench_pair(models, args.threads, args.rounds)
    acc = {"teacher-fp32": None}
    acc["teacher-int8"] = onnx_accuracy(teacher_int8.path, teacher.path, dev_texts, dev_labels,
                                        args.threads)
    acc["student-int8"] = onnx_accuracy(student_int8.path, teacher.path, dev_texts, dev_labels,
                                        args.threads)
    teacher_fp32 = run(teacher, [("export-onnx", {})], ctx)
    acc["teacher-fp32"] = onnx_accuracy(teacher_fp32.path, teacher.path, dev_texts, dev_labels,
                                        args.threads)
    s = table["student-int8"]
    speedup = {bs: 1 / s[f"ratio_bs{bs}"] for bs in (1, 32)}
    print("\nCLASSIFICATION (SST-2 dev accuracy %; latency p50 ms, one sitting)")
    for name in ("teacher-int8", "student-int8"):
        e = table[name]
        print(f"  {name:14s} acc {acc[name]:6.2f}  bs1/128 {e['p50_bs1']:7.2f} ms  bs32/128 "
              f"{e['p50_bs32']:7.1f} ms  {e['size_mb']:.1f} MB")
    print(f"  teacher fp32 acc {acc['teacher-fp32']:.2f}; student speed-up over teacher int8: "
          f"{speedup[1]:.2f}x (bs1), {speedup[32]:.2f}x (bs32)")
    checks = {
        "student within 1.0 pt of the fine-tuned teacher":
            acc["student-int8"] >= acc["teacher-fp32"] - 1.0,
        "student >= 2x faster than teacher int8 (bs1 and bs32)":
            min(speedup.values()) >= 2.0,
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return {"accuracy": acc, "latency": table, "speedup": speedup, "checks": checks,
            "layers": pruned.meta["prune"]["kept_layers"],
            "intermediate_size": pruned.meta["prune"]["intermediate_size"],
            "distill": {k: student.meta["distill"][k]
                        for k in ("steps", "best_dev", "stopped", "wall_s")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="leaves DIR/student.onnx (+ tokenizer) and DIR/result.json")
    parser.add_argument("--optimum-python", help="a Python with optimum-onnx[onnxruntime]")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--part", choices=("all", "embedding", "classification"),
                        default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3, help="student depth (of 6)")
    parser.add_argument("--ffn-keep", type=float, default=1.0)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--budget-min", type=float, default=40.0)
    parser.add_argument("--cls-layers", type=int, default=3)
    parser.add_argument("--cls-ffn-keep", type=float, default=0.75)
    parser.add_argument("--cls-epochs", type=float, default=3.0)
    parser.add_argument("--sst2-finetune", type=int, default=20000,
                        help="SST-2 training sentences the teacher is fine-tuned on")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(HERE))
    for needed in ("stsb/sts-train.csv", "sst2/train.tsv", "sst2/dev.tsv"):
        if not (args.data_dir / needed).is_file():
            sys.exit(f"{args.data_dir / needed} not found: pass --data-dir (STS-B and SST-2).")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if args.part in ("all", "embedding"):
        result["embedding"] = embedding_part(args, args.out)
    if args.part in ("all", "classification"):
        result["classification"] = classification_part(args, args.out)
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    ok = all(all(part["checks"].values()) for part in result.values())
    print(f"\n{'ALL PASS' if ok else 'SOME CHECKS FAILED'}; record: {args.out / 'result.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
