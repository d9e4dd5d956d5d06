"""The ``jasmine`` command: ``jasmine GROUP COMMAND [--flags]``; every command has ``--help``.

This module only parses arguments (tyro) and calls into the package.
"""

from __future__ import annotations

import sys
from typing import Callable

import tyro

from jasmine.data.dataset import DataError


def _data_coinrun(argv: list[str], prog: str) -> None:
    from jasmine.data.coinrun import CoinRunArgs, generate

    args = tyro.cli(CoinRunArgs, args=argv, prog=prog)
    meta = generate(args)
    print(f"\nwrote {args.out} in {meta['generation_seconds']:.1f}s")
    for split, info in meta["splits"].items():
        print(f"  {split:5}  {info['episodes']:6d} episodes  {info['frames']:9d} frames  {info['records']:6d} records  "
              f"levels {info['level_seeds']}")
    total = sum(i["frames"] for i in meta["splits"].values())
    print(f"  {total / meta['generation_seconds']:,.0f} frames/s")


def _data_inspect(argv: list[str], prog: str) -> None:
    from jasmine.data.inspect import InspectArgs, inspect

    inspect(tyro.cli(InspectArgs, args=argv, prog=prog))


def _bench_data(argv: list[str], prog: str) -> None:
    from jasmine.bench import BenchDataArgs, bench_data

    bench_data(tyro.cli(BenchDataArgs, args=argv, prog=prog))


def _demo(argv: list[str], prog: str) -> None:
    from jasmine.demo import DemoArgs, demo

    demo(tyro.cli(DemoArgs, args=argv, prog=prog))


Command = Callable[[list[str], str], None]
COMMANDS: dict[str, tuple[Command, str]] = {
    "data coinrun": (_data_coinrun, "generate a procgen CoinRun dataset"),
    "data inspect": (_data_inspect, "summarise a dataset; write a contact sheet and a GIF"),
    "demo": (_demo, "the end-to-end demo (the README's main command)"),
    "bench data": (_bench_data, "loader throughput in frames/s"),
}


def _usage(prefix: str = "") -> str:
    width = max(map(len, COMMANDS))
    rows = [f"  jasmine {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items() if name.startswith(prefix)]
    return "\n".join(["usage: jasmine COMMAND [--help] [flags]", "", *rows])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv[:2] if not a.startswith("-")]
    name = next((n for n in (" ".join(words[:2]), words[0] if words else "") if n in COMMANDS), None)
    if name is None:
        prefix = words[0] if words else ""
        known = any(n.startswith(prefix + " ") for n in COMMANDS)
        print(_usage(prefix if known else ""))
        if words and not (known and len(words) == 1):
            sys.exit(f"jasmine: unknown command {' '.join(words)!r}")
        return
    fn, _ = COMMANDS[name]
    try:
        fn(argv[len(name.split()) :], f"jasmine {name}")
    except DataError as e:
        sys.exit(f"jasmine {name}: error: {e}")


if __name__ == "__main__":
    main()
