"""Multi-process training on one machine: 2 JAX processes x 2 CPU devices (gloo) against 1 x 4.

Each run is a real ``python -m jasmine train tokenizer`` launch with the ``--distributed.*``
flags, as on a cluster. Within one process layout, runs are bitwise reproducible and
resume bitwise; across layouts the gradient all-reduce sums in a different order (gloo
between processes, XLA's in-process reduction within one), so parameters agree to float
rounding, amplified by Adam where a gradient is ~0 (see ``PARAM_ATOL``).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import write_synthetic
from jasmine.data.loader import make_loader
from jasmine.train.components import load_run

# Adam moves a coordinate by up to lr per step whatever its gradient's size, so a rounding-level gradient can
# differ by ~lr (1e-3) after a step; observed: <= 1e-5 after 8 steps. A run fed the wrong batch differs by ~1e-3.
PARAM_ATOL = 1e-4
# No decay phase, so runs of different --steps share one learning-rate schedule.
FLAGS = ["--preset", "micro", "--image-size", "16", "16", "3", "--model.patch-size", "4", "--batch-size", "4",
         "--ckpt-every", "2", "--keep-last", "10", "--optim.decay-fraction", "0", "--log-every", "1", "--val-every", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data: Path, out: Path, steps: int, processes: int, *extra: str) -> list[subprocess.Popen]:
    """Start ``processes`` JAX processes with 4 / processes CPU devices each, training the micro tokenizer."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={4 // processes}"}
    cmd = [sys.executable, "-m", "jasmine", "train", "tokenizer", *FLAGS, "--data", str(data), "--out", str(out),
           "--steps", str(steps), *extra]
    dist = []
    if processes > 1:
        dist = ["--distributed.coordinator", f"127.0.0.1:{_free_port()}", "--distributed.num-processes",
                str(processes), "--distributed.initialization-timeout", "120"]
    return [subprocess.Popen(cmd + dist + (["--distributed.process-id", str(i)] if dist else []), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(processes)]


def wait(*groups: list[subprocess.Popen]) -> list[str]:
    procs = [p for g in groups for p in g]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def params(run: Path, step: int) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_run(run, step)[1], nnx.Param))]


def assert_params(a: list[np.ndarray], b: list[np.ndarray], exact: bool) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if exact:
            assert np.array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=PARAM_ATOL)


def test_two_processes_train_like_one_and_checkpoints_move_between_them(tmp_path):
    data = tmp_path / "ds"
    write_synthetic(data, lengths=(40, 33, 25, 60), frame_shape=(16, 16, 3))
    ref, whole, parts = tmp_path / "ref", tmp_path / "whole", tmp_path / "parts"
    # 1 x 4 for 8 steps; 2 x 2 for 4 steps; and 2 x 2 for 2 steps, to be continued below.
    outs = wait(launch(data, ref, 8, 1), launch(data, whole, 4, 2), launch(data, parts, 2, 2))
    assert "2 process(es), 4 device(s), mesh dp 4 x fsdp 1" in outs[1]
    assert "process(es)" not in outs[2], "only process 0 prints"
    assert not any((whole / "checkpoints" / "4").glob("*tmp*"))
    assert_params(params(whole, 2), params(parts, 2), exact=True)  # 2 processes are deterministic
    assert_params(params(ref, 2), params(parts, 2), exact=False)  # and train like 1 process

    wait(launch(data, parts, 4, 2, "--resume"))  # resume in 2 processes: exact
    assert_params(params(whole, 4), params(parts, 4), exact=True)
    assert_params(params(ref, 4), params(parts, 4), exact=False)
    wait(launch(data, parts, 6, 1, "--resume"))  # 2 processes -> 1
    assert_params(params(ref, 6), params(parts, 6), exact=False)
    wait(launch(data, parts, 8, 2, "--resume"))  # 1 -> 2
    assert_params(params(ref, 8), params(parts, 8), exact=False)
    for name in ("ref", "parts"):  # one writer: every step logged once, by process 0
        steps = [line for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
        assert len(steps) == 8


@pytest.mark.parametrize("processes", [2, 4])
def test_process_blocks_are_disjoint_and_make_up_the_one_process_batch(synthetic_dir, processes):
    kw = dict(seq_len=4, batch_size=8, seed=3)
    one = iter(make_loader(synthetic_dir, "train", process_index=0, process_count=1, **kw))
    blocks = [iter(make_loader(synthetic_dir, "train", process_index=p, process_count=processes, start_batch=2, **kw))
              for p in range(processes)]
    for step in range(5):
        full = next(one)
        if step < 2:
            continue
        parts = [next(b) for b in blocks]
        for p, part in enumerate(parts):
            assert part["frames"].shape[0] == 8 // processes
        ids = [tuple(f[:, 0, 0, :2].ravel()) for part in parts for f in part["frames"]]  # (episode, frame) pixels
        assert len(set(ids)) == len(ids), "two processes read the same window"
        np.testing.assert_array_equal(np.concatenate([p["frames"] for p in parts]), full["frames"])
        np.testing.assert_array_equal(np.concatenate([p["actions"] for p in parts]), full["actions"])
