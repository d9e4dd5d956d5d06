"""The ``jasmine`` command: ``jasmine GROUP COMMAND [--flags]``; every command has ``--help``.

This module only parses arguments (tyro) and calls into the package.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tyro

from jasmine.data import commands as data_commands
from jasmine.data.dataset import DataError


def _data_tokenize(args) -> None:
    from jasmine.train.tokenize import tokenize

    meta = tokenize(args)
    frames = sum(i["frames"] for i in meta["splits"].values())
    print(
        f"wrote {args.out}: {frames} frames as {meta['tokenizer']['grid']} token grids in {meta['seconds']:.1f}s "
        f"({frames / meta['seconds']:,.0f} frames/s)"
    )


def _bench_data(args) -> None:
    from jasmine.bench import bench_data

    bench_data(args)


def _pop_flag(argv: list[str], flag: str, default: str) -> tuple[str, list[str]]:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return default, argv


def _family(component: str, argv: list[str]) -> str | None:
    """The dynamics family named by ``--dynamics`` (left in ``argv``): it picks the preset's family values."""
    if component != "dynamics":
        return None
    family, _ = _pop_flag(argv, "--dynamics", "")
    return family or None


def _train_parse(component: str) -> Parse:
    def parse(argv: list[str], prog: str):
        from jasmine.presets import PRESETS, preset

        name, rest = _pop_flag(argv, "--preset", "tiny")
        base = preset(component, name, _family(component, rest))
        desc = (
            f"Train the {component}. --preset NAME picks the defaults shown below "
            f"({', '.join(PRESETS[component])}; default tiny); every field can be overridden."
        )
        return tyro.cli(type(base), default=base, args=rest, prog=f"{prog} [--preset NAME]", description=desc)

    return parse


def _train(component: str) -> Run:
    def run(cfg) -> None:
        from jasmine.train.components import COMPONENTS
        from jasmine.train.loop import train

        result = train(cfg, COMPONENTS[component])
        _print_result(result)
        if result["stopped"]:
            sys.exit(128 + int(getattr(signal.Signals, result["stopped"])))

    return run


def _bench_train_parse(argv: list[str], prog: str):
    from jasmine.presets import PRESETS, preset

    usage = (
        f"usage: {prog} COMPONENT [--preset NAME] [--timed-steps N] [--inputs frames|tokens] [config flags]\n\n"
        f"COMPONENT is one of {sorted(PRESETS)}; `{prog} COMPONENT --help` lists the config flags."
    )
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0)
    if not argv or argv[0].startswith("-"):
        sys.exit(usage)
    component, argv = argv[0], argv[1:]
    name, argv = _pop_flag(argv, "--preset", "coinrun")
    timed, argv = _pop_flag(argv, "--timed-steps", "10")
    inputs, argv = _pop_flag(argv, "--inputs", "frames")
    base = preset(component, name, _family(component, argv))
    desc = (
        f"Benchmark one {component} train step on synthetic data: step time, tokens/s, XLA and model FLOPs, "
        f"MFU. --preset NAME (default coinrun), --timed-steps N (default 10), --inputs frames|tokens (dynamics: "
        f"pre-tokenized batches skip the frozen encoders); every config field can be set."
    )
    cfg = tyro.cli(type(base), default=base, args=argv, prog=f"{prog} {component} [--preset NAME]", description=desc)
    return component, name, cfg, int(timed), inputs


def _bench_train(parsed) -> None:
    from jasmine.bench import bench_train, with_frame_tokenizer
    from jasmine.train.components import COMPONENTS

    component, name, cfg, timed, inputs = parsed
    if component == "dynamics":
        cfg = with_frame_tokenizer(cfg, name)
    bench_train(cfg, COMPONENTS[component], timed, inputs)


def parse_command(command: str, flags: list[str]):
    """``jasmine COMMAND FLAGS`` parsed by the command's own parser (the sweep's check of every run it plans)."""
    return COMMANDS[command].parse(flags, f"jasmine {command}")


def run_command(argv: list[str]) -> None:
    """One ``jasmine`` command line run in this process; its errors raise (no ``sys.exit`` wrapping)."""
    name = command_name(argv)
    cmd = COMMANDS[name]
    cmd.run(cmd.parse(argv[len(name.split()) :], f"jasmine {name}"))


def _sweep(args) -> None:
    from jasmine.sweep import sweep

    sweep(args, parse_command, run_command)


def _play_parse(argv: list[str], prog: str):
    try:
        from jasmine.play.server import PlayArgs
    except ImportError as e:
        sys.exit(f"jasmine play needs the play extra ({e.name} is missing): uv sync --extra play")
    return tyro.cli(PlayArgs, args=argv, prog=prog)


def _run(module: str, name: str) -> Run:
    """The function ``module.name``, imported when the command runs."""

    def run(args) -> None:
        getattr(importlib.import_module(module), name)(args)

    return run


def _parse(module: str, name: str) -> Parse:
    """Parse argv into ``module.name`` (a dataclass of flags), imported when the command is parsed."""

    def parse(argv: list[str], prog: str):
        return tyro.cli(getattr(importlib.import_module(module), name), args=argv, prog=prog)

    return parse


def _print_result(result: dict) -> None:
    def fmt(m):
        return "  ".join(
            f"{k} {v:.4g}"
            for k, v in m.items()
            if k
            in (
                "loss",
                "mse",
                "psnr",
                "ssim",
                "codebook_usage",
                "top1_accuracy",
                "full_frame_psnr",
                "lam_codebook_usage",
            )
        )

    print(f"step {result['step']}  train: {fmt(result['train'])}")
    if result["val"]:
        print(f"           val:   {fmt(result['val'])}")
    print(f"run dir {result['run_dir']} (config.json, checkpoints/, metrics.jsonl, samples/, tensorboard/)")


Parse = Callable[[list[str], str], Any]  # (argv, prog) -> the parsed flags; exits on bad flags and after --help
Run = Callable[[Any], None]  # the parsed flags -> does the work


@dataclass(frozen=True)
class Command:
    parse: Parse
    run: Run
    help: str


COMMANDS: dict[str, Command] = {
    "data coinrun": Command(data_commands.coinrun_parse, data_commands.coinrun, "generate a procgen CoinRun dataset"),
    "data video": Command(
        data_commands.convert_parse("video"),
        data_commands.convert("video"),
        "video files (mp4, webm, mkv, avi, gif) to a dataset, split by file",
    ),
    "data images": Command(
        data_commands.convert_parse("images"),
        data_commands.convert("images"),
        "folders of PNG/JPEG frames (one per episode) to a dataset",
    ),
    "data dedup": Command(
        _parse("jasmine.data.dedup", "DedupArgs"),
        data_commands.dedup,
        "exact duplicate episodes and frames within and across splits; JSON report",
    ),
    "data import-jasmine": Command(
        _parse("jasmine.data.import_jasmine", "ImportArgs"),
        data_commands.import_jasmine,
        "convert a dataset in the reference's pickled format, safely",
    ),
    "data atari": Command(
        data_commands.game_parse("atari"),
        data_commands.game("atari"),
        "random-policy Atari episodes (ale-py), splits disjoint by env seed",
    ),
    "data minatar": Command(
        data_commands.game_parse("minatar"),
        data_commands.game("minatar"),
        "random-policy MinAtar episodes, rendered in colour",
    ),
    "data relayout": Command(
        _parse("jasmine.data.commands", "RelayoutArgs"),
        data_commands.relayout,
        "copy a dataset into another record layout (format 3: fastest loading)",
    ),
    "data inspect": Command(
        _parse("jasmine.data.inspect", "InspectArgs"),
        data_commands.inspect,
        "summarise a dataset; write a contact sheet and a GIF",
    ),
    "train tokenizer": Command(_train_parse("tokenizer"), _train("tokenizer"), "train the VQ-VAE video tokenizer"),
    "train lam": Command(_train_parse("lam"), _train("lam"), "train the latent action model"),
    "train idm": Command(
        _train_parse("idm"), _train("idm"), "train the LAM's supervised ceiling: its encoder classifying real actions"
    ),
    "train mae": Command(
        _train_parse("mae"), _train("mae"), "train the MAE tokenizer (continuous latents for the diffusion dynamics)"
    ),
    "train dynamics": Command(
        _train_parse("dynamics"),
        _train("dynamics"),
        "train the dynamics: MaskGIT, --dynamics causal or diffusion (--lam RUN | --co-train-lam | --gt-actions)",
    ),
    "sample": Command(
        _parse("jasmine.sample.command", "SampleArgs"),
        _run("jasmine.sample.command", "sample"),
        "roll a trained model out from context frames; GIF, MP4 and per-frame metrics",
    ),
    "eval": Command(
        _parse("jasmine.eval.evaluate", "EvalArgs"),
        _run("jasmine.eval.evaluate", "evaluate"),
        "rollout PSNR/SSIM vs baselines, controllability (delta PSNR), plots and a report",
    ),
    "data tokenize": Command(
        _parse("jasmine.train.tokenize", "TokenizeArgs"),
        _data_tokenize,
        "write token-id records for fast dynamics training",
    ),
    "actions": Command(
        _parse("jasmine.eval.actions", "ActionsArgs"),
        _run("jasmine.eval.actions", "actions_report"),
        "LAM codes against real actions: count matrix, NMI, heatmap, each code's dominant actions",
    ),
    "play": Command(
        _play_parse,
        _run("jasmine.play.server", "play"),
        "play a dynamics run in the browser: keys pick actions, each press generates a frame",
    ),
    "demo": Command(
        _parse("jasmine.demo", "DemoArgs"),
        _run("jasmine.demo", "demo"),
        "the end-to-end demo: CoinRun data, three training stages, eval and report",
    ),
    "sweep": Command(
        _parse("jasmine.sweep", "SweepArgs"),
        _sweep,
        "train, evaluate and rank a declared comparison (cells x seeds, shared runs) with bootstrap intervals",
    ),
    "bench data": Command(_parse("jasmine.bench", "BenchDataArgs"), _bench_data, "loader throughput in frames/s"),
    "bench train": Command(_bench_train_parse, _bench_train, "train-step time, tokens/s and MFU of a component"),
    "bench sample": Command(
        _parse("jasmine.bench", "BenchSampleArgs"),
        _run("jasmine.bench", "bench_sample"),
        "frames/s of rollouts with and without the KV cache",
    ),
    "bench play": Command(
        _parse("jasmine.bench", "BenchPlayArgs"),
        _run("jasmine.bench", "bench_play"),
        "play latency from an action to its frame: median and p95, in-process and over a WebSocket",
    ),
}


def _usage(prefix: str = "") -> str:
    width = max(map(len, COMMANDS))
    rows = [f"  jasmine {name:<{width}}  {c.help}" for name, c in COMMANDS.items() if name.startswith(prefix)]
    return "\n".join(["usage: jasmine COMMAND [--help] [flags]", "", *rows])


def command_name(argv: list[str]) -> str | None:
    """The command ``argv`` names (``"train lam"``), or None."""
    words = [a for a in argv[:2] if not a.startswith("-")]
    return next((n for n in (" ".join(words[:2]), words[0] if words else "") if n in COMMANDS), None)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv[:2] if not a.startswith("-")]
    name = command_name(argv)
    if name is None:
        prefix = words[0] if words else ""
        known = any(n.startswith(prefix + " ") for n in COMMANDS)
        print(_usage(prefix if known else ""))
        if words and not (known and len(words) == 1):
            sys.exit(f"jasmine: unknown command {' '.join(words)!r}")
        return
    try:
        run_command(argv)
    except (DataError, ValueError, FileNotFoundError) as e:
        sys.exit(f"jasmine {name}: error: {e}")
    except KeyboardInterrupt as e:  # e.g. training's second Ctrl-C: no traceback, the shell's 130
        print(f"\njasmine {name}: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
