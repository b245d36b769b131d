"""Baseline methods (HARR, NSH, WCH, Bi-half, GreedyHash, LSH, PCAH, ITQ) on the method contract.

Each trainable method: registry attributes, encode for every code length, a gradient check
through its quantiser, and a short run on scikit-learn's digits that must beat the same
method freshly initialised with the same seed. The mAP here is a small numpy reference
(Hamming ranking with a stable sort, mAP@ALL, integer labels), independent of the package.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from contrahash.methods import OptimSpec, StepInfo, build_method
from contrahash.methods.shallow import itq_rotation
from contrahash.methods.wch import mutual_attention, patch_similarity, weighted_target
from contrahash.methods.wta import harr_structure
from contrahash.models.model import encode_features
from contrahash.training.loop import train_on_features

BASELINES = ["harr", "nsh", "wch", "bihalf", "greedyhash", "lsh", "pcah", "itq"]
TRAINABLE = ["harr", "nsh", "wch", "bihalf", "greedyhash"]


# -- helpers ---------------------------------------------------------------------------------

def mean_average_precision(query_codes, db_codes, query_labels, db_labels) -> float:
    """mAP@ALL over Hamming ranking; ties broken by database order (stable sort)."""
    k = query_codes.shape[1]
    distance = (k - query_codes.astype(np.int64) @ db_codes.astype(np.int64).T) // 2
    aps = []
    for i in range(len(query_codes)):
        order = np.argsort(distance[i], kind="stable")
        relevant = (db_labels[order] == query_labels[i]).astype(np.float64)
        if relevant.sum() == 0:
            aps.append(0.0)
            continue
        precision = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
        aps.append(float((precision * relevant).sum() / relevant.sum()))
    return float(np.mean(aps))


def test_reference_map_on_a_hand_case():
    q = np.array([[1, 1]])
    db = np.array([[1, 1], [-1, -1], [1, -1]])
    # ranking by distance (0, 2, 1) → items 0, 2, 1; relevant = item 0 and item 1
    # AP = (1/1 + 2/3) / 2
    assert mean_average_precision(q, db, np.array([0]), np.array([0, 0, 1])) == pytest.approx(5 / 6)


@functools.lru_cache(maxsize=1)
def digits():
    """Digits (8×8 images, [0, 1]), fixed 300-query split, and 4 noisy shifted views per image."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target
    order = np.random.default_rng(0).permutation(len(images))
    query, database = order[:300], order[300:]
    rng = np.random.default_rng(1)
    views = np.empty((len(database), 4, 8, 8), np.float32)
    for v in range(4):
        shifts = rng.integers(-1, 2, size=(len(database), 2))
        for n, idx in enumerate(database):
            views[n, v] = np.roll(images[idx], tuple(shifts[n]), axis=(0, 1))
        views[:, v] += rng.normal(0.0, 0.05, size=(len(database), 8, 8))
    return images, labels, query, database, views


def pixel_features(centre: bool = True):
    """(query, database, views [N, 4, 64]) pixel vectors; centred by the database mean."""
    images, _, query, database, views = digits()
    flat, view_flat = images.reshape(len(images), 64), views.reshape(len(views), 4, 64)
    mean = flat[database].mean(axis=0) if centre else np.zeros(64, np.float32)
    return (
        torch.from_numpy(flat[query] - mean),
        torch.from_numpy(flat[database] - mean),
        torch.from_numpy(view_flat - mean),
    )


@functools.lru_cache(maxsize=1)
def _token_mixers() -> np.ndarray:
    return (np.random.default_rng(2).normal(size=(16, 4, 32)) / 4.0).astype(np.float32)


def to_tokens(images: np.ndarray) -> np.ndarray:
    """[..., 8, 8] → [..., 16, 32]: 2×2 patches, each embedded by its own position's matrix."""
    lead = images.shape[:-2]
    patches = images.reshape(*lead, 4, 2, 4, 2).swapaxes(-3, -2).reshape(*lead, 16, 4)
    return np.einsum("...tp,tpd->...td", patches, _token_mixers()).astype(np.float32)


def token_features():
    images, _, query, database, views = digits()
    mean = images[database].mean(axis=0)
    return (
        torch.from_numpy(to_tokens(images[query] - mean)),
        torch.from_numpy(to_tokens(images[database] - mean)),
        torch.from_numpy(to_tokens(views - mean)),
    )


def digits_map(method, query_features, db_features) -> float:
    _, labels, query, database, _ = digits()
    q, d = encode_features(method, query_features), encode_features(method, db_features)
    k = method.bits[0]
    return mean_average_precision(q[k], d[k], labels[query], labels[database])


def small_inputs(method, n: int = 16, d: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 5, d) if method.input_kind == "tokens" else (n, d)
    return [torch.randn(*shape, generator=g) for _ in range(method.n_views)]


def fitted_small(name: str, d: int = 12, bits=(4, 8), **overrides):
    torch.manual_seed(0)
    method = build_method(name, feature_dim=d, bits=list(bits), overrides=overrides)
    if name in ("harr", "lsh", "pcah", "itq"):
        method.fit(torch.randn(40, d, generator=torch.Generator().manual_seed(9)).abs())
    return method


# -- configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_unknown_config_key_is_named(name):
    with pytest.raises(ValueError, match="no_such_key"):
        build_method(name, feature_dim=8, bits=[4], overrides={"no_such_key": 1})


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("harr", {"percentile": 1.5}),
        ("nsh", {"temperature": 0.0}),
        ("wch", {"target_temperature": -1.0}),
        ("bihalf", {"gamma": -1.0}),
        ("greedyhash", {"alpha": -0.1}),
        ("itq", {"n_iter": -1}),
    ],
)
def test_invalid_config_values_are_rejected(name, overrides):
    with pytest.raises(ValueError):
        build_method(name, feature_dim=8, bits=[4], overrides=overrides)


# Isolate the quantiser path: switch off every term that reaches the head another way.
QUANTISER_ONLY = {
    "harr": {"lambda_bcr": 0.0, "lambda_q": 0.0},  # L_wta through tanh
    "nsh": {"lambda_q": 0.0},  # SortedNCE through tanh and SoftSort
    "wch": {"lambda_balance": 0.0},  # soft-target CE through ST(sign)
    "bihalf": {"gamma": 0.0},  # MSE through the bi-half layer's straight-through
    "greedyhash": {"alpha": 0.0},  # MSE through ST(sign)
}


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradient_reaches_every_head_through_the_quantiser(name):
    method = fitted_small(name, **QUANTISER_ONLY[name])
    step = StepInfo(positions=torch.arange(16))  # HARR looks its structure up by position
    method.training_loss(small_inputs(method), step).loss.backward()
    weights = [(n, p) for n, p in method.named_parameters() if n.endswith("weight") and p.ndim == 2]
    assert weights
    for param_name, p in weights:
        if name == "nsh" and param_name.startswith("latent"):
            continue
        assert p.grad is not None, param_name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, param_name
    for k in (4, 8):  # both code lengths' heads learn
        assert any(f".{k}." in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in weights)


# -- HARR ------------------------------------------------------------------------------------

def test_harr_needs_fit_and_positions():
    method = build_method("harr", feature_dim=12, bits=[8])
    views = small_inputs(method)
    with pytest.raises(RuntimeError, match="fit"):
        method.training_loss(views, StepInfo(positions=torch.arange(16)))
    method.fit(torch.randn(40, 12).abs())
    with pytest.raises(RuntimeError, match="positions"):
        method.training_loss(views, StepInfo())
    with pytest.raises(ValueError, match="positions"):
        method.training_loss(views, StepInfo(positions=torch.arange(5)))


def test_harr_batch_structure_is_the_training_structure_block():
    features = torch.randn(60, 12, generator=torch.Generator().manual_seed(3)).abs()
    method = build_method("harr", feature_dim=12, bits=[8], overrides={"n_perm": 64, "window": 4})
    method.fit(features)
    full = harr_structure(features, n_perm=64, window=4, seed=0, percentile=0.3)
    assert method.thr == pytest.approx(full.thr)
    assert float(method.pos) == pytest.approx(full.pos) and float(method.neg) == pytest.approx(full.neg)
    index = torch.tensor([5, 0, 59, 17, 33])
    S, w = method.batch_structure(index)
    assert torch.equal(S, full.S[index][:, index])
    assert torch.allclose(w, full.w[index][:, index])


def test_harr_rejects_degenerate_structure():
    method = build_method("harr", feature_dim=3, bits=[4], overrides={"n_perm": 8})
    with pytest.raises(ValueError, match="degenerate"):
        method.fit(torch.ones(6, 3))


def test_harr_state_dict_round_trip():
    method = fitted_small("harr")
    fresh = build_method("harr", feature_dim=12, bits=[4, 8])
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.wta_codes, method.wta_codes)
    assert fresh.thr == method.thr and float(fresh.pos) == float(method.pos)
    x = torch.randn(7, 12)
    assert all(torch.equal(fresh.encode(x)[k], method.encode(x)[k]) for k in (4, 8))


# -- WCH target ------------------------------------------------------------------------------

def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _weighted_target_reference(x1, x2, t_att=1.0, t_target=0.2):
    x1, x2 = x1.double().tolist(), x2.double().tolist()
    n = len(x1)

    def attend(queries_from, values, transpose):
        # tilde for one image: rows indexed by the other view's patches
        a_rows, b_rows = (values, queries_from) if transpose else (queries_from, values)
        out = []
        for q in b_rows if transpose else a_rows:
            scores = [sum(u * v for u, v in zip(_unit(q), _unit(p), strict=True)) / t_att for p in values]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            z = sum(weights)
            out.append([sum(w / z * p[d] for w, p in zip(weights, values, strict=True)) for d in range(len(values[0]))])
        return out

    # x̃¹: for each view-2 patch j, softmax over view-1 patches i of cos(x¹_i, x²_j), applied to x¹
    tilde1 = [attend(x2[m], x1[m], transpose=False) for m in range(n)]
    # x̃²: for each view-1 patch i, softmax over view-2 patches j, applied to x²
    tilde2 = [attend(x1[m], x2[m], transpose=False) for m in range(n)]
    s = [[0.0] * n for _ in range(n)]
    for a in range(n):
        for b in range(n):
            best = [
                max(sum(u * v for u, v in zip(_unit(p), _unit(q), strict=True)) for q in tilde2[b])
                for p in tilde1[a]
            ]
            s[a][b] = sum(best) / len(best)
    W = []
    for a in range(n):
        top = max(s[a])
        e = [math.exp((v - top) / t_target) for v in s[a]]
        z = sum(e)
        p = [v / z for v in e]
        W.append([v / p[a] for v in p])
    return s, W


def test_wch_target_matches_loop():
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(4, 3, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    s_ref, w_ref = _weighted_target_reference(x1, x2)
    t1, t2 = mutual_attention(x1, x2)
    assert t1.shape == (4, 6, 5) and t2.shape == (4, 3, 5)
    s = patch_similarity(t1, t2, max_elements=40)  # forces chunking
    assert torch.allclose(s, torch.tensor(s_ref, dtype=torch.float32), atol=1e-5)
    W = weighted_target(x1, x2)
    assert torch.allclose(W, torch.tensor(w_ref, dtype=torch.float32), rtol=1e-4)
    assert torch.allclose(torch.diagonal(W), torch.ones(4))
    assert not W.requires_grad


def test_wch_rejects_vectors():
    method = build_method("wch", feature_dim=12, bits=[8])
    with pytest.raises(ValueError, match="token grid"):
        method.encode(torch.randn(3, 12))


# -- training-free baselines -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["lsh", "pcah", "itq"])
def test_shallow_encode_before_fit_raises_and_state_round_trips(name):
    method = build_method(name, feature_dim=12, bits=[4, 8])
    with pytest.raises(RuntimeError, match="fit"):
        method.encode(torch.randn(3, 12))
    assert list(method.parameters()) == []
    method.fit(torch.randn(50, 12))
    fresh = build_method(name, feature_dim=12, bits=[4, 8])
    fresh.load_state_dict(method.state_dict())
    x = torch.randn(9, 12)
    assert all(torch.equal(fresh.encode(x)[k], method.encode(x)[k]) for k in (4, 8))


def test_pcah_and_itq_need_k_at_most_d():
    for name in ("pcah", "itq"):
        with pytest.raises(ValueError, match="exceeds the feature dimension"):
            build_method(name, feature_dim=8, bits=[16])
    build_method("lsh", feature_dim=8, bits=[16])


def test_lsh_is_seeded():
    x, q = torch.randn(30, 10), torch.randn(5, 10)
    a = build_method("lsh", feature_dim=10, bits=[8])
    b = build_method("lsh", feature_dim=10, bits=[8])
    c = build_method("lsh", feature_dim=10, bits=[8], overrides={"seed": 1})
    for m in (a, b, c):
        m.fit(x)
    assert torch.equal(a.encode(q)[8], b.encode(q)[8])
    assert not torch.equal(a.projection_8, c.projection_8)


def test_pcah_directions_match_sklearn():
    from sklearn.decomposition import PCA

    _, db, _ = pixel_features()
    method = build_method("pcah", feature_dim=64, bits=[8])
    method.fit(db)
    reference = PCA(n_components=8).fit(db.numpy().astype(np.float64)).components_.T
    cosines = np.abs((method.projection_8.numpy().astype(np.float64) * reference).sum(axis=0))
    assert np.all(cosines > 0.999)


def test_itq_rotation_is_orthogonal_and_error_decreases():
    _, db, _ = pixel_features()
    method = build_method("itq", feature_dim=64, bits=[16])
    method.fit(db)
    errors = method.quantization_errors[16]
    assert len(errors) == 51
    assert all(b <= a + 1e-6 * a for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.9 * errors[0]
    v = torch.randn(100, 6, dtype=torch.float64)
    rotation, _ = itq_rotation(v, n_iter=5)
    assert torch.allclose(rotation @ rotation.t(), torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_itq_beats_pcah_and_lsh_on_digits():
    q, db, _ = pixel_features()
    scores = {}
    for name in ("lsh", "pcah", "itq"):
        method = build_method(name, feature_dim=64, bits=[16])
        method.fit(db)
        scores[name] = digits_map(method, q, db)
    assert scores["itq"] >= scores["pcah"]
    assert scores["itq"] >= scores["lsh"]


# -- short digits runs: trained beats the same seed untrained --------------------------------

DIGITS_RUNS = {
    # name: (overrides, epochs, optimiser)
    "harr": ({"n_perm": 512}, 5, OptimSpec(name="sgd", lr=0.1, momentum=0.9, batch_size=64)),
    "nsh": ({"latent_dim": 64, "chunk": 64}, 3, OptimSpec(name="adam", lr=3e-3, batch_size=64)),
    "wch": ({"hidden": 256}, 4, OptimSpec(name="adam", lr=1e-3, batch_size=32)),
    # at small learning rates Bi-half's γ(u − b) term outweighs the MSE gradient on this
    # 64-d toy and the codes drift towards one shared projection; lr 0.1 trains
    "bihalf": ({}, 5, OptimSpec(name="sgd", lr=0.1, momentum=0.9, batch_size=32)),
    "greedyhash": ({}, 5, OptimSpec(name="sgd", lr=0.1, momentum=0.9, batch_size=32)),
}


@pytest.mark.parametrize("name", TRAINABLE)
def test_short_digits_run_improves_map(name):
    overrides, epochs, spec = DIGITS_RUNS[name]
    if name == "wch":
        q, db, views = token_features()
        dim = q.shape[-1]
    else:
        # HARR's head starts with a ReLU (built for non-negative CNN features): raw pixels
        q, db, views = pixel_features(centre=name != "harr")
        dim = 64
    torch.manual_seed(0)
    untrained = build_method(name, feature_dim=dim, bits=[16], overrides=overrides)
    torch.manual_seed(0)
    method = build_method(name, feature_dim=dim, bits=[16], overrides=overrides)
    before = digits_map(untrained, q, db)
    if name == "harr":
        assert method.needs_fit
        method.fit(db)  # the trainer's job; each step then receives StepInfo.positions
    train_on_features(method, views, epochs=epochs, optim=spec)
    after = digits_map(method, q, db)
    assert after > before + 0.03, (name, before, after)
