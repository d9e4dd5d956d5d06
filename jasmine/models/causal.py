"""Causal (autoregressive) dynamics: each token from every earlier frame, the earlier tokens of its
own frame, and the actions up to and including its frame.

Dimension key:
    B batch   T frames   N tokens per frame   L = N + 1 slots per frame   S = T * L sequence
    D model width   A action width   W logit width (see ``Digits``)   M cache slots

Frame t is laid out as L slots: the action a_t into frame t (zeros for t = 0), then its N
tokens in raster order. A transformer with full causal attention runs over the flattened
T * L slots; the output at slot k of frame t (whose input is the action for k = 0, token
k - 1 otherwise) predicts token k of frame t. So token (t, k) sees every slot of frames < t,
a_t and tokens < k of frame t, and nothing else (tested by gradients). The output of the
last slot (input: token N - 1) predicts nothing; it only writes that token into the cache.

The reference's causal baseline is an axial transformer causal in space and in time: there
token (t, k) sees only tokens <= k of earlier frames, and token 0 sees nothing but actions.

Training: cross-entropy on every token with teacher forcing, frame 0 included (its tokens
come from the zero action and its own earlier tokens: a prior over first frames).
Generation: one token per pass of one slot through a token-level KV cache (N + 1 one-slot
passes per frame), or, uncached, one full forward of the window per token.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from jasmine.models.attention import cached_attention, dot_product_attention
from jasmine.models.digits import Digits, SamplingOptions, TokenFamily
from jasmine.models.dynamics import MASKGIT_ONLY, CachedFrames, DynamicsConfig, masked_token_metrics, refuse_options
from jasmine.models.linear import LayerNorm32, Precision, linear_layers, output_layers
from jasmine.models.nn import (
    Attention,
    MultiHeadAttention,
    Remat,
    check_window,
    positions,
    receptive_frames,
    rotary,
    run_blocks,
    time_code,
)


class CausalBlock(nnx.Module):
    """Pre-LN block: causal self-attention over the flattened slots, then an FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        heads: int,
        *,
        prec: Precision,
        attention: Attention,
        rope: bool = False,
        rngs: nnx.Rngs,
    ):
        self.rope = rope
        self.norm_a, self.norm_f = LayerNorm32(dim, prec=prec, rngs=rngs), LayerNorm32(dim, prec=prec, rngs=rngs)
        self.attn = MultiHeadAttention(dim, heads, prec=prec, attention=attention, rngs=rngs)
        lin = linear_layers(prec, rngs)
        self.ffn_in, self.ffn_out = lin(dim, ffn_dim), lin(ffn_dim, dim)

    def _finish(self, x_BSD, y_BSHK):
        x_BSD = x_BSD + self.attn.out(einops.rearrange(y_BSHK, "b s h k -> b s (h k)"))
        return x_BSD + self.ffn_out(jax.nn.gelu(self.ffn_in(self.norm_f(x_BSD))))

    def _qkv(self, x_BSD, t_S):
        q, k, v = self.attn.qkv_heads(self.norm_a(x_BSD))
        if self.rope:  # rotary by frame time: a frame's slots share it, their order is the causal mask's
            q, k = rotary(q, t_S), rotary(k, t_S)
        return q, k, v

    def __call__(self, x_BSD, t_S, *, band: int | None = None, return_kv: bool = False):
        """``t_S``: each slot's frame time; ``band``: a slot sees the slots of at most this many frames."""
        q, k, v = self._qkv(x_BSD, t_S)
        mask = None if band is None else ((t_S[:, None] - t_S[None, :]) < band)[None, None]
        y = dot_product_attention(q, k, v, causal=True, mask_SHLM=mask, implementation=self.attn.attention)
        out = self._finish(x_BSD, y)
        return (out, (k, v)) if return_kv else out

    def step(self, x_B1D, k_cache_BMHK, v_cache_BMHK, slot, valid_M, t):
        """One slot of frame ``t`` written at cache position ``slot``, attending to the cache positions where
        ``valid_M`` holds; returns the updated caches."""
        q, k, v = self._qkv(x_B1D, jnp.reshape(t, (1,)))
        y, caches = cached_attention(q, k, v, k_cache_BMHK, v_cache_BMHK, slot, valid_M, self.attn.attention)
        return self._finish(x_B1D, y), caches


class CausalDynamics(CachedFrames, TokenFamily, nnx.Module):
    family = "causal"
    maskgit_options = False

    def slots_per_pass(self, n: int) -> int:
        """Slots one cached sampling pass runs (the rows of its matmuls): one token's."""
        return 1

    @staticmethod
    def check_config(cfg: DynamicsConfig) -> None:
        refuse_options(
            cfg, MASKGIT_ONLY, "the causal dynamics masks nothing and gives each frame's action its own slot"
        )
        if cfg.time_positions == "rope" and (cfg.model_dim // cfg.num_heads) % 2:
            raise ValueError(
                f"--model.time-positions rope needs an even head width, got {cfg.model_dim} / {cfg.num_heads}"
            )

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
        self.cfg, self.digits, self.dtype, self.remat = cfg, digits, prec.dtype, remat
        self.rope, self.phase = cfg.time_positions == "rope", phase
        D = cfg.model_dim
        self.token_embed = nnx.Embed(digits.width, D, dtype=prec.dtype, param_dtype=prec.param_dtype, rngs=rngs)
        lin = linear_layers(prec, rngs)
        self.action_proj = lin(action_dim, D)
        self.blocks = nnx.List(
            [
                CausalBlock(D, cfg.ffn_dim, cfg.num_heads, prec=prec, attention=attention, rope=self.rope, rngs=rngs)
                for _ in range(cfg.num_blocks)
            ]
        )
        self.norm_out, self.proj_out = output_layers(D, digits.width, prec, rngs)

    # ------------------------------------------------------------------ inputs and outputs

    def _embed_tokens(self, ids):
        offsets = jnp.asarray(self.digits.offsets, jnp.int32)
        return self.token_embed(self.digits.digits(ids) + offsets).sum(axis=-2)  # one embedding per digit

    def slots(self, ids_BTN, a_BTA, t0=0):
        """Slot inputs [B, T * L, D]: per frame its action, then its tokens, plus time and slot codes (time: the
        frame's, or with rope its chunk phase t mod ``phase``)."""
        B, T, N = ids_BTN.shape
        x_BTLD = jnp.concatenate(
            [self.action_proj(a_BTA.astype(self.dtype))[:, :, None], self._embed_tokens(ids_BTN)], axis=2
        )
        x_BTLD = x_BTLD + positions(self._time_code(t0 + jnp.arange(T)), N + 1, self.cfg.model_dim).astype(self.dtype)
        return x_BTLD.reshape(B, T * (N + 1), -1)

    def _time_code(self, t):
        return time_code(t, self.rope, self.phase)

    def receptive_frames(self, band: int) -> int:
        """Frames (itself included) a frame's tokens depend on with an attention band of ``band`` frames."""
        return receptive_frames(len(self.blocks), band)

    def _head(self, h_BSD):
        return self.proj_out(self.norm_out(h_BSD))

    def __call__(self, ids_BTN, a_BTA, t0=0, band: int | None = None):
        """Logits float32 [B, T, N, W]: token (t, k) from frames < t, tokens < k of t and actions <= t (``t0``,
        ``band``: the first frame's time and the attention band, rope only; see ``AxialTransformer``)."""
        check_window(self.rope, t0, band)
        return self.slot_logits(self.slots(ids_BTN, a_BTA, t0), ids_BTN.shape[2], t0, band)

    def slot_logits(self, x_BSD, n: int, t0=0, band: int | None = None):
        """Logits [B, T, N, W] of slot inputs [B, T * (n + 1), D] (the last slot of each frame predicts nothing)."""
        B, S, _ = x_BSD.shape
        t_S = t0 + jnp.repeat(jnp.arange(S // (n + 1)), n + 1)
        h_BSD = run_blocks(self.blocks, x_BSD, self.remat, t_S=t_S, band=band)
        return self._head(h_BSD).reshape(B, S // (n + 1), n + 1, -1)[:, :, :n]

    def loss(self, ids_BTN, a_BTA, rng, *, training: bool):
        """Cross-entropy on every token (teacher forcing); ``rng`` is unused (nothing is masked)."""
        del rng, training
        return masked_token_metrics(
            self(ids_BTN, a_BTA), ids_BTN, jnp.ones(ids_BTN.shape, bool), self.digits, self.cfg.z_loss_weight
        )

    # ------------------------------------------------------------------ generation

    def prefill(self, ids_BCN, a_BCA, window: int, opts: SamplingOptions | None = None, context_rng=None):
        """Per-block K/V caches [B, window * L, H, K] holding the slots of the known frames (from time 0)."""
        C, N = ids_BCN.shape[1:]
        x_BSD, caches = self.slots(ids_BCN, a_BCA), []
        t_S = jnp.repeat(jnp.arange(C), N + 1)
        for block in self.blocks:
            x_BSD, (k, v) = block(x_BSD, t_S, return_kv=True)
            pad = ((0, 0), (0, (window - C) * (N + 1)), (0, 0), (0, 0))
            caches.append((jnp.pad(k, pad), jnp.pad(v, pad)))
        return caches

    def _step(self, x_B1D, caches, t, k, n: int):
        """Slot k of frame t through the caches: a ring of window frames (frame t in row t mod window; with
        absolute positions t < window, so row t); it sees the rows of earlier frames and slots <= k of its own."""
        L = n + 1
        W = caches[0][0].shape[1] // L
        row_W, r = jnp.arange(W), t % W
        valid_M = (((row_W != r) & (row_W < t))[:, None] | ((row_W == r)[:, None] & (jnp.arange(L) <= k))).reshape(-1)
        new = []
        for block, (k_c, v_c) in zip(self.blocks, caches, strict=False):
            x_B1D, kv = block.step(x_B1D, k_c, v_c, r * L + k, valid_M, t)
            new.append(kv)
        return self._head(x_B1D)[:, 0], new

    def _token_positions(self, pos, n: int):
        """Position codes [n + 1, D] of the action slot and the n token slots of the frame at ``pos``."""
        t_1 = jnp.reshape(self._time_code(pos), (1,))
        return positions(t_1, n + 1, self.cfg.model_dim)[0].astype(self.dtype)

    def draw_frame(self, caches, pos, action_BA, rng, opts: SamplingOptions, n: int):
        """Frame at window position ``pos`` (rope: at time ``pos``), token by token through the caches, which then
        hold its action's and first n - 1 tokens' slots: (ids_BN, caches). See ``CachedFrames``."""
        pe_LD = self._token_positions(pos, n)
        first_B1D = self.action_proj(action_BA.astype(self.dtype))[:, None] + pe_LD[0]

        def body(k, carry):
            ids_BN, caches, x_B1D = carry
            logits_BW, caches = self._step(x_B1D, caches, pos, k, n)
            tok_B = self.digits.sample(
                jax.random.fold_in(rng, k), logits_BW, opts.temperature, opts.ordinal, opts.top_k
            ).astype(ids_BN.dtype)
            ids_BN = jax.lax.dynamic_update_index_in_dim(ids_BN, tok_B, k, 1)
            x_B1D = self._embed_tokens(tok_B)[:, None] + jax.lax.dynamic_index_in_dim(pe_LD, k + 1, 0)
            return ids_BN, caches, x_B1D

        init = (jnp.zeros((action_BA.shape[0], n), jnp.int32), caches, first_B1D)
        ids_BN, caches, _ = jax.lax.fori_loop(0, n, body, init)  # the last token's slot is the commit's
        return ids_BN, caches

    def commit_frame(self, caches, ids_BN, pos, action_BA, opts: SamplingOptions):
        """The caches with the frame's last token slot written in, for later frames."""
        n = ids_BN.shape[1]
        last_B1D = self._embed_tokens(ids_BN[:, -1])[:, None] + self._token_positions(pos, n)[n]
        return self._step(last_B1D, caches, pos, n, n)[1]

    def frame(self, ids_BWN, a_BWA, pos, rng, opts: SamplingOptions, context_rng=None, t0=0, band=None):
        """Uncached: frame ``pos`` of the window, one full forward per token (same draws as ``next_frame``);
        ``t0``, ``band``: see ``MaskGITDynamics.frame``."""
        n = ids_BWN.shape[2]

        def body(k, ids_BWN):
            logits_BW = jnp.take(jnp.take(self(ids_BWN, a_BWA, t0, band), pos, axis=1), k, axis=1)
            tok_B = self.digits.sample(
                jax.random.fold_in(rng, k), logits_BW, opts.temperature, opts.ordinal, opts.top_k
            ).astype(ids_BWN.dtype)
            return ids_BWN.at[:, pos, k].set(tok_B)

        return jnp.take(jax.lax.fori_loop(0, n, body, ids_BWN), pos, axis=1)
