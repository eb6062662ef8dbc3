"""The few lines of Python a user needs to run the selected model in their own service.

Plain onnxruntime or openvino plus the `tokenizers` package: no leanify import. The runtime
settings are the ones leanify measured with (for OpenVINO, the inference precision that
actually ran), so the snippet reproduces leanify's outputs. Paths are relative to the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanify.models.files import SIDECAR

EXAMPLE_TEXTS = ["A sentence to embed.", "Another one."]
ORT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def usage_snippet(out: Path, selected: dict[str, Any], task: str, threads: int,
                  max_length: int = 128) -> str | None:
    """Python source that loads `selected` (leanify.json's entry) and embeds / classifies two
    texts; None for formats without a plain-runtime recipe here."""
    path = selected["artifact"]
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    sidecar_file = Path(out) / folder / SIDECAR
    meta = json.loads(sidecar_file.read_text(encoding="utf-8")) if sidecar_file.is_file() else {}
    ran = selected.get("runtime_settings") or {}
    if selected["format"] == "onnx":
        head = _onnx_head(path, ran, threads)
    elif selected["format"] == "openvino":
        head = _openvino_head(path, ran, threads)
    else:
        return None
    lines = [*head, ""]
    if (Path(out) / folder / "tokenizer.json").is_file():
        lines += [
            f'tok = Tokenizer.from_file("{folder}/tokenizer.json")',
            f"tok.enable_truncation(max_length={int(max_length)})",
            "tok.enable_padding()",
        ]
    else:
        lines += ["tok = Tokenizer.from_file(\"tokenizer.json\")  # the model's own tokenizer",
                  f"tok.enable_truncation(max_length={int(max_length)})",
                  "tok.enable_padding()"]
    lines += [
        f"texts = {EXAMPLE_TEXTS!r}".replace("'", '"'),
        "enc = tok.encode_batch(texts)",
        "feeds = {",
        '    "input_ids": np.array([e.ids for e in enc], dtype=np.int64),',
        '    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),',
        '    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),',
        "}",
        "outputs = run({k: v for k, v in feeds.items() if k in wanted})",
    ]
    lines += _tail(task, meta)
    return "\n".join(lines) + "\n"


def _onnx_head(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    lines = ["import numpy as np", "import onnxruntime as ort", "from tokenizers import Tokenizer",
             "", "opts = ort.SessionOptions()",
             f"opts.intra_op_num_threads = {int(ran.get('intra_op_num_threads') or threads)}"]
    if ran.get("allow_spinning") is False:
        lines.append('opts.add_session_config_entry("session.intra_op.allow_spinning", "0")')
    level = ran.get("graph_optimization_level", "all")
    if level != "all":
        lines.append("opts.graph_optimization_level = "
                     f"ort.GraphOptimizationLevel.{ORT_LEVELS[level]}")
    lines += [f'session = ort.InferenceSession("{path}", opts, '
              'providers=["CPUExecutionProvider"])',
              "wanted = {i.name for i in session.get_inputs()}",
              "run = lambda feeds: session.run(None, feeds)[0]  # first output"]
    return lines


def _openvino_head(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    precision = ran.get("inference_precision", "f32")
    hint = ran.get("performance_hint", "LATENCY")
    multiple = int(ran.get("sequence_multiple") or 0)
    batch_streams = int(ran.get("batch_streams") or 0)
    config = [f'    "INFERENCE_PRECISION_HINT": "{precision}",  # the precision leanify measured',
              f'    "PERFORMANCE_HINT": "{hint}",',
              f'    "INFERENCE_NUM_THREADS": {int(ran.get("inference_num_threads") or threads)},']
    streams = int(ran.get("num_streams") or 1)
    if streams > 1:
        config.append(f'    "NUM_STREAMS": {streams},  # keep {streams} requests in flight '
                      "(ov.AsyncInferQueue) to use them all")
    lines = ["import numpy as np", "import openvino as ov", "from tokenizers import Tokenizer",
             ""]
    if not multiple and not batch_streams:
        return [*lines, f'model = ov.Core().compile_model("{path}", "CPU", {{', *config, "})",
                "wanted = {i.get_any_name() for i in model.inputs}",
                "run = lambda feeds: model(feeds)[model.output(0)]  # first output"]
    lines += ["core = ov.Core()", f'ir = core.read_model("{path}")', "config = {", *config, "}",
              "wanted = {i.get_any_name() for i in ir.inputs}",
              "per_token = ir.output(0).get_partial_shape()[1].is_dynamic  # [batch, seq, ...]",
              "compiled = {}", "", "",
              "def compiled_for(shape, streams):",
              "    if (shape, streams) not in compiled:",
              "        model = ir.clone()",
              "        if shape[1]:  # static shapes run faster than dynamic ones",
              "            model.reshape({p.get_any_name(): list(shape) for p in model.inputs})",
              "        settings = config",
              "        if streams:  # a batch: THROUGHPUT, one part of it per stream",
              '            settings = {**config, "PERFORMANCE_HINT": "THROUGHPUT", '
              '"NUM_STREAMS": streams}',
              '        model = core.compile_model(model, "CPU", settings)',
              "        requests = [model.create_infer_request() for _ in range(max(streams, 1))]",
              "        compiled[shape, streams] = model, requests",
              "    return compiled[shape, streams]", "", "",
              "def run(feeds):",
              '    rows, n = feeds["attention_mask"].shape']
    if multiple:
        lines += [f"    length = -(-n // {multiple}) * {multiple}  # padded to a multiple of "
                  f"{multiple} (masked: same results)",
                  "    feeds = {k: np.pad(v, ((0, 0), (0, length - n))) for k, v in "
                  "feeds.items()}",
                  "    shape = (1 if rows == 1 else -1, length)  # a single row: static batch too"]
    else:
        lines.append("    shape = (-1, 0)  # dynamic")
    if batch_streams:
        lines += ["    if rows == 1:  # latency: one request with all the threads",
                  "        model, (request,) = compiled_for(shape, 0)",
                  "        out = request.infer(feeds)[model.output(0)]",
                  f"    else:  # a batch: one part per stream ({batch_streams}), in parallel",
                  f"        model, requests = compiled_for(shape, {batch_streams})",
                  f"        parts = np.array_split(np.arange(rows), min({batch_streams}, rows))",
                  "        for request, part in zip(requests, parts):",
                  "            request.start_async({k: v[part] for k, v in feeds.items()})",
                  "        for request in requests[:len(parts)]:",
                  "            request.wait()",
                  "        out = np.concatenate([r.get_output_tensor(0).data.copy() "
                  "for r in requests[:len(parts)]])"]
    else:
        lines += ["    model, (request,) = compiled_for(shape, 0)",
                  "    out = request.infer(feeds)[model.output(0)]"]
    lines += ["    return out[:, :n] if per_token else out  # first output", ""]
    return lines


def _tail(task: str, meta: dict[str, Any]) -> list[str]:
    if task == "text-classification" or meta.get("task") == "text-classification":
        return ["", "predicted = outputs.argmax(axis=1)  # class ids (config.json: id2label)"]
    if task == "fidelity" and meta.get("task") not in ("sentence-embedding",
                                                      "feature-extraction"):
        return []
    pooling = meta.get("pooling", "mean")
    lines = [""]
    if pooling == "cls":
        lines += ["# sentence embedding: the first token's state", "emb = outputs[:, 0]"]
    else:
        if pooling != "mean":
            lines.append(f"# this model pools '{pooling}' (sentence-transformers); mean shown")
        lines += ["# sentence embedding: mean over real tokens",
                  'mask = feeds["attention_mask"][..., None]',
                  "emb = (outputs * mask).sum(1) / mask.sum(1)"]
    if meta.get("normalize"):  # as the model's own Normalize module does
        lines.append("emb /= np.linalg.norm(emb, axis=1, keepdims=True)")
    return lines
