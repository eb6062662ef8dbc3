"""Score an ONNX sentence-embedding model on STS-B test with plain onnxruntime, no leanify.

An independent check of what `leanify optimize` reports: mean pooling over real tokens,
L2-normalised, cosine similarity, Spearman x100 against the gold scores, max_length 128.

    python benchmarks/score_stsb_onnx.py out/minilm/model/model.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.stats import spearmanr
from tokenizers import Tokenizer

STSB_TEST = Path(__file__).resolve().parents[1] / "examples" / "data" / "stsb" / "sts-test.csv"


def main(model: Path) -> float:
    lines = STSB_TEST.read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines if line.strip()]
    gold = [float(r[4]) for r in rows]
    tok = Tokenizer.from_file(str(model.parent / "tokenizer.json"))
    tok.enable_truncation(max_length=128)
    tok.enable_padding()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 32):
            enc = tok.encode_batch(texts[i:i + 32])
            feeds = {
                "input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
            }
            hidden = session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]
            mask = feeds["attention_mask"][..., None]
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out)

    a, b = embed([r[5] for r in rows]), embed([r[6] for r in rows])
    score = 100 * spearmanr((a * b).sum(1), gold).correlation
    print(f"{len(rows)} pairs; STS-B test Spearman x100: {score:.2f}")
    return score


if __name__ == "__main__":
    main(Path(sys.argv[1]))
