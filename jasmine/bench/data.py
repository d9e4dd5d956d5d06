"""`jasmine bench data`: loader throughput per record layout, and whether the loader slows a train step."""

from __future__ import annotations

import gc
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from jasmine.bench.common import synthetic_batch


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
            results[version] = {
                "bytes_per_frame": bytes_per_frame(root, (args.split,)),
                "chunk_len": read_metadata(root)["chunk_len"],
            }
        # in-process runs first: a run with worker processes can leave them busy for a while after it
        for workers, threads, (version, root) in itertools.product(args.num_workers, args.read_threads, roots.items()):
            r = results[version]
            it = iter(
                make_loader(
                    root,
                    args.split,
                    seq_len=args.seq_len,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    num_workers=workers,
                    process_index=0,
                    process_count=1,
                    read_threads=threads,
                )
            )
            for _ in range(3):
                next(it)
            t0 = time.perf_counter()
            frames = sum(int(np.prod(next(it)["frames"].shape[:2])) for _ in range(args.batches))
            dt = time.perf_counter() - t0
            r[workers if threads == args.read_threads[0] else (workers, threads)] = frames / dt
            h, w, c = next(it)["frames"].shape[2:]
            print(
                f"format {version} ({r['chunk_len']}-frame records, {r['bytes_per_frame']:,.0f} B/frame on disk)  "
                f"workers={workers} read_threads={threads}  batch {args.batch_size}x{args.seq_len} of {h}x{w}x{c}  "
                f"{frames / dt:,.0f} frames/s  ({args.batches / dt:.1f} batches/s)"
            )
            del it
            if workers:
                gc.collect()
                time.sleep(2.0)
        if len(roots) > 1:
            base, *rest = list(roots)
            for v in rest:
                print(
                    f"format {v} vs {base}: "
                    + ", ".join(f"workers={w} {results[v][w] / results[base][w]:.2f}x" for w in args.num_workers)
                    + f"; {results[v]['bytes_per_frame'] / results[base]['bytes_per_frame']:.1f}x the bytes"
                )
        if args.step != "none":
            results["step"] = _bench_step_with_data(args, roots)
    return results


def _bench_step_with_data(args: BenchDataArgs, roots: dict[int, Path]) -> dict[str, float]:
    """Seconds per train step the way the loop runs it (load, then dispatch), fed by each layout's in-process
    loader and by one synthetic batch."""
    import jax

    from jasmine.data.loader import make_loader
    from jasmine.presets import preset
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
        it = (
            None
            if root is None
            else iter(
                make_loader(
                    root,
                    args.split,
                    seq_len=cfg.seq_len,
                    batch_size=cfg.batch_size,
                    seed=args.seed,
                    num_workers=0,
                    process_index=0,
                    process_count=1,
                    image_shape=cfg.image_size,
                )
            )
        )
        feed = (lambda: fixed) if it is None else (lambda it=it: {k: v for k, v in next(it).items() if k in keys})
        for _ in range(2):
            state, metrics = step_fn(state, global_batch(feed(), mesh))
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step_fn(state, global_batch(feed(), mesh))
        jax.block_until_ready(metrics)
        out[name] = (time.perf_counter() - t0) / args.steps
    syn = out["synthetic"]
    print(
        f"{args.step} train step ({args.step_preset} preset, batch {cfg.batch_size}x{cfg.seq_len}), loader in-process: "
        + ", ".join(
            f"{k} {v * 1e3:.0f} ms" + ("" if k == "synthetic" else f" ({v / syn:.2f}x)") for k, v in out.items()
        )
    )
    return out
