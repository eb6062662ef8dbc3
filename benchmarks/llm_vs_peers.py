"""leanify's LLM selection against the anchors, side by side, 2 threads (issue: LLMs).

    python benchmarks/llm_vs_peers.py --leanify-run out/llm      # after `make demo-llm`

Builds, each in its own environment, from the same SmolLM2-135M (the packaged GGUF and its
fp32 safetensors conversion):
- OpenVINO GenAI on the documented export: `optimum-cli export openvino --weight-format int4
  --group-size 64 --sym` (.venv-optimum, as `make optimum-env` builds it);
- ONNX Runtime GenAI on its model builder's `-p int4 -e cpu` (.venv-ortgenai: onnxruntime-genai,
  onnx_ir, onnx, transformers, CPU torch; --ort-genai-python);
- llama.cpp on the packaged Q4_1 GGUF (llama-cpp-python built from source:
  `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36` in .venv-llamacpp;
  --llamacpp-python);
- PyTorch fp32 (the dequantized GGUF), the baseline for perplexity and memory.

Every model runs in its own process (benchmarks/llm_child.py, which imports no leanify): the
selection too, with the settings in its sidecar. Rounds are interleaved (each round gives every
model the same fresh prompts, windows of Tiny Shakespeare never used before in the run, so no
prefix cache hits) and greedy decoding makes exactly --new-tokens tokens. Reported: time to
first token, decode tokens/s (tokens after the first / time after the first), peak RSS (VmHWM
of the process, load included) and perplexity on examples/data/shakespeare/demo.txt (windows of
512, stride 256, the Hugging Face protocol), computed here from each runtime's full logits.
Acceptance (the issue's): selected decode >= 1.25x the fastest anchor's, time to first token
<= 0.8x the fastest anchor's, perplexity within +3% of fp32's, peak RSS <= half of fp32's.
Exit code 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("llm_child.py")
HELD_OUT = ROOT / "examples" / "data" / "shakespeare" / "demo.txt"
PROMPT_TEXT = ROOT / "src" / "leanify" / "data" / "sample_texts.txt"  # disjoint from HELD_OUT
ANCHORS = ("openvino-genai int4 (optimum-cli)", "ort-genai int4 (builder)",
           "llama.cpp Q4_1 (packaged)")


def sh(argv: list[str], **kw) -> None:
    print("  $", " ".join(map(str, argv)), flush=True)
    subprocess.run(argv, check=True, **kw)


def smollm2_paths() -> tuple[Path, Path]:
    """(packaged GGUF, its fp32 safetensors folder), through leanify's loader (this parent
    process may import leanify; the timed children never do)."""
    from leanify.models.load import load

    art = load("smollm2")
    return Path(art.meta["source_file"]), Path(art.path)


def build_ov_anchor(folder: Path, work: Path, python: Path) -> Path:
    out = work / "ov-int4-sym-g64"
    if not (out / "openvino_model.xml").is_file():
        cli = python.parent / "optimum-cli"
        sh([str(cli), "export", "openvino", "--model", str(folder), "--task",
            "text-generation-with-past", "--weight-format", "int4", "--group-size", "64",
            "--sym", str(out)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def build_ort_anchor(folder: Path, work: Path, python: Path) -> Path:
    out = work / "ort-genai-int4"
    if not (out / "genai_config.json").is_file():
        with open(work / "ort-builder.log", "w", encoding="utf-8") as log:  # pages of progress
            sh([str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o",
                str(out), "-p", "int4", "-e", "cpu", "-c", str(work / "ort-cache")],
               env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT)
    return out


class Child:
    def __init__(self, name: str, python: Path, kind: str, model: Path, threads: int):
        self.name, self.kind = name, kind
        self.proc = subprocess.Popen([str(python), str(CHILD), kind, str(model), "--threads",
                                      str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONNOUSERSITE": "1",
                                          "OMP_NUM_THREADS": str(threads)})
        self.ready = self._read()
        self.calls: list[dict] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the child exited (see its stderr above)")
        return json.loads(line)

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def windows(ids: np.ndarray, size: int = 512, stride: int = 256):
    prev_end, out = 0, []
    for begin in range(0, len(ids), stride):
        end = min(begin + size, len(ids))
        chunk = ids[begin:end]
        targets = np.zeros(len(chunk), bool)
        targets[max(1, len(chunk) - (end - prev_end)):] = True
        out.append((chunk.tolist(), targets.astype(int).tolist()))
        prev_end = end
        if end == len(ids):
            break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leanify-run", type=Path, required=True,
                        help="the run folder of leanify optimize (its model/ is timed)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "llm-peers")
    parser.add_argument("--optimum-python", type=Path, default=ROOT / ".venv-optimum/bin/python")
    parser.add_argument("--ort-genai-python", type=Path,
                        default=ROOT / ".venv-ortgenai/bin/python")
    parser.add_argument("--llamacpp-python", type=Path,
                        default=ROOT / ".venv-llamacpp/bin/python")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per model per round")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another OpenVINO GenAI folder to time beside (e.g. a candidate)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    gguf, fp32 = smollm2_paths()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(fp32 / "tokenizer.json"))
    here = Path(sys.executable)

    print("building the anchors (cached in --work)")
    models: list[tuple[str, Path, str, Path]] = [("PyTorch fp32", here, "torch", fp32)]
    if args.optimum_python.exists():
        models.append((ANCHORS[0], here, "openvino-genai",
                       build_ov_anchor(fp32, args.work, args.optimum_python)))
    if args.ort_genai_python.exists():
        models.append((ANCHORS[1], args.ort_genai_python, "ort-genai",
                       build_ort_anchor(fp32, args.work, args.ort_genai_python)))
    if args.llamacpp_python.exists():
        models.append((ANCHORS[2], args.llamacpp_python, "llamacpp", gguf))
    selected = json.loads((args.leanify_run / "leanify.json").read_text())["selected"]
    models.append((f"leanify: {selected['name']}", here, "openvino-genai",
                   args.leanify_run / "model"))
    for extra in args.also:
        models.append((f"also: {extra.name}", here, "openvino-genai", extra))
    missing = [a for a in ANCHORS if a not in [m[0] for m in models]]

    text = PROMPT_TEXT.read_text(encoding="utf-8")
    prompt_ids = np.asarray(tok.encode(text, add_special_tokens=False).ids)
    need = args.rounds * args.prompts
    step = (len(prompt_ids) - args.prompt_tokens) // max(need, 1)
    assert step >= args.prompt_tokens // 4, "the prompt text is too short for that many prompts"

    children = [Child(n, py, kind, path, args.threads) for n, py, kind, path in models]
    print(f"timing: {args.rounds} rounds x {args.prompts} prompts of {args.prompt_tokens} "
          f"tokens, {args.new_tokens} new, {args.threads} threads; load avg "
          f"{os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        order = children if r % 2 == 0 else children[::-1]
        for child in order:
            for p in range(args.prompts):
                k = r * args.prompts + p
                ids = prompt_ids[k * step:k * step + args.prompt_tokens].tolist()
                reply = child.ask({"cmd": "generate", "ids": ids,
                                   "new_tokens": args.new_tokens})
                reply["round"] = r
                child.calls.append(reply)
        print(f"  round {r + 1} done", flush=True)

    # leanify's perplexity reads a text file's non-empty lines and joins them with newlines
    lines = [ln for ln in HELD_OUT.read_text(encoding="utf-8").splitlines() if ln.strip()]
    held = np.asarray(tok.encode("\n".join(lines), add_special_tokens=False).ids)
    wins = windows(held)
    rows = []
    for child in children:
        ttft = [c["token_ms"][0] for c in child.calls]
        decode = [(len(c["token_ms"]) - 1) * 1000 / (c["token_ms"][-1] - c["token_ms"][0])
                  for c in child.calls]
        ppl = None
        if child.kind != "ort-genai":
            t0 = time.time()
            out = child.ask({"cmd": "nll", "windows": [w for w, _ in wins],
                             "targets": [t for _, t in wins]})
            ppl = float(np.exp(out["nll"] / out["count"]))
            print(f"  perplexity of {child.name}: {ppl:.3f} ({time.time() - t0:.0f} s)")
        rows.append({"model": child.name, "ttft_ms": float(np.median(ttft)),
                     "ttft_spread": [float(min(ttft)), float(max(ttft))],
                     "decode_tok_s": float(np.median(decode)),
                     "decode_spread": [float(min(decode)), float(max(decode))],
                     "peak_rss_mb": max(c["peak_rss_mb"] for c in child.calls),
                     "load_s": child.ready["load_s"], "perplexity": ppl,
                     "tokens_first_call": child.calls[0]["tokens"][:16]})
        child.close()

    base = rows[0]
    print(f"\n{'model':42} {'TTFT ms':>9} {'decode tok/s':>13} {'peak RSS MB':>12} "
          f"{'perplexity':>11}")
    for row in rows:
        ppl = f"{row['perplexity']:.3f}" if row["perplexity"] else "n/a"
        rel = f" ({100 * (row['perplexity'] / base['perplexity'] - 1):+.1f}%)" \
            if row["perplexity"] and base["perplexity"] else ""
        print(f"{row['model']:42} {row['ttft_ms']:9.1f} {row['decode_tok_s']:13.1f} "
              f"{row['peak_rss_mb']:12.0f} {ppl:>11}{rel}")
    sel = next(r for r in rows if r["model"].startswith("leanify:"))
    anchors = [r for r in rows if r["model"] in ANCHORS]
    checks = []
    if anchors:
        fastest_decode = max(anchors, key=lambda r: r["decode_tok_s"])
        fastest_ttft = min(anchors, key=lambda r: r["ttft_ms"])
        d = sel["decode_tok_s"] / fastest_decode["decode_tok_s"]
        t = sel["ttft_ms"] / fastest_ttft["ttft_ms"]
        checks += [(f"decode {d:.2f}x the fastest anchor's ({fastest_decode['model']})",
                    d >= 1.25),
                   (f"time to first token {t:.2f}x the fastest anchor's "
                    f"({fastest_ttft['model']})", t <= 0.8)]
    p = sel["perplexity"] / base["perplexity"] - 1
    m = sel["peak_rss_mb"] / base["peak_rss_mb"]
    record = json.loads((args.leanify_run / "leanify.json").read_text())
    details = record["baseline"]["metric"]["details"]
    if details.get("window") == 512 and Path(str(record["data"])).resolve() == \
            HELD_OUT.resolve():  # the same text and windows: leanify's own fp32 perplexity
        agree = record["baseline"]["metric"]["value"] / base["perplexity"] - 1
        checks.append((f"leanify's fp32 perplexity {record['baseline']['metric']['value']:.3f} "
                       f"vs this script's {base['perplexity']:.3f} ({100 * agree:+.2f}%)",
                       abs(agree) <= 0.01))
    checks += [(f"perplexity {100 * p:+.2f}% vs fp32", p <= 0.03),
               (f"peak RSS {m:.2f}x fp32's", m <= 0.5)]
    print()
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    if missing:
        print(f"FAIL  anchors not built (environment missing): {', '.join(missing)}")
    (args.work / "result.json").write_text(json.dumps({"rows": rows, "checks": [
        {"check": label, "pass": ok} for label, ok in checks], "missing": missing}, indent=1))
    return 0 if all(ok for _, ok in checks) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
