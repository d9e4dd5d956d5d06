"""PSNR and SSIM of frames: what training's validation and ``jasmine eval`` both score.

Dimension key: B clips, T frames, H/W/C frame shape. Frames are float in [0, 1].
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
