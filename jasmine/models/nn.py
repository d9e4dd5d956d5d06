"""Building blocks: linear layers, multi-head attention and the spatio-temporal (axial) transformer.

Dimension key:
    B batch          T time (frames)       N tokens per frame (spatial)
    D model width    F FFN width           H heads         K head width (D / H)
    I input width    O output width        S flattened batch (B*T or B*N)
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.attention import Attention, attend_cache_and_self, band_mask, dot_product_attention, ring_visible
from jasmine.models.linear import LayerNorm32, Precision, linear_layers, output_layers

Remat = Literal["none", "full", "dots", "offload"]
TimePositions = Literal["absolute", "rope"]
SpacePositions = Literal["absolute", "rope", "none"]


class MultiHeadAttention(nnx.Module):
    """Self-attention with a fused QKV projection over the second-to-last axis of x_SLD."""

    def __init__(self, dim: int, heads: int, *, prec: Precision, attention: Attention, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by num_heads {heads}")
        self.heads, self.attention = heads, attention
        lin = linear_layers(prec, rngs)
        self.qkv = lin(dim, 3 * dim)
        self.out = lin(dim, dim)

    def qkv_heads(self, x_SLD):
        q, k, v = jnp.split(self.qkv(x_SLD), 3, axis=-1)
        return (einops.rearrange(a, "s l (h k) -> s l h k", h=self.heads) for a in (q, k, v))

    def __call__(self, x_SLD, *, causal: bool, mask_SHLM=None, rotate=None):
        """``rotate``: applied to queries and keys (rotary positions), or None."""
        q_SLHK, k_SLHK, v_SLHK = self.qkv_heads(x_SLD)
        if rotate is not None:
            q_SLHK, k_SLHK = rotate(q_SLHK), rotate(k_SLHK)
        y_SLHK = dot_product_attention(
            q_SLHK, k_SLHK, v_SLHK, causal=causal, mask_SHLM=mask_SHLM, implementation=self.attention
        )
        return self.out(einops.rearrange(y_SLHK, "s l h k -> s l (h k)"))


class AxialBlock(nnx.Module):
    """Pre-LN block: spatial attention over N, temporal attention over T (causal), FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        heads: int,
        *,
        spatial_causal: bool,
        prec: Precision,
        attention: Attention,
        rope: bool = False,
        grid: tuple[int, int] | None = None,
        rngs: nnx.Rngs,
    ):
        self.spatial_causal, self.rope, self.grid = spatial_causal, rope, grid
        self.norm_s, self.norm_t, self.norm_f = (LayerNorm32(dim, prec=prec, rngs=rngs) for _ in range(3))
        self.spatial = MultiHeadAttention(dim, heads, prec=prec, attention=attention, rngs=rngs)
        self.temporal = MultiHeadAttention(dim, heads, prec=prec, attention=attention, rngs=rngs)
        lin = linear_layers(prec, rngs)
        self.ffn_in, self.ffn_out = lin(dim, ffn_dim), lin(ffn_dim, dim)

    def _spatial(self, x_BTND):
        B, T, N, D = x_BTND.shape
        h_SND = self.norm_s(x_BTND).reshape(B * T, N, D)
        rotate = None if self.grid is None else partial(rotary2d, grid=self.grid)  # scores see offsets only
        return x_BTND + self.spatial(h_SND, causal=self.spatial_causal, rotate=rotate).reshape(B, T, N, D)

    def _temporal_qkv(self, x_BTND, t_T):
        h_STD = einops.rearrange(self.norm_t(x_BTND), "b t n d -> (b n) t d")
        q_STHK, k_STHK, v_STHK = self.temporal.qkv_heads(h_STD)
        if self.rope:  # time enters the temporal attention only as rotations: scores see t - s
            q_STHK, k_STHK = rotary(q_STHK, t_T), rotary(k_STHK, t_T)
        return q_STHK, k_STHK, v_STHK

    def _finish(self, x_BTND, y_STHK):
        y_STD = self.temporal.out(einops.rearrange(y_STHK, "s t h k -> s t (h k)"))
        x_BTND = x_BTND + einops.rearrange(y_STD, "(b n) t d -> b t n d", b=x_BTND.shape[0])
        return x_BTND + self.ffn_out(jax.nn.gelu(self.ffn_in(self.norm_f(x_BTND))))

    def __call__(self, x_BTND, *, t_T=None, band: int | None = None, return_kv: bool = False):
        """``t_T``: the frames' times (default 0..T-1; rotary positions only); ``band``: each frame attends to
        at most this many frames, itself included (None: all earlier frames)."""
        T = x_BTND.shape[1]
        t_T = jnp.arange(T) if t_T is None else t_T
        x_BTND = self._spatial(x_BTND)
        q_STHK, k_STHK, v_STHK = self._temporal_qkv(x_BTND, t_T)
        y_STHK = dot_product_attention(
            q_STHK, k_STHK, v_STHK, causal=True, mask_SHLM=band_mask(T, band), implementation=self.temporal.attention
        )
        out = self._finish(x_BTND, y_STHK)
        return (out, (k_STHK, v_STHK)) if return_kv else out

    def step(self, x_B1ND, k_cache_SHWK, v_cache_SHWK, t):
        """One new frame at time ``t``, attending to the cached frames before it and itself (see
        :func:`attend_cache_and_self`) through a ring of W slots (:func:`ring_visible`).

        Returns the block output and this frame's temporal (k, v) [S, 1, H, K] for the cache.
        """
        x_B1ND = self._spatial(x_B1ND)
        q_S1HK, k_S1HK, v_S1HK = self._temporal_qkv(x_B1ND, jnp.reshape(t, (1,)))
        visible_W = ring_visible(t, k_cache_SHWK.shape[2])
        y_S1HK = attend_cache_and_self(q_S1HK, k_S1HK, v_S1HK, k_cache_SHWK, v_cache_SHWK, visible_W)
        return self._finish(x_B1ND, y_S1HK), (k_S1HK, v_S1HK)


def time_code(t, rope: bool, phase: int):
    """What a frame's input position code encodes of its time t: t itself (absolute), or the chunk phase t mod
    ``phase`` (rope, whose attention sees time differences)."""
    return t % phase if rope else t


def check_window(rope: bool, t0, band) -> None:
    """Absolute time positions run windows from time 0 with no band; rope ones may start anywhere."""
    if not rope and (band is not None or not (isinstance(t0, int) and t0 == 0)):
        raise ValueError("absolute time positions run windows from time 0 only (time_positions='rope' slides)")


def receptive_frames(num_blocks: int, band: int) -> int:
    """Frames (itself included) a frame's output depends on when each of ``num_blocks`` blocks attends to a band of
    ``band`` frames: the bands stack."""
    return num_blocks * (band - 1) + 1


def rotary(x_SLHK, t_L):
    """Rotary position embedding (RoPE) by time: channel pairs (i, i + K/2) of every head rotated by angles
    ``t * 10000^(-2i/K)``, so q_t · k_s depends on t - s only. Computed in float32 (angles of long rollouts)."""
    half = x_SLHK.shape[-1] // 2
    freq = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    ang_L1F = (jnp.asarray(t_L, jnp.float32)[:, None] * freq)[:, None, :]
    cos, sin = jnp.cos(ang_L1F), jnp.sin(ang_L1F)
    x1, x2 = jnp.split(x_SLHK.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x_SLHK.dtype)


def rotary2d(x_SNHK, grid: tuple[int, int]):
    """2D RoPE over a row-major ``grid`` of N patches: the first half of each head's channels rotated by the
    patch's row, the second half by its column (:func:`rotary` on each), so q · k depends on the offset only."""
    rows_N, cols_N = jnp.divmod(jnp.arange(grid[0] * grid[1]), grid[1])
    half = x_SNHK.shape[-1] // 2
    return jnp.concatenate([rotary(x_SNHK[..., :half], rows_N), rotary(x_SNHK[..., half:], cols_N)], axis=-1)


def sinusoidal_rows(pos, dim: int) -> jax.Array:
    """Sine/cosine codes [len(pos), dim] (float32) of positions ``pos`` (may be traced)."""
    freq = jnp.exp(-math.log(10_000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    ang = jnp.asarray(pos, jnp.float32)[:, None] * freq
    return jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(len(pos), -1)[:, :dim]


def positions(t_T, n: int, dim: int) -> jax.Array:
    """Position codes [T, N, dim]: time sinusoids in the first half of the channels, space in the rest.

    Separate tables: (t, n) and (n, t) get different codes.
    """
    time_TD = sinusoidal_rows(t_T, dim // 2)
    space_ND = sinusoidal_rows(jnp.arange(n), dim - dim // 2)
    return jnp.concatenate(
        [
            jnp.broadcast_to(time_TD[:, None], (len(t_T), n, dim // 2)),
            jnp.broadcast_to(space_ND[None], (len(t_T), n, dim - dim // 2)),
        ],
        axis=-1,
    )


REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs on the device
    # keep matmul outputs in pinned host memory (copied out in the forward, back in the backward)
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


class AxialTransformer(nnx.Module):
    """x_BTNI → Linear → + time and space codes → blocks → LayerNorm → Linear → y_BTNO.

    Time positions (``time_positions``): ``absolute`` adds sinusoids of the window position t to the input,
    so the model runs on windows of its training length only; ``rope`` rotates the temporal attention's
    queries and keys by t (:func:`rotary`: scores depend on t - s only) and adds sinusoids of the chunk phase
    t mod ``phase`` instead (the tokenizer's window grid: what a frame's tokens depend on). A rope model
    runs on any length with a band of the training window (``band``), so a rollout slides by keeping a
    ring of cached frames instead of re-prefilling.

    Space positions (``space_positions``): ``absolute`` adds sinusoids of the patch index; ``rope`` rotates the
    spatial attention's queries and keys by the patch's row and column on ``grid`` (:func:`rotary2d`), so the
    model knows where patches are relative to each other, and where they are in the frame only through its edges;
    ``none`` gives no space positions at all (spatial attention is then permutation-equivariant over the frame's
    tokens).
    """

    def __init__(
        self,
        in_dim: int,
        model_dim: int,
        ffn_dim: int,
        out_dim: int,
        num_blocks: int,
        num_heads: int,
        *,
        spatial_causal: bool = False,
        prec: Precision = Precision(),
        attention: Attention = "auto",
        remat: Remat = "none",
        time_positions: TimePositions = "absolute",
        phase: int = 1,
        space_positions: SpacePositions = "absolute",
        grid: tuple[int, int] | None = None,
        rngs: nnx.Rngs,
    ):
        if time_positions == "rope" and (model_dim // num_heads) % 2:
            raise ValueError(f"rotary positions need an even head width, got {model_dim} / {num_heads} heads")
        if space_positions == "rope" and ((model_dim // num_heads) % 4 or grid is None):
            raise ValueError(f"2D rotary positions need a grid and a head width divisible by 4, got {model_dim} / "
                             f"{num_heads} heads")  # fmt: skip
        self.space_rope, self.space_codes = space_positions == "rope", space_positions == "absolute"
        lin = linear_layers(prec, rngs)
        self.dtype, self.remat, self.model_dim = prec.dtype, remat, model_dim
        self.rope, self.phase = time_positions == "rope", phase
        self.proj_in = lin(in_dim, model_dim)
        self.blocks = nnx.List(
            [
                AxialBlock(
                    model_dim,
                    ffn_dim,
                    num_heads,
                    spatial_causal=spatial_causal,
                    prec=prec,
                    attention=attention,
                    rope=self.rope,
                    grid=tuple(grid) if self.space_rope else None,
                    rngs=rngs,
                )
                for _ in range(num_blocks)
            ]
        )
        self.norm_out, self.proj_out = output_layers(model_dim, out_dim, prec, rngs)

    def receptive_frames(self, band: int) -> int:
        return receptive_frames(len(self.blocks), band)

    def embed(self, x_BTNI, t_offset=0):
        """Input projection plus time (frames from ``t_offset``, may be traced) and space position codes."""
        _, T, N, _ = x_BTNI.shape
        t_T = t_offset + jnp.arange(T)
        pe_TND = positions(time_code(t_T, self.rope, self.phase), N, self.model_dim)
        if not self.space_codes:  # time codes only: space enters as rotations (rope), or not at all
            pe_TND = pe_TND.at[..., self.model_dim // 2 :].set(0.0)
        return self.proj_in(x_BTNI.astype(self.dtype)) + pe_TND.astype(self.dtype)

    def prefill(self, x_BTNI, window: int):
        """Full causal forward from time 0 that also returns each block's temporal K/V in caches of ``window``
        frames.

        Caches are a list (one per block) of (k, v) with shape [B*N, H, window, K] (the layout
        :func:`attend_cache_and_self` reads in place); frames [0, T) are filled.
        """
        x_BTND = self.embed(x_BTNI)
        caches = []
        for block in self.blocks:
            x_BTND, (k_STHK, v_STHK) = block(x_BTND, return_kv=True)
            pad = ((0, 0), (0, 0), (0, window - k_STHK.shape[1]), (0, 0))
            caches.append(tuple(jnp.pad(jnp.swapaxes(c, 1, 2), pad) for c in (k_STHK, v_STHK)))
        return self.proj_out(self.norm_out(x_BTND)), caches

    def step(self, x_B1NI, caches, t):
        """Output for one frame at time ``t`` given caches of the frames before it (window position t; with
        rope, any t: a ring of the last ``window`` frames).

        Returns the output and the frame's per-block (k, v) (see :meth:`write_cache`).
        """
        x_B1ND = self.embed(x_B1NI, t)
        kvs = []
        for block, (k_c, v_c) in zip(self.blocks, caches, strict=False):
            x_B1ND, kv = block.step(x_B1ND, k_c, v_c, t)
            kvs.append(kv)
        return self.proj_out(self.norm_out(x_B1ND)), kvs

    @staticmethod
    def write_cache(caches, kvs, t):
        """Caches with the (k, v) [S, 1, H, K] of the frame at time ``t`` written at its slot, t mod window."""
        return [
            tuple(
                jax.lax.dynamic_update_slice_in_dim(c, jnp.swapaxes(x, 1, 2), t % c.shape[2], axis=2)
                for c, x in zip(cache, kv, strict=True)
            )
            for cache, kv in zip(caches, kvs, strict=False)
        ]

    def __call__(self, x_BTNI, t_offset=0, band: int | None = None):
        """Outputs of frames at times ``t_offset``.. (only rope models run past time 0), each attending to at
        most ``band`` frames (None: every earlier one)."""
        check_window(self.rope, t_offset, band)
        t_T = t_offset + jnp.arange(x_BTNI.shape[1])
        x_BTND = run_blocks(self.blocks, self.embed(x_BTNI, t_offset), self.remat, t_T=t_T, band=band)
        return self.proj_out(self.norm_out(x_BTND))


def run_blocks(blocks, x, remat: Remat, **kw):
    """Apply ``blocks`` in order (with keyword arguments ``kw``), each rematerialised per ``remat``."""
    for block in blocks:
        if remat == "none":
            x = block(x, **kw)
        else:  # a pure function of the block's state, so it works under any outer transform
            graphdef, state = nnx.split(block)
            x = jax.checkpoint(lambda s, x, g=graphdef: nnx.merge(g, s)(x, **kw), policy=REMAT_POLICIES[remat])(
                state, x
            )
    return x
