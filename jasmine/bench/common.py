"""What the benchmarks share: the matmul peak (the MFU denominator), synthetic batches, and the frozen
frame tokenizer a dynamics benchmark runs on."""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np


def with_frame_tokenizer(cfg, preset_name: str):
    """A dynamics config with the frozen encoders' windows of the preset's tokenizer (or MAE) and LAM runs, and,
    for a family that reads MAE latents, the MAE preset's architecture: benchmarks build untrained models, with
    no run to take them from (the ``coinrun`` dynamics encodes its 17 frames in tokenizer chunks of 16)."""
    from jasmine.models.genie import DYNAMICS
    from jasmine.presets import preset

    continuous = DYNAMICS[cfg.dynamics].continuous
    frame_tokenizer = preset("mae" if continuous else "tokenizer", preset_name)
    cfg = dataclasses.replace(
        cfg,
        tokenizer_window=cfg.tokenizer_window or frame_tokenizer.seq_len,
        lam_window=cfg.lam_window or preset("lam", preset_name).seq_len,
    )
    if continuous and cfg.mae_model is None:
        return dataclasses.replace(cfg, mae_model=frame_tokenizer.model)
    return cfg


def best_seconds(fn, args: tuple, repeats: int) -> float:
    """Best-of-``repeats`` wall seconds of the jitted ``fn(*args)`` to a ready result, after one call to compile."""
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


@functools.lru_cache
def matmul_peak(dtype="float32", n: int = 2048, repeats: int = 20) -> float:
    """Best-of-``repeats`` FLOP/s of an n x n matmul on the default device (the MFU denominator), measured once
    per process."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
    # half-precision inputs accumulate in float32: the fastest path (on AVX512-BF16 CPUs about 2x
    # bf16 -> bf16), so bf16 MFU is measured against the highest peak
    mm = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / best_seconds(mm, (a, b), repeats)


@functools.lru_cache
def memory_bandwidth(mib: int = 256, repeats: int = 10) -> float:
    """Best-of-``repeats`` bytes/s of reading a ``mib`` MiB float32 array once (a jitted sum) on the default
    device, measured once per process: what streaming a model's weights per pass can run at."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((mib * 2**18,), jnp.float32)
    total = jax.jit(jnp.sum)
    return x.nbytes / best_seconds(total, (x,), repeats)


def matmul_chain_seconds(
    shapes: list[tuple[int, int]], rows: int, repeats: int = 20, dtype="float32", out_in: bool = False
) -> float:
    """Best-of-``repeats`` seconds of ``rows`` x in @ in x out products, one per ``(in, out)`` in ``shapes``, run in
    order in one jitted call on the default device (each waits on the one before, as a model's layers do): a
    pass's matmuls alone, at the rate the backend reaches for products this thin (on XLA:CPU far below the
    square-matmul peak when ``rows`` is a frame's few tokens). In ``dtype``, accumulating as the models' layers do
    (``jasmine.models.linear.half_dot_accumulator``); ``out_in``: each matrix stored [out, in], as
    ``jasmine.models.linear.serving_layout`` stores sampling's half-precision kernels on CPU."""
    import jax
    import jax.numpy as jnp

    from jasmine.models.linear import half_dot_accumulator

    dtype, acc = jnp.dtype(dtype), half_dot_accumulator(dtype)
    keys = jax.random.split(jax.random.key(0), len(shapes))
    mats = [jax.random.normal(k, s[::-1] if out_in else s, dtype) for k, s in zip(keys, shapes, strict=True)]
    contract = (((1,), (1 if out_in else 0,)), ((), ()))

    @jax.jit
    def chain(mats):
        dep = jnp.zeros((), jnp.float32)
        for w, (i, _) in zip(mats, shapes, strict=True):  # each product waits on the last through a scalar adding 0
            x = (jnp.ones((rows, i), jnp.float32) + dep).astype(dtype)
            dep = 1e-30 * jnp.mean(jax.lax.dot_general(x, w, contract, preferred_element_type=acc).astype(jnp.float32))
        return dep

    return best_seconds(chain, (mats,), repeats)


def synthetic_batch(
    cfg, keys: tuple[str, ...], num_actions: int = 15, seed: int = 0, inputs: str = "frames"
) -> dict[str, np.ndarray]:
    """Random batch shaped like the loader's: frames (or tokens + latent actions) and actions."""
    rng = np.random.default_rng(seed)
    b, t = cfg.batch_size, cfg.seq_len
    if inputs == "tokens":
        tok = cfg.tokenizer_model
        n = (cfg.image_size[0] // tok.patch_size) * (cfg.image_size[1] // tok.patch_size)
        batch = {
            "tokens": rng.integers(0, tok.vocab_size, (b, t, n), dtype=np.int32),
            "latent_actions": rng.integers(0, cfg.lam_model.vocab_size, (b, t), dtype=np.int32),
        }
    else:
        batch = {"frames": rng.integers(0, 256, (b, t, *cfg.image_size), dtype=np.uint8)}
    if "actions" in keys:
        batch["actions"] = rng.integers(0, num_actions, (b, t), dtype=np.int32)
    return {k: v for k, v in batch.items() if k in keys}


def params_by_path(tree) -> dict[str, int]:
    """Parameter count per '/'-joined path of each leaf."""
    import jax

    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): int(np.prod(x.shape))
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def with_time_positions(cfg, time_positions: str | None):
    """A dynamics config with ``--model.time-positions`` overridden (None: the preset's own)."""
    if time_positions is None:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, time_positions=time_positions))
