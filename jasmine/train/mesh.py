"""Everything that touches devices: the mesh, shardings, and host batches → global arrays.

Data-parallel (``dp``) replicates parameters and shards the batch over the ``data`` axis.
``fsdp`` additionally shards each large parameter (and its optimizer moments) along one
of its dimensions over the same axis; XLA inserts the all-gathers.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = jax.devices()[: num_devices or None]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], n: int, min_size: int = 2**14) -> P:
    if n == 1 or int(np.prod(shape)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % n == 0:
            return P(*([None] * d + [DATA_AXIS]))
    return P()


def state_shardings(tree, mesh: Mesh, mode: str = "dp"):
    """A NamedSharding per leaf: replicated for dp, one dimension split over devices for fsdp."""
    def spec(x):
        shape = getattr(x, "shape", ())
        return NamedSharding(mesh, _fsdp_spec(shape, mesh.size) if mode == "fsdp" else P())

    return jax.tree.map(spec, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process numpy batches into arrays sharded over the data axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
