"""Benchmarks behind ``jasmine bench``: each prints figures measured in one run."""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro


@dataclass(frozen=True)
class BenchDataArgs:
    """Loader frames/s and bytes/frame per record layout, and a train step fed by the loader against one fed
    a synthetic batch (default: batches of 48 x 16 frames)."""

    dir: tyro.conf.Positional[Path]
    """Dataset directory."""
    split: str = "train"
    batch_size: int = 48
    seq_len: int = 16
    batches: int = 50
    """Timed batches (after 3 warm-up batches)."""
    num_workers: tuple[int, ...] = (0, 2)
    """Grain worker-process counts to measure (0 = in-process)."""
    read_threads: tuple[int, ...] = (0,)
    """Grain read-ahead thread counts to measure (0 = read on demand, the loader's default; Grain's own is 16)."""
    layouts: tuple[int, ...] = (2, 3)
    """Dataset format versions to compare (2: chunked, 3: grouped); the split is first copied into each layout
    it is not already in, under --scratch."""
    scratch: Path | None = None
    """Where the copies go (default: a temporary directory, removed afterwards)."""
    step: str = "tokenizer"
    """Component whose --step-preset train step is timed fed by each layout's loader and by a synthetic batch
    ('none' to skip)."""
    step_preset: str = "tiny"
    steps: int = 20
    """Timed train steps per input."""
    seed: int = 0


def with_frame_tokenizer(cfg, preset_name: str):
    """A dynamics config whose family reads MAE latents gets the MAE preset's architecture (benchmarks build
    untrained models, with no tokenizer run to take it from)."""
    from jasmine.config import preset
    from jasmine.models.genie import DYNAMICS

    if DYNAMICS[cfg.dynamics].continuous and cfg.mae_model is None:
        return dataclasses.replace(cfg, mae_model=preset("mae", preset_name).model)
    return cfg


def bench_data(args: BenchDataArgs) -> dict[int, dict]:
    import tempfile

    from jasmine.data.dataset import bytes_per_frame, read_metadata, relayout
    from jasmine.data.loader import make_loader

    meta = read_metadata(args.dir)
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(args.scratch or tmp)
        roots = {}
        for version in args.layouts:
            if version == meta["format_version"]:
                roots[version] = Path(args.dir)
            else:
                roots[version] = scratch / f"format{version}"
                print(f"copying {args.dir}/{args.split} into format {version} at {roots[version]}")
                relayout(args.dir, roots[version], version, overwrite=True, splits=(args.split,))
                os.sync()  # the copy's write-back must not compete with the timed reads
        for version, root in roots.items():
            results[version] = {"bytes_per_frame": bytes_per_frame(root, (args.split,)),
                                "chunk_len": read_metadata(root)["chunk_len"]}
        # in-process runs first: a run with worker processes can leave them busy for a while after it
        for workers, threads, (version, root) in itertools.product(args.num_workers, args.read_threads, roots.items()):
            r = results[version]
            it = iter(make_loader(root, args.split, seq_len=args.seq_len, batch_size=args.batch_size, seed=args.seed,
                                  num_workers=workers, process_index=0, process_count=1, read_threads=threads))
            for _ in range(3):
                next(it)
            t0 = time.perf_counter()
            frames = sum(int(np.prod(next(it)["frames"].shape[:2])) for _ in range(args.batches))
            dt = time.perf_counter() - t0
            r[workers if threads == args.read_threads[0] else (workers, threads)] = frames / dt
            h, w, c = next(it)["frames"].shape[2:]
            print(f"format {version} ({r['chunk_len']}-frame records, {r['bytes_per_frame']:,.0f} B/frame on disk)  "
                  f"workers={workers} read_threads={threads}  batch {args.batch_size}x{args.seq_len} of {h}x{w}x{c}  "
                  f"{frames / dt:,.0f} frames/s  ({args.batches / dt:.1f} batches/s)")
            del it
            if workers:
                gc.collect()
                time.sleep(2.0)
        if len(roots) > 1:
            base, *rest = list(roots)
            for v in rest:
                print(f"format {v} vs {base}: " + ", ".join(f"workers={w} {results[v][w] / results[base][w]:.2f}x"
                                                            for w in args.num_workers)
                      + f"; {results[v]['bytes_per_frame'] / results[base]['bytes_per_frame']:.1f}x the bytes")
        if args.step != "none":
            results["step"] = _bench_step_with_data(args, roots)
    return results


def _bench_step_with_data(args: BenchDataArgs, roots: dict[int, Path]) -> dict[str, float]:
    """Seconds per train step the way the loop runs it (load, then dispatch), fed by each layout's in-process
    loader and by one synthetic batch."""
    import jax

    from jasmine.config import preset
    from jasmine.data.loader import make_loader
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import setup
    from jasmine.train.mesh import global_batch, mesh_for

    component = COMPONENTS[args.step]
    cfg = preset(args.step, args.step_preset)
    mesh = mesh_for(cfg)
    _, state, _, step_fn = setup(cfg, component, mesh, pretrained=False)
    keys = component.batch_keys(cfg)
    fixed = synthetic_batch(cfg, keys, 15)
    sources = {"synthetic": None} | {f"format {v}": root for v, root in roots.items()}
    out = {}
    for name, root in sources.items():
        it = None if root is None else iter(make_loader(root, args.split, seq_len=cfg.seq_len,
                                                        batch_size=cfg.batch_size, seed=args.seed, num_workers=0,
                                                        process_index=0, process_count=1, image_shape=cfg.image_size))
        feed = (lambda: fixed) if it is None else (lambda: {k: v for k, v in next(it).items() if k in keys})
        for _ in range(2):
            state, metrics = step_fn(state, global_batch(feed(), mesh))
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step_fn(state, global_batch(feed(), mesh))
        jax.block_until_ready(metrics)
        out[name] = (time.perf_counter() - t0) / args.steps
    syn = out["synthetic"]
    print(f"{args.step} train step ({args.step_preset} preset, batch {cfg.batch_size}x{cfg.seq_len}), loader in-process: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" + ("" if k == "synthetic" else f" ({v / syn:.2f}x)")
                      for k, v in out.items()))
    return out


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
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synthetic_batch(cfg, keys: tuple[str, ...], num_actions: int = 15, seed: int = 0,
                    inputs: str = "frames") -> dict[str, np.ndarray]:
    """Random batch shaped like the loader's: frames (or tokens + latent actions) and actions."""
    rng = np.random.default_rng(seed)
    b, t = cfg.batch_size, cfg.seq_len
    if inputs == "tokens":
        tok = cfg.tokenizer_model
        n = (cfg.image_size[0] // tok.patch_size) * (cfg.image_size[1] // tok.patch_size)
        batch = {"tokens": rng.integers(0, tok.vocab_size, (b, t, n), dtype=np.int32),
                 "latent_actions": rng.integers(0, cfg.lam_model.vocab_size, (b, t), dtype=np.int32)}
    else:
        batch = {"frames": rng.integers(0, 256, (b, t, *cfg.image_size), dtype=np.uint8)}
    if "actions" in keys:
        batch["actions"] = rng.integers(0, num_actions, (b, t), dtype=np.int32)
    return {k: v for k, v in batch.items() if k in keys}


def params_by_path(tree) -> dict[str, int]:
    """Parameter count per '/'-joined path of each leaf."""
    import jax

    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): int(np.prod(x.shape))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def bench_train(cfg, component, timed_steps: int = 10, inputs: str = "frames") -> dict[str, float]:
    """Median step time, tokens/s, XLA FLOPs, model FLOPs (6 x params x tokens) and MFU."""
    import jax

    from jasmine import config as C
    from jasmine.train.components import precision
    from jasmine.train.loop import count_params, setup
    from jasmine.train.mesh import global_batch, mesh_for

    mesh = mesh_for(cfg)
    C.validate(cfg, mesh.size)
    model, state, _, step_fn = setup(cfg, component, mesh, pretrained=False)  # random weights time the same
    if inputs == "tokens" and not hasattr(cfg, "tokenizer_model"):
        raise ValueError(f"--inputs tokens is only for dynamics, not {component.name}")
    num_actions = getattr(cfg, "num_actions", 0) or 15
    batch = global_batch(synthetic_batch(cfg, component.batch_keys(cfg), num_actions, inputs=inputs), mesh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) * mesh.size  # the cost analysis is of one device's partition
    fused = compiled.as_text().count("__cudnn$fmha")  # cuDNN fused attention custom calls, forward and backward
    times = []
    for i in range(2 + timed_steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, step_fn.schedule)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    params = count_params(state["params"])
    tokens = component.tokens_per_batch(cfg)
    sizes = {**params_by_path(state["params"]), **params_by_path(state["frozen"])}
    model_flops = component.model_flops(cfg, sizes, inputs)

    peak = matmul_peak(precision(cfg).dtype)
    r = {"step_s": step_s, "tokens_per_s": tokens / step_s, "xla_flops": xla_flops, "model_flops": model_flops,
         "params": params, "peak_flops": peak, "mfu": model_flops / step_s / peak, "hfu": xla_flops / step_s / peak,
         "compile_s": compile_s, "cudnn_attention_calls": fused}
    mem = state_memory(state)
    r.update({f"{k}_bytes": v for k, v in mem.items()})
    dev = jax.devices()[0]
    print(f"{component.name}: {params / 1e6:.1f}M params, batch {cfg.batch_size}x{cfg.seq_len} of "
          f"{'x'.join(map(str, cfg.image_size))} ({inputs}), {tokens} tokens/step, remat {cfg.remat}, "
          f"{precision(cfg).dtype.name} on {mesh.size}x {dev.platform} ({dev.device_kind})")
    print(f"  compile          {compile_s:.1f} s")
    print(f"  attention        --attention {cfg.attention}: {fused} cuDNN fused-attention calls in the compiled step")
    print(f"  step time        {step_s:.3f} s (median of {timed_steps}; min {min(times):.3f}, max {max(times):.3f})")
    print(f"  tokens/s         {r['tokens_per_s']:,.0f}")
    print(f"  XLA FLOPs/step   {xla_flops / 1e9:,.1f} GFLOP (cost analysis, all devices)")
    print(f"  model FLOPs/step {model_flops / 1e9:,.1f} GFLOP (6 x trained params x tokens, 2 x frozen forwards)")
    print(f"  matmul peak      {peak / 1e9:,.1f} GFLOP/s ({precision(cfg).dtype.name} 2048^2, same process)")
    print(f"  MFU              {r['mfu']:.1%}   (HFU from XLA FLOPs: {r['hfu']:.1%})")
    mib = lambda b: f"{b / 2**20:,.1f} MiB"
    line = lambda p: (f"params {mib(mem[p + 'params'])} + frozen {mib(mem[p + 'frozen'])} + optimizer "
                      f"{mib(mem[p + 'opt'])} = {mib(mem[p + 'total'])}")
    print(f"  state/device     {line('')} (fullest of {mesh.size} devices; mesh dp {mesh.shape['dp']} x fsdp "
          f"{mesh.shape['fsdp']})")
    print(f"  replicated (dp)  {line('dp_')}  -> this mesh holds {mem['total'] / mem['dp_total']:.2f}x")
    return r


def state_memory(state) -> dict[str, int]:
    """Bytes of the train state on the fullest device (``params``, ``frozen``, ``opt``, ``total``), and the
    same replicated on every device as data parallelism holds them (``dp_*``)."""
    import jax

    from jasmine.train.mesh import bytes_per_device

    held = {k: bytes_per_device(state[k]) for k in ("params", "frozen", "opt")}
    fullest = max(set().union(*held.values()), key=lambda d: sum(h.get(d, 0) for h in held.values()))
    mem = {k: h.get(fullest, 0) for k, h in held.items()}
    mem |= {f"dp_{k}": int(sum(x.nbytes for x in jax.tree.leaves(state[k]))) for k in held}
    return mem | {"total": sum(mem[k] for k in held), "dp_total": sum(mem[f"dp_{k}"] for k in held)}


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


def pass_times(dyn, batch: int, window: int, n: int, action_dim: int, passes: int = 16) -> tuple[float, float]:
    """Seconds per model pass of ``dyn``: (one frame from a KV cache, the whole window without one).

    Each is timed as ``passes`` chained passes inside one jitted loop (best of 5), so
    dispatch overhead is excluded from both alike.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jasmine.models.dynamics import step_logits

    gd, st = nnx.split(dyn)
    ids_BWN, a_BWA = jnp.zeros((batch, window, n), jnp.int32), jnp.zeros((batch, window, action_dim))
    mask_BWN = jnp.zeros(ids_BWN.shape, bool)  # unmasked, so each pass depends on the last one's output
    caches = jax.jit(lambda s: nnx.merge(gd, s).prefill(ids_BWN[:, :1], a_BWA[:, :1], window))(st)

    def frame(s, ids_BN, caches):
        return step_logits(nnx.merge(gd, s), ids_BN, mask_BWN[:, 0], a_BWA[:, 0], caches, 1)[0]

    def whole(s, ids_BWN, _):
        return nnx.merge(gd, s)(ids_BWN, mask_BWN, a_BWA)

    def timed(fn, ids):
        chain = jax.jit(lambda s, ids, c: jax.lax.fori_loop(
            0, passes, lambda _, x: jnp.argmax(fn(s, x, c), -1).astype(jnp.int32), ids))
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
    jax.block_until_ready(roll.run(ctx, acts[:, : ctx.shape[1]], jax.random.key(2), num_frames=1))  # compile
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

    from jasmine.config import preset
    from jasmine.models.maskgit import working_steps
    from jasmine.sample.rollout import SampleOptions
    from jasmine.train.components import COMPONENTS

    cfg = with_frame_tokenizer(dataclasses.replace(preset("dynamics", args.preset), dtype=args.dtype,
                                                   dynamics=args.dynamics), args.preset)
    build = lambda c: COMPONENTS["dynamics"].build(c, nnx.Rngs(0), pretrained=False)
    genie = build(cfg)
    maskgit, continuous = genie.dynamics.maskgit_options, genie.dynamics.continuous
    h, w, _ = cfg.image_size
    n = (h // cfg.frame_tokenizer.patch_size) * (w // cfg.frame_tokenizer.patch_size)
    T = args.context + args.frames
    steps = (args.steps or 25) if maskgit else 25  # MaskGIT's steps (for the others: of the MaskGIT beside them)
    passes = len(working_steps(steps, n))
    opts = SampleOptions(steps=steps) if maskgit else SampleOptions(steps=args.steps) if continuous else SampleOptions()
    K = type(genie.dynamics).resolve_sampling(opts).steps
    how = (f"{steps} MaskGIT steps ({passes} change tokens)" if maskgit else f"{K} denoising steps" if continuous
           else "one token at a time")
    print(f"sampling {args.frames} frames after {args.context} context, {args.dynamics} dynamics, {how}, seq_len "
          f"{cfg.seq_len}, {n} tokens/frame, {cfg.model.num_blocks}x{cfg.model.model_dim} on {jax.devices()[0].platform}")
    if maskgit or continuous:
        k = passes if maskgit else K
        print(f"  per frame: cached = {k} one-frame passes + 1 to write the cache; uncached = {k} passes over all "
              f"{cfg.seq_len} frames")
    else:
        print(f"  per frame: cached = {n + 1} one-slot passes ({n} tokens + 1 to write the last); uncached = {n} "
              f"passes over all {cfg.seq_len} x {n + 1} slots")
    other = None if maskgit else build(dataclasses.replace(cfg, dynamics="maskgit", mae_model=None))
    results = {}
    for b in args.batch_sizes:
        r = results[b] = {}
        ids = jax.random.randint(jax.random.key(0), (b, args.context, n), 0, cfg.tokenizer_model.vocab_size)
        ctx = jax.numpy.tanh(jax.random.normal(jax.random.key(0), (b, args.context, n, cfg.mae_model.latent_dim))) \
            if continuous else ids
        acts = jax.random.randint(jax.random.key(1), (b, T - 1), 0, cfg.lam_model.vocab_size)
        for cache in (True, False):
            fps, best = _rollout_fps(genie, cfg.seq_len, dataclasses.replace(opts, cache=cache), ctx, acts,
                                     args.frames, args.repeats)
            r["cached" if cache else "uncached"] = fps
            print(f"  batch {b}  {'cached  ' if cache else 'uncached'}  {fps:8.2f} frames/s  ({best:.2f} s per rollout)")
        speedup = r["cached"] / r["uncached"]
        if other is not None:
            r["maskgit_cached"], best = _rollout_fps(other, cfg.seq_len, SampleOptions(steps=steps), ids, acts,
                                                     args.frames, args.repeats)
            print(f"  batch {b}  cache speed-up {speedup:.1f}x;  MaskGIT ({steps} steps, cached) beside it: "
                  f"{r['maskgit_cached']:.2f} frames/s ({best:.2f} s per rollout)")
            continue
        frame_s, whole_s = pass_times(genie.dynamics, b, cfg.seq_len, n, cfg.lam_model.code_dim)
        r["bound"] = bound = passes * whole_s / ((passes + 1) * frame_s)
        print(f"  batch {b}  one pass: 1 frame {frame_s * 1e3:.2f} ms, {cfg.seq_len} frames {whole_s * 1e3:.2f} ms "
              f"({whole_s / frame_s:.1f}x for {cfg.seq_len}x the tokens)")
        print(f"  batch {b}  cache speed-up {speedup:.1f}x  (pass-time bound {bound:.1f}x; {speedup / bound:.0%} of it)")
    return results


@dataclass(frozen=True)
class BenchPlayArgs:
    """Latency from an action to its frame being ready in ``jasmine play``: median and p95, in-process and
    through the server on loopback (WebSocket round trip, PNG included)."""

    run: Path | None = None
    """Dynamics run (default: an untrained model of --preset; the latency does not depend on the weights)."""
    preset: str = "tiny"
    """Dynamics preset when no --run is given."""
    steps: int = 100
    """Timed actions, after compiling; past the model's seq_len the window slides, as in long play."""
    websocket: bool = True
    """Also time the round trip through the play server (needs the play extra)."""
    seed: int = 0


def _play_game(args: BenchPlayArgs):
    from flax import nnx

    from jasmine.config import preset
    from jasmine.play.world import Bindings, Game, load_game
    from jasmine.sample.clips import num_action_codes
    from jasmine.sample.rollout import Rollout, SampleOptions
    from jasmine.train.components import COMPONENTS

    if args.run is not None:
        return load_game(args.run), f"run {args.run}"
    cfg = preset("dynamics", args.preset)
    genie = COMPONENTS["dynamics"].build(cfg, nnx.Rngs(0), pretrained=False)
    roll = Rollout(genie, cfg.seq_len, SampleOptions(**dataclasses.asdict(cfg.val_sampling)))
    game = Game(roll, Bindings.for_codes(num_action_codes(genie)), genie.tokenizer.image_shape,
                tokenizer_window=genie.tokenizer_window, family=genie.dynamics.family, name=f"{args.preset} preset")
    return game, f"untrained {args.preset} preset"


def _quantiles(ms: list[float]) -> str:
    return f"median {np.median(ms):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms   ({1000 / np.median(ms):.1f} frames/s)"


def bench_play(args: BenchPlayArgs) -> dict[str, dict[str, float]]:
    import io

    from PIL import Image

    from jasmine.play.world import World

    game, what = _play_game(args)
    h, w, c = game.frame_shape
    rng = np.random.default_rng(args.seed)
    frame = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    codes = rng.integers(0, game.num_codes, args.steps).tolist()
    window = game.roll.window
    print(f"play latency, {what}: {game.family} dynamics, {h}x{w}x{c} frames, seq_len {window}, "
          f"{game.num_codes} actions, sampling {game.roll.opts}")
    print(f"  compiled (encode, frames, sliding window, decode) in {game.warm_up():.1f}s")
    world = World(game, frame[None, None], np.zeros((1, 0), np.int32), args.seed, "bench")
    ms = []
    for code in codes:
        t0 = time.perf_counter()
        world.step(code)
        world.message()  # the PNG the page gets
        ms.append((time.perf_counter() - t0) * 1e3)
    results = {"in_process": {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}}
    print(f"  in-process, {args.steps} actions   {_quantiles(ms)}")
    first, slid = ms[: window - 1], ms[window - 1 :]
    print(f"    frames 1..{window - 1} (within the first window)   {_quantiles(first)}")
    if slid:
        print(f"    later frames (window slides: cache re-prefilled)   {_quantiles(slid)}")
    if args.websocket:
        from websockets.sync.client import connect

        from jasmine.play.server import Background, make_app

        buf = io.BytesIO()
        Image.fromarray(frame.squeeze(-1) if c == 1 else frame).save(buf, format="PNG")
        with Background(make_app(game, seed=args.seed)) as url, connect(url.replace("http", "ws") + "/ws") as ws:
            ws.recv()  # hello
            ws.send(buf.getvalue())
            ws.recv()
            ms = []
            for code in codes:
                t0 = time.perf_counter()
                ws.send(f'{{"type": "action", "code": {code}}}')
                ws.recv()
                ms.append((time.perf_counter() - t0) * 1e3)
        results["websocket"] = {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}
        print(f"  WebSocket round trip, {args.steps} actions   {_quantiles(ms)}")
    return results
