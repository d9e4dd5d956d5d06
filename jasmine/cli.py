"""The ``jasmine`` command: ``jasmine GROUP COMMAND [--flags]``; every command has ``--help``.

This module only parses arguments (tyro) and calls into the package.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tyro

from jasmine.data.dataset import DataError


def _print_splits(meta: dict, seeds: str = "") -> None:
    for split, info in meta["splits"].items():
        print(f"  {split:5}  {info['episodes']:6d} episodes  {info['frames']:9d} frames  {info['records']:6d} records"
              + (f"  {seeds.replace('_', ' ')} {info[seeds]}" if seeds else ""))


def _data_coinrun(argv: list[str], prog: str) -> None:
    from jasmine.data.coinrun import CoinRunArgs, generate

    args = tyro.cli(CoinRunArgs, args=argv, prog=prog)
    meta = generate(args)
    print(f"\nwrote {args.out} in {meta['generation_seconds']:.1f}s")
    _print_splits(meta, "level_seeds")
    total = sum(i["frames"] for i in meta["splits"].values())
    print(f"  {total / meta['generation_seconds']:,.0f} frames/s")


def _data_convert(kind: str) -> Command:
    def run(argv: list[str], prog: str) -> None:
        from jasmine.data.convert import ImagesArgs, VideoArgs, convert

        args = tyro.cli(VideoArgs if kind == "video" else ImagesArgs, args=argv, prog=prog)
        meta = convert(args, kind)
        print(f"\nwrote {args.out}")
        _print_splits(meta)
        frames = sum(i["frames"] for i in meta["splits"].values())
        skipped = meta["skipped"]
        print(f"  {frames / meta['seconds']:,.0f} frames/s; skipped {len(skipped['unreadable'])} unreadable and "
              f"{len(skipped['too_short'])} too-short source(s)")
        for line in skipped["unreadable"] + skipped["too_short"]:
            print(f"    {line}")

    return run


def _data_dedup(argv: list[str], prog: str) -> None:
    from jasmine.data.dedup import DedupArgs, dedup

    args = tyro.cli(DedupArgs, args=argv, prog=prog)
    if dedup(args)["cross_split"] and args.fail_on_cross_split:
        sys.exit(f"error: splits of {args.dir} share content (see the report); --fail-on-cross-split")


def _data_import_jasmine(argv: list[str], prog: str) -> None:
    from jasmine.data.import_jasmine import ImportArgs, import_jasmine

    args = tyro.cli(ImportArgs, args=argv, prog=prog)
    meta = import_jasmine(args)
    print(f"\nwrote {args.out}  (actions: {meta['generator']['actions']}, num_actions {meta['num_actions']})")
    _print_splits(meta)


def _data_game(kind: str) -> Command:
    def run(argv: list[str], prog: str) -> None:
        from jasmine.data.games import AtariArgs, MinAtarArgs, generate

        args = tyro.cli(AtariArgs if kind == "atari" else MinAtarArgs, args=argv, prog=prog)
        meta = generate(args, kind)
        print(f"\nwrote {args.out} in {meta['seconds']:.1f}s; actions {meta['generator']['action_meanings']}")
        _print_splits(meta, "env_seeds")

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


def _data_relayout(argv: list[str], prog: str) -> None:
    from jasmine.data.dataset import bytes_per_frame, relayout

    args = tyro.cli(RelayoutArgs, args=argv, prog=prog)
    meta = relayout(args.src, args.out, args.format_version, args.chunk_len, args.overwrite)
    print(f"wrote {args.out}: format {meta['format_version']}, {meta['chunk_len']} frames per record, "
          f"{bytes_per_frame(args.out):,.0f} bytes/frame on disk (source: {bytes_per_frame(args.src):,.0f})")
    _print_splits(meta)


def _data_inspect(argv: list[str], prog: str) -> None:
    from jasmine.data.inspect import InspectArgs, inspect

    inspect(tyro.cli(InspectArgs, args=argv, prog=prog))


def _data_tokenize(argv: list[str], prog: str) -> None:
    from jasmine.tokenize import TokenizeArgs, tokenize

    args = tyro.cli(TokenizeArgs, args=argv, prog=prog)
    meta = tokenize(args)
    frames = sum(i["frames"] for i in meta["splits"].values())
    print(f"wrote {args.out}: {frames} frames as {meta['tokenizer']['grid']} token grids in {meta['seconds']:.1f}s "
          f"({frames / meta['seconds']:,.0f} frames/s)")


def _bench_data(argv: list[str], prog: str) -> None:
    from jasmine.bench import BenchDataArgs, bench_data

    bench_data(tyro.cli(BenchDataArgs, args=argv, prog=prog))


def _pop_flag(argv: list[str], flag: str, default: str) -> tuple[str, list[str]]:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return default, argv


def _train(component: str) -> Command:
    def run(argv: list[str], prog: str) -> None:
        from jasmine.config import PRESETS, preset
        from jasmine.train.components import COMPONENTS
        from jasmine.train.loop import train

        name, rest = _pop_flag(argv, "--preset", "tiny")
        base = preset(component, name)
        desc = (f"Train the {component}. --preset NAME picks the defaults shown below "
                f"({', '.join(PRESETS[component])}; default tiny); every field can be overridden.")
        cfg = tyro.cli(type(base), default=base, args=rest, prog=f"{prog} [--preset NAME]", description=desc)
        result = train(cfg, COMPONENTS[component])
        _print_result(result)
        if result["stopped"]:
            sys.exit(128 + int(getattr(signal.Signals, result["stopped"])))

    return run


def _bench_train(argv: list[str], prog: str) -> None:
    from jasmine.bench import bench_train
    from jasmine.config import PRESETS, preset
    from jasmine.train.components import COMPONENTS

    usage = (f"usage: {prog} COMPONENT [--preset NAME] [--timed-steps N] [--inputs frames|tokens] [config flags]\n\n"
             f"COMPONENT is one of {sorted(PRESETS)}; `{prog} COMPONENT --help` lists the config flags.")
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return
    if not argv or argv[0].startswith("-"):
        sys.exit(usage)
    component, argv = argv[0], argv[1:]
    name, argv = _pop_flag(argv, "--preset", "coinrun")
    timed, argv = _pop_flag(argv, "--timed-steps", "10")
    inputs, argv = _pop_flag(argv, "--inputs", "frames")
    base = preset(component, name)
    desc = (f"Benchmark one {component} train step on synthetic data: step time, tokens/s, XLA and model FLOPs, "
            f"MFU. --preset NAME (default coinrun), --timed-steps N (default 10), --inputs frames|tokens (dynamics: "
            f"pre-tokenized batches skip the frozen encoders); every config field can be set.")
    cfg = tyro.cli(type(base), default=base, args=argv, prog=f"{prog} {component} [--preset NAME]", description=desc)
    if component == "dynamics":
        from jasmine.bench import with_frame_tokenizer

        cfg = with_frame_tokenizer(cfg, name)
    bench_train(cfg, COMPONENTS[component], int(timed), inputs)


def _bench_sample(argv: list[str], prog: str) -> None:
    from jasmine.bench import BenchSampleArgs, bench_sample

    bench_sample(tyro.cli(BenchSampleArgs, args=argv, prog=prog))


def _sample(argv: list[str], prog: str) -> None:
    from jasmine.sample.command import SampleArgs, sample

    sample(tyro.cli(SampleArgs, args=argv, prog=prog))


def _eval(argv: list[str], prog: str) -> None:
    from jasmine.eval.evaluate import EvalArgs, evaluate

    evaluate(tyro.cli(EvalArgs, args=argv, prog=prog))


def _actions(argv: list[str], prog: str) -> None:
    from jasmine.eval.actions import ActionsArgs, actions_report

    actions_report(tyro.cli(ActionsArgs, args=argv, prog=prog))


def _play(argv: list[str], prog: str) -> None:
    try:
        from jasmine.play.server import PlayArgs, play
    except ImportError as e:
        sys.exit(f"jasmine play needs the play extra ({e.name} is missing): uv sync --extra play")
    play(tyro.cli(PlayArgs, args=argv, prog=prog))


def _bench_play(argv: list[str], prog: str) -> None:
    from jasmine.bench import BenchPlayArgs, bench_play

    bench_play(tyro.cli(BenchPlayArgs, args=argv, prog=prog))


def _print_result(result: dict) -> None:
    fmt = lambda m: "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k in ("loss", "mse", "psnr", "ssim", "codebook_usage", "top1_accuracy", "full_frame_psnr", "lam_codebook_usage"))
    print(f"step {result['step']}  train: {fmt(result['train'])}")
    if result["val"]:
        print(f"           val:   {fmt(result['val'])}")
    print(f"run dir {result['run_dir']} (config.json, checkpoints/, metrics.jsonl, samples/, tensorboard/)")


def _demo(argv: list[str], prog: str) -> None:
    from jasmine.demo import DemoArgs, demo

    demo(tyro.cli(DemoArgs, args=argv, prog=prog))


Command = Callable[[list[str], str], None]
COMMANDS: dict[str, tuple[Command, str]] = {
    "data coinrun": (_data_coinrun, "generate a procgen CoinRun dataset"),
    "data video": (_data_convert("video"), "video files (mp4, webm, mkv, avi, gif) to a dataset, split by file"),
    "data images": (_data_convert("images"), "folders of PNG/JPEG frames (one per episode) to a dataset"),
    "data dedup": (_data_dedup, "exact duplicate episodes and frames within and across splits; JSON report"),
    "data import-jasmine": (_data_import_jasmine, "convert a dataset in the reference's pickled format, safely"),
    "data atari": (_data_game("atari"), "random-policy Atari episodes (ale-py), splits disjoint by env seed"),
    "data minatar": (_data_game("minatar"), "random-policy MinAtar episodes, rendered in colour"),
    "data relayout": (_data_relayout, "copy a dataset into another record layout (format 3: fastest loading)"),
    "data inspect": (_data_inspect, "summarise a dataset; write a contact sheet and a GIF"),
    "train tokenizer": (_train("tokenizer"), "train the VQ-VAE video tokenizer"),
    "train lam": (_train("lam"), "train the latent action model"),
    "train mae": (_train("mae"), "train the MAE tokenizer (continuous latents for the diffusion dynamics)"),
    "train dynamics": (_train("dynamics"), "train the dynamics, MaskGIT or --dynamics causal (--lam RUN | --co-train-lam | --gt-actions)"),
    "sample": (_sample, "roll a trained model out from context frames; GIF, MP4 and per-frame metrics"),
    "eval": (_eval, "rollout PSNR/SSIM vs baselines, controllability (delta PSNR), plots and a report"),
    "data tokenize": (_data_tokenize, "write token-id records for fast dynamics training"),
    "actions": (_actions, "LAM codes against real actions: count matrix, NMI, heatmap, each code's dominant actions"),
    "play": (_play, "play a dynamics run in the browser: keys pick actions, each press generates a frame"),
    "demo": (_demo, "the end-to-end demo: CoinRun data, three training stages, eval and report"),
    "bench data": (_bench_data, "loader throughput in frames/s"),
    "bench train": (_bench_train, "train-step time, tokens/s and MFU of a component"),
    "bench sample": (_bench_sample, "frames/s of MaskGIT rollouts with and without the KV cache"),
    "bench play": (_bench_play, "play latency from an action to its frame: median and p95, in-process and over a WebSocket"),
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
    except (DataError, ValueError, FileNotFoundError) as e:
        sys.exit(f"jasmine {name}: error: {e}")


if __name__ == "__main__":
    main()
