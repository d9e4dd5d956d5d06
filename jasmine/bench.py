"""Benchmarks behind ``jasmine bench``: each prints figures measured in one run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro


@dataclass(frozen=True)
class BenchDataArgs:
    """Loader throughput in frames/s (default: batches of 48 x 16 frames)."""

    dir: tyro.conf.Positional[Path]
    """Dataset directory."""
    split: str = "train"
    batch_size: int = 48
    seq_len: int = 16
    batches: int = 50
    """Timed batches (after 3 warm-up batches)."""
    num_workers: tuple[int, ...] = (0, 2)
    """Grain worker-process counts to measure (0 = in-process)."""
    seed: int = 0


def bench_data(args: BenchDataArgs) -> dict[int, float]:
    from jasmine.data.loader import make_loader

    results = {}
    for workers in args.num_workers:
        it = iter(make_loader(args.dir, args.split, seq_len=args.seq_len, batch_size=args.batch_size, seed=args.seed,
                              num_workers=workers, process_index=0, process_count=1))
        for _ in range(3):
            next(it)
        t0 = time.perf_counter()
        frames = sum(int(np.prod(next(it)["frames"].shape[:2])) for _ in range(args.batches))
        dt = time.perf_counter() - t0
        results[workers] = frames / dt
        h, w, c = next(it)["frames"].shape[2:]
        print(f"loader  workers={workers}  batch {args.batch_size}x{args.seq_len} of {h}x{w}x{c}  "
              f"{results[workers]:,.0f} frames/s  ({args.batches / dt:.1f} batches/s)")
        del it
    return results
