"""`jasmine bench sample`: frames/s of rollouts with and without the KV cache, and the pass times that bound
the cache's speed-up."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

from jasmine.bench.common import with_frame_tokenizer, with_time_positions


@dataclass(frozen=True)
class BenchSampleArgs:
    """Frames/s generating ``frames`` frames after ``context``, with and without the KV cache."""

    preset: str = "coinrun"
    """Dynamics preset whose architecture is timed (random weights)."""
    context: int = 1
    frames: int = 15
    batch_sizes: tuple[int, ...] = (1, 8)
    dynamics: Literal["maskgit", "causal", "diffusion"] = "maskgit"
    """Dynamics family timed; for causal and diffusion, MaskGIT's cached frames/s are printed beside it."""
    steps: int | None = None
    """MaskGIT steps per frame (default 25), or diffusion denoising steps K (default 16)."""
    dtype: str = "auto"
    """Compute dtype (auto = the preset's: float32 on CPU, bfloat16 on GPU)."""
    repeats: int = 1
    """Timed rollouts per setting (after a one-frame warm-up that compiles); the best is reported."""
    time_positions: Literal["absolute", "rope"] | None = None
    """Override the preset's ``--model.time-positions`` (absolute re-prefills the window past seq_len; rope
    keeps a ring cache)."""
    long_frames: int = 0
    """Also time a cached rollout of this many frames (past seq_len) and print its frames/s as a share of the
    ``frames`` rollout's (0: skip)."""


def pass_times(
    dyn, batch: int, window: int, n: int, action_dim: int, passes: int = 16, span: int | None = None
) -> tuple[float, float]:
    """Seconds per model pass of ``dyn``: (one frame from a KV cache of ``window`` frames, the ``span`` frames
    (default: the window) an uncached pass runs, without one).

    Each is timed as ``passes`` chained passes inside one jitted loop (best of 5), so
    dispatch overhead is excluded from both alike.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jasmine.models.dynamics import step_logits

    gd, st = nnx.split(dyn)
    span = span or window
    ids_BWN, a_BWA = jnp.zeros((batch, span, n), jnp.int32), jnp.zeros((batch, span, action_dim))
    mask_BWN = jnp.zeros(ids_BWN.shape, bool)  # unmasked, so each pass depends on the last one's output
    caches = jax.jit(lambda s: nnx.merge(gd, s).prefill(ids_BWN[:, :1], a_BWA[:, :1], window))(st)

    def frame(s, ids_BN, caches):
        return step_logits(nnx.merge(gd, s), ids_BN, mask_BWN[:, 0], a_BWA[:, 0], caches, 1)[0]

    def whole(s, ids_BWN, _):
        return nnx.merge(gd, s)(ids_BWN, mask_BWN, a_BWA)

    def timed(fn, ids):
        chain = jax.jit(
            lambda s, ids, c: jax.lax.fori_loop(
                0, passes, lambda _, x: jnp.argmax(fn(s, x, c), -1).astype(jnp.int32), ids
            )
        )
        jax.block_until_ready(chain(st, ids, caches))
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(chain(st, ids, caches))
            best = min(best, time.perf_counter() - t0)
        return best / passes

    return timed(frame, ids_BWN[:, 0]), timed(whole, ids_BWN)


def _rollout_fps(genie, window: int, opts, ctx, acts, frames: int, repeats: int) -> tuple[float, float]:
    """Best frames/s and seconds of ``repeats`` rollouts of ``frames`` frames (after a compiling one)."""
    import jax

    from jasmine.sample.rollout import Rollout

    roll = Rollout(genie, window, opts)
    C = ctx.shape[1]
    warm = 1 if C + frames <= window else window - C + 1  # past seq_len: also compile the slide (a re-prefill)
    jax.block_until_ready(roll.run(ctx, acts[:, : C + warm - 1], jax.random.key(2), num_frames=warm))  # compile
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(roll.run(ctx, acts, jax.random.key(3 + i), num_frames=frames))
        best = min(best, time.perf_counter() - t0)
    return ctx.shape[0] * frames / best, best


def bench_sample(args: BenchSampleArgs) -> dict[int, dict[str, float]]:
    """Per batch size: cached and uncached frames/s; for MaskGIT the pass-time bound on their ratio, for the
    causal family MaskGIT's cached frames/s beside it."""
    import jax
    from flax import nnx

    from jasmine.models.maskgit import working_steps
    from jasmine.presets import preset
    from jasmine.sample.rollout import SampleOptions
    from jasmine.train.components import COMPONENTS

    cfg = with_frame_tokenizer(
        dataclasses.replace(preset("dynamics", args.preset, args.dynamics), dtype=args.dtype), args.preset
    )
    cfg = with_time_positions(cfg, args.time_positions)

    def build(c):
        return COMPONENTS["dynamics"].build(c, nnx.Rngs(0), pretrained=False)

    genie = build(cfg)
    maskgit, continuous = genie.dynamics.maskgit_options, genie.dynamics.continuous
    h, w, _ = cfg.image_size
    n = (h // cfg.frame_tokenizer.patch_size) * (w // cfg.frame_tokenizer.patch_size)
    T = args.context + args.frames
    steps = (args.steps or 25) if maskgit else 25  # MaskGIT's steps (for the others: of the MaskGIT beside them)
    passes = len(working_steps(steps, n))
    opts = SampleOptions(steps=steps) if maskgit else SampleOptions(steps=args.steps) if continuous else SampleOptions()
    K = type(genie.dynamics).resolve_sampling(opts).steps
    how = (
        f"{steps} MaskGIT steps ({passes} change tokens)"
        if maskgit
        else f"{K} denoising steps"
        if continuous
        else "one token at a time"
    )
    print(
        f"sampling {args.frames} frames after {args.context} context, {args.dynamics} dynamics, {how}, seq_len "
        f"{cfg.seq_len}, {n} tokens/frame, {cfg.model.num_blocks}x{cfg.model.model_dim}, {cfg.model.time_positions} "
        f"time positions, on {jax.devices()[0].platform}"
    )
    rope = cfg.model.time_positions == "rope"
    span = genie.dynamics.receptive_frames(cfg.seq_len) if rope else cfg.seq_len  # what one uncached pass runs
    over = f"the {span} frames a frame depends on (rope: blocks x (seq_len - 1) + 1)" if rope else f"all {span} frames"
    if maskgit or continuous:
        k = passes if maskgit else K
        print(f"  per frame: cached = {k} one-frame passes + 1 to write the cache; uncached = {k} passes over {over}")
    else:
        print(
            f"  per frame: cached = {n + 1} one-slot passes ({n} tokens + 1 to write the last); uncached = {n} "
            f"passes over {over}, {n + 1} slots each"
        )
    other = None if maskgit else build(dataclasses.replace(cfg, dynamics="maskgit", mae_model=None))
    results = {}
    for b in args.batch_sizes:
        r = results[b] = {}
        ids = jax.random.randint(jax.random.key(0), (b, args.context, n), 0, cfg.tokenizer_model.vocab_size)
        ctx = (
            jax.numpy.tanh(jax.random.normal(jax.random.key(0), (b, args.context, n, cfg.mae_model.latent_dim)))
            if continuous
            else ids
        )
        acts = jax.random.randint(jax.random.key(1), (b, T - 1), 0, cfg.lam_model.vocab_size)
        for cache in (True, False):
            fps, best = _rollout_fps(
                genie, cfg.seq_len, dataclasses.replace(opts, cache=cache), ctx, acts, args.frames, args.repeats
            )
            r["cached" if cache else "uncached"] = fps
            print(
                f"  batch {b}  {'cached  ' if cache else 'uncached'}  {fps:8.2f} frames/s  ({best:.2f} s per rollout)"
            )
        speedup = r["cached"] / r["uncached"]
        if args.long_frames:
            long_acts = jax.random.randint(jax.random.key(1), (b, args.context + args.long_frames - 1), 0, 4)
            r["long_cached"], best = _rollout_fps(
                genie, cfg.seq_len, opts, ctx, long_acts, args.long_frames, args.repeats
            )
            how_long = "a ring cache" if cfg.model.time_positions == "rope" else "re-prefilling past seq_len"
            print(
                f"  batch {b}  cached {args.long_frames} frames {r['long_cached']:8.2f} frames/s ({best:.2f} s): "
                f"{r['long_cached'] / r['cached']:.0%} of {args.frames} frames' ({how_long})"
            )
        if other is not None:
            r["maskgit_cached"], best = _rollout_fps(
                other, cfg.seq_len, SampleOptions(steps=steps), ids, acts, args.frames, args.repeats
            )
            print(
                f"  batch {b}  cache speed-up {speedup:.1f}x;  MaskGIT ({steps} steps, cached) beside it: "
                f"{r['maskgit_cached']:.2f} frames/s ({best:.2f} s per rollout)"
            )
            continue
        frame_s, whole_s = pass_times(genie.dynamics, b, cfg.seq_len, n, cfg.lam_model.code_dim, span=span)
        r["bound"] = bound = passes * whole_s / ((passes + 1) * frame_s)
        print(
            f"  batch {b}  one pass: 1 frame {frame_s * 1e3:.2f} ms, {span} frames {whole_s * 1e3:.2f} ms "
            f"({whole_s / frame_s:.1f}x for {span}x the tokens)"
        )
        print(
            f"  batch {b}  cache speed-up {speedup:.1f}x  (pass-time bound {bound:.1f}x; {speedup / bound:.0%} of it)"
        )
    return results
