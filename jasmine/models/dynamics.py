"""MaskGIT dynamics: predicts masked tokens of each frame from past frames and actions.

Dimension key:
    B batch   T frames   N tokens per frame   D model width   V vocabulary (tokenizer codes)
    A action-latent width   W logit width (sum of the token's digit radices, see ``Digits``)

Tokens are embedded as the sum of one embedding per digit and predicted as one softmax
per digit (``jasmine.models.maskgit.Digits``); a VQ tokenizer's token is a single digit,
so this is the usual embedding table and softmax over the vocabulary.

Frame t is conditioned on the action a_t between frames t-1 and t (zeros for t = 0). By
default a_t enters as one extra token prepended to frame t's N tokens (``action_mode=
"prepend"``); the ablation ``"add"`` adds it to every token instead. Attention is causal in
time, so frame t sees frames <= t and actions <= t only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.digits import Digits, SamplingOptions, TokenFamily
from jasmine.models.linear import Precision, linear_layers
from jasmine.models.maskgit import generate_frame, unmask_frame
from jasmine.models.nn import Attention, AxialTransformer, Remat, TimePositions


@dataclass(frozen=True)
class DynamicsConfig:
    """Architecture and training masks of the MaskGIT dynamics model."""

    model_dim: int = 512
    ffn_dim: int = 2048
    num_blocks: int = 6
    num_heads: int = 8
    mask_limit: float = 0.5
    """With ``mask_schedule`` uniform: each sample masks tokens with probability p ~ U[mask_limit, 1)."""
    mask_schedule: Literal["uniform", "cosine"] = "uniform"
    """uniform: p ~ U[mask_limit, 1) (the reference's); cosine: p = cos(pi/2 * u), u ~ U[0, 1), MaskGIT's
    schedule over (0, 1], which covers the nearly unmasked frames the sampler's last passes see."""
    clean_frames: float = 0.0
    """Training only: each frame t >= 1 is left unmasked with this probability, so frames also learn from
    clean past frames, as in sampling (0 = mask every frame t >= 1, as the reference does)."""
    context_noise: float = 0.0
    """Training only: each sample replaces a share r ~ U[0, context_noise) of its unmasked (context) tokens
    with random tokens, so the model learns to predict past its own sampling errors (exposure bias)."""
    action_mode: Literal["prepend", "add"] = "prepend"
    """prepend: the action is an extra token per frame; add: it is added to every token."""
    z_loss_weight: float = 0.0
    noise_levels: int = 64
    """Diffusion only: training draws each frame's signal level from {0, 1/S, ..., 1} (S = noise_levels)."""
    ramp_weight: bool = True
    """Diffusion only: weight each frame's loss by 0.9 * level + 0.1."""
    time_positions: TimePositions = "absolute"
    """absolute: sinusoids of the window position added to the input (the reference's), so a rollout past
    seq_len re-prefills its window for every frame; rope: rotary positions in the temporal attention plus a
    code of the tokenizer's chunk phase, so a rollout slides a ring of cached frames (an attention band of
    seq_len frames) at the cost of one frame."""
    latent_norm: bool = False
    """Diffusion only: normalise each MAE latent channel to zero mean and unit variance before the noise path
    (tanh latents are far narrower than the unit noise), with a running mean and variance of the clean
    latents kept through training (bias-corrected EMA, momentum 0.99) and stored in the run."""
    latent_std_floor: float = 0.0
    """Diffusion, with ``latent_norm``: each channel's std is at least this fraction of the median channel's, so a
    (nearly) constant channel is not amplified into noise (0 = no floor)."""


MASKGIT_ONLY = (
    ("--model.mask-limit", "mask_limit"),
    ("--model.mask-schedule", "mask_schedule"),
    ("--model.clean-frames", "clean_frames"),
    ("--model.context-noise", "context_noise"),
    ("--model.action-mode", "action_mode"),
)
"""DynamicsConfig fields only MaskGIT uses (flag, field): other families refuse non-default values."""


def refuse_options(cfg: DynamicsConfig, options, why: str) -> None:
    """Raise naming every (flag, field) of ``options`` that ``cfg`` sets away from its default."""
    given = [flag for flag, f in options if getattr(cfg, f) != getattr(DynamicsConfig(), f)]
    if given:
        raise ValueError(f"{', '.join(given)}: MaskGIT-only option(s); {why}")


VALIDATION_MASK = (0.5, 0.0, "uniform")
"""Validation's masks (mask_limit, clean_frames, mask_schedule): every frame t >= 1 at p ~ U[0.5, 1), the
reference's training masks, whatever the run's own."""


def sample_mask(rng, shape_BTN, mask_limit: float, clean_frames: float = 0.0, schedule: str = "uniform"):
    """Per-sample p (``DynamicsConfig.mask_schedule``), per-token Bernoulli(p); frame 0 never masked, and each
    later frame left clean with probability ``clean_frames``."""
    k_p, k_m, k_c = jax.random.split(rng, 3)
    if schedule == "cosine":
        p_B = jnp.cos(0.5 * jnp.pi * jax.random.uniform(k_p, shape_BTN[:1]))
    else:
        p_B = jax.random.uniform(k_p, shape_BTN[:1], minval=mask_limit, maxval=1.0)
    mask_BTN = jax.random.uniform(k_m, shape_BTN) < p_B[:, None, None]
    clean_BT = jax.random.uniform(k_c, shape_BTN[:2]) < clean_frames
    return (mask_BTN & ~clean_BT[..., None]).at[:, 0].set(False)


def corrupt_context(rng, ids_BTN, mask_BTN, rate: float, vocab: int):
    """Replace a per-sample share r ~ U[0, rate) of the unmasked tokens with uniformly random ones."""
    if rate <= 0:
        return ids_BTN
    k_r, k_pos, k_id = jax.random.split(rng, 3)
    r_B = jax.random.uniform(k_r, ids_BTN.shape[:1], maxval=rate)
    hit_BTN = (jax.random.uniform(k_pos, ids_BTN.shape) < r_B[:, None, None]) & ~mask_BTN
    return jnp.where(hit_BTN, jax.random.randint(k_id, ids_BTN.shape, 0, vocab, ids_BTN.dtype), ids_BTN)


class CachedFrames:
    """Cached generation in two parts (every family): ``draw_frame(caches, pos, action_BA, rng, opts, n) -> (x,
    caches)`` generates the frame at window position ``pos``, and ``commit_frame(caches, x, pos, action_BA, opts)
    -> caches`` writes it into the caches for later frames (one more pass; the causal family's last token slot).
    ``jasmine play`` shows a frame between the two, so the write costs the player no latency."""

    def next_frame(self, caches, pos, action_BA, rng, opts: SamplingOptions, n: int):
        """Generate the frame at window position ``pos`` and write it into the caches: (frame, caches)."""
        x, caches = self.draw_frame(caches, pos, action_BA, rng, opts, n)
        return x, self.commit_frame(caches, x, pos, action_BA, opts)


class MaskGITDynamics(CachedFrames, TokenFamily, nnx.Module):
    """The dynamics-family interface (shared with ``jasmine.models.causal.CausalDynamics``): ``loss``,
    ``prefill``, ``next_frame`` (cached, :class:`CachedFrames`) and ``frame`` (uncached), ``family``,
    ``maskgit_options`` and ``check_config``."""

    family = "maskgit"
    maskgit_options = True

    def slots_per_pass(self, n: int) -> int:
        """Slots one cached sampling pass runs (the rows of its matmuls): the frame's tokens, + its action's."""
        return n + (self.cfg.action_mode == "prepend")

    @staticmethod
    def check_config(cfg: DynamicsConfig) -> None:
        if not 0 <= cfg.mask_limit < 1:
            raise ValueError(f"--model.mask-limit must be in [0, 1), got {cfg.mask_limit}")

    def __init__(
        self,
        cfg: DynamicsConfig,
        digits: Digits,
        action_dim: int,
        *,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        phase: int = 1,
        rngs: nnx.Rngs,
    ):
        self.cfg, self.digits, self.dtype = cfg, digits, prec.dtype
        self.token_embed = nnx.Embed(
            digits.width, cfg.model_dim, dtype=prec.dtype, param_dtype=prec.param_dtype, rngs=rngs
        )
        self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.model_dim,), prec.param_dtype))
        self.action_proj = linear_layers(prec, rngs)(action_dim, cfg.model_dim)
        self.transformer = AxialTransformer(
            cfg.model_dim,
            cfg.model_dim,
            cfg.ffn_dim,
            digits.width,
            cfg.num_blocks,
            cfg.num_heads,
            prec=prec,
            attention=attention,
            remat=remat,
            time_positions=cfg.time_positions,
            phase=phase,
            rngs=rngs,
        )

    def receptive_frames(self, band: int) -> int:
        """Frames (itself included) a frame's output depends on with an attention band of ``band`` frames."""
        return self.transformer.receptive_frames(band)

    def embed(self, ids_BTN, mask_BTN, actions_BTA):
        """Token embeddings (mask token where masked) with the action of each frame; [B, T, N(+1), D]."""
        offsets = jnp.asarray(self.digits.offsets, jnp.int32)
        x_BTND = self.token_embed(self.digits.digits(ids_BTN) + offsets).sum(axis=-2)  # one embedding per digit
        x_BTND = jnp.where(mask_BTN[..., None], self.mask_token[...].astype(self.dtype), x_BTND)
        a_BT1D = self.action_proj(actions_BTA.astype(self.dtype))[:, :, None]
        if self.cfg.action_mode == "prepend":
            return jnp.concatenate([a_BT1D, x_BTND], axis=2)
        return x_BTND + a_BT1D

    def __call__(self, ids_BTN, mask_BTN, actions_BTA, t0=0, band: int | None = None):
        """Logits float32 [B, T, N, W] (every digit's) for every token position; ``t0`` and ``band`` (rope only):
        the first frame's time and the attention band (see ``AxialTransformer``)."""
        x = self.embed(ids_BTN, mask_BTN, actions_BTA)
        return _drop_action_slot(self.cfg, self.transformer(x, t0, band).astype(jnp.float32))

    def loss(self, ids_BTN, a_BTA, rng, *, training: bool):
        """Masked-token cross-entropy; ``rng`` holds two keys: the mask's and the context noise's."""
        k_mask, k_noise = rng
        if training:
            recipe = (self.cfg.mask_limit, self.cfg.clean_frames, self.cfg.mask_schedule)
        else:  # validation is one protocol whatever the recipe (VALIDATION_MASK), so its numbers compare across them
            recipe = VALIDATION_MASK
        mask_BTN = sample_mask(k_mask, ids_BTN.shape, *recipe)
        inputs_BTN = corrupt_context(
            k_noise, ids_BTN, mask_BTN, self.cfg.context_noise if training else 0.0, self.digits.vocab
        )
        return masked_token_metrics(
            self(inputs_BTN, mask_BTN, a_BTA), ids_BTN, mask_BTN, self.digits, self.cfg.z_loss_weight
        )

    def prefill(self, ids_BTN, actions_BTA, window: int, opts: SamplingOptions | None = None, context_rng=None):
        """Temporal K/V caches (one window) of fully known frames; see ``AxialTransformer.prefill``.

        ``context_rng`` (here and in ``frame``): the rollout's key for noise its family puts on past frames
        (diffusion's context noise; unused by the token families)."""
        x = self.embed(ids_BTN, jnp.zeros(ids_BTN.shape, bool), actions_BTA)
        return self.transformer.prefill(x, window)[1]

    def draw_frame(self, caches, pos, action_BA, rng, opts: SamplingOptions, n: int):
        """Generate the frame at window position ``pos`` (with rope: at time ``pos``, the caches a ring) from the
        caches, leaving them unchanged; returns (ids_BN, caches). See :class:`CachedFrames`."""

        def frame_fn(ids_BN, mask_BN):
            return step_logits(self, ids_BN, mask_BN, action_BA, caches, pos)[0]

        return unmask_frame(frame_fn, jnp.zeros((action_BA.shape[0], n), jnp.int32), rng, opts, self.digits), caches

    def commit_frame(self, caches, ids_BN, pos, action_BA, opts: SamplingOptions):
        """The caches with the frame ``ids_BN`` at ``pos`` written in: one pass over it, unmasked."""
        _, kvs = step_logits(self, ids_BN, jnp.zeros_like(ids_BN, bool), action_BA, caches, pos)
        return AxialTransformer.write_cache(caches, kvs, pos)

    def frame(self, ids_BWN, a_BWA, pos, rng, opts: SamplingOptions, context_rng=None, t0=0, band=None):
        """Uncached: frame ``pos`` of the window, a full forward per MaskGIT step (same draws as ``next_frame``).

        ``t0``, ``band`` (rope only): the window's first time and the attention band (a window of
        ``receptive_frames(band)`` frames then gives what the ring cache gives)."""

        def logits_fn(ids, mask):
            return self(ids, mask, a_BWA, t0, band)

        return jnp.take(generate_frame(logits_fn, ids_BWN, pos, rng, opts, self.digits), pos, axis=1)


def frame_actions(a_BT1A):
    """Actions between consecutive frames [B, T-1, A] → per-frame conditioning [B, T, A] (zeros at t=0)."""
    return jnp.pad(a_BT1A, ((0, 0), (1, 0), (0, 0)))


def masked_token_metrics(logits_BTNW, ids_BTN, mask_BTN, digits: Digits, z_loss_weight: float = 0.0):
    """Cross-entropy (+ z-loss) over masked tokens and accuracy on them: top-1 (every digit right), per
    digit, and top-2/5/16 for single-digit (VQ) tokens."""
    m = mask_BTN.astype(jnp.float32)

    def mean(x_BTN):
        return (x_BTN * m).sum() / jnp.maximum(m.sum(), 1.0)

    ce, z_loss, rank = token_terms(logits_BTNW, ids_BTN, digits)
    metrics = {"cross_entropy": mean(ce), "z_loss": mean(z_loss), "top1_accuracy": mean(rank < 1)}
    if len(digits.levels) == 1:
        metrics |= {f"top{k}_accuracy": mean(rank < k) for k in (2, 5, 16)}
    return metrics["cross_entropy"] + z_loss_weight * metrics["z_loss"], metrics


def token_terms(logits_BTNW, ids_BTN, digits: Digits):
    """Per token: cross-entropy (summed over digits), z-loss term, and rank of the true token (for several
    digits, the worst digit's: how many values of it beat the true one)."""
    d_BTNK = digits.digits(ids_BTN)
    ce, z_loss, rank = 0.0, 0.0, 0
    for k, (o, v) in enumerate(zip(digits.offsets, digits.levels, strict=False)):
        part = logits_BTNW[..., o : o + v]
        logz = jax.nn.logsumexp(part, axis=-1)
        target = jnp.take_along_axis(part, d_BTNK[..., k : k + 1], axis=-1)[..., 0]
        ce, z_loss = ce + logz - target, z_loss + logz**2
        beaten = (part > target[..., None]).sum(-1)  # how many values of this digit beat the true one
        rank = jnp.maximum(rank, beaten) if len(digits.levels) > 1 else beaten
    return ce, z_loss, rank


def _drop_action_slot(cfg: DynamicsConfig, logits):
    return logits[:, :, 1:] if cfg.action_mode == "prepend" else logits


def step_logits(dyn: MaskGITDynamics, ids_BN, mask_BN, action_BA, caches, pos):
    """Logits [B, N, W] of one frame at window position ``pos`` from the caches, and its K/V."""
    x = dyn.embed(ids_BN[:, None], mask_BN[:, None], action_BA[:, None])
    out, kvs = dyn.transformer.step(x, caches, pos)
    return _drop_action_slot(dyn.cfg, out.astype(jnp.float32))[:, 0], kvs
