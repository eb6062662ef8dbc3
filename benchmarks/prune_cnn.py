"""A pruned CNN: at least 50% fewer MACs and measured faster in ONNX Runtime.

1. Builds a small ResNet-style CNN from a config dict and trains it briefly on scikit-learn's
   digits (1,797 real 8x8 handwritten digits, upsampled to 16x16; 80/20 stratified split).
2. Prunes its channels with leanify.prune.prune_channels (Taylor importance from the training
   loss on a few labelled batches, widths rounded to multiples of 8) in steps until at most
   `--target-macs` of the MACs remain, then fine-tunes briefly.
3. Exports both with leanify's export-onnx pass (checked against PyTorch) and measures both
   with leanify.measure.bench: each model in its own process, rounds interleaved, warm-up
   excluded; ratios come from one sitting.
4. Also reports, on the same data: unstructured magnitude pruning (compressed size, accuracy;
   no dense speed-up is claimed) and low-rank factorization of a digits MLP (per-layer
   decisions from measured layer timings).

    python benchmarks/prune_cnn.py [--out DIR] [--target-macs 0.45] [--epochs 4]

Prints the MACs ratio, the latency ratios and the accuracies; exits 1 when the pruned model
keeps more than half of the MACs or is not faster at every measured batch size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = {"widths": [32, 64, 128], "size": 16, "classes": 10}


def build(config: dict[str, Any]):
    """Stem conv, then per width: a strided conv (downsampling after the first) + a residual
    block (conv-BN-ReLU-conv-BN + identity), global average pool, linear head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    layers: list[nn.Module] = []
    c_in = 1
    for i, width in enumerate(config["widths"]):
        layers += [nn.Conv2d(c_in, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(), Block(width)]
        c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, config["classes"])]
    return nn.Sequential(*layers)


def digits(size: int):
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False)
    y = torch.from_numpy(data.target).long()
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0,
                                           stratify=data.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train(model, x, y, epochs: int, lr: float = 3e-3, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def export(model, example, work: Path, name: str) -> Path:
    from leanify.models.load import load
    from leanify.passes.registry import PassContext, apply, make_config

    artifact = load(model, example_inputs=(example,), name=name)
    ctx = PassContext(work_dir=work / name)
    return apply(artifact, make_config("export-onnx"), ctx).path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the ONNX models here")
    parser.add_argument("--target-macs", type=float, default=0.45,
                        help="fraction of the MACs the pruned model may keep")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,64")
    args = parser.parse_args(argv)

    import torch

    from leanify.measure.bench import BenchSettings, bench
    from leanify.prune import factorize_linears, prune_channels, prune_unstructured

    torch.manual_seed(0)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = digits(CONFIG["size"])
    model = build(CONFIG)
    train(model, x_train, y_train, args.epochs)
    acc_base = accuracy(model, x_test, y_test)
    print(f"baseline CNN {CONFIG}: test accuracy {acc_base:.2f}% "
          f"({len(x_train)} train / {len(x_test)} test digits)")

    example = x_test[:1]
    labelled = [(x_train[i:i + 64], y_train[i:i + 64]) for i in range(0, 256, 64)]
    pruned, summary = prune_channels(
        model, example, importance="taylor", target_macs=args.target_macs, round_to=8,
        calibration=labelled,
        loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
    )
    acc_pruned_raw = accuracy(pruned, x_test, y_test)
    train(pruned, x_train, y_train, args.finetune_epochs, lr=1e-3, seed=1)
    acc_pruned = accuracy(pruned, x_test, y_test)
    print(summary.text())
    print(f"pruned: accuracy {acc_pruned_raw:.2f}% right after pruning, {acc_pruned:.2f}% "
          f"after {args.finetune_epochs} fine-tuning epochs")

    with tempfile.TemporaryDirectory(prefix="leanify-prune-cnn-") as scratch:
        work = args.out or Path(scratch)
        base_onnx = export(model, example, work, "cnn")
        pruned_onnx = export(pruned, example, work, "cnn-pruned")
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        record = bench([base_onnx, pruned_onnx],
                       BenchSettings(batch_sizes=sizes, seq_lens=[1], rounds=3))
    speedups = {}
    for row in record["results"]:
        if row.get("vs_baseline"):
            speedups[row["batch_size"]] = row["vs_baseline"]
    busy = max(record["machine"].get("cpu_busy_before") or 0,
               record["machine"].get("cpu_busy_after") or 0)

    # Unstructured sparsity: a size story, not a speed story.
    sparse, sp = prune_unstructured(model, 0.8)
    acc_sparse = accuracy(sparse, x_test, y_test)

    # Low-rank: an MLP on the raw 8x8 digits, where Linear layers carry the compute.
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 10))
    small = torch.nn.functional.interpolate(x_train, size=(8, 8), mode="area")
    small_test = torch.nn.functional.interpolate(x_test, size=(8, 8), mode="area")
    train(mlp, small, y_train, args.epochs)
    factored, decisions = factorize_linears(mlp, small_test[:64], energy=0.9)
    acc_mlp, acc_mlp_lr = accuracy(mlp, small_test, y_test), accuracy(factored, small_test,
                                                                       y_test)

    print()
    print(f"MACs per image: {summary.macs_before / len(example):,.0f} -> "
          f"{summary.macs_after / len(example):,.0f} (ratio {summary.macs_kept:.3f}); params "
          f"{summary.params_before:,} -> {summary.params_after:,} ({summary.params_kept:.3f})")
    for bs, vs in sorted(speedups.items()):
        lo, hi = vs.get("speedup_ci95") or (None, None)
        ci = f" (95% CI {lo:.2f}-{hi:.2f})" if lo is not None else ""
        print(f"ONNX Runtime batch {bs}: latency ratio {vs['latency_ratio']:.3f}, speed-up "
              f"{vs['speedup']:.2f}x{ci}")
    print(f"accuracy: baseline {acc_base:.2f}%, pruned + fine-tuned {acc_pruned:.2f}%")
    print(f"unstructured 80%: measured sparsity {sp.sparsity:.1%}, gzip size "
          f"{sp.gzip_bytes_before:,} -> {sp.gzip_bytes_after:,} bytes "
          f"(x{sp.compressed_ratio:.2f}), accuracy {acc_sparse:.2f}% (no fine-tuning); "
          f"{sp.note}")
    for d in decisions:
        print(f"low-rank MLP layer {d.layer} {d.shape[0]}x{d.shape[1]}: rank {d.rank}, "
              f"error {d.error:.3f}, {'factorized' if d.kept else 'dense'} ({d.reason})")
    print(f"low-rank MLP accuracy {acc_mlp:.2f}% -> {acc_mlp_lr:.2f}%")
    if busy > 0.25:
        print(f"warning: other processes used {busy:.0%} of the CPU: quote ratios, or rerun")
    print(f"wall time {time.perf_counter() - started:.0f} s")

    ok = summary.macs_kept <= 0.5 and speedups and all(v["speedup"] > 1.0
                                                       for v in speedups.values())
    print("ACCEPTANCE", "PASS" if ok else "FAIL",
          "(>= 50% fewer MACs and faster in ONNX Runtime at every batch size)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

