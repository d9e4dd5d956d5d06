"""``jasmine demo``: the README's main command, run as resumable stages.

Stage 1 (this release): generate a small CoinRun dataset, summarise it, and draw it.
A re-run reuses every stage whose output is complete and was made with the same arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from jasmine.data.coinrun import CoinRunArgs, generate
from jasmine.data.dataset import METADATA
from jasmine.data.inspect import InspectArgs, inspect


@dataclass(frozen=True)
class DemoArgs:
    """Generate a small CoinRun dataset, summarise it and draw it (later: train, evaluate, report)."""

    out: Path = Path("runs/demo")
    """Directory for every output of the demo."""
    seed: int = 0
    train_episodes: int = 200
    val_episodes: int = 20
    test_episodes: int = 20


def _data_stage(args: DemoArgs) -> Path:
    data = args.out / "data"
    gen = CoinRunArgs(out=data, train_episodes=args.train_episodes, val_episodes=args.val_episodes,
                      test_episodes=args.test_episodes, seed=args.seed, overwrite=True)
    meta_path = data / METADATA
    if meta_path.exists():
        old = json.loads(meta_path.read_text()).get("generator", {}).get("args", {})
        want = {k: v for k, v in vars(replace(gen, out=Path())).items() if k not in ("out", "overwrite")}
        if all(old.get(k) == v for k, v in want.items()):
            print(f"[demo] data: reusing {data}")
            return data
    print(f"[demo] data: generating CoinRun into {data}")
    generate(gen)
    return data


def demo(args: DemoArgs) -> None:
    data = _data_stage(args)
    print("[demo] data: summary")
    inspect(InspectArgs(dir=data, out=args.out / "inspect"))
    print(f"\n[demo] done. outputs:\n  dataset        {data}\n  contact sheet  {args.out / 'inspect' / 'contact_sheet.png'}"
          f"\n  episodes GIF   {args.out / 'inspect' / 'episodes.gif'}")
