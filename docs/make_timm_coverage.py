"""Gradient parity on timm's model zoo: ``python -m docs.make_timm_coverage [--only NAME ...] [--markdown PATH]``.

Every case is a timm model with random weights (``pretrained=False``, ``num_classes=10``, nothing downloaded:
``HF_HUB_OFFLINE=1``) at the smallest input it takes, targeted at its last feature stage (the last entry of
timm's ``feature_info``; for transformers the last block). Each one is exported with :func:`export_torch`
(TorchScript exporter, opset 17; the dynamo one, opset 18, for the few TorchScript cannot export), which
refuses above a relative error of 1e-4 against ``torch.autograd.grad``; the error is then measured again on two
other inputs (batch 2 and 3) with :func:`check_parity`.

Each model runs in its own process (forked after the imports) with a timeout, so a crash or a hang costs one
row, not the sweep. The table goes to ``docs/timm_coverage.md`` (model | family | input | layer | layout |
relative error | result); ``--readme`` also prints the README's per-family table, and ``--from-json`` re-renders
both from a previous run's ``--json`` file. A full sweep (115 models) takes about 30 minutes on 2 cores;
``tests/test_timm.py`` runs a representative subset in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
MARKDOWN = DOCS / "timm_coverage.md"
TIMEOUT_S = 300


@dataclass(frozen=True)
class Case:
    """One timm model: ``size`` the square input side, ``kwargs`` extra ``create_model`` arguments (``img_size``
    where the position embeddings or attention biases fix the input size), ``layer`` the target module (None:
    the last entry of the model's ``feature_info``), ``exporter`` torch's exporter, ``note`` a known cause or
    caveat that the table shows next to the result."""

    name: str
    family: str
    size: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    layer: str | None = None
    exporter: str = "torchscript"
    note: str = ""


def _vit(name: str, family: str, size: int = 64, layer: str | None = None, **kwargs: Any) -> Case:
    """A model built for ``size`` (``img_size``): its position embeddings or attention biases fix the input."""
    extra = {key: kwargs.pop(key) for key in ("exporter", "note") if key in kwargs}
    return Case(name, family, size, {"img_size": size, **kwargs}, layer, **extra)


PERMUTE_FUSED = ("known cause: the stage ends NHWC→NCHW and the head permutes back; torch's TorchScript exporter "
                 "fuses the two Transposes, so the target tensor is a dead end. Target `norm` passes")


CASES: list[Case] = [
    # plain and residual CNNs
    Case("resnet18", "ResNet"),
    Case("resnet50d", "ResNet"),
    Case("seresnext26d_32x4d", "ResNet"),
    Case("resnext26ts", "ResNet (byobnet)"),
    Case("resnet50_gn", "ResNet"),
    Case("skresnet18", "ResNet"),
    Case("resnetblur18", "ResNet"),
    Case("resnetv2_50x1_bit", "ResNetV2 (BiT)"),
    Case("res2net50_26w_4s", "Res2Net"),
    Case("resnest14d", "ResNeSt"),
    Case("tresnet_m", "TResNet"),
    Case("regnetx_002", "RegNet"),
    Case("regnety_002", "RegNet"),
    Case("regnetz_b16", "RegNet"),
    Case("gernet_s", "ByobNet (GENet, attention nets)"),
    _vit("botnet26t_256", "ByobNet (GENet, attention nets)"),
    _vit("lambda_resnet26t", "ByobNet (GENet, attention nets)"),
    _vit("halonet26t", "ByobNet (GENet, attention nets)", 256, exporter="dynamo",  # 8×8 halo blocks: 8×8 stage
         note="dynamo exporter: the TorchScript one cannot export its Unfold (input size not accessible)"),
    Case("densenet121", "DenseNet"),
    Case("dla34", "DLA"),
    Case("dpn68", "DPN"),
    Case("hrnet_w18_small", "HRNet", layer="final_layer"),  # stage4 returns a list of branches
    Case("selecsls42b", "SelecSLS", 128),  # stride 64
    Case("cspresnet50", "CSPNet"),
    Case("cspdarknet53", "CSPNet"),
    Case("cs3darknet_s", "CSPNet"),
    Case("darknet17", "DarkNet"),
    Case("ese_vovnet19b_dw", "VoVNet"),
    Case("nf_resnet26", "NFNet"),
    Case("nf_regnet_b0", "NFNet"),
    Case("repvgg_a0", "RepVGG / MobileOne"),
    Case("mobileone_s0", "RepVGG / MobileOne"),
    Case("inception_v3", "Inception / Xception", 128),
    Case("inception_resnet_v2", "Inception / Xception", 128),
    Case("xception41", "Inception / Xception"),
    Case("hgnetv2_b0", "HGNet"),
    Case("rdnet_tiny", "RDNet"),
    # mobile CNNs: depthwise convolutions, squeeze-excitation, hard activations
    Case("efficientnet_b0", "EfficientNet"),
    Case("efficientnet_lite0", "EfficientNet"),
    Case("efficientnetv2_rw_t", "EfficientNet"),
    Case("efficientnet_b0_gn", "EfficientNet"),
    Case("tinynet_e", "EfficientNet"),
    Case("mixnet_s", "EfficientNet"),
    Case("mobilenetv2_050", "MobileNet"),
    Case("mobilenetv3_small_050", "MobileNet"),
    Case("mobilenetv4_conv_small", "MobileNet"),
    Case("mnasnet_small", "MnasNet / FBNet"),
    Case("fbnetc_100", "MnasNet / FBNet"),
    Case("ghostnet_050", "GhostNet"),
    Case("ghostnetv2_100", "GhostNet"),
    Case("repghostnet_050", "GhostNet"),
    Case("ghostnetv3_050", "GhostNet"),
    Case("repvit_m0_9", "RepViT"),
    Case("fasternet_t0", "FasterNet"),
    Case("lcnet_050", "LCNet"),
    Case("rexnet_100", "ReXNet"),
    # modern CNNs and MLP-like mixers
    Case("convnext_atto", "ConvNeXt"),
    Case("convnextv2_atto", "ConvNeXt"),
    Case("convmixer_768_32", "ConvMixer"),
    Case("poolformer_s12", "MetaFormer"),
    Case("poolformerv2_s12", "MetaFormer"),
    Case("inception_next_tiny", "MetaFormer"),
    Case("caformer_s18", "MetaFormer"),
    Case("mambaout_femto", "MetaFormer"),
    Case("starnet_s1", "StarNet"),
    Case("focalnet_tiny_srf", "FocalNet"),
    _vit("mixer_s16_224", "MLP-Mixer"),
    _vit("resmlp_12_224", "MLP-Mixer"),
    _vit("gmlp_ti16_224", "MLP-Mixer"),
    # hybrids: convolutions and attention
    Case("mobilevit_xxs", "MobileViT"),
    Case("mobilevitv2_050", "MobileViT"),
    Case("edgenext_xx_small", "EdgeNeXt"),
    _vit("levit_128s", "LeViT", 128),  # stride 64
    _vit("levit_conv_128s", "LeViT", 128),
    Case("efficientformer_l1", "EfficientFormer", 224),  # attention biases fixed at 7×7
    _vit("efficientformerv2_s0", "EfficientFormer"),
    _vit("coatnet_nano_rw_224", "CoAtNet / MaxViT"),
    _vit("maxvit_nano_rw_256", "CoAtNet / MaxViT", note=PERMUTE_FUSED),
    _vit("maxvit_tiny_tf_224", "CoAtNet / MaxViT"),  # tanh GELU, TF "same" padding
    Case("fastvit_t8", "FastViT"),
    Case("efficientvit_b0", "EfficientViT"),
    _vit("efficientvit_m0", "EfficientViT", 128),  # stride 64
    Case("shvit_s1", "SHViT", 128),  # stride 64
    Case("swiftformer_xs", "SwiftFormer"),
    Case("lowformer_b0", "LowFormer"),
    Case("tiny_vit_5m_224", "TinyViT"),
    _vit("visformer_tiny", "Visformer", note="known cause: float32 rounding in the forward pass: on one input "
         "(activations up to ~750) torch float32 itself is 5.5e-5 off float64 and ORT 1.1e-4; gradients agree to 4e-8"),
    _vit("coat_lite_tiny", "CoaT", layer="serial_blocks4.1"),
    _vit("convit_tiny", "ConViT"),
    # transformers
    _vit("vit_tiny_patch16_224", "ViT / DeiT"),
    _vit("deit_tiny_distilled_patch16_224", "ViT / DeiT"),
    _vit("deit3_small_patch16_224", "ViT / DeiT"),
    _vit("flexivit_small", "ViT / DeiT"),
    _vit("vit_relpos_small_patch16_224", "ViT / DeiT"),
    _vit("vit_dpwee_patch16_reg1_gap_256", "ViT / DeiT", exporter="dynamo",
         note="dynamo exporter: the TorchScript one cannot export aten::rms_norm at opset 17"),
    _vit("vit_tiny_r_s16_p8_224", "ViT / DeiT"),  # hybrid: a ResNet stem under the ViT
    _vit("beit_base_patch16_224", "BEiT / EVA"),
    _vit("eva02_tiny_patch14_224", "BEiT / EVA", 56),
    _vit("cait_xxs24_224", "CaiT"),
    _vit("xcit_nano_12_p16_224", "XCiT"),
    _vit("pit_ti_224", "PiT", layer="transformers.2.blocks"),  # the stage returns (tokens, cls)
    _vit("crossvit_tiny_240", "CrossViT", 240, layer="blocks.2.blocks.0"),  # small-patch branch
    _vit("swin_tiny_patch4_window7_224", "Swin"),
    _vit("swinv2_tiny_window8_256", "Swin"),
    _vit("swinv2_cr_tiny_ns_224", "Swin"),
    _vit("twins_pcpvt_small", "Twins / PVT", layer="blocks.3.2"),  # feature_info names `block`
    _vit("twins_svt_small", "Twins / PVT", layer="blocks.3.3"),
    Case("pvt_v2_b0", "Twins / PVT"),
    _vit("nest_tiny_jx", "NesT", note=PERMUTE_FUSED),
    _vit("gcvit_xxtiny", "GCViT"),
    Case("davit_tiny", "DaViT"),
    _vit("volo_d1_224", "VOLO", exporter="dynamo",
         note="dynamo exporter: the TorchScript one cannot export nn.Fold (aten::col2im) at opset 17"),
    _vit("mvitv2_tiny", "MViT / Hiera", layer="norm"),  # blocks return (tokens, size)
    _vit("hiera_tiny_224", "MViT / Hiera"),
    _vit("sequencer2d_s", "Sequencer (LSTM)"),
]
CASES_BY_NAME = {case.name: case for case in CASES}


def build(case: Case) -> Any:
    """The timm model, seeded; zero-initialised weights (some heads) re-initialised so gradients are not zero."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(case.name, pretrained=False, num_classes=10, **case.kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.abs().max():
                torch.nn.init.normal_(module.weight, std=0.01)
    return model


def target_layer(case: Case, model: Any) -> str:
    """The case's target module: given, or the last stage timm reports in ``feature_info``."""
    if case.layer:
        return case.layer
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{case.name} has no feature_info; give the case a layer")
    return info[-1]["module"]


def _layout(model: Any, layer: str, size: int) -> str:
    """NCHW / NHWC / NTC as the exporter would record it, from the layer's output shape in torch (for rows
    that fail before the metadata is written)."""
    import torch

    from onnxcam.core.layout import infer_layout

    shapes = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: shapes.append(tuple(out.shape) if isinstance(out, torch.Tensor) else None))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        handle.remove()
    if not shapes or shapes[0] is None:
        return "—"
    try:
        return _format_layout(infer_layout(shapes[0], (size, size)))
    except Exception:
        return f"{len(shapes[0])}-D"


def _format_layout(layout: dict[str, Any]) -> str:
    grid = "×".join(map(str, layout["grid"]))
    prefix = f" +{layout['prefix_tokens']}" if layout.get("prefix_tokens") else ""
    return f"{layout['layout']} {grid}{prefix}"


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(text)).split())  # without terminal colours
    return line if len(line) <= limit else line[:limit - 1] + "…"


def classify(exc: BaseException, stage: str) -> tuple[str, float | None]:
    """A one-line reason for a failure, and the relative error when the parity check measured one."""
    from onnxcam.core.errors import OnnxcamError, UnsupportedOpError

    message = str(exc)
    if isinstance(exc, UnsupportedOpError):
        found = re.match(r"no gradient rule for op (\w+) \(node '[^']*'\)(?: \(also: ([^)]*)\))?", message)
        if found:
            also = f" (also {found.group(2)})" if found.group(2) else ""
            return f"no gradient rule: {found.group(1)}{also}", None
        found = re.match(r"cannot differentiate (\w+) node '[^']*': (.*)", message)
        if found:
            return f"rule limitation: {found.group(1)}: {_one_line(found.group(2), 100)}", None
    measured = re.search(r"relative error of ([0-9.e+-]+)", message)
    if measured:
        return "error above tolerance", float(measured.group(1))
    if isinstance(exc, OnnxcamError):
        return f"onnxcam: {_one_line(message, 120)}", None
    where = {"create": "timm model fails at this input", "export": "exporter failure"}.get(stage, stage)
    return f"{where}: {type(exc).__name__}: {_one_line(message.splitlines()[0] if message else '', 110)}", None


def run_case(case: Case, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export ``case`` and measure its parity; a JSON-ready row (``result`` "pass" or "fail")."""
    import numpy as np
    import onnx

    from onnxcam.core.metadata import read_metadata
    from onnxcam.exporter import export_torch
    from onnxcam.frontends.torch_parity import PARITY_TOLERANCE, check_parity

    row: dict[str, Any] = {"model": case.name, "family": case.family, "input": case.size, "layer": "—",
                           "layout": "—", "error": None, "result": "fail", "reason": "", "note": case.note}
    started = time.time()
    stage = "create"
    try:
        model = build(case)
        row["layer"] = layer = target_layer(case, model)
        row["layout"] = _layout(model, layer, case.size)
        stage = "export"
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            path = export_torch(model, pathlib.Path(tmp) / "m.onnx", target_layer=layer,
                                input_shape=(3, case.size, case.size), exporter=case.exporter)
            proto = onnx.load(path)
        row["layout"] = _format_layout(read_metadata(proto).layouts[0])  # as recorded, not as guessed
        stage = "parity"
        rng = np.random.default_rng(5)
        inputs = [rng.standard_normal((batch, 3, case.size, case.size)).astype(np.float32) for batch in (2, 3)]
        parity = check_parity(model, proto, layer, inputs)
        row["error"] = parity.error
        if parity.error <= PARITY_TOLERANCE and parity.images >= 4:
            row["result"] = "pass"
        else:
            row["reason"] = (f"error above tolerance on new inputs ({parity.images} images compared, "
                             f"{parity.flips} rounding flips)")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        row["reason"], row["error"] = classify(exc, stage)
        row["reason"] = row["reason"].replace("onnxcam_target_0", row["layer"])
    row["seconds"] = round(time.time() - started, 1)
    return row


def _child(case: Case, conn: Any, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # torch's exporter can print whole graphs
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    conn.send(run_case(case))
    conn.close()


def preload() -> None:
    """Import the heavy modules once, before forking: each case's process then starts in milliseconds, not
    the ~10 s that importing torch, timm and ONNX Runtime takes on 2 cores. No torch op runs here (forking
    after one would copy a started thread pool)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded; pretrained=False needs nothing anyway
    import onnxruntime  # noqa: F401
    import timm  # noqa: F401

    import onnxcam.exporter  # noqa: F401
    import onnxcam.frontends.torch_export  # noqa: F401


def run_isolated(case: Case, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """:func:`run_case` in its own (forked) process, killed after ``timeout`` seconds."""
    import multiprocessing

    base = {"model": case.name, "family": case.family, "input": case.size, "layer": "—", "layout": "—",
            "error": None, "result": "fail", "note": case.note}
    started = time.time()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    handle, log = tempfile.mkstemp(prefix=f"timm_{case.name}_", suffix=".log")
    os.close(handle)
    sys.stdout.flush()
    sys.stderr.flush()
    process = context.Process(target=_child, args=(case, send, log), daemon=True)
    process.start()
    send.close()
    row = None
    timed_out = not receive.poll(timeout)
    if not timed_out:
        with contextlib.suppress(EOFError):  # the process died before it sent its row
            row = receive.recv()
    process.join(5 if row is not None else 0.5)
    if process.is_alive():
        process.kill()
        process.join()
    receive.close()
    tail = pathlib.Path(log).read_text(errors="replace").strip().splitlines()[-1:]
    pathlib.Path(log).unlink(missing_ok=True)
    if row is not None:
        return row
    seconds = round(time.time() - started, 1)
    if timed_out:
        return {**base, "reason": f"timeout after {timeout:.0f} s", "seconds": seconds}
    last = f": {_one_line(tail[0], 110)}" if tail else ""
    return {**base, "reason": f"crashed (exit code {process.exitcode}){last}", "seconds": seconds}


def _error(row: dict[str, Any]) -> str:
    return "—" if row.get("error") is None else f"{row['error']:.1e}"


def markdown(rows: list[dict[str, Any]], elapsed: float | None) -> str:
    passed = sum(row["result"] == "pass" for row in rows)
    import timm
    import torch

    lines = [
        "# Gradient parity on timm models",
        "",
        "Generated by `python -m docs.make_timm_coverage`; do not edit by hand. Random weights "
        "(`pretrained=False`, `num_classes=10`), TorchScript exporter at opset 17 (dynamo at 18 where noted), "
        "target = the model's last feature stage (timm's `feature_info`). Relative error = "
        "max |ORT − torch.autograd| / max |torch| over logits, activations and gradients, on two inputs "
        "(batch 2 and 3); pass ≤ 1e-4.",
        "",
        f"**{passed} of {len(rows)} pass.** timm {timm.__version__}, torch {torch.__version__}, "
        f"{platform.machine()} ({os.cpu_count()} cores)"
        + (f", {elapsed / 60:.0f} min." if elapsed is not None else "."),
        "",
        "| model | family | input | layer | layout | relative error | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        result = "pass" if row["result"] == "pass" else f"fail: {row['reason']}"
        if row.get("note") and (row["result"] != "pass" or not row["note"].startswith("known cause")):
            result += f" ({row['note']})"
        lines.append(f"| {row['model']} | {row['family']} | {row['input']} | `{row['layer']}` | {row['layout']} | "
                     f"{_error(row)} | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def readme_table(rows: list[dict[str, Any]]) -> str:
    """The README's compact table: per family (in sweep order) the models that pass and those that fail, why."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        passed, failed = families.setdefault(row["family"], ([], []))
        if row["result"] == "pass":
            passed.append(row["model"] + (" (dynamo)" if "dynamo exporter" in row.get("note", "") else ""))
        else:
            note = row.get("note", "")
            failed.append(f"{row['model']}: {note.removeprefix('known cause: ') or row['reason']}")
    lines = ["| family | pass | fail (why) |", "|---|---|---|"]
    lines += [f"| {family} | {', '.join(passed)} | {'; '.join(failed).replace('|', '/')} |"
              for family, (passed, failed) in families.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these models")
    parser.add_argument("--markdown", type=pathlib.Path, default=None,
                        help=f"write the table here (default: {MARKDOWN.relative_to(ROOT)} for a full sweep)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per model")
    parser.add_argument("--readme", action="store_true", help="also print the README's compact family table")
    parser.add_argument("--from-json", type=pathlib.Path, default=None,
                        help="re-render the tables from a previous --json file instead of running the sweep")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        rows = json.loads(args.from_json.read_text())
        for row in rows:  # a note belongs to the case definition, not to the run
            if row["model"] in CASES_BY_NAME:
                row["note"] = CASES_BY_NAME[row["model"]].note
        if args.markdown is not None:
            args.markdown.write_text(markdown(rows, sum(row.get("seconds", 0) for row in rows)))
        print(readme_table(rows), end="")
        return
    unknown = sorted(set(args.only or []) - CASES_BY_NAME.keys())
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    cases = [CASES_BY_NAME[name] for name in args.only] if args.only else CASES
    started = time.time()
    preload()
    rows = []
    for i, case in enumerate(cases, 1):
        row = run_isolated(case, args.timeout)
        rows.append(row)
        verdict = "pass" if row["result"] == "pass" else f"FAIL {row['reason']}"
        print(f"[{i}/{len(cases)}] {case.name:34s} {_error(row):>8s} {row['seconds']:6.1f}s  {verdict}", flush=True)
    elapsed = time.time() - started
    out = args.markdown or (None if args.only else MARKDOWN)
    if out is not None:
        out.write_text(markdown(rows, elapsed))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.readme:
        print("\n" + readme_table(rows), end="")
    passed = sum(row["result"] == "pass" for row in rows)
    print(f"\n{passed} of {len(rows)} pass, {len(rows) - passed} fail ({elapsed / 60:.1f} min)"
          + (f"; table in {out}" if out else ""))
    causes: dict[str, list[str]] = {}
    for row in rows:
        if row["result"] != "pass":
            causes.setdefault(row["reason"], []).append(row["model"])
    for reason, models in sorted(causes.items(), key=lambda item: -len(item[1])):
        print(f"  {len(models):2d}  {reason}: {', '.join(models)}")


if __name__ == "__main__":
    main()
