"""Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, NormGrad, Eigen-CAM and EigenGrad-CAM.

Hand-worked values on 2-channel 2×2 tensors for every method, then agreement with pytorch-grad-cam 1.5.7
(same ResNet-18, same images, our compute fed with torch-hooked activations and gradients, then our
``finalise``) at Pearson r ≥ 0.999 per image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcam.cams import METHODS, finalise, get_method
from onnxcam.core.errors import OnnxcamError

# the methods as functions of (activations, gradients, **options): CAMMethod.__call__
eigencam, eigengradcam, gradcampp, hirescam, layercam, normgrad, xgradcam = (
    METHODS[name] for name in ("eigencam", "eigengradcam", "gradcampp", "hirescam", "layercam", "normgrad", "xgradcam"))

FAMILY = ("gradcampp", "xgradcam", "layercam", "hirescam", "normgrad", "eigencam", "eigengradcam")

# Shared 2-channel 2×2 example: S_0 = ΣA_0 = 4, S_1 = ΣA_1 = 5.
A = np.array(
    [
        [[1.0, 2.0], [0.0, 1.0]],  # A_0
        [[0.0, 1.0], [3.0, 1.0]],  # A_1
    ],
    np.float32,
)
G = np.array(
    [
        [[0.5, 0.5], [0.5, 0.5]],  # G_0
        [[-1.0, 2.0], [0.5, -1.0]],  # G_1
    ],
    np.float32,
)


def batch(*arrays: np.ndarray) -> np.ndarray:
    return np.stack(arrays).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# registry


def test_family_is_registered() -> None:
    for name in FAMILY:
        method = get_method(name)
        assert method.normalise == "minmax" and method.description
    assert METHODS["gradcampp"].option_names == ("eps",)
    assert all(METHODS[name].option_names == () for name in FAMILY if name != "gradcampp")


@pytest.mark.parametrize("name", FAMILY)
def test_shapes_dtype_and_rejects_mismatch(name: str) -> None:
    rng = np.random.default_rng(0)
    acts = rng.random((3, 4, 5, 6), dtype=np.float32)
    grads = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    out = get_method(name)(acts, grads)
    assert out.dtype == np.float32 and out.shape == (3, 5, 6)
    assert np.isfinite(out).all() and (out >= 0).all()
    with pytest.raises(OnnxcamError):
        get_method(name)(acts, grads[:, :2])


# ---------------------------------------------------------------------------------------------------------------
# Grad-CAM++


def test_gradcampp_hand_example_exact_alpha() -> None:
    # eps = 0: α = G² / (2G² + S·G³) = 1 / (2 + S·G) where G ≠ 0.
    a = A
    g = np.array(
        [
            [[0.5, 0.0], [-0.5, 0.25]],  # S_0 = 4: α = 1/4, 0 (G = 0), 0 (2 + 4·(−0.5) = 0: zero denominator), 1/3
            [[0.0, 0.2], [0.0, -1.0]],  # S_1 = 5: α = 0, 1/3, 0, −1/3 (but ReLU(G) = 0 there)
        ],
        np.float32,
    )
    w0 = 0.25 * 0.5 + (1 / 3) * 0.25  # = 5/24
    w1 = (1 / 3) * 0.2  # = 1/15
    expected = [[w0 * 1 + w1 * 0, w0 * 2 + w1 * 1], [w0 * 0 + w1 * 3, w0 * 1 + w1 * 1]]
    out = gradcampp(a[None], g[None], eps=0.0)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[0], [[5 / 24, 5 / 12 + 1 / 15], [0.2, 5 / 24 + 1 / 15]], rtol=1e-6)


def test_gradcampp_zero_denominator_with_positive_gradient() -> None:
    # Negative activations: S_0 = −4, G = 0.5 gives 2G² + S·G³ = 0.5 − 0.5 = 0 with G > 0. With eps = 0 that α is
    # set to 0 (no inf/NaN); channel 1 (S_1 = 2) has α = 1/(2 + 2·1) = 1/4 at its one non-zero gradient.
    a = np.array([[[-1.0, -1.0], [-1.0, -1.0]], [[2.0, 0.0], [0.0, 0.0]]], np.float32)
    g = np.array([[[0.5, 0.5], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]], np.float32)
    out = gradcampp(a[None], g[None], eps=0.0)
    assert np.isfinite(out).all()
    # w_0 = 0, w_1 = 1/4·1 → map = ReLU(0.25·A_1)
    np.testing.assert_allclose(out[0], [[0.5, 0.0], [0.0, 0.0]], atol=1e-7)
    # pytorch-grad-cam's ε = 1e-6 (the default) turns that 0 denominator into 1e-6: α_0 = 0.25 / 1e-6 at the two
    # G = 0.5 entries, w_0 = 2 · 0.5 · 250000 = 250000 and the map becomes ReLU(−250000 + 0.25·A_1) = 0.
    np.testing.assert_allclose(gradcampp(a[None], g[None])[0], np.zeros((2, 2)), atol=1e-7)


def test_gradcampp_default_eps_matches_loop_reference() -> None:
    rng = np.random.default_rng(1)
    acts = rng.random((2, 3, 2, 3)).astype(np.float32)
    grads = (rng.standard_normal((2, 3, 2, 3)) * 1e-3).astype(np.float32)  # G² ~ ε: the ε matters here
    grads[0, 1, 0, 2] = 0.0
    eps = 1e-6
    expected = np.zeros((2, 2, 3))
    for n in range(2):
        weights = []
        for c in range(3):
            s = sum(float(acts[n, c, i, j]) for i in range(2) for j in range(3))
            w = 0.0
            for i in range(2):
                for j in range(3):
                    gij = float(grads[n, c, i, j])
                    if gij != 0.0:
                        alpha = gij**2 / (2 * gij**2 + s * gij**3 + eps)
                        w += alpha * max(gij, 0.0)
            weights.append(w)
        for i in range(2):
            for j in range(3):
                expected[n, i, j] = max(sum(weights[c] * float(acts[n, c, i, j]) for c in range(3)), 0.0)
    np.testing.assert_allclose(gradcampp(acts, grads), expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("eps", [-1e-6, float("nan"), float("inf"), True, "1e-6"])
def test_gradcampp_rejects_bad_eps(eps: object) -> None:
    with pytest.raises(OnnxcamError):
        gradcampp(A[None], G[None], eps=eps)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# XGrad-CAM, LayerCAM, HiResCAM, NormGrad


def test_xgradcam_hand_example() -> None:
    # w_0 = Σ G_0·A_0 / S_0 = 0.5·4/4 = 0.5 ; w_1 = (−1·0 + 2·1 + 0.5·3 − 1·1)/5 = 2.5/5 = 0.5
    # image 1 uses −G: w = (−0.5, −0.5) → everything negative → all zeros after ReLU.
    g2 = G.copy()
    g2[1] = [[-1.0, 0.0], [0.0, -1.0]]  # w_1 = (0 + 0 + 0 − 1)/5 = −0.2
    out = xgradcam(batch(A, A, A), batch(G, -G, g2))
    np.testing.assert_allclose(out[0], 0.5 * A[0] + 0.5 * A[1], rtol=1e-6)  # [[0.5, 1.5], [1.5, 1.0]]
    np.testing.assert_allclose(out[1], np.zeros((2, 2)), atol=1e-7)
    # 0.5·A_0 − 0.2·A_1 = [[0.5, 0.8], [−0.6, 0.3]] → ReLU
    np.testing.assert_allclose(out[2], [[0.5, 0.8], [0.0, 0.3]], rtol=1e-6)


def test_xgradcam_zero_activation_channel() -> None:
    # A channel that is all zeros: Σ G·A = 0 and Σ A + ε = 1e-7 → w = 0, nothing blows up.
    a = np.stack([A[0], np.zeros((2, 2), np.float32)])
    g = np.stack([G[0], np.full((2, 2), 1e3, np.float32)])
    np.testing.assert_allclose(xgradcam(a[None], g[None])[0], 0.5 * A[0], rtol=1e-6)


def test_layercam_hand_example() -> None:
    # ReLU(G_1) = [[0, 2], [0.5, 0]] ; ReLU(G_0)·A_0 + ReLU(G_1)·A_1 = [[0.5, 1 + 2], [0 + 1.5, 0.5 + 0]]
    # image 1: activations −A_0, A_1 → [[−0.5, −1 + 2], [1.5, −0.5]] → ReLU
    out = layercam(batch(A, np.stack([-A[0], A[1]])), batch(G, G))
    np.testing.assert_allclose(out[0], [[0.5, 3.0], [1.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(out[1], [[0.0, 1.0], [1.5, 0.0]], rtol=1e-6)


def test_hirescam_hand_example() -> None:
    # G_0·A_0 + G_1·A_1 = [[0.5 + 0, 1 + 2], [0 + 1.5, 0.5 − 1]] → ReLU
    out = hirescam(A[None], G[None])
    np.testing.assert_allclose(out[0], [[0.5, 3.0], [1.5, 0.0]], rtol=1e-6)
    # HiResCAM differs from LayerCAM only where some G < 0: here at (1, 1)
    np.testing.assert_allclose(layercam(A[None], G[None])[0, 1, 1], 0.5, rtol=1e-6)


def test_normgrad_hand_example() -> None:
    # per position u: ‖(G_0, G_1)‖ · ‖(A_0, A_1)‖
    expected = [
        [math.hypot(0.5, -1.0) * math.hypot(1.0, 0.0), math.hypot(0.5, 2.0) * math.hypot(2.0, 1.0)],
        [math.hypot(0.5, 0.5) * math.hypot(0.0, 3.0), math.hypot(0.5, -1.0) * math.hypot(1.0, 1.0)],
    ]
    out = normgrad(A[None], G[None])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[0], [[1.1180340, 4.6097722], [2.1213203, 1.5811388]], rtol=1e-6)
    # sign-blind: flipping the gradient does not change it
    np.testing.assert_allclose(normgrad(A[None], -G[None]), out, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Eigen-CAM, EigenGrad-CAM
#
# Build the (Z×C) matrix X = mean + Σ_k u_k v_kᵀ with centred, mutually orthogonal u_k (Z = 4 positions as rows)
# and orthogonal v_k: the centred X is then exactly its SVD, the first right singular vector is v_1/‖v_1‖ (for
# the largest ‖u_k‖·‖v_k‖) and the projection is p = ‖v_1‖·u_1, up to the sign rule Σ_c v_c > 0.


def from_rows(x: np.ndarray) -> np.ndarray:
    """(Z=4 × C) matrix, rows = positions in row-major order → [C, 2, 2]."""
    return np.ascontiguousarray(x.T.reshape(x.shape[1], 2, 2)).astype(np.float32)


U1 = np.array([1.0, -1.0, 2.0, -2.0])  # centred
U2 = np.array([1.0, 1.0, -1.0, -1.0])  # centred, ⟂ U1


def test_eigencam_rank_two_keeps_first_component() -> None:
    v1, v2 = np.array([2.0, 1.0]), np.array([-0.5, 1.0])  # ⟂; σ_1 = √10·√5 > σ_2 = 2·√1.25
    x = np.array([4.0, 3.0]) + np.outer(U1, v1) + np.outer(U2, v2)
    a = from_rows(x)
    np.testing.assert_allclose(a, [[[5.5, 1.5], [8.5, 0.5]], [[5.0, 3.0], [4.0, 0.0]]])
    out = eigencam(a[None], np.zeros_like(a)[None])
    # Σ v_1 = 3 > 0 → p = √5·U1 = √5·(1, −1, 2, −2) → ReLU
    np.testing.assert_allclose(out[0], [[math.sqrt(5), 0.0], [2 * math.sqrt(5), 0.0]], rtol=1e-5, atol=1e-6)


def test_eigencam_sign_rule_and_gradient_free() -> None:
    # v = (1, −3): Σ v < 0, so v̂ = −v/‖v‖ and p = −√10·U1 → ReLU keeps the positions where U1 < 0.
    x = np.array([1.0, 7.0]) + np.outer(U1, [1.0, -3.0])
    a = from_rows(x)
    expected = [[0.0, math.sqrt(10)], [0.0, 2 * math.sqrt(10)]]
    out = eigencam(batch(a, a), batch(np.zeros_like(a), np.full_like(a, 5.0)))
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], out[0])  # gradients are ignored
    # scaling or shifting every channel does not move the map (centred; the sign rule is scale-free)
    np.testing.assert_allclose(eigencam((3 * a + 2)[None], a[None])[0], 3 * np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_eigencam_tie_break_on_largest_value() -> None:
    # v = (1, −1): Σ v = 0, so the sign makes the largest |p| positive. U = (3, −1, −1, −1) or −U: same map.
    u = np.array([3.0, -1.0, -1.0, -1.0])
    for sign in (1.0, -1.0):
        a = from_rows(np.array([5.0, 5.0]) + sign * np.outer(u, [1.0, -1.0]))
        out = eigencam(a[None], a[None])
        np.testing.assert_allclose(out[0], [[3 * math.sqrt(2), 0.0], [0.0, 0.0]], rtol=1e-5, atol=1e-6)


def test_eigengradcam_is_eigencam_of_product() -> None:
    # Target product M = G·A = mean (1, 7) + U1·(1, −3)ᵀ; pick A, then G = M / A.
    m = from_rows(np.array([1.0, 7.0]) + np.outer(U1, [1.0, -3.0]))
    np.testing.assert_allclose(m, [[[2, 0], [3, -1]], [[4, 10], [1, 13]]])
    a = np.array([[[1.0, 2.0], [4.0, 1.0]], [[2.0, 5.0], [1.0, 13.0]]], np.float32)
    g = np.array([[[2.0, 0.0], [0.75, -1.0]], [[2.0, 2.0], [1.0, 1.0]]], np.float32)
    np.testing.assert_allclose(g * a, m)
    out = eigengradcam(a[None], g[None])
    np.testing.assert_allclose(out[0], [[0.0, math.sqrt(10)], [0.0, 2 * math.sqrt(10)]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, eigencam(m[None], a[None]), rtol=1e-6, atol=1e-7)


def test_eigencam_constant_features_give_zero_map() -> None:
    a = np.ones((1, 3, 2, 2), np.float32)
    out = eigencam(a, a)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(finalise(out, (4, 4), "minmax"), 0.0)


# ---------------------------------------------------------------------------------------------------------------
# agreement with pytorch-grad-cam 1.5.7

CLASS = 7
SIZE = 96
# methods with a pytorch-grad-cam reference and no extra passes (Score-CAM, Ablation-CAM: test_methods_passes.py)
PAIRS = {name: spec.reference for name, spec in METHODS.items() if spec.reference and not spec.uses_model}


@pytest.fixture(scope="module")
def resnet_case():
    """(model, images [3,3,96,96], hooked) with ``hooked(layer)`` = (activations, gradients of logit CLASS)."""
    pytest.importorskip("pytorch_grad_cam")
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    disc = ((yy - 0.3) ** 2 + (xx - 0.65) ** 2 < 0.04).astype(np.float32)
    stripes = (np.sin(12 * xx) * (yy > 0.5)).astype(np.float32)
    synthetic = np.stack([np.stack([disc, 1 - disc, disc * xx]), np.stack([stripes, yy, -stripes])])
    noise = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    images = torch.cat([torch.from_numpy(2 * synthetic.astype(np.float32) - 0.5), noise])
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def hooked(layer: str) -> tuple[np.ndarray, np.ndarray]:
        if layer not in cache:
            saved = {}
            handle = getattr(model, layer).register_forward_hook(lambda m, i, output: saved.update(act=output))
            try:
                logits = model(images)
                (grads,) = torch.autograd.grad(logits[:, CLASS].sum(), saved["act"])
            finally:
                handle.remove()
            cache[layer] = (saved["act"].detach().numpy(), grads.numpy())
        return cache[layer]

    return model, images, hooked


# layer4 (the brief's layer): ResNet's GAP + Linear head makes the gradients there spatially constant, so Grad-CAM,
# XGrad-CAM and HiResCAM coincide (and Grad-CAM++ ≈ LayerCAM); layer3's gradients vary in space and tell them apart.
# EigenGrad-CAM is left out at layer3: pytorch-grad-cam keeps LAPACK's arbitrary SVD sign, which there is opposite
# to ours on some images (see test_eigen_projection_matches_up_to_lapack_sign).
CASES = [("layer4", name) for name in PAIRS] + [("layer3", name) for name in PAIRS if name != "eigengradcam"]


@pytest.mark.parametrize(("layer", "name"), CASES)
def test_agrees_with_pytorch_grad_cam(resnet_case, layer: str, name: str) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images, hooked = resnet_case
    acts, grads = hooked(layer)
    cam = getattr(pytorch_grad_cam, PAIRS[name])(model=model, target_layers=[getattr(model, layer)])
    try:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(CLASS)] * len(images),
                     aug_smooth=False, eigen_smooth=False)
    finally:
        cam.activations_and_grads.release()
    method = get_method(name)
    ours = finalise(method(acts, grads), (SIZE, SIZE), method.normalise)
    assert ours.shape == theirs.shape == (3, SIZE, SIZE)
    for mine, ref in zip(ours, theirs):
        assert mine.std() > 0 and ref.std() > 0
        r = np.corrcoef(mine.ravel().astype(np.float64), ref.ravel().astype(np.float64))[0, 1]
        assert r >= 0.999, f"{name} at {layer}: Pearson r = {r:.6f}"
    # both end as min-max scaled bilinear upsamples of the same ReLU'd map: equal up to float32 rounding
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_eigen_projection_matches_up_to_lapack_sign(resnet_case, layer: str) -> None:
    """Same principal axis as pytorch-grad-cam's get_2d_projection; ours has the deterministic sign Σ_c v_c > 0."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from onnxcam.cams.methods.eigencam import principal_projection

    _, _, hooked = resnet_case
    acts, grads = hooked(layer)
    for features in (acts, acts * grads):
        ours = principal_projection(features)
        theirs = get_2d_projection(features)
        centred = features - features.mean(axis=(2, 3), keepdims=True)
        for mine, ref, f in zip(ours, theirs, centred):
            r = np.corrcoef(mine.ravel(), ref.ravel().astype(np.float64))[0, 1]
            assert abs(r) >= 0.999
            assert np.sum(mine * f.sum(axis=0)) > 0  # p correlates positively with the centred channel sum
