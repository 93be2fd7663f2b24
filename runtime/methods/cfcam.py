"""CF-CAM: Cluster Filter CAM (He, Pan, Yao 2025, arXiv 2504.00060), per docs/design.md §5.

Per image, with A, G ``[C,h,w]`` and F = A flattened to ``[C, Z]``:

1. n_c = ‖F_c‖₂, τ = 75th percentile of n (numpy linear interpolation); dominant D = {c : n_c ≥ τ},
   the rest R is clustered.
2. DBSCAN (Euclidean distances as pdist computes them; scikit-learn's partition, computed by
   :mod:`onnxcam.runtime.channel_clustering` from a Gram matrix and connected components) with
   eps = max(25th percentile of the off-diagonal entries of the full symmetric distance matrix, each
   unordered pair counted twice, 1e-5) and min_samples = max(2, ⌊0.05·|R|⌋). Label −1 is noise.
3. Weights: w_c = mean_ij G_c for c ∈ D; for cluster k with members S_k, M_k = mean_{c∈S_k} G_c and every
   member gets w_c = mean_ij filter(M_k).
4. Valid channels V = D ∪ clustered (∪ noise when ``drop_noise=False``, weighted by their own mean
   gradient); α = w_V (``weighting="linear"``, the default) or softmax(w_V) (the authors');
   map = ReLU(Σ_{c∈V} α_c A_c).

Edge cases: |R| = 0 (e.g. all norms tie, so every channel is dominant): no clustering. |R| = 1: no
distances exist, so no DBSCAN; the lone channel can never reach min_samples ≥ 2 and is noise (which is
what DBSCAN would say). ``eps`` and ``min_samples`` are then None in :class:`CFCAMDetails`. V always holds
the channel of largest norm, so the softmax is never empty.

Note on ``filter="gaussian"``: the map is filtered with zero borders (scipy's ``mode="constant"``), the
same convention as the authors' bilateral filter. With scipy's default mirror borders the filter would keep
the mean of the map, so mean_ij filter(M_k) = mean_ij M_k and the filter could not change any weight.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
from scipy import ndimage, signal
from threadpoolctl import threadpool_limits

from ..channel_clustering import dbscan_partition
from ..errors import OnnxcamError
from .base import check_pair, register

FILTERS: tuple[str, ...] = ("gaussian", "bilateral", "none")
WEIGHTINGS: tuple[str, ...] = ("softmax", "linear")
MODES: tuple[str, ...] = ("onnxcam", "authors")

DEFAULTS: dict[str, object] = {
    "filter": "gaussian",
    "sigma": 1.0,
    "weighting": "linear",  # measured: more faithful than softmax on EfficientNet-Lite0 (docs/evaluation.md)
    "drop_noise": True,
    "mode": "onnxcam",
}
# What mode="authors" uses (their public code): bilateral filter, softmax, noise dropped; sigma unused.
AUTHORS: dict[str, object] = {"filter": "bilateral", "weighting": "softmax", "drop_noise": True}
OPTIONS: tuple[str, ...] = tuple(DEFAULTS)

# Below this many channels an image takes about a millisecond, much of it Python-level work that holds the GIL,
# and one loop beats the thread pool (measured below).
PARALLEL_MIN_CHANNELS = 1024
BILATERAL_SIGMA_SPATIAL = 5.0
BILATERAL_SIGMA_RANGE = 0.1


@dataclass(frozen=True)
class CFCAMSettings:
    """Resolved CF-CAM options (after applying ``mode``)."""

    filter: str
    sigma: float
    weighting: str
    drop_noise: bool
    mode: str


@dataclass(frozen=True)
class CFCAMDetails:
    """Intermediate results of CF-CAM for one image (C channels).

    labels: int ``[C]``: −2 dominant, −1 noise, k ≥ 0 DBSCAN cluster id (ids in DBSCAN's order).
    rest: indices of the non-dominant channels R, ascending (the rows given to DBSCAN, in that order).
    eps, min_samples: the DBSCAN parameters; None when |R| < 2 (no clustering).
    weights: float64 ``[C]``, w_c for every weighted channel, 0 for dropped noise channels.
    valid: bool ``[C]``, the channels V that enter the map; alphas: float64 ``[C]``, 0 outside V.
    cam: float32 ``[h,w]`` = ReLU(Σ_c α_c A_c).
    """

    norms: np.ndarray
    tau: float
    dominant: np.ndarray
    rest: np.ndarray
    labels: np.ndarray
    eps: float | None
    min_samples: int | None
    num_clusters: int
    weights: np.ndarray
    valid: np.ndarray
    alphas: np.ndarray
    cam: np.ndarray
    settings: CFCAMSettings


def resolve_options(
    filter: str | None = None,
    sigma: float | None = None,
    weighting: str | None = None,
    drop_noise: bool | None = None,
    mode: str = "onnxcam",
) -> CFCAMSettings:
    """Validate the CF-CAM options and apply ``mode``; an option left at None takes its default (DEFAULTS).

    ``mode="authors"`` forces filter="bilateral", weighting="softmax", drop_noise=True; an option given
    explicitly with another value (or any sigma other than 1) raises OnnxcamError naming the conflict.
    """
    given = {k: v for k, v in {"filter": filter, "sigma": sigma, "weighting": weighting,
                                "drop_noise": drop_noise}.items() if v is not None}
    filter, sigma, weighting, drop_noise = ({**DEFAULTS, **given}[k] for k in ("filter", "sigma", "weighting",
                                                                               "drop_noise"))
    if not isinstance(mode, str) or mode not in MODES:
        raise OnnxcamError(f"cfcam: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(filter, str) or filter not in FILTERS:
        raise OnnxcamError(f"cfcam: filter must be one of {', '.join(FILTERS)}, got {filter!r}")
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise OnnxcamError(f"cfcam: weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, Real) or not (0 < float(sigma) < np.inf):
        raise OnnxcamError(f"cfcam: sigma must be a positive number, got {sigma!r}")
    if not isinstance(drop_noise, (bool, np.bool_)):
        raise OnnxcamError(f"cfcam: drop_noise must be true or false, got {drop_noise!r}")
    if mode == "authors":
        conflicts = [
            f"{key}={value!r}"
            for key, value in given.items()
            if value != AUTHORS.get(key, DEFAULTS[key])
        ]
        if conflicts:
            fixed = ", ".join(f"{key}={value!r}" for key, value in AUTHORS.items())
            raise OnnxcamError(
                f"cfcam: {', '.join(conflicts)} conflicts with mode='authors' (which uses {fixed}); "
                "drop it or use mode='onnxcam'"
            )
        return CFCAMSettings(
            filter=str(AUTHORS["filter"]),
            sigma=1.0,  # unused by the bilateral filter
            weighting=str(AUTHORS["weighting"]),
            drop_noise=True,
            mode=mode,
        )
    return CFCAMSettings(filter=filter, sigma=float(sigma), weighting=weighting, drop_noise=bool(drop_noise), mode=mode)


def bilateral_filter(
    m: np.ndarray,
    sigma_spatial: float = BILATERAL_SIGMA_SPATIAL,
    sigma_range: float = BILATERAL_SIGMA_RANGE,
) -> np.ndarray:
    """The authors' bilateral filter of an ``[h,w]`` map M.

    One h×w kernel K_ij = exp(−((i − h/2)² + (j − w/2)²)/(2σ_s²)) · exp(−(M_ij − mean M)²/(2σ_r²)),
    K ← K / (ΣK + 1e-6), applied as a cross-correlation out[y,x] = Σ_ij K_ij P[y+i, x+j] over M zero-padded
    "same"-style: (k−1)//2 rows/columns before, the rest (one more for even k) after, as torch does.
    """
    m = np.asarray(m, dtype=np.float64)
    h, w = m.shape
    i = np.arange(h, dtype=np.float64)[:, None] - h / 2
    j = np.arange(w, dtype=np.float64)[None, :] - w / 2
    spatial = np.exp(-(i**2 + j**2) / (2.0 * sigma_spatial**2))
    value = np.exp(-((m - m.mean()) ** 2) / (2.0 * sigma_range**2))
    kernel = spatial * value
    kernel = kernel / (kernel.sum() + 1e-6)
    top, left = (h - 1) // 2, (w - 1) // 2
    padded = np.pad(m, ((top, h - 1 - top), (left, w - 1 - left)))
    return signal.correlate(padded, kernel, mode="valid")


def filter_gradient(m: np.ndarray, settings: CFCAMSettings) -> np.ndarray:
    """filter(M) for a cluster's mean gradient map M ``[h,w]``: gaussian(σ), bilateral or identity."""
    if settings.filter == "gaussian":
        return ndimage.gaussian_filter(np.asarray(m, dtype=np.float64), sigma=settings.sigma, mode="constant")
    if settings.filter == "bilateral":
        return bilateral_filter(m)
    return np.asarray(m, dtype=np.float64)


def cluster_channels(features: np.ndarray) -> tuple[np.ndarray, float | None, int | None]:
    """DBSCAN labels for the rows of ``features`` [R, Z], with eps and min_samples as in step 2:
    :func:`onnxcam.runtime.channel_clustering.dbscan_partition` (scikit-learn's partition and numbering,
    from a float32 Gram matrix with the pairs near eps and near the percentile recomputed as pdist does).
    R < 2: no clustering, every row is noise, eps = min_samples = None."""
    return dbscan_partition(features)


def gaussian_mass(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """s = filterᵀ(1) for the zero-border gaussian: mean_ij gaussian(M) = ⟨M, s⟩ / hw for every map M.
    The kernel is symmetric, so its adjoint is itself: s = gaussian_filter(ones, σ, mode="constant")."""
    return ndimage.gaussian_filter(np.ones(shape), sigma=sigma, mode="constant")


def cluster_weights(gradients: np.ndarray, labels: np.ndarray, num_clusters: int, settings: CFCAMSettings,
                    ) -> np.ndarray:
    """w_k = mean_ij filter(M_k) for each cluster k, M_k = mean of its members' gradients ``[C,h,w]``.
    The gaussian and no filter are linear, so w_k = mean over members of ⟨G_c, s⟩/hw (s: :func:`gaussian_mass`,
    or ones): one product for all clusters. The bilateral filter depends on M_k: one call per cluster."""
    members = labels >= 0
    if num_clusters == 0:
        return np.zeros(0)
    counts = np.bincount(labels[members], minlength=num_clusters)
    if settings.filter == "bilateral":
        sums = np.zeros((num_clusters, *gradients.shape[1:]))
        np.add.at(sums, labels[members], gradients[members])
        return np.array([filter_gradient(sums[k] / counts[k], settings).mean() for k in range(num_clusters)])
    h, w = gradients.shape[1:]
    mass = gaussian_mass((h, w), settings.sigma) if settings.filter == "gaussian" else np.ones((h, w))
    per_channel = gradients[members].reshape(-1, h * w) @ mass.ravel() / (h * w)
    return np.bincount(labels[members], weights=per_channel, minlength=num_clusters) / counts


def cfcam_details(
    activations: np.ndarray,
    gradients: np.ndarray,
    *,
    filter: str | None = None,
    sigma: float | None = None,
    weighting: str | None = None,
    drop_noise: bool | None = None,
    mode: str = "onnxcam",
) -> CFCAMDetails:
    """CF-CAM for one image (A, G ``[C,h,w]``), returning every intermediate result (see module doc)."""
    settings = resolve_options(filter=filter, sigma=sigma, weighting=weighting, drop_noise=drop_noise, mode=mode)
    a = np.asarray(activations, dtype=np.float64)
    g = np.asarray(gradients, dtype=np.float64)
    if a.ndim != 3 or a.shape != g.shape or a.shape[0] == 0:
        raise OnnxcamError(
            f"cfcam: activations and gradients must be [C,h,w] arrays of one shape with C > 0, "
            f"got {a.shape} and {g.shape}"
        )
    c = a.shape[0]
    features = a.reshape(c, -1)

    norms = np.linalg.norm(features, axis=1)
    tau = float(np.percentile(norms, 75))
    dominant = norms >= tau
    rest = np.flatnonzero(~dominant)

    labels = np.full(c, -2, dtype=np.int64)
    rest_labels, eps, min_samples = cluster_channels(features[rest])
    labels[rest] = rest_labels
    noise = labels == -1
    num_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0

    weights = np.zeros(c, dtype=np.float64)
    own = dominant | (noise & (not settings.drop_noise))
    weights[own] = g[own].mean(axis=(1, 2))
    clustered = labels >= 0
    weights[clustered] = cluster_weights(g, labels, num_clusters, settings)[labels[clustered]]

    valid = ~noise if settings.drop_noise else np.ones(c, dtype=bool)
    alphas = np.zeros(c, dtype=np.float64)
    wv = weights[valid]
    if settings.weighting == "softmax":
        e = np.exp(wv - wv.max())
        alphas[valid] = e / e.sum()
    else:
        alphas[valid] = wv
    cam = np.maximum(np.tensordot(alphas, a, axes=1), 0.0).astype(np.float32)

    return CFCAMDetails(
        norms=norms,
        tau=tau,
        dominant=dominant,
        rest=rest,
        labels=labels,
        eps=eps,
        min_samples=min_samples,
        num_clusters=num_clusters,
        weights=weights,
        valid=valid,
        alphas=alphas,
        cam=cam,
        settings=settings,
    )


@register(
    "cfcam",
    normalise="max",
    options=OPTIONS,
    description="CF-CAM: DBSCAN channel clustering, cluster-filtered gradients, hierarchical weights",
)
def cfcam(activations: np.ndarray, gradients: np.ndarray, **options: Any) -> np.ndarray:
    """CF-CAM maps ``[N,h,w]`` (float32): map = ReLU(Σ_{c∈V} α_c A_c), each image computed independently;
    ``options`` are :func:`cfcam_details`'s (filter, sigma, weighting, drop_noise, mode)."""
    resolve_options(**options)  # fail fast, even for an empty batch
    a, g = check_pair(activations, gradients)
    out = np.zeros((a.shape[0], a.shape[2], a.shape[3]), dtype=np.float32)
    workers = min(len(a), os.cpu_count() or 1)
    # BLAS single-threaded: its threads cost more than they save on one image's small products.
    with threadpool_limits(limits=1):
        if workers <= 1 or a.shape[1] < PARALLEL_MIN_CHANNELS:
            for i in range(a.shape[0]):
                out[i] = cfcam_details(a[i], g[i], **options).cam
            return out
        # the Gram product, the comparisons and the partition release the GIL: one image per core.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, details in enumerate(pool.map(lambda j: cfcam_details(a[j], g[j], **options), range(len(a)))):
                out[i] = details.cam
    return out
