"""ONNX Runtime sessions: choosing the execution provider and checking that it really runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcam.core.errors import OnnxcamError, ProviderError
from onnxcam.core.ort import onnxruntime, ort_message

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
OPTIMISATION_LEVELS = ("disable", "basic", "extended", "all")




EXECUTION_MODES = ("sequential", "parallel")


def session_options(*, threads: int | None = None, optimisation: str = "all", execution_mode: str = "sequential",
                    inter_op_threads: int | None = None) -> Any:
    """SessionOptions for onnxcam's sessions.

    ``threads``: intra-op threads (None: ORT's default, one per physical core); ``optimisation``: graph
    optimisation level (disable, basic, extended, all); ``execution_mode``: "sequential" (default: CNNs are
    chains, and intra-op threads already use every core) or "parallel" (independent branches at once, with
    ``inter_op_threads`` threads).
    """
    ort = onnxruntime()
    if optimisation not in OPTIMISATION_LEVELS:
        raise OnnxcamError(f"unknown optimisation level '{optimisation}'; use one of {', '.join(OPTIMISATION_LEVELS)}")
    if execution_mode not in EXECUTION_MODES:
        raise OnnxcamError(f"unknown execution mode '{execution_mode}'; use one of {', '.join(EXECUTION_MODES)}")
    for name, value in (("threads", threads), ("inter-op threads", inter_op_threads)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise OnnxcamError(f"{name} must be a whole number >= 0 (0: ONNX Runtime's default), got {value!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimisation]
    opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel"
                           else ort.ExecutionMode.ORT_SEQUENTIAL)
    if threads:
        opts.intra_op_num_threads = threads
    if inter_op_threads:
        opts.inter_op_num_threads = inter_op_threads
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
            return _session(ort, model, options, [CPU])
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
    return _session(ort, model, options, list(providers))


def _session(ort: Any, model: bytes, options: Any, providers: list) -> Any:
    """``ort.InferenceSession``, with ONNX Runtime's refusal to load a model as a one-line error."""
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # noqa: BLE001
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise OnnxcamError(f"ONNX Runtime cannot load the model ({ort_message(exc)}); check that the file is a "
                           "valid ONNX model for this onnxruntime version") from None


def on_cuda(session: Any) -> bool:
    """Whether ``session`` runs on the CUDA execution provider."""
    return session.get_providers()[0] == CUDA


def run(session: Any, feeds: dict[str, np.ndarray], *, io_binding: bool | None = None,
        outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """``session``'s outputs for ``feeds`` (numpy arrays), as numpy arrays: all of them, or those named in
    ``outputs``, in that order (ONNX Runtime runs the whole graph either way; fewer outputs means fewer copies
    out of its buffers, and no [N,C,h,w] tensors handed to Python that nobody reads).

    With ``io_binding`` (default: when the session runs on CUDA) the inputs are bound once and every output is
    bound to host memory, so ONNX Runtime writes each result straight into the array returned, instead of
    allocating it on the GPU and copying it afterwards.
    """
    if io_binding is None:
        io_binding = on_cuda(session)
    try:
        if not io_binding:
            return session.run(None if outputs is None else list(outputs), feeds)
        return _run_bound(session, feeds, outputs)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad inputs
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise OnnxcamError(f"ONNX Runtime rejected the input ({ort_message(exc)}); the model expects "
                           f"{expected_inputs(session)}: pass image files or arrays and let onnxcam preprocess "
                           "them, or a batch of exactly that shape and type") from None




def expected_inputs(session: Any) -> str:
    """``'input' float32 [N,3,224,224], 'class_index' int64 [N]``: what a session's inputs must be."""
    parts = []
    for inp in session.get_inputs():
        dtype = inp.type.removeprefix("tensor(").removesuffix(")")
        dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)
        dims = ",".join(str(d) if isinstance(d, int) else "N" for d in inp.shape)
        parts.append(f"'{inp.name}' {dtype} [{dims}]")
    return ", ".join(parts)


def _run_bound(session: Any, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None,
               ) -> list[np.ndarray]:
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in outputs if outputs is not None else [o.name for o in session.get_outputs()]:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()
