"""Running a sweep's plan: here (N workers, each with its share of CPU cores and GPUs), or on SLURM (submitit).

A run is finished when ``RUNS/finished/KEY.json`` says so (written only after its command succeeded, with the
run's command and resolved config, so a later jasmine can adopt it: see :mod:`jasmine.sweep.plan`); an interrupted
training run resumes from its last checkpoint (every training command gets ``--resume``, which starts afresh
where there is none). Every start, end and failure is appended to ``OUT/journal.jsonl``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jasmine.sweep.plan import Job, Plan, marker

Runner = Callable[[list[str]], None]
"""Runs one jasmine command line in this process (argv without the leading ``jasmine``)."""


def is_done(plan: Plan, job: Job) -> bool:
    try:
        return json.loads(marker(plan.spec.runs, job.key).read_text()).get("key") == job.key
    except (OSError, ValueError):
        return False


def journal(out: Path, **event) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / "journal.jsonl", "a") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")


def launch_argv(job: Job) -> list[str]:
    """The command line actually run: training resumes its own checkpoints; data rewrites a half-made output."""
    extra = ["--resume"] if job.command.startswith("train ") else []
    if job.command.startswith("data ") and job.out.exists():
        extra = ["--overwrite"]
    return [*job.argv, *extra]


def run_job(argv: list[str], out: str, runs: str, key: str, stage: str, command: str = "", config: Any = None) -> None:
    """One run as a child process; marks it finished on success. The function SLURM jobs execute."""
    journal(Path(out), key=key, stage=stage, event="start")
    t0 = time.time()
    rc = subprocess.call([sys.executable, "-m", "jasmine", *argv])
    if rc != 0:
        journal(Path(out), key=key, stage=stage, event="failed", rc=rc)
        raise RuntimeError(f"`jasmine {' '.join(argv)}` failed with exit status {rc}")
    _finish(Path(out), Path(runs), key, stage, argv, time.time() - t0, command, config)


def _finish(
    out: Path, runs: Path, key: str, stage: str, argv: list[str], seconds: float, command: str = "", config: Any = None
) -> None:
    path = marker(runs, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    base = [a for a in argv if a not in ("--resume", "--overwrite")]
    rec = {"key": key, "stage": stage, "argv": base, "seconds": round(seconds, 1)}
    if config is not None:
        rec |= {"command": command, "config": config}
    tmp.write_text(json.dumps(rec) + "\n")
    os.replace(tmp, path)
    journal(out, key=key, stage=stage, event="done", seconds=round(seconds, 1))


def _finish_job(out: Path, plan: Plan, job: Job, seconds: float) -> None:
    _finish(out, plan.spec.runs, job.key, job.stage, launch_argv(job), seconds, job.command, job.config)


def _failed(out: Path, job: Job, error: str) -> str:
    journal(out, key=job.key, stage=job.stage, event="failed", error=error[:500])
    print(f"[sweep] FAILED {job.shell()}: {error}")
    return job.key


def _shares(items: list, n: int) -> list[list]:
    return [items[i * len(items) // n : (i + 1) * len(items) // n] for i in range(n)]


def run_local(plan: Plan, workers: int, runner: Runner, gpus: tuple[int, ...] = ()) -> list[str]:
    """Runs every unfinished job, each once its upstream runs are done; returns the keys of failed jobs.

    One worker runs the commands in this process (compiled programs are shared between runs); more run each
    command as a child process pinned to its share of this process's CPU cores (and of ``gpus``).
    """
    out = plan.spec.out
    todo = [j for j in plan.jobs.values() if not is_done(plan, j)]
    done = {j.key for j in plan.jobs.values() if j not in todo}
    failed: list[str] = []
    total = len(plan.jobs)
    print(f"[sweep] {len(done)}/{total} runs finished already; {len(todo)} to run with {workers} worker(s)")
    t0 = time.time()

    def ready(job: Job) -> bool:
        return all(d in done for d in job.deps)

    def report(job: Job, what: str) -> None:
        cells = sorted({f"{c} seed {s}" for c, s in job.uses})
        who = cells[0] + (f" (+{len(cells) - 1} more)" if len(cells) > 1 else "") if cells else ""
        print(
            f"[sweep] {len(done)}/{total} {what} {job.stage} {job.out.name}  {who}  ({(time.time() - t0) / 60:.1f} min)"
        )

    if workers <= 1:
        for job in todo:
            if not ready(job):
                failed.append(job.key)
                continue
            report(job, "start")
            journal(out, key=job.key, stage=job.stage, event="start")
            ts = time.time()
            try:
                runner(launch_argv(job))
            except (SystemExit, KeyboardInterrupt) as e:
                code = e.code if isinstance(e, SystemExit) else 130
                if isinstance(code, int) and code >= 128:  # a signal stopped training (checkpoint saved)
                    journal(out, key=job.key, stage=job.stage, event="stopped", rc=code)
                    print(f"[sweep] stopped during {job.out}; run the same command again to resume")
                    raise
                if code not in (0, None):
                    failed.append(_failed(out, job, str(code)))
                    continue
            except Exception as e:  # a run's error fails that run and what depends on it, not the sweep
                failed.append(_failed(out, job, f"{type(e).__name__}: {e}"))
                continue
            _finish_job(out, plan, job, time.time() - ts)
            done.add(job.key)
            report(job, "done ")
        return failed

    cores = sorted(os.sched_getaffinity(0))
    slots = list(zip(_shares(cores, workers), _shares(list(gpus), workers) if gpus else [[]] * workers, strict=True))
    running: dict[int, tuple[Job, subprocess.Popen, float]] = {}
    pending = list(todo)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    try:
        while pending or running:
            for slot, (job, proc, ts) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                if proc.returncode == 0:
                    _finish_job(out, plan, job, time.time() - ts)
                    done.add(job.key)
                    report(job, "done ")
                else:
                    journal(out, key=job.key, stage=job.stage, event="failed", rc=proc.returncode)
                    print(
                        f"[sweep] FAILED (exit {proc.returncode}) {job.shell()}; log: {out / 'logs' / job.out.name}.log"
                    )
                    failed.append(job.key)
            for job in [j for j in pending if any(d in failed for d in j.deps)]:  # upstream failed
                pending.remove(job)
                failed.append(job.key)
            free = [s for s in range(workers) if s not in running]
            for slot, job in zip(free, [j for j in pending if ready(j)], strict=False):
                pending.remove(job)
                running[slot] = (job, _spawn(job, out, *slots[slot]), time.time())
                journal(out, key=job.key, stage=job.stage, event="start", worker=slot)
                report(job, "start")
            if pending and not running and not any(ready(j) for j in pending):
                failed += [j.key for j in pending]
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        for _, proc, _ in running.values():
            proc.send_signal(signal.SIGINT)  # training saves a checkpoint, then stops
        for job, proc, _ in running.values():
            proc.wait()
            journal(out, key=job.key, stage=job.stage, event="stopped", rc=proc.returncode)
        print("[sweep] interrupted; run the same command again to resume")
        raise
    return failed


def _spawn(job: Job, out: Path, cores: list[int], gpus: list[int]) -> subprocess.Popen:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    log = open(out / "logs" / f"{job.out.name}.log", "a")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "jasmine", *launch_argv(job)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        start_new_session=True,  # a terminal's Ctrl-C reaches the sweep, which stops its children in order
    )


def submit_slurm(plan: Plan, params: dict[str, Any], folder: Path, leaderboard: Callable[[], None]) -> dict[str, str]:
    """Submits every unfinished run as a SLURM job (submitit) depending on its upstream jobs (afterok), and a
    last job that writes the leaderboard; returns run key -> job id (also in OUT/slurm_jobs.json)."""
    try:
        import submitit
    except ImportError as e:
        raise SystemExit(
            f"jasmine sweep --slurm needs the cluster extra ({e.name} is missing): uv sync --extra cluster"
        ) from None
    known = submitit.SlurmExecutor._valid_parameters()
    generic = {k: v for k, v in params.items() if not isinstance(v, dict)}
    for name in [*generic, *(k for v in params.values() if isinstance(v, dict) for k in v)]:
        if name not in known:
            raise ValueError(
                f"[slurm] {name!r} is not a submitit SlurmExecutor parameter (known: {', '.join(sorted(known))})"
            )
    ids: dict[str, str] = {}
    out = plan.spec.out
    for job in plan.jobs.values():
        if is_done(plan, job):
            continue
        deps = [ids[d] for d in job.deps if d in ids]
        executor = submitit.SlurmExecutor(folder=str(folder / "%j"))  # parameters never leak between stages
        executor.update_parameters(
            **{**generic, **params.get(job.stage, {})},
            job_name=f"jasmine-{job.stage}-{job.key}",
            dependency=f"afterok:{':'.join(deps)}" if deps else None,
        )
        args = (str(out), str(plan.spec.runs), job.key, job.stage, job.command, job.config)
        submitted = executor.submit(run_job, launch_argv(job), *args)
        ids[job.key] = str(submitted.job_id)
        print(
            f"[sweep] submitted {job.stage} {job.out.name} as job {submitted.job_id}"
            + (f" after {', '.join(deps)}" if deps else "")
        )
    evals = [ids[k] for k in set(plan.evals.values()) if k in ids]
    executor = submitit.SlurmExecutor(folder=str(folder / "%j"))
    executor.update_parameters(
        **generic, job_name="jasmine-leaderboard", dependency=f"afterok:{':'.join(evals)}" if evals else None
    )
    ids["leaderboard"] = str(executor.submit(leaderboard).job_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slurm_jobs.json").write_text(json.dumps(ids, indent=2) + "\n")
    return ids
