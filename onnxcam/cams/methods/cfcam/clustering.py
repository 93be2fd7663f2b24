"""CF-CAM's channel clustering (docs/design.md §5): DBSCAN's partition of the rows of ``F`` [R, Z], computed
from the reformulation instead of scikit-learn's neighbour lists, with exactly scikit-learn's result.

With pdist's Euclidean distances d, eps = max(25th percentile of the doubled pair list, 1e-5) and
min_samples = max(2, ⌊R/20⌋), scikit-learn's ``DBSCAN(metric="precomputed")`` gives:

- core points: at least min_samples rows j with d_ij ≤ eps (i itself included);
- clusters: the connected components of the core points in the eps-graph, numbered in the order of their
  smallest core index (``dbscan_inner`` starts a cluster at each unlabelled core point, in index order);
- a border point (not core, with a core neighbour) takes the smallest cluster number among its core
  neighbours (the first cluster whose depth-first search reaches it); the rest is noise (−1).

Here: the squared distances of all pairs come from float32 Gram products (BLAS), block of rows by block of
rows, with a rigorous error bound T, straight into a boolean adjacency (R² bytes); a seeded sample brackets
the percentile first, so the same pass keeps the few pairs that can decide it. Every pair whose approximate d²
lies within T of eps², and every pair that can decide the percentile, is recomputed as pdist computes it
(float64, summed in coordinate order, so bit-identical). Components: breadth-first search over the adjacency's
rows. No R×R×Z array, no R×R float matrix, no per-row neighbour lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial.distance import pdist, squareform

EPS_FLOOR = 1e-5
PERCENTILE = 25.0
#: float32 unit roundoff.
UNIT = 2.0**-24
#: Pairs whose squared distances bracket the percentile (above 4× this many pairs; below, all pairs are kept).
SAMPLE = 1 << 12
#: From R / DEAD_FRACTION all-zero rows on, when fewer than DEAD_AS_ONE_MAX rows are left, those rows plus one
#: zero row are clustered with pdist directly (:func:`_dead_as_one`); a few zero rows cost the scan nothing.
DEAD_FRACTION = 8
DEAD_AS_ONE_MAX = 512
#: Pairs per exact-distance chunk (a chunk of Z = 49 float64 differences: 6 MB).
CHUNK = 1 << 14
#: Entries of D per block of rows (1 MB of float32: the block stays in cache between its passes).
BLOCK_ENTRIES = 1 << 18


def pair_distances(features: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """pdist's Euclidean distance of each pair (rows[k], cols[k]) of ``features`` (float64 [R, Z]):
    √(Σ_z (x_z − y_z)²) summed in coordinate order, as scipy sums, hence bit-identical to ``pdist``.
    Pairs of two all-zero rows (dead ReLU channels, often most of a layer) are 0 without arithmetic; the
    others are computed :data:`CHUNK` pairs at a time, so memory stays bounded whatever the number of pairs."""
    out = np.zeros(len(rows))
    dead = ~np.asarray(features.any(axis=1))
    todo = np.flatnonzero(~(dead[rows] & dead[cols]))
    for start in range(0, len(todo), CHUNK):
        part = todo[start:start + CHUNK]
        diff = features[rows[part]] - features[cols[part]]
        np.multiply(diff, diff, out=diff)
        out[part] = np.sqrt(np.cumsum(diff, axis=1)[:, -1])
    return out


def error_bound(centred: np.ndarray) -> float:
    """T with |D_ij − d²_ij| ≤ T for every pair, D the float32 squared distances of the rows of ``centred``
    (rows minus their mean: distances do not change, fewer digits cancel) computed as the dot product
    [−2x_i, ‖x_i‖², 1]·[x_j, 1, ‖x_j‖²] of length Z + 2. Forward error of a float32 dot product of length n:
    ≤ γ_n Σ|terms|, γ_n ≈ n·u; with the rounding of the rows and of the squared norms, |error| ≤
    (3Z + 10)·u·(‖x_i‖² + ‖x_j‖²) ≤ (6Z + 20)·u·max‖x‖²; T = (8Z + 64)·u·max‖x‖²."""
    squares = np.einsum("ij,ij->i", centred, centred)
    return (8.0 * centred.shape[1] + 64.0) * UNIT * float(squares.max(initial=0.0))


def _down(x: float) -> np.float32:
    """The largest float32 ≤ x."""
    y = np.float32(x)
    return y if float(y) <= x else np.nextafter(y, np.float32(-np.inf))


def _up(x: float) -> np.float32:
    """The smallest float32 ≥ x."""
    y = np.float32(x)
    return y if float(y) >= x else np.nextafter(y, np.float32(np.inf))


def lerp(a: float, b: float, frac: float) -> float:
    """numpy's linear-interpolation step of ``np.percentile`` (the same two formulas, the same rounding)."""
    return float(a + (b - a) * frac) if frac < 0.5 else float(b - (b - a) * (1.0 - frac))


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear) of a 1-D array, from one partition: the same two order
    statistics and the same interpolation, without np.percentile's overhead on small arrays."""
    position = q / 100.0 * (len(values) - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, [lo, hi])
    return lerp(float(part[lo]), float(part[hi]), position - lo)


@lru_cache(maxsize=8)
def _sample_pairs(r: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of pairs (i ≠ j) of r rows, the same for every call with r."""
    rng = np.random.default_rng(r)
    i, j = rng.integers(0, r, SAMPLE), rng.integers(0, r, SAMPLE)
    distinct = i != j
    return i[distinct], j[distinct]


@lru_cache(maxsize=8)
def _lower_nan(b: int) -> np.ndarray:
    """b×b float32: NaN on and below the diagonal, 0 above (added to a block's diagonal square, so that
    every comparison there is False)."""
    out = np.where(np.tri(b, dtype=bool), np.float32(np.nan), np.float32(0.0)).astype(np.float32)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class PairScan:
    """What one blocked pass over the float32 squared distances D keeps.

    adjacency: bool [R, R], symmetric, False on the diagonal: D_ij ≤ ``keep``. rows, cols, values: the pairs
    i < j with lo ≤ D_ij ≤ keep (where the percentile and eps² are expected); below: how many pairs i < j
    have D_ij < lo.
    """

    adjacency: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    below: int
    lo: float
    keep: float


def scan_pairs(centred: np.ndarray, lo: np.float32, keep: np.float32) -> PairScan:
    """D_ij = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j for i < j as one float32 product per block of rows
    ([−2x, ‖x‖², 1]·[x, 1, ‖x‖²]ᵀ; each block stays in cache and reuses one buffer), written as the boolean
    adjacency D ≤ ``keep`` (both triangles), with the pairs in [lo, keep] kept and those below lo counted; the
    R×R float matrix is never held."""
    r = len(centred)
    x32 = np.asarray(centred, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x32, x32)[:, None]
    ones = np.ones_like(sq)
    left = np.hstack([-2.0 * x32, sq, ones])
    right = np.hstack([x32, ones, sq])
    step = max(16, BLOCK_ENTRIES // max(r, 1))
    buffer = np.empty(step * r, dtype=np.float32)
    adjacency = np.zeros((r, r), dtype=bool)
    rows, cols, values, below = [], [], [], 0
    for start in range(0, r - 1, step):
        stop = min(start + step, r)
        n, width = stop - start, r - start
        block = np.matmul(left[start:stop], right[start:].T, out=buffer[: n * width].reshape(n, width))
        block[:, :n] += _lower_nan(n)  # the diagonal and below: never a pair here
        near = block <= keep
        square = near[:, :n]
        adjacency[start:stop, stop:] = near[:, n:]
        adjacency[start:stop, start:stop] = square | square.T
        adjacency[stop:, start:stop] = near[:, n:].T
        below += int(np.count_nonzero(block < lo))
        kept = np.flatnonzero(near & (block >= lo))
        i, j = np.divmod(kept, width)
        rows.append(i + start)
        cols.append(j + start)
        values.append(block.ravel()[kept])
    return PairScan(adjacency, np.concatenate(rows), np.concatenate(cols), np.concatenate(values), below,
                    float(lo), float(keep))


def _bracket(centred: np.ndarray, k1: int, k2: int, m: int, bound: float) -> tuple[np.float32, np.float32]:
    """A bracket [lo, hi] of D values expected to hold the k1-th and k2-th smallest of the m pairs, from a
    seeded sample of pairs; everything (−inf, +inf) for small m. Only a guess: :func:`pair_percentile`
    checks that it holds them."""
    r = len(centred)
    if m <= 4 * SAMPLE:
        return np.float32(-np.inf), np.float32(np.inf)
    i, j = _sample_pairs(r)
    x32 = np.asarray(centred, dtype=np.float32)
    diff = x32[i] - x32[j]
    sample = np.sort(np.einsum("ij,ij->i", diff, diff))
    n = len(sample)
    q1, q2 = k1 / m, k2 / m
    spread = 5.0 * np.sqrt(max(q1 * (1 - q1), q2 * (1 - q2)) * n) + 2
    i_lo, i_hi = int(q1 * n - spread), int(q2 * n + spread)
    lo = _down(float(sample[i_lo]) - 3 * bound) if i_lo >= 0 else np.float32(-np.inf)
    hi = _up(float(sample[i_hi]) + 3 * bound) if i_hi < n else np.float32(np.inf)
    return lo, hi


def _order_positions(r: int, q: float) -> tuple[int, int, float]:
    """k1, k2 (0-based, in the list of the m = r(r−1)/2 pairs) and the fraction that give the q-th
    percentile of the doubled list: position q/100·(2m − 1), v[k] = s[⌊k/2⌋]."""
    m = r * (r - 1) // 2
    position = q / 100.0 * (2 * m - 1)
    lo = int(np.floor(position))
    return lo // 2, min(lo + 1, 2 * m - 1) // 2, position - lo


def pair_percentile(features: np.ndarray, scan: PairScan, bound: float, q: float = PERCENTILE) -> float | None:
    """The q-th percentile (numpy's linear method) of pdist's distances of ``features``, each pair counted
    twice (the off-diagonal entries of the square matrix), exactly as ``np.percentile`` of that list; None
    when the scan's bracket missed the order statistics (the caller then computes it the plain way).

    In the doubled sorted list v[k] = s[⌊k/2⌋] (s: each pair once), so two order statistics of the pairs are
    needed. Order statistics move by at most T when every value does: pairs whose D is more than 2T below
    the approximate k1-th are surely below the exact k1-th, those more than 2T above the k2-th surely above;
    the pairs in between are recomputed exactly and sorted.
    """
    k1, k2, frac = _order_positions(len(features), q)
    first, second = k1 - scan.below, k2 - scan.below
    if not 0 <= first <= second < len(scan.values):
        return None
    part = np.partition(scan.values, [first, second])
    low, high = _down(float(part[first]) - 2 * bound), _up(float(part[second]) + 2 * bound)
    if low < scan.lo or high > scan.keep:
        return None
    band = (scan.values >= low) & (scan.values <= high)
    below = scan.below + int(np.count_nonzero(scan.values < low))
    exact = np.sort(pair_distances(features, scan.rows[band], scan.cols[band]))
    if not 0 <= k1 - below <= k2 - below < len(exact):  # cannot happen while T bounds the error
        return None
    return lerp(exact[k1 - below], exact[k2 - below], frac)


def plain_percentile(features: np.ndarray, q: float = PERCENTILE) -> float:
    """The same percentile from every pdist distance (the fallback, and the definition)."""
    k1, k2, frac = _order_positions(len(features), q)
    part = np.partition(pdist(features), [k1, k2])
    return lerp(part[k1], part[k2], frac)


def neighbourhoods(features: np.ndarray, scan: PairScan, bound: float, eps: float) -> np.ndarray:
    """The eps-graph as a symmetric bool [R, R] adjacency with a True diagonal: d_ij ≤ eps for pdist's d.
    The scan's adjacency holds D ≤ keep; pairs with D above eps² + T are dropped, and those within T of
    eps² decided by the exact distance (every pair with D in (eps² − T, keep] is among the scan's kept pairs).
    """
    adjacency = scan.adjacency
    out = scan.values > _up(eps * eps + bound)
    unsure = ~out & (scan.values > _down(eps * eps - bound))
    if unsure.any():
        out[unsure] = pair_distances(features, scan.rows[unsure], scan.cols[unsure]) > eps
    flat = adjacency.ravel()
    r = len(adjacency)
    flat[scan.rows[out] * r + scan.cols[out]] = False
    flat[scan.cols[out] * r + scan.rows[out]] = False
    np.fill_diagonal(adjacency, True)
    return adjacency


def components(adjacency: np.ndarray, min_samples: int, weights: np.ndarray | None = None) -> np.ndarray:
    """DBSCAN's labels from the eps-graph (symmetric bool [R, R], True diagonal): core points have at least
    ``min_samples`` neighbours (each counted ``weights[j]`` times, 1 by default); clusters are the connected
    components of the core points, found by breadth-first search from the smallest unvisited core index (so
    numbered as scikit-learn numbers them), each level one OR over the rows of its frontier; a border point
    joins the first cluster it touches."""
    r = len(adjacency)
    if weights is None:
        core = adjacency.view(np.uint8).sum(axis=1, dtype=np.int64) >= min_samples
    else:
        core = adjacency.astype(np.float64) @ weights >= min_samples
    labels = np.full(r, -1, dtype=np.int64)
    unvisited = core.copy()
    clusters = []
    while unvisited.any():
        seed = int(np.argmax(unvisited))
        unvisited[seed] = False
        frontier, members = np.array([seed]), [np.array([seed])]
        while len(frontier):
            frontier = np.flatnonzero(np.logical_or.reduce(adjacency[frontier], axis=0) & unvisited)
            unvisited[frontier] = False
            members.append(frontier)
        clusters.append(np.concatenate(members))
        labels[clusters[-1]] = len(clusters) - 1
    border = np.flatnonzero(~core)
    if clusters and len(border):
        member_of = np.zeros((r, len(clusters)), dtype=np.float32)
        member_of[core, labels[core]] = 1.0
        touches = (adjacency[border].astype(np.float32) @ member_of) > 0  # [border, cluster]: a core neighbour in it
        reached = touches.any(axis=1)
        labels[border[reached]] = np.argmax(touches[reached], axis=1)
    return labels


def dbscan_partition(features: np.ndarray) -> tuple[np.ndarray, float | None, int | None]:
    """DBSCAN labels of the rows of ``features`` [R, Z] (−1 noise, clusters 0, 1, … in scikit-learn's order),
    with eps and min_samples as in the module doc; identical to
    ``DBSCAN(eps, min_samples, metric="precomputed").fit_predict(squareform(pdist(features)))``.
    R < 2: every row is noise, eps = min_samples = None."""
    features = np.asarray(features, dtype=np.float64)
    r = len(features)
    if r < 2:
        return np.full(r, -1, dtype=np.int64), None, None
    min_samples = max(2, r // 20)
    dead = ~np.asarray(features.any(axis=1))
    if dead.sum() >= max(2, r // DEAD_FRACTION) and r - dead.sum() < DEAD_AS_ONE_MAX:
        return _dead_as_one(features, dead, min_samples)
    centred = features - features.mean(axis=0)
    bound = error_bound(centred)
    k1, k2, _ = _order_positions(r, PERCENTILE)
    lo, hi = _bracket(centred, k1, k2, r * (r - 1) // 2, bound)
    keep = max(_up(float(hi) + 2 * bound), _up(EPS_FLOOR * EPS_FLOOR + bound))  # eps² + T is at most this
    scan = scan_pairs(centred, lo, keep)
    percentile = pair_percentile(features, scan, bound)
    if percentile is None:  # the bracket missed (a sample far off): the plain percentile, then a scan to match
        percentile = plain_percentile(features)
        scan = scan_pairs(centred, _down(max(percentile, EPS_FLOOR) ** 2 - bound),
                          _up(max(percentile, EPS_FLOOR) ** 2 + bound))
    eps = max(percentile, EPS_FLOOR)
    return components(neighbourhoods(features, scan, bound, eps), min_samples), eps, min_samples


def _dead_as_one(features: np.ndarray, dead: np.ndarray, min_samples: int) -> tuple[np.ndarray, float, int]:
    """:func:`dbscan_partition` when most rows are all zero (dead ReLU channels: 822 of EfficientNet-Lite0's
    1280 head channels on a photograph): the z zero rows become the first of them with weight z, and the few
    rows left are clustered with pdist itself.

    Exact: copies of a row have the same neighbours, hence one label, and weight z counts them as z
    neighbours; the first copy keeps the order of the rows, hence the cluster numbers. The pair list for eps
    is the reduced one plus each distance to the zero row z − 1 more times and z(z − 1)/2 zeros.
    """
    r, z = len(features), int(dead.sum())
    first = int(np.argmax(dead))
    kept = np.flatnonzero(~dead | (np.arange(r) == first))
    p = int(np.searchsorted(kept, first))
    condensed = pdist(features[kept])
    square = squareform(condensed)
    k1, k2, frac = _order_positions(r, PERCENTILE)
    zeros = z * (z - 1) // 2  # the smallest pairs of all: the order statistics past them come from the rest
    rest = np.concatenate([condensed, np.repeat(np.delete(square[p], p), z - 1)])
    wanted = [k - zeros for k in (k1, k2) if k >= zeros]
    part = np.partition(rest, wanted) if wanted else rest
    first_value, second_value = (float(part[k - zeros]) if k >= zeros else 0.0 for k in (k1, k2))
    eps = max(lerp(first_value, second_value, frac), EPS_FLOOR)
    weights = np.ones(len(kept))
    weights[p] = z
    kept_labels = components(square <= eps, min_samples, weights)
    labels = np.empty(r, dtype=np.int64)
    labels[kept] = kept_labels
    labels[dead] = kept_labels[p]
    return labels, eps, min_samples


__all__ = ["PairScan", "components", "dbscan_partition", "error_bound", "lerp", "neighbourhoods",
           "pair_distances", "pair_percentile", "plain_percentile", "scan_pairs"]
