"""Building blocks: attention and the spatio-temporal (axial) transformer.

Dimension key:
    B batch          T time (frames)       N tokens per frame (spatial)
    D model width    F FFN width           H heads         K head width (D / H)
    I input width    O output width        S flattened batch (B*T or B*N)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import einops
import jax
import jax.numpy as jnp
from flax import nnx

Remat = Literal["none", "full", "dots", "offload"]
Attention = Literal["auto", "xla", "cudnn"]


@dataclass(frozen=True)
class Precision:
    """Compute dtype (activations, matmuls) and parameter dtype."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32


def attention_implementation(requested: Attention, dtype, head_dim: int) -> str | None:
    """cuDNN flash attention on NVIDIA GPUs for half precision and head_dim % 8 == 0, else XLA."""
    if requested != "auto":
        return requested
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def dot_product_attention(q_SLHK, k_SMHK, v_SMHK, *, causal: bool, mask_SHLM=None, implementation: Attention = "auto"):
    """Scaled dot-product attention over L queries and M keys; S is any flattened batch.

    ``causal`` and ``mask_SHLM`` (True = attend) are both always applied, on every path.
    """
    impl = attention_implementation(implementation, q_SLHK.dtype, q_SLHK.shape[-1])
    return jax.nn.dot_product_attention(q_SLHK, k_SMHK, v_SMHK, mask=mask_SHLM, is_causal=causal, implementation=impl)


class Linear(nnx.Linear):
    """``nnx.Linear`` applied as one 2-D matmul over the flattened leading axes.

    Same parameters; on XLA:CPU the weight gradient of an N-D dot (contracting B, T and N)
    runs about 25% slower than the 2-D one.
    """

    def __call__(self, x):
        return super().__call__(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)


def linear_layers(prec: Precision, rngs: nnx.Rngs):
    """``Linear(in, out)`` in the compute/parameter dtypes of ``prec``."""
    return partial(Linear, dtype=prec.dtype, param_dtype=prec.param_dtype, rngs=rngs)


def output_linear(prec: Precision, rngs: nnx.Rngs):
    """``Linear(in, out)`` for output heads: computed in float32 whatever the compute dtype.

    Logits from a bf16 matmul keep 8 bits of mantissa: at 1024 classes that ties the argmax and MaskGIT's
    confidence ranking. A head is one small matmul, so float32 costs little.
    """
    return linear_layers(Precision(dtype=jnp.float32, param_dtype=prec.param_dtype), rngs)


def output_layers(dim: int, out_dim: int, prec: Precision, rngs: nnx.Rngs):
    """The output head: LayerNorm and Linear ``dim`` → ``out_dim``, both in float32 (see :func:`output_linear`)."""
    fp32 = Precision(dtype=jnp.float32, param_dtype=prec.param_dtype)
    return LayerNorm32(dim, prec=fp32, rngs=rngs), output_linear(prec, rngs)(dim, out_dim)


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

    def __call__(self, x_SLD, *, causal: bool, mask_SHLM=None):
        q_SLHK, k_SLHK, v_SLHK = self.qkv_heads(x_SLD)
        y_SLHK = dot_product_attention(
            q_SLHK, k_SLHK, v_SLHK, causal=causal, mask_SHLM=mask_SHLM, implementation=self.attention
        )
        return self.out(einops.rearrange(y_SLHK, "s l h k -> s l (h k)"))


class LayerNorm32(nnx.Module):
    """LayerNorm computed in float32, returning the compute dtype."""

    def __init__(self, dim: int, *, prec: Precision, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, param_dtype=prec.param_dtype, rngs=rngs)
        self.dtype = prec.dtype

    def __call__(self, x):
        return self.norm(x.astype(jnp.float32)).astype(self.dtype)


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
        rngs: nnx.Rngs,
    ):
        self.spatial_causal = spatial_causal
        self.norm_s, self.norm_t, self.norm_f = (LayerNorm32(dim, prec=prec, rngs=rngs) for _ in range(3))
        self.spatial = MultiHeadAttention(dim, heads, prec=prec, attention=attention, rngs=rngs)
        self.temporal = MultiHeadAttention(dim, heads, prec=prec, attention=attention, rngs=rngs)
        lin = linear_layers(prec, rngs)
        self.ffn_in, self.ffn_out = lin(dim, ffn_dim), lin(ffn_dim, dim)

    def _spatial(self, x_BTND):
        B, T, N, D = x_BTND.shape
        h_SND = self.norm_s(x_BTND).reshape(B * T, N, D)
        return x_BTND + self.spatial(h_SND, causal=self.spatial_causal).reshape(B, T, N, D)

    def _temporal_qkv(self, x_BTND):
        h_STD = einops.rearrange(self.norm_t(x_BTND), "b t n d -> (b n) t d")
        return self.temporal.qkv_heads(h_STD)

    def _finish(self, x_BTND, y_STHK):
        y_STD = self.temporal.out(einops.rearrange(y_STHK, "s t h k -> s t (h k)"))
        x_BTND = x_BTND + einops.rearrange(y_STD, "(b n) t d -> b t n d", b=x_BTND.shape[0])
        return x_BTND + self.ffn_out(jax.nn.gelu(self.ffn_in(self.norm_f(x_BTND))))

    def __call__(self, x_BTND, *, return_kv: bool = False):
        x_BTND = self._spatial(x_BTND)
        q_STHK, k_STHK, v_STHK = self._temporal_qkv(x_BTND)
        y_STHK = dot_product_attention(q_STHK, k_STHK, v_STHK, causal=True, implementation=self.temporal.attention)
        out = self._finish(x_BTND, y_STHK)
        return (out, (k_STHK, v_STHK)) if return_kv else out

    def step(self, x_B1ND, k_cache_SWHK, v_cache_SWHK, pos):
        """One new frame at window position ``pos``, attending to cached frames [0, pos) and itself.

        Returns the block output and this frame's temporal (k, v) [S, 1, H, K] for the cache.
        """
        x_B1ND = self._spatial(x_B1ND)
        q_S1HK, k_S1HK, v_S1HK = self._temporal_qkv(x_B1ND)
        y_S1HK, _ = cached_attention(q_S1HK, k_S1HK, v_S1HK, k_cache_SWHK, v_cache_SWHK, pos, self.temporal.attention)
        return self._finish(x_B1ND, y_S1HK), (k_S1HK, v_S1HK)


def cached_attention(q_S1HK, k_S1HK, v_S1HK, k_cache_SWHK, v_cache_SWHK, pos, implementation: Attention):
    """One query position ``pos`` attending to cached positions < ``pos`` and itself.

    Returns the attention output and the caches with this position's (k, v) written in.
    """
    k_SWHK = jax.lax.dynamic_update_slice_in_dim(k_cache_SWHK, k_S1HK, pos, axis=1)
    v_SWHK = jax.lax.dynamic_update_slice_in_dim(v_cache_SWHK, v_S1HK, pos, axis=1)
    mask_111W = (jnp.arange(k_SWHK.shape[1]) <= pos)[None, None, None, :]
    y_S1HK = dot_product_attention(
        q_S1HK, k_SWHK, v_SWHK, causal=False, mask_SHLM=mask_111W, implementation=implementation
    )
    return y_S1HK, (k_SWHK, v_SWHK)


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
    """x_BTNI → Linear → + time and space sinusoids → blocks → LayerNorm → Linear → y_BTNO."""

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
        rngs: nnx.Rngs,
    ):
        lin = linear_layers(prec, rngs)
        self.dtype, self.remat, self.model_dim = prec.dtype, remat, model_dim
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
                    rngs=rngs,
                )
                for _ in range(num_blocks)
            ]
        )
        self.norm_out, self.proj_out = output_layers(model_dim, out_dim, prec, rngs)

    def embed(self, x_BTNI, t_offset=0):
        """Input projection plus time (from frame ``t_offset``, may be traced) and space position codes."""
        _, T, N, _ = x_BTNI.shape
        pe_TND = positions(t_offset + jnp.arange(T), N, self.model_dim)
        return self.proj_in(x_BTNI.astype(self.dtype)) + pe_TND.astype(self.dtype)

    def prefill(self, x_BTNI, window: int):
        """Full causal forward that also returns each block's temporal K/V in caches of ``window`` frames.

        Caches are a list (one per block) of (k, v) with shape [B*N, window, H, K]; frames
        [0, T) are filled.
        """
        x_BTND = self.embed(x_BTNI)
        caches = []
        for block in self.blocks:
            x_BTND, (k_STHK, v_STHK) = block(x_BTND, return_kv=True)
            pad = ((0, 0), (0, window - k_STHK.shape[1]), (0, 0), (0, 0))
            caches.append((jnp.pad(k_STHK, pad), jnp.pad(v_STHK, pad)))
        return self.proj_out(self.norm_out(x_BTND)), caches

    def step(self, x_B1NI, caches, pos):
        """Output for one frame at window position ``pos`` given caches of frames [0, pos).

        Returns the output and the frame's per-block (k, v) (see :meth:`write_cache`).
        """
        x_B1ND = self.embed(x_B1NI, pos)
        kvs = []
        for block, (k_c, v_c) in zip(self.blocks, caches, strict=False):
            x_B1ND, kv = block.step(x_B1ND, k_c, v_c, pos)
            kvs.append(kv)
        return self.proj_out(self.norm_out(x_B1ND)), kvs

    @staticmethod
    def write_cache(caches, kvs, pos):
        """Caches with one frame's (k, v) written at window position ``pos``."""
        return [
            (
                jax.lax.dynamic_update_slice_in_dim(k_c, k, pos, axis=1),
                jax.lax.dynamic_update_slice_in_dim(v_c, v, pos, axis=1),
            )
            for (k_c, v_c), (k, v) in zip(caches, kvs, strict=False)
        ]

    def __call__(self, x_BTNI):
        return self.proj_out(self.norm_out(run_blocks(self.blocks, self.embed(x_BTNI), self.remat)))


def run_blocks(blocks, x, remat: Remat):
    """Apply ``blocks`` in order, each rematerialised per ``remat``."""
    for block in blocks:
        if remat == "none":
            x = block(x)
        else:  # a pure function of the block's state, so it works under any outer transform
            graphdef, state = nnx.split(block)
            x = jax.checkpoint(lambda s, x, g=graphdef: nnx.merge(g, s)(x), policy=REMAT_POLICIES[remat])(state, x)
    return x
