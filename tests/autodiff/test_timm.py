"""Gradient parity on a representative subset of timm models (random weights), at their last feature stage.

The wide sweep (115 models) is ``python -m docs.make_timm_coverage``, which writes docs/timm_coverage.md;
this runs a few of its cases, one of each kind, in process: the same model, input size, target layer and check
(``export_torch``'s own parity check, then ≤ 1e-4 again on two other inputs).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # pretrained=False downloads nothing; make sure of it

from docs.make_timm_coverage import CASES_BY_NAME, run_case  # noqa: E402

SUBSET = {  # model: the layout its target is recorded with
    "resnet50d": "NCHW",  # plain residual CNN, deep stem, avg-pool downsampling
    "mobilenetv3_small_050": "NCHW",  # depthwise convolutions, squeeze-excitation, hard-swish
    "convnext_atto": "NCHW",  # depthwise 7×7, channels-last LayerNorm, layer scale
    "deit_tiny_distilled_patch16_224": "NTC",  # ViT tokens with class and distillation tokens
    "swin_tiny_patch4_window7_224": "NHWC",  # shifted windows, channels-last grid
    "mobilevit_xxs": "NCHW",  # hybrid: convolutions and unfolded attention
    "levit_128s": "NTC",  # hybrid: convolutional stem, attention with learned biases
}


@pytest.mark.parametrize("name", sorted(SUBSET))
def test_timm_parity(name, tmp_path):
    row = run_case(CASES_BY_NAME[name], tmp_path)
    assert row["result"] == "pass", row
    assert row["error"] <= 1e-4
    assert row["layout"].split()[0] == SUBSET[name], row
