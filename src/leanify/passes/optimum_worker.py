"""The LLM export itself, run by the exporter's own interpreter (.venv-optimum, see
envs/optimum.in): a Hugging Face causal-LM folder in, an OpenVINO GenAI folder out (stateful
IR with int8 or int4 weights by NNCF, config, tokenizer and its OpenVINO conversion). It
imports nothing of leanify (that environment does not have it) and nothing heavy at module
level (leanify's pass discovery imports this module).

    python optimum_worker.py JOB.json

JOB.json: {"source": folder, "out": folder, "weights": "int8"|"int4", "sym": bool,
"group_size": int, "ratio": float, "awq": bool, "scale_estimation": bool,
"calibration": [[token ids], ...] or null, "samples": int}. Calibration windows are decoded
back to text with the model's tokenizer: optimum-intel takes a data-aware method's dataset as
a list of strings. The last line on stdout is JSON: {"ok": true, ...} or {"ok": false, ...}.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        with open(args[0], encoding="utf-8") as f:
            job = json.load(f)
        facts = _export(job)
    except Exception as exc:  # the parent turns this into a clear error naming the model
        text = str(exc).strip().splitlines()
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: "
                                                f"{text[0] if text else ''}"[:2000]}))
        return 1
    print(json.dumps({"ok": True, **facts}))
    return 0


def _export(job: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never the network
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    from transformers import AutoTokenizer

    start = time.monotonic()
    source, out = job["source"], job["out"]
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    dataset = None
    if job.get("calibration"):
        dataset = [tokenizer.decode(ids) for ids in job["calibration"]]
    kwargs: dict = {"bits": 8 if job["weights"] == "int8" else 4, "sym": bool(job["sym"])}
    if job["weights"] == "int4":
        kwargs.update(group_size=int(job["group_size"]), ratio=float(job["ratio"]))
    if dataset:
        kwargs.update(dataset=dataset, num_samples=min(int(job["samples"]), len(dataset)),
                      awq=bool(job.get("awq")), scale_estimation=bool(job.get("scale_estimation")))
    config = OVWeightQuantizationConfig(**kwargs)
    model = OVModelForCausalLM.from_pretrained(source, export=True, compile=False,
                                               quantization_config=config,
                                               trust_remote_code=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(encoder, os.path.join(out, "openvino_tokenizer.xml"))
    ov.save_model(decoder, os.path.join(out, "openvino_detokenizer.xml"))
    from importlib.metadata import version

    return {"seconds": round(time.monotonic() - start, 1), "calibration_texts": len(dataset or []),
            "optimum_intel": version("optimum-intel"), "transformers": version("transformers")}


if __name__ == "__main__":
    sys.exit(main())
