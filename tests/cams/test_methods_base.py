"""Tests for the CAM method registry and finalise() (upsampling + normalisation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from onnxcam.cams import (
    METHODS,
    CAMContext,
    CAMMethod,
    NoOptions,
    Options,
    check_options,
    finalise,
    get_method,
    register,
    with_defaults,
)
from onnxcam.cams.base import check_pair
from onnxcam.core.errors import OnnxcamError


def test_builtin_methods_are_registered() -> None:
    assert {"gradcam", "cfcam"} <= set(METHODS)
    grad = get_method("gradcam")
    assert isinstance(grad, CAMMethod)
    assert grad.name == "gradcam" and grad.normalise == "minmax" and grad.option_names == ()
    assert grad.options is NoOptions
    cf = get_method("cfcam")
    assert cf.normalise == "max"
    assert cf.option_names == ("filter", "sigma", "weighting", "drop_noise", "mode")
    assert grad.description and cf.description


# name: (uses_gradients, uses_model, the pytorch-grad-cam 1.5.7 class it matches)
DECLARED = {
    "gradcam": (True, False, "GradCAM"),
    "gradcampp": (True, False, "GradCAMPlusPlus"),
    "smoothgradcampp": (True, True, None),
    "xgradcam": (True, False, "XGradCAM"),
    "layercam": (True, False, "LayerCAM"),
    "hirescam": (True, False, "HiResCAM"),
    "normgrad": (True, False, None),
    "eigencam": (False, False, "EigenCAM"),
    "eigengradcam": (True, False, "EigenGradCAM"),
    "scorecam": (False, True, "ScoreCAM"),
    "ablationcam": (False, True, "AblationCAM"),
    "cfcam": (True, False, None),
}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_method_declares_what_it_needs(name: str) -> None:
    spec = get_method(name)
    assert (spec.uses_gradients, spec.uses_model, spec.reference) == DECLARED[name]
    assert issubclass(spec.options, Options)  # the built-in ones derive from Options (any dataclass would do)
    assert (spec.build is not None) == (not spec.uses_model)  # every method without extra passes embeds


def test_methods_without_gradients_ignore_them() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((2, 6, 4, 4), dtype=np.float32)
    g1, g2 = rng.standard_normal((2, *a.shape)).astype(np.float32)
    for name, spec in METHODS.items():
        if not spec.uses_gradients and not spec.uses_model:
            np.testing.assert_array_equal(spec(a, g1), spec(a, g2), err_msg=name)


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


@dataclass(frozen=True)
class OnesOptions(Options):
    k: int = 1
    scale: float = 1.0
    flag: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, int) and self.k < 0:
            raise OnnxcamError(f"_test_ones option k must be >= 0, got {self.k}")


def test_register_adds_a_method_and_rejects_duplicates() -> None:
    try:

        @register("_test_ones", options=OnesOptions, uses_gradients=False, uses_model=False, normalise="max",
                  description="all ones")
        def ones(ctx: CAMContext, options: OnesOptions) -> np.ndarray:
            a = ctx.activations
            return np.ones((a.shape[0], *a.shape[2:]), np.float32) * options.k * options.scale

        method = get_method("_test_ones")
        assert method.compute is ones  # the decorator returns the function unchanged
        assert (method.normalise, method.option_names, method.description) == ("max", ("k", "scale", "flag", "name"),
                                                                               "all ones")
        assert (method.uses_gradients, method.uses_model, method.reference, method.build) == (False, False, None, None)
        z = np.zeros((2, 3, 4, 5))
        assert method(z, z, k=2).shape == (2, 4, 5) and method(z, z, k=2).max() == 2
        assert method.run(CAMContext(z, z), OnesOptions(k=3)).max() == 3
        # types from the fields: a float field takes ints, a bool field only bools, an int field no floats
        assert method.resolve({"scale": 2}) == OnesOptions(scale=2)
        for key, value, words in (("flag", 1, "true or false"), ("k", 1.5, "a whole number"),
                                  ("k", True, "a whole number"), ("scale", "2", "a number"),
                                  ("name", 3, "a string or null")):
            with pytest.raises(OnnxcamError) as info:
                method.resolve({key: value})
            assert str(info.value) == f"method '_test_ones' option '{key}' must be {words}, got {value!r}"
        with pytest.raises(OnnxcamError, match="^_test_ones option k must be >= 0, got -1$"):
            method.resolve({"k": -1})  # the options' own validation
        with pytest.raises(OnnxcamError, match="does not accept option 'j'; accepted options: k, scale, flag, name"):
            method(z, z, j=1)
        with pytest.raises(OnnxcamError, match="cannot be embedded"):
            method.graph(None, "A", "G", (3, 4, 5))  # type: ignore[arg-type]
        assert with_defaults(method, {"name": "x", "scale": 2}) == {"k": 1, "scale": 2, "flag": False, "name": "x"}
        with pytest.raises(ValueError, match="already registered"):
            register("_test_ones", uses_gradients=False, uses_model=False)(ones)
    finally:
        METHODS.pop("_test_ones", None)
    with pytest.raises(ValueError, match="normalise"):
        register("_test_bad", uses_gradients=True, uses_model=False, normalise="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="options"):
        register("_test_bad", options=dict, uses_gradients=True, uses_model=False)
    assert "_test_bad" not in METHODS


def test_with_defaults_is_what_embed_records() -> None:
    assert with_defaults(get_method("gradcampp")) == {"eps": 1e-06}
    assert with_defaults(get_method("gradcampp"), {"eps": 0}) == {"eps": 0}
    assert with_defaults(get_method("gradcam"), {}) == {}
    cf = get_method("cfcam")
    assert with_defaults(cf) == {} and with_defaults(cf, {"mode": "authors"}) == {"mode": "authors"}
    assert list(with_defaults(cf, {"mode": "authors", "filter": "bilateral"})) == ["mode", "filter"]  # given order
    assert with_defaults(get_method("smoothgradcampp")) == {"samples": 8, "sigma": 0.3, "seed": 0}
    assert with_defaults(get_method("scorecam")) == {}


def test_same_options_compares_resolved_options() -> None:
    cf = get_method("cfcam")
    assert cf.same_options({}, {"mode": "onnxcam", "filter": "gaussian", "sigma": 1, "weighting": "linear",
                                "drop_noise": True})
    assert cf.same_options({"mode": "authors"}, {"mode": "authors", "filter": "bilateral"})
    assert not cf.same_options({}, {"mode": "authors"})
    pp = get_method("gradcampp")
    assert pp.same_options({}, {"eps": 1e-6}) and pp.same_options({"eps": 0}, {"eps": 0.0})
    assert not pp.same_options({}, {"eps": 0})


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


def test_any_frozen_dataclass_can_be_the_options() -> None:
    @dataclass(frozen=True)
    class Plain:
        absolute: bool = False

    try:

        @register("_test_plain", options=Plain, uses_gradients=True)
        def plain(ctx: CAMContext, options: Plain) -> np.ndarray:
            g = np.abs(ctx.gradients) if options.absolute else ctx.gradients
            return np.maximum(g.sum(axis=1), 0).astype(np.float32)

        spec = get_method("_test_plain")
        assert not spec.uses_model and spec.option_names == ("absolute",)
        assert spec.resolve({"absolute": True}) == Plain(True) and spec.same_options({}, {"absolute": False})
        g = -np.ones((1, 2, 3, 3), np.float32)
        assert spec(g, g).max() == 0 and spec(g, g, absolute=True).max() == 2
        with pytest.raises(OnnxcamError, match="takes Plain, got NoOptions"):
            spec.resolve(NoOptions())
    finally:
        METHODS.pop("_test_plain", None)
