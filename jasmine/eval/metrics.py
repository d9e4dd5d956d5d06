"""Per-frame image metrics, bootstrap confidence intervals over episodes, and the rollout summary.

Dimension key: B clips (one per episode), T frames, H/W/C frame shape, R bootstrap resamples.
Frames are float in [0, 1].

Every interval is a percentile bootstrap over episodes: one set of R resamples of the B
clips (each from its own episode) serves every quantity, so the interval of a paired
difference (model − copy-last-frame, ΔtPSNR) comes from the same resamples as its parts.
"""

from __future__ import annotations

import numpy as np

from jasmine.models.fidelity import frame_psnr_ssim, psnr_ssim

__all__ = ["frame_psnr_ssim", "psnr_ssim", "resamples", "bootstrap", "summarise_rollouts", "code_usage"]


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


def summarise_rollouts(
    psnr: dict[str, np.ndarray], ssim: dict[str, np.ndarray], *, context: int, delta_t: int, seed: int = 0
) -> dict:
    """The numbers ``jasmine eval`` reports, from per-clip, per-frame scores ([B, T] per video source).

    Sources: ``model`` (inferred actions), ``random_actions``, optionally ``swapped_action``, ``tokenizer`` and
    ``copy_last`` (and ``copy_last_tokens``). Returns per-frame curves and means over the generated frames with
    bootstrap intervals, the paired differences model − copy_last (and − copy_last_tokens),
    ΔtPSNR = PSNR(x_t, model) − PSNR(x_t, random) and, with ``swapped_action``, its GenieRedux variant
    PSNR(x_t, model) − PSNR(x_t, swapped).
    """
    B = next(iter(psnr.values())).shape[0]
    idx = resamples(B, seed=seed)
    res: dict = {"per_frame": {}, "mean_generated": {}}
    for name in psnr:
        scores = {"psnr": psnr[name], "ssim": ssim[name]}
        res["per_frame"][name] = {m: bootstrap(v, idx) for m, v in scores.items()}
        res["mean_generated"][name] = {m: bootstrap(v[:, context:].mean(axis=1), idx) for m, v in scores.items()}

    def gen(name, m):
        return (psnr if m == "psnr" else ssim)[name][:, context:].mean(axis=1)

    res["model_minus_copy_last"] = {m: bootstrap(gen("model", m) - gen("copy_last", m), idx) for m in ("psnr", "ssim")}
    if "copy_last_tokens" in psnr:  # the dynamics against copying, both through the tokenizer
        res["model_minus_copy_last_tokens"] = {
            m: bootstrap(gen("model", m) - gen("copy_last_tokens", m), idx) for m in ("psnr", "ssim")
        }
    res[f"delta_psnr_t{delta_t}"] = bootstrap(psnr["model"][:, delta_t] - psnr["random_actions"][:, delta_t], idx)
    if "key_mapped" in psnr:  # play's key bindings driven by the real actions, paired against random codes
        res["key_mapped_minus_random"] = {
            m: bootstrap(gen("key_mapped", m) - gen("random_actions", m), idx) for m in ("psnr", "ssim")
        }
    if "swapped_action" in psnr:  # GenieRedux's variant: only the action into frame t differs
        res[f"delta_psnr_t{delta_t}_swap"] = bootstrap(
            psnr["model"][:, delta_t] - psnr["swapped_action"][:, delta_t], idx
        )
    return res


def code_usage(ids, vocab: int) -> dict[str, float]:
    """How many of the ``vocab`` codes the token ids use, and their perplexity (effective number of codes)."""
    counts = np.bincount(np.asarray(ids).reshape(-1), minlength=vocab)
    p = counts[counts > 0] / counts.sum()
    return {
        "codes_used": int((counts > 0).sum()),
        "vocab": int(vocab),
        "usage": float((counts > 0).mean()),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
    }
