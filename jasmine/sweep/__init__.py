"""``jasmine sweep SPEC``: a declared comparison (cells × seeds) trained, evaluated and ranked in one command.

``spec`` parses the TOML file, ``plan`` expands it into a graph of runs shared wherever cells agree, ``execute``
runs the graph here or on SLURM and ``leaderboard`` ranks the cells with hierarchical-bootstrap intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import tyro

from jasmine.sweep.execute import is_done, run_local, submit_slurm
from jasmine.sweep.leaderboard import episode_figures, leaderboard, markdown, write
from jasmine.sweep.plan import Parser, Plan, build_plan
from jasmine.sweep.spec import SpecError, load_spec

__all__ = ["SweepArgs", "SpecError", "sweep", "load_spec", "build_plan", "board_of"]


@dataclass(frozen=True)
class SweepArgs:
    """Train, evaluate and rank every cell of a sweep spec (docs/ablations.md); finished runs are reused."""

    spec: tyro.conf.Positional[Path]
    """The sweep's TOML file."""
    out: Path | None = None
    """Output directory (default: the spec's `out`, else runs/sweeps/SPEC-NAME)."""
    workers: int = 1
    """Runs at once here. 1 runs them in this process; more run each in a child process pinned to its share of
    the CPU cores (and of --gpus)."""
    gpus: tuple[int, ...] = ()
    """GPU ids shared out between the workers (CUDA_VISIBLE_DEVICES of each child)."""
    dry_run: bool = False
    """Print the plan (each run, its status and its command) and stop."""
    slurm: bool = False
    """Submit every unfinished run to SLURM (submitit; the spec's [slurm] table) with afterok dependencies, and a
    last job that writes the leaderboard."""
    leaderboard_only: bool = False
    """Only write the leaderboard from the evals finished so far."""
    rounds: int = 2000
    """Bootstrap rounds of the leaderboard's intervals."""


def board_of(plan: Plan, rounds: int = 2000) -> dict:
    figures: dict[str, dict[int, dict]] = {c: {} for c in plan.cells}
    for (cell, seed), key in plan.evals.items():
        job = plan.jobs[key]
        if is_done(plan, job):
            figures[cell][seed] = episode_figures(json.loads((job.out / "metrics.json").read_text()))
    return leaderboard(figures, plan.baseline, len(plan.spec.seeds), rounds=rounds)


def write_board(spec_path: str, out: str | None, rounds: int, parse: Parser) -> list[Path]:
    """The leaderboard of the finished evals (also the last SLURM job)."""
    plan = build_plan(load_spec(Path(spec_path), Path(out) if out else None), parse)
    return write(board_of(plan, rounds), plan.spec.out)


def describe(plan: Plan) -> str:
    stages = [s for s in ("data", "tokenizer", "mae", "lam", "dynamics", "eval") if plan.count(s)]
    counts = ", ".join(f"{plan.count(s)} {s}" for s in stages)
    lines = [
        f"[sweep] {plan.spec.path}: {len(plan.cells)} cell(s) × {len(plan.spec.seeds)} seed(s) → {len(plan.jobs)} "
        f"runs ({counts}); baseline {plan.baseline}; outputs in {plan.spec.out}"
    ]
    return "\n".join(lines)


def sweep(args: SweepArgs, parse: Parser, runner) -> dict | None:
    spec = load_spec(args.spec, args.out)
    plan = build_plan(spec, parse)
    print(describe(plan))
    if args.dry_run:
        for job in plan.jobs.values():
            status = "done" if is_done(plan, job) else "resume" if job.out.exists() else "new"
            note = " (finished by an older jasmine; fields added since are at their defaults)" if job.adopted else ""
            print(f"  {status:6} {job.stage:9} {job.out.name}  used by {len(job.uses)} cell-seed(s){note}")
            print(f"         {job.shell()}")
        return None
    if args.slurm:
        write_fn = partial(write_board, str(args.spec), str(args.out) if args.out else None, args.rounds, parse)
        submit_slurm(plan, spec.slurm, spec.out / "slurm", write_fn)
        return None
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / "plan.json").write_text(
        json.dumps(
            {
                "spec": str(spec.path),
                "cells": plan.cells,
                "seeds": list(spec.seeds),
                "baseline": plan.baseline,
                "runs": {k: {"stage": j.stage, "command": j.shell(), "uses": j.uses} for k, j in plan.jobs.items()},
            },
            indent=2,
        )
        + "\n"
    )
    failed = [] if args.leaderboard_only else run_local(plan, args.workers, runner, args.gpus)
    board = board_of(plan, args.rounds)
    paths = write(board, spec.out)
    print("\n" + markdown(board))
    print("wrote " + ", ".join(map(str, paths)))
    if failed:
        raise SystemExit(
            f"jasmine sweep: {len(failed)} run(s) failed or were blocked by a failed run: "
            f"{', '.join(plan.jobs[k].out.name for k in failed)} (see {spec.out / 'journal.jsonl'})"
        )
    return board
