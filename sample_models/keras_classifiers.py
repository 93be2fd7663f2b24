"""Keras applications (random weights) converted to ONNX by tf2onnx, with ``tf.GradientTape`` references.

``python -m sample_models.keras_classifiers --arch MobileNetV2 [--arch ResNet50 ...] -o DIR [--seed 0]`` builds
``keras.applications.<arch>(weights=None, classes=10, input_shape=(224, 224, 3))`` with seeded random weights
(nothing is downloaded), converts it with ``tf2onnx.convert.from_keras`` at opset 17 with a dynamic batch axis,
and writes into ``DIR``:

- ``<arch>.onnx``: the tf2onnx graph, image input ``input`` ``[N,224,224,3]`` (NHWC), output ``predictions``
  (softmax probabilities, as the Keras model's ``classifier_activation`` default);
- ``<arch>_reference.npz``: for two input batches (``x1`` of 1 image, ``x3`` of 3) the float tensors fed to the
  model (already put through the model's own ``preprocess_input``) and the uint8 RGB views they came from
  (``views1``, ``views3``), the pre-softmax ``logits*``, the ``predicted*`` and ``given*`` class indices, and for
  two layers (``last``: the feature map that the global average pool reads, ``earlier``: the output of an earlier
  stage; ConvNeXtTiny also ``layernorm``, a feature map the graph holds in both layouts) the Keras layer output
  ``<layer>_act<b>`` (NHWC) and the tape gradients ``<layer>_grad_predicted<b>`` / ``<layer>_grad_given<b>``
  of the pre-softmax score of that class (NHWC),
  and ``<layer>_gradk_*``, the same tape with each ReLU's derivative on ONNX Runtime's side of the kink
  (see :func:`references`); ``meta`` is a JSON string (the same as ``<arch>_reference.json``), and the .npz is
  written last;
- ``<arch>_reference.json``: per layer the Keras name, its NHWC shape, the ONNX tensor with the same values
  (``onnx_name``) and that tensor's layout (``onnx_layout``: ``NHWC``, or ``NCHW`` where tf2onnx's transpose
  optimizer moved the layout), found by running every 4-D tensor of the ONNX graph and matching values;
- ``<arch>_preprocessing.json``: the onnxcam preprocessing (``resize``, ``crop``, ``scale``, ``mean``, ``std``,
  ``channel_order``) that turns a photograph into what ``preprocess_input`` gives, for ``onnxcam annotate``.

Preprocessing of these Keras applications (``keras.applications.<module>.preprocess_input``):

- MobileNetV2: ``x / 127.5 - 1`` on RGB;
- ResNet50: "caffe": RGB to BGR, minus the ImageNet mean ``[103.939, 116.779, 123.68]`` (BGR), no scaling;
- EfficientNetB0, ConvNeXtTiny: none (pixels 0..255 RGB); the model rescales inside (``Rescaling`` and
  ``Normalization`` layers), so that step is in the ONNX graph.

Random weights are conditioned as a trained network's would be, so that the classes are not ties and every
block shows in the gradient: each BatchNormalization gets the moving statistics of its input on the seven sample
photographs (:func:`calibrate_batch_norm`; with mean 0 and variance 1, MobileNetV2's logits end up 1e-11 apart),
and ConvNeXt's LayerScale factors, 1e-6 at initialisation, are drawn from U(0.5, 1.5) (:func:`scale_layers`).

Two things tf2onnx 1.17 cannot convert from Keras 3 (ConvNeXt):

- Keras 3 runs a grouped convolution (ConvNeXt's depthwise 7x7 ``Conv2D(groups=C)``) through a nested
  ``tf.function(jit_compile=True)``, which tf2onnx leaves as an unsupported ``StatefulPartitionedCall`` (and
  which XLA recompiles at every eager call); for the conversion and the tape it runs as
  ``tf.nn.depthwise_conv2d``, the same sums (:func:`depthwise_grouped_conv`); tf2onnx turns that into an ONNX
  ``Conv`` with ``group = C``. The softmax of the tape's logits is checked against the output of Keras' own
  code path (``keras_path_probabilities_rel_error``).
- the exact GELU is ``0.5 x erfc(-x / sqrt 2)`` in Keras 3 and tf2onnx has no ``Erfc`` handler; one is registered
  here: ``erfc(x) = 1 - erf(x)`` (ONNX ``Erf`` then ``Sub``).

Needs ``tensorflow-cpu``, ``tf2onnx``, ``onnxruntime`` and ``scikit-image``/``scikit-learn`` (the photographs of
``sample_models.photos``); it does not need onnxcam. Never import it in a process that imports paddle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import time
from typing import Any

import numpy as np

#: Architectures: the earlier layer (``("output" | "input", keras layer name)``; ConvNeXtTiny also a
#: ``layernorm`` one), the Keras preprocessing module, and the onnxcam preprocessing that reproduces
#: ``preprocess_input`` on a photograph.
ARCHS: dict[str, dict[str, Any]] = {
    "MobileNetV2": {
        "earlier": ("output", "block_12_add"),
        "module": "mobilenet_v2",
        "preprocess_input": "x / 127.5 - 1 (RGB)",
        "preprocessing": {"scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0],
                          "channel_order": "RGB"},
    },
    "ResNet50": {
        "earlier": ("output", "conv4_block6_out"),
        "module": "resnet50",
        "preprocess_input": "caffe: RGB -> BGR, minus [103.939, 116.779, 123.68] (BGR), no scaling",
        "preprocessing": {"scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
                          "channel_order": "BGR"},
    },
    "EfficientNetB0": {
        "earlier": ("output", "block5c_add"),
        "module": "efficientnet",
        "preprocess_input": "identity: pixels 0..255 RGB; Rescaling(1/255) and Normalization are in the model",
        "preprocessing": {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
    },
    "ConvNeXtTiny": {
        "earlier": ("input", "convnext_tiny_downsampling_block_2"),
        # the last block's LayerNorm: tf2onnx computes it in NCHW, then transposes it to NHWC for the pointwise
        # Dense (a MatMul over the last axis), so the graph holds this feature map in both layouts
        "layernorm": ("output", "convnext_tiny_stage_3_block_2_layernorm"),
        "module": "convnext",
        "preprocess_input": "identity: pixels 0..255 RGB; the ImageNet Normalization is in the model",
        "preprocessing": {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
    },
}

SIZE = 224
CLASSES = 10
OPSET = 17
#: Photographs (``sample_models.photos``) of the two input batches.
BATCHES: dict[int, tuple[str, ...]] = {1: ("chelsea",), 3: ("coffee", "astronaut", "rocket")}
#: Short side to 224, centre crop 224x224 (applied to the photographs, and written for ``onnxcam annotate``).
RESIZE = {"resize": SIZE, "crop": [SIZE, SIZE]}
#: Largest relative error (max|a - b| / max|b|) at which an ONNX tensor counts as a Keras layer's output.
MATCH_TOLERANCE = 1e-3


def views(names: tuple[str, ...]) -> np.ndarray:
    """``[N,224,224,3]`` uint8 RGB: each photograph's short side resized to 224, then centre-cropped."""
    import cv2

    from sample_models.photos import photographs

    pictures = dict(zip(*reversed(photographs())))
    out = []
    for name in names:
        image = pictures[name]
        h, w = image.shape[:2]
        s = SIZE / min(h, w)
        nh, nw = max(SIZE, round(h * s)), max(SIZE, round(w * s))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
        out.append(image[top:top + SIZE, left:left + SIZE])
    return np.stack(out)


def onnxcam_preprocessing(arch: str) -> dict[str, Any]:
    """The onnxcam preprocessing spec for ``arch`` (keys of ``onnxcam annotate``'s options)."""
    return {**RESIZE, **ARCHS[arch]["preprocessing"]}


def build_keras(arch: str, seed: int = 0):
    """``keras.applications.<arch>`` with seeded random weights, 10 classes, 224x224x3 input."""
    import keras

    keras.backend.clear_session()  # the same auto-generated layer names whatever was built before
    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, arch)(weights=None, classes=CLASSES, input_shape=(SIZE, SIZE, 3))


def scale_layers(model, seed: int) -> int:
    """Draw ConvNeXt's LayerScale factors from U(0.5, 1.5) (seeded); return how many layers there are.

    They start at 1e-6, which makes every ConvNeXt block an identity to 1e-6: the stage outputs would equal
    the downsampling convolutions' to well within the 1e-4 of a parity check, and no gradient would show
    whether a block's rules are right. A trained ConvNeXt has factors of order 0.1 to 1."""
    rng = np.random.default_rng(seed)
    layers = [layer for layer in model.layers if type(layer).__name__ == "LayerScale"]
    for layer in layers:
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
    return len(layers)


def calibrate_batch_norm(model, x: np.ndarray) -> int:
    """Set every BatchNormalization's moving statistics to its batch statistics on ``x``; return their count.

    With ``weights=None`` the moving mean and variance are 0 and 1, so the random network's activations shrink
    through every block (MobileNetV2's logits end up ~1e-11 apart, a tie). One training-mode pass with momentum 0
    gives each layer the statistics of its input, as a trained network has them.
    """
    import keras
    import tensorflow as tf

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(tf.constant(x), training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    return len(layers)


#: The layers recorded besides ``last``, where an architecture has them.
STAGES = ("earlier", "layernorm")


def layer_tensors(model, arch: str) -> dict[str, tuple[str, Any]]:
    """``{"last": (description, KerasTensor), "earlier": ..., ...}``: the global pool's input, the earlier
    stage, and the other layers ``ARCHS`` names for ``arch``."""
    import keras

    # the head's pool is the last one (EfficientNet's squeeze-and-excitation blocks have their own)
    pool = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)][-1]
    out = {"last": (f"input of {pool.name}", pool.input)}
    for stage in STAGES:
        if stage in ARCHS[arch]:
            where, name = ARCHS[arch][stage]
            out[stage] = (f"{where} of {name}", getattr(model.get_layer(name), where))
    return out


@contextlib.contextmanager
def depthwise_grouped_conv():
    """While active, a Keras ``Conv2D(groups=C)`` on C channels runs as ``tf.nn.depthwise_conv2d``.

    Keras 3 runs grouped convolutions through a nested ``tf.function(jit_compile=True)``: tf2onnx leaves that
    as an unsupported ``StatefulPartitionedCall``, and in eager mode XLA recompiles it at every call. The
    depthwise op computes the same sums; tf2onnx turns it into an ONNX ``Conv`` with ``group = C``."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn as keras_nn

    original = keras_nn.conv

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        channels_last = keras_nn.backend.standardize_data_format(data_format) == "channels_last"
        channels = inputs.shape[-1 if channels_last else 1]
        depthwise = (len(inputs.shape) == 4 and kernel.shape[-2] == 1 and kernel.shape[-1] == channels
                     and channels not in (None, 1))
        if not depthwise:
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        s = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
        d = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else tuple(dilation_rate)
        h, w = kernel.shape[:2]
        return tf.nn.depthwise_conv2d(inputs, tf.reshape(kernel, (h, w, channels, 1)),
                                      (1, *s, 1) if channels_last else (1, 1, *s), padding.upper(),
                                      data_format="NHWC" if channels_last else "NCHW", dilations=d)

    keras_nn.conv = conv
    try:
        yield
    finally:
        keras_nn.conv = original


_ERFC_REGISTERED = False


def _register_erfc() -> None:
    """Teach tf2onnx the TensorFlow ``Erfc`` op as ``1 - Erf(x)`` (Keras 3's exact GELU uses it)."""
    global _ERFC_REGISTERED
    if _ERFC_REGISTERED:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
            node.type = "Erf"
            ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"),
                                          inputs=[one.output[0], node.output[0]])

    _ERFC_REGISTERED = True


def convert(model, path: pathlib.Path, opset: int = OPSET):
    """``tf2onnx.convert.from_keras`` at ``opset``, input ``input`` ``[N,224,224,3]`` (dynamic batch)."""
    import tensorflow as tf
    import tf2onnx

    # tf2onnx deep-copies the whole graph (weights included) before each of its optimisers unless this variable
    # is set (1.17 reads its presence, whatever the value); then an optimiser that fails raises instead of being
    # skipped. Saves ~20 s of ResNet50's conversion.
    os.environ.setdefault("TF2ONNX_CATCH_ERRORS", "FALSE")
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="input"),)
    _register_erfc()
    with depthwise_grouped_conv():
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))
    return proto


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def match_onnx_tensors(path: pathlib.Path, x: np.ndarray, targets: dict[str, np.ndarray]) -> dict[str, dict]:
    """For each NHWC Keras tensor in ``targets``, the ONNX tensors with the same values (in graph order).

    Every 4-D float tensor of the graph becomes an output, the graph runs on ``x`` in ONNX Runtime, and a
    tensor matches if it equals the target as it is (``NHWC``) or transposed to ``[N,C,H,W]`` (``NCHW``) to
    ``MATCH_TOLERANCE``. Of the matches with the smallest error (bitwise the same values), the first in graph
    order is the tensor the op itself computes (later ones are copies, e.g. a Transpose into the other layout);
    it is ``onnx_name``/``onnx_layout``, the rest ``aliases``; ``next_best_error`` is the closest other tensor.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    shapes = {s for t in targets.values() for s in (t.shape[1:], (t.shape[3], *t.shape[1:3]))}
    del model.graph.output[:]
    names = []
    for node in model.graph.node:
        for out in node.output:
            info = infos.get(out)
            if info is None or info.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                continue
            dims = tuple(d.dim_value or None for d in info.type.tensor_type.shape.dim)
            if len(dims) == 4 and (None in dims[1:] or dims[1:] in shapes):
                model.graph.output.append(info)
                names.append(out)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    found: dict[str, dict] = {}
    for key, target in targets.items():
        nchw = target.transpose(0, 3, 1, 2)
        matches = []
        for name in names:
            value = values[name]
            for layout, ref in (("NHWC", target), ("NCHW", nchw)):
                if value.shape == ref.shape and (err := rel_error(value, ref)) <= MATCH_TOLERANCE:
                    matches.append({"onnx_name": name, "onnx_layout": layout, "match_error": err})
        if not matches:
            raise RuntimeError(f"{path.name}: no ONNX tensor has the values of the Keras tensor {key!r}")
        best = min(m["match_error"] for m in matches)
        same = [m for m in matches if m["match_error"] == best]  # bitwise the same values: copies
        found[key] = {**same[0], "aliases": [{k: m[k] for k in ("onnx_name", "onnx_layout")} for m in same[1:]],
                      "next_best_error": min((m["match_error"] for m in matches if m["match_error"] > best),
                                             default=None)}
    return found


def kink_layers(model) -> dict[str, tuple[float, float | None]]:
    """``{layer name: (threshold, max_value)}`` of the ReLU / ReLU6 layers: where their derivative jumps."""
    import keras

    out: dict[str, tuple[float, float | None]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.ReLU):
            if float(layer.negative_slope) != 0.0:
                raise RuntimeError(f"{layer.name}: leaky ReLU kink sides are not implemented")
            out[layer.name] = (float(layer.threshold), None if layer.max_value is None else float(layer.max_value))
        elif isinstance(layer, keras.layers.Activation):
            name = getattr(layer.activation, "__name__", "")
            if name in ("relu", "relu6"):
                out[layer.name] = (0.0, 6.0 if name == "relu6" else None)
    return out


def _inside(values: np.ndarray, threshold: float, max_value: float | None) -> np.ndarray:
    """Where ReLU(max_value) passes the gradient, as TensorFlow's ReluGrad / Relu6Grad do."""
    inside = values > threshold
    return inside if max_value is None else inside & (values < max_value)


def ort_kink_inputs(path: pathlib.Path, names: list[str], batches: dict[int, np.ndarray],
                    shapes: dict[str, tuple]) -> dict[int, dict[str, np.ndarray]]:
    """ONNX Runtime's (BASIC optimisation, as parity checks run) input of each Keras ReLU layer, NHWC.

    The ONNX node of Keras layer ``L`` is the Relu / Clip named ``.../L[_k]/...`` by tf2onnx."""
    import re

    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    tensors = {}
    for name in names:
        pattern = re.compile(rf"/{re.escape(name)}(_\d+)?/")
        nodes = [n for n in model.graph.node if n.op_type in ("Relu", "Clip") and pattern.search(n.name)]
        if len(nodes) != 1:
            raise RuntimeError(f"{path.name}: {len(nodes)} Relu/Clip nodes for the Keras layer {name!r}")
        tensors[name] = nodes[0].input[0]
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(tensors.values()))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out: dict[int, dict[str, np.ndarray]] = {}
    for b, x in batches.items():
        values = dict(zip(dict.fromkeys(tensors.values()), session.run(list(dict.fromkeys(tensors.values())),
                                                                       {"input": x})))
        out[b] = {}
        for name, tensor in tensors.items():
            value = values[tensor]
            shape = (len(x), *shapes[name])
            if value.shape != shape:
                value = value.transpose(0, 2, 3, 1)  # NCHW -> NHWC
            if value.shape != shape:
                raise RuntimeError(f"{path.name}: {tensor} has shape {value.shape}, the Keras layer {shape}")
            out[b][name] = value
    return out


@contextlib.contextmanager
def kink_sides(model, masks: dict[str, Any]):
    """While active, each Keras ReLU layer named in ``masks`` passes the gradient where its mask is 1 (its
    forward value is unchanged): the tape then takes ONNX Runtime's side of every kink."""
    import tensorflow as tf

    patched = []
    for layer in model.layers:
        if layer.name not in masks:
            continue
        original = layer.call

        def call(inputs, *args, _original=original, _mask=masks[layer.name], **kwargs):
            @tf.custom_gradient
            def relu(x):
                return _original(x, *args, **kwargs), lambda dy: dy * _mask
            return relu(inputs)

        layer.call = call
        patched.append((layer, original))
    try:
        yield
    finally:
        for layer, original in patched:
            layer.call = original


def references(model, arch: str, batches: dict[int, np.ndarray],
               onnx_path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    """Keras outputs and tape gradients of the pre-softmax class score at the ``last`` and ``earlier`` layers.

    ``<layer>_grad_<kind><b>`` is the plain tape. Where a ReLU/ReLU6 sits between the layer and the logits,
    TensorFlow's and ONNX Runtime's float32 forward passes put the odd value within rounding of the kink on
    different sides (at 224x224, several per image), and the gradient through that element is passed by one and
    blocked by the other: the two gradients then differ by ~1e-2 relative, and so do TensorFlow float32 and
    float64. ``<layer>_gradk_<kind><b>`` is the same tape with each ReLU's derivative taken on ONNX Runtime's
    side of its kink (:func:`kink_sides`); ``meta["kinks"]`` counts the elements where the sides differ and how
    close to the kink they are (relative to the largest magnitude of the ReLU's input).
    """
    import keras
    import tensorflow as tf

    tensors = layer_tensors(model, arch)
    head = model.layers[-1]
    first = min(batches)
    keras_path = np.asarray(model(batches[first], training=False))  # Keras' own code path, softmax head
    kinks = kink_layers(model)
    kink_inputs = [model.get_layer(name).input for name in kinks]
    # the same layers with the head's softmax removed: the class score onnxcam differentiates is its input
    head.activation = keras.activations.linear
    stages = list(tensors)
    grad_model = keras.Model(model.input, [*(t for _, t in tensors.values()), head.output, *kink_inputs])
    shapes = {name: tuple(t.shape[1:]) for name, t in zip(kinks, kink_inputs)}
    ort_inputs = ort_kink_inputs(onnx_path, list(kinks), batches, shapes) if kinks else {b: {} for b in batches}
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"classes": {}, "kinks": {}}

    def tape(x, masks):
        with depthwise_grouped_conv(), kink_sides(model, masks), tf.GradientTape(persistent=True) as t:
            outputs = grad_model(tf.constant(x), training=False)
            features, logits, relu_inputs = outputs[:len(stages)], outputs[len(stages)], outputs[len(stages) + 1:]
            top = np.asarray(logits).argmax(axis=1)
            chosen = {"predicted": top, "given": (top + 1 + np.arange(len(top))) % CLASSES}
            scores = {kind: tf.reduce_sum(tf.gather(logits, c.astype(np.int32), batch_dims=1))
                      for kind, c in chosen.items()}
        grads = {kind: [np.asarray(g) for g in t.gradient(score, features)] for kind, score in scores.items()}
        values = ([np.asarray(f) for f in features], np.asarray(logits), [np.asarray(v) for v in relu_inputs])
        return values, chosen, grads

    for b, x in batches.items():
        arrays[f"x{b}"] = x
        (acts, scores, relu_inputs), chosen, plain = tape(x, {})
        masks, differ, distance = {}, 0, 0.0
        for (name, (threshold, max_value)), tf_value in zip(kinks.items(), relu_inputs):
            ort_value = ort_inputs[b][name]
            ort_side = _inside(ort_value, threshold, max_value)
            disagree = ort_side != _inside(tf_value, threshold, max_value)
            if disagree.any():
                bounds = [threshold] + ([max_value] if max_value is not None else [])
                gap = np.min([np.abs(ort_value[disagree] - k) for k in bounds], axis=0) / np.abs(ort_value).max()
                differ, distance = differ + int(disagree.sum()), max(distance, float(gap.max()))
            masks[name] = tf.constant(ort_side.astype(np.float32))
        aligned = tape(x, masks)[2] if differ else plain
        for kind in ("predicted", "given"):
            arrays[f"{kind}{b}"] = chosen[kind].astype(np.int64)
            for i, key in enumerate(stages):
                arrays[f"{key}_grad_{kind}{b}"] = plain[kind][i]
                arrays[f"{key}_gradk_{kind}{b}"] = aligned[kind][i]
        arrays[f"logits{b}"] = scores
        softmax = np.exp(scores - scores.max(1, keepdims=True))
        arrays[f"probabilities{b}"] = softmax / softmax.sum(1, keepdims=True)
        for key, act in zip(stages, acts):
            arrays[f"{key}_act{b}"] = act
        if b == first:
            info["keras_path_probabilities_rel_error"] = error = rel_error(arrays[f"probabilities{b}"], keras_path)
            if error > 1e-5:
                raise RuntimeError(f"{arch}: the tape's softmax(logits) is not Keras' own output ({error:.1e})")
        ordered = np.sort(scores, axis=1)
        info["classes"][str(b)] = {"predicted": chosen["predicted"].tolist(), "given": chosen["given"].tolist(),
                                   "top2_margin": (ordered[:, -1] - ordered[:, -2]).tolist()}
        info["kinks"][str(b)] = {"relu_layers": len(kinks), "elements_on_other_side": differ,
                                 "max_relative_distance": distance,
                                 "earlier_plain_vs_aligned": {k: rel_error(plain[k][1], aligned[k][1])
                                                              for k in plain}}
    info["stages"] = stages
    info["layers"] = {key: {"keras": description, "shape_nhwc": list(arrays[f"{key}_act1"].shape[1:])}
                      for key, (description, _) in tensors.items()}
    return arrays, info


def build(arch: str, out_dir: str | os.PathLike, seed: int = 0) -> dict[str, pathlib.Path]:
    """Write ``<arch>.onnx``, ``<arch>_reference.npz``/``.json`` and ``<arch>_preprocessing.json`` into ``out_dir``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import importlib

    import keras
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from sample_models.photos import photographs

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHS)}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"onnx": out / f"{arch}.onnx", "npz": out / f"{arch}_reference.npz",
             "json": out / f"{arch}_reference.json", "preprocessing": out / f"{arch}_preprocessing.json"}
    timings = {}
    start = time.perf_counter()
    model = build_keras(arch, seed)
    preprocess_input = importlib.import_module(f"keras.applications.{ARCHS[arch]['module']}").preprocess_input
    picture_views = {b: views(names) for b, names in BATCHES.items()}
    batches = {b: np.asarray(preprocess_input(v.astype(np.float32)), np.float32) for b, v in picture_views.items()}
    everything = np.asarray(preprocess_input(views(tuple(photographs()[1])).astype(np.float32)), np.float32)
    calibrated = calibrate_batch_norm(model, everything)
    scaled = scale_layers(model, seed)
    timings["build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    partial = out / f".{arch}.onnx.partial"
    convert(model, partial)
    timings["convert_s"] = time.perf_counter() - start

    start = time.perf_counter()
    arrays, info = references(model, arch, batches, partial)
    timings["reference_s"] = time.perf_counter() - start

    start = time.perf_counter()
    matched = match_onnx_tensors(partial, batches[1], {k: arrays[f"{k}_act1"] for k in info["stages"]})
    session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
    onnx_errors = {}
    for b, x in batches.items():
        onnx_errors[str(b)] = rel_error(session.run(None, {"input": x})[0], arrays[f"probabilities{b}"])
    timings["match_s"] = time.perf_counter() - start
    for key, found in matched.items():
        info["layers"][key].update(found)

    meta = {"arch": arch, "seed": seed, "opset": OPSET, "input_name": "input", "input_layout": "NHWC",
            "input_shape": [None, SIZE, SIZE, 3], "output_kind": "softmax", "num_classes": CLASSES,
            "photographs": {str(b): list(names) for b, names in BATCHES.items()},
            "batch_norm_calibrated": f"{calibrated} layers, on all seven sample photographs",
            "layer_scale_redrawn": f"{scaled} layers, U(0.5, 1.5)",
            "preprocess_input": ARCHS[arch]["preprocess_input"], "preprocessing": onnxcam_preprocessing(arch),
            "onnx_vs_keras_probabilities_rel_error": onnx_errors, **info, "timings": timings,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                         "onnxruntime": ort.__version__}}
    for b, v in picture_views.items():
        arrays[f"views{b}"] = v
    os.replace(partial, paths["onnx"])
    paths["json"].write_text(json.dumps(meta, indent=2) + "\n")
    paths["preprocessing"].write_text(json.dumps(onnxcam_preprocessing(arch), indent=2) + "\n")
    with open(out / f".{arch}_reference.npz.partial", "wb") as f:  # the .npz comes last: its presence says done
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(out / f".{arch}_reference.npz.partial", paths["npz"])
    return paths


def load_reference(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a ``<arch>_reference.npz`` (needs numpy only)."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def main(argv: list[str] | None = None) -> None:
    """Build each ``--arch``'s ONNX file and references, one after the other (one TensorFlow import)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, action="append", choices=list(ARCHS),
                        help="keras.applications model (repeat for several)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    args = parser.parse_args(argv)
    for arch in args.arch:
        paths = build(arch, args.output, args.seed)
        meta, _ = load_reference(paths["npz"])
        for key, layer in meta["layers"].items():
            print(f"{arch} {key}: {layer['keras']} {layer['shape_nhwc']} -> {layer['onnx_name']} "
                  f"({layer['onnx_layout']})")
        print(f"wrote {paths['onnx']} ({', '.join(f'{k} {v:.1f}' for k, v in meta['timings'].items())})",
              flush=True)


if __name__ == "__main__":
    main()
