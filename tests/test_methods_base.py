"""Tests for the CAM method registry and finalise() (upsampling + normalisation)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.cams import (
    METHODS,
    CAMMethod,
    check_options,
    finalise,
    get_method,
    register,
)
from onnxcam.cams.base import check_pair
from onnxcam.core.errors import OnnxcamError


def test_builtin_methods_are_registered() -> None:
    assert {"gradcam", "cfcam"} <= set(METHODS)
    grad = get_method("gradcam")
    assert isinstance(grad, CAMMethod)
    assert grad.name == "gradcam" and grad.normalise == "minmax" and grad.options == ()
    cf = get_method("cfcam")
    assert cf.normalise == "max"
    assert cf.options == ("filter", "sigma", "weighting", "drop_noise", "mode")
    assert grad.description and cf.description


def test_get_method_unknown_name() -> None:
    with pytest.raises(OnnxcamError) as info:
        get_method("x")
    assert str(info.value) == "unknown method 'x'; choose one of: " + ", ".join(sorted(METHODS))
    assert {"cfcam", "gradcam"} <= set(METHODS)


def test_check_options_accepts_known_and_rejects_unknown() -> None:
    cf = get_method("cfcam")
    check_options(cf, {})
    check_options(cf, {"filter": "none", "mode": "authors"})
    with pytest.raises(OnnxcamError) as info:
        check_options(cf, {"filter": "none", "bandwidth": 3})
    message = str(info.value)
    assert "'bandwidth'" in message and "'cfcam'" in message
    assert "filter, sigma, weighting, drop_noise, mode" in message
    assert "'filter'" not in message  # only the unknown option is named as unknown
    with pytest.raises(OnnxcamError, match="'sigma'.*accepted options: none"):
        check_options(get_method("gradcam"), {"sigma": 1.0})


def test_register_adds_a_method_and_rejects_duplicates() -> None:
    try:

        @register("_test_ones", normalise="max", options=("k",), description="all ones")
        def ones(activations: np.ndarray, gradients: np.ndarray, k: int = 1) -> np.ndarray:
            return np.ones((activations.shape[0], *activations.shape[2:]), np.float32) * k

        method = get_method("_test_ones")
        assert method.compute is ones  # the decorator returns the function unchanged
        assert (method.normalise, method.options, method.description) == ("max", ("k",), "all ones")
        assert method.compute(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5)), k=2).shape == (2, 4, 5)
        with pytest.raises(ValueError, match="already registered"):
            register("_test_ones")(ones)
    finally:
        METHODS.pop("_test_ones", None)
    with pytest.raises(ValueError, match="normalise"):
        register("_test_bad", normalise="sum")  # type: ignore[arg-type]
    assert "_test_bad" not in METHODS


def test_check_pair_rejects_bad_inputs() -> None:
    a = np.zeros((1, 2, 3, 3), np.float32)
    check_pair(a, a)
    with pytest.raises(OnnxcamError, match="same shape"):
        check_pair(a, np.zeros((1, 2, 3, 4), np.float32))
    with pytest.raises(OnnxcamError, match=r"\[N,C,h,w\]"):
        check_pair(a[0], a[0])
    bad = a.copy()
    bad[0, 1, 2, 2] = np.nan
    with pytest.raises(OnnxcamError, match="NaN"):
        check_pair(a, bad)


# Half-pixel bilinear 2 -> 4: source x = (X + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1],
# so the output is [a, 0.75a + 0.25b, 0.25a + 0.75b, b].
# 2 -> 6: x = (X + 0.5)/3 - 0.5 = -1/3, 0, 1/3, 2/3, 1, 4/3 -> [a, a, 2a/3 + b/3, a/3 + 2b/3, b, b].
UP_2_TO_4_OF_0123 = np.array(
    [
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ]
)


def test_finalise_bilinear_half_pixel_2x2_to_4x4() -> None:
    maps = np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)
    out = finalise(maps, (4, 4), "max")
    assert out.dtype == np.float32 and out.shape == (1, 4, 4)
    np.testing.assert_allclose(out[0], UP_2_TO_4_OF_0123 / 3.0, atol=1e-6)
    # align_corners=True would give [0, 1/3, 2/3, 1] on the first row instead
    assert abs(out[0, 0, 1] - 0.25 / 3.0) < 1e-6


def test_finalise_size_is_height_width_and_minmax_differs_from_max() -> None:
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)
    row0 = np.array([1.0, 1.0, 4 / 3, 5 / 3, 2.0, 2.0])
    row1 = np.array([3.0, 3.0, 10 / 3, 11 / 3, 4.0, 4.0])
    raw = np.stack([row0, 0.75 * row0 + 0.25 * row1, 0.25 * row0 + 0.75 * row1, row1])  # [H=4, W=6]
    by_max = finalise(maps, (4, 6), "max")
    by_minmax = finalise(maps, (4, 6), "minmax")
    assert by_max.shape == (1, 4, 6)
    np.testing.assert_allclose(by_max[0], raw / 4.0, atol=1e-6)
    np.testing.assert_allclose(by_minmax[0], (raw - 1.0) / 3.0, atol=1e-6)
    assert by_max[0].min() == pytest.approx(0.25) and by_minmax[0].min() == 0.0
    assert by_max[0].max() == 1.0 and by_minmax[0].max() == 1.0


def test_finalise_constant_maps_and_per_map_scaling() -> None:
    maps = np.stack(
        [
            np.full((2, 2), 0.5, np.float32),
            np.zeros((2, 2), np.float32),
            np.array([[0.0, 2.0], [0.0, 0.0]], np.float32),
        ]
    )
    by_minmax = finalise(maps, (3, 3), "minmax")
    by_max = finalise(maps, (3, 3), "max")
    np.testing.assert_array_equal(by_minmax[0], np.zeros((3, 3)))  # max == min -> all zeros
    np.testing.assert_array_equal(by_max[0], np.ones((3, 3)))  # m / max
    np.testing.assert_array_equal(by_minmax[1], np.zeros((3, 3)))
    np.testing.assert_array_equal(by_max[1], np.zeros((3, 3)))  # max == 0 -> unchanged
    # each map is scaled on its own: the third one still reaches 1 (2x2 -> 3x3 keeps the corner pixel)
    assert by_max[2, 0, 2] == pytest.approx(1.0) and by_minmax[2, 0, 2] == pytest.approx(1.0)


def test_finalise_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="normalise"):
        finalise(np.zeros((1, 2, 2)), (4, 4), "sum")
    with pytest.raises(ValueError, match=r"\[N,h,w\]"):
        finalise(np.zeros((2, 2)), (4, 4), "max")


def test_methods_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, onnxcam.cams.methods; sys.exit(int(any(m.split('.')[0] == 'torch' for m in sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
