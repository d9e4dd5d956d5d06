"""jasmine sweep: the plan's shared runs, bad specs, the hierarchical bootstrap, SLURM submission and a micro
sweep interrupted and resumed."""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MICRO_DYN, cli

from jasmine.cli import parse_command as parse
from jasmine.sweep import SpecError, build_plan, load_spec
from jasmine.sweep.leaderboard import hierarchical_bootstrap, leaderboard, markdown, paired_values

BASE = """
seeds = [0, 1]
[data]
path = "DATA"
[tokenizer]
preset = "micro"
seeded = false
[lam]
preset = "micro"
[dynamics]
preset = "micro"
steps = 3
[eval]
clips = 2
[axes]
"dynamics.model.action-mode" = ["prepend", "add"]
"""


def spec_file(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("DATA", str(tmp_path / "data")))
    return path


def test_plan_shares_every_upstream_run_the_cells_agree_on(tmp_path):
    plan = build_plan(load_spec(spec_file(tmp_path, BASE), tmp_path / "out"), parse)
    # one unseeded tokenizer, a LAM per seed, a dynamics run and an eval per cell and seed
    assert {s: plan.count(s) for s in ("data", "tokenizer", "lam", "dynamics", "eval")} == {
        "data": 0, "tokenizer": 1, "lam": 2, "dynamics": 4, "eval": 4}  # fmt: skip
    assert sorted(plan.cells) == ["action-mode=add", "action-mode=prepend"] and plan.baseline == "action-mode=prepend"
    (tok,) = [j for j in plan.jobs.values() if j.stage == "tokenizer"]
    assert len(tok.uses) == 4 and "--seed" not in tok.flags
    for job in plan.jobs.values():  # every run follows its upstream runs, and names them on its command line
        order = list(plan.jobs)
        assert all(order.index(d) < order.index(job.key) for d in job.deps)
        assert all(str(plan.jobs[d].out) in job.flags for d in job.deps)
    dyn = [j for j in plan.jobs.values() if j.stage == "dynamics"]
    assert {j.flags[j.flags.index("--seed") + 1] for j in dyn} == {"0", "1"}
    assert {j.flags[j.flags.index("--model.action-mode") + 1] for j in dyn} == {"prepend", "add"}
    # a changed dynamics flag keeps the upstream runs' keys; seeding the tokenizer makes one per seed
    changed = build_plan(
        load_spec(spec_file(tmp_path, BASE.replace("steps = 3", "steps = 5")), tmp_path / "out"), parse
    )
    assert {k for k, j in changed.jobs.items() if j.stage in ("tokenizer", "lam")} == {
        k for k, j in plan.jobs.items() if j.stage in ("tokenizer", "lam")}  # fmt: skip
    assert not {k for k, j in changed.jobs.items() if j.stage == "dynamics"} & set(plan.jobs)
    seeded = build_plan(load_spec(spec_file(tmp_path, BASE.replace("seeded = false", "")), tmp_path / "out"), parse)
    assert seeded.count("tokenizer") == 2
    # a run is keyed by its resolved config: the preset's own value written out is the same run, and another
    # sweep naming the same runs directory shares it
    same = BASE.replace('"dynamics.model.action-mode" = ["prepend", "add"]', "")  # the default: prepend
    runs = f'runs = "{tmp_path / "out" / "runs"}"\n'
    other = build_plan(load_spec(spec_file(tmp_path, runs + same, "b.toml"), tmp_path / "b"), parse)
    prepend = {k for k, j in plan.jobs.items() if {c for c, _ in j.uses} == {"action-mode=prepend"}}
    assert other.count("dynamics") == 2 and len(prepend) == 4 and prepend <= set(other.jobs)
    assert not prepend & set(build_plan(load_spec(spec_file(tmp_path, same, "c.toml"), tmp_path / "c"), parse).jobs)
    # a family axis: diffusion trains the MAE, co-training drops the LAM run
    family = BASE.replace(
        '"dynamics.model.action-mode" = ["prepend", "add"]',
        """
[axes.family]
maskgit = { "dynamics.dynamics" = "maskgit" }
diffusion = { "dynamics.dynamics" = "diffusion", "eval.temperature" = 1.0 }
cotrained = { "dynamics.co-train-lam" = true }""",
    )
    plan = build_plan(load_spec(spec_file(tmp_path, family), tmp_path / "out"), parse)
    assert {s: plan.count(s) for s in ("tokenizer", "mae", "lam", "dynamics")} == {
        "tokenizer": 1, "mae": 2, "lam": 2, "dynamics": 6}  # fmt: skip
    cot = [j for j in plan.jobs.values() if "--co-train-lam" in j.flags]
    assert len(cot) == 2 and all("--lam" not in j.flags for j in cot)


@pytest.mark.parametrize(
    "edit, line, message",
    [
        (("seeds = [0, 1]", "seeds = [0, 1]\nwidth = 3"), 3, "unknown key or stage 'width'"),
        (("steps = 3", "steps = 3\nmodel.bogus-field = 4"), 13, "bogus-field"),
        (("steps = 3", 'steps = "many"'), 12, "does not parse"),
        (('["prepend", "add"]', "[]"), 16, "has no values"),
        (('["prepend", "add"]', '["prepend", "sideways"]'), 16, "does not parse"),
        (('"dynamics.model.action-mode"', '"dynamo.model.action-mode"'), 16, "STAGE.FLAG"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), 2, "repeat"),
        (("seeds = [0, 1]", 'seeds = [0, 1]\nbaseline = "nope"'), 3, "is not a cell"),
        (("seeded = false", "seeded = false\nout = 'x'"), 8, "set by the sweep"),
        (("seeds = [0, 1]", "seeds = [0, 1"), 3, "not valid TOML"),
    ],
)
def test_bad_specs_are_refused_naming_the_line(tmp_path, edit, line, message):
    path = spec_file(tmp_path, BASE.replace(*edit))
    with pytest.raises(SpecError) as e:
        build_plan(load_spec(path, tmp_path / "out"), parse)
    assert message in str(e.value) and (f"{path}:{line}" in str(e.value) or f"line {line}" in str(e.value)), e.value
    result = cli("sweep", path, "--dry-run")  # the command says the same, without a traceback
    assert result.returncode != 0 and message in result.stderr


def test_hierarchical_bootstrap_covers_the_truth_at_about_the_nominal_rate():
    """Seeds differ by N(0, 1) and episodes by N(0, 2): the interval must carry both levels of variance."""
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(300):
        values = [rng.normal(rng.normal(0, 1.0), 2.0, 30) for _ in range(8)]
        d = hierarchical_bootstrap(values, rounds=400, seed=int(rng.integers(1 << 30)))
        hits.append(d["lo"] <= 0.0 <= d["hi"])
    assert 0.85 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_paired_differences_match_hand_computed_values():
    cell = {0: {5: 10.0, 7: 12.0, 9: 11.0}, 1: {5: 9.0, 7: 13.0}}
    base = {0: {9: 10.0, 5: 9.0, 7: 12.5}, 1: {7: 12.0, 5: 10.0, 3: 8.0}}  # pairs by episode, not by order
    pairs = paired_values(cell, base)
    assert [p.tolist() for p in pairs] == [[1.0, -0.5, 1.0], [-1.0, 1.0]]
    d = hierarchical_bootstrap(pairs, rounds=500)
    assert d["mean"] == pytest.approx(((1.0 - 0.5 + 1.0) / 3 + 0.0) / 2) and d["lo"] <= d["mean"] <= d["hi"]
    per = {s: {"psnr": v} for s, v in cell.items()}
    board = leaderboard({"b": {s: {"psnr": v} for s, v in base.items()}, "a": per}, "b", seeds=2, rounds=500)
    row = next(r for r in board["rows"] if r["cell"] == "a")
    assert row["psnr_vs_baseline"]["mean"] == pytest.approx(d["mean"])
    assert row["psnr"]["mean"] == pytest.approx((11.0 + 11.0) / 2)


def test_episode_figures_put_the_model_against_both_copies_per_episode():
    """Generated frames only (after the context); copy-last is the raw frame, copy-last tokens its reconstruction."""
    from jasmine.sweep.leaderboard import episode_figures

    psnr = {"model": [[99, 20, 22], [99, 18, 18]], "random_actions": [[99, 19, 20], [99, 18, 17]],
            "copy_last": [[50, 19, 19], [50, 17, 19]], "copy_last_tokens": [[40, 18, 18], [40, 16, 16]]}  # fmt: skip
    metrics = {"context": 1, "delta_t": 2, "per_clip": {"episode": [7, 3], "psnr": psnr, "ssim": psnr}}
    f = episode_figures(metrics)
    assert f["minus_copy"] == {7: 2.0, 3: 0.0} and f["minus_copy_tokens"] == {7: 3.0, 3: 2.0}
    assert f["psnr"] == {7: 21.0, 3: 18.0} and f["delta_psnr"] == {7: 2.0, 3: 1.0}
    board = leaderboard({"a": {0: f}}, "a", seeds=1, rounds=50)
    assert board["rows"][0]["minus_copy"]["mean"] == 1.0
    assert "model − copy-last (dB)" in markdown(board) and "+1.00 [" in markdown(board)


def test_slurm_submits_each_unfinished_run_after_its_upstream_jobs(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"  # records the script it is given and answers like sbatch
    fake.write_text(f"""#!/bin/sh
n=$(($(cat {record} 2>/dev/null | grep -c '^JOB') + 100))
echo "JOB $n $1" >> {record}
cat "$1" >> {record}
echo "Submitted batch job $n"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").write_text("#!/bin/sh\n")  # submitit looks for it before it submits
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = spec_file(tmp_path, BASE + '\n[slurm]\npartition = "gpu"\ntime = 90\n[slurm.dynamics]\ngpus_per_node = 8\n')
    result = cli("sweep", path, "--out", tmp_path / "out", "--slurm")
    assert result.returncode == 0, result.stderr
    ids = json.loads((tmp_path / "out" / "slurm_jobs.json").read_text())
    plan = build_plan(load_spec(path, tmp_path / "out"), parse)
    assert set(ids) == set(plan.jobs) | {"leaderboard"}
    scripts = {block.split()[0]: block for block in record.read_text().split("JOB ")[1:]}
    for key, job in plan.jobs.items():
        script = scripts[ids[key]]
        deps = sorted(ids[d] for d in job.deps)
        assert (f"#SBATCH --dependency=afterok:{':'.join(deps)}" in script) == bool(deps), script
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=90" in script
        assert ("#SBATCH --gpus-per-node=8" in script) == (job.stage == "dynamics")
        submitted = pickle.loads((tmp_path / "out" / "slurm" / ids[key] / f"{ids[key]}_submitted.pkl").read_bytes())
        assert submitted.args[0][: len(job.argv)] == job.argv  # the run's own command (+ --resume)
    lb = scripts[ids["leaderboard"]]
    leaderboard_job = pickle.loads(
        (tmp_path / "out" / "slurm" / ids["leaderboard"] / f"{ids['leaderboard']}_submitted.pkl").read_bytes()
    )
    assert leaderboard_job.function.func.__name__ == "write_board" and leaderboard_job.function.args[0] == str(path)
    assert all(ids[k] in lb for k in plan.evals.values()) and "afterok" in lb


@pytest.mark.heavy
def test_micro_sweep_interrupted_and_resumed_trains_nothing_twice(runs, tmp_path):
    out = tmp_path / "out"
    spec = BASE.replace('path = "DATA"', f'path = "{runs / "data"}"')
    spec = spec.replace('preset = "micro"\nseeded = false', f'run = "{runs / "tok"}"')
    spec = spec.replace('[lam]\npreset = "micro"', f'[lam]\nrun = "{runs / "lam"}"')
    # two learning rates: one compiled program for every run (the schedule is data), unlike two architectures
    spec = spec.replace('"dynamics.model.action-mode" = ["prepend", "add"]', '"dynamics.optim.lr" = [0.003, 0.001]')
    dims = {k: getattr(MICRO_DYN, k) for k in ("model_dim", "ffn_dim", "num_blocks", "num_heads")}
    model = "".join(f"model.{k.replace('_', '-')} = {v}\n" for k, v in dims.items())
    spec = spec.replace(
        "steps = 3\n",
        "steps = 6\nlog-every = 1\nimage-size = [16, 16, 3]\nbatch-size = 4\nseq-len = 4\nval-batches = 0\n"
        f"ckpt-every = 2\n{model}",
    )
    spec = spec.replace(
        "clips = 2\n",
        "clips = 2\nframes = 4\ndelta-t = 2\nbatch-size = 2\naction-transitions = 64\n"
        'permutations = 20\ngifs = 1\nsplit = "val"\n',
    )
    path = spec_file(tmp_path, spec)
    journal = out / "journal.jsonl"

    def events():
        return [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []

    second_training = [j for j in build_plan(load_spec(path, out), parse).jobs.values() if j.stage == "dynamics"][1]

    class Late(Exception):
        """The signal arrived outside a training run (the test's timing failed, not the sweep)."""

    def interrupt():  # SIGINT mid-way through the second training run (6 steps, a checkpoint every 2)
        deadline = time.time() + 300
        while time.time() < deadline and not any((second_training.out / "checkpoints").glob("[0-9]*")):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    def late(signum, frame):
        raise Late

    old = signal.signal(signal.SIGINT, late)  # training installs its own handler while it runs
    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    try:
        stopped = cli("sweep", path, "--out", out)  # in this process, like the re-run below: compiled once
    finally:
        watcher.join()
        signal.signal(signal.SIGINT, old)
    assert stopped.returncode == 130, stopped.stdout[-3000:] + stopped.stderr
    first = events()
    done_first = {e["key"] for e in first if e["event"] == "done"}
    assert len(done_first) == 2 and first[-1] == {**first[-1], "key": second_training.key, "event": "stopped"}
    result = cli("sweep", path, "--out", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    second = events()[len(first) :]
    assert not {e["key"] for e in second if e["event"] == "start"} & done_first  # nothing finished runs again
    done = [e["key"] for e in events() if e["event"] == "done"]
    assert sorted(done) == sorted(set(done)) and len(done) == 8  # 4 dynamics + 4 evals, each finished once
    board = json.loads((out / "leaderboard.json").read_text())
    assert [len(r["seeds"]) for r in board["rows"]] == [2, 2]
    row = next(r for r in board["rows"] if r["cell"] == "lr=0.001")
    assert {"psnr", "minus_copy_tokens", "delta_psnr", "psnr_vs_baseline"} <= set(row)
    # the stopped training run resumed from its checkpoint: each run logged every step once, up to the last
    for d in (out / "runs").glob("dynamics-*"):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 7)), d
    again = cli("sweep", path, "--out", out)  # all finished: nothing runs, the same leaderboard
    assert "8/8 runs finished already" in again.stdout
    assert json.loads((out / "leaderboard.json").read_text()) == board
    for ext in ("md", "csv", "png"):
        assert (out / f"leaderboard.{ext}").stat().st_size > 0


@pytest.mark.parametrize(
    "name", ["prepend", "cotrain", "ffn", "families", "latent_norm", "time_positions", "demo_recipe", "dynamics_steps"]
)
def test_documented_ablation_specs_plan_three_seeds_of_every_cell(name):
    spec = load_spec(Path(__file__).parents[1] / "docs" / "ablations" / f"{name}.toml")
    plan = build_plan(spec, parse)  # every run's command parses
    data_runs = 0 if name in ("latent_norm", "time_positions") else 1  # these read make demo's data
    assert spec.seeds == (0, 1, 2) and plan.count("eval") == 3 * len(plan.cells) and plan.count("data") == data_runs
    assert {c for c, _ in plan.evals} == set(plan.cells) and plan.baseline in plan.cells


def test_workers_run_each_job_once_after_its_upstream_runs_on_their_share_of_cores_and_gpus(tmp_path, monkeypatch):
    """Two workers, with a stand-in for `python -m jasmine` that records what it was given and fails one run."""
    from jasmine.sweep.execute import run_local

    plan = build_plan(load_spec(spec_file(tmp_path, BASE), tmp_path / "out"), parse)
    failing = next(j for j in plan.jobs.values() if j.stage == "dynamics")
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "fake.py"
    fake.write_text(f"""import json, os, sys, time
t0 = time.time()
time.sleep(0.4)
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cpus": sorted(os.sched_getaffinity(0)), "start": t0,
                        "end": time.time(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
sys.exit(3 if {str(failing.out)!r} in sys.argv else 0)
""")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {fake} "$@"\n')  # drops "-m jasmine"
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    failed = run_local(plan, 2, runner=None, gpus=(0, 1, 2, 3))
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    by_out = {c["argv"][c["argv"].index("--out") + 1]: c for c in calls}
    blocked = {k for k, j in plan.jobs.items() if failing.key in j.deps}
    assert set(failed) == {failing.key} | blocked and blocked  # its eval never ran; every other run did, once
    assert sorted(by_out) == sorted(str(j.out) for k, j in plan.jobs.items() if k not in blocked)
    assert len(calls) == len(by_out)
    for key, job in plan.jobs.items():
        if key in blocked:
            continue
        for dep in job.deps:  # started after its upstream runs ended
            assert by_out[str(job.out)]["start"] >= by_out[str(plan.jobs[dep].out)]["end"]
    spans = sorted((c["start"], c["end"]) for c in calls)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))  # two at once
    cores = sorted(os.sched_getaffinity(0))
    shares = {tuple(c["cpus"]): c["gpus"] for c in calls}
    assert set(shares) == {tuple(cores[: len(cores) // 2]), tuple(cores[len(cores) // 2 :])} or len(cores) == 1
    assert set(shares.values()) == {"0,1", "2,3"}
    events = [json.loads(line) for line in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "done" for e in events) == len(calls) - 1


def test_runs_finished_by_an_older_jasmine_are_adopted_only_where_new_fields_sit_at_their_defaults(tmp_path):
    from jasmine.config import to_dict
    from jasmine.sweep.execute import _finish_job, is_done
    from jasmine.sweep.plan import compatible

    def older(command: str, flags: list[str]):  # an older jasmine: its dynamics config lacked two fields
        cfg = parse(command, flags)
        if command != "train dynamics":
            return cfg
        d = to_dict(cfg)
        del d["val_rollout_frames"], d["model"]["latent_std_floor"]
        return d

    spec = load_spec(spec_file(tmp_path, BASE), tmp_path / "out")
    old = build_plan(spec, older)
    for job in old.jobs.values():  # every run finished under the older jasmine
        job.out.mkdir(parents=True)
        _finish_job(tmp_path / "out", old, job, 1.0)
    new = build_plan(spec, parse)
    dyn = [j for j in new.jobs.values() if j.stage == "dynamics"]
    assert len(dyn) == 4 and all(j.adopted and j.key in old.jobs for j in dyn)
    assert set(new.jobs) == set(old.jobs) and all(is_done(new, j) for j in new.jobs.values())  # nothing reruns
    assert not any(j.adopted for j in new.jobs.values() if j.stage != "dynamics")  # the rest match exactly
    # a new field set away from its default is a new run, and so is every run downstream of it
    moved = build_plan(load_spec(spec_file(tmp_path, BASE + "[dynamics.model]\nlatent-std-floor = 0.5\n",
                                           "moved.toml"), tmp_path / "out"), parse)  # fmt: skip
    assert moved.count("dynamics") == 4 and not any(j.adopted for j in moved.jobs.values() if j.stage == "dynamics")
    assert not {k for k, j in moved.jobs.items() if j.stage in ("dynamics", "eval")} & set(old.jobs)
    # a value that differs, a field since removed, or a new field off its default: never the same run
    assert compatible({"a": 1, "m": {"b": 2}}, {"a": 1, "m": {"b": 2, "c": 0}, "d": 3}, {"m": {"c": 0}, "d": 3})
    assert not compatible({"a": 1}, {"a": 2}, {"a": 2})
    assert not compatible({"a": 1, "gone": 0}, {"a": 1}, {"a": 1})
    assert not compatible({"m": {"b": 2}}, {"m": {"b": 2, "c": 1}}, {"m": {"c": 0}})
