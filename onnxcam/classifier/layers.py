"""Where a CAM can look: the feature maps and token tensors on the path from the image to the class score, and
the default among them (docs/design.md §3, "Default layer").

The default is found from the pooling that removes the spatial or token axes on the way to the classifier
(:func:`poolings`):

- a CNN's feature map pooled over H and W (GlobalAveragePool, ReduceMean/ReduceMax over H and W, a Flatten of
  the last map, an AveragePool to 1×1, their QLinear forms): the map that enters that pooling ("enters
  GlobalAveragePool");
- tokens ``[N,T,C]`` (or a channels-last grid ``[N,H,W,C]`` behind a final LayerNorm) pooled by a mean over
  the tokens (or attention): the tokens that leave the last block, found by walking up from the pooling input
  through layout ops, Q→DQ pairs and the final norm (LayerNormalization, its decomposed form,
  BatchNormalization) to the last residual Add ("last block output, tokens mean-pooled");
- tokens pooled by taking the class token alone: the tokens that enter the last block ("last block input, class
  token pooled"). The last block's output tokens other than the class token do not reach the score at all, so
  every gradient map there is zero and no perturbation of them changes the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from onnxcam.core.contract import ADAPTER
from onnxcam.core.graph_queries import ancestors, attributes, image_dependents, producers
from onnxcam.core.tensor_info import FLOAT_TYPES, Shape, TensorInfo

#: The rule in one line (docs); each view says which case applied (:attr:`Default.reason`).
DEFAULT_RULE = ("the feature map that enters the spatial pooling (CNNs), or the tokens that leave the last block, "
                "before the final norm and the token pooling (transformers)")

#: Said of a default taken at the last block's input: the last block's output reaches the score only through the
#: picked (class) token, so its other tokens get no gradient and no perturbation of them changes the score.
ONLY_PICKED = " (the last block's other output tokens do not reach the score)"

#: Element types a target layer may have: float, and the 8-bit integers of QOperator-quantized graphs.
MAP_TYPES = FLOAT_TYPES | {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}

#: Ops whose output depends on their input's shape only: a tensor that reaches the score only through them
#: does not reach it.
SHAPE_ONLY = {"Shape", "Size", "EyeLike", "RandomNormalLike", "RandomUniformLike"}

#: Poolings of a feature map over its spatial axes (H and W), by family.
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "QLinearGlobalAveragePool"}
WINDOW_POOLS = {"AveragePool", "MaxPool", "LpPool", "QLinearAveragePool"}
REDUCES = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2", "ReduceLogSumExp", "QLinearReduceMean"}
FLATTENS = {"Flatten", "Reshape"}
TOKEN_PICKS = {"Gather", "Slice", "Split"}

#: Ops walked up through from the token pooling to the last block's output: layout, casts, Q→DQ, norms.
PASS_UP = {"Identity", "Cast", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice",
           "Gather", "QuantizeLinear", "DequantizeLinear", "LayerNormalization", "BatchNormalization",
           "SimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization"}
#: The final norms that make a pooled map a transformer's (a Swin grid pooled over H and W): a CNN's map may sit
#: behind a BatchNormalization or a GroupNorm, never behind a LayerNorm.
LAYER_NORMS = {"LayerNormalization", "SimplifiedLayerNormalization"}
#: Elementwise ops of a decomposed norm or an affine (x·γ + β, (x − μ)/σ): walked through when only one of
#: their inputs is an image tensor of the output's shape (a residual Add or a gate has two).
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
#: Ops that apply weights to a tensor, or mix two image tensors (attention).
WEIGHTED = {"MatMul", "Gemm", "Einsum", "MatMulInteger", "QLinearMatMul", "QGemm", "Conv", "QLinearConv",
            "ConvInteger"}


@dataclass(frozen=True)
class Candidate:
    """A possible target layer: the tensor's name, the op that makes it and its shape (None = batch)."""

    name: str
    op: str
    shape: Shape


@dataclass(frozen=True)
class Default:
    """The default target layer (``name``) and why (``reason``): "enters GlobalAveragePool" (CNNs), "last block
    output, class token pooled" (transformers)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Pooling:
    """A node on the way to the score that removes the spatial/token axes of ``tensor``, one of its inputs;
    ``output``: its output that the walk from the score came through; ``attention``: a projection of the tokens
    that an attention pooling reads."""

    node: onnx.NodeProto
    tensor: str
    output: str
    attention: bool = False


def feeding(model: onnx.ModelProto, score: str) -> set[str]:
    """The tensors computed from the image whose values feed ``score``: never weights, Constant outputs, tensors
    computed from weights alone, or tensors that reach the score only through their shape (``Shape``)."""
    return value_ancestors(model.graph, score) & image_dependents(model.graph)


def value_ancestors(graph: onnx.GraphProto, name: str) -> set[str]:
    """``name`` and the tensors it is computed from, not looking through :data:`SHAPE_ONLY` ops' inputs."""
    return ancestors(graph, name, not_through=SHAPE_ONLY)


def is_map_type(info: TensorInfo, name: str) -> bool | None:
    """Whether ``name`` can be a target layer by its element type (:data:`MAP_TYPES`); None when unknown."""
    t = info.types.get(name)
    return None if not t else t in MAP_TYPES


def candidates(model: onnx.ModelProto, info: TensorInfo, feeds_score: set[str]) -> list[Candidate]:
    """Every 4-D (spatial size > 1) or 3-D float or 8-bit integer tensor of ``feeds_score`` (:func:`feeding`), in
    graph order, except the outputs of onnxcam's adapter nodes."""
    graph = model.graph
    made_by = producers(graph)
    found = []
    for node in graph.node:
        for name in node.output:
            shape = info.shapes.get(name)
            if not (name in feeds_score and is_map_type(info, name) and shape and made_by[name] is node
                    and not node.name.startswith(ADAPTER)):
                continue
            if len(shape) == 3 or (len(shape) == 4 and (shape[2] or 0) * (shape[3] or 0) > 1):
                found.append(Candidate(name, node.op_type, shape))
    return found


def default_layer(model: onnx.ModelProto, info: TensorInfo, feeds_score: set[str], score: str,
                  found: list[Candidate]) -> Default | None:
    """The default target among ``found`` (:func:`candidates`) and why (module docstring, :data:`DEFAULT_RULE`):
    found from the last pooling on the way to ``score``; None when no candidate is pooled."""
    names = {c.name for c in found}
    order = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    picks: dict[str, list[str]] = {}
    found_poolings = poolings(model, info, feeds_score, score)
    choices = [_choice(model, info, feeds_score, pooling) for pooling in found_poolings]
    if not all(why.endswith(ONLY_PICKED) for _, why, _ in choices if not why.startswith("enters ")):
        # another pooling (DINOv2's mean over the tokens) reads the last block's other output tokens
        choices = [(block, why.removesuffix(ONLY_PICKED), block) if why.endswith(ONLY_PICKED) else (name, why, block)
                   for name, why, block in choices]
    for pooling, (name, why, _) in zip(found_poolings, choices):
        if name not in names:  # the walk up left the candidates: the pooled tensor itself
            name, why = _through_identity(model, pooling.tensor), f"enters {pooling.node.op_type}"
        if name in names:
            picks.setdefault(name, []).append(why)
    if not picks:
        return None
    name = max(picks, key=lambda n: order.get(n, -1))
    return Default(name, _reason(picks[name]))


def poolings(model: onnx.ModelProto, info: TensorInfo, feeds_score: set[str], score: str) -> list[Pooling]:
    """The nodes nearest ``score`` whose input has spatial or token extent (:func:`spread`): walking back from the
    score over pooled tensors (``[N,C]``, ``[N,C,1,1]``, ``[N,1,C]``, scalars) until a node reads a map.

    An attention pooling (a learnt query attending to the tokens: timm's ``global_pool="map"``) is walked
    through, from the reshape that merges its heads to the projections (:data:`WEIGHTED`) that read the tokens.
    """
    made_by = producers(model.graph)
    found: list[Pooling] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(score, False)]
    while stack:
        t, inside = stack.pop()
        node = made_by.get(t)
        if t in seen or node is None or node.op_type in SHAPE_ONLY:
            continue
        seen.add(t)
        reads = [i for i in node.input if i in feeds_score]
        mixing = node.op_type in WEIGHTED and len(reads) > 1  # attention: two image operands
        for i in reads:
            if inside and node.op_type in WEIGHTED and not mixing and spread(info.shapes.get(i)):
                found.append(Pooling(node, i, t, attention=True))
            elif inside or not spread(info.shapes.get(i)):
                stack.append((i, inside))
            elif _merges_heads(info, node, i, t):
                stack.append((i, True))
            else:
                found.append(Pooling(node, i, t))
    return list({(p.output, p.tensor): p for p in found}.values())


def _merges_heads(info: TensorInfo, node: onnx.NodeProto, read: str, out: str) -> bool:
    """Whether ``node`` only reshapes a spread tensor into pooled tokens ``[N,1,C]`` (the heads of an attention
    pooling merged), rather than pooling it."""
    before, after = info.shapes.get(read), info.shapes.get(out)
    return (node.op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze") and before is not None
            and after is not None and len(after) >= 3 and None not in before[1:] and None not in after[1:]
            and math.prod(before[1:]) == math.prod(after[1:]))  # type: ignore[arg-type]


def spread(shape: Shape | None) -> bool:
    """Whether a tensor of ``shape`` still has spatial or token extent: at least two static axes after the first
    are longer than 1 (``[N,C,H,W]``, ``[N,T,C]``, ``[N,C,T]``; not ``[N,C]``, ``[N,C,1,1]``, ``[N,1,C]``, nor
    ``[2,N,K]``, the stacked logits of two heads)."""
    return shape is not None and sum(d is not None and d > 1 for d in shape[1:]) >= 2


def _choice(model: onnx.ModelProto, info: TensorInfo, feeds_score: set[str],
            pooling: Pooling) -> tuple[str, str, str]:
    """(default tensor, reason part, last block output) for one pooling: the last block's output tokens when it
    pools tokens (``[N,T,C]``, or a map behind a final LayerNorm: a Swin grid) — its input tokens when it picks
    the class token alone —, else the pooled feature map itself (a CNN)."""
    block, layer_normed = _block_output(model, info, feeds_score, pooling.tensor)
    if len(info.shapes.get(pooling.tensor) or ()) == 3 or layer_normed:
        how = _token_pooling(model, info, pooling)
        if how.endswith("token pooled") or how.startswith("token "):
            before = _block_input(model, feeds_score, block)
            if before is not None:
                return before, f"{how}{ONLY_PICKED}", block
        return block, how, block
    pooled = _through_identity(model, pooling.tensor)
    return pooled, f"enters {pooling.node.op_type}", pooled


def _block_input(model: onnx.ModelProto, feeds_score: set[str], output: str) -> str | None:
    """The input of the block whose output is ``output`` (a pre-norm transformer block: x + f(x), then + g(·)):
    two residual Adds up, each time the Add input that the other input is computed from. None when the graph is
    not shaped so."""
    made_by = producers(model.graph)
    tensor = output
    for _ in range(2):
        node = made_by.get(_through_qdq(made_by, tensor))
        reads = [i for i in node.input if i in feeds_score] if node is not None else []
        if node is None or node.op_type not in ("Add", "QLinearAdd") or len(reads) != 2:
            return None
        first, second = reads
        residual = [r for r, other in ((first, second), (second, first))
                    if _through_qdq(made_by, r) in value_ancestors(model.graph, other)]
        if len(residual) != 1:
            return None
        tensor = residual[0]
    return tensor


def _through_qdq(made_by: dict[str, onnx.NodeProto], tensor: str) -> str:
    """``tensor``, or the float tensor before the QuantizeLinear → DequantizeLinear pair that makes it."""
    node = made_by.get(tensor)
    if node is not None and node.op_type == "DequantizeLinear":
        quantize = made_by.get(node.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            return quantize.input[0]
    return tensor


def _token_pooling(model: onnx.ModelProto, info: TensorInfo, pooling: Pooling) -> str:
    """How ``pooling`` pools tokens: "class token pooled", "tokens mean-pooled", "tokens flattened", ..."""
    op = pooling.node.op_type
    if pooling.attention:
        return "tokens attention-pooled"
    if op in REDUCES | GLOBAL_POOLS | WINDOW_POOLS:
        return "tokens max-pooled" if "Max" in op else "tokens sum-pooled" if op == "ReduceSum" else \
            "tokens mean-pooled"
    if op in TOKEN_PICKS:
        first = _first_token(model, info, pooling)
        return "class token pooled" if first == 0 else f"token {'?' if first is None else first} pooled"
    return "tokens flattened" if op in FLATTENS else f"tokens enter {op}"


def _first_token(model: onnx.ModelProto, info: TensorInfo, pooling: Pooling) -> int | None:
    """The first token (index on axis 1) that a Gather, Slice or Split keeps, where the graph says so."""
    node, rank = pooling.node, len(info.shapes.get(pooling.tensor) or ())
    attrs, inputs = attributes(node), [*node.input, "", "", ""]
    if node.op_type == "Gather":
        index = info.constant(inputs[1]) if attrs.get("axis", 0) % rank == 1 else None
        size = (info.shapes.get(pooling.tensor) or (0, 0))[1]
        return int(index.ravel()[0]) % size if index is not None and index.size and size else None
    if node.op_type == "Slice":
        starts, axes = info.constant(inputs[1]), info.constant(inputs[3])
        if starts is None:
            return None
        axis_list = [int(a) % rank for a in axes.ravel()] if axes is not None else list(range(starts.size))
        return int(starts.ravel()[axis_list.index(1)]) if 1 in axis_list else None
    if node.op_type == "Split" and attrs.get("axis", 0) % rank == 1:
        position = list(node.output).index(pooling.output)
        sizes = attrs.get("split") or (info.constant(inputs[1]) if inputs[1] else None)
        return 0 if position == 0 else (int(sum(list(sizes)[:position])) if sizes is not None else None)
    return None


def _block_output(model: onnx.ModelProto, info: TensorInfo, feeds_score: set[str], tensor: str) -> tuple[str, bool]:
    """The last block's output above a pooling input ``tensor``, and whether a LayerNorm (:data:`LAYER_NORMS`, or
    its decomposed form) lay between them.

    Walks up through :data:`PASS_UP` ops and decomposed norms (:data:`ELEMENTWISE` with one image input of the
    output's shape) and stops at anything else, typically the last residual Add. A block output that is
    quantized (QDQ) is taken at the dequantised tensor after its Q→DQ pair.
    """
    made_by = producers(model.graph)
    path, normed = [tensor], False
    while (node := made_by.get(path[-1])) is not None:
        step = _step_up(info, feeds_score, node, path[-1])
        if step is None:
            break
        normed = normed or node.op_type in LAYER_NORMS or (
            node.op_type in ("Sub", "Div") and all(i in feeds_score for i in node.input))
        path.append(step)
    if len(path) >= 3 and made_by[path[-2]].op_type == "QuantizeLinear" \
            and made_by[path[-3]].op_type == "DequantizeLinear":
        return path[-3], normed
    return path[-1], normed


def _step_up(info: TensorInfo, feeds_score: set[str], node: onnx.NodeProto, out: str) -> str | None:
    """The input of ``node`` to walk up to from its output ``out`` (:func:`_block_output`), or None to stop."""
    if node.op_type in PASS_UP:
        return node.input[0] if node.input[0] in feeds_score else None
    if node.op_type in ELEMENTWISE:
        full = [i for i in node.input if i in feeds_score and info.shapes.get(i) == info.shapes.get(out)]
        return full[0] if len(full) == 1 else None
    return None


def _through_identity(model: onnx.ModelProto, tensor: str) -> str:
    made_by = producers(model.graph)
    while tensor in made_by and made_by[tensor].op_type == "Identity":
        tensor = made_by[tensor].input[0]
    return tensor


def _reason(parts: list[str]) -> str:
    """One reason from the poolings that led to the same tensor: "enters GlobalAveragePool", "last block output,
    class token pooled and tokens mean-pooled", "last block input, class token pooled (…)"."""
    before_last = all(p.endswith(ONLY_PICKED) for p in parts)
    parts = sorted({p.removesuffix(ONLY_PICKED) for p in parts})
    if {"class token pooled", "token 1 pooled"} <= set(parts):  # DeiT: its head and its distillation head
        parts = ["class and distillation tokens pooled", *(p for p in parts if p[:5] not in ("class", "token"))]
    entering = [p.removeprefix("enters ") for p in parts if p.startswith("enters ")]
    tokens = [p for p in parts if not p.startswith("enters ")]
    if tokens and before_last:
        return "last block input, " + " and ".join(tokens) + ONLY_PICKED
    if tokens:
        return "last block output, " + " and ".join(tokens)
    return "enters " + " and ".join(entering)
