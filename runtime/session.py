"""ONNX Runtime sessions: choosing the execution provider and checking that it really runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import OnnxcamError, ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
OPTIMISATION_LEVELS = ("disable", "basic", "extended", "all")


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an error that says how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxcamError("ONNX Runtime is not installed; run `pip install onnxcam[cpu]` "
                           "(or onnxcam[gpu] on a machine with an NVIDIA GPU)") from None
    return ort


def session_options(*, threads: int | None = None, optimisation: str = "all") -> Any:
    """SessionOptions with ``threads`` intra-op threads (None: ORT's default) and an optimisation level."""
    ort = onnxruntime()
    if optimisation not in OPTIMISATION_LEVELS:
        raise OnnxcamError(f"unknown optimisation level '{optimisation}'; use one of {', '.join(OPTIMISATION_LEVELS)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimisation]
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return opts


def create_session(model: bytes, providers: str | Sequence[Any] = "auto", options: Any = None) -> Any:
    """An InferenceSession on ``providers``: "auto" (CUDA when it really starts, else CPU), "cuda"
    (an error unless CUDA is active after creation — never a silent CPU fallback), "cpu", or an ORT list."""
    ort = onnxruntime()
    options = options or session_options()
    available = ort.get_available_providers()
    if isinstance(providers, str):
        if providers not in DEVICES:
            raise OnnxcamError(f"unknown device '{providers}'; use one of {', '.join(DEVICES)}")
        if providers == "cpu" or (providers == "auto" and CUDA not in available):
            return ort.InferenceSession(model, options, providers=[CPU])
        if CUDA not in available:
            raise ProviderError("CUDA was requested but this ONNX Runtime has no CUDA provider (available: "
                                f"{', '.join(available)}); install onnxcam[gpu] on a machine with an NVIDIA GPU, "
                                "or use --device cpu")
        try:
            session = ort.InferenceSession(model, options, providers=[CUDA, CPU])
        except Exception as exc:  # noqa: BLE001 - ORT raises plain RuntimeErrors
            if providers == "cuda":
                raise ProviderError(f"CUDA was requested but the session failed to start on it ({exc}); "
                                    "use --device cpu") from None
            return ort.InferenceSession(model, options, providers=[CPU])
        if session.get_providers()[0] != CUDA:
            if providers == "cuda":
                raise ProviderError("CUDA was requested but ONNX Runtime fell back to the CPU (is the CUDA/cuDNN "
                                    "runtime installed and a GPU visible?); use --device cpu")
            return ort.InferenceSession(model, options, providers=[CPU])
        return session
    return ort.InferenceSession(model, options, providers=list(providers))
