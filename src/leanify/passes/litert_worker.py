"""The TFLite export itself, run by the exporter's own interpreter (.venv-litert, see
envs/litert.in): a torch.export archive in, a .tflite file out, quantized with
ai-edge-quantizer when asked. It imports nothing of leanify (that environment does not have
it) and nothing heavy at module level (leanify's pass discovery imports this module).

    python litert_worker.py PROGRAM.pt2 SAMPLE.npz OUT.tflite [--quantize none|dynamic|full]
        [--calibration CALIB.npz] [--channel-last]

SAMPLE.npz holds the example inputs in argument order (arg_0, arg_1 ...); CALIB.npz holds
calibration rows the same way, each array stacked along a first axis of rows. The last line
on stdout is JSON: {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("program")
    parser.add_argument("sample")
    parser.add_argument("out")
    parser.add_argument("--quantize", choices=("none", "dynamic", "full"), default="none")
    parser.add_argument("--calibration")
    parser.add_argument("--channel-last", action="store_true")
    args = parser.parse_args(argv)
    try:
        facts = _export(args)
    except Exception as exc:  # the parent turns this into a clear error naming the model
        text = str(exc).strip().splitlines()
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: "
                                                f"{text[0] if text else ''}"[:2000]}))
        return 1
    print(json.dumps({"ok": True, **facts}))
    return 0


def _export(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import litert_torch

    program = torch.export.load(args.program)
    module = program.module()
    with np.load(args.sample) as sample:
        example = tuple(torch.from_numpy(sample[f"arg_{i}"]) for i in range(len(sample.files)))
    if args.channel_last:  # NCHW image inputs become NHWC, as mobile pipelines feed them
        module = litert_torch.to_channel_last_io(module, args=list(range(len(example))))
        example = tuple(t.permute(0, 2, 3, 1).contiguous() for t in example)
    floating = args.out if args.quantize == "none" else args.out + ".float.tflite"
    litert_torch.convert(module, example).export(floating)  # exported in eval mode already
    if args.quantize == "none":
        return {"quantize": "none"}
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(floating)
    if args.quantize == "dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = qt.quantize(enable_progress_report=False)
    else:
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        rows = _calibration_rows(floating, args.calibration, args.channel_last)
        result = qt.quantize(qt.calibrate({"serving_default": rows}),
                             enable_progress_report=False)
    result.export_model(args.out, overwrite=True)
    os.remove(floating)
    return {"quantize": args.quantize}


def _calibration_rows(floating: str, path: str | None, channel_last: bool) -> list[dict]:
    """One dict per calibration row, keyed by the float model's input names."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    if not path:
        raise ValueError("full-integer quantization needs calibration rows")
    names = Interpreter(model_path=floating).get_signature_list()["serving_default"]["inputs"]
    # litert-torch names the signature's inputs args_0, args_1 ... in argument order
    names = sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]) if n[-1].isdigit() else 0)
    with np.load(path) as calib:
        arrays = [calib[f"arg_{i}"] for i in range(len(calib.files))]
    if channel_last:  # the rows come as the source takes them: NCHW
        arrays = [a.transpose(0, 2, 3, 1) if a.ndim == 4 else a for a in arrays]
    return [{name: a[i:i + 1] for name, a in zip(names, arrays, strict=True)}
            for i in range(len(arrays[0]))]


if __name__ == "__main__":
    sys.exit(main())
