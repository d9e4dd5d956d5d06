"""Joining a multi-process JAX run: ``jax.distributed.initialize``, only when there is one.

A run has several processes when it is told so, by flags (``--distributed.coordinator
HOST:PORT --distributed.num-processes N --distributed.process-id I``) or the environment
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or when it is
launched under a scheduler JAX detects (SLURM ``srun`` with more than one task, Open MPI
``mpirun`` with more than one rank). Otherwise it is one process and nothing is
initialised. On CPU the processes exchange gradients with gloo, so all of this runs (and
is tested) on one machine.
"""

from __future__ import annotations

import os

import jax

from jasmine.config import DistributedConfig

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
# Schedulers JAX's own cluster detection handles, and each one's world-size variable.
SCHEDULERS = {"SLURM": "SLURM_NTASKS", "Open MPI": "OMPI_COMM_WORLD_SIZE"}


def _resolve(cfg: DistributedConfig) -> dict:
    """Flags, else environment variables; checked for consistency."""
    got = {}
    for name, env in ENV.items():
        value = getattr(cfg, name)
        if value is None and os.environ.get(env):
            raw = os.environ[env]
            try:
                value = raw if name == "coordinator" else int(raw)
            except ValueError:
                raise ValueError(f"environment variable {env}={raw!r} is not an integer") from None
        got[name] = value

    def flag(n):
        return f"--distributed.{n.replace('_', '-')} (env {ENV[n]})"

    given = [n for n, v in got.items() if v is not None]
    if given and len(given) < 3:
        missing = [flag(n) for n in ENV if got[n] is None]
        raise ValueError(
            f"a multi-process run needs all of coordinator, num-processes and process-id; "
            f"{', '.join(given)} given but not {', '.join(missing)}"
        )
    if given:
        n, i = got["num_processes"], got["process_id"]
        if n < 1:
            raise ValueError(f"{flag('num_processes')} must be >= 1, got {n}")
        if not 0 <= i < n:
            raise ValueError(f"{flag('process_id')} must be in [0, {n}), got {i}")
        if ":" not in got["coordinator"]:
            raise ValueError(f"{flag('coordinator')} must be HOST:PORT, got {got['coordinator']!r}")
    return got


def scheduler_world_size() -> tuple[str, int] | None:
    """(scheduler, number of tasks) when launched by SLURM or Open MPI with several tasks."""
    for name, var in SCHEDULERS.items():
        if var in os.environ and (name != "SLURM" or "SLURM_STEP_NODELIST" in os.environ):
            try:
                size = int(os.environ[var])
            except ValueError:
                continue
            if size > 1:
                return name, size
    return None


def is_initialized() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def initialize(cfg: DistributedConfig = DistributedConfig()) -> bool:
    """Join the multi-process run this process belongs to, if any; True when running as several processes.

    Must run before anything touches a JAX device. A second call is a no-op.
    """
    if is_initialized():
        return True
    got = _resolve(cfg)
    explicit = got["coordinator"] is not None
    detected = scheduler_world_size()
    if explicit and got["num_processes"] == 1 or not explicit and detected is None:
        return False
    # CPU processes reduce over gloo (a no-op setting on GPU/TPU, whose collectives are NCCL/ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(
            got["coordinator"],
            got["num_processes"],
            got["process_id"],
            initialization_timeout=cfg.initialization_timeout,
        )
    else:
        jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout)  # JAX reads the scheduler's env
    return True
