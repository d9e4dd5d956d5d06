"""Does a LAM's decoder use its latent action? Next-frame error with its own codes against other episodes' codes.

Dimension key: B clips, T frames, K LAM windows per clip, L window length, H/W/C frame shape.

A LAM whose decoder ignores its code (posterior collapse) predicts frame t as well from any code; its codes then
carry nothing the dynamics can be steered by, whatever they share with the real actions by chance. ``code_use``
decodes every held-out transition twice: with the code its encoder gave it, and with the code at the same
position of a clip from another episode (a cross-episode pairing, as the permutation null of the agreement
scores). It reports both next-frame PSNRs beside copying frame t-1, and their paired difference with a 95%
bootstrap interval over episodes: an interval that holds 0 says the decoder does not use its codes.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasmine.eval.agreement import cross_episode_permutations
from jasmine.eval.metrics import bootstrap, resamples
from jasmine.models.genie import lam_windows


@partial(jax.jit, static_argnums=(0, 1))
def _next_frame_mse(graphdef, window: int, state, frames_BTHWC, codes_BT1):
    """Per-transition MSE [B, T-1] of the decoder given ``codes_BT1``, and of copying frame t-1."""
    model = nnx.merge(graphdef, state)
    x = frames_BTHWC.astype(jnp.float32) / 255.0
    B, T = x.shape[:2]
    x_KL = lam_windows(x, window)
    z_KL1 = model.action_latents(codes_BT1.reshape(x_KL.shape[0], window - 1))
    pred_KL1 = model.decode(x_KL, z_KL1).astype(jnp.float32)
    target_KL1 = x_KL[:, 1:]
    mse = jnp.mean((pred_KL1 - target_KL1) ** 2, axis=(2, 3, 4)).reshape(B, T - 1)
    copy = jnp.mean((x_KL[:, :-1] - target_KL1) ** 2, axis=(2, 3, 4)).reshape(B, T - 1)
    return mse, copy


def next_frame_errors(lam, window: int, frames_BTHWC: np.ndarray, codes_BT1: np.ndarray, batch: int = 16):
    """(decoder MSE, copy-last MSE), each [B, T-1], for clips whose LAM windows tile them exactly."""
    if (frames_BTHWC.shape[1] - 1) % (window - 1):
        raise ValueError(f"clips of {frames_BTHWC.shape[1]} frames do not tile into LAM windows of {window}")
    graphdef, state = nnx.split(lam)
    parts = []
    for i in range(0, len(frames_BTHWC), batch):
        f, c = frames_BTHWC[i : i + batch], codes_BT1[i : i + batch]
        pad = batch - len(f)  # one compiled program: the last batch is padded
        f = np.concatenate([f, np.zeros((pad, *f.shape[1:]), f.dtype)])
        c = np.concatenate([c, np.zeros((pad, *c.shape[1:]), c.dtype)])
        mse, copy = jax.device_get(_next_frame_mse(graphdef, window, state, f, c.astype(np.int32)))
        parts.append((mse[: batch - pad], copy[: batch - pad]))
    return np.concatenate([m for m, _ in parts]), np.concatenate([c for _, c in parts])


def _psnr(mse):
    return -10.0 * np.log10(np.maximum(mse, 1e-10))


def code_use(lam, window: int, frames_BTHWC, codes_BT1, episode_B, *, seed: int = 0) -> dict:
    """Next-frame PSNR of the LAM's decoder with its own codes, with other episodes' codes and of copying frame
    t-1 (means over episodes of per-transition PSNR, with 95% intervals), and own − others paired."""
    episode_B = np.asarray(episode_B)
    if len(np.unique(episode_B)) < 2:
        raise ValueError("the code-use control needs clips from at least two episodes")
    perm = cross_episode_permutations(episode_B, 1, np.random.default_rng(seed))[0]
    own, copy = next_frame_errors(lam, window, frames_BTHWC, codes_BT1)
    other, _ = next_frame_errors(lam, window, frames_BTHWC, codes_BT1[perm])
    episodes, inverse = np.unique(episode_B, return_inverse=True)

    def per_episode(mse_BT1):  # per-transition PSNR, averaged per clip, then per episode
        clip = _psnr(mse_BT1).mean(axis=1)
        return np.bincount(inverse, clip) / np.bincount(inverse)

    scores = {"own_codes": per_episode(own), "other_codes": per_episode(other), "copy_last": per_episode(copy)}
    idx = resamples(len(episodes), seed=seed)
    res = {name: bootstrap(v, idx) for name, v in scores.items()}
    res["own_minus_other"] = bootstrap(scores["own_codes"] - scores["other_codes"], idx)
    res["episodes"] = len(episodes)
    return res


def code_use_line(res: dict) -> str:
    """The figure in words, with a verdict when the interval holds 0."""
    d = res["own_minus_other"]
    gain = res["own_codes"]["mean"] - res["copy_last"]["mean"]
    share = f" ({d['mean'] / gain:.1%} of its gain over copying)" if gain > 0 else ""
    verdict = "" if d["lo"] > 0 else ": the decoder does not use its codes (posterior collapse)"
    return (
        f"  next-frame PSNR of the LAM's decoder: its codes {res['own_codes']['mean']:.2f} dB, other episodes' "
        f"codes {res['other_codes']['mean']:.2f}, copying frame t-1 {res['copy_last']['mean']:.2f}; "
        f"its − others' {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] dB{share}{verdict}"
    )
