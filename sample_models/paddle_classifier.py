"""A real PaddlePaddle classifier converted by paddle2onnx, and Paddle's own reference gradients for it.

The model is ``paddle.vision.models.mobilenet_v3_small(scale=0.5, num_classes=10)`` (depthwise 3x3/5x5
convolutions, Hardswish, squeeze-and-excitation with Hardsigmoid, residual adds) with seeded random weights.
Its batch norms are calibrated on one random batch (running mean and variance set to that batch's statistics)
and given random affine parameters, so that activations keep a trained network's scale. Like a PaddleClas
inference model it ends in a Softmax, so the ONNX output is a probability and the class score is the Softmax's
input.

It is saved with ``paddle.jit.save`` under ``InputSpec([None, 3, None, None])`` and converted with paddle2onnx
(opset 17, no constant folding), so the ONNX image input is ``[N, 3, ?, ?]`` and every weight comes from a
``Constant`` node rather than an initializer.

Reference gradients come from Paddle itself (dynamic graph, eval mode): ``paddle.grad`` of the predicted class's
logit (pre-softmax) with respect to the output of two layers, at 160x160, for two input sets at batch 1 and batch 3.

Writes into the output folder:

- ``mobilenet_v3_small_x0_5.onnx``, the paddle2onnx file;
- ``mobilenet_v3_small_x0_5_reference.npz`` (compressed), with

  - ``layers``: the Paddle layer names (``lastconv``, ``blocks.7``); ``onnx_names``: the ONNX tensor each one
    is, found by running the ONNX file with every intermediate tensor exposed and matching values;
  - ``pixels``: uint8 ``[2, 3, 3, 160, 160]`` (input set, batch, C, H, W); the network input is exactly
    ``pixels.astype(float32) * input_scale + input_offset`` (``input_scale`` = 1/64, ``input_offset`` = -2);
    batch 1 is the first image of each set;
  - per input set ``k`` in {0, 1} and batch ``b`` in {1, 3}: ``classes_{k}_b{b}`` (int64, the predicted class),
    ``logits_{k}_b{b}`` (pre-softmax, float32), and per layer index ``i``: ``gradients_{i}_{k}_b{b}``
    (float32 ``[b, C, h, w]``); the activations at batch 3, ``activations_{i}_{k}`` (float32 ``[3, C, h, w]``).

Imports only paddle, paddle2onnx, numpy, onnx and onnxruntime (works with paddle2onnx's onnx 1.17), so that it
runs in a separate environment: ``python -m sample_models.paddle_classifier -o sample_models/paddle``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import paddle
import paddle2onnx

NAME = "mobilenet_v3_small_x0_5"
NUM_CLASSES = 10
INPUT_SIZE = (160, 160)
#: Paddle layer names: the last feature map before the global pool (``[N, 288, 5, 5]`` at 160x160) and the
#: output of the last stride-16 block (``[N, 24, 10, 10]``).
LAYERS = ("lastconv", "blocks.7")
INPUT_SCALE = 1 / 64
INPUT_OFFSET = -2.0
OPSET = 17
SEED = 0


class Classifier(paddle.nn.Layer):
    """MobileNetV3-Small followed by a Softmax, as PaddleClas exports its inference models."""

    def __init__(self) -> None:
        super().__init__()
        self.net = paddle.vision.models.mobilenet_v3_small(scale=0.5, num_classes=NUM_CLASSES)
        self.softmax = paddle.nn.Softmax(axis=-1)

    def forward(self, x):
        return self.softmax(self.net(x))


def pixels_to_input(pixels: np.ndarray) -> np.ndarray:
    """The network input for uint8 pixels (exact in float32)."""
    return pixels.astype(np.float32) * np.float32(INPUT_SCALE) + np.float32(INPUT_OFFSET)


def make_pixels(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` uint8 NCHW pictures: a shaded background, a few flat rectangles and discs, and noise of ±2.

    Mostly flat regions keep the compressed reference file small; the noise keeps every pixel distinct enough
    that no activation sits exactly on a ReLU / Hardswish kink.
    """
    h, w = INPUT_SIZE
    rows, cols = np.mgrid[0:h, 0:w]
    pictures = np.empty((count, 3, h, w), np.uint8)
    for i in range(count):
        base = rng.uniform(40, 200, 3)[:, None, None] + rng.uniform(-40, 40, 3)[:, None, None] * rows / h
        picture = np.broadcast_to(base, (3, h, w)).copy()
        for _ in range(rng.integers(2, 5)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            size = rng.integers(h // 10, h // 3)
            if rng.random() < 0.5:
                inside = (abs(rows - y) < size) & (abs(cols - x) < size * rng.uniform(0.5, 1.5))
            else:
                inside = (rows - y) ** 2 + (cols - x) ** 2 < size**2
            picture[:, inside] = rng.uniform(0, 255, 3)[:, None]
        picture += rng.integers(-2, 3, picture.shape)
        pictures[i] = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return pictures


def build_model() -> Classifier:
    """Seeded random weights; batch norms calibrated on one random batch; eval mode."""
    paddle.seed(SEED)
    model = Classifier()
    model.eval()
    rng = np.random.default_rng(SEED)
    norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]

    def calibrate(layer, inputs):
        x = inputs[0].numpy()
        layer._mean.set_value(x.mean(axis=(0, 2, 3)).astype(np.float32))
        layer._variance.set_value(x.var(axis=(0, 2, 3)).astype(np.float32))
        channels = x.shape[1]
        layer.weight.set_value(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        layer.bias.set_value(rng.normal(0.0, 0.2, channels).astype(np.float32))

    hooks = [layer.register_forward_pre_hook(calibrate) for layer in norms]
    with paddle.no_grad():
        model(paddle.to_tensor(rng.normal(0.0, 1.0, (8, 3, *INPUT_SIZE)).astype(np.float32)))
    for hook in hooks:
        hook.remove()
    return model


def convert(model: Classifier, path: pathlib.Path) -> onnx.ModelProto:
    """paddle.jit.save with a dynamic batch and image size, then paddle2onnx (no Polygraphy folding)."""
    with tempfile.TemporaryDirectory() as folder:
        prefix = os.path.join(folder, "model")
        spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "x")]
        paddle.jit.save(model, prefix, input_spec=spec)
        program = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
        data = paddle2onnx.export(program, prefix + ".pdiparams", None, opset_version=OPSET,
                                  enable_onnx_checker=True)
    if not data:
        raise SystemExit("paddle2onnx failed (see its log above)")
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    path.write_bytes(data)
    return proto


def sublayer(model: Classifier, name: str) -> paddle.nn.Layer:
    layer = model.net
    for part in name.split("."):
        layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
    return layer


def paddle_reference(model: Classifier, x: np.ndarray) -> dict:
    """Predicted classes, pre-softmax logits, and per layer the activations and d logit[class] / d activations."""
    captured: dict[str, paddle.Tensor] = {}
    hooks = [sublayer(model, name).register_forward_post_hook(lambda _l, _i, out, name=name:
                                                              captured.__setitem__(name, out))
             for name in LAYERS]
    logits = model.net(paddle.to_tensor(x))
    for hook in hooks:
        hook.remove()
    classes = logits.numpy().argmax(axis=1).astype(np.int64)
    score = (logits * paddle.nn.functional.one_hot(paddle.to_tensor(classes), NUM_CLASSES)).sum()
    grads = paddle.grad(score, [captured[name] for name in LAYERS])
    return {"classes": classes, "logits": logits.numpy(),
            "activations": [captured[name].numpy() for name in LAYERS], "gradients": [g.numpy() for g in grads]}


def quiet_options() -> ort.SessionOptions:
    """Session options without the warnings about the unused Constant nodes paddle2onnx leaves in the graph."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def onnx_names(proto: onnx.ModelProto, x: np.ndarray, activations: list[np.ndarray]) -> list[str]:
    """For each Paddle activation, the ONNX tensor whose value equals it.

    paddle2onnx often writes ``Add.33 -> Identity -> p2o.pd_op.add.16.0``; the last match in graph order, the
    Paddle-named tensor that the next layer consumes, is the one recorded.
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    constant_outputs = {o for n in exposed.graph.node if n.op_type == "Constant" for o in n.output}
    known = {o.name for o in exposed.graph.output}
    order = [o for n in exposed.graph.node if n.op_type != "Constant" for o in n.output
             if o and o not in constant_outputs and o not in known]
    for name in order:
        exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(exposed.SerializeToString(), quiet_options(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))
    names = []
    for layer, act in zip(LAYERS, activations):
        matches = [n for n in order
                   if isinstance(values.get(n), np.ndarray) and values[n].shape == act.shape
                   and values[n].dtype == np.float32
                   and np.abs(values[n] - act).max() <= 1e-4 * max(1.0, float(np.abs(act).max()))]
        if not matches:
            raise SystemExit(f"no ONNX tensor equals Paddle layer {layer} {act.shape}")
        print(f"{layer}: {act.shape} -> ONNX tensor {matches[-1]!r} (all matches: {matches})")
        names.append(matches[-1])
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=pathlib.Path, default=pathlib.Path("sample_models/paddle"))
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    model = build_model()
    onnx_path = args.output / f"{NAME}.onnx"
    proto = convert(model, onnx_path)

    rng = np.random.default_rng(SEED + 1)
    pixels = make_pixels(rng, 6).reshape(2, 3, 3, *INPUT_SIZE)
    record: dict[str, np.ndarray] = {"layers": np.array(LAYERS), "pixels": pixels,
                                     "input_scale": np.float32(INPUT_SCALE), "input_offset": np.float32(INPUT_OFFSET)}
    session = ort.InferenceSession(onnx_path.read_bytes(), quiet_options(), providers=["CPUExecutionProvider"])
    for k in range(2):
        for b in (1, 3):
            x = pixels_to_input(pixels[k, :b])
            ref = paddle_reference(model, x)
            with paddle.no_grad():
                probabilities = model(paddle.to_tensor(x)).numpy()
            onnx_probabilities = session.run(None, {session.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(onnx_probabilities, probabilities, atol=1e-5)
            record[f"classes_{k}_b{b}"] = ref["classes"]
            record[f"logits_{k}_b{b}"] = ref["logits"].astype(np.float32)
            for i in range(len(LAYERS)):
                record[f"gradients_{i}_{k}_b{b}"] = ref["gradients"][i].astype(np.float32)
                if b == 3:  # at batch 1 they are the first row of these
                    record[f"activations_{i}_{k}"] = ref["activations"][i].astype(np.float32)
            print(f"input set {k}, batch {b}: classes {ref['classes'].tolist()}, "
                  f"max probability {probabilities.max():.3f}")
            if k == 0 and b == 3:
                record["onnx_names"] = np.array(onnx_names(proto, x, ref["activations"]))
    reference = args.output / f"{NAME}_reference.npz"
    np.savez_compressed(reference, **record)
    graph = proto.graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    print(f"input {graph.input[0].name} {dims}"
          f", last node {graph.node[-1].op_type}, {len(graph.initializer)} initializers, "
          f"{sum(n.op_type == 'Constant' for n in graph.node)} Constant nodes")
    for path in (onnx_path, reference):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
