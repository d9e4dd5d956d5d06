"""How much latent actions say about real ones, each score beside its chance level.

Dimension key: B clips, T transitions per clip, F feature width.

* :func:`agreement`: NMI and adjusted mutual information (AMI, scikit-learn) between codes and labels, each beside
  a permutation null that pairs every clip's codes with the labels of a clip from another episode (whole rows move,
  so the within-clip correlation of both sequences is kept and only the pairing is broken). AMI corrects NMI for
  chance: with many codes and few samples NMI is high for independent labels, AMI stays near 0.
* :func:`linear_probe`: logistic regression from continuous features to labels, fit on one split and scored on
  another, beside the majority-class rate and a probe fit on shuffled labels.
"""

from __future__ import annotations

import numpy as np


def _entropy(counts) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mutual_info(codes, labels, shape) -> float:
    joint = np.zeros(shape, np.float64)
    np.add.at(joint, (codes, labels), 1)
    p = joint / joint.sum()
    outer = np.outer(p.sum(1), p.sum(0))
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


def null_draws(c_BT: np.ndarray, y_BT: np.ndarray, perms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """NMI and AMI of codes ``c`` against labels ``y`` (both 0..n-1 ids) with ``y``'s rows taken in each order."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    shape = (int(c_BT.max()) + 1, int(y_BT.max()) + 1)
    ami0 = adjusted_mutual_info_score(y_BT[perms[0]].ravel(), c_BT.ravel()) if perms else 0.0
    if min(shape) < 2 or abs(1 - ami0) < 1e-6:  # scikit-learn's special cases (a constant labelling): each draw
        return {
            "nmi": np.array([normalized_mutual_info_score(y_BT[p].ravel(), c_BT.ravel()) for p in perms]),
            "ami": np.array([adjusted_mutual_info_score(y_BT[p].ravel(), c_BT.ravel()) for p in perms]),
        }
    mean_h = (_entropy(np.bincount(c_BT.ravel())) + _entropy(np.bincount(y_BT.ravel()))) / 2
    mi = np.array([_mutual_info(c_BT.ravel(), y_BT[p].ravel(), shape) for p in perms])
    emi = (mi[0] - ami0 * mean_h) / (1 - ami0)  # EMI from a null draw (its AMI is near 0: well conditioned)
    return {"nmi": mi / mean_h, "ami": (mi - emi) / (mean_h - emi)}


def cross_episode_permutations(episode_B: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random pairings of clips in which every clip takes the labels of a clip from another episode.

    Each draw orders the episodes at random (their clips shuffled, kept together) and pairs position i with
    position i + k (mod B) for a random k with both k and B - k at least the largest episode's clip count, so
    no clip meets its own episode. When one episode holds more than half the clips no such pairing exists, and
    clips pair with any other clip instead.
    """
    episode_B = np.asarray(episode_B)
    B = len(episode_B)
    groups = [np.flatnonzero(episode_B == e) for e in np.unique(episode_B)]
    most = max(len(g) for g in groups)
    out = []
    for _ in range(n):
        if 2 * most > B:  # no cross-episode pairing exists: a random cycle (no clip keeps its own labels)
            order, shift = rng.permutation(B), 1
        else:
            order = np.concatenate([rng.permutation(groups[g]) for g in rng.permutation(len(groups))])
            shift = int(rng.integers(most, B - most + 1))
        perm = np.empty(B, np.int64)
        perm[order] = order[(np.arange(B) + shift) % B]
        out.append(perm)
    return out


def agreement(
    codes_BT: np.ndarray,
    labels_BT: np.ndarray,
    *,
    episode_B: np.ndarray | None = None,
    permutations: int = 1000,
    seed: int = 0,
) -> dict:
    """NMI and AMI of ``codes`` against ``labels`` with their permutation null: each clip's codes against the
    labels of a clip from another episode (``episode_B``; default: every clip its own episode).

    Returns ``{"nmi": {"value", "null_mean", "null_p95", "null_p99", "p_value"}, "ami": {...}, "transitions",
    "permutations"}``; the p-value counts null draws at least as large as the observed score (+1 smoothing).
    Observed scores are scikit-learn's (arithmetic normalisation). A permutation keeps both marginals, so the
    entropies and AMI's expected mutual information are the same for every draw: each draw costs one contingency
    table, and its AMI is (MI - EMI) / (mean entropy - EMI) with EMI taken from scikit-learn once.
    """
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    codes_BT, labels_BT = np.asarray(codes_BT), np.asarray(labels_BT)
    if codes_BT.shape != labels_BT.shape or codes_BT.ndim != 2:
        raise ValueError(f"codes {codes_BT.shape} and labels {labels_BT.shape} must both be [clips, transitions]")
    if len(codes_BT) < 2:
        raise ValueError("a permutation null needs at least 2 clips")
    _, c = np.unique(codes_BT, return_inverse=True)
    _, y = np.unique(labels_BT, return_inverse=True)
    c, y = c.reshape(codes_BT.shape), y.reshape(labels_BT.shape)
    rng = np.random.default_rng(seed)
    episode_B = np.arange(len(y)) if episode_B is None else np.asarray(episode_B)
    perms = cross_episode_permutations(episode_B, permutations, rng)
    observed = {
        "nmi": float(normalized_mutual_info_score(y.ravel(), c.ravel())),
        "ami": float(adjusted_mutual_info_score(y.ravel(), c.ravel())),
    }
    null = null_draws(c, y, perms)
    out: dict = {"transitions": int(codes_BT.size), "permutations": permutations}
    for name, draws in null.items():
        value = observed[name]
        out[name] = {
            "value": value,
            "null_mean": float(draws.mean()) if permutations else None,
            "null_p95": float(np.percentile(draws, 95)) if permutations else None,
            "null_p99": float(np.percentile(draws, 99)) if permutations else None,
            "p_value": float((1 + (draws >= value - 1e-12).sum()) / (1 + permutations)),
        }
    return out


def linear_probe(
    train_x_NF: np.ndarray, train_y_N: np.ndarray, test_x_NF: np.ndarray, test_y_N: np.ndarray, *, seed: int = 0
) -> dict:
    """Test accuracy of a logistic-regression probe fit on the train transitions, beside two chance levels:
    always answering the train split's most frequent label, and the same probe fit on shuffled train labels.
    Balanced accuracy (the mean of per-class recalls; chance 1 / classes) is reported too: with one class in the
    majority, as CoinRun's "none", accuracy alone rewards a probe that always answers it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y_N, test_y_N = np.asarray(train_y_N), np.asarray(test_y_N)
    if len(np.unique(train_y_N)) < 2:
        raise ValueError("the probe's train transitions hold a single label: nothing to classify")

    def fit(labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        pred = probe.fit(train_x_NF, labels).predict(test_x_NF)
        return float((pred == test_y_N).mean()), float(balanced_accuracy_score(test_y_N, pred))

    majority = np.bincount(train_y_N).argmax()
    (acc, bal), (sh_acc, sh_bal) = fit(train_y_N), fit(np.random.default_rng(seed).permutation(train_y_N))
    return {
        "accuracy": acc,
        "majority": float((test_y_N == majority).mean()),
        "shuffled": sh_acc,
        "balanced_accuracy": bal,
        "balanced_chance": 1 / len(np.unique(test_y_N)),
        "balanced_shuffled": sh_bal,
        "train_transitions": len(train_y_N),
        "test_transitions": len(test_y_N),
    }


def kmeans_codes(train_x_NF: np.ndarray, test_x_NF: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Codes by clustering: k-means (scikit-learn, on standardised features) fit on the train transitions' features;
    the test transitions' nearest cluster ids [N] (what a LAM with more capacity than keys, or a continuous one,
    would bind keys to)."""
    from sklearn.cluster import KMeans
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not 1 <= k <= len(train_x_NF):
        raise ValueError(f"k-means needs 1 <= k <= {len(train_x_NF)} train transitions, got k={k}")
    km = make_pipeline(StandardScaler(), KMeans(k, n_init=4, random_state=seed)).fit(train_x_NF)
    return km.predict(test_x_NF).astype(np.int64)
