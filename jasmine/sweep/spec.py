"""The sweep spec: a TOML file naming the data, a recipe per stage, the axes to vary and the seeds.

    out = "runs/sweeps/prepend"          # default: runs/sweeps/<file name>
    runs = "runs/sweeps/runs"            # default: OUT/runs; sweeps naming the same one share the runs they agree on
    seeds = [0, 1, 2]
    baseline = "action-mode=prepend"     # the cell paired differences are taken against (default: the first)

    [data]                               # path = "DIR" (an existing dataset), or a generator and its flags:
    command = "coinrun"
    train-episodes = 400

    [tokenizer]                          # also [mae], [lam], [dynamics], [eval]: flags of that stage's command
    preset = "tiny"
    seeded = false                       # one run shared by every seed (default: one per seed)
    # run = "runs/demo/tokenizer"        # or an existing run, never retrained

    [axes]
    "dynamics.model.action-mode" = ["prepend", "add"]   # a field and its values
    [axes.family]                                        # or named values, each setting several fields
    maskgit = { "dynamics.dynamics" = "maskgit", "dynamics.steps" = 2400 }

Every field is a flag of the stage's ``jasmine`` command (``model.action-mode`` or ``model.action_mode``); the
values are checked by that command's own parser when the plan is built. Errors name the spec's line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("data", "tokenizer", "mae", "lam", "dynamics", "eval")
TRAINED = ("tokenizer", "mae", "lam", "dynamics")
RESERVED = {"preset", "seeded", "run", "path", "command"}
DATA_COMMANDS = ("coinrun", "minatar", "atari", "video", "images")
TOP = {"out", "runs", "seeds", "baseline", "axes", "slurm", *STAGES}


class SpecError(ValueError):
    """A bad sweep spec; the message names the file and line."""


@dataclass(frozen=True)
class Stage:
    """One stage's recipe: its preset, flags, whether it is trained once per seed, or an existing run."""

    name: str
    preset: str = "tiny"
    flags: dict[str, Any] = field(default_factory=dict)
    seeded: bool = True
    run: Path | None = None
    """An existing run (or, for data, a dataset directory), used as it is."""
    command: str = ""
    """data only: the generator (``jasmine data COMMAND``)."""


@dataclass(frozen=True)
class Spec:
    path: Path
    out: Path
    runs: Path
    """Where the runs live (``RUNS/STAGE-KEY``); sweeps naming the same directory share the runs they agree on."""
    seeds: tuple[int, ...]
    stages: dict[str, Stage]
    axes: dict[str, dict[str, dict[str, Any]]]
    """axis name -> value label -> {"stage.field": value}."""
    baseline: str | None
    slurm: dict[str, Any]
    """submitit SlurmExecutor parameters for every job; a sub-table per stage overrides them for that stage."""
    lines: dict[str, int]
    """Where each key was written (for errors found later, e.g. by a command's parser)."""

    def line(self, key: str) -> str:
        n = self.lines.get(key)
        return f"{self.path}:{n}" if n else str(self.path)


def _lines(text: str) -> dict[str, int]:
    """The first line on which each (dotted, quoted or bare) key is written, per table."""
    lines: dict[str, int] = {}
    table = ""
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.split("#", 1)[0].strip() if not raw.strip().startswith(('"', "'")) else raw.strip()
        if m := re.match(r"^\[+\s*([^\]]+?)\s*\]+$", s):
            table = m.group(1).replace('"', "").replace("'", "")
            lines.setdefault(table, n)
            continue
        if m := re.match(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_.\-]+)\s*=""", s):
            key = m.group(1).strip("\"'")
            lines.setdefault(f"{table}.{key}" if table else key, n)
            for inner in re.findall(r"""("[^"]*"|[A-Za-z0-9_\-]+)\s*=""", s[m.end() :]):
                lines.setdefault(f"{table}.{key}.{inner.strip(chr(34))}" if table else f"{key}.{inner}", n)
    return lines


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """Nested tables (TOML's bare dotted keys, ``model.action-mode = "add"``) as dotted flag names."""
    flat: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _flag_name(name: str) -> str:
    return name.replace("_", "-")


def _check_value(value: Any, where: str) -> None:
    if isinstance(value, dict):
        raise SpecError(f"{where}: a table is not a flag value")
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{where}: an empty list")
        for v in value:
            _check_value(v, where)


def _stage(name: str, table: Any, spec_path: Path, lines: dict[str, int]) -> Stage:
    where = f"{spec_path}:{lines.get(name, '?')}"
    if not isinstance(table, dict):
        raise SpecError(f"{where}: [{name}] must be a table of flags")
    flags: dict[str, Any] = {}
    for k, v in _flatten({k: v for k, v in table.items() if k not in RESERVED}).items():
        _check_value(v, f"{spec_path}:{lines.get(f'{name}.{k}', '?')}: {name}.{k}")
        flags[_flag_name(k)] = v
    for k in ("out", "data", "tokenizer", "lam", "run", "resume", "seed"):
        if k in flags and not (k == "seed" and name not in TRAINED):
            raise SpecError(
                f"{spec_path}:{lines.get(f'{name}.{k}', '?')}: {name}.{k} is set by the sweep (its runs, seeds and "
                "outputs); use `run = DIR` to take an existing run, `seeded` to choose per-seed runs"
            )
    seeded = table.get("seeded", name in TRAINED)
    if not isinstance(seeded, bool) or (seeded and name not in TRAINED):
        raise SpecError(
            f"{spec_path}:{lines.get(f'{name}.seeded', '?')}: {name}.seeded must be true or false "
            f"(and only the trained stages {', '.join(TRAINED)} can be seeded)"
        )
    preset = table.get("preset", "tiny")
    if not isinstance(preset, str):
        raise SpecError(f"{spec_path}:{lines.get(f'{name}.preset', '?')}: {name}.preset must be a string")
    run = table.get("run", table.get("path"))
    if run is not None and (not isinstance(run, str) or not run):
        raise SpecError(f"{spec_path}:{lines.get(f'{name}.run', '?')}: {name}.run must be a directory")
    command = table.get("command", "")
    if name == "data":
        if run is None and command not in DATA_COMMANDS:
            raise SpecError(
                f"{where}: [data] needs path = DIR or command = one of {', '.join(DATA_COMMANDS)} (got {command!r})"
            )
    elif command:
        raise SpecError(f"{spec_path}:{lines.get(f'{name}.command', '?')}: only [data] has a command")
    return Stage(name, preset, flags, bool(seeded) and run is None, Path(run).expanduser() if run else None, command)


def _axes(raw: Any, spec_path: Path, lines: dict[str, int]) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(raw, dict):
        raise SpecError(f"{spec_path}:{lines.get('axes', '?')}: [axes] must be a table")
    axes: dict[str, dict[str, dict[str, Any]]] = {}
    for name, values in raw.items():
        where = f"{spec_path}:{lines.get(f'axes.{name}', '?')}: axis {name!r}"
        if isinstance(values, list):  # a field and its values
            _field_key(name, where)
            if not values:
                raise SpecError(f"{where} has no values")
            labels = {}
            for v in values:
                _check_value(v, where)
                labels[_label(v)] = {name: v}
            if len(labels) != len(values):
                raise SpecError(f"{where} repeats a value")
            short = _flag_name(name.rsplit(".", 1)[1])  # the cell is named "action-mode=add"
            axes[short if short not in raw and short not in axes else _flag_name(name)] = labels
        elif isinstance(values, dict):  # named values, each a table of fields
            if not values:
                raise SpecError(f"{where} has no values")
            axes[name] = {}
            for label, fields in values.items():
                w = f"{spec_path}:{lines.get(f'axes.{name}.{label}', lines.get(f'axes.{name}', '?'))}: {name}.{label}"
                if not isinstance(fields, dict) or not fields:
                    raise SpecError(f'{w} must be a table of fields, e.g. {{ "dynamics.steps" = 1600 }}')
                fields = _flatten(fields)
                for k, v in fields.items():
                    _field_key(k, f"{w}: {k}")
                    _check_value(v, f"{w}: {k}")
                axes[name][str(label)] = dict(fields)
        else:
            raise SpecError(f"{where}: give a list of values or a table of named values")
    return axes


def _label(v: Any) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)


def _field_key(key: str, where: str) -> tuple[str, str]:
    stage, _, name = key.partition(".")
    if stage not in STAGES or not name:
        raise SpecError(f"{where}: a field is STAGE.FLAG with STAGE one of {', '.join(STAGES)} (got {key!r})")
    if stage == "data":
        raise SpecError(f"{where}: the data is shared by every cell; it cannot be an axis")
    return stage, _flag_name(name)


def _slurm(raw: Any, path: Path, lines: dict[str, int]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{path}:{lines.get('slurm', '?')}: [slurm] must be a table of sbatch parameters")
    for k, v in raw.items():
        if isinstance(v, dict) and k not in STAGES:
            raise SpecError(f"{path}:{lines.get(f'slurm.{k}', '?')}: [slurm.{k}]: {k!r} is not a stage")
    return raw


def load_spec(path: Path, out: Path | None = None) -> Spec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    lines = _lines(text)
    for k in raw:
        if k not in TOP:
            raise SpecError(f"{path}:{lines.get(k, '?')}: unknown key or stage {k!r} (known: {', '.join(sorted(TOP))})")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise SpecError(f"{path}:{lines.get('seeds', '?')}: seeds must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{path}:{lines.get('seeds', '?')}: seeds repeat a value")
    if "data" not in raw:
        raise SpecError(f"{path}: the spec needs a [data] table (path = DIR, or command = coinrun and its flags)")
    stages = {name: _stage(name, raw.get(name, {}), path, lines) for name in STAGES}
    baseline = raw.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise SpecError(f"{path}:{lines.get('baseline', '?')}: baseline must be a cell name")
    default_out = Path("runs/sweeps") / path.stem
    out_value = raw.get("out", str(default_out))
    if not isinstance(out_value, str) or not out_value:
        raise SpecError(f"{path}:{lines.get('out', '?')}: out must be a directory")
    runs_value = raw.get("runs")
    if runs_value is not None and (not isinstance(runs_value, str) or not runs_value):
        raise SpecError(f"{path}:{lines.get('runs', '?')}: runs must be a directory")
    out_dir = Path(out) if out is not None else Path(out_value)
    return Spec(
        path=path,
        out=out_dir,
        runs=Path(runs_value) if runs_value else out_dir / "runs",
        seeds=tuple(seeds),
        stages=stages,
        axes=_axes(raw.get("axes", {}), path, lines),
        baseline=baseline,
        slurm=_slurm(raw.get("slurm", {}), path, lines),
        lines=lines,
    )
