"""Per-frame image metrics, bootstrap confidence intervals over episodes, and the rollout summary.

Dimension key: B clips (one per episode), T frames, H/W/C frame shape, R bootstrap resamples.
Frames are float in [0, 1].

Every interval is a percentile bootstrap over episodes: one set of R resamples of the B
clips (each from its own episode) serves every quantity, so the interval of a paired
difference (model − copy-last-frame, ΔtPSNR) comes from the same resamples as its parts.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

MIN_MSE = (1 / 255) ** 2 / 12  # uint8 quantisation noise: caps PSNR at 58.9 dB instead of inf


def frame_psnr_ssim(x_BTHWC, y_BTHWC):
    """Traceable per-frame PSNR (capped) and SSIM (dm-pix) of y against x: two [B, T] arrays."""
    B, T = x_BTHWC.shape[:2]
    x = x_BTHWC.reshape(B * T, *x_BTHWC.shape[2:])
    y = jnp.clip(y_BTHWC.reshape(B * T, *y_BTHWC.shape[2:]), 0.0, 1.0)
    mse = jnp.maximum(jnp.mean((x - y) ** 2, axis=(1, 2, 3)), MIN_MSE)
    return (-10.0 * jnp.log10(mse)).reshape(B, T), pix.ssim(x, y).reshape(B, T)


_psnr_ssim = jax.jit(frame_psnr_ssim)


def psnr_ssim(x_BTHWC, y_BTHWC) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, capped at 58.9 for identical frames) and SSIM (dm-pix) of every frame of y against x: [B, T]."""
    p, s = _psnr_ssim(jnp.asarray(x_BTHWC, jnp.float32), jnp.asarray(y_BTHWC, jnp.float32))
    return np.asarray(p, np.float64), np.asarray(s, np.float64)


def resamples(n: int, *, rounds: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap indices [R, n]: each row draws n of the n episodes with replacement."""
    return np.random.default_rng(seed).integers(0, n, (rounds, n))


def bootstrap(values_B, idx_RB: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray | float]:
    """Mean over episodes (axis 0) and its percentile interval under the resamples ``idx_RB``."""
    values_B = np.asarray(values_B, np.float64)
    means_R = values_B[idx_RB].mean(axis=1)
    lo, hi = np.percentile(means_R, [50 * (1 - level), 50 * (1 + level)], axis=0)
    out = {"mean": values_B.mean(axis=0), "lo": lo, "hi": hi}
    return {k: (float(v) if np.ndim(v) == 0 else v.tolist()) for k, v in out.items()}


def summarise_rollouts(psnr: dict[str, np.ndarray], ssim: dict[str, np.ndarray], *, context: int, delta_t: int,
                       seed: int = 0) -> dict:
    """The numbers ``jasmine eval`` reports, from per-clip, per-frame scores ([B, T] per video source).

    Sources: ``model`` (inferred actions), ``random_actions``, ``tokenizer`` and ``copy_last``.
    Returns per-frame curves and means over the generated frames with bootstrap intervals,
    the paired difference model − copy_last, and ΔtPSNR = PSNR(x_t, model) − PSNR(x_t, random).
    """
    B = next(iter(psnr.values())).shape[0]
    idx = resamples(B, seed=seed)
    res: dict = {"per_frame": {}, "mean_generated": {}}
    for name in psnr:
        scores = {"psnr": psnr[name], "ssim": ssim[name]}
        res["per_frame"][name] = {m: bootstrap(v, idx) for m, v in scores.items()}
        res["mean_generated"][name] = {m: bootstrap(v[:, context:].mean(axis=1), idx) for m, v in scores.items()}
    gen = lambda name, m: (psnr if m == "psnr" else ssim)[name][:, context:].mean(axis=1)
    res["model_minus_copy_last"] = {m: bootstrap(gen("model", m) - gen("copy_last", m), idx) for m in ("psnr", "ssim")}
    res[f"delta_psnr_t{delta_t}"] = bootstrap(psnr["model"][:, delta_t] - psnr["random_actions"][:, delta_t], idx)
    return res


def code_usage(ids, vocab: int) -> dict[str, float]:
    """How many of the ``vocab`` codes the token ids use, and their perplexity (effective number of codes)."""
    counts = np.bincount(np.asarray(ids).reshape(-1), minlength=vocab)
    p = counts[counts > 0] / counts.sum()
    return {"codes_used": int((counts > 0).sum()), "vocab": int(vocab), "usage": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum()))}
