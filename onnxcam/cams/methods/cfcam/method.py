"""CF-CAM: Cluster Filter CAM (He, Pan, Yao 2025, arXiv 2504.00060), per docs/design.md §5.

Per image, with A, G ``[C,h,w]`` and F = A flattened to ``[C, Z]``:

1. n_c = ‖F_c‖₂, τ = 75th percentile of n (numpy linear interpolation); dominant D = {c : n_c ≥ τ},
   the rest R is clustered.
2. DBSCAN (Euclidean distances as pdist computes them; scikit-learn's partition, computed by
   :mod:`onnxcam.cams.methods.cfcam.clustering` from a Gram matrix and connected components) with
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
from functools import lru_cache
from numbers import Real

import numpy as np
import onnx
from onnx import helper
from scipy import ndimage, signal
from threadpoolctl import threadpool_limits

from onnxcam.cams.base import CAMContext, Options, as_float64, check_pair, graph_form, register
from onnxcam.cams.methods.cfcam.clustering import dbscan_partition, percentile
from onnxcam.cams.methods.cfcam.clustering_graph import BIG, dbscan_labels_graph
from onnxcam.core.errors import OnnxcamError
from onnxcam.core.graph_builder import GraphBuilder

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

# Below this many channels an image takes about two milliseconds, much of it Python-level work that holds the GIL,
# and one loop beats the thread pool (measured, batch 8 on 2 cores, ms per image, loop vs threads: 512 channels
# 2.0 vs 2.5; 1280: 5.4 vs 4.7; 2048: 11.1 vs 9.2).
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


@dataclass(frozen=True)
class CFCAMOptions(Options):
    """CF-CAM's options as the user gives them; None means "the default, or what ``mode`` sets" (DEFAULTS,
    AUTHORS). :attr:`settings` applies them; the embedded metadata records only the options that are not None."""

    filter: str | None = None
    sigma: float | None = None
    weighting: str | None = None
    drop_noise: bool | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        self.settings  # noqa: B018  (validates: one-line errors for bad values and conflicts with mode)

    @property
    def settings(self) -> CFCAMSettings:
        """The options resolved (defaults and ``mode`` applied)."""
        return resolve_options(filter=self.filter, sigma=self.sigma, weighting=self.weighting,
                               drop_noise=self.drop_noise, mode="onnxcam" if self.mode is None else self.mode)

    def canonical(self) -> object:
        return self.settings


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
    given: dict[str, object] = {k: v for k, v in {"filter": filter, "sigma": sigma, "weighting": weighting,
                                                   "drop_noise": drop_noise}.items() if v is not None}
    chosen = {**DEFAULTS, **given}
    if not isinstance(mode, str) or mode not in MODES:
        raise OnnxcamError(f"cfcam: mode must be one of {', '.join(MODES)}, got {mode!r}")
    chosen_filter, chosen_sigma = chosen["filter"], chosen["sigma"]
    chosen_weighting, chosen_drop = chosen["weighting"], chosen["drop_noise"]
    if not isinstance(chosen_filter, str) or chosen_filter not in FILTERS:
        raise OnnxcamError(f"cfcam: filter must be one of {', '.join(FILTERS)}, got {chosen_filter!r}")
    if not isinstance(chosen_weighting, str) or chosen_weighting not in WEIGHTINGS:
        raise OnnxcamError(f"cfcam: weighting must be one of {', '.join(WEIGHTINGS)}, got {chosen_weighting!r}")
    if (isinstance(chosen_sigma, (bool, np.bool_)) or not isinstance(chosen_sigma, Real)
            or not (0 < float(chosen_sigma) < np.inf)):
        raise OnnxcamError(f"cfcam: sigma must be a positive number, got {chosen_sigma!r}")
    if not isinstance(chosen_drop, (bool, np.bool_)):
        raise OnnxcamError(f"cfcam: drop_noise must be true or false, got {chosen_drop!r}")
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
    return CFCAMSettings(filter=chosen_filter, sigma=float(chosen_sigma), weighting=chosen_weighting,
                         drop_noise=bool(chosen_drop), mode=mode)


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


@lru_cache(maxsize=16)
def gaussian_mass(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """s = filterᵀ(1) for the zero-border gaussian: mean_ij gaussian(M) = ⟨M, s⟩ / hw for every map M.
    The kernel is symmetric, so its adjoint is itself: s = gaussian_filter(ones, σ, mode="constant")."""
    mass = ndimage.gaussian_filter(np.ones(shape), sigma=sigma, mode="constant")
    mass.flags.writeable = False
    return mass


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
    return details_with(activations, gradients, settings)


def details_with(activations: np.ndarray, gradients: np.ndarray, settings: CFCAMSettings) -> CFCAMDetails:
    """:func:`cfcam_details` with the options already resolved."""
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
    tau = percentile(norms, 75.0)
    dominant = norms >= tau
    rest = np.flatnonzero(~dominant)

    labels = np.full(c, -2, dtype=np.int64)
    rest_labels, eps, min_samples = dbscan_partition(features[rest])  # step 2
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
    options=CFCAMOptions,
    uses_gradients=True,
    uses_model=False,
    normalise="max",
    reference=None,
    description="CF-CAM: DBSCAN channel clustering, cluster-filtered gradients, hierarchical weights",
)
def cfcam(ctx: CAMContext, options: CFCAMOptions) -> np.ndarray:
    """CF-CAM maps ``[N,h,w]`` (float32): map = ReLU(Σ_{c∈V} α_c A_c), each image computed independently;
    ``options`` are :func:`cfcam_details`'s (filter, sigma, weighting, drop_noise, mode)."""
    settings = options.settings
    a, g = check_pair(ctx.activations, ctx.gradients)
    out = np.zeros((a.shape[0], a.shape[2], a.shape[3]), dtype=np.float32)
    workers = min(len(a), os.cpu_count() or 1)
    # BLAS single-threaded: its threads cost more than they save on one image's small products.
    with threadpool_limits(limits=1):
        if workers <= 1 or a.shape[1] < PARALLEL_MIN_CHANNELS:
            for i in range(a.shape[0]):
                out[i] = details_with(a[i], g[i], settings).cam
            return out
        # the Gram product, the comparisons and the partition release the GIL: one image per core.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, details in enumerate(pool.map(lambda j: details_with(a[j], g[j], settings), range(len(a)))):
                out[i] = details.cam
    return out


# --------------------------------------------------------------------------------------------------
# Graph form (onnxcam embed --cam cfcam)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """The n×n matrix of scipy's zero-border 1-D gaussian (radius ⌊4σ + 0.5⌋, normalised taps):
    gaussian_filter(M, σ, mode="constant") = G_h · M · G_wᵀ."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]  # p − y
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


def window_matrix(n: int) -> np.ndarray:
    """B with B[i, p] = 1 when p − i + ⌊(n − 1)/2⌋ ∈ [0, n): the box sums S = B_h · M · B_wᵀ of the bilateral
    filter's zero-padded map (S_ij = Σ_yx P[y + i, x + j]), so that mean(bilateral(M)) = Σ_ij K_ij S_ij / hw."""
    shift = np.arange(n)[None, :] - np.arange(n)[:, None] + (n - 1) // 2
    return ((shift >= 0) & (shift < n)).astype(np.float64)


def _filtered_means_graph(b: GraphBuilder, means: str, shape: tuple[int, int], settings: CFCAMSettings) -> str:
    """w_k = mean_ij filter(M_k) for cluster means ``[K, h·w]`` (float64) → ``[K]``: the gaussian as two banded
    matrix products (the zero-border separable filter; float64, which ONNX Runtime's CPU Conv lacks), the
    bilateral filter through its box sums (:func:`window_matrix`), or the plain mean."""
    h, w = shape
    if settings.filter == "none":
        return b.reduce("ReduceMean", means, [1], keepdims=False)
    maps = b.op("Reshape", means, b.ints([-1, h, w]))
    if settings.filter == "gaussian":
        rows = b.const(gaussian_matrix(h, settings.sigma), np.float64)
        cols = b.const(gaussian_matrix(w, settings.sigma).T, np.float64)
        return b.reduce("ReduceMean", b.op("MatMul", b.op("MatMul", rows, maps), cols), [1, 2], keepdims=False)
    i = np.arange(h, dtype=np.float64)[:, None] - h / 2
    j = np.arange(w, dtype=np.float64)[None, :] - w / 2
    spatial = b.const(np.exp(-(i**2 + j**2) / (2.0 * BILATERAL_SIGMA_SPATIAL**2)), np.float64)
    centred = b.op("Sub", maps, b.reduce("ReduceMean", maps, [1, 2]))
    value = b.op("Exp", b.op("Mul", b.op("Mul", centred, centred),
                             b.const(-1.0 / (2.0 * BILATERAL_SIGMA_RANGE**2), np.float64)))
    kernel = b.op("Mul", spatial, value)
    kernel = b.op("Div", kernel, b.op("Add", b.reduce("ReduceSum", kernel, [1, 2]), b.const(1e-6, np.float64)))
    boxes = b.op("MatMul", b.op("MatMul", b.const(window_matrix(h), np.float64), maps),
                 b.const(window_matrix(w).T, np.float64))
    return b.op("Div", b.reduce("ReduceSum", b.op("Mul", kernel, boxes), [1, 2], keepdims=False),
                b.const(float(h * w), np.float64))


def _image_graph(b: GraphBuilder, a: str, g: str, shape: tuple[int, int, int], settings: CFCAMSettings) -> str:
    """One image's raw CF-CAM map ``[h,w]`` (float32) from its A, G ``[C,h,w]`` (float64): steps 1–4."""
    c, h, w = shape
    f = b.op("Reshape", a, b.ints([c, h * w]))
    grads = b.op("Reshape", g, b.ints([c, h * w]))
    norms = b.op("Sqrt", b.reduce("ReduceSumSquare", f, [1], keepdims=False))
    ascending = b.ops("TopK", norms, b.ints([c]), outputs=2, largest=0, sorted=1)[0]
    position = 0.75 * (c - 1)  # np.percentile(norms, 75), linear
    lo = int(np.floor(position))
    first, second = (b.op("Gather", ascending, b.const(k, np.int64)) for k in (lo, min(lo + 1, c - 1)))
    diff, frac = b.op("Sub", second, first), position - lo
    tau = (b.op("Add", first, b.op("Mul", diff, b.const(frac, np.float64))) if frac < 0.5
           else b.op("Sub", second, b.op("Mul", diff, b.const(1.0 - frac, np.float64))))
    dominant = b.op("GreaterOrEqual", norms, tau)
    rest = b.op("Squeeze", b.op("NonZero", b.op("Not", dominant)), b.ints([0]))  # [R]
    labels = dbscan_labels_graph(b, b.op("Gather", f, rest, axis=0))  # [R]: cluster's smallest index, or BIG
    noise = b.op("GreaterOrEqual", labels, b.const(BIG / 2))
    count = b.op("Shape", rest)
    position_of = b.op("Cast", b.op("Range", b.const(0, np.int64), b.op("Squeeze", count, b.ints([0])),
                                    b.const(1, np.int64)), to=onnx.TensorProto.FLOAT)
    roots = b.op("Cast", b.op("Equal", labels, position_of), to=onnx.TensorProto.INT64)
    numbers = b.op("Sub", b.op("CumSum", roots, b.const(0, np.int64)), b.const(1, np.int64))  # cluster k at its root
    clusters = b.reduce("ReduceSum", roots, [0])  # K, [1]
    pointer = b.op("Cast", b.op("Where", noise, b.const(0.0), labels), to=onnx.TensorProto.INT64)
    cluster = b.op("Where", noise, b.const(-1, np.int64), b.op("Gather", numbers, pointer))  # [R]
    slots = b.op("Range", b.const(0, np.int64), b.op("Squeeze", clusters, b.ints([0])), b.const(1, np.int64))
    one_hot = b.op("Cast", b.op("Equal", b.op("Unsqueeze", cluster, b.ints([1])),
                                b.op("Unsqueeze", slots, b.ints([0]))), to=onnx.TensorProto.DOUBLE)  # [R, K]
    sizes = b.reduce("ReduceSum", one_hot, [0])  # [1, K]
    means = b.op("Div", b.op("MatMul", b.op("Transpose", one_hot, perm=[1, 0]), b.op("Gather", grads, rest, axis=0)),
                 b.op("Transpose", sizes, perm=[1, 0]))  # [K, Z]
    per_cluster = _filtered_means_graph(b, means, (h, w), settings)  # [K]
    on_rest = b.op("MatMul", one_hot, b.op("Unsqueeze", per_cluster, b.ints([1])))  # [R, 1]
    own = b.reduce("ReduceMean", grads, [1], keepdims=False)  # [C]
    zeros = b.const(np.zeros(c), np.float64)
    weights = b.op("Add", b.op("ScatterElements", zeros, rest, b.op("Squeeze", on_rest, b.ints([1])), axis=0),
                   b.op("Where", dominant, own, zeros))
    noisy = b.op("ScatterElements", zeros, rest, b.op("Cast", noise, to=onnx.TensorProto.DOUBLE), axis=0)  # [C]
    if settings.drop_noise:
        valid = b.op("Sub", b.const(1.0, np.float64), noisy)
    else:
        weights = b.op("Add", weights, b.op("Mul", noisy, own))
        valid = b.const(np.ones(c), np.float64)
    if settings.weighting == "softmax":
        peak = b.reduce("ReduceMax", b.op("Where", b.op("Greater", valid, zeros), weights,
                                          b.const(-np.inf, np.float64)), [0])
        exps = b.op("Mul", b.op("Exp", b.op("Sub", weights, peak)), valid)
        alphas = b.op("Div", exps, b.reduce("ReduceSum", exps, [0]))
    else:
        alphas = b.op("Mul", weights, valid)
    cam = b.op("Relu", b.op("MatMul", b.op("Unsqueeze", alphas, b.ints([0])), f))  # [1, Z]
    return b.op("Cast", b.op("Reshape", cam, b.ints([h, w])), to=onnx.TensorProto.FLOAT)


@graph_form("cfcam")
def cfcam_graph(b: GraphBuilder, activations: str, gradients: str, shape: tuple[int, int, int],
                options: CFCAMOptions) -> str:
    """:func:`cfcam` as ONNX nodes: a Loop over the images of the batch, each computing steps 1–4 in float64
    (the clustering: :func:`onnxcam.cams.methods.cfcam.clustering_graph.dbscan_labels_graph`)."""
    settings = options.settings
    a64, g64 = as_float64(b, activations, gradients)
    body = b.subgraph()
    iteration, condition = body.name("image"), body.name("cond")
    cam = _image_graph(body, body.op("Gather", a64, iteration, axis=0), body.op("Gather", g64, iteration, axis=0),
                       shape, settings)
    keep_going = body.op("Identity", condition)
    graph = body.graph("cfcam_image",
                       [helper.make_tensor_value_info(iteration, onnx.TensorProto.INT64, []),
                        helper.make_tensor_value_info(condition, onnx.TensorProto.BOOL, [])],
                       [helper.make_tensor_value_info(keep_going, onnx.TensorProto.BOOL, []),
                        helper.make_tensor_value_info(cam, onnx.TensorProto.FLOAT, [shape[1], shape[2]])])
    images = b.op("Gather", b.op("Shape", activations), b.const(0, np.int64))
    return b.op("Loop", images, b.const(True, np.bool_), body=graph)
