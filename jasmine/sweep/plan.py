"""The sweep's plan: cells (one value per axis) × seeds, expanded into a graph of runs keyed by their config.

data → tokenizer (or MAE, for a continuous dynamics family) → LAM (unless the dynamics co-trains it or uses the
real actions) → dynamics → eval. A run's key hashes its command, its flags and its upstream runs' keys, so every
cell and seed that agrees on a run shares it: varying a dynamics flag never retrains the tokenizer, and an
unseeded stage (``seeded = false``) is trained once for all seeds. Runs live in ``RUNS/STAGE-KEY`` (the spec's
``runs``, default ``OUT/runs``): sweeps that name the same ``runs`` share every run they agree on.

A finished run's marker (``RUNS/finished/KEY.json``) keeps its resolved config, so a run finished by an older
jasmine is adopted when the only difference is config fields added since, each at its default (a new field's
default keeps the old behaviour); any other difference, a changed default included, is a new run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jasmine.config import to_dict
from jasmine.models.genie import DYNAMICS
from jasmine.sweep.spec import Spec, SpecError

Parser = Callable[[str, list[str]], Any]
"""(command, flags) -> the parsed flags; raises SystemExit (with a message on stderr) on bad flags."""


@dataclass
class Job:
    key: str
    stage: str
    command: str
    """The jasmine command: ``train dynamics``, ``eval``, ``data coinrun``."""
    flags: list[str]
    """Its flags, ``--out`` included."""
    out: Path
    deps: tuple[str, ...]
    uses: list[tuple[str, int]] = field(default_factory=list)
    """The (cell, seed) pairs that need this run."""
    config: Any = None
    """Its resolved config (JSON types; ``--out`` left out), kept in its finished marker."""
    adopted: bool = False
    """Finished by an older jasmine under another key: its config lacks only fields now at their defaults."""

    @property
    def argv(self) -> list[str]:
        return [*self.command.split(), *self.flags]

    def shell(self) -> str:
        return "jasmine " + shlex.join(self.argv)


@dataclass
class Plan:
    spec: Spec
    cells: dict[str, dict[str, dict[str, Any]]]
    """cell name -> stage -> flag -> value (the axes' overrides)."""
    jobs: dict[str, Job]
    """In an order where every job follows its upstream runs."""
    evals: dict[tuple[str, int], str]
    """(cell, seed) -> the key of its eval run."""
    baseline: str

    def count(self, stage: str) -> int:
        return sum(j.stage == stage for j in self.jobs.values())


def render(flags: dict[str, Any]) -> list[str]:
    """Flags as the command line spells them (tyro): ``--name value``, booleans as ``--name`` / ``--no-name``."""
    argv: list[str] = []
    for name, value in flags.items():
        if isinstance(value, bool):
            head, _, last = name.rpartition(".")
            argv.append(f"--{name}" if value else f"--{head + '.' if head else ''}no-{last}")
        elif isinstance(value, list):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def marker(runs: Path, key: str) -> Path:
    """The file that says run ``key`` finished (written only after its command succeeded)."""
    return Path(runs) / "finished" / f"{key}.json"


def _plain(config: Any) -> Any:
    """A parsed config as JSON types, ``--out`` left out (a run's key and its marker's record)."""
    cfg = to_dict(config) if dataclasses.is_dataclass(config) else config
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k != "out"}
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def _defaults(config: Any) -> Any:
    """The config class's own defaults as JSON types, or None where it has no default instance."""
    try:
        return _plain(type(config)()) if dataclasses.is_dataclass(config) else None
    except TypeError:
        return None


def _key(stage: str, command: str, cfg: Any) -> str:
    """A run's key: its stage, command and whole resolved config (upstream run directories included, its own
    ``--out`` not), so two spellings of one recipe (a preset's default written out, or left out) are one run."""
    blob = json.dumps([stage, command, cfg], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


_ABSENT = object()


def compatible(old: Any, new: Any, default: Any) -> bool:
    """Whether a finished run's config ``old`` is ``new`` but for fields added since, each at its ``default``."""
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) - set(new):
            return False  # a field since removed or renamed: what the run did cannot be read in today's terms
        defaults = default if isinstance(default, dict) else {}
        return all(
            compatible(old[k], v, defaults.get(k, _ABSENT)) if k in old else defaults.get(k, _ABSENT) == v
            for k, v in new.items()
        )
    return old == new


def finished_configs(runs: Path) -> dict[tuple[str, str], list[tuple[str, Any]]]:
    """(stage, command) -> [(key, config)] of the finished runs whose markers keep their config."""
    found: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for path in sorted((Path(runs) / "finished").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("key") == path.stem and "config" in rec and "command" in rec:
            found.setdefault((str(rec.get("stage")), str(rec["command"])), []).append((path.stem, rec["config"]))
    return found


def cells_of(spec: Spec) -> dict[str, dict[str, dict[str, Any]]]:
    """Every combination of one value per axis, named ``axis=value,...`` (one unnamed cell without axes)."""
    names = list(spec.axes)
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for combo in itertools.product(*(spec.axes[n].items() for n in names)):
        name = ",".join(f"{axis}={label}" for axis, (label, _) in zip(names, combo, strict=True)) or "base"
        overrides: dict[str, dict[str, Any]] = {}
        for _, fields in combo:
            for key, value in fields.items():
                stage, _, flag = key.partition(".")
                overrides.setdefault(stage, {})[flag.replace("_", "-")] = value
        cells[name] = overrides
    return cells


def _truthy(flags: dict[str, Any], name: str) -> bool:
    return flags.get(name) is True


def build_plan(spec: Spec, parse: Parser) -> Plan:
    """The graph of runs; every run's command is parsed (and so checked) by the command's own parser."""
    cells = cells_of(spec)
    baseline = spec.baseline or next(iter(cells))
    if baseline not in cells:
        raise SpecError(f"{spec.line('baseline')}: baseline {baseline!r} is not a cell (cells: {', '.join(cells)})")
    jobs: dict[str, Job] = {}
    evals: dict[tuple[str, int], str] = {}
    older = finished_configs(spec.runs)

    def add(stage: str, command: str, flags: dict[str, Any], upstream: dict[str, str], where: str) -> str:
        ups = [a for k, v in upstream.items() for a in (f"--{k}", str(jobs[v].out if v in jobs else v))]
        argv = [*ups, *render(dict(sorted(flags.items())))]
        probe = Job("", stage, command, [*argv, "--out", str(spec.runs / stage)], spec.runs / stage, ())
        parsed = _check(parse, probe, spec, where)
        cfg = _plain(parsed)
        key, adopted = _key(stage, command, cfg), False
        if key not in jobs and not marker(spec.runs, key).exists():
            default = _defaults(parsed)
            for old, old_cfg in older.get((stage, command), []):
                if old != key and compatible(old_cfg, cfg, default):
                    key, adopted = old, True
                    break
        if key not in jobs:
            out = spec.runs / f"{stage}-{key}"
            deps = tuple(u for u in upstream.values() if u in jobs)
            jobs[key] = Job(key, stage, command, [*argv, "--out", str(out)], out, deps, config=cfg, adopted=adopted)
        return key

    data_stage = spec.stages["data"]
    if data_stage.run is not None:
        data: str = str(data_stage.run)
    else:
        data = add("data", f"data {data_stage.command}", data_stage.flags, {}, "data")
    for seed, (cell, overrides) in itertools.product(spec.seeds, cells.items()):  # a seed of every cell, then the next
        dyn_flags = {**spec.stages["dynamics"].flags, **overrides.get("dynamics", {})}
        family = DYNAMICS.get(str(dyn_flags.get("dynamics", "maskgit")))
        if family is None:
            raise SpecError(
                f"{spec.line('dynamics.dynamics')}: unknown dynamics family {dyn_flags['dynamics']!r} "
                f"(known: {', '.join(DYNAMICS)})"
            )
        chain: dict[str, str] = {}
        wanted = ["mae" if family.continuous else "tokenizer"]
        if not (_truthy(dyn_flags, "co-train-lam") or _truthy(dyn_flags, "gt-actions")):
            wanted.append("lam")
        for stage in wanted:
            chain[stage] = _stage_run(spec, stage, overrides, seed, data, add)
        dyn_up = {"data": data, "tokenizer": chain[wanted[0]], **({"lam": chain["lam"]} if "lam" in chain else {})}
        dyn = _train(spec, "dynamics", dyn_flags, seed, dyn_up, add)
        ev_flags = {**spec.stages["eval"].flags, **overrides.get("eval", {})}
        ev = add("eval", "eval", ev_flags, {"run": dyn, "data": data}, "eval")
        for key in {data, *chain.values(), dyn, ev}:
            if key in jobs:
                jobs[key].uses.append((cell, seed))
        evals[(cell, seed)] = ev
    return Plan(spec, cells, jobs, evals, baseline)


def _stage_run(spec: Spec, stage: str, overrides: dict, seed: int, data: str, add) -> str:
    st = spec.stages[stage]
    if st.run is not None:
        return str(st.run)
    return _train(spec, stage, {**st.flags, **overrides.get(stage, {})}, seed, {"data": data}, add)


def _train(spec: Spec, stage: str, flags: dict[str, Any], seed: int, upstream: dict[str, str], add) -> str:
    st = spec.stages[stage]
    flags = {"preset": st.preset, **flags, **({"seed": seed} if st.seeded else {})}
    return add(stage, f"train {stage}", flags, upstream, stage)


def _check(parse: Parser, job: Job, spec: Spec, stage: str) -> Any:
    """The parsed flags of ``job``; a :class:`SpecError` naming the spec's line when they do not parse."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse(job.command, job.flags)
    except SystemExit as e:
        text = re.sub(r"[\u2500-\u257f]+", " ", err.getvalue())  # tyro's box drawing
        text = " ".join(line for line in text.splitlines() if "helptext" not in line and "subcommands" not in line)
        message = " ".join(text.split()) or str(e)
        flags = set(re.findall(r"--([\w.\-]+)", message))
        named = [k for k in spec.lines if k.startswith((f"{stage}.", "axes."))
                 and any(k.replace("_", "-").endswith("." + f) for f in flags)]  # fmt: skip
        where = spec.line(named[0]) if named else spec.line(stage)
        raise SpecError(f"{where}: `{job.shell()}` does not parse: {message[:400]}") from None
