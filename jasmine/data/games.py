"""Random-policy episodes of Atari (``jasmine data atari``, ale-py) and MinAtar (``jasmine data minatar``).

Dimension key: T frames, H/W/C height/width/channels.

Episode i of a split runs with its own environment seed from the split's range: train
``[B, B+M)``, val ``[B+M, B+2M)``, test ``[B+2M, B+3M)`` with ``B = seed·3M`` and M = 10⁶,
so splits are disjoint by seed. The seed drives the emulator and the uniformly random
policy over the game's minimal action set, so a dataset is a deterministic function of
its arguments. Frame t is stored before action t is taken; frames are resized to
``--size``; episodes shorter than ``--min-episode-len`` are dropped (the next seed is
played), longer ones are cut at ``--max-episode-len``. The action meanings are recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from jasmine.data.actions import effective_table
from jasmine.data.convert import frame_size
from jasmine.data.dataset import DataError, DatasetWriter

SEEDS_PER_SPLIT = 1_000_000
MINATAR_ACTIONS = ["NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE"]


@dataclass(frozen=True)
class GameArgs:
    """Options shared by the game generators."""

    game: str
    """Game name (e.g. pong, breakout)."""
    out: Path
    """Output dataset directory."""
    train_episodes: int = 100
    val_episodes: int = 10
    test_episodes: int = 10
    seed: int = 0
    size: str = "64x64"
    """Frame size HxW."""
    max_episode_len: int = 1000
    min_episode_len: int = 16
    chunk_len: int = 160
    records_per_shard: int = 100
    overwrite: bool = False


@dataclass(frozen=True)
class AtariArgs(GameArgs):
    """Atari 2600 episodes with a uniformly random policy (ale-py, whose wheels ship the ROMs)."""

    sticky_actions: float = 0.25
    """Probability that the emulator repeats the previous action (Machado et al. 2018)."""
    frame_skip: int = 4
    """Emulator frames per step (the action repeats; the last frame is stored)."""


@dataclass(frozen=True)
class MinAtarArgs(GameArgs):
    """MinAtar episodes (10x10 games, rendered in its own colours) with a uniformly random policy."""

    sticky_actions: float = 0.1
    difficulty_ramping: bool = True
    palette: Literal["cubehelix", "bright"] = "cubehelix"
    """Channel colours: cubehelix (MinAtar's own; Breakout's paddle is dark teal, 5% of white's squared intensity,
    so a pixel loss barely sees it) or seaborn's bright palette (every object saturated)."""


class Atari:
    resample = Image.Resampling.BILINEAR

    def __init__(self, args: AtariArgs):
        try:
            from ale_py import ALEInterface, LoggerMode, roms
        except ImportError:
            raise DataError("jasmine data atari needs ale-py: uv sync --extra atari") from None
        if args.game not in roms.get_all_rom_ids():
            raise DataError(
                f"--game {args.game!r} is not an Atari ROM of ale-py; choose from {', '.join(roms.get_all_rom_ids())}"
            )
        if not 0 <= args.sticky_actions <= 1 or args.frame_skip < 1:
            raise DataError("--sticky-actions must be in [0, 1] and --frame-skip >= 1")
        ALEInterface.setLoggerMode(LoggerMode.Error)
        self.args, self.rom = args, roms.get_rom_path(args.game)
        self.ale = None
        self.actions = self._new(0).getMinimalActionSet()
        self.meanings = [a.name for a in self.actions]

    def _new(self, seed: int):
        from ale_py import ALEInterface

        ale = ALEInterface()
        ale.setInt("random_seed", seed % 2**31)
        ale.setFloat("repeat_action_probability", self.args.sticky_actions)
        ale.setInt("frame_skip", self.args.frame_skip)
        ale.loadROM(self.rom)
        return ale

    def play(self, seed: int, max_len: int, rng: np.random.Generator):
        ale = self._new(seed)
        frames, acts = [], []
        while len(frames) < max_len and not ale.game_over():
            frames.append(ale.getScreenRGB())
            a = int(rng.integers(len(self.actions)))
            acts.append(a)
            ale.act(self.actions[a])
        return frames, acts


class MinAtar:
    resample = Image.Resampling.NEAREST  # crisp 10x10 cells

    def __init__(self, args: MinAtarArgs):
        try:
            import seaborn as sns
            from minatar import Environment
        except ImportError:
            raise DataError("jasmine data minatar needs MinAtar: uv sync --extra minatar") from None
        games = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
        if args.game not in games:
            raise DataError(f"--game {args.game!r} is not a MinAtar game; choose from {', '.join(games)}")
        self.args, self.Environment = args, Environment
        env = Environment(args.game, sticky_action_prob=args.sticky_actions, difficulty_ramping=args.difficulty_ramping)
        self.actions = list(env.minimal_action_set())
        self.meanings = [MINATAR_ACTIONS[a] for a in self.actions]
        # MinAtar's own rendering: black background, channel k in the k-th colour of the palette (its own: cubehelix)
        palette = [(0.0, 0.0, 0.0)] + list(sns.color_palette(args.palette, env.n_channels))
        self.palette = (np.asarray(palette) * 255).round().astype(np.uint8)

    def render(self, state_HWK) -> np.ndarray:
        idx = np.amax(state_HWK * np.arange(1, state_HWK.shape[-1] + 1), axis=-1)
        return self.palette[idx]

    def play(self, seed: int, max_len: int, rng: np.random.Generator):
        env = self.Environment(
            self.args.game, sticky_action_prob=self.args.sticky_actions, difficulty_ramping=self.args.difficulty_ramping
        )
        env.seed(seed % 2**32)
        env.reset()
        frames, acts, done = [], [], False
        while len(frames) < max_len and not done:
            frames.append(self.render(env.state()))
            a = int(rng.integers(len(self.actions)))
            acts.append(a)
            _, done = env.act(self.actions[a])
        return frames, acts


def generate(args: GameArgs, kind: str) -> dict:
    """Write the dataset; returns its metadata."""
    hw = frame_size(args.size)
    counts = {"train": args.train_episodes, "val": args.val_episodes, "test": args.test_episodes}
    if min(counts.values()) < 0 or counts["train"] < 1:
        raise DataError("--train-episodes must be >= 1 and --val/--test-episodes >= 0")
    if not 1 <= args.min_episode_len <= args.max_episode_len:
        raise DataError(
            f"need 1 <= --min-episode-len {args.min_episode_len} <= --max-episode-len {args.max_episode_len}"
        )
    game = Atari(args) if kind == "atari" else MinAtar(args)
    gen_args = {k: v for k, v in asdict(args).items() if k not in ("out", "overwrite")}
    writer = DatasetWriter(
        args.out,
        frame_shape=(*hw, 3),
        num_actions=len(game.actions),
        source=kind,
        generator={
            "name": kind,
            **gen_args,
            "action_meanings": game.meanings,
            "effective_actions": effective_table(kind, game.meanings),
        },
        chunk_len=args.chunk_len,
        records_per_shard=args.records_per_shard,
        overwrite=args.overwrite,
    )
    t0, extra = time.perf_counter(), {}
    try:
        with tqdm(total=sum(counts.values()), unit="ep", desc=f"{kind} {args.game}", dynamic_ncols=True) as bar:
            for k, (split, n) in enumerate(counts.items()):
                base = (args.seed * 3 + k) * SEEDS_PER_SPLIT
                seed, kept, dropped = base, 0, 0
                while kept < n:
                    if seed >= base + SEEDS_PER_SPLIT:
                        raise DataError(
                            f"{split}: {SEEDS_PER_SPLIT} seeds gave fewer than {n} episodes of "
                            f">= {args.min_episode_len} frames; lower --min-episode-len"
                        )
                    frames, acts = game.play(seed, args.max_episode_len, np.random.default_rng(seed))
                    seed += 1
                    if len(frames) < args.min_episode_len:
                        dropped += 1
                        continue
                    resized = np.stack([np.asarray(Image.fromarray(f).resize(hw[::-1], game.resample)) for f in frames])
                    writer.add_episode(
                        split,
                        resized,
                        np.asarray(acts, np.int32),
                        {"source": kind, "game": args.game, "env_seed": seed - 1, "episode_id": kept},
                    )
                    kept += 1
                    bar.update()
                    bar.set_postfix(frames=sum(i.frames for i in writer.splits.values()), refresh=False)
                extra[split] = {"env_seeds": [base, seed], "dropped_short": dropped}
    except BaseException:
        writer.abort()
        raise
    meta = writer.finish(**extra)
    meta["seconds"] = time.perf_counter() - t0
    return meta
