"""The ``jasmine data ...`` commands' flag parsing and console output (the CLI's data half; see ``jasmine.cli``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

Parse = Callable[[list[str], str], Any]
Run = Callable[[Any], None]


def print_splits(meta: dict, seeds: str = "") -> None:
    for split, info in meta["splits"].items():
        print(
            f"  {split:5}  {info['episodes']:6d} episodes  {info['frames']:9d} frames  {info['records']:6d} records"
            + (f"  {seeds.replace('_', ' ')} {info[seeds]}" if seeds else "")
        )


def coinrun_parse(argv: list[str], prog: str):
    from jasmine.data.coinrun import CoinRunArgs

    return tyro.cli(CoinRunArgs, args=argv, prog=prog)


def coinrun(args) -> None:
    from jasmine.data.coinrun import generate

    meta = generate(args)
    print(f"\nwrote {args.out} in {meta['generation_seconds']:.1f}s")
    print_splits(meta, "level_seeds")
    total = sum(i["frames"] for i in meta["splits"].values())
    print(f"  {total / meta['generation_seconds']:,.0f} frames/s")


def convert_parse(kind: str) -> Parse:
    def parse(argv: list[str], prog: str):
        from jasmine.data.convert import ImagesArgs, VideoArgs

        return tyro.cli(VideoArgs if kind == "video" else ImagesArgs, args=argv, prog=prog)

    return parse


def convert(kind: str) -> Run:
    def run(args) -> None:
        from jasmine.data.convert import convert

        meta = convert(args, kind)
        print(f"\nwrote {args.out}")
        print_splits(meta)
        frames = sum(i["frames"] for i in meta["splits"].values())
        skipped = meta["skipped"]
        print(
            f"  {frames / meta['seconds']:,.0f} frames/s; skipped {len(skipped['unreadable'])} unreadable and "
            f"{len(skipped['too_short'])} too-short source(s); truncated {len(skipped['truncated'])}"
        )
        for line in skipped["unreadable"] + skipped["too_short"] + skipped["truncated"]:
            print(f"    {line}")

    return run


def dedup(args) -> None:
    from jasmine.data.dedup import dedup

    if dedup(args)["cross_split"] and args.fail_on_cross_split:
        sys.exit(f"error: splits of {args.dir} share content (see the report); --fail-on-cross-split")


def import_jasmine(args) -> None:
    from jasmine.data.import_jasmine import import_jasmine

    meta = import_jasmine(args)
    print(f"\nwrote {args.out}  (actions: {meta['generator']['actions']}, num_actions {meta['num_actions']})")
    print_splits(meta)


def game_parse(kind: str) -> Parse:
    def parse(argv: list[str], prog: str):
        from jasmine.data.games import AtariArgs, MinAtarArgs

        return tyro.cli(AtariArgs if kind == "atari" else MinAtarArgs, args=argv, prog=prog)

    return parse


def game(kind: str) -> Run:
    def run(args) -> None:
        from jasmine.data.games import generate

        meta = generate(args, kind)
        print(f"\nwrote {args.out} in {meta['seconds']:.1f}s; actions {meta['generator']['action_meanings']}")
        print_splits(meta, "env_seeds")

    return run


@dataclass(frozen=True)
class RelayoutArgs:
    """Copy a dataset into another record layout: format 3 (grouped: small uncompressed records, the fastest
    to load) or format 2 (chunked: 160-frame compressed records, the smallest on disk)."""

    src: tyro.conf.Positional[Path]
    """Dataset to copy (any source, frames or tokens)."""
    out: Path
    format_version: int = 3
    chunk_len: int | None = None
    """Frames per record (default: 8 for format 3, 160 for format 2)."""
    overwrite: bool = False


def relayout(args: RelayoutArgs) -> None:
    from jasmine.data.dataset import bytes_per_frame, relayout

    meta = relayout(args.src, args.out, args.format_version, args.chunk_len, args.overwrite)
    print(
        f"wrote {args.out}: format {meta['format_version']}, {meta['chunk_len']} frames per record, "
        f"{bytes_per_frame(args.out):,.0f} bytes/frame on disk (source: {bytes_per_frame(args.src):,.0f})"
    )
    print_splits(meta)


def inspect(args) -> None:
    from jasmine.data.inspect import inspect

    inspect(args)
