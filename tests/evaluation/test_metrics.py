"""Metrics on a synthetic numpy "model" whose evidence region is known, and on hand-computable cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.evaluation import metrics as M

SIZE = 32
EVIDENCE = np.zeros((SIZE, SIZE), bool)
EVIDENCE[8:20, 10:24] = True  # the only pixels the synthetic model looks at


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class EvidenceModel:
    """P(class 0) = sigmoid(k · mean of the input over EVIDENCE (all channels) − b); P(class 1) = 1 − that.

    Records the size of every batch it is called with."""

    def __init__(self, k: float = 6.0, b: float = 3.0) -> None:
        self.k, self.b = k, b
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4
        assert classes.dtype == np.int64 and classes.shape == (batch.shape[0],)
        self.calls.append(batch.shape[0])
        p0 = sigmoid(self.k * batch[:, :, EVIDENCE].astype(np.float64).mean(axis=(1, 2)) - self.b)
        return np.where(classes == 0, p0, 1.0 - p0)


def evidence_images(n: int = 2, seed: int = 0) -> np.ndarray:
    """+1 on the evidence region, −1 elsewhere, plus a little noise (normalised space)."""
    rng = np.random.default_rng(seed)
    base = np.where(EVIDENCE, 1.0, -1.0)[None, None]
    return (base + 0.1 * rng.standard_normal((n, 3, SIZE, SIZE))).astype(np.float32)


def evidence_cam(n: int, seed: int = 1) -> np.ndarray:
    """The true evidence mask with a small random tie-break (so percentiles split the pixels cleanly)."""
    rng = np.random.default_rng(seed)
    return (0.8 * EVIDENCE[None] + 0.2 * rng.random((n, SIZE, SIZE))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# AUC, deletion / insertion


def test_trapezoid_auc_hand_curve() -> None:
    # y = 1, 0.5, 0.5, 0 on x = 0, 1/3, 2/3, 1: (0.75 + 0.5 + 0.25) / 3 = 0.5
    assert M.trapezoid_auc(np.array([1.0, 0.5, 0.5, 0.0])) == pytest.approx(0.5)
    # uneven x: y = x² sampled at 0, 0.5, 1 → 0.5·(0 + 0.25)/2 + 0.5·(0.25 + 1)/2 = 0.375
    assert M.trapezoid_auc(np.array([0.0, 0.25, 1.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(0.375)
    many = M.trapezoid_auc(np.array([[1.0, 1.0], [0.0, 1.0]]))
    np.testing.assert_allclose(many, [1.0, 0.5])
    with pytest.raises(ValueError):
        M.trapezoid_auc(np.array([1.0]))


def test_deletion_insertion_ranks_true_evidence_best() -> None:
    images = evidence_images(2)
    mask = np.repeat(EVIDENCE[None].astype(np.float32), 2, axis=0)
    rand = np.random.default_rng(3).random((2, SIZE, SIZE)).astype(np.float32)
    results = {name: M.deletion_insertion(EvidenceModel(), images, cam, 0, steps=16)
               for name, cam in (("true", mask), ("inverse", 1.0 - mask), ("random", rand))}
    true, inverse, random = results["true"], results["inverse"], results["random"]
    for key in ("deletion_auc", "insertion_auc"):
        assert true[key].shape == (2,)
    assert (true["deletion_auc"] < random["deletion_auc"] - 0.05).all()
    assert (random["deletion_auc"] < inverse["deletion_auc"] - 0.05).all()
    assert (true["insertion_auc"] > random["insertion_auc"] + 0.05).all()
    assert (random["insertion_auc"] > inverse["insertion_auc"] + 0.05).all()
    # curves: 17 points at x = 0, 1/16, …, 1; deletion starts at the image, ends at all zeros
    np.testing.assert_allclose(true["fractions"], np.arange(17) / 16)
    model = EvidenceModel()
    p_image = model(images, np.zeros(2, np.int64))
    p_zeros = model(np.zeros_like(images), np.zeros(2, np.int64))
    np.testing.assert_allclose(true["deletion_curve"][:, 0], p_image)
    np.testing.assert_allclose(true["deletion_curve"][:, -1], p_zeros)
    # insertion starts from the blurred image and ends at the image itself
    blurred = np.stack([M.blur_image(img) for img in images])
    np.testing.assert_allclose(true["insertion_curve"][:, 0], model(blurred, np.zeros(2, np.int64)), rtol=1e-6)
    np.testing.assert_allclose(true["insertion_curve"][:, -1], p_image, rtol=1e-6)
    np.testing.assert_allclose(true["deletion_auc"], M.trapezoid_auc(true["deletion_curve"], true["fractions"]))
    assert true["deletion_auc_mean"] == pytest.approx(true["deletion_auc"].mean())


def test_deletion_known_curve() -> None:
    """Scorer = mean of channel 0 over the image; deleting 4 of 16 pixels per step removes a known amount."""
    image = np.zeros((1, 1, 4, 4), np.float32)
    image[0, 0] = np.arange(16, dtype=np.float32).reshape(4, 4)
    cam = image[0].copy()  # rank = value: 15, 14, … deleted first

    def mean_scorer(batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return batch.mean(axis=(1, 2, 3))

    out = M.deletion_insertion(mean_scorer, image, cam, 0, pixels_per_step=4)
    sums = [120, 120 - (15 + 14 + 13 + 12), 120 - 54 - (11 + 10 + 9 + 8), 6, 0]
    np.testing.assert_allclose(out["deletion_curve"][0], np.array(sums) / 16, rtol=1e-6)
    np.testing.assert_allclose(out["fractions"], [0, 0.25, 0.5, 0.75, 1.0])
    expected_auc = M.trapezoid_auc(np.array(sums) / 16, np.array([0, 0.25, 0.5, 0.75, 1.0]))
    assert out["deletion_auc"][0] == pytest.approx(expected_auc)
    # 7 steps over 16 pixels → 3 pixels per step → 6 steps (the last one partial), x ends at exactly 1
    out = M.deletion_insertion(mean_scorer, image, cam, 0, steps=7)
    np.testing.assert_allclose(out["fractions"], [0, 3 / 16, 6 / 16, 9 / 16, 12 / 16, 15 / 16, 1.0])
    with pytest.raises(ValueError):
        M.deletion_insertion(mean_scorer, image, cam, 0, steps=4, pixels_per_step=4)


def test_blur_matches_opencv_per_channel() -> None:
    img = np.random.default_rng(0).standard_normal((3, 20, 24)).astype(np.float32)
    blurred = M.blur_image(img, 11, 5.0)
    for ch in range(3):
        np.testing.assert_array_equal(blurred[ch], cv2.GaussianBlur(img[ch], (11, 11), 5.0))


# ---------------------------------------------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("metric", ["deletion_insertion", "average_drop_increase", "road"])
def test_scorer_batches_are_bounded_and_full(metric: str) -> None:
    images = evidence_images(3)
    cams = evidence_cam(3)
    model = EvidenceModel()
    if metric == "deletion_insertion":
        M.deletion_insertion(model, images, cams, 0, steps=10, batch_size=8)
        expected = 3 * 2 * 11
    elif metric == "average_drop_increase":
        M.average_drop_increase(model, images, cams, 0, batch_size=4)
        expected = 2 * 3
    else:
        M.road(model, images, cams, 0, percentiles=(30, 60, 90), batch_size=5)
        expected = 3 + 3 * 3
    batch = {"deletion_insertion": 8, "average_drop_increase": 4, "road": 5}[metric]
    assert sum(model.calls) == expected
    assert max(model.calls) <= batch
    assert len(model.calls) == -(-expected // batch)  # every call but the last is full


def test_results_do_not_depend_on_batch_size() -> None:
    images, cams = evidence_images(2), evidence_cam(2)
    a = M.road(EvidenceModel(), images, cams, 0, percentiles=(20, 70), batch_size=1)
    b = M.road(EvidenceModel(), images, cams, 0, percentiles=(20, 70), batch_size=32)
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-12)
    c = M.deletion_insertion(EvidenceModel(), images, cams, 0, steps=8, batch_size=3)
    d = M.deletion_insertion(EvidenceModel(), images, cams, 0, steps=8, batch_size=64)
    np.testing.assert_allclose(c["insertion_curve"], d["insertion_curve"], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence


def test_average_drop_increase_hand_cases() -> None:
    """Scorer: class 0 → mean(x), class 1 → 1 − mean(x); so Y and O follow from the constant images and CAMs."""

    def mean_scorer(batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
        m = batch.mean(axis=(1, 2, 3))
        return np.where(classes == 0, m, 1.0 - m)

    images = np.stack([np.full((3, 8, 8), v, np.float32) for v in (0.8, 0.6, 0.5)])
    cams = np.stack([np.full((8, 8), v, np.float32) for v in (0.5, 0.5, 1.0)])
    out = M.average_drop_increase(mean_scorer, images, cams, np.array([0, 1, 0]))
    # image 0: Y = 0.8, O = 0.4 → drop 50, no increase; image 1: Y = 0.4, O = 1 − 0.3 = 0.7 → drop 0, increase;
    # image 2: CAM = 1 → O = Y → drop 0, no increase
    np.testing.assert_allclose(out["base"], [0.8, 0.4, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["masked"], [0.4, 0.7, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["drop"], [50.0, 0.0, 0.0], atol=1e-4)
    np.testing.assert_array_equal(out["increase"], [0.0, 100.0, 0.0])
    assert out["average_drop"] == pytest.approx(50.0 / 3, abs=1e-4)
    assert out["increase_in_confidence"] == pytest.approx(100.0 / 3)


def test_average_drop_masks_per_pixel_over_channels() -> None:
    """O uses x ⊙ CAM pixel by pixel: a CAM that is 1 on the evidence keeps the synthetic model's probability."""
    images = evidence_images(2)
    model = EvidenceModel()
    good = M.average_drop_increase(model, images, np.repeat(EVIDENCE[None], 2, 0).astype(np.float32), 0)
    bad = M.average_drop_increase(model, images, np.repeat(~EVIDENCE[None], 2, 0).astype(np.float32), 0)
    np.testing.assert_allclose(good["masked"], good["base"], rtol=1e-6)
    assert good["average_drop"] < 1e-3
    expected_bad = 100 * (1 - sigmoid(np.array(-3.0)) / bad["base"])  # evidence zeroed → sigmoid(−b)
    np.testing.assert_allclose(bad["drop"], expected_bad, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ROAD


def test_road_morf_true_evidence_drops_more_than_inverse() -> None:
    images = evidence_images(2)
    cams = evidence_cam(2)
    true = M.road(EvidenceModel(), images, cams, 0)
    inverse = M.road(EvidenceModel(), images, 1.0 - cams, 0)
    assert true["scores"].shape == (2, 9) and true["score"].shape == (2,)
    assert (true["score"] < inverse["score"] - 0.2).all()
    assert true["mean"] < inverse["mean"]
    np.testing.assert_allclose(true["score"], true["scores"].mean(axis=1))
    np.testing.assert_allclose(true["scores"], true["probabilities"] - true["base"][:, None])
    # percentile p removes about (100 − p) % of the pixels
    np.testing.assert_allclose(true["removed_fraction"], np.tile(1 - np.arange(1, 10) / 10, (2, 1)), atol=2e-3)
    # LeRF with the true evidence keeps the probability better than LeRF with its inverse
    lerf_true = M.road(EvidenceModel(), images, cams, 0, order="least")
    lerf_inverse = M.road(EvidenceModel(), images, 1.0 - cams, 0, order="least")
    assert (lerf_true["score"] > lerf_inverse["score"] + 0.2).all()
    combined = M.road_combined(EvidenceModel(), images, cams, 0)
    np.testing.assert_allclose(combined["score"], (lerf_true["score"] - true["score"]) / 2)


def test_road_removal_mask_matches_pytorch_grad_cam_thresholds() -> None:
    cam = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    np.testing.assert_array_equal(M.road_removal_mask(cam, 30, "most"), ~(cam < np.percentile(cam, 30)))
    inv = np.float32(1.0) - cam
    np.testing.assert_array_equal(M.road_removal_mask(cam, 30, "least"), ~(inv < np.percentile(inv, 30)))
    assert M.road_removal_mask(cam, 30, "most").sum() == 70
    with pytest.raises(ValueError):
        M.road_removal_mask(cam, 30, "middle")  # type: ignore[arg-type]


def test_linear_imputation_hand_cases() -> None:
    rng = np.random.default_rng(0)
    # a removed pixel in the middle of a constant image is that constant; a linear ramp is reproduced exactly
    const = np.full((2, 7, 7), 3.0, np.float32)
    hole = np.zeros((7, 7), bool)
    hole[2:5, 2:5] = True
    np.testing.assert_allclose(M.noisy_linear_impute(const, hole, noise=0.0), const, rtol=1e-6)
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32), (1, 7, 7)).copy()
    np.testing.assert_allclose(M.noisy_linear_impute(ramp, hole, noise=0.0), ramp, atol=1e-5)
    # one removed pixel = weighted mean of its neighbours (1/6 edge, 1/12 diagonal)
    img = rng.standard_normal((1, 3, 3)).astype(np.float32)
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    weights = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    out = M.noisy_linear_impute(img, single, noise=0.0)
    assert out[0, 1, 1] == pytest.approx(float((weights * img[0]).sum()), abs=1e-6)
    np.testing.assert_array_equal(out[0][~single], img[0][~single])
    # a corner pixel averages its 3 in-image neighbours with renormalised weights
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True
    out = M.noisy_linear_impute(img, corner, noise=0.0)
    expected = (img[0, 0, 1] / 6 + img[0, 1, 0] / 6 + img[0, 1, 1] / 12) / (5 / 12)
    assert out[0, 0, 0] == pytest.approx(float(expected), abs=1e-6)
    # noise: std ≈ noise on imputed pixels only; all pixels removed → 0 + noise
    noisy = M.noisy_linear_impute(np.zeros((3, 40, 40), np.float32), np.ones((40, 40), bool), noise=0.5, rng=rng)
    assert noisy.std() == pytest.approx(0.5, rel=0.05)


def test_linear_imputation_matches_pytorch_grad_cam() -> None:
    pytest.importorskip("torch")
    road_module = pytest.importorskip("pytorch_grad_cam.metrics.road")
    import torch

    rng = np.random.default_rng(1)
    img = rng.standard_normal((3, 24, 20)).astype(np.float32)
    cam = cv2.GaussianBlur(rng.random((24, 20)).astype(np.float32), (7, 7), 2.0)
    for p in (20, 60, 90):
        keep = np.float32(cam < np.percentile(cam, p))
        ref = road_module.NoisyLinearImputer(noise=0.0)(torch.from_numpy(img), torch.from_numpy(keep)).numpy()
        ours = M.noisy_linear_impute(img, M.road_removal_mask(cam, p), noise=0.0)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# SSIM and gradient-noise robustness


def test_ssim_self_and_skimage() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.random((40, 36)), (9, 9), 3.0)
    a = (a - a.min()) / (a.max() - a.min())
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    for b in (np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1), 1.0 - a, rng.random(a.shape), np.zeros_like(a)):
        ref = metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False)
        assert M.ssim(a, b) == pytest.approx(ref, abs=1e-6)
    assert M.ssim(a, 1.0 - a) < 0.0  # anti-correlated structure
    assert M.ssim(np.zeros((12, 12)), np.zeros((12, 12))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def gradcam_fn(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM: ReLU(Σ_c mean(G_c)·A_c), upsampled to 32×32 and min-max scaled."""
    weights = gradients.mean(axis=(2, 3))
    maps = np.maximum(np.einsum("nc,nchw->nhw", weights, activations), 0)
    out = []
    for m in maps:
        up = cv2.resize(m.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        out.append((up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else np.zeros_like(up))
    return np.stack(out)


def test_gradient_noise_robustness_monotone() -> None:
    rng = np.random.default_rng(0)
    acts = np.abs(rng.standard_normal((3, 16, 8, 8))).astype(np.float32)
    grads = (rng.standard_normal((3, 16, 1, 1)) * 0.3 + 0.05 * rng.standard_normal((3, 16, 8, 8))).astype(np.float32)
    out = M.gradient_noise_robustness(gradcam_fn, acts, grads, sigmas=(0.0, 0.1, 0.5, 2.0, 10.0), repeats=4)
    assert out["ssim_per_image"].shape == (5, 3) and out["ssim_samples"].shape == (5, 4, 3)
    assert out["ssim"][0] == pytest.approx(1.0, abs=1e-12)
    assert (np.diff(out["ssim"]) < 0).all(), out["ssim"]
    assert out["ssim"][-1] < 0.8
    again = M.gradient_noise_robustness(gradcam_fn, acts, grads, sigmas=(0.0, 0.1, 0.5, 2.0, 10.0), repeats=4)
    np.testing.assert_array_equal(out["ssim_samples"], again["ssim_samples"])  # seeded


def test_gradient_noise_scale_is_per_image_std() -> None:
    """The noise added to image i has std σ·std(G_i): check it through a cam_fn that records the gradients."""
    rng = np.random.default_rng(0)
    acts = np.ones((2, 4, 16, 16), np.float32)
    grads = np.stack([rng.standard_normal((4, 16, 16)), 10 * rng.standard_normal((4, 16, 16))]).astype(np.float32)
    seen: list[np.ndarray] = []

    def recording(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        seen.append(g.copy())
        return np.zeros((a.shape[0], 16, 16))

    M.gradient_noise_robustness(recording, acts, grads, sigmas=(0.5,), repeats=1)
    noise = seen[1] - seen[0]
    for i in range(2):
        assert noise[i].std() == pytest.approx(0.5 * grads[i].std(), rel=0.1)


# ---------------------------------------------------------------------------------------------------------------
# localisation


def test_pointing_game_and_energy_hand_maps() -> None:
    cams = np.zeros((3, 10, 10), np.float32)
    cams[0, 2, 3] = 1.0  # peak at x = 3, y = 2
    cams[1, 5, 9] = 1.0  # peak at x = 9, y = 5
    cams[2, 0:5, 0:10] = 0.5  # half the map at 0.5, peak (first) at (0, 0)
    cams[2, 5:, :] = 0.25
    boxes = np.array([[3, 2, 4, 3],  # exactly the peak pixel
                      [0, 0, 9, 10],  # x1 = 9 is exclusive → misses x = 9
                      [0, 0, 10, 5]])  # fmt: skip
    assert M.pointing_game(cams, boxes) == pytest.approx(2 / 3)
    energy = M.energy_in_box(cams, boxes)
    np.testing.assert_allclose(energy, [1.0, 0.0, 25 / (25 + 12.5)])
    # all-zero map scores 0 energy; boxes past the border are clipped
    assert M.energy_in_box(np.zeros((1, 4, 4)), np.array([[0, 0, 2, 2]]))[0] == 0.0
    assert M.energy_in_box(np.ones((1, 4, 4)), np.array([[2, 2, 9, 9]]))[0] == pytest.approx(4 / 16)
    with pytest.raises(ValueError):
        M.pointing_game(cams, boxes[:2])
    with pytest.raises(ValueError):
        M.energy_in_box(cams, np.array([[3, 2, 3, 3]] * 3))  # empty box


def test_metrics_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys\nimport onnxcam.evaluation.metrics\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'skimage')], 'torch/skimage'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
