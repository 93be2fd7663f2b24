"""CF-CAM written straight from its definition (docs/design.md §5), with scikit-learn's DBSCAN on the dense
pdist matrix and one filter call per cluster: the reference the fast implementation must reproduce.

This is what onnxcam computed before the clustering was reformulated (pdist + scikit-learn, per-cluster
filters); it shares only the two filters with the implementation, which test_cfcam.py checks against loops.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist, squareform
from sklearn.cluster import DBSCAN

from onnxcam.cams.methods.cfcam.method import bilateral_filter, resolve_options


def reference_partition(features: np.ndarray) -> tuple[np.ndarray, float | None]:
    """DBSCAN labels of the rows (eps from the doubled pair list, min_samples = max(2, ⌊R/20⌋)), and eps."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return np.full(len(features), -1), None
    condensed = pdist(features)
    eps = max(float(np.percentile(np.repeat(condensed, 2), 25)), 1e-5)
    min_samples = max(2, len(features) // 20)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(squareform(condensed)), eps


def reference_cam(activations: np.ndarray, gradients: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    """(raw map [h,w] float64, labels [C]: −2 dominant, −1 noise, k cluster) for one image [C,h,w]."""
    settings = resolve_options(**options)
    a = np.asarray(activations, dtype=np.float64)
    g = np.asarray(gradients, dtype=np.float64)
    c = len(a)
    features = a.reshape(c, -1)
    norms = np.linalg.norm(features, axis=1)
    dominant = norms >= np.percentile(norms, 75)
    rest = np.flatnonzero(~dominant)
    labels = np.full(c, -2)
    labels[rest] = reference_partition(features[rest])[0]
    weights = np.zeros(c)
    for ch in range(c):
        if labels[ch] == -2 or (labels[ch] == -1 and not settings.drop_noise):
            weights[ch] = g[ch].mean()
    for k in range(labels.max() + 1):
        mean = g[labels == k].mean(axis=0)
        if settings.filter == "gaussian":
            filtered = ndimage.gaussian_filter(mean, sigma=settings.sigma, mode="constant")
        elif settings.filter == "bilateral":
            filtered = bilateral_filter(mean)
        else:
            filtered = mean
        weights[labels == k] = filtered.mean()
    valid = labels != -1 if settings.drop_noise else np.ones(c, dtype=bool)
    alphas = np.zeros(c)
    if settings.weighting == "softmax":
        e = np.exp(weights[valid] - weights[valid].max())
        alphas[valid] = e / e.sum()
    else:
        alphas[valid] = weights[valid]
    return np.maximum(np.tensordot(alphas, a, axes=1), 0.0), labels
