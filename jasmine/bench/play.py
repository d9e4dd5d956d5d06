"""`jasmine bench play`: latency from an action to its frame, in-process and over the real WebSocket server."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class BenchPlayArgs:
    """Latency from an action to its frame being ready in ``jasmine play``: median and p95, in-process and
    through the server on loopback (WebSocket round trip, PNG included)."""

    run: Path | None = None
    """Dynamics run (default: an untrained model of --preset; the latency does not depend on the weights)."""
    preset: str = "tiny"
    """Dynamics preset when no --run is given."""
    dynamics: Literal["maskgit", "causal", "diffusion"] = "maskgit"
    """With --preset: the dynamics family of that preset timed."""
    time_positions: Literal["absolute", "rope"] | None = None
    """With --preset: override its ``--model.time-positions`` (rope slides the window without re-prefilling)."""
    steps: int = 100
    """Timed actions, after compiling; past the model's seq_len the window slides, as in long play."""
    sampling_steps: int | None = None
    """MaskGIT steps per frame, as ``jasmine play --steps`` (default: the run's or preset's sampling, 25): fewer
    steps, fewer passes per frame."""
    dtype: Literal["run", "float32", "bfloat16"] = "run"
    """What the model computes in, as ``jasmine play --dtype``: run (the run's or preset's --dtype; auto: bf16 on
    GPU, float32 on CPU) | float32 | bfloat16 (weights stored in bf16)."""
    against: Literal["float32", "bfloat16"] | None = None
    """Also load the model computing in this dtype and time both on the same actions, alternating frame by frame in
    this process: their latency ratio, with the machine's drift cancelled (e.g. --against bfloat16)."""
    websocket: bool = True
    """Also time the round trip through the play server (needs the play extra)."""
    think_ms: float = 100.0
    """Pause between actions in the WebSocket run, as a player's keys are spaced: the server writes each frame
    into the caches after sending it, within the pause (0: back to back, the write inside the next round trip)."""
    seed: int = 0


def _play_game(args: BenchPlayArgs):
    from flax import nnx

    from jasmine.bench.common import with_frame_tokenizer, with_time_positions
    from jasmine.play.world import Bindings, Game, load_game
    from jasmine.presets import preset
    from jasmine.sample.clips import compute_dtype, num_action_codes
    from jasmine.sample.rollout import Rollout, SampleOptions
    from jasmine.train.components import COMPONENTS

    if args.run is not None:
        return load_game(args.run, steps=args.sampling_steps, dtype=args.dtype), f"run {args.run}"
    # the preset's tokenizer chunks (16 frames at coinrun): play decodes each frame within its chunk
    cfg = preset("dynamics", args.preset, args.dynamics)
    cfg = with_time_positions(with_frame_tokenizer(cfg, args.preset), args.time_positions)
    if args.dtype != "run":
        cfg = dataclasses.replace(cfg, dtype=args.dtype, param_dtype=args.dtype)  # untrained: no update to round away
    genie = COMPONENTS["dynamics"].build(cfg, nnx.Rngs(0), pretrained=False)
    opts = SampleOptions(**dataclasses.asdict(cfg.val_sampling))
    if args.sampling_steps is not None:
        opts = dataclasses.replace(opts, steps=args.sampling_steps)
    roll = Rollout(genie, cfg.seq_len, opts)
    game = Game(
        roll,
        Bindings.for_codes(num_action_codes(genie)),
        genie.tokenizer.image_shape,
        family=genie.dynamics.family,
        name=f"{args.preset} preset",
        dtype=compute_dtype(cfg, "run"),  # the preset's, with any --dtype already in it
    )
    return game, f"untrained {args.preset} preset"


def _quantiles(ms: list[float]) -> str:
    return (
        f"median {np.median(ms):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms   ({1000 / np.median(ms):.1f} frames/s)"
    )


def _breakdown(game, dynamics_ms: float, total_ms: float) -> dict[str, float]:
    """Where a frame's time goes: the dynamics' cached passes against streaming their weights from memory once
    per pass at the bandwidth measured in this process (a pass over one frame's few tokens reads every weight)."""
    import jax
    from flax import nnx

    from jasmine.bench.common import matmul_chain_seconds, matmul_peak, memory_bandwidth
    from jasmine.models.linear import Linear
    from jasmine.models.maskgit import working_steps

    genie = nnx.merge(game.roll.graphdef, game.roll.state)
    dyn, n = genie.dynamics, genie.tokens_per_frame
    weights = jax.tree.leaves(nnx.state(dyn, nnx.Param))
    weight_bytes, params = sum(x.nbytes for x in weights), sum(x.size for x in weights)
    opts = game.roll.opts.resolved(dyn.maskgit_options)  # the family's defaults are filled in by the Rollout
    # the passes that draw the frame: writing it into the caches (one more) waits until it is out (Stream.settle)
    passes = len(working_steps(opts.steps, n)) if dyn.maskgit_options else opts.steps if dyn.continuous else n
    bw, peak = memory_bandwidth(), matmul_peak(str(weights[0].dtype))
    floor_ms = passes * weight_bytes / bw * 1e3
    rows = dyn.slots_per_pass(n)  # the rows of a pass's matmuls: its tokens, with any action or level slot
    flops_ms = passes * 2 * params * rows / peak * 1e3  # a multiply-add per weight and row
    # the same products timed at that width, as a chain of the dynamics' own kernel shapes
    layers = [m for _, m in nnx.iter_graph(dyn) if isinstance(m, Linear)]
    kernels = [(m.in_features, m.out_features) for m in layers]
    out_in = any(m.out_in for m in layers)  # the layout sampling stores them in (serving_layout)
    thin_ms = passes * matmul_chain_seconds(kernels, rows, dtype=weights[0].dtype, out_in=out_in) * 1e3
    row_s = f"{rows} row" + "s" * (rows != 1)
    print(
        f"  per frame: dynamics {dynamics_ms:.1f} ms ({passes} passes, {dynamics_ms / passes:.1f} ms each), the rest "
        f"(decode, PNG) {total_ms - dynamics_ms:.1f} ms\n"
        f"    each pass reads the dynamics' {weight_bytes / 2**20:.1f} MiB of weights: at {bw / 1e9:.1f} GB/s "
        f"(measured here) that takes {floor_ms:.1f} ms per frame; its matmuls over {row_s} at the "
        f"{peak / 1e9:.0f} GFLOP/s matmul peak (measured here) {flops_ms:.1f} ms: the larger is "
        f"{max(floor_ms, flops_ms) / dynamics_ms:.0%} of the dynamics' time\n"
        f"    those matmuls as thin as a pass makes them ({row_s} by each of the {len(kernels)} {weights[0].dtype} "
        f"kernels, chained,"
        f" timed here): {thin_ms:.1f} ms per frame, {thin_ms / dynamics_ms:.0%} of the dynamics' time"
    )
    return {
        "dynamics_ms": dynamics_ms,
        "passes": passes,
        "weight_mib": weight_bytes / 2**20,
        "weight_dtype": str(weights[0].dtype),
        "bandwidth_gbs": bw / 1e9,
        "weight_streaming_ms": floor_ms,
        "matmul_peak_gflops": peak / 1e9,
        "matmul_ms": flops_ms,
        "thin_matmul_rows": rows,
        "thin_matmul_ms": thin_ms,
    }


def decode_cost(game, repeats: int = 2) -> dict[str, float] | None:
    """Decoding each frame of a tokenizer chunk (longer than a frame) as play does, from the decoder's cached K/V of
    the chunk's earlier frames, against decoding the chunk up to the frame again: ms per frame, best of
    ``repeats`` at each position, averaged over the chunk's positions (and the chunk's last frame's)."""
    import jax

    roll, S = game.roll, game.roll.tokenizer_window
    if S == 1:
        return None
    x = np.random.default_rng(0).integers(0, 256, (1, S, *game.frame_shape), dtype=np.uint8)
    tokens = roll.encode(x)
    frames = [tokens[:, t] for t in range(S)]
    cached, whole = np.full(S, np.inf), np.full(S, np.inf)
    for _ in range(repeats + 1):  # the first round compiles every chunk length
        caches = None
        for t in range(S):
            t0 = time.perf_counter()
            _, caches = roll.decode_frame(frames, t, caches)
            cached[t] = min(cached[t], time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(roll.decode(tokens[:, : t + 1]))
            whole[t] = min(whole[t], time.perf_counter() - t0)
    res = {"chunk": S, "cached_ms": 1e3 * cached.mean(), "whole_chunk_ms": 1e3 * whole.mean(),
           "whole_chunk_last_ms": 1e3 * whole[-1]}  # fmt: skip
    print(
        f"  decoding in the tokenizer's {S}-frame chunks: from the cached K/V {res['cached_ms']:.1f} ms a frame, "
        f"re-decoding the chunk up to it {res['whole_chunk_ms']:.1f} ms (mean over the chunk; "
        f"{res['whole_chunk_last_ms']:.1f} ms at its last frame)"
    )
    return res


def _against(args: BenchPlayArgs, game, frame: np.ndarray, codes: list[int]) -> dict[str, float]:
    """The same actions on ``game`` and on the model loaded in ``args.against``, alternating which goes first:
    each one's median latency and the median of the per-action ratios."""
    from jasmine.play.world import World

    other, _ = _play_game(dataclasses.replace(args, dtype=args.against))
    other.warm_up()
    worlds = [World(g, frame[None, None], np.zeros((1, 0), np.int32), args.seed, "bench") for g in (game, other)]
    ms = [[], []]
    for i, code in enumerate(codes):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            worlds[j].step(code)
            worlds[j].message()
            ms[j].append((time.perf_counter() - t0) * 1e3)
            worlds[j].settle()  # after the frame is out, as play does
    ratio = float(np.median(np.asarray(ms[1]) / np.asarray(ms[0])))
    print(
        f"  against {other.dtype}, the same {len(codes)} actions alternating: {game.dtype} median "
        f"{np.median(ms[0]):.1f} ms, {other.dtype} {np.median(ms[1]):.1f} ms; {other.dtype} / {game.dtype} "
        f"{ratio:.2f} (median of per-action ratios)"
    )
    return {"dtype": other.dtype, "median_ms": float(np.median(ms[0])), "against_ms": float(np.median(ms[1])),
            "ratio": ratio}  # fmt: skip


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
    print(
        f"play latency, {what}: {game.family} dynamics computing in {game.dtype}, {h}x{w}x{c} frames, "
        f"seq_len {window}, {game.num_codes} actions, sampling {game.roll.opts}"
    )
    print(f"  compiled (encode, frames, sliding window, decode) in {game.warm_up():.1f}s")
    world = World(game, frame[None, None], np.zeros((1, 0), np.int32), args.seed, "bench")
    ms, dyn_ms, settle_ms = [], [], []
    for code in codes:
        t0 = time.perf_counter()
        world.step(code)
        world.message()  # the PNG the page gets
        ms.append((time.perf_counter() - t0) * 1e3)
        dyn_ms.append(world.dynamics_ms)
        settle_ms.append(world.settle())  # the frame written into the caches, after it is out (as play does)
    frame_ms = np.add(ms, settle_ms)
    results = {
        "in_process": {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))},
        "frame_time": {"median_ms": float(np.median(frame_ms)), "settle_median_ms": float(np.median(settle_ms))},
    }
    print(f"  in-process, {args.steps} actions, action to frame   {_quantiles(ms)}")
    print(
        f"    then writing the frame into the caches (play does it once the frame is out) {np.median(settle_ms):.1f} "
        f"ms: a frame every {np.median(frame_ms):.1f} ms with actions back to back"
    )
    first, slid = ms[: window - 1], ms[window - 1 :]
    print(f"    frames 1..{window - 1} (within the first window)   {_quantiles(first)}")
    if slid:
        how = "ring cache" if game.roll.rope else "cache re-prefilled"
        print(f"    later frames (window slides: {how})   {_quantiles(slid)}")
    results["breakdown"] = _breakdown(game, float(np.median(dyn_ms)), float(np.median(ms)))
    results["decode"] = decode_cost(game)
    if args.against is not None:
        results["against"] = _against(args, game, frame, codes)
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
                time.sleep(args.think_ms / 1e3)
                t0 = time.perf_counter()
                ws.send(f'{{"type": "action", "code": {code}}}')
                ws.recv()
                ms.append((time.perf_counter() - t0) * 1e3)
        results["websocket"] = {
            "median_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)),
            "think_ms": args.think_ms,
        }
        print(f"  WebSocket round trip, {args.steps} actions {args.think_ms:g} ms apart   {_quantiles(ms)}")
    return results
