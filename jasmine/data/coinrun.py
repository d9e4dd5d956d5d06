"""Procgen CoinRun episodes with uniformly random actions (the Genie Appendix F case study).

Each split plays its own vectorised procgen env ("hard" mode, 64x64 RGB) over a disjoint
range of level seeds: train ``[0, L)``, val ``[L, L+E)``, test ``[L+E, L+2E)`` with
``L = train_levels`` and ``E = eval_levels``. Procgen's stepping, the level choice and the
actions are all seeded from ``seed``, so the records are a deterministic function of the
arguments. Frame t is stored before action t is taken. Each split keeps the first episodes
to *start* (see :func:`episodes`), so which episodes are kept does not depend on their length.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jasmine.data.actions import COINRUN_ACTION_MEANINGS, effective_table
from jasmine.data.dataset import DatasetWriter

NUM_ACTIONS = 15
# procgen's key combinations per action id (ProcgenGym3Env.get_combos); in CoinRun D/A/W/S/Q/E do nothing
ACTION_MEANINGS = COINRUN_ACTION_MEANINGS
FRAME_SHAPE = (64, 64, 3)


@dataclass(frozen=True)
class CoinRunArgs:
    """Generate a procgen CoinRun dataset of random-policy episodes."""

    out: Path
    """Output dataset directory."""
    train_episodes: int = 100
    val_episodes: int = 10
    test_episodes: int = 10
    seed: int = 0
    max_episode_len: int = 1000
    """Longer episodes are cut here (procgen itself times out at 1000)."""
    min_episode_len: int = 16
    """Shorter episodes (early deaths) are discarded."""
    chunk_len: int = 160
    """Episodes are stored as records of at most this many frames."""
    train_levels: int = 10_000
    """Train levels are seeds [0, train_levels) (Genie used 10k)."""
    eval_levels: int = 1_000
    """Val and test each get their own disjoint range of this many level seeds."""
    num_envs: int = 16
    """Environments stepped together per split."""
    num_threads: int = 2
    """Procgen worker threads."""
    action_hold: int = 1
    """Each random action is held for a uniformly random 1..N steps, as people hold keys (1: a fresh action every
    step, the Genie setting)."""
    records_per_shard: int = 100
    overwrite: bool = False
    """Replace an existing dataset in --out."""


def level_ranges(args: CoinRunArgs) -> dict[str, tuple[int, int]]:
    """Disjoint [start, stop) level-seed range of each split."""
    t, e = args.train_levels, args.eval_levels
    return {"train": (0, t), "val": (t, t + e), "test": (t + e, t + 2 * e)}


def _procgen_env():
    """Import procgen quietly (old ``gym`` prints a deprecation notice on import)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            from procgen import ProcgenGym3Env
    except ImportError as e:
        raise ImportError(
            f"CoinRun generation needs procgen: install the 'coinrun' extra (uv sync --extra coinrun): {e}"
        ) from e
    return ProcgenGym3Env


def make_env(split_index: int, lo: int, hi: int, args: CoinRunArgs):
    """The vectorised procgen env of one split: levels [lo, hi), seeded from ``args.seed``."""
    return _procgen_env()(
        num=args.num_envs,
        env_name="coinrun",
        distribution_mode="hard",
        start_level=lo,
        num_levels=hi - lo,
        rand_seed=args.seed * 7919 + split_index,
        num_threads=args.num_threads,
    )


def episodes(
    env,
    n: int,
    rng: np.random.Generator,
    *,
    max_len: int,
    min_len: int,
    num_actions: int = NUM_ACTIONS,
    action_hold: int = 1,
):
    """Yield the first ``n`` episodes *to start* that last at least ``min_len`` frames, in start order.

    ``env`` is a gym3-style vectorised env (``num``, ``observe``, ``act``, ``get_info``). Which
    episodes are kept never depends on their own length (beyond the ``min_len`` filter): a
    slot starts recording only while fewer than ``n`` recorded episodes could still be kept,
    and a shorter one that ends frees a start for a later episode. Keeping the first
    episodes to *finish* instead would favour short ones. Episodes are cut at ``max_len``.
    Yields ``(frames, actions, level_seed)``; memory holds at most the episodes that finish
    while an earlier-started one is still running. Each env slot draws a uniformly random action
    and holds it for a uniformly random 1..``action_hold`` steps.
    """
    E, L = env.num, max_len
    frames_ELHWC = np.empty((E, L, *FRAME_SHAPE), np.uint8)
    actions_EL = np.empty((E, L), np.int32)
    pos_E = np.zeros(E, np.int64)
    index_E = np.full(E, -1)  # start index of the episode each slot records (-1: not recording)
    seeds_E = np.zeros(E, np.int64)
    started = short = next_out = 0
    done: dict[int, tuple | None] = {}  # start index -> episode (None: too short), until emitted in order

    def finish(i):
        nonlocal short
        keep = pos_E[i] >= min_len
        done[int(index_E[i])] = (
            (frames_ELHWC[i, : pos_E[i]].copy(), actions_EL[i, : pos_E[i]].copy(), int(seeds_E[i])) if keep else None
        )
        short += not keep
        index_E[i] = -1

    act_E, hold_E = np.zeros(E, np.int32), np.zeros(E, np.int64)
    while next_out < started or started - short < n:
        _, obs, first_E = env.observe()
        if action_hold == 1:  # the Genie setting, drawn exactly as before holds existed
            act_E = rng.integers(0, num_actions, size=E, dtype=np.int32)
        else:
            fresh = hold_E <= 0
            act_E = np.where(fresh, rng.integers(0, num_actions, size=E, dtype=np.int32), act_E)
            hold_E = np.where(fresh, rng.integers(1, action_hold + 1, size=E), hold_E) - 1
        if first_E.any():
            info = env.get_info()
            for i in np.flatnonzero(first_E):
                if index_E[i] >= 0:
                    finish(i)
                if started - short < n:  # a start is free: record this episode
                    index_E[i], pos_E[i], seeds_E[i] = started, 0, info[i]["level_seed"]
                    started += 1
        idx = np.flatnonzero(index_E >= 0)
        frames_ELHWC[idx, pos_E[idx]] = obs["rgb"][idx]
        actions_EL[idx, pos_E[idx]] = act_E[idx]
        pos_E[idx] += 1
        for i in idx[pos_E[idx] == L]:  # truncate: step on, record nothing until the reset
            finish(i)
        while next_out in done:
            ep = done.pop(next_out)
            next_out += 1
            if ep is not None:
                yield ep
        env.act(act_E)


def generate(args: CoinRunArgs) -> dict:
    """Write the dataset to ``args.out``; returns its metadata."""
    if args.action_hold < 1:
        raise ValueError(f"--action-hold must be >= 1 (steps an action is held), got {args.action_hold}")
    if args.min_episode_len < 1 or args.max_episode_len < args.min_episode_len:
        raise ValueError(
            f"need 1 <= --min-episode-len ({args.min_episode_len}) <= --max-episode-len ({args.max_episode_len})"
        )
    ranges = level_ranges(args)
    counts = {"train": args.train_episodes, "val": args.val_episodes, "test": args.test_episodes}
    gen_args = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items() if k not in ("out", "overwrite")
    }
    writer = DatasetWriter(
        args.out,
        frame_shape=FRAME_SHAPE,
        num_actions=NUM_ACTIONS,
        source="procgen:coinrun:hard",
        generator={
            "name": "coinrun",
            "args": gen_args,
            "action_meanings": ACTION_MEANINGS,
            "effective_actions": effective_table("coinrun", ACTION_MEANINGS),
        },
        chunk_len=args.chunk_len,
        records_per_shard=args.records_per_shard,
        overwrite=args.overwrite,
    )
    total_frames, t0 = 0, time.perf_counter()
    try:
        with tqdm(total=sum(counts.values()), unit="ep", desc="coinrun", dynamic_ncols=True) as bar:
            for split_index, (split, n) in enumerate(counts.items()):
                if n <= 0:
                    continue
                episode_id = 0
                env = make_env(split_index, *ranges[split], args)
                rng = np.random.default_rng([args.seed, split_index])
                for frames, actions, level_seed in episodes(
                    env,
                    n,
                    rng,
                    max_len=args.max_episode_len,
                    min_len=args.min_episode_len,
                    action_hold=args.action_hold,
                ):
                    meta = {"source": "procgen:coinrun:hard", "level_seed": level_seed, "episode_id": episode_id}
                    writer.add_episode(split, frames, actions, meta)
                    episode_id += 1
                    total_frames += len(frames)
                    bar.set_postfix(
                        split=split, frames=total_frames, fps=f"{total_frames / (time.perf_counter() - t0):.0f}"
                    )
                    bar.update()
    except BaseException:
        writer.abort()
        raise
    extra = {s: {"level_seeds": list(ranges[s])} for s in counts}
    meta = writer.finish(**extra)
    meta["generation_seconds"] = time.perf_counter() - t0
    return meta
