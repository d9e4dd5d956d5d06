"""MAE video tokenizer: continuous latents for the diffusion baseline.

Dimension key:
    B batch   T frames   H/W/C frame height/width/channels   P patch size
    N patches per frame (H/P * W/P)   I patch width (P*P*C)   L latent width

Training masks each frame's patches with its own ratio r ~ U[0, max_mask] (each patch
independently with probability r) and replaces them with a learned mask patch; the
encoder (axial, causal in time) maps patches to latents through a ``tanh`` bottleneck, so
latents lie in (-1, 1); the decoder reconstructs every patch of the full frame; the loss
is the MSE over all pixels. ``encode`` never masks. The API matches the VQ tokenizer's
(``encode`` frames → latents, ``decode`` latents → frames) with latents [B, T, N, L] in
place of ids [B, T, N].
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.linear import Precision
from jasmine.models.nn import Attention, AxialTransformer, Remat
from jasmine.models.tokenizer import FrameDecoding, VideoAutoencoderConfig, check_patch_size, patchify


@dataclass(frozen=True)
class MAEConfig(VideoAutoencoderConfig):
    """Architecture of the MAE tokenizer."""

    max_mask: float = 0.9
    """Each frame masks its patches with a ratio drawn from U[0, max_mask]."""


def mae_mask(rng, shape_BTN, max_mask: float):
    """Per-frame ratio r ~ U[0, max_mask], per-patch Bernoulli(r): bool [B, T, N] (True = masked)."""
    k_r, k_m = jax.random.split(rng)
    r_BT = jax.random.uniform(k_r, shape_BTN[:2], minval=0.0, maxval=max_mask)
    return jax.random.uniform(k_m, shape_BTN) < r_BT[..., None]


class MAETokenizer(FrameDecoding, nnx.Module):
    """frames in [0,1] → patches (some replaced by the mask patch) → encoder → tanh → decoder → frames."""

    def __init__(
        self,
        cfg: MAEConfig,
        image_shape: tuple[int, int, int],
        *,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        rngs: nnx.Rngs,
    ):
        check_patch_size(image_shape, cfg.patch_size)
        if not 0.0 <= cfg.max_mask < 1.0:
            raise ValueError(f"--model.max-mask must be in [0, 1), got {cfg.max_mask}")
        self.cfg, self.image_shape = cfg, tuple(image_shape)
        patch_dim = cfg.patch_size**2 * image_shape[2]
        kw = dict(prec=prec, attention=attention, remat=remat, rngs=rngs)
        self.encoder = AxialTransformer(
            patch_dim, cfg.model_dim, cfg.ffn_dim, cfg.latent_dim, cfg.num_blocks, cfg.num_heads, **kw
        )
        self.mask_patch = nnx.Param(0.02 * jax.random.normal(rngs.params(), (patch_dim,), prec.param_dtype))
        self.decoder = AxialTransformer(
            cfg.latent_dim, cfg.model_dim, cfg.ffn_dim, patch_dim, cfg.num_blocks, cfg.num_heads, **kw
        )

    def __call__(self, videos_BTHWC, *, rng=None):
        """Reconstruct; with ``rng``, mask first. Returns (recon_BTHWC in [0,1], latents_BTNL, mask_BTN)."""
        x_BTNI = patchify(videos_BTHWC, self.cfg.patch_size)
        if rng is None:
            mask_BTN = jnp.zeros(x_BTNI.shape[:3], bool)
        else:
            mask_BTN = mae_mask(rng, x_BTNI.shape[:3], self.cfg.max_mask)
            x_BTNI = jnp.where(mask_BTN[..., None], self.mask_patch[...].astype(x_BTNI.dtype), x_BTNI)
        z_BTNL = jnp.tanh(self.encoder(x_BTNI).astype(jnp.float32))
        return self.decode(z_BTNL), z_BTNL, mask_BTN

    def encode(self, videos_BTHWC):
        """Latents float32 [B, T, N, L] in (-1, 1) of unmasked frames in [0, 1]."""
        return jnp.tanh(self.encoder(patchify(videos_BTHWC, self.cfg.patch_size)).astype(jnp.float32))

    def _decoder_inputs(self, z_BTNL):
        return z_BTNL
