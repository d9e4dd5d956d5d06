"""Attention: the backend choice (cuDNN or XLA), the even-length path cuDNN needs, masks and the KV-cache step.

Dimension key: S flattened batch, L queries, M keys, H heads, K head width, T frames.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

Attention = Literal["auto", "xla", "cudnn"]


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
    L, M = q_SLHK.shape[1], k_SMHK.shape[1]
    if impl == "cudnn" and (L % 2 or M % 2):  # cuDNN's flash attention trains on even lengths only (N+1 = 17)
        return even_length_attention(q_SLHK, k_SMHK, v_SMHK, causal=causal, mask_SHLM=mask_SHLM, implementation=impl)
    return jax.nn.dot_product_attention(q_SLHK, k_SMHK, v_SMHK, mask=mask_SHLM, is_causal=causal, implementation=impl)


def even_length_attention(q_SLHK, k_SMHK, v_SMHK, *, causal: bool, mask_SHLM=None, implementation="cudnn"):
    """Attention with L and M padded to even lengths: padded keys are masked out (a causal mask already hides a
    key padded after every query when L = M), padded queries are dropped. Equal to the unpadded attention."""
    L, M = q_SLHK.shape[1], k_SMHK.shape[1]
    pl, pm = L % 2, M % 2

    def pad(x, n):
        return jnp.pad(x, [(0, 0), (0, n), (0, 0), (0, 0)])

    mask = None if mask_SHLM is None else jnp.broadcast_to(mask_SHLM, (*mask_SHLM.shape[:3], M))
    if pm and mask is not None:
        mask = jnp.pad(mask, [(0, 0)] * 3 + [(0, pm)])  # False: no query sees the padded key
    elif pm and not (causal and L == M):
        mask = (jnp.arange(M + pm) < M)[None, None, None, :]
    if mask is not None and pl:
        mask = jnp.pad(jnp.broadcast_to(mask, (*mask.shape[:2], L, mask.shape[3])), [(0, 0), (0, 0), (0, pl), (0, 0)],
                       constant_values=True)  # fmt: skip
    y = jax.nn.dot_product_attention(
        pad(q_SLHK, pl), pad(k_SMHK, pm), pad(v_SMHK, pm), mask=mask, is_causal=causal, implementation=implementation
    )
    return y[:, :L]


def band_mask(T: int, band: int | None):
    """Attention mask [1, 1, T, T] letting query t see keys s with t - s < ``band`` (None: no mask)."""
    if band is None or band >= T:
        return None
    t_T = jnp.arange(T)
    return ((t_T[:, None] - t_T[None, :]) < band)[None, None]


def ring_visible(t, slots: int):
    """Which of a ring cache's ``slots`` (frame s at slot s mod slots) the frame at time ``t`` sees besides itself:
    the slots written so far (slot <= t) but its own, which holds frame t - slots, out of reach."""
    slot_M = jnp.arange(slots)
    return (slot_M <= t) & (slot_M != t % slots)


def attend_cache_and_self(q_S1HK, k_S1HK, v_S1HK, k_cache_SHMK, v_cache_SHMK, visible_M):
    """One query attending to the cache slots where ``visible_M`` holds and to its own (k, v), with one softmax
    over both (scores and sums in float32); the cache is read, never written.

    The cache is laid out [S, H, M, K], the batch-major layout the score and value products read in place: with
    the [S, M, H, K] layout XLA:CPU copied every cache into it on every pass (~6% of a MaskGIT frame at the
    ``coinrun`` preset in a profile), and writing the query's own (k, v) into a copy of the cache cost another.
    Plain XLA math on every backend: one query needs no fused kernel. Equal to attention over the cache with the
    own (k, v) written into its slot.
    """
    f32 = jnp.float32
    scale = 1.0 / math.sqrt(q_S1HK.shape[-1])
    q_SHK = q_S1HK[:, 0]
    s_SHM = jnp.einsum("shk,shmk->shm", q_SHK, k_cache_SHMK, preferred_element_type=f32) * scale
    s_SHM = jnp.where(visible_M[None, None], s_SHM, -jnp.inf)
    s_SH = jnp.einsum("shk,shk->sh", q_SHK, k_S1HK[:, 0], preferred_element_type=f32) * scale
    m_SH = jnp.maximum(s_SHM.max(-1), s_SH)  # the own score is finite: so is the max
    p_SHM, p_SH = jnp.exp(s_SHM - m_SH[..., None]), jnp.exp(s_SH - m_SH)
    y_SHK = jnp.einsum("shm,shmk->shk", p_SHM.astype(v_cache_SHMK.dtype), v_cache_SHMK, preferred_element_type=f32)
    y_SHK = (y_SHK + p_SH[..., None] * v_S1HK[:, 0].astype(f32)) / (p_SHM.sum(-1) + p_SH)[..., None]
    return y_SHK[:, None].astype(q_S1HK.dtype)


def cached_attention(q_S1HK, k_S1HK, v_S1HK, k_cache_SMHK, v_cache_SMHK, slot, valid_M, implementation: Attention):
    """One query attending to the cache slots where ``valid_M`` holds, after writing its own (k, v) at ``slot``.

    A cache of M frames used as a ring (frame t at slot t mod M, valid: the frames within the last M) holds a
    sliding window of any length with no re-prefill; with absolute positions t < M, slot = t and
    valid = slots <= t. Returns the attention output and the caches with this position's (k, v) written in.
    """
    k_SMHK = jax.lax.dynamic_update_slice_in_dim(k_cache_SMHK, k_S1HK, slot, axis=1)
    v_SMHK = jax.lax.dynamic_update_slice_in_dim(v_cache_SMHK, v_S1HK, slot, axis=1)
    y_S1HK = dot_product_attention(
        q_S1HK, k_SMHK, v_SMHK, causal=False, mask_SHLM=valid_M[None, None, None, :], implementation=implementation
    )
    return y_S1HK, (k_SMHK, v_SMHK)
