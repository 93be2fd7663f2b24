"""Every image-classification architecture transformers ships, with random weights from small configs (no hub):
onnxcam's PyTorch exporter and optimum's ONNX files, each checked against torch autograd.

    python benchmarks/hf_sweep.py                          # all architectures, a markdown table on stdout
    python benchmarks/hf_sweep.py --only vit,levit         # some of them
    python benchmarks/hf_sweep.py --markdown docs/huggingface.md   # also rewrite the table in the docs page
    python benchmarks/hf_sweep.py --memory                 # also the peak memory of exporting EfficientNet

Per architecture: (a) ``export_torch`` on the model as it is (the ``ModelOutput`` it returns), at the default
stage (:func:`onnxcam.frontends.huggingface.default_stage`) and at one named earlier module; the relative error
of ONNX Runtime's gradients against ``torch.autograd.grad`` on two fresh inputs, batch 1 and 3 (``export_torch``
itself refuses above 1e-4 on two other batches). (b) optimum's ONNX export (``pixel_values`` with dynamic
batch/H/W, ``logits``), explained with ``--input-size``: the default layer onnxcam picks and why, and the
gradient there against torch autograd at the same tensor (the torch module whose output equals it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import pathlib
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow (seconds) for nothing
sys.path.insert(0, str(ROOT))

from onnxcam.core.errors import OnnxcamError  # noqa: E402

TOLERANCE = 1e-4
LABELS = 5


@dataclass
class Arch:
    """A small random-weight configuration of one transformers architecture."""

    name: str
    config: str  # transformers config class
    kwargs: dict[str, Any]
    size: int  # square input side
    earlier: str  # an earlier module for (a)
    optimum: bool = True  # optimum-onnx exports this model type
    exporter: str = "torchscript"  # export_torch's exporter
    model_class: str = "AutoModelForImageClassification"


_VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 64}

ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("vit", "ViTConfig", _VIT, 32, "vit.encoder.layer.0"),
    Arch("deit", "DeiTConfig", _VIT, 32, "deit.encoder.layer.0", model_class="DeiTForImageClassification"),
    Arch("beit", "BeitConfig", {**_VIT, "use_mean_pooling": True}, 32, "beit.encoder.layer.0"),
    Arch("data2vec-vision", "Data2VecVisionConfig", {**_VIT, "use_mean_pooling": True}, 32,
         "data2vec_vision.encoder.layer.0"),
    Arch("dinov2", "Dinov2Config", {**_VIT, "mlp_ratio": 2}, 32, "dinov2.encoder.layer.0"),
    Arch("convnext", "ConvNextConfig", {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}, 32,
         "convnext.encoder.stages.0"),
    Arch("convnextv2", "ConvNextV2Config", {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}, 32,
         "convnextv2.encoder.stages.0"),
    Arch("resnet", "ResNetConfig", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
                                    "layer_type": "basic"}, 32, "resnet.encoder.stages.0"),
    Arch("regnet", "RegNetConfig", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
                                    "groups_width": 8}, 32, "regnet.encoder.stages.0"),
    Arch("bit", "BitConfig", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "num_groups": 2},
         32, "bit.encoder.stages.0", optimum=False),
    # CNNs that downsample 32×: 64² keeps a 2×2 last map (at 32² it is 1×1, and the map with spatial extent is
    # the last stride-2 convolution's input)
    Arch("mobilenet_v1", "MobileNetV1Config", {"depth_multiplier": 0.25, "min_depth": 4, "image_size": 64}, 64,
         "mobilenet_v1.layer.6"),
    Arch("mobilenet_v2", "MobileNetV2Config", {"depth_multiplier": 0.25, "min_depth": 4, "image_size": 64}, 64,
         "mobilenet_v2.layer.10"),
    Arch("mobilevit", "MobileViTConfig", {"image_size": 64, "hidden_sizes": [16, 24, 32],
                                          "neck_hidden_sizes": [8, 8, 16, 16, 24, 24, 32],
                                          "num_attention_heads": 2}, 64, "mobilevit.encoder.layer.3"),
    Arch("mobilevitv2", "MobileViTV2Config", {"image_size": 64, "width_multiplier": 0.25,
                                              "n_attn_blocks": [1, 1, 1]}, 64, "mobilevitv2.encoder.layer.3",
         optimum=False, exporter="dynamo"),  # TorchScript cannot export F.fold (col2im)
    Arch("swin", "SwinConfig", {"image_size": 32, "patch_size": 2, "embed_dim": 8, "depths": [1, 1],
                                "num_heads": [1, 2], "window_size": 4}, 32, "swin.encoder.layers.0"),
    Arch("swinv2", "Swinv2Config", {"image_size": 32, "patch_size": 2, "embed_dim": 8, "depths": [1, 1],
                                    "num_heads": [1, 2], "window_size": 4}, 32, "swinv2.encoder.layers.0"),
    Arch("efficientnet", "EfficientNetConfig", {"image_size": 64, "width_coefficient": 0.25,
                                                "depth_coefficient": 0.2, "hidden_dim": 320}, 64,
         "efficientnet.encoder.blocks.3"),
    # LeViT downsamples 64×: 128² keeps 2×2 tokens in its last stage (at 64² one token, and the default is stage 1's)
    Arch("levit", "LevitConfig", {"image_size": 128, "hidden_sizes": [16, 24, 32], "num_attention_heads": [1, 2, 2],
                                  "depths": [1, 1, 1], "key_dim": [8, 8, 8]}, 128, "levit.encoder.stages.0",
         model_class="LevitForImageClassification"),
    Arch("poolformer", "PoolFormerConfig", {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}, 64,
         "poolformer.encoder.block.2.0"),
    Arch("segformer", "SegformerConfig", {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
                                          "num_attention_heads": [1, 1, 2, 2], "decoder_hidden_size": 16}, 64,
         "segformer.encoder.block.2.0"),
    Arch("cvt", "CvtConfig", {"embed_dim": [8, 16, 24], "num_heads": [1, 2, 2], "depth": [1, 2, 3]}, 64,
         "cvt.encoder.stages.1"),
]}


def build(arch: Arch, seed: int = 0) -> Any:
    """The model of ``arch`` with seeded random weights, in eval mode."""
    import torch
    import transformers

    config = getattr(transformers, arch.config)(num_labels=LABELS, **arch.kwargs)
    torch.manual_seed(seed)
    cls = getattr(transformers, arch.model_class)
    model = cls.from_config(config) if arch.model_class.startswith("Auto") else cls(config)
    _randomise_norms(model, seed)
    return model.eval()


def _randomise_norms(model: Any, seed: int) -> None:
    """Random BatchNorm statistics (fresh ones are 0/1: the identity, which hides gradient bugs) and layer
    scales of 0.5–1 (fresh ones of 1e-6 make a block the identity)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # layer scales start near 0 (1e-6): blocks ≈ identity
            if any(word in name.rsplit(".", 1)[-1] for word in ("layer_scale", "lambda", "gamma")):
                param.copy_(torch.rand(param.shape, generator=generator) * 0.5 + 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def fresh_inputs(arch: Arch, seed: int = 123) -> list[np.ndarray]:
    """Two inputs, batch 1 and 3."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, arch.size, arch.size)).astype(np.float32) for batch in (1, 3)]


@dataclass
class TorchResult:
    layer: str
    error: float | None = None
    failure: str | None = None


def check_export(model: Any, arch: Arch, layer: str, folder: pathlib.Path) -> TorchResult:
    """(a): ``export_torch`` at ``layer``, then the parity on fresh batches 1 and 3."""
    import onnx

    from onnxcam.frontends.torch_export import export_torch
    from onnxcam.frontends.torch_parity import check_parity

    try:
        path = export_torch(model, folder / f"{arch.name}-{layer}.onnx", target_layer=layer,
                            input_shape=(3, arch.size, arch.size), exporter=arch.exporter)
        parity = check_parity(model, onnx.load(path), layer, fresh_inputs(arch))
    except OnnxcamError as exc:
        return TorchResult(layer, failure=f"Error: {exc}")
    except Exception as exc:  # noqa: BLE001 - a traceback is a finding: report its first line
        return TorchResult(layer, failure=f"traceback: {type(exc).__name__}: {_first_line(exc)}")
    if parity.images < 3:
        return TorchResult(layer, parity.error, f"only {parity.images} of 4 images compared")
    return TorchResult(layer, parity.error)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:160]


@dataclass
class OptimumResult:
    exported: bool = False
    layer: str | None = None
    reason: str = ""
    module: str | None = None  # the torch module whose output is that tensor
    error: float | None = None
    failure: str | None = None


def optimum_export(model: Any, folder: pathlib.Path, size: int) -> pathlib.Path:
    """optimum's ONNX export of ``model`` (saved to a folder with an image processor first, as users run it;
    optimum's DINOv2 export reads the processor) → ``model.onnx``."""
    import transformers
    from optimum.exporters.onnx import main_export

    saved = folder / "hf"
    model.save_pretrained(saved)
    transformers.BitImageProcessor(size={"shortest_edge": size},
                                   crop_size={"height": size, "width": size}).save_pretrained(saved)
    out = folder / "optimum"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main_export(str(saved), output=str(out), task="image-classification", local_files_only=True,
                    no_post_process=True, do_validation=False)
    return out / "model.onnx"


def check_optimum(model: Any, arch: Arch, folder: pathlib.Path) -> OptimumResult:
    """(b): optimum's file explained at ``--input-size``: its default layer and the gradient there."""
    import onnx

    from onnxcam.autodiff.gradients import add_gradients
    from onnxcam.classifier.view import open_classifier
    from onnxcam.runtime.explainer import Explainer

    result = OptimumResult()
    if not arch.optimum:
        result.failure = "optimum-onnx has no ONNX config for this model type"
        return result
    try:
        path = optimum_export(model, folder, arch.size)
    except Exception as exc:  # noqa: BLE001 - report whatever optimum raised
        result.failure = f"optimum cannot export it: {type(exc).__name__}: {_first_line(exc)}"
        return result
    result.exported = True
    size = (arch.size, arch.size)
    try:
        proto = onnx.load(path)
        view = open_classifier(proto, input_size=size)
        result.layer, result.reason = view.require_default_layer(), view.default_reason
        explainer = Explainer(str(path), input_size=size)
        image = (np.random.default_rng(0).random((arch.size, arch.size, 3)) * 255).astype(np.uint8)
        explainer.explain(image, method="gradcam")
        augmented = add_gradients(proto, input_size=size)
    except OnnxcamError as exc:
        result.failure = f"Error: {exc}"
        return result
    except Exception as exc:  # noqa: BLE001
        result.failure = f"traceback: {type(exc).__name__}: {_first_line(exc)}"
        return result
    result.module, result.error = gradient_at_tensor(model, augmented, result.layer, fresh_inputs(arch))
    return result


def gradient_at_tensor(model: Any, augmented: Any, tensor: str, inputs: list[np.ndarray],
                       ) -> tuple[str | None, float | None]:
    """The torch module whose output (or input) equals the file's ``activations`` (compared numerically; the
    module that ``tensor``'s name scopes first), and the largest relative error of the file's ``activations`` and
    ``gradients`` against torch autograd (float64) at that tensor."""
    from onnxcam.core.ort import onnxruntime
    from onnxcam.frontends.torch_parity import relative_error

    ort = onnxruntime()
    sess = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    worst, where = 0.0, None
    for x in inputs:
        logits, acts, grads = sess.run(["logits", "activations", "gradients"],
                                       {"input": x, "class_index": np.full(len(x), -1, np.int64)})
        if where is None:
            where = matching_tensor(model, x, acts, tensor)
            if where is None:
                return None, None
        ref_acts, ref_grads = torch_reference(model, where, x, logits.argmax(1))
        worst = max(worst, relative_error(acts, ref_acts), relative_error(grads, ref_grads))
    return f"{where[0]} ({where[1]})", worst


def _scope(tensor: str) -> str:
    """``/vit/encoder/layer.1/output/Add_output_0`` → ``vit.encoder.layer.1.output`` (TorchScript's naming)."""
    return ".".join(tensor.strip("/").split("/")[:-1])


def _hooked(model: Any, hook: Any) -> list[Any]:
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: hook(n, "output", o)))
            handles.append(module.register_forward_pre_hook(lambda m, i, n=name: hook(n, "input", i)))
    return handles


def matching_tensor(model: Any, x: np.ndarray, activations: np.ndarray, tensor: str) -> tuple[str, str] | None:
    """``(module, "output" | "input")`` whose first tensor equals ``activations`` within 1e-4 relative: the one
    whose name is the longest prefix of ``tensor``'s scope, then the deepest."""
    import torch

    from onnxcam.frontends.torch_capture import hidden_tensor
    from onnxcam.frontends.torch_parity import relative_error

    found: list[tuple[str, str]] = []

    def hook(name: str, kind: str, value: Any) -> None:
        hidden, _ = hidden_tensor(value)
        if (hidden is not None and tuple(hidden.shape) == activations.shape
                and relative_error(hidden.detach().double().numpy(), activations) <= TOLERANCE):
            found.append((name, kind))

    handles = _hooked(model, hook)
    try:
        with torch.no_grad():
            model(torch.as_tensor(x))
    finally:
        for handle in handles:
            handle.remove()
    scope = _scope(tensor)

    def rank(item: tuple[str, str]) -> tuple[int, int, int]:
        name, kind = item
        shared = len(os.path.commonprefix([name, scope]))
        return (shared, kind == "output", name.count("."))

    return max(found, key=rank) if found else None


def torch_reference(model: Any, where: tuple[str, str], x: np.ndarray, class_index: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Activations and ∂logit/∂activations at a module's output or input, torch autograd in float64 (a single
    image run as two copies: torch's batch-1 gradients are wrong on some models, see torch_parity)."""
    import torch

    from onnxcam.frontends.torch_capture import hidden_tensor, replace_hidden, score_tensor

    single = len(x) == 1
    if single:
        x, class_index = np.concatenate([x, x]), np.concatenate([class_index, class_index])
    name, kind = where
    module = model.get_submodule(name)
    kept: list[Any] = []

    def swap(value: Any) -> Any:
        hidden, at = hidden_tensor(value)
        clone = hidden.clone()
        kept.append(clone)
        return replace_hidden(value, at, clone)

    handle = (module.register_forward_hook(lambda m, i, o: swap(o)) if kind == "output"
              else module.register_forward_pre_hook(lambda m, i: swap(i)))
    model.double()
    try:
        with torch.enable_grad():
            logits = score_tensor(model(torch.as_tensor(x, dtype=torch.float64)))
            score = logits.gather(1, torch.as_tensor(class_index, dtype=torch.long)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, kept[0])
    finally:
        handle.remove()
        model.float()
    acts, grads = kept[0].detach().numpy(), grad.numpy()
    return (acts[:1], grads[:1]) if single else (acts, grads)


@dataclass
class Row:
    arch: str
    default: TorchResult | None = None
    earlier: TorchResult | None = None
    optimum: OptimumResult = field(default_factory=OptimumResult)
    seconds: float = 0.0


def sweep_one(arch: Arch) -> Row:
    from onnxcam.frontends.huggingface import default_stage

    start = time.perf_counter()
    row = Row(arch.name)
    model = build(arch)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        try:
            layer = default_stage(model, (3, arch.size, arch.size))
            row.default = check_export(model, arch, layer, folder)
        except OnnxcamError as exc:
            row.default = TorchResult("?", failure=str(exc))
        row.earlier = check_export(model, arch, arch.earlier, folder)
        row.optimum = check_optimum(build(arch), arch, folder)
    row.seconds = time.perf_counter() - start
    return row


def _error(result: TorchResult | OptimumResult | None) -> str:
    if result is None:
        return "–"
    if result.failure:
        return f"**fails**: {result.failure}"
    mark = "✓" if result.error is not None and result.error <= TOLERANCE else "✗"
    return f"{result.error:.1e} {mark}" if result.error is not None else "–"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| architecture | (a) default stage | parity | (a) earlier module | parity | (b) optimum default layer "
        "| why | torch module | gradient error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r.optimum
        if o.failure and not o.layer:
            b = f"{o.failure} | | | –"
        else:
            b = f"`{o.layer}` | {o.reason} | `{o.module}` | {_error(o)}"
        lines.append(f"| {r.arch} | `{r.default.layer if r.default else '?'}` | {_error(r.default)} "
                     f"| `{r.earlier.layer if r.earlier else '?'}` | {_error(r.earlier)} | {b} |")
    return "\n".join(lines)


_MEMORY_CODE = r"""
import json, os, pathlib, sys, warnings
warnings.simplefilter("ignore")


def peak_kb():  # VmHWM: this process's peak RSS (ru_maxrss would carry a large parent's over exec)
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))


os.environ["USE_TF"] = "0"
sys.path.insert(0, sys.argv[2])
mode, path = sys.argv[1], pathlib.Path(sys.argv[3])
import numpy as np
if mode in ("forward", "augmented"):  # ONNX Runtime alone: the session (weights) and one run
    import onnxruntime as ort
    before = peak_kb()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: np.zeros((1, 3, 224, 224), np.float32)}
    if mode == "augmented":  # forward and backward pass of onnxcam's file
        feeds["class_index"] = np.array([-1])
    sess.run(None, feeds)
else:
    import torch, transformers
    torch.manual_seed(0)
    model = transformers.EfficientNetForImageClassification(
        transformers.EfficientNetConfig(image_size=224, num_labels=10)).eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    before = peak_kb()
    if mode == "plain":
        with torch.no_grad():
            torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"])
    else:
        from onnxcam.frontends.huggingface import default_stage
        from onnxcam.frontends.torch_export import export_torch
        layer = default_stage(model, (3, 224, 224))
        before = peak_kb()
        export_torch(model, path, target_layer=layer, input_shape=(3, 224, 224))
after = peak_kb()
print(json.dumps({"peak_mb": (after - before) / 1024}))
"""


def memory_check() -> str:
    """Peak resident memory on Hugging Face EfficientNet's default config (a 2560-channel top convolution) at 224²,
    each in a fresh process: ONNX Runtime's session and one run of onnxcam's file (forward and backward pass)
    against the same for the plain file's float32 forward pass; and ``export_torch`` (torch's exporter, the
    gradient pass, the parity check) against torch's own ``torch.onnx.export``, above the loaded model."""
    import json
    import subprocess

    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, name in (("plain", "plain.onnx"), ("forward", "plain.onnx"), ("export", "onnxcam.onnx"),
                           ("augmented", "onnxcam.onnx")):
            out = subprocess.run([sys.executable, "-c", _MEMORY_CODE, mode, str(ROOT), str(pathlib.Path(tmp) / name)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                return f"EfficientNet memory check failed ({mode}): {out.stderr.strip().splitlines()[-1]}"
            peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    run = peaks["augmented"] / max(peaks["forward"], 1e-9)
    export = peaks["export"] / max(peaks["plain"], 1e-9)
    return (f"Hugging Face EfficientNet (default config: hidden_dim 2560, 224²), peak memory: onnxcam's file in ONNX "
            f"Runtime (session, forward and backward pass) {peaks['augmented']:.0f} MB against the plain file's "
            f"session and float32 forward pass {peaks['forward']:.0f} MB: {run:.1f}× "
            f"({'≤' if run <= 3 else '>'} 3×); export_torch {peaks['export']:.0f} MB against torch.onnx.export "
            f"{peaks['plain']:.0f} MB (above the loaded model): {export:.1f}×")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated architectures (default: all)")
    parser.add_argument("--markdown", default=None, help="rewrite the table between the sweep markers of this file")
    parser.add_argument("--memory", action="store_true", help="also measure HF EfficientNet's export memory")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    names = args.only.split(",") if args.only else list(ARCHS)
    rows = []
    for name in names:
        try:
            row = sweep_one(ARCHS[name])
        except Exception:  # noqa: BLE001 - a traceback in the sweep is a finding: print it, go on
            traceback.print_exc()
            row = Row(name, TorchResult("?", failure="traceback (above)"))
        print(f"{name}: {row.seconds:.1f} s", file=sys.stderr, flush=True)
        rows.append(row)
    table = markdown(rows)
    print(table)
    memory = memory_check() if args.memory else None
    if memory:
        print(f"\n{memory}")
    if args.markdown:
        write_table(pathlib.Path(args.markdown), table + (f"\n\n{memory}" if memory else ""))
    failed = [r.arch for r in rows if any(t is None or t.failure or (t.error or 0) > TOLERANCE
                                          for t in (r.default, r.earlier))]
    return 1 if failed else 0


BEGIN, END = "<!-- hf_sweep: begin -->", "<!-- hf_sweep: end -->"


def write_table(page: pathlib.Path, table: str) -> None:
    """Replace the text between the sweep markers of ``page`` with ``table``."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page} has no {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    page.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    raise SystemExit(main())
