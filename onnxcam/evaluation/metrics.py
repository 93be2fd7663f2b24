"""Faithfulness, robustness and localisation metrics for CAMs (numpy in, numpy out; no torch, no ONNX Runtime).

The model is reached through a plain callable, a :data:`Scorer`::

    scorer(batch [M,C,H,W] float32 (preprocessed, normalised space), class_index [M] int64) -> probabilities [M]

returning the softmax probability of each row's class. Every metric that needs extra forward passes builds the
perturbed inputs lazily and calls the scorer with chunks of at most ``batch_size`` images (never one at a time
unless only one is left), so memory stays bounded and an accelerator sees full batches.

Definitions (docs/design.md §7):

* **Deletion / insertion** (Petsiuk et al., RISE, 2018): pixels are ranked by the CAM, highest first. Deletion sets
  the top ``k`` pixels to 0 (all channels, normalised space); insertion starts from a Gaussian-blurred copy of the
  image and copies the top ``k`` original pixels back. The class probability is tracked for k = 0, p, 2p, …, H·W and
  the area under the curve, x = fraction of pixels changed ∈ [0, 1], is taken by the trapezoid rule.
  Lower deletion AUC and higher insertion AUC are better.
* **Average Drop / Increase in Confidence** (Chattopadhyay et al., Grad-CAM++, 2018): with Y the probability on the
  image and O the probability on ``x ⊙ CAM``: Average Drop = mean_i max(0, Y_i − O_i)/Y_i · 100 (lower is better),
  Increase in Confidence = mean_i 1[O_i > Y_i] · 100 (higher is better).
* **ROAD** (Rong et al., 2022), as pytorch-grad-cam implements it: for a percentile p, MoRF removes the pixels whose
  CAM value is ≥ the p-th percentile of the CAM (so about (100 − p) % of the pixels, the most relevant ones); LeRF
  does the same on 1 − CAM (removing the least relevant ones). Removed pixels are filled by noisy linear imputation
  (each is the weighted mean of its 8 neighbours, solved jointly as a sparse linear system, plus N(0, noise²)).
  The score at p is the probability after imputation minus the probability on the original image.
* **Gradient-noise robustness**: N(0, (σ·std G_i)²) is added to the gradients of image i *before* any weighting
  (std over all entries of that image's gradient), the CAM is recomputed, and the SSIM between clean and noisy
  CAMs is reported per σ.
* **SSIM** (Wang et al., 2004): Gaussian window 11×11, σ 1.5, C1 = (0.01·L)², C2 = (0.03·L)², L = data range,
  population (co)variances, mean of the SSIM map over the pixels whose window lies inside the image.
* **Pointing game** (Zhang et al., 2016) and **energy in box**: a hit when the CAM's argmax lies inside the box;
  energy = Σ CAM inside the box / Σ CAM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import cv2
import numpy as np
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``scorer(batch [M,C,H,W] float32, class_index [M] int64) -> probabilities [M]``."""

CamFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``cam_fn(activations [N,C,h,w], gradients [N,C,h,w]) -> maps [N,H,W]``."""

DEFAULT_BATCH_SIZE = 32
DEFAULT_STEPS = 100
ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)

# Neighbour weights of the linear imputation (ROAD): (row offset, column offset, weight); they sum to 1.
_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# input checks and batched scoring


def _check_images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"images must be [N,C,H,W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("images contain NaN or infinite values")
    return arr


def _check_cams(cams: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
    arr = np.asarray(cams, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"cams must be [N,H,W], got shape {arr.shape}")
    if images is not None and (arr.shape[0] != images.shape[0] or arr.shape[1:] != images.shape[2:]):
        raise ValueError(f"cams {arr.shape} do not match images {images.shape}: need [N,H,W] for [N,C,H,W]")
    if not np.isfinite(arr).all():
        raise ValueError("cams contain NaN or infinite values")
    return arr


def _check_classes(class_index: np.ndarray | int | Sequence[int], n: int) -> np.ndarray:
    arr = np.asarray(class_index, dtype=np.int64)
    if arr.ndim == 0:
        arr = np.full(n, int(arr), dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"class_index must be an int or [N] with N = {n}, got shape {arr.shape}")
    return arr


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    return int(batch_size)


def _score_jobs(
    scorer: Scorer,
    fill: Callable[[int, np.ndarray], None],
    classes: np.ndarray,
    shape: tuple[int, int, int],
    batch_size: int,
) -> np.ndarray:
    """Score ``len(classes)`` inputs made on demand: ``fill(j, out)`` writes input j into ``out`` [C,H,W].

    The scorer is called with consecutive chunks of at most ``batch_size`` inputs; returns float64 [len(classes)].
    """
    total = len(classes)
    probs = np.empty(total, dtype=np.float64)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        batch = np.empty((stop - start, *shape), dtype=np.float32)  # fresh: the scorer may keep a reference
        for j in range(start, stop):
            fill(j, batch[j - start])
        out = np.asarray(scorer(batch, classes[start:stop].copy()), dtype=np.float64).reshape(-1)
        if out.shape != (stop - start,):
            raise ValueError(f"scorer returned {out.shape[0]} values for a batch of {stop - start} inputs")
        probs[start:stop] = out
    return probs


# ---------------------------------------------------------------------------------------------------------------
# deletion / insertion


def trapezoid_auc(curve: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """Area under ``curve`` by the trapezoid rule: Σ_k (x_{k+1} − x_k)·(y_k + y_{k+1})/2.

    ``curve`` is ``[K]`` or ``[N,K]`` (one curve per row); ``x`` is ``[K]`` and defaults to K evenly spaced points
    on [0, 1]. Returns a float64 scalar array for one curve, ``[N]`` for many.
    """
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[-1] < 2:
        raise ValueError(f"curve must be [K] or [N,K] with K ≥ 2, got shape {y.shape}")
    xs = np.linspace(0.0, 1.0, y.shape[-1]) if x is None else np.asarray(x, dtype=np.float64)
    if xs.shape != (y.shape[-1],):
        raise ValueError(f"x must be [K] = [{y.shape[-1]}], got shape {xs.shape}")
    dx = np.diff(xs)
    return np.sum(dx * (y[..., 1:] + y[..., :-1]) * 0.5, axis=-1)


def blur_image(image: np.ndarray, kernel: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Gaussian blur of each channel of a ``[C,H,W]`` image (``cv2.GaussianBlur``, kernel × kernel, σ, default
    border BORDER_REFLECT_101); the insertion metric's starting point. Returns float32 ``[C,H,W]``."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"blur kernel must be a positive odd integer, got {kernel}")
    img = np.asarray(image, dtype=np.float32)
    return np.stack([cv2.GaussianBlur(np.ascontiguousarray(ch), (kernel, kernel), sigma, sigmaY=sigma) for ch in img])


def _step_plan(n_pixels: int, steps: int | None, pixels_per_step: int | None) -> tuple[int, np.ndarray]:
    """(pixels per step p, counts [K]) with counts = min(k·p, n_pixels) for k = 0 … ⌈n_pixels / p⌉."""
    if steps is not None and pixels_per_step is not None:
        raise ValueError("give steps or pixels_per_step, not both")
    if pixels_per_step is None:
        steps = DEFAULT_STEPS if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        pixels_per_step = math.ceil(n_pixels / steps)
    pixels_per_step = int(pixels_per_step)
    if pixels_per_step < 1:
        raise ValueError(f"pixels_per_step must be ≥ 1, got {pixels_per_step}")
    n_steps = math.ceil(n_pixels / pixels_per_step)
    counts = np.minimum(np.arange(n_steps + 1, dtype=np.int64) * pixels_per_step, n_pixels)
    return pixels_per_step, counts


def deletion_insertion(
    scorer: Scorer,
    images: np.ndarray,
    cams: np.ndarray,
    class_index: np.ndarray | int | Sequence[int],
    *,
    steps: int | None = None,
    pixels_per_step: int | None = None,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Deletion and insertion curves and AUCs (RISE) for N images.

    Pixels are ranked by CAM value, highest first (ties keep raster order). With p pixels per step
    (``pixels_per_step``, or ⌈H·W / steps⌉; default steps = 100) the curves are sampled at k = 0, p, 2p, …, H·W
    pixels changed. Deletion: the top k pixels are set to 0 in every channel (normalised space; step 0 is the
    image, the last step all zeros). Insertion: the top k pixels of the blurred image (:func:`blur_image`,
    ``blur_kernel``, ``blur_sigma``) are replaced by the original ones (step 0 is the blurred image, the last step
    the image). Each point is the scorer's probability of the image's class; AUC = :func:`trapezoid_auc` over
    x = k / (H·W).

    Returns a dict: ``fractions`` [K], ``deletion_curve`` / ``insertion_curve`` [N,K], ``deletion_auc`` /
    ``insertion_auc`` [N] (float64), and ``deletion_auc_mean`` / ``insertion_auc_mean`` (floats).
    """
    imgs = _check_images(images)
    maps = _check_cams(cams, imgs)
    classes = _check_classes(class_index, imgs.shape[0])
    batch_size = _check_batch_size(batch_size)
    n, c, h, w = imgs.shape
    n_pixels = h * w
    _, counts = _step_plan(n_pixels, steps, pixels_per_step)
    k = len(counts)

    orders = [np.argsort(-m.reshape(-1), kind="stable") for m in maps]
    blurred = np.stack([blur_image(img, blur_kernel, blur_sigma) for img in imgs]) if n else imgs.copy()

    # Job j: image i = j // (2K), mode = (j // K) % 2 (0 deletion, 1 insertion), step s = j % K.
    def fill(j: int, out: np.ndarray) -> None:
        i, rest = divmod(j, 2 * k)
        mode, s = divmod(rest, k)
        top = orders[i][: counts[s]]
        flat = out.reshape(c, n_pixels)
        if mode == 0:
            out[...] = imgs[i]
            flat[:, top] = 0.0
        else:
            out[...] = blurred[i]
            flat[:, top] = imgs[i].reshape(c, n_pixels)[:, top]

    job_classes = np.repeat(classes, 2 * k)
    probs = _score_jobs(scorer, fill, job_classes, (c, h, w), batch_size).reshape(n, 2, k)
    fractions = counts / n_pixels
    deletion_auc = trapezoid_auc(probs[:, 0], fractions) if n else np.zeros(0)
    insertion_auc = trapezoid_auc(probs[:, 1], fractions) if n else np.zeros(0)
    return {
        "fractions": fractions,
        "deletion_curve": probs[:, 0],
        "insertion_curve": probs[:, 1],
        "deletion_auc": deletion_auc,
        "insertion_auc": insertion_auc,
        "deletion_auc_mean": float(np.mean(deletion_auc)) if n else float("nan"),
        "insertion_auc_mean": float(np.mean(insertion_auc)) if n else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence


def average_drop_increase(
    scorer: Scorer,
    images: np.ndarray,
    cams: np.ndarray,
    class_index: np.ndarray | int | Sequence[int],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Average Drop and Increase in Confidence (Grad-CAM++ definitions).

    Y_i = scorer(x_i), O_i = scorer(x_i ⊙ CAM_i) with the CAM broadcast over channels (normalised input).
    drop_i = max(0, Y_i − O_i) / Y_i · 100 (0 when Y_i = 0), increase_i = 1[O_i > Y_i] · 100.

    Returns a dict: ``average_drop`` and ``increase_in_confidence`` (the means, floats), ``drop`` and
    ``increase`` [N] (per image, float64), ``base`` (Y) and ``masked`` (O) [N].
    """
    imgs = _check_images(images)
    maps = _check_cams(cams, imgs)
    classes = _check_classes(class_index, imgs.shape[0])
    batch_size = _check_batch_size(batch_size)
    n = imgs.shape[0]

    # Jobs 0 … N−1: the images; N … 2N−1: the images times their CAMs (one pool, so batches stay full).
    def fill(j: int, out: np.ndarray) -> None:
        if j < n:
            out[...] = imgs[j]
        else:
            np.multiply(imgs[j - n], maps[j - n][None], out=out)

    probs = _score_jobs(scorer, fill, np.concatenate([classes, classes]), imgs.shape[1:], batch_size)
    base, masked = probs[:n], probs[n:]
    gap = np.maximum(base - masked, 0.0)
    drop = np.divide(gap, base, out=np.zeros_like(gap), where=base > 0) * 100.0
    increase = (masked > base).astype(np.float64) * 100.0
    return {
        "average_drop": float(drop.mean()) if n else float("nan"),
        "increase_in_confidence": float(increase.mean()) if n else float("nan"),
        "drop": drop,
        "increase": increase,
        "base": base,
        "masked": masked,
    }


# ---------------------------------------------------------------------------------------------------------------
# ROAD


def noisy_linear_impute(
    image: np.ndarray,
    removed: np.ndarray,
    *,
    noise: float = 0.01,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Fill the ``removed`` pixels of a ``[C,H,W]`` image by noisy linear imputation (ROAD).

    Each removed pixel u satisfies x_u = Σ_v w_v x_v / Σ_v w_v over its in-image 8-neighbours v (weights 1/6 for
    the 4 edge neighbours, 1/12 for the diagonal ones), where neighbours that are not removed keep their values.
    This is one sparse linear system over the removed pixels, solved with ``scipy.sparse.linalg.spsolve`` for all
    channels at once; N(0, noise²) is then added to every imputed value. When every pixel is removed there is no
    boundary value and the pixels are set to 0 (the normalised mean) plus noise. Returns float32 ``[C,H,W]``.
    """
    img = np.asarray(image, dtype=np.float32)
    mask = np.asarray(removed, dtype=bool)
    if img.ndim != 3 or mask.shape != img.shape[1:]:
        raise ValueError(f"need image [C,H,W] and removed [H,W], got {img.shape} and {mask.shape}")
    rng = np.random.default_rng() if rng is None else rng
    c, h, w = img.shape
    out = img.reshape(c, h * w).copy()
    idx = np.flatnonzero(mask.reshape(-1))
    n = idx.size
    if n == 0:
        return out.reshape(c, h, w)
    if n < h * w:
        flat = img.reshape(c, h * w).astype(np.float64)
        var_of = np.full(h * w, -1, dtype=np.int64)
        var_of[idx] = np.arange(n)
        rows, cols = np.divmod(idx, w)
        diag = np.zeros(n)
        rhs = np.zeros((n, c))
        a_rows, a_cols, a_vals = [], [], []
        for dy, dx, weight in _NEIGHBOURS:
            ny, nx = rows + dy, cols + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            eq = np.flatnonzero(inside)
            diag[eq] += weight
            nb = ny[inside] * w + nx[inside]
            var = var_of[nb]
            known = var < 0
            rhs[eq[known]] += weight * flat[:, nb[known]].T
            a_rows.append(eq[~known])
            a_cols.append(var[~known])
            a_vals.append(np.full(int((~known).sum()), -weight))
        # (Σ w) x_u − Σ_{removed v} w x_v = Σ_{kept v} w x_v
        a_rows.append(np.arange(n))
        a_cols.append(np.arange(n))
        a_vals.append(diag)
        system = csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(n, n))
        solution = np.asarray(spsolve(system, rhs), dtype=np.float64).reshape(n, c)
        out[:, idx] = solution.T
    else:
        out[:, idx] = 0.0
    if noise:
        out[:, idx] += (noise * rng.standard_normal((c, n))).astype(np.float32)
    return out.reshape(c, h, w)


def road_removal_mask(cam: np.ndarray, percentile: float, order: Literal["most", "least"] = "most") -> np.ndarray:
    """The pixels ROAD removes at ``percentile`` (bool ``[H,W]``), as pytorch-grad-cam's thresholding.

    ``"most"`` (MoRF): CAM ≥ the percentile-th percentile of the CAM (numpy linear interpolation);
    ``"least"`` (LeRF): the same on 1 − CAM. About (100 − percentile) % of the pixels are removed.
    """
    if order not in ("most", "least"):
        raise ValueError(f"order must be 'most' or 'least', got {order!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    relevance = np.asarray(cam, dtype=np.float32)
    if order == "least":
        relevance = np.float32(1.0) - relevance
    return relevance >= np.percentile(relevance, percentile)


def road(
    scorer: Scorer,
    images: np.ndarray,
    cams: np.ndarray,
    class_index: np.ndarray | int | Sequence[int],
    *,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    order: Literal["most", "least"] = "most",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """ROAD: remove the most (``order="most"``, MoRF) or least (``"least"``, LeRF) relevant pixels and impute them.

    For each percentile p the pixels of :func:`road_removal_mask` are filled by :func:`noisy_linear_impute`
    (``noise`` std, generator seeded with ``seed``) and the class probability is measured. The score at p is
    probability(imputed) − probability(image), pytorch-grad-cam's ``return_diff``; its mean over the percentiles
    is pytorch-grad-cam's ROAD{Most,Least}RelevantFirstAverage. For MoRF lower (more negative) is better, for LeRF
    higher.

    Returns a dict: ``percentiles`` [P], ``order``, ``base`` [N], ``probabilities`` [N,P] (after imputation),
    ``scores`` [N,P] (differences), ``removed_fraction`` [N,P], ``score`` [N] (mean over P) and ``mean`` (float).
    """
    imgs = _check_images(images)
    maps = _check_cams(cams, imgs)
    classes = _check_classes(class_index, imgs.shape[0])
    batch_size = _check_batch_size(batch_size)
    pcts = np.asarray(percentiles, dtype=np.float64).reshape(-1)
    if pcts.size == 0:
        raise ValueError("percentiles must not be empty")
    n, c, h, w = imgs.shape
    p = pcts.size
    masks = [[road_removal_mask(m, q, order) for q in pcts] for m in maps]
    removed_fraction = np.array([[mk.mean() for mk in row] for row in masks], dtype=np.float64).reshape(n, p)
    rng = np.random.default_rng(seed)

    # Job j < N: image j; job N + i·P + q: image i imputed at percentile q (made in order, so seeded noise is
    # reproducible whatever batch_size is).
    def fill(j: int, out: np.ndarray) -> None:
        if j < n:
            out[...] = imgs[j]
            return
        i, q = divmod(j - n, p)
        out[...] = noisy_linear_impute(imgs[i], masks[i][q], noise=noise, rng=rng)

    job_classes = np.concatenate([classes, np.repeat(classes, p)])
    probs = _score_jobs(scorer, fill, job_classes, (c, h, w), batch_size)
    base = probs[:n]
    after = probs[n:].reshape(n, p)
    scores = after - base[:, None]
    per_image = scores.mean(axis=1)
    return {
        "percentiles": pcts,
        "order": order,
        "base": base,
        "probabilities": after,
        "scores": scores,
        "removed_fraction": removed_fraction,
        "score": per_image,
        "mean": float(per_image.mean()) if n else float("nan"),
    }


def road_combined(
    scorer: Scorer,
    images: np.ndarray,
    cams: np.ndarray,
    class_index: np.ndarray | int | Sequence[int],
    *,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """ROADCombined (pytorch-grad-cam): (LeRF score − MoRF score) / 2 per image; higher is better.

    Returns a dict: ``morf`` and ``lerf`` (the :func:`road` results), ``score`` [N] and ``mean`` (float).
    """
    kwargs: dict[str, Any] = {"percentiles": percentiles, "noise": noise, "seed": seed, "batch_size": batch_size}
    morf = road(scorer, images, cams, class_index, order="most", **kwargs)
    lerf = road(scorer, images, cams, class_index, order="least", **kwargs)
    score = (lerf["score"] - morf["score"]) / 2.0
    return {"morf": morf, "lerf": lerf, "score": score, "mean": float(score.mean()) if score.size else float("nan")}


# ---------------------------------------------------------------------------------------------------------------
# SSIM and gradient-noise robustness

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def _ssim_kernel() -> np.ndarray:
    radius = _SSIM_WINDOW // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return (g / g.sum()).reshape(-1, 1)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0) -> float:
    """Mean structural similarity of two ``[H,W]`` maps (Wang et al. 2004), computed in float64.

    With Gaussian-weighted local statistics (window 11×11, σ = 1.5): μ_a, μ_b, σ_a² = E[a²] − μ_a²,
    σ_b² likewise, σ_ab = E[ab] − μ_a μ_b, and C1 = (0.01·L)², C2 = (0.03·L)² for L = ``data_range``,
    SSIM = (2 μ_a μ_b + C1)(2 σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2)), averaged over the pixels at
    least 5 from the border (whose window lies inside the map). Matches
    ``skimage.metrics.structural_similarity(a, b, data_range=L, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. Both sides must be ≥ 11.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"ssim needs two [H,W] maps of one shape, got {x.shape} and {y.shape}")
    if min(x.shape) < _SSIM_WINDOW:
        raise ValueError(f"ssim needs maps of at least {_SSIM_WINDOW}×{_SSIM_WINDOW}, got {x.shape}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    kernel = _ssim_kernel()

    def smooth(img: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(img, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = smooth(x), smooth(y)
    vx = smooth(x * x) - mx * mx
    vy = smooth(y * y) - my * my
    vxy = smooth(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = _SSIM_WINDOW // 2
    return float(s[pad:-pad, pad:-pad].mean())


def gradient_noise_robustness(
    cam_fn: CamFn,
    activations: np.ndarray,
    gradients: np.ndarray,
    sigmas: Sequence[float] = (0.1, 0.2, 0.5, 1.0),
    *,
    seed: int = 0,
    repeats: int = 3,
) -> dict[str, Any]:
    """SSIM between clean and gradient-noised CAMs, per noise level σ.

    For image i, G̃_i = G_i + ε with ε ~ N(0, (σ·std(G_i))²) i.i.d. over all entries (std over every entry of
    G_i), added before ``cam_fn`` does any weighting; ``cam_fn(activations, G̃)`` is compared with
    ``cam_fn(activations, G)`` by :func:`ssim` (maps should lie in [0, 1]). Each σ is drawn ``repeats`` times
    (one ``cam_fn`` call per σ and repeat, over the whole batch) from a generator seeded with ``seed``.

    Returns a dict: ``sigmas`` [S], ``ssim`` [S] (mean over images and repeats), ``ssim_per_image`` [S,N]
    (mean over repeats) and ``ssim_samples`` [S,R,N].
    """
    acts = np.asarray(activations, dtype=np.float32)
    grads = np.asarray(gradients, dtype=np.float32)
    if acts.ndim != 4 or acts.shape != grads.shape:
        raise ValueError(f"activations and gradients must be [N,C,h,w] of one shape, got {acts.shape}, {grads.shape}")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    levels = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if (levels < 0).any():
        raise ValueError(f"sigmas must be ≥ 0, got {levels.tolist()}")
    n = acts.shape[0]
    clean = np.asarray(cam_fn(acts, grads), dtype=np.float64)
    if clean.ndim != 3 or clean.shape[0] != n:
        raise ValueError(f"cam_fn must return [N,H,W] maps, got shape {clean.shape}")
    scale = grads.reshape(n, -1).astype(np.float64).std(axis=1).reshape(n, 1, 1, 1)
    rng = np.random.default_rng(seed)
    samples = np.empty((levels.size, int(repeats), n), dtype=np.float64)
    for s, sigma in enumerate(levels):
        for r in range(int(repeats)):
            noisy_grads = (grads + sigma * scale * rng.standard_normal(grads.shape)).astype(np.float32)
            noisy = np.asarray(cam_fn(acts, noisy_grads), dtype=np.float64)
            if noisy.shape != clean.shape:
                raise ValueError(f"cam_fn returned {noisy.shape} for noisy gradients, {clean.shape} for clean ones")
            samples[s, r] = [ssim(clean[i], noisy[i]) for i in range(n)]
    return {
        "sigmas": levels,
        "ssim": samples.mean(axis=(1, 2)),
        "ssim_per_image": samples.mean(axis=1),
        "ssim_samples": samples,
    }


# ---------------------------------------------------------------------------------------------------------------
# localisation


def _check_boxes(boxes: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(boxes)
    if arr.shape != (n, 4):
        raise ValueError(f"boxes must be [N,4] (x0, y0, x1, y1) with N = {n}, got shape {arr.shape}")
    arr = np.rint(arr).astype(np.int64)
    if ((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])).any():
        raise ValueError("every box needs x1 > x0 and y1 > y0 (end-exclusive pixel bounds)")
    return arr


def pointing_game(cams: np.ndarray, boxes: np.ndarray) -> float:
    """Fraction of maps whose maximum lies inside its box.

    ``boxes`` is ``[N,4]`` = (x0, y0, x1, y1) in pixels, end-exclusive (x0 ≤ x < x1, y0 ≤ y < y1). The maximum is
    ``np.argmax`` of the map (the first in raster order when several pixels tie).
    """
    maps = _check_cams(cams)
    bx = _check_boxes(boxes, maps.shape[0])
    if maps.shape[0] == 0:
        return float("nan")
    flat = maps.reshape(maps.shape[0], -1).argmax(axis=1)
    ys, xs = np.divmod(flat, maps.shape[2])
    hits = (xs >= bx[:, 0]) & (xs < bx[:, 2]) & (ys >= bx[:, 1]) & (ys < bx[:, 3])
    return float(hits.mean())


def energy_in_box(cams: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per map, Σ CAM inside its box / Σ CAM (boxes as :func:`pointing_game`, clipped to the map).

    Maps are used as given (they should be ≥ 0, e.g. in [0, 1]); a map that sums to 0 scores 0.
    Returns float64 ``[N]``.
    """
    maps = _check_cams(cams).astype(np.float64)
    bx = _check_boxes(boxes, maps.shape[0])
    out = np.zeros(maps.shape[0], dtype=np.float64)
    for i, (m, (x0, y0, x1, y1)) in enumerate(zip(maps, bx)):
        total = m.sum()
        if total != 0:
            out[i] = m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum() / total
    return out


__all__ = [
    "ROAD_PERCENTILES",
    "CamFn",
    "Scorer",
    "average_drop_increase",
    "blur_image",
    "deletion_insertion",
    "energy_in_box",
    "gradient_noise_robustness",
    "noisy_linear_impute",
    "pointing_game",
    "road",
    "road_combined",
    "road_removal_mask",
    "ssim",
    "trapezoid_auc",
]
