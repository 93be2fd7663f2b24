"""ONNX Runtime session options and I/O binding."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam.core.errors import OnnxcamError
from onnxcam.runtime import Explainer
from onnxcam.runtime.session import run, session_options
from tests.conftest import SHAPES_MODEL


def test_options_are_applied() -> None:
    opts = session_options(threads=1, optimisation="basic", execution_mode="parallel", inter_op_threads=2)
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 2
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    default = session_options()
    assert default.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"execution_mode": "async"}, "execution mode 'async'"),
    ({"optimisation": "max"}, "optimisation level 'max'"),
    ({"threads": -1}, "threads must be"),
    ({"inter_op_threads": 1.5}, "inter-op threads must be"),
])
def test_bad_options_name_the_problem(kwargs: dict, named: str) -> None:
    with pytest.raises(OnnxcamError, match=named):
        session_options(**kwargs)


def test_every_session_of_an_explainer_uses_its_options() -> None:
    explainer = Explainer(SHAPES_MODEL, providers="cpu", session_options=session_options(threads=1))
    batch = np.random.default_rng(0).standard_normal((3, *explainer.input_shape)).astype(np.float32)
    explainer.explain(batch, method="scorecam")  # opens the forward-only session
    for session in (explainer.session, explainer._forward_session):
        assert session.get_session_options().intra_op_num_threads == 1
    reference = Explainer(SHAPES_MODEL, providers="cpu").explain(batch, method="gradcam").cams
    np.testing.assert_allclose(explainer.explain(batch, method="gradcam").cams, reference, atol=1e-5)


def test_io_binding_returns_what_run_returns() -> None:
    explainer = Explainer(SHAPES_MODEL, providers="cpu")
    rng = np.random.default_rng(1)
    for n in (1, 4):
        feeds = {"input": rng.standard_normal((n, *explainer.input_shape)).astype(np.float32),
                 "class_index": np.array([-1, 2, 0, 1][:n], np.int64)}
        plain = explainer.session.run(None, feeds)
        bound = run(explainer.session, feeds, io_binding=True)
        assert len(bound) == len(plain) == len(explainer.session.get_outputs())
        for a, b in zip(plain, bound):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
