"""CF-CAM, step by step, on hand-made activations and gradients (docs/design.md §5).

Expected values are worked out by hand in the comments or recomputed here with plain-Python loops that
share no code with onnxcam.cams.methods.cfcam.method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcam.cams import check_options, finalise, get_method
from onnxcam.cams.methods.cfcam.method import (
    CFCAMSettings,
    bilateral_filter,
    cfcam_details,
    filter_gradient,
    resolve_options,
)
from onnxcam.core.errors import OnnxcamError

cfcam = get_method("cfcam")  # a function of (activations, gradients, **options)

# --------------------------------------------------------------------------------------------------
# Plain-Python references


def bilateral_loops(m: list[list[float]], pad_before_extra: bool = False) -> list[list[float]]:
    """The authors' bilateral filter written with loops. Zero padding before = (k-1)//2 (torch), or k//2
    with ``pad_before_extra=True`` (the opposite convention for even sizes)."""
    h, w = len(m), len(m[0])
    mean = sum(sum(row) for row in m) / (h * w)
    k = [
        [
            math.exp(-((i - h / 2) ** 2 + (j - w / 2) ** 2) / (2 * 5.0**2))
            * math.exp(-((m[i][j] - mean) ** 2) / (2 * 0.1**2))
            for j in range(w)
        ]
        for i in range(h)
    ]
    total = sum(sum(row) for row in k) + 1e-6
    top = h // 2 if pad_before_extra else (h - 1) // 2
    left = w // 2 if pad_before_extra else (w - 1) // 2
    out = [[0.0] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            for i in range(h):
                for j in range(w):
                    p, q = y + i - top, x + j - left
                    if 0 <= p < h and 0 <= q < w:
                        out[y][x] += k[i][j] / total * m[p][q]
    return out


def gaussian_zero_loops(m: list[list[float]], sigma: float) -> list[list[float]]:
    """Separable Gaussian (radius int(4σ + 0.5), weights exp(-k²/2σ²) normalised) with zero borders
    (0 0 0 | a b c d | 0 0 0), as scipy.ndimage.gaussian_filter with mode="constant"."""
    radius = int(4.0 * sigma + 0.5)
    taps = [math.exp(-0.5 * t * t / sigma**2) for t in range(-radius, radius + 1)]
    taps = [t / sum(taps) for t in taps]

    def smooth(v: list[float]) -> list[float]:
        n = len(v)
        return [sum(taps[t + radius] * v[i + t] for t in range(-radius, radius + 1) if 0 <= i + t < n)
                for i in range(n)]

    rows = [smooth(list(r)) for r in m]  # along W
    cols = [smooth([rows[i][j] for i in range(len(rows))]) for j in range(len(rows[0]))]  # along H
    return [[cols[j][i] for j in range(len(cols))] for i in range(len(rows))]


def mean2d(m: list[list[float]]) -> float:
    return sum(sum(r) for r in m) / (len(m) * len(m[0]))


def softmax(ws: list[float]) -> list[float]:
    e = [math.exp(x) for x in ws]
    return [x / sum(e) for x in e]


def weighted_map(alphas: dict[int, float], acts: np.ndarray) -> np.ndarray:
    h, w = acts.shape[1:]
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            out[y, x] = max(0.0, sum(a * float(acts[c, y, x]) for c, a in alphas.items()))
    return out


# --------------------------------------------------------------------------------------------------
# The hand-made example: C = 8 channels of 2x2.
#
# Non-dominant channels are A_c = [[x_c, 0], [0, 1]], so ||F_c|| = sqrt(x_c² + 1) and the distance between
# two of them is |x_i - x_j|. Dominant channels c1, c5 have large norms sqrt(40) and 7.
#   c: 0    1    2    3    4    5    6    7
#   x: 0    dom  2.0  0.1  5.0  dom  0.3  2.4
# norms sorted: 1, 1.005, 1.044, 2.236, 2.6, sqrt26 = 5.099, sqrt40 = 6.325, 7
# tau = 75th percentile, index 0.75*7 = 5.25 -> 0.75*sqrt(26) + 0.25*sqrt(40) = 5.405 -> D = {1, 5}.
# R = [0, 2, 3, 4, 6, 7], |R| = 6, 15 pairs with distances, sorted:
#   0.1 0.2 0.3 0.4 | 1.7 1.9 2.0 2.1 2.3 2.4 2.6 3.0 4.7 4.9 5.0
# Full matrix (each pair twice, 30 values): index 0.25*29 = 7.25 -> d[7] = 0.4, d[8] = 1.7
#   -> eps = 0.4 + 0.25*(1.7 - 0.4) = 0.725.
# Once per pair (15 values): index 0.25*14 = 3.5 -> 0.4 + 0.5*1.3 = 1.05 (a different value).
# min_samples = max(2, floor(0.3)) = 2. Neighbourhoods within 0.725: {0, .1, .3}, {2.0, 2.4}, {5.0} alone
#   -> cluster 0 = {c0, c3, c6} (DBSCAN meets c0 first), cluster 1 = {c2, c7}, c4 is noise.

X = {0: 0.0, 2: 2.0, 3: 0.1, 4: 5.0, 6: 0.3, 7: 2.4}
ACTS = np.zeros((8, 2, 2))
for _c, _x in X.items():
    ACTS[_c] = [[_x, 0.0], [0.0, 1.0]]
ACTS[1] = [[0.0, 6.0], [2.0, 0.0]]
ACTS[5] = [[0.0, 0.0], [7.0, 0.0]]

GRADS = np.zeros((8, 2, 2))
GRADS[1] = [[0.1, 0.2], [0.3, 0.4]]  # mean 0.25
GRADS[5] = [[-0.1, 0.0], [-0.3, -0.2]]  # mean -0.15
GRADS[0] = [[0.3, 0.0], [0.0, 0.0]]  # cluster 0: M0 = mean of c0, c3, c6 = [[0.1, 0], [0.2, 0.1]]
GRADS[3] = [[0.0, 0.0], [0.6, 0.0]]
GRADS[6] = [[0.0, 0.0], [0.0, 0.3]]
GRADS[2] = [[0.2, 0.4], [0.0, 0.0]]  # cluster 1: M1 = mean of c2, c7 = [[0.1, 0.1], [0.1, 0]]
GRADS[7] = [[0.0, -0.2], [0.2, 0.0]]
GRADS[4] = [[1.0, 1.0], [1.0, 1.0]]  # noise channel, own mean 1.0

M0 = [[0.1, 0.0], [0.2, 0.1]]
M1 = [[0.1, 0.1], [0.1, 0.0]]
EXPECTED_LABELS = [0, -2, 1, 0, -1, -2, 0, 1]

# Bilateral of M0 by hand: spatial S = exp(-((i-1)² + (j-1)²)/50) = [[e^-.04, e^-.02], [e^-.02, 1]];
# range exp(-(M - 0.1)²/0.02) = [[1, e^-.5], [e^-.5, 1]]; K = S*range / (sum + 1e-6).
# Pad 0 before, 1 after: out = [[K00 .1 + K10 .2 + K11 .1, K10 .1], [K00 .2 + K01 .1, K00 .1]]
# mean = (.4 K00 + .1 K01 + .3 K10 + .1 K11) / 4.
_K = [math.exp(-0.04), math.exp(-0.52), math.exp(-0.52), 1.0]
W_M0_BILATERAL = (0.4 * _K[0] + 0.1 * _K[1] + 0.3 * _K[2] + 0.1 * _K[3]) / 4 / (sum(_K) + 1e-6)


def test_example_hand_numbers_agree_with_loops() -> None:
    # guards the test material itself: hand formula == loop reference == literal value
    assert pytest.approx(mean2d(bilateral_loops(M0)), rel=1e-12) == W_M0_BILATERAL
    assert pytest.approx(0.05731449339462468, rel=1e-12) == W_M0_BILATERAL
    assert mean2d(bilateral_loops(M1)) == pytest.approx(0.032721490434527926, rel=1e-12)


def test_authors_mode_step_by_step() -> None:
    d = cfcam_details(ACTS, GRADS, mode="authors")
    assert d.settings == CFCAMSettings("bilateral", 1.0, "softmax", True, "authors")

    # step 1: norms, tau, dominant set
    np.testing.assert_allclose(
        d.norms, [1.0, math.sqrt(40), math.sqrt(5), math.sqrt(1.01), math.sqrt(26), 7.0, math.sqrt(1.09), 2.6]
    )
    assert d.tau == pytest.approx(0.75 * math.sqrt(26) + 0.25 * math.sqrt(40), rel=1e-12)
    assert d.dominant.tolist() == [False, True, False, False, False, True, False, False]
    assert d.rest.tolist() == [0, 2, 3, 4, 6, 7]

    # step 2: eps over the duplicated pairs (0.725), not the once-per-pair value (1.05); min_samples 2
    assert d.eps == pytest.approx(0.725, rel=1e-12)
    pairs = [0.1, 0.2, 0.3, 0.4, 1.7, 1.9, 2.0, 2.1, 2.3, 2.4, 2.6, 3.0, 4.7, 4.9, 5.0]
    assert float(np.percentile(pairs, 25)) == pytest.approx(1.05)
    assert float(np.percentile(pairs + pairs, 25)) == pytest.approx(0.725)
    assert d.min_samples == 2
    assert d.labels.tolist() == EXPECTED_LABELS
    assert d.num_clusters == 2
    assert d.valid.tolist() == [True, True, True, True, False, True, True, True]  # c4 (noise) dropped

    # step 3: weights
    w0 = W_M0_BILATERAL
    w1 = mean2d(bilateral_loops(M1))
    expected_w = [w0, 0.25, w1, w0, 0.0, -0.15, w0, w1]
    np.testing.assert_allclose(d.weights, expected_w, rtol=1e-10, atol=1e-15)
    # the bilateral filter moved the cluster weights away from the plain means 0.1 and 0.075
    assert abs(w0 - 0.1) > 0.04 and abs(w1 - 0.075) > 0.04

    # step 4: softmax over the valid channels, final map
    valid = [0, 1, 2, 3, 5, 6, 7]
    alphas = dict(zip(valid, softmax([expected_w[c] for c in valid])))
    np.testing.assert_allclose(d.alphas, [alphas.get(c, 0.0) for c in range(8)], rtol=1e-10)
    assert d.alphas.sum() == pytest.approx(1.0)
    assert d.cam.dtype == np.float32 and d.cam.shape == (2, 2)
    np.testing.assert_allclose(d.cam, weighted_map(alphas, ACTS), rtol=1e-6)

    # through the registered method and finalise: divide by the max
    method = get_method("cfcam")
    raw = method(ACTS[None].astype(np.float32), GRADS[None].astype(np.float32), mode="authors")
    np.testing.assert_allclose(raw[0], d.cam, rtol=1e-6)
    out = finalise(raw, (2, 2), method.normalise)
    np.testing.assert_allclose(out[0], d.cam / d.cam.max(), rtol=1e-6)


def test_min_samples_uses_floor_of_5_percent_when_r_is_large() -> None:
    # 21 dominant channels + |R| = 63 -> min_samples = max(2, floor(3.15)) = 3.
    # R = three groups of 20 identical channels (interleaved), one identical pair, one single channel.
    # 571 of the 1953 pairs are at distance 0 (> 25%) -> the 25th percentile is 0 -> eps = 1e-5 (floor).
    # The pair only has 2 points within eps: noise with min_samples = 3 (a cluster with 2).
    e = np.eye(4)
    acts, kinds = [], []
    for i in range(21):
        acts.append(np.full(4, 2.0 + 0.1 * i))
        kinds.append("dom")
    for _ in range(20):
        for g in range(3):
            acts.append(e[g])
            kinds.append(g)
    acts += [e[3], e[3], np.array([0.5, 0.5, 0.0, 0.0])]
    kinds += ["pair", "pair", "single"]
    a = np.stack(acts).reshape(-1, 2, 2)
    d = cfcam_details(a, np.zeros_like(a), mode="authors")
    assert a.shape[0] == 84 and d.dominant.sum() == 21 and d.rest.size == 63
    assert d.min_samples == 3
    assert d.eps == 1e-5
    expected = [-2 if k == "dom" else -1 if k in ("pair", "single") else k for k in kinds]
    assert d.labels.tolist() == expected
    assert d.num_clusters == 3


def test_min_samples_stays_2_below_60() -> None:
    # same construction with |R| = 59 (groups 19, 19, 18): floor(2.95) = 2, so the pair is a cluster.
    # C = 79: tau index 0.75*78 = 58.5 -> the 20 dominant channels are above tau.
    e = np.eye(4)
    acts = [np.full(4, 2.0 + 0.1 * i) for i in range(20)]
    for g, n in enumerate((19, 19, 18)):
        acts += [e[g]] * n
    acts += [e[3], e[3], np.array([0.5, 0.5, 0.0, 0.0])]
    a = np.stack(acts).reshape(-1, 2, 2)
    d = cfcam_details(a, np.zeros_like(a), mode="authors")
    assert d.rest.size == 59 and d.min_samples == 2 and d.eps == 1e-5
    assert d.labels[-3:].tolist() == [3, 3, -1]
    assert d.labels[20:76].tolist() == [0] * 19 + [1] * 19 + [2] * 18


@pytest.mark.parametrize("shape", [(2, 4), (4, 4), (3, 4)])
def test_bilateral_filter_even_sizes_pad_after(shape: tuple[int, int]) -> None:
    h, w = shape
    m = [[0.05 * ((3 * i + 5 * j) % 7) - 0.1 for j in range(w)] for i in range(h)]
    got = bilateral_filter(np.array(m))
    torch_like = np.array(bilateral_loops(m))
    opposite = np.array(bilateral_loops(m, pad_before_extra=True))
    np.testing.assert_allclose(got, torch_like, rtol=1e-12, atol=1e-15)
    assert np.abs(got - opposite).max() > 1e-2  # the padding convention matters here


def test_bilateral_filter_2x4_literal_corner() -> None:
    # M = [[0, 0, 0, 0], [0, 0.1, 0, 0]], mean 0.0125. K_ij = exp(-((i-1)² + (j-2)²)/50) * range_ij with
    # range = exp(-(0.0875)²/0.02) at (1,1), exp(-(0.0125)²/0.02) elsewhere, K /= (sum K + 1e-6).
    # torch's pads: rows 0 before / 1 after, columns 1 before / 2 after, so P[p, q] = M[p, q-1] and
    # out[0,0] = sum_ij K_ij P[i, j] = K_12 * M[1,1] = K_12 * 0.1 (K_12 is the kernel centre, spatial 1).
    # The opposite convention (1 row, 2 columns before) puts M[1,1] at P[2,3], outside the kernel: 0.
    m = np.zeros((2, 4))
    m[1, 1] = 0.1
    r_hi, r_lo = math.exp(-(0.0875**2) / 0.02), math.exp(-(0.0125**2) / 0.02)
    k = np.array(
        [
            [math.exp(-((i - 1) ** 2 + (j - 2) ** 2) / 50.0) * (r_hi if (i, j) == (1, 1) else r_lo) for j in range(4)]
            for i in range(2)
        ]
    )
    k = k / (k.sum() + 1e-6)
    got = bilateral_filter(m)
    assert got[0, 0] == pytest.approx(k[1, 2] * 0.1, rel=1e-12)
    assert got[0, 0] > 0.01
    assert bilateral_loops(m.tolist(), pad_before_extra=True)[0][0] == 0.0


def test_gaussian_variant_default_mode() -> None:
    # default options: filter="gaussian", sigma=1.0, zero borders: the filter leaks part of each cluster's
    # mean gradient map out of the border, so the cluster weights shrink below the plain means (0.1, 0.075).
    # The default weighting is linear (alpha = w, measured in docs/evaluation.md); softmax checked as well.
    d = cfcam_details(ACTS, GRADS)
    assert d.settings == CFCAMSettings("gaussian", 1.0, "linear", True, "onnxcam")
    assert d.labels.tolist() == EXPECTED_LABELS and d.eps == pytest.approx(0.725)
    w0, w1 = (mean2d(gaussian_zero_loops(m, 1.0)) for m in (M0, M1))
    assert w0 < 0.1 - 1e-3 and w1 < 0.075 - 1e-3
    expected_w = [w0, 0.25, w1, w0, 0.0, -0.15, w0, w1]
    np.testing.assert_allclose(d.weights, expected_w, rtol=1e-10)
    valid = [0, 1, 2, 3, 5, 6, 7]
    linear = {c: expected_w[c] for c in valid}
    np.testing.assert_allclose(d.cam, np.maximum(weighted_map(linear, ACTS), 0), rtol=1e-6, atol=1e-12)
    soft = cfcam_details(ACTS, GRADS, weighting="softmax")
    alphas = dict(zip(valid, softmax([expected_w[c] for c in valid])))
    np.testing.assert_allclose(soft.cam, weighted_map(alphas, ACTS), rtol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_filter_matches_loops(sigma: float) -> None:
    m = [[0.1 * ((2 * i + 3 * j) % 5) - 0.2 for j in range(4)] for i in range(3)]
    settings = resolve_options(filter="gaussian", sigma=sigma)
    np.testing.assert_allclose(filter_gradient(np.array(m), settings), gaussian_zero_loops(m, sigma), atol=1e-12)


def test_filter_none_and_linear_weighting() -> None:
    # linear: alpha = w_V. Map = 0.1*(A0+A3+A6) + 0.25*A1 + 0.075*(A2+A7) - 0.15*A5, then ReLU:
    #   (0,0) = 0.1*(0 + 0.1 + 0.3) + 0.075*(2.0 + 2.4) = 0.04 + 0.33 = 0.37
    #   (0,1) = 0.25*6 = 1.5
    #   (1,0) = 0.25*2 - 0.15*7 = -0.55 -> 0
    #   (1,1) = 0.1*3 + 0.075*2 = 0.45
    d = cfcam_details(ACTS, GRADS, filter="none", weighting="linear")
    np.testing.assert_allclose(d.alphas, [0.1, 0.25, 0.075, 0.1, 0.0, -0.15, 0.1, 0.075], rtol=1e-10)
    np.testing.assert_allclose(d.cam, [[0.37, 1.5], [0.0, 0.45]], rtol=1e-6)


def test_keep_noise_channels() -> None:
    # drop_noise=False: c4 stays, weighted by its own mean gradient 1.0; with linear weights the map gains
    # 1.0*A4 = [[5, 0], [0, 1]] over the previous test's: [[5.37, 1.5], [0, 1.45]].
    d = cfcam_details(ACTS, GRADS, filter="none", weighting="linear", drop_noise=False)
    assert d.labels.tolist() == EXPECTED_LABELS  # still labelled noise
    assert d.valid.all()
    assert d.weights[4] == pytest.approx(1.0)
    np.testing.assert_allclose(d.cam, [[5.37, 1.5], [0.0, 1.45]], rtol=1e-6)
    soft = cfcam_details(ACTS, GRADS, filter="none", drop_noise=False, weighting="softmax")
    ws = [0.1, 0.25, 0.075, 0.1, 1.0, -0.15, 0.1, 0.075]
    np.testing.assert_allclose(soft.alphas, softmax(ws), rtol=1e-10)


def test_all_channels_dominant_when_norms_tie() -> None:
    # equal norms -> tau = 1 -> every channel dominant, nothing to cluster.
    # mean gradients 0, ln 2, ln 3 -> softmax = 1/6, 2/6, 3/6.
    a = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])
    g = np.stack([np.full((2, 2), v) for v in (0.0, math.log(2), math.log(3))])
    d = cfcam_details(a, g, weighting="softmax")
    assert d.dominant.all() and d.rest.size == 0 and d.eps is None and d.min_samples is None
    assert d.labels.tolist() == [-2, -2, -2] and d.num_clusters == 0
    np.testing.assert_allclose(d.alphas, [1 / 6, 2 / 6, 3 / 6], rtol=1e-12)
    np.testing.assert_allclose(d.cam, [[1 / 6, 2 / 6], [3 / 6, 0.0]], rtol=1e-6)


def test_single_rest_channel_is_noise() -> None:
    # C = 2: tau index 0.75 -> only the larger channel is dominant; |R| = 1 cannot be clustered.
    a = np.array([[[3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    g = np.array([np.full((2, 2), 0.5), np.full((2, 2), 2.0)])
    d = cfcam_details(a, g, weighting="softmax")
    assert d.labels.tolist() == [-2, -1] and d.eps is None and d.min_samples is None
    np.testing.assert_allclose(d.cam, [[3.0, 0.0], [0.0, 0.0]])  # softmax of one weight = 1
    kept = cfcam_details(a, g, drop_noise=False, weighting="linear")
    np.testing.assert_allclose(kept.cam, [[1.5, 0.0], [0.0, 2.0]])


def test_batch_images_are_independent() -> None:
    rng = np.random.default_rng(0)
    a2 = np.abs(rng.normal(size=(8, 2, 2)))
    g2 = rng.normal(size=(8, 2, 2)) * 0.1
    acts = np.stack([ACTS, a2]).astype(np.float32)
    grads = np.stack([GRADS, g2]).astype(np.float32)
    maps = cfcam(acts, grads, mode="authors")
    assert maps.shape == (2, 2, 2) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], cfcam(acts[:1], grads[:1], mode="authors")[0])
    np.testing.assert_allclose(maps[1], cfcam_details(a2, g2, mode="authors").cam, rtol=1e-5)
    assert cfcam(acts[:0], grads[:0]).shape == (0, 2, 2)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"filter": "none"}, "filter='none'"),
        ({"filter": "gaussian", "sigma": 2.0}, "sigma=2.0"),
        ({"weighting": "linear"}, "weighting='linear'"),
        ({"filter": "gaussian"}, "filter='gaussian'"),
        ({"drop_noise": False}, "drop_noise=False"),
    ],
)
def test_authors_mode_conflicts(options: dict, named: str) -> None:
    with pytest.raises(OnnxcamError, match="conflicts with mode='authors'") as info:
        cfcam_details(ACTS, GRADS, mode="authors", **options)
    assert named in str(info.value)
    with pytest.raises(OnnxcamError, match="conflicts"):
        cfcam(ACTS[None], GRADS[None], mode="authors", **options)


def test_authors_mode_accepts_its_own_values() -> None:
    base = cfcam_details(ACTS, GRADS, mode="authors")
    for options in ({"sigma": 1.0}, {"filter": "bilateral", "drop_noise": True, "weighting": "softmax"}):
        d = cfcam_details(ACTS, GRADS, mode="authors", **options)
        assert d.settings.filter == "bilateral"
        np.testing.assert_array_equal(d.cam, base.cam)


@pytest.mark.parametrize(
    "options",
    [
        {"filter": "median"},
        {"weighting": "max"},
        {"mode": "paper"},
        {"sigma": 0.0},
        {"sigma": -1.0},
        {"sigma": "1"},
        {"drop_noise": "yes"},
    ],
)
def test_invalid_option_values(options: dict) -> None:
    with pytest.raises(OnnxcamError, match="cfcam"):
        cfcam_details(ACTS, GRADS, **options)


def test_unknown_option_is_caught_by_check_options() -> None:
    with pytest.raises(OnnxcamError, match="'eps'"):
        check_options(get_method("cfcam"), {"eps": 0.5})


def test_bad_shapes() -> None:
    with pytest.raises(OnnxcamError):
        cfcam_details(ACTS[0], GRADS[0])
    with pytest.raises(OnnxcamError):
        cfcam(ACTS[None], GRADS[None, :4])


# --------------------------------------------------------------------------------------------------
# The clustering itself is tested against scikit-learn in test_channel_clustering.py


def test_batch_runs_in_parallel_and_matches_one_by_one() -> None:
    rng = np.random.default_rng(7)
    # over PARALLEL_MIN_CHANNELS channels, so the images of the batch go to the thread pool
    acts = np.abs(rng.normal(size=(3, 1100, 3, 3))).astype(np.float32)
    grads = rng.normal(size=(3, 1100, 3, 3)).astype(np.float32)
    maps = cfcam(acts, grads)
    for i in range(3):
        np.testing.assert_array_equal(maps[i], cfcam_details(acts[i], grads[i]).cam)
