"""Everything that touches devices: the mesh, shardings, and host batches → global arrays.

The mesh is always 2-D, ``dp × fsdp``. The batch is split over both axes; each large
parameter (and its optimizer moments) is split along one of its dimensions over ``fsdp``
and replicated over ``dp``; XLA inserts the all-gathers and reduce-scatters.
``--sharding dp`` is the mesh N×1, ``fsdp`` is 1×N, and ``hybrid`` is ``--mesh DxF``
(default: one row per process, so FSDP within a host and DP across hosts).

Devices are ordered by process, so process p's devices hold rows [p B/P, (p+1) B/P) of a
global batch of B rows: the rows its loader reads (``jasmine.data.loader``).
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DP, FSDP = "dp", "fsdp"
BATCH = P((DP, FSDP))
FSDP_MIN_SIZE = 2**14
"""Parameters with fewer elements stay replicated (sharding them costs more than it saves)."""


def _devices() -> list:
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def mesh_shape(sharding: str, mesh: str, num_devices: int, local_devices: int) -> tuple[int, int]:
    """(dp, fsdp) for ``--sharding`` and ``--mesh`` on ``num_devices`` devices, ``local_devices`` per process."""
    if mesh and sharding != "hybrid":
        raise ValueError(
            f"--mesh {mesh} needs --sharding hybrid (dp is the mesh {num_devices}x1, fsdp 1x{num_devices})"
        )
    if sharding == "dp":
        return num_devices, 1
    if sharding == "fsdp":
        return 1, num_devices
    if not mesh:
        return num_devices // local_devices, local_devices
    m = re.fullmatch(r"(\d+)x(\d+)", mesh)
    if not m:
        raise ValueError(
            f"--mesh {mesh!r} is not DPxFSDP, e.g. --mesh 2x4 (2-way data parallel over groups of 4 FSDP devices)"
        )
    dp, fsdp = int(m[1]), int(m[2])
    if dp < 1 or fsdp < 1 or dp * fsdp != num_devices:
        raise ValueError(
            f"--mesh {mesh} has {dp * fsdp} devices but there are {num_devices} "
            f"({num_devices // local_devices} process(es) x {local_devices}); DP x FSDP must equal that"
        )
    if local_devices % fsdp and fsdp % local_devices:
        raise ValueError(
            f"--mesh {mesh}: FSDP groups of {fsdp} devices would split a process's {local_devices} "
            f"devices unevenly; make FSDP a divisor or a multiple of {local_devices}"
        )
    return dp, fsdp


def make_mesh(shape: tuple[int, int] | None = None) -> Mesh:
    """A ``dp × fsdp`` mesh over the first dp·fsdp devices (default: all of them, data parallel)."""
    devices = _devices()
    dp, fsdp = shape or (len(devices), 1)
    return Mesh(np.asarray(devices[: dp * fsdp]).reshape(dp, fsdp), (DP, FSDP))


def mesh_for(cfg, num_devices: int | None = None) -> Mesh:
    """The mesh a training config asks for (on the first ``num_devices`` devices, default all)."""
    n = num_devices or jax.device_count()
    local = min(jax.local_device_count(), n)
    return make_mesh(mesh_shape(cfg.sharding, cfg.mesh, n, local))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], n: int, min_size: int = FSDP_MIN_SIZE) -> P:
    if n == 1 or int(np.prod(shape)) < min_size:
        return P()
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[d] % n == 0:
            return P(*([None] * d + [FSDP]))
    return P()


def state_shardings(tree, mesh: Mesh):
    """A NamedSharding per leaf: large leaves split along one dimension over ``fsdp``, the rest replicated."""
    n = mesh.shape[FSDP]
    return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(getattr(x, "shape", ()), n)), tree)


def bytes_per_device(tree) -> dict[int, int]:
    """Bytes of ``tree``'s arrays held by each device (by device id), counting only addressable shards."""
    held: dict[int, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in getattr(x, "addressable_shards", ()):
            held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
    return held


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process numpy batches into arrays sharded over the whole mesh."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
