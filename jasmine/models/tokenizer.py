"""Video tokenizer: an ST-ViViT VQ-VAE over spatio-temporal patches.

Dimension key:
    B batch   T frames   H/W/C frame height/width/channels   P patch size
    N patches per frame (H/P * W/P)   I patch width (P*P*C)   L latent width   C codebook size
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.linear import Precision
from jasmine.models.nn import Attention, AxialTransformer, Remat
from jasmine.models.quantize import make_quantizer


@dataclass(frozen=True)
class VideoAutoencoderConfig:
    """The architecture fields every video autoencoder shares (VQ/FSQ tokenizer, LAM, MAE), defined once."""

    patch_size: int = 16
    model_dim: int = 512
    ffn_dim: int = 2048
    num_blocks: int = 4
    num_heads: int = 8
    latent_dim: int = 32
    """Latent width L: the VQ code width (FSQ: len(fsq_levels) instead), or the MAE's tanh-bounded latent per patch."""


@dataclass(frozen=True)
class TokenizerConfig(VideoAutoencoderConfig):
    """Architecture of the VQ-VAE video tokenizer (and, with other defaults, of the LAM)."""

    num_latents: int = 1024
    """VQ codebook size (FSQ: the vocabulary is prod(fsq_levels))."""
    quantizer: Literal["vq", "fsq"] = "vq"
    """vq: learned cosine-similarity codebook; fsq: finite scalar quantization (a fixed grid; no collapse)."""
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels per latent channel."""
    codebook_dropout: float = 0.01
    commitment_weight: float = 0.25
    """β of the commitment loss."""
    dead_code_reset_steps: int = 0
    """Re-initialise codes unused for this many steps (0 = off; VQ only)."""

    @property
    def code_dim(self) -> int:
        """Width of the quantized latents."""
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.latent_dim

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.num_latents


def patchify(x_BTHWC, p: int):
    return einops.rearrange(x_BTHWC, "b t (h p) (w q) c -> b t (h w) (p q c)", p=p, q=p)


def unpatchify(x_BTNI, p: int, h: int, w: int):
    return einops.rearrange(x_BTNI, "b t (h w) (p q c) -> b t (h p) (w q) c", h=h // p, w=w // p, p=p, q=p)


def check_patch_size(image_shape: tuple[int, int, int], p: int, flag: str = "--model.patch-size") -> None:
    h, w, _ = image_shape
    if p <= 0 or h % p or w % p:
        raise ValueError(f"{flag} {p} does not divide the {h}x{w} frames; pick a divisor of both")


class FrameDecoding:
    """Decoding tokens to frames, for a frame autoencoder with a ``decoder`` (an :class:`AxialTransformer`, causal
    in time), ``cfg.patch_size`` and ``image_shape``; ``_decoder_inputs`` maps tokens (ids or latents) to its input.

    ``decode`` runs a whole chunk; ``decode_start`` and ``decode_next`` run one a frame at a time with the
    decoder's temporal K/V cached, each frame at one frame's cost (a chunk's frame t decoded whole costs t + 1
    frames: at the ``coinrun`` preset's 16-frame chunks, most of a play frame), giving what the whole chunk gives.
    """

    def _pixels(self, out_BTNI):
        h, w, _ = self.image_shape
        return unpatchify(jax.nn.sigmoid(out_BTNI.astype(jnp.float32)), self.cfg.patch_size, h, w)

    def decode(self, x_BTN):
        """Frames float32 [B, T, H, W, C] in [0, 1]."""
        return self._pixels(self.decoder(self._decoder_inputs(x_BTN)))

    def decode_start(self, x_BTN, window: int):
        """The first T frames of a chunk of ``window`` frames, and the decoder's K/V caches holding them."""
        out_BTNI, caches = self.decoder.prefill(self._decoder_inputs(x_BTN), window)
        return self._pixels(out_BTNI), caches

    def decode_next(self, x_B1N, caches, t):
        """Frame ``t`` of the chunk [B, 1, H, W, C] from the caches of its frames before t; the caches with it."""
        out_B1NI, kvs = self.decoder.step(self._decoder_inputs(x_B1N), caches, t)
        return self._pixels(out_B1NI), self.decoder.write_cache(caches, kvs, t)


class Tokenizer(FrameDecoding, nnx.Module):
    """frames in [0,1] → patches → encoder (causal in time) → VQ → decoder → sigmoid → frames."""

    def __init__(
        self,
        cfg: TokenizerConfig,
        image_shape: tuple[int, int, int],
        *,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        rngs: nnx.Rngs,
    ):
        check_patch_size(image_shape, cfg.patch_size)
        self.cfg, self.image_shape = cfg, tuple(image_shape)
        patch_dim = cfg.patch_size**2 * image_shape[2]
        kw = dict(prec=prec, attention=attention, remat=remat, rngs=rngs)
        self.encoder = AxialTransformer(
            patch_dim, cfg.model_dim, cfg.ffn_dim, cfg.code_dim, cfg.num_blocks, cfg.num_heads, **kw
        )
        self.vq = make_quantizer(cfg, param_dtype=prec.param_dtype, rngs=rngs)
        self.decoder = AxialTransformer(
            cfg.code_dim, cfg.model_dim, cfg.ffn_dim, patch_dim, cfg.num_blocks, cfg.num_heads, **kw
        )

    def __call__(self, videos_BTHWC, *, rng=None):
        """Reconstruct; returns (recon_BTHWC float32 in [0,1], ids_BTN, VQ aux)."""
        z_BTNL = self.encoder(patchify(videos_BTHWC, self.cfg.patch_size))
        zq_BTNL, ids_BTN, aux = self.vq(z_BTNL, rng=rng)
        return self._pixels(self.decoder(zq_BTNL)), ids_BTN, aux

    def _decoder_inputs(self, ids_BTN):
        return self.vq.lookup(ids_BTN)

    def encode(self, videos_BTHWC):
        """Token ids int32 [B, T, N]."""
        _, ids_BTN, _ = self.vq(self.encoder(patchify(videos_BTHWC, self.cfg.patch_size)))
        return ids_BTN.astype(jnp.int32)
