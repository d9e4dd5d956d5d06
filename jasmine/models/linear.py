"""Linear layers in a run's precision: float32 heads, half-precision products accumulated in float32 on CPU, and
the kernel layout sampling uses there (``serving_layout``).

Dimension key: R rows (flattened leading axes), I input width, O output width.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


@dataclass(frozen=True)
class Precision:
    """Compute dtype (activations, matmuls) and parameter dtype."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32


class Linear(nnx.Linear):
    """``nnx.Linear`` applied as one 2-D matmul over the flattened leading axes.

    Same parameters; on XLA:CPU the weight gradient of an N-D dot (contracting B, T and N)
    runs about 25% slower than the 2-D one. Half-precision products accumulate and come out in float32, then are
    rounded to the compute dtype (see :func:`linear_layers`).
    """

    out_in = False
    """Whether the kernel is stored [O, I] (:func:`serving_layout`) instead of nnx's [I, O]."""

    def _product(self, x_RI):
        if not self.out_in:
            return super().__call__(x_RI)
        bias = None if self.bias is None else self.bias[...]
        x_RI, kernel_OI, bias_O = self.promote_dtype((x_RI, self.kernel[...], bias), dtype=self.dtype)
        y_RO = jax.lax.dot_general(
            x_RI, kernel_OI, (((1,), (1,)), ((), ())), preferred_element_type=self.preferred_element_type
        )
        return y_RO if bias_O is None else y_RO + bias_O

    def __call__(self, x):
        x_RI = x.reshape(-1, x.shape[-1])
        if x_RI.shape[0] == 1 and self.preferred_element_type is not None:  # see half_dot_accumulator
            y_RO = self._product(jnp.pad(x_RI, ((0, 1), (0, 0))))[:1]
        else:
            y_RO = self._product(x_RI)
        y = y_RO.reshape(*x.shape[:-1], self.out_features)
        return y if self.dtype is None else y.astype(self.dtype)


def serving_layout(model: nnx.Module) -> nnx.Module:
    """``model`` for sampling: a copy whose half-precision layers on XLA:CPU store their kernels [O, I], or
    ``model`` itself where nothing changes. At a sampling pass's few rows a bf16 product against an [O, I] kernel
    runs ~10% faster there (a ``coinrun`` play frame 0.89x as long), a float32 one ~25% slower, so float32 layers
    keep nnx's layout; training and checkpoints never see the copy. Values are those of the model."""
    if not any(isinstance(m, Linear) and m.preferred_element_type is not None for _, m in nnx.iter_graph(model)):
        return model
    model = nnx.clone(model)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, Linear) and m.preferred_element_type is not None and not m.out_in:
            m.kernel.value, m.out_in = m.kernel[...].T, True
    return model


def half_dot_accumulator(dtype) -> jnp.dtype | None:
    """The output type a ``dtype`` matmul asks for: float32 for half precision on XLA:CPU, whose bf16 x bf16 →
    bf16 dot runs ~5x slower than bf16 x bf16 → float32 (which, streaming half the bytes, beats float32 x
    float32 by ~1.5x at a sampling pass's few rows; ``docs/benchmarks.md``); elsewhere the backend's own (GPUs
    accumulate in float32 inside the product anyway). A one-row product (the causal sampler's one-token pass)
    takes a path ~8x slower than two rows' there, so :class:`Linear` pads it to two."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return jnp.float32 if half and jax.default_backend() == "cpu" else None


def linear_layers(prec: Precision, rngs: nnx.Rngs):
    """``Linear(in, out)`` in the compute/parameter dtypes of ``prec``."""
    return partial(
        Linear,
        dtype=prec.dtype,
        param_dtype=prec.param_dtype,
        preferred_element_type=half_dot_accumulator(prec.dtype),
        rngs=rngs,
    )


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


class LayerNorm32(nnx.Module):
    """LayerNorm computed in float32, returning the compute dtype."""

    def __init__(self, dim: int, *, prec: Precision, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, param_dtype=prec.param_dtype, rngs=rngs)
        self.dtype = prec.dtype

    def __call__(self, x):
        return self.norm(x.astype(jnp.float32)).astype(self.dtype)
