"""The PyTorch baseline for benchmarks: pytorch-grad-cam 1.5.7 on PyTorch eager, on the same weights.

CF-CAM is not part of pytorch-grad-cam; its baseline is pytorch-grad-cam's ``BaseCAM`` (forward and
backward hooks on PyTorch eager, its ReLU, scaling and resizing) with CF-CAM's channel weights, computed
image by image by onnxcam's own numpy code, which is how the method is used with PyTorch today.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np

from onnxcam.cams import get_method
from onnxcam.cams.methods.cfcam.method import cfcam_details


def available() -> bool:
    """Whether torch and pytorch-grad-cam can be imported."""
    try:
        import pytorch_grad_cam  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _cfcam_class() -> type:
    from pytorch_grad_cam.base_cam import BaseCAM

    class CFCAM(BaseCAM):
        """pytorch-grad-cam's BaseCAM with CF-CAM channel weights (onnxcam's numpy definition, per image)."""

        def get_cam_weights(self, input_tensor: Any, target_layer: Any, targets: Any, activations: np.ndarray,
                            grads: np.ndarray) -> np.ndarray:
            return np.stack([cfcam_details(a, g).alphas for a, g in zip(activations, grads)]).astype(np.float32)

    return CFCAM


def pytorch_grad_cam_runner(model: Any, target_layer: str, method: str, *, batch_size: int = 32,
                            ) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function of a preprocessed ``[N,C,H,W]`` float32 batch that returns pytorch-grad-cam's maps for the
    predicted classes at module ``target_layer`` of ``model`` (eval mode, CPU); None when pytorch-grad-cam has
    no counterpart of ``method`` (the class is the method's registered ``reference``; CF-CAM's is
    pytorch-grad-cam's BaseCAM with CF-CAM's weights). ``batch_size`` is Score-CAM's and Ablation-CAM's batch
    for their extra passes.
    """
    import pytorch_grad_cam
    import pytorch_grad_cam.ablation_cam
    import pytorch_grad_cam.score_cam
    import torch

    quiet = types.SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    for module in (pytorch_grad_cam.score_cam, pytorch_grad_cam.ablation_cam):
        module.tqdm = quiet  # their progress bars would fill the benchmark's output

    reference = get_method(method).reference
    if method == "cfcam":
        cls = _cfcam_class()
    elif reference is not None:
        cls = getattr(pytorch_grad_cam, reference)
    else:
        return None
    model = model.eval()
    cam = cls(model=model, target_layers=[model.get_submodule(target_layer)])
    cam.batch_size = batch_size

    def runner(batch: np.ndarray) -> np.ndarray:
        return cam(input_tensor=torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)), targets=None)

    return runner
