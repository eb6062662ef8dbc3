"""Post-training channel pruning of an ONNX CNN, with least-squares reconstruction.

The channels pruned are the inner ones of a convolution pair A -> [batch norm] ->
activation -> B (a ResNet basic block's conv1 -> ReLU -> conv2, a bottleneck's 1x1 -> 3x3,
a VGG stack): removing output channel c of A removes input channel c of B and touches
nothing else, so residual adds, concats and the model's outputs keep their shapes.

Each pair keeps the channels that span most of B's input on the user's images (pivoted
Cholesky of the channels' second moments, weighted by B's weights: a channel that repeats
kept ones adds nothing), then B's weights and bias are refitted by least squares so that B's
output on those images matches the original model's (He et al., "Channel Pruning for
Accelerating Very Deep Neural Networks", 2017, without its LASSO step). Pairs are done in
order, each fitted on the inputs the already-pruned model gives it, so errors do not pile
up. No gradient step and no labels: calibration images only, as for static int8.

Graphs this does not understand (grouped or depthwise convolutions, auto_pad, shared
weights, an activation read twice) are left as they are: those pairs are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.runtimes.onnxruntime import session

# elementwise, one input: channel c of the output depends on channel c of the input only
ELEMENTWISE = ("Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh",
               "Elu", "Selu", "Gelu", "Softplus", "Mish")


@dataclass
class PairReport:
    producer: str
    consumer: str
    channels_before: int
    channels_after: int
    rel_error: float  # ||B' - B|| / ||B|| of the consumer's output on the calibration images


@dataclass
class OnnxPruneSummary:
    keep: float
    round_to: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    calibration_images: int
    pairs: list[PairReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def macs_kept(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs_kept": round(self.macs_kept, 4)}

    def text(self) -> str:
        worst = max((p.rel_error for p in self.pairs), default=0.0)
        return (f"pruned {len(self.pairs)} convolution pairs to {self.keep:.0%} of their inner "
                f"channels: MACs {self.macs_before / 1e6:.0f}M -> {self.macs_after / 1e6:.0f}M "
                f"({self.macs_kept:.0%}), parameters {self.params_before / 1e6:.2f}M -> "
                f"{self.params_after / 1e6:.2f}M; worst refit error {worst:.3f}")


# --- the graph ---------------------------------------------------------------------------


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _initializers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def _uses(model: Any) -> dict[str, list[Any]]:
    uses: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    return uses


def _plain_conv(node: Any, inits: Mapping[str, Any], uses: Mapping[str, list]) -> str | None:
    """Why `node` is not a convolution this module can edit (None: it is)."""
    if node.op_type != "Conv":
        return f"{node.op_type} is not a Conv"
    attrs = _attrs(node)
    if attrs.get("group", 1) != 1:
        return "grouped convolution"
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "auto_pad"
    if len(node.input) < 2 or node.input[1] not in inits:
        return "weights are not a constant"
    if len(inits[node.input[1]].dims) != 4:
        return "not a 2-D convolution"
    for name in node.input[1:]:
        if name and (name not in inits or len(uses.get(name, [])) != 1):
            return "weights shared with another node"
    return None


def find_pairs(model: Any) -> tuple[list[tuple[Any, list[Any], Any]], list[str]]:
    """(A, the nodes between, B) in graph order: A -> [BatchNormalization] -> activation -> B,
    each read by the next only; and why other such chains were skipped."""
    inits = _initializers(model)
    uses = _uses(model)
    outputs = {o.name for o in model.graph.output}

    def only_use(node: Any) -> Any:
        readers = uses.get(node.output[0], [])
        return readers[0] if len(readers) == 1 and node.output[0] not in outputs else None

    pairs, skipped = [], []
    for a in model.graph.node:
        if a.op_type != "Conv" or _plain_conv(a, inits, uses):
            continue
        between, node = [], only_use(a)
        if node is not None and node.op_type == "BatchNormalization" and all(
                n in inits and len(uses.get(n, [])) == 1 for n in node.input[1:5]) \
                and len(node.output) == 1:
            between, node = [node], only_use(node)
        if node is None or node.op_type not in ELEMENTWISE or any(
                n and n not in inits for n in node.input[1:]):
            continue  # not an elementwise activation (or a Clip bound computed at run time)
        between.append(node)
        b = only_use(node)
        if b is None or b.op_type != "Conv":
            continue
        why = _plain_conv(b, inits, uses) or (None if b.input[0] == node.output[0] else
                                               "the activation is not its data input")
        if why:
            skipped.append(f"{a.name} -> {b.name}: {why}")
            continue
        pairs.append((a, between, b))
    return pairs, skipped


def conv_macs(model: Any) -> dict[str, int]:
    """Multiply-accumulates per Conv / Gemm / MatMul node for ONE image (shapes inferred with
    the batch dimension taken as 1)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(probe)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.dim_value for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits and node.output[0] in shapes:
            per_output = int(np.prod(inits[node.input[1]].dims[1:]))
            out[node.name or node.output[0]] = per_output * int(np.prod(shapes[node.output[0]]))
        elif node.op_type in ("Gemm", "MatMul") and node.output[0] in shapes:
            weight = next((inits[n] for n in node.input[1:2] if n in inits), None)
            if weight is not None and len(weight.dims) == 2:
                k = weight.dims[1] if node.op_type == "Gemm" and _attrs(node).get("transB") \
                    else weight.dims[0]
                out[node.name or node.output[0]] = int(k) * int(np.prod(shapes[node.output[0]]))
    return out


def convolution_summary(model: Any, top: int = 5) -> dict[str, Any] | None:
    """Where a CNN's multiply-accumulates are, and how many sit in convolution pairs this
    module can prune (the doctor's view); None for a graph without convolutions."""
    macs = conv_macs(model)
    convs = {n.name or n.output[0]: n for n in model.graph.node if n.op_type == "Conv"}
    if not convs or not macs:
        return None
    pairs, _ = find_pairs(model)
    in_pairs = {name for a, _mid, b in pairs for name in (a.name or a.output[0],
                                                           b.name or b.output[0])}
    total = sum(macs.values())
    largest = sorted(macs.items(), key=lambda kv: -kv[1])[:top]
    return {"macs_per_image": total,
            "conv_share": round(sum(v for k, v in macs.items() if k in convs) / total, 4),
            "pairs": len(pairs),
            "pair_share": round(sum(macs.get(k, 0) for k in in_pairs) / total, 4),
            "largest": [{"node": k, "macs": v, "share": round(v / total, 4),
                         "in_pair": k in in_pairs} for k, v in largest]}


# --- the fit -----------------------------------------------------------------------------


def _with_outputs(model: Any, names: Iterable[str]) -> bytes:
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return probe.SerializeToString()


def _patches(x: Any, kernel: tuple[int, int], attrs: Mapping[str, Any]) -> Any:
    """im2col of NCHW `x` for a Conv with these attributes: [N * L, C * kh * kw]."""
    import torch

    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    x = torch.nn.functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    cols = torch.nn.functional.unfold(x, kernel, dilation=tuple(attrs.get("dilations", (1, 1))),
                                      stride=tuple(attrs.get("strides", (1, 1))))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def prune_onnx_channels(model: Any, calibration: Iterable[Mapping[str, np.ndarray]], *,
                        keep: float = 0.5, round_to: int = 8, max_images: int = 256,
                        ridge: float = 1e-3, threads: int | None = None,
                        log: Any = None) -> tuple[Any, OnnxPruneSummary]:
    """A pruned copy of `model` (an onnx.ModelProto, weights loaded) and what was done.

    `keep`: the share of each pair's inner channels kept (rounded up to `round_to`);
    `calibration`: the user's input batches, read until `max_images` rows (whole batches).
    """
    import onnx
    import torch

    if not 0 < keep < 1:
        raise LeanifyError(f"keep must be between 0 and 1 (exclusive), not {keep}.",
                           fix="Use e.g. keep=0.5 to keep half the inner channels.")
    batches, rows = [], 0
    for batch in calibration:
        batches.append(dict(batch))
        rows += len(next(iter(batch.values())))
        if rows >= max_images:
            break
    if not batches:
        raise LeanifyError("channel pruning needs calibration images; there were none.",
                           fix="Give calibration images (--calibration-data, or more --data).")
    original = model  # read only: the statistics' reference; the copy below is edited
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    pairs, skipped = find_pairs(pruned)
    macs_before = sum(conv_macs(original).values())
    params_before = sum(int(np.prod(t.dims)) for t in original.graph.initializer)
    reference = session(_with_outputs(original, [b.output[0] for _a, _mid, b in pairs]),
                         threads)
    reports: list[PairReport] = []
    torch_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for a, between, b in pairs:
            report = _prune_pair(pruned, reference, a, between, b, batches, keep, round_to, ridge,
                                 threads)
            if report is not None:
                reports.append(report)
                if log:
                    log(f"  {a.name} -> {b.name}: {report.channels_before} -> "
                        f"{report.channels_after} channels, refit error {report.rel_error:.3f}")
    finally:
        torch.set_num_threads(torch_threads)
    del pruned.graph.value_info[:]  # the exporter's recorded shapes hold the old widths
    pruned = onnx.shape_inference.infer_shapes(pruned, strict_mode=True)
    onnx.checker.check_model(pruned)
    summary = OnnxPruneSummary(
        keep=keep, round_to=round_to, macs_before=macs_before,
        macs_after=sum(conv_macs(pruned).values()), params_before=params_before,
        params_after=sum(int(np.prod(t.dims)) for t in pruned.graph.initializer),
        calibration_images=rows, pairs=reports, skipped=skipped)
    return pruned, summary


def _prune_pair(model: Any, reference: Any, a: Any, between: list[Any], b: Any,
                batches: list[dict],
                keep: float, round_to: int, ridge: float,
                threads: int | None) -> PairReport | None:
    import torch
    from onnx import numpy_helper

    inits = _initializers(model)
    w_a = numpy_helper.to_array(inits[a.input[1]])
    w_b = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
    c = w_a.shape[0]
    k = min(c, max(round_to or 1, int(np.ceil(c * keep / (round_to or 1))) * (round_to or 1)))
    if k >= c or w_b.shape[1] != c:
        return None
    attrs = _attrs(b)
    kernel = tuple(w_b.shape[2:])
    act = between[-1]
    current = session(_with_outputs(model, [act.output[0]]), threads)
    # 1. which channels: the k that span most of B's input, weighted by B's use of each
    xs, second = [], np.zeros((c, c))
    for batch in batches:
        x = current.run([act.output[0]], _inputs(current, batch))[0]
        xs.append(x)
        flat = x.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64)
        second += flat @ flat.T
    weight_norm = np.sqrt(np.square(w_b).sum(axis=(0, 2, 3)))
    kept = np.sort(pivoted_selection(second * np.outer(weight_norm, weight_norm), k))
    # 2. refit B on the kept channels: least squares against the original model's B output
    dim = k * kernel[0] * kernel[1] + 1
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    cross = torch.zeros(dim, w_b.shape[0], dtype=torch.float64)
    target_sq = 0.0
    for x, batch in zip(xs, batches, strict=True):
        y = reference.run([b.output[0]], _inputs(reference, batch))[0]
        p = _patches(torch.from_numpy(np.ascontiguousarray(x[:, kept])), kernel, attrs)
        p = torch.cat([p, torch.ones(len(p), 1)], dim=1).double()
        t = torch.from_numpy(y).permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
        gram += p.T @ p
        cross += p.T @ t
        target_sq += float((t * t).sum())
    damp = ridge * float(torch.diagonal(gram).mean())
    solution = torch.linalg.solve(gram + damp * torch.eye(dim, dtype=torch.float64), cross)
    weight = solution[:-1].T.reshape(w_b.shape[0], k, *kernel).numpy()
    bias = solution[-1].numpy()
    # residual of the fit: ||P W - T||^2 = T'T - 2 W'P'T + W'P'P W
    resid = target_sq - 2 * float((solution * cross).sum()) + float(
        (solution * (gram @ solution)).sum())
    rel_error = float(np.sqrt(max(resid, 0.0) / max(target_sq, 1e-30)))
    # 3. write both convolutions
    _set(model, a.input[1], w_a[kept])
    per_channel = [a.input[2]] if len(a.input) > 2 and a.input[2] else []
    per_channel += [n for node in between if node.op_type == "BatchNormalization"
                    for n in node.input[1:5]]
    for name in per_channel:  # A's bias, the batch norm's scale, shift, mean and variance
        _set(model, name, numpy_helper.to_array(inits[name])[kept])
    _set(model, b.input[1], weight.astype(np.float32))
    if len(b.input) > 2 and b.input[2]:
        _set(model, b.input[2], bias.astype(np.float32))
    else:
        name = f"{b.input[1]}_refit_bias"
        model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), name))
        if len(b.input) == 2:
            b.input.append(name)
        else:
            b.input[2] = name
    return PairReport(a.name, b.name, c, k, round(rel_error, 5))


def pivoted_selection(gram: np.ndarray, k: int) -> np.ndarray:
    """k column indices by pivoted Cholesky of a Gram matrix: each step takes the channel
    with the most energy left after projecting out those already taken, so a channel that
    repeats (or mixes) kept ones is never kept too, however large it is."""
    n = len(gram)
    left = np.diagonal(gram).astype(np.float64).copy()
    factor = np.zeros((n, k))
    chosen: list[int] = []
    for i in range(k):
        left[chosen] = -np.inf
        p = int(np.argmax(left))
        chosen.append(p)
        if left[p] <= 0:
            continue  # rank exhausted: the rest carry nothing new; any order will do
        column = (gram[:, p] - factor[:, :i] @ factor[p, :i]) / np.sqrt(left[p])
        factor[:, i] = column
        left = left - column ** 2
    return np.asarray(chosen)


def _inputs(session: Any, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return {n: np.ascontiguousarray(batch[n]) for n in names if n in batch}


def _set(model: Any, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise LeanifyError(f"initializer {name} vanished while pruning.", fix="Please report this.")
