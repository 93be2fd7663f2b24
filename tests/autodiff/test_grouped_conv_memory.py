"""Grouped / depthwise convolutions and wide pools keep the backward pass's memory to that of the forward pass
(issue 18 item 6: Hugging Face EfficientNet-B7 died with "Unable to allocate 62.5 GiB for an array with shape
(2560, 1, 2560, 2560)").

That array was the all-ones [C, 1, k, k] kernel of the AveragePool rule: HF EfficientNet pools with
``nn.AvgPool2d(hidden_dim, ceil_mode=True)``, a 2560×2560 window (hidden_dim = 2560 = the channel count) on a
19×19 map. The rule now cuts the window to the part that can reach the input.

* gradient parity of grouped Conv / ConvTranspose (C = 8, groups 2, 4, 8, strides 1 and 2, dilations 1 and 2,
  asymmetric pads) and of windows longer than the input, against torch.autograd in float64;
* peak resident memory (VmHWM) of add_gradients + ONNX Runtime session + one run on a 4096-channel depthwise conv
  (and the HF pooler), against the float32 forward pass alone, each in a fresh subprocess: printed, ratio ≤ 3;
* no initializer of the augmented graph is more than twice the original's largest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
F = torch.nn.functional

from onnxcam.exporter import add_gradients  # noqa: E402

TOLERANCE = 1e-5
CLASSES = 3


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_ch: int, size: tuple[int, int],
           classes: int = CLASSES) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [1, in_ch, *size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_gradients(model: onnx.ModelProto, image: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """(activations, gradients) of ``feat`` from the augmented model under ONNX Runtime."""
    aug = add_gradients(model, activations="feat")
    sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    acts, grads = sess.run(["activations", "gradients"], {"input": image, "class_index": np.array([cls])})
    return acts, grads


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def _head_reference(out: torch.Tensor, wf: np.ndarray, cls: int) -> torch.Tensor:
    return (out.reshape(1, -1) @ torch.from_numpy(wf).double().T)[0, cls]


# --- (a) grouped Conv / ConvTranspose parity ----------------------------------------------------------------------

CONV_CASES = [(g, s, d, pads) for g in (2, 4, 8) for s in (1, 2) for d in (1, 2)
              for pads in ([1, 0, 2, 1], [0, 2, 1, 0])]


@pytest.mark.parametrize(("group", "stride", "dilation", "pads"), CONV_CASES)
def test_grouped_conv_gradient(group: int, stride: int, dilation: int, pads: list[int]) -> None:
    rng = np.random.default_rng(group * 100 + stride * 10 + dilation)
    c, size, k = 8, (9, 10), 3
    w0 = rng.standard_normal((c, 3, 1, 1)).astype(np.float32)
    w = rng.standard_normal((c, c // group, k, k)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    out_hw = [(size[i] + pads[i] + pads[i + 2] - dilation * (k - 1) - 1) // stride + 1 for i in range(2)]
    wf = rng.standard_normal((CLASSES, c * out_hw[0] * out_hw[1])).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w0"], ["feat"]),
             helper.make_node("Conv", ["feat", "w", "b"], ["y"], group=group, kernel_shape=[k, k],
                              strides=[stride] * 2, dilations=[dilation] * 2, pads=pads),
             helper.make_node("Flatten", ["y"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "w0"), (w, "w"), (bias, "b"), (wf, "wf"))]
    image = rng.standard_normal((1, 3, *size)).astype(np.float32)
    acts, grads = _run_gradients(_model(nodes, inits, 3, size), image, 1)

    feat = torch.from_numpy(acts).double().requires_grad_(True)
    padded = F.pad(feat, (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(padded, torch.from_numpy(w).double(), torch.from_numpy(bias).double(), stride=stride,
                 dilation=dilation, groups=group)
    _head_reference(y, wf, 1).backward()
    assert feat.grad is not None
    assert _relative(grads, feat.grad.numpy()) <= TOLERANCE


@pytest.mark.parametrize(("group", "stride", "dilation", "pads"), CONV_CASES[::3])
def test_grouped_conv_transpose_gradient(group: int, stride: int, dilation: int, pads: list[int]) -> None:
    rng = np.random.default_rng(7 + group * 100 + stride * 10 + dilation)
    c, size, k = 8, (5, 6), 3
    w0 = rng.standard_normal((c, 3, 1, 1)).astype(np.float32)
    w = rng.standard_normal((c, c // group, k, k)).astype(np.float32)
    full = [(size[i] - 1) * stride + dilation * (k - 1) + 1 for i in range(2)]
    out_hw = [full[i] - pads[i] - pads[i + 2] for i in range(2)]
    wf = rng.standard_normal((CLASSES, c * out_hw[0] * out_hw[1])).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w0"], ["feat"]),
             helper.make_node("ConvTranspose", ["feat", "w"], ["y"], group=group, kernel_shape=[k, k],
                              strides=[stride] * 2, dilations=[dilation] * 2, pads=pads),
             helper.make_node("Flatten", ["y"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "w0"), (w, "w"), (wf, "wf"))]
    image = rng.standard_normal((1, 3, *size)).astype(np.float32)
    acts, grads = _run_gradients(_model(nodes, inits, 3, size), image, 2)

    feat = torch.from_numpy(acts).double().requires_grad_(True)
    y = F.conv_transpose2d(feat, torch.from_numpy(w).double(), stride=stride, dilation=dilation, groups=group)
    y = y[:, :, pads[0]:full[0] - pads[2], pads[1]:full[1] - pads[3]]
    _head_reference(y, wf, 2).backward()
    assert feat.grad is not None
    assert _relative(grads, feat.grad.numpy()) <= TOLERANCE


# --- windows longer than the input (HF EfficientNet's pooler) -----------------------------------------------------

POOL_CASES = [  # (size, kernel, stride, pads [t, l, b, r] (symmetric: torch's), ceil_mode, count_include_pad)
    ((7, 7), 64, 64, 0, 1, 1),  # HF: AvgPool2d(hidden_dim, ceil_mode=True)
    ((7, 5), 64, 64, 0, 1, 0),
    ((4, 4), 8, 2, 3, 0, 1),  # two windows per axis, each longer than pads + input
    ((4, 4), 8, 2, 3, 0, 0),
    ((5, 6), 7, 2, 3, 1, 1),  # a window just shorter than pads + input: unchanged
]


@pytest.mark.parametrize(("size", "kernel", "stride", "pad", "ceil", "include"), POOL_CASES)
def test_long_window_average_pool_gradient(size: tuple[int, int], kernel: int, stride: int, pad: int, ceil: int,
                                           include: int) -> None:
    rng = np.random.default_rng(kernel + stride + pad)
    c = 4
    w0 = rng.standard_normal((c, 3, 1, 1)).astype(np.float32)
    image = rng.standard_normal((1, 3, *size)).astype(np.float32)
    ref_pool = F.avg_pool2d(torch.zeros(1, c, *size), kernel, stride, pad, ceil_mode=bool(ceil),
                            count_include_pad=bool(include))
    wf = rng.standard_normal((CLASSES, ref_pool.numel())).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w0"], ["feat"]),
             helper.make_node("AveragePool", ["feat"], ["y"], kernel_shape=[kernel] * 2, strides=[stride] * 2,
                              pads=[pad] * 4, ceil_mode=ceil, count_include_pad=include),
             helper.make_node("Flatten", ["y"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(wf, "wf")]
    model = _model(nodes, inits, 3, size)
    aug = add_gradients(model, activations="feat")
    assert max(int(np.prod(i.dims)) for i in aug.graph.initializer) <= c * (size[0] + pad) * (size[1] + pad)
    sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, acts, grads = sess.run(["logits", "activations", "gradients"],
                                   {"input": image, "class_index": np.array([0])})

    feat = torch.from_numpy(acts).double().requires_grad_(True)
    y = F.avg_pool2d(feat, kernel, stride, pad, ceil_mode=bool(ceil), count_include_pad=bool(include))
    score = _head_reference(y, wf, 0)
    assert abs(score.item() - float(logits[0, 0])) <= 1e-4 * max(1.0, abs(score.item()))  # same pooling as ORT
    score.backward()
    assert feat.grad is not None
    assert _relative(grads, feat.grad.numpy()) <= TOLERANCE


# --- (b), (c) a 4096-channel depthwise conv: memory -------------------------------------------------------------

WIDE = 4096
WIDE_SIZE = (14, 14)


def _wide_model(kernel: int, stride: int, pool: str) -> onnx.ModelProto:
    """input [1, 3, 14, 14] → 1×1 Conv to 4096 channels (``feat``) → depthwise Conv (TF "same" pads) → pool →
    Flatten → Gemm; ``pool`` is "global" (GlobalAveragePool) or "hf" (AveragePool with a 4096-wide window,
    ceil_mode: Hugging Face EfficientNet's pooler)."""
    rng = np.random.default_rng(0)
    c, (h, w) = WIDE, WIDE_SIZE
    out = [(n + stride - 1) // stride for n in (h, w)]
    total = [max((o - 1) * stride + kernel - n, 0) for o, n in zip(out, (h, w))]
    pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    inits = [numpy_helper.from_array((rng.standard_normal((c, 3, 1, 1)) * 0.1).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((c, 1, kernel, kernel)) * 0.1).astype(np.float32), "wd"),
             numpy_helper.from_array(np.zeros(c, np.float32), "bd"),
             numpy_helper.from_array((rng.standard_normal((CLASSES, c)) * 0.01).astype(np.float32), "wf"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "bf")]
    pool_node = (helper.make_node("GlobalAveragePool", ["dw"], ["pool"]) if pool == "global" else
                 helper.make_node("AveragePool", ["dw"], ["pool"], kernel_shape=[c, c], strides=[c, c], ceil_mode=1,
                                  count_include_pad=1))
    nodes = [helper.make_node("Conv", ["input", "w0"], ["feat"]),
             helper.make_node("Conv", ["feat", "wd", "bd"], ["dw"], group=c, kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=pads),
             pool_node,
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1)]
    return _model(nodes, inits, 3, WIDE_SIZE)


_MEASURE = textwrap.dedent("""
    import json, sys
    import numpy as np, onnx, onnxruntime as ort
    from onnxcam.exporter import add_gradients

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    mode, path = sys.argv[1], sys.argv[2]
    model = onnx.load(path)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    image = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    base = status("VmRSS")
    feeds = {"input": image}
    if mode == "gradients":
        model = add_gradients(model, activations="feat")
        feeds["class_index"] = np.array([-1])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
""")


def _peak(mode: str, path: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", _MEASURE, mode, path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("kernel", "stride", "pool"), [(3, 1, "global"), (5, 2, "global"), (5, 2, "hf")])
def test_wide_depthwise_peak_memory(tmp_path, kernel: int, stride: int, pool: str) -> None:
    model = _wide_model(kernel, stride, pool)
    path = str(tmp_path / "wide.onnx")
    onnx.save(model, path)
    fwd, grad = _peak("forward", path), _peak("gradients", path)
    mib = 2.0**20
    fwd_net, grad_net = fwd["peak"] - fwd["base"], grad["peak"] - grad["base"]
    print(f"\n[{WIDE}-channel depthwise {kernel}x{kernel} stride {stride}, {pool} pool, 1x{WIDE}x14x14] "
          f"forward: peak {fwd['peak'] / mib:.1f} MiB (net {fwd_net / mib:.1f} MiB over {fwd['base'] / mib:.1f} "
          f"MiB after imports); add_gradients + session + run: peak {grad['peak'] / mib:.1f} MiB (net "
          f"{grad_net / mib:.1f} MiB over {grad['base'] / mib:.1f} MiB); ratio {grad['peak'] / fwd['peak']:.2f} "
          f"(net {grad_net / max(fwd_net, 1):.2f})")
    assert grad["peak"] <= 3 * fwd["peak"]
    assert grad_net <= 3 * max(fwd_net, 1)


@pytest.mark.parametrize(("kernel", "stride", "pool"), [(3, 1, "hf"), (5, 2, "global"), (5, 2, "hf")])
def test_wide_depthwise_initializers(kernel: int, stride: int, pool: str) -> None:
    model = _wide_model(kernel, stride, pool)
    largest = max(int(np.prod(i.dims)) for i in model.graph.initializer)
    aug = add_gradients(model, activations="feat")
    sizes = {i.name: int(np.prod(i.dims)) for i in aug.graph.initializer}
    assert max(sizes.values()) <= 2 * largest, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    backward = [n for n in aug.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name.startswith("onnxcam")]
    assert backward
    for node in backward:  # the backward keeps the depthwise form
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        assert group == WIDE, (node.op_type, group)
