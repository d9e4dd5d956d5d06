"""Steering as a player feels it: which code a key sends, and whether the world moves the way the key says.

Dimension key: B clips, T frames, H/W/C frame shape, K codes, A real actions.

* **Bindings** (one function for ``jasmine play`` and ``jasmine eval``): a key names real actions
  (``KEY_TARGETS``); a real action goes to the code with the largest P(action | code) · P(code | action) in a
  code × action count matrix (:func:`best_code`). *Key-mapped rollouts* drive the model with the code bound to
  each real action of a held-out clip (:func:`action_codes`).
* **Direction**: the global shift between two frames by phase correlation (:func:`global_shift`, sub-pixel,
  Hann-windowed, so the centre of the view, where CoinRun's camera keeps the agent, weighs most). Which way each
  key moves the real game's view is measured on real transitions with the same estimator, over as many frames as
  the rollout holds the key (:func:`real_directions`), never assumed; a rollout holding the key is correct when
  its view shifts that way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jasmine.data.dataset import DataError
from jasmine.data.loader import episode_windows
from jasmine.eval.actions import measure
from jasmine.sample.clips import num_action_codes

KEY_TARGETS: dict[str, tuple[str, ...]] = {
    "ArrowLeft": ("LEFT",),
    "ArrowRight": ("RIGHT",),
    "ArrowUp": ("UP",),
    "ArrowDown": ("DOWN",),
    " ": ("FIRE", "UP"),  # jump: FIRE where the game has it, else UP (CoinRun jumps with UP)
}
"""Keys bound through the action mapping, each to the first of its real actions the data has."""

DIRECTION_KEYS = {"ArrowLeft": "x", "ArrowRight": "x", "ArrowUp": "y"}
"""Keys whose effect is a direction of motion, and the axis it shows on."""


def best_code(counts_KA: np.ndarray, action: int) -> int | None:
    """The code that best matches a real action: the largest P(action | code) * P(code | action).

    The product favours a code that is both specific to the action and the one the LAM gives it most often;
    None when the action never occurs.
    """
    col = counts_KA[:, action].astype(np.float64)
    if col.sum() == 0:
        return None
    score = (col / np.maximum(counts_KA.sum(1), 1)) * (col / col.sum())
    return int(np.argmax(score))


def key_actions(meanings: list[str] | None) -> dict[str, int]:
    """Each bindable key's real action id (the first of its ``KEY_TARGETS`` the dataset's actions name)."""
    names = meanings or []
    out = {}
    for key, targets in KEY_TARGETS.items():
        action = next((names.index(t) for t in targets if t in names), None)
        if action is not None:
            out[key] = action
    return out


def bind_keys(
    meanings: list[str] | None, num_codes: int, *, counts_KA: np.ndarray | None = None, gt_actions: bool = False
) -> dict[str, int]:
    """Arrow keys and Space to codes: the real action itself (``gt_actions``) or its :func:`best_code`."""
    keys = {}
    for key, action in key_actions(meanings).items():
        code = action if gt_actions else (best_code(counts_KA, action) if counts_KA is not None else None)
        if code is not None and code < num_codes:
            keys[key] = code
    return keys


def action_codes(counts_KA: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """[A] the code bound to each real action (:func:`best_code`); an action never seen gets a random code."""
    rng = rng or np.random.default_rng(0)
    codes = [best_code(counts_KA, a) for a in range(counts_KA.shape[1])]
    return np.array([c if c is not None else int(rng.integers(counts_KA.shape[0])) for c in codes], np.int32)


def _gray(frame_HWC: np.ndarray) -> np.ndarray:
    x = np.asarray(frame_HWC, np.float64)
    x = x.mean(-1) if x.ndim == 3 else x
    return (x - x.mean()) * np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1]))


def _subpixel(c_L: np.ndarray, i: int) -> float:
    """Peak ``i`` of a circular correlation refined by a parabola through it and its neighbours."""
    left, mid, right = c_L[i - 1], c_L[i], c_L[(i + 1) % len(c_L)]
    denom = left - 2 * mid + right
    return i + (0.5 * (left - right) / denom if denom < 0 else 0.0)


def global_shift(a_HWC: np.ndarray, b_HWC: np.ndarray) -> tuple[float, float]:
    """(dy, dx) such that ``b`` ≈ ``a`` moved down by dy and right by dx (phase correlation, sub-pixel).

    A scene that scrolls left (dx < 0) is a camera moving right.
    """
    fa, fb = np.fft.fft2(_gray(a_HWC)), np.fft.fft2(_gray(b_HWC))
    cross = fb * np.conj(fa)
    corr = np.real(np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-9)))
    y, x = np.unravel_index(np.argmax(corr), corr.shape)
    H, W = corr.shape
    dy, dx = _subpixel(corr[:, x], y), _subpixel(corr[y], x)
    return (dy - H if dy > H / 2 else dy), (dx - W if dx > W / 2 else dx)


def video_shift(video_THWC: np.ndarray) -> np.ndarray:
    """[2] total (dy, dx) of a video: the sum of its consecutive frames' shifts."""
    return np.sum([global_shift(a, b) for a, b in zip(video_THWC[:-1], video_THWC[1:], strict=True)], axis=0)


def real_directions(
    frames_BTHWC: np.ndarray, actions_BT: np.ndarray, meanings: list[str] | None, horizon: int = 1
) -> dict[str, dict]:
    """Which way holding each direction key for ``horizon`` frames moves the real game's view, on its axis.

    Under the data's policy, e(m) is the mean shift m frames after a transition taking the key's action minus
    after all others; a key held for h frames shifts the view by sum_{m<h} (h - m) e(m) (frame k carries the
    effects of the presses 0..k before it). ``shift`` is that sum, ``se`` its standard error (the lags' combined
    as if independent), ``sign`` +1 down/right, -1 up/left, 0 when |shift| < 2 se; ``lags`` lists e(m). The
    first frame alone can point the other way: in CoinRun the agent moves against the view in the frame its key
    leads into, and the camera follows it from the next frame on. The sum assumes later actions independent of
    this one (a fresh random action each step); where the data holds keys, e(m) already contains the repeats and
    the sum overstates the size, not the way. ``horizon`` is capped at the clips' length.
    """
    shifts = np.array(
        [[global_shift(a, b) for a, b in zip(clip[:-1], clip[1:], strict=True)] for clip in frames_BTHWC]
    )  # [B, T-1, 2]
    h = max(1, min(horizon, shifts.shape[1]))
    out = {}
    for key, action in key_actions(meanings).items():
        if key not in DIRECTION_KEYS:
            continue
        axis = 0 if DIRECTION_KEYS[key] == "y" else 1
        lags, variances = [], []
        for m in range(h):  # shift of transition t + m against the action of transition t
            after_BT, acts_BT = shifts[:, m:, axis], actions_BT[:, : shifts.shape[1] - m]
            on, off = after_BT[acts_BT == action], after_BT[acts_BT != action]
            if len(on) < 2 or len(off) < 2:
                break
            lags.append(float(on.mean() - off.mean()))
            variances.append(on.var(ddof=1) / len(on) + off.var(ddof=1) / len(off))
        if len(lags) < h:
            continue
        weights = h - np.arange(h)
        diff = float(weights @ np.asarray(lags))
        se = float(np.sqrt(weights**2 @ np.asarray(variances)))
        out[key] = {
            "axis": DIRECTION_KEYS[key],
            "shift": diff,
            "se": se,
            "sign": int(np.sign(diff)) if abs(diff) > 2 * se else 0,
            "horizon": h,
            "lags": lags,
        }
    return out


def moved(shift_B2: np.ndarray, axis: str, sign: int, min_shift: float) -> np.ndarray:
    """[B] whether each rollout's total shift goes ``sign``-wards on ``axis`` by at least ``min_shift`` pixels."""
    v = np.asarray(shift_B2)[:, 0 if axis == "y" else 1]
    return sign * v >= min_shift


def direction_scores(
    key_shifts: dict[str, np.ndarray],
    random_shift_B2: np.ndarray,
    expected: dict[str, dict],
    bound: dict[str, int],
    *,
    min_shift: float = 1.0,
) -> dict[str, dict]:
    """Per direction key: the fraction of held-out starts where holding the key moved the scene the way the real
    game moves for it (by at least ``min_shift`` px over the rollout), beside the same fraction for rollouts with
    random codes from the same starts (chance)."""
    out = {}
    for key, shifts in key_shifts.items():
        e = expected[key]
        out[key] = {
            "code": bound[key],
            "axis": e["axis"],
            "real_sign": e["sign"],
            "correct": float(moved(shifts, e["axis"], e["sign"], min_shift).mean()),
            "chance": float(moved(random_shift_B2, e["axis"], e["sign"], min_shift).mean()),
            "mean_shift": float(np.asarray(shifts)[:, 0 if e["axis"] == "y" else 1].mean()),
            "starts": len(shifts),
        }
    return out


def real_directions_of(
    data: Path, meanings: list[str] | None, transitions: int, seed: int, horizon: int = 1
) -> dict[str, dict]:
    """:func:`real_directions` on ``transitions`` transitions of the train split (none without one, or actions)."""
    try:
        clips = episode_windows(data, "train", 16, transitions, seed)
    except DataError:
        return {}
    return real_directions(clips["frames"], clips["actions"], meanings, horizon) if "actions" in clips else {}


def swap_action(actions_BT: np.ndarray, t: int, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``actions`` with entry t-1 (the action into frame t) replaced by another code in use, drawn by its share;
    None when fewer than two codes are in use."""
    if (shares > 0).sum() < 2:
        return None
    out = actions_BT.copy()
    for b, a in enumerate(actions_BT[:, t - 1]):
        p = shares.copy()
        p[a] = 0
        out[b, t - 1] = rng.choice(len(p), p=p / p.sum())
    return out


def action_shares(
    genie, data: Path, split: str, transitions: int, permutations: int, seed: int
) -> tuple[np.ndarray, dict | None]:
    """What the dynamics trained on (each code's or real action's share of the train split's transitions) and,
    with a LAM, the latent-action figures of ``jasmine actions`` on ``split``."""
    if genie.lam is not None:
        m = measure(
            genie.lam,
            genie.lam_window,
            data,
            split=split,
            transitions=transitions,
            permutations=permutations,
            seed=seed,
        )
        return np.asarray(m["train_code_share"]), m
    n = num_action_codes(genie)
    try:
        acts = episode_windows(data, "train", 16, transitions, seed)["actions"][:, :-1]
    except (DataError, KeyError):  # no train split with actions here: every action equally
        return np.full(n, 1 / n), None
    return np.bincount(acts.ravel(), minlength=n)[:n] / acts.size, None
