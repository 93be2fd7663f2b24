"""CF-CAM: Cluster Filter CAM (He, Pan, Yao 2025, arXiv 2504.00060), per docs/design.md §5.

Per image, with A, G ``[C,h,w]`` and F = A flattened to ``[C, Z]``:

1. n_c = ‖F_c‖₂, τ = 75th percentile of n (numpy linear interpolation); dominant D = {c : n_c ≥ τ},
   the rest R is clustered.
2. DBSCAN (Euclidean distances from pdist, run on the sparse eps-neighbourhood graph) with
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
from scipy import ndimage, signal, sparse
from scipy.spatial.distance import pdist, squareform
from sklearn.cluster import DBSCAN
from threadpoolctl import threadpool_limits

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

EPS_FLOOR = 1e-5
# Below this many channels an image takes a few ms, mostly Python-level work that holds the GIL, and threads
# were slower than one loop (measured: 512 channels 7x7, batch 8: 4.6 ms/img threaded, 3.8 sequential;
# 2048 channels: 29 threaded, 41 sequential, on 2 cores).
PARALLEL_MIN_CHANNELS = 1024
# From R / DEAD_FRACTION all-zero channels on, they are clustered as one weighted channel (same labels, fewer
# pairs); below that the saving does not pay for sklearn's per-row weight sums.
DEAD_FRACTION = 8
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


def percentile_of_pairs(condensed: np.ndarray, q: float = 25.0, zeros: int = 0) -> float:
    """The q-th percentile (numpy's linear method) of the pair distances ``condensed`` plus ``zeros`` more
    pairs at distance 0, each pair counted twice (the off-diagonal entries of the symmetric matrix):
    ``np.percentile(np.repeat(np.r_[condensed, np.zeros(zeros)], 2), q)`` in O(M), without the copies.
    In the doubled sorted list v, v[k] = s[⌊k/2⌋] for the sorted single list s."""
    m = len(condensed) + zeros
    position = q / 100.0 * (2 * m - 1)
    lo = int(np.floor(position))
    frac = position - lo
    first, second = lo // 2, min(lo + 1, 2 * m - 1) // 2
    if second < zeros:
        return 0.0
    if first < zeros:  # first is the last zero, second the smallest distance
        a, b = 0.0, float(condensed.min())
    else:
        part = np.partition(condensed, first - zeros)
        a = part[first - zeros]
        b = a if second == first else part[first - zeros + 1:].min()
    return float(a + (b - a) * frac) if frac < 0.5 else float(b - (b - a) * (1.0 - frac))


def neighbourhood_graph(within: np.ndarray, r: int) -> sparse.csr_matrix:
    """The ε-neighbourhood graph of r points as a sparse CSR matrix, from the condensed boolean
    ``within`` = (d_ij ≤ eps, i < j). Stored entries (explicit zeros, each point its own neighbour) are the
    neighbours; DBSCAN with ``metric="precomputed"`` and any eps > 0 treats every stored entry as within eps,
    so it gives the same labels as on the dense distance matrix while visiting only the neighbours."""
    square = squareform(within, checks=False)
    np.fill_diagonal(square, True)
    counts = np.count_nonzero(square, axis=1)
    indptr = np.zeros(r + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # int32 indices and float32 data: half the bytes for sklearn's internal copies (measured 2x faster).
    index_type = np.int32 if indptr[-1] < np.iinfo(np.int32).max else np.int64
    indices = (np.flatnonzero(square) % r).astype(index_type)
    return sparse.csr_matrix((np.zeros(len(indices), np.float32), indices, indptr.astype(index_type)), shape=(r, r))


def cluster_channels(features: np.ndarray) -> tuple[np.ndarray, float | None, int | None]:
    """DBSCAN labels for the rows of ``features`` [R, Z], with eps and min_samples as in step 2.

    eps = max(25th percentile (linear) of the R(R−1) off-diagonal distances, 1e-5) (see
    :func:`percentile_of_pairs`); min_samples = max(2, ⌊R/20⌋). Distances come from scipy's ``pdist`` (no
    R×R×Z array); DBSCAN runs on the sparse ε-neighbourhood graph (:func:`neighbourhood_graph`), which gives
    the labels of the dense matrix. R < 2: no clustering, every row is noise, eps = min_samples = None.
    Many all-zero rows (dead ReLU channels) are clustered as one weighted row (:func:`_cluster_dead_as_one`).
    """
    r = features.shape[0]
    if r < 2:
        return np.full(r, -1, dtype=np.int64), None, None
    min_samples = max(2, r // 20)
    dead = ~features.any(axis=1)
    if dead.sum() >= max(2, r // DEAD_FRACTION):
        return _cluster_dead_as_one(features, dead, min_samples)
    condensed = pdist(features, metric="euclidean")
    eps = max(percentile_of_pairs(condensed, 25.0), EPS_FLOOR)
    graph = neighbourhood_graph(condensed <= eps, r)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels.astype(np.int64), eps, min_samples


def _cluster_dead_as_one(features: np.ndarray, dead: np.ndarray, min_samples: int,
                         ) -> tuple[np.ndarray, float, int]:
    """:func:`cluster_channels` with the z all-zero rows replaced by the first of them, weighted z.

    Exact: copies of a row have the same neighbours, so DBSCAN gives them one label, and a weight of z
    counts them as z neighbours (sklearn's ``sample_weight``); the first copy keeps the rows' order, hence
    the cluster ids. The pair list for eps is rebuilt from the reduced one: z(z−1)/2 zeros, and each
    distance from the zero row to a live row z times. (The real EfficientNet-Lite0 has 822 of 1280
    channels dead at its head on a cat photo: the DBSCAN input shrinks from 960 to 139 rows.)
    """
    r, z = len(features), int(dead.sum())
    first_dead = int(np.argmax(dead))
    kept = np.flatnonzero(~dead | (np.arange(r) == first_dead))
    n, p = len(kept), int(np.searchsorted(kept, first_dead))
    condensed = pdist(features[kept], metric="euclidean")
    # distances from kept row p (the zero row) to the others, read out of the condensed list
    before = np.arange(p)
    row_start = n * p - p * (p + 1) // 2
    to_zero = np.concatenate([condensed[n * before - before * (before + 1) // 2 + (p - before - 1)],
                              condensed[row_start:row_start + n - p - 1]])
    pairs = np.concatenate([condensed, np.repeat(to_zero, z - 1)])
    eps = max(percentile_of_pairs(pairs, 25.0, zeros=z * (z - 1) // 2), EPS_FLOOR)
    weights = np.ones(n)
    weights[p] = z
    graph = neighbourhood_graph(condensed <= eps, n)
    db = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    kept_labels = db.fit_predict(graph, sample_weight=weights)
    labels = np.empty(r, dtype=np.int64)
    labels[kept] = kept_labels
    labels[dead] = kept_labels[p]
    return labels, eps, min_samples


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
    for k in range(num_clusters):
        members = labels == k
        weights[members] = filter_gradient(g[members].mean(axis=0), settings).mean()

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
    if workers <= 1 or a.shape[1] < PARALLEL_MIN_CHANNELS:
        for i in range(a.shape[0]):
            out[i] = cfcam_details(a[i], g[i], **options).cam
        return out
    # pdist, the partition and most of DBSCAN release the GIL: one image per core, BLAS single-threaded inside.
    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=workers) as pool:
        for i, details in enumerate(pool.map(lambda j: cfcam_details(a[j], g[j], **options), range(len(a)))):
            out[i] = details.cam
    return out
