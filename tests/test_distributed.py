"""Multi-process training on one machine: 2 JAX processes x 2 CPU devices (gloo) against 1 x 4.

Each run is a real ``python -m jasmine train tokenizer`` launch with the ``--distributed.*``
flags, as on a cluster. Within one process layout, runs are bitwise reproducible and
resume bitwise; across layouts the gradient all-reduce sums in a different order (gloo
between processes, XLA's in-process reduction within one), so parameters agree to float
rounding, amplified by Adam where a gradient is ~0 (see ``PARAM_ATOL``).
"""

import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import write_synthetic, xla_env
from flax import nnx

from jasmine.data.loader import make_loader
from jasmine.train.components import load_run

# Adam moves a coordinate by up to lr per step whatever its gradient's size, so a rounding-level gradient can
# differ by ~lr (1e-3) after a step; observed: 5e-6 after 2 steps, 1.4e-5 after 8.
# A run fed the wrong batch differs by ~1e-3.
PARAM_ATOL = 1e-4
# No decay phase, so runs of different --steps share one learning-rate schedule.
FLAGS = [
    "--preset",
    "micro",
    "--image-size",
    "16",
    "16",
    "3",
    "--model.patch-size",
    "4",
    "--batch-size",
    "4",
    "--ckpt-every",
    "2",
    "--keep-last",
    "10",
    "--optim.decay-fraction",
    "0",
    "--log-every",
    "1",
    "--val-every",
    "4",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    data: Path, out: Path, steps: int, processes: int, *extra: str, how: str = "flags"
) -> list[subprocess.Popen]:
    """Start ``processes`` JAX processes with 4 / processes CPU devices each, training the micro tokenizer.

    ``how`` tells each process about the others: ``flags`` (--distributed.*), ``env``
    (JAX_COORDINATOR_ADDRESS, ...) or ``slurm`` (the variables ``srun`` sets, for JAX's detection).
    """
    cmd = [
        sys.executable,
        "-m",
        "jasmine",
        "train",
        "tokenizer",
        *FLAGS,
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--distributed.initialization-timeout",
        "120",
        *extra,
    ]
    port = _free_port()
    procs = []
    for i in range(processes):
        env = xla_env(4 // processes)
        args = list(cmd)
        if processes > 1 and how == "flags":
            args += [
                "--distributed.coordinator",
                f"127.0.0.1:{port}",
                "--distributed.num-processes",
                str(processes),
                "--distributed.process-id",
                str(i),
            ]
        elif processes > 1 and how == "env":
            env |= {
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(i),
            }
        elif processes > 1:
            env |= {
                "SLURM_JOB_ID": "4242",
                "SLURM_STEP_NODELIST": "localhost",
                "SLURM_STEP_NUM_NODES": "1",
                "SLURM_NTASKS": str(processes),
                "SLURM_PROCID": str(i),
                "SLURM_LOCALID": str(i),
                "JAX_COORDINATOR_PORT": str(port),
            }
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def wait(*groups: list[subprocess.Popen]) -> list[str]:
    procs = [p for g in groups for p in g]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=False):
        assert p.returncode == 0, out[-3000:]
    return outs


def params(run: Path, step: int) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_run(run, step)[1], nnx.Param))]


def assert_params(a: list[np.ndarray], b: list[np.ndarray], exact: bool) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=False):
        if exact:
            assert np.array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=PARAM_ATOL)


@pytest.mark.heavy
def test_two_processes_train_like_one_and_checkpoints_move_between_them(tmp_path):
    data = tmp_path / "ds"
    write_synthetic(data, lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    ref, whole, again, down, up = (tmp_path / n for n in ("ref", "whole", "again", "down", "up"))
    # 1 x 4 for 8 steps, and 2 x 2 (flags) for 4 steps.
    outs = wait(launch(data, ref, 8, 1), launch(data, whole, 4, 2))
    assert "2 process(es), 4 device(s), mesh dp 4 x fsdp 1" in outs[1]
    assert "process(es)" not in outs[2], "only process 0 prints"
    assert not any((whole / "checkpoints" / "4").glob("*tmp*"))
    assert_params(params(ref, 2), params(whole, 2), exact=False)  # 2 processes train like 1

    # Then, at once: 2 x 2 (env) continuing from step 2 of `whole`; 1 x 4 continuing from step 4 of `whole`
    # (2 processes -> 1); 2 x 2 started as srun would continuing from step 6 of `ref` (1 -> 2). Validation ran above.
    novalidation = ("--val-batches", "0")
    outs = wait(
        launch(data, again, 4, 2, "--init-from", str(whole), "--init-step", "2", *novalidation, how="env"),
        launch(data, down, 6, 1, "--init-from", str(whole), "--init-step", "4", *novalidation),
        launch(data, up, 8, 2, "--init-from", str(ref), "--init-step", "6", *novalidation, how="slurm"),
    )
    assert "2 process(es), 4 device(s)" in outs[3]
    assert_params(params(whole, 4), params(again, 4), exact=True)  # the same steps 3-4, bitwise: deterministic
    assert_params(params(ref, 6), params(down, 6), exact=False)
    assert_params(params(ref, 8), params(up, 8), exact=False)
    for run, n in ((ref, 8), (again, 4), (down, 6), (up, 8)):  # one writer: every step logged once, by process 0
        steps = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
        assert len(steps) == n, run
    assert '"val"' in (whole / "metrics.jsonl").read_text()  # validated on 2 processes
    assert '"val"' not in (again / "metrics.jsonl").read_text()  # --val-batches 0: no validation


@pytest.mark.parametrize("processes", [2, 4])
def test_process_blocks_are_disjoint_and_make_up_the_one_process_batch(synthetic_dir, processes):
    kw = dict(seq_len=4, batch_size=8, seed=3)
    one = iter(make_loader(synthetic_dir, "train", process_index=0, process_count=1, **kw))
    blocks = [
        iter(make_loader(synthetic_dir, "train", process_index=p, process_count=processes, start_batch=2, **kw))
        for p in range(processes)
    ]
    for step in range(5):
        full = next(one)
        if step < 2:
            continue
        parts = [next(b) for b in blocks]
        for _p, part in enumerate(parts):
            assert part["frames"].shape[0] == 8 // processes
        ids = [tuple(f[:, 0, 0, :2].ravel()) for part in parts for f in part["frames"]]  # (episode, frame) pixels
        assert len(set(ids)) == len(ids), "two processes read the same window"
        np.testing.assert_array_equal(np.concatenate([p["frames"] for p in parts]), full["frames"])
        np.testing.assert_array_equal(np.concatenate([p["actions"] for p in parts]), full["actions"])


@pytest.mark.parametrize(
    "sharding, mesh, devices, local, expect",
    [
        ("dp", "", 8, 4, (8, 1)),
        ("fsdp", "", 8, 4, (1, 8)),
        ("hybrid", "", 8, 4, (2, 4)),  # FSDP within each process, DP across
        ("hybrid", "4x2", 8, 4, (4, 2)),
        ("hybrid", "1x8", 8, 4, (1, 8)),
        ("dp", "2x2", 4, 4, r"--mesh 2x2 needs --sharding hybrid"),
        ("hybrid", "2by2", 4, 4, r"--mesh '2by2' is not DPxFSDP, e.g. --mesh 2x4"),
        ("hybrid", "3x2", 4, 4, r"--mesh 3x2 has 6 devices but there are 4 \(1 process\(es\) x 4\)"),
        ("hybrid", "3x4", 12, 6, r"--mesh 3x4: FSDP groups of 4 devices would split a process's 6 devices"),
    ],
)
def test_mesh_shapes_and_their_errors(sharding, mesh, devices, local, expect):
    from jasmine.train.mesh import mesh_shape

    if isinstance(expect, tuple):
        assert mesh_shape(sharding, mesh, devices, local) == expect
    else:
        with pytest.raises(ValueError, match=expect):
            mesh_shape(sharding, mesh, devices, local)


@pytest.mark.parametrize(
    "kw, env, match",
    [
        (
            {"coordinator": "h:1"},
            {},
            r"needs all of coordinator, num-processes and process-id; coordinator given but "
            r"not --distributed.num-processes \(env JAX_NUM_PROCESSES\), --distributed.process-id",
        ),
        (
            {"num_processes": 2, "process_id": 2},
            {"JAX_COORDINATOR_ADDRESS": "h:1"},
            r"--distributed.process-id \(env JAX_PROCESS_ID\) must be in \[0, 2\), got 2",
        ),
        ({"num_processes": 2, "process_id": 0, "coordinator": "host"}, {}, r"must be HOST:PORT, got 'host'"),
        (
            {},
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            r"environment variable JAX_NUM_PROCESSES='two' is not an integer",
        ),
        ({"num_processes": 0, "process_id": 0, "coordinator": "h:1"}, {}, r"num-processes .* must be >= 1, got 0"),
    ],
)
def test_bad_distributed_settings_are_named(kw, env, match, monkeypatch, synthetic_dir, tmp_path):
    from dataclasses import replace

    from jasmine.config import DistributedConfig
    from jasmine.presets import PRESETS
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import train

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    cfg = replace(
        PRESETS["tokenizer"]["micro"], data=synthetic_dir, out=tmp_path / "run", distributed=DistributedConfig(**kw)
    )
    with pytest.raises(ValueError, match=match):
        train(cfg, COMPONENTS["tokenizer"], progress=False)
    assert not (tmp_path / "run").exists()


def test_one_process_never_initialises_a_cluster(monkeypatch):
    from jasmine.config import DistributedConfig
    from jasmine.train import distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("initialised a cluster"))
    monkeypatch.setenv("SLURM_NTASKS", "1")  # an interactive one-task allocation
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node1")
    assert distributed.scheduler_world_size() is None
    assert distributed.initialize() is False
    assert distributed.initialize(DistributedConfig(coordinator="h:1", num_processes=1, process_id=0)) is False
    monkeypatch.setenv("SLURM_NTASKS", "8")  # srun -n 8: JAX's SLURM detection takes over
    assert distributed.scheduler_world_size() == ("SLURM", 8)
    monkeypatch.delenv("SLURM_STEP_NODELIST")  # sbatch's shell itself, outside srun: not a cluster step
    assert distributed.scheduler_world_size() is None


@pytest.mark.heavy
def test_sigterm_to_one_process_stops_all_at_the_same_checkpointed_step(tmp_path):
    import signal
    import time

    data = tmp_path / "ds"
    write_synthetic(data, lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    out = tmp_path / "run"
    procs = launch(data, out, 10_000, 2, "--ckpt-every", "5000", "--val-every", "5000")
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # as a scheduler's preemption notice reaching one process first
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, logs
    steps = {int(line.split()[1]) for log in logs for line in log.splitlines() if line.startswith("step ")}
    assert len(steps) == 1 and 3 <= (step := steps.pop()) < 10_000, logs
    assert f"SIGTERM: saved checkpoint at step {step}" in logs[0]
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [step]
