"""Data parallelism over every device JAX is given, through ``jax.sharding`` (no hand-written
communication).

One :class:`jax.sharding.Mesh` with a single ``'data'`` axis spans the devices. Batches are
split along their first axis over it and everything else (params, optimizer state, masks) is
replicated; ``jax.jit`` then compiles the usual single-device program into an SPMD one whose
reductions (the batch mean of the loss, BatchNorm's statistics, the gradient) run over the
whole global batch, so a sharded step computes what the single-device step computes, up to
the order of float additions.

Multi-host: :func:`initialize` calls ``jax.distributed.initialize()`` when
``JAX_COORDINATOR_ADDRESS`` is set (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``) or when
JAX's cluster auto-detection (SLURM, Open MPI, Cloud TPU) is asked for with
``JPANNING_DISTRIBUTED=1``. Every process runs the same command on the same data and seed; the
mesh then spans all processes' devices and each process feeds only its own devices' shards
(:func:`put_batch` builds global arrays with ``jax.make_array_from_callback``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jpanning.errors import JPanningError

AXIS = "data"


def initialize() -> bool:
    """Start JAX's distributed runtime when the environment asks for it (module docstring).

    Returns:
        True when a multi-process run was set up.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        try:
            num_processes = int(os.environ["JAX_NUM_PROCESSES"])
            process_id = int(os.environ["JAX_PROCESS_ID"])
        except (KeyError, ValueError) as e:
            raise JPanningError(
                f"JAX_COORDINATOR_ADDRESS={address!r} is set, so JAX_NUM_PROCESSES and "
                f"JAX_PROCESS_ID must be integers too ({e!r})"
            )
        jax.distributed.initialize(address, num_processes, process_id)
        return True
    if os.environ.get("JPANNING_DISTRIBUTED") == "1":
        jax.distributed.initialize()  # SLURM / Open MPI / TPU auto-detection
        return True
    return False


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``'data'`` mesh over the first ``num_devices`` devices (all of them by default).

    Raises:
        JPanningError: more devices asked for than there are.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise JPanningError(
            f"--devices {n}: this run has {len(devices)} device(s) "
            f"({devices[0].platform}); choose 1 to {len(devices)}"
        )
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def mesh_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split dimension ``axis`` over the mesh, the others replicated."""
    return NamedSharding(mesh, P(*([None] * axis), AXIS))


def check_divisible(size: int, mesh: Mesh | None, what: str) -> None:
    """Raise a one-line error when ``size`` examples cannot be split evenly over the mesh."""
    n = mesh_size(mesh)
    if size % n:
        raise JPanningError(
            f"{what} {size} is not divisible by the {n} devices it is split over; "
            f"use a multiple of {n} (or --devices)"
        )


def put_batch(mesh: Mesh | None, tree: Any, axis: int = 0) -> Any:
    """Place host arrays as global arrays split along ``axis`` over the mesh.

    Every process holds the whole (global) batch; each device receives only its slice. With no
    mesh the arrays are returned unchanged (JAX puts them on its default device when used).
    """
    if mesh is None:
        return tree
    sharding = batch_sharding(mesh, axis)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def replicate(mesh: Mesh | None, tree: Any) -> Any:
    """Copy a pytree of arrays onto every device of the mesh (unchanged with no mesh)."""
    if mesh is None:
        return tree
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)  # a host copy, so a multi-process run builds the same global array
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def vmap_over_devices(fn: Callable, mesh: Mesh | None, in_axes: Sequence[int | None]):
    """``jax.vmap(fn, in_axes)`` with the mapped axis split over the mesh's devices.

    Each device runs the vmapped ``fn`` on its own slice (``jax.shard_map``); arguments with
    ``in_axes`` None are replicated. For a batch of independent problems, such as Panning
    environments or agent seeds, this is the single-device result computed in parallel. (On 4
    simulated CPU devices, leaving the same vmapped environment step to the automatic
    partitioner instead changed its masks; see tests/multidevice_check.py.) The mapped size
    must be a multiple of the number of devices. No mesh: plain ``jax.vmap``.
    """
    mapped = jax.vmap(fn, in_axes=tuple(in_axes))
    if mesh is None:
        return mapped
    if any(a not in (0, None) for a in in_axes):
        raise JPanningError(f"vmap_over_devices maps axis 0 or nothing, got in_axes={in_axes}")
    specs = tuple(P() if a is None else P(AXIS) for a in in_axes)
    # No collectives run inside: each device's slice is independent. check_vma=False because
    # JAX 0.10's varying-axes check rejects a lax.cond whose branches close over a replicated
    # constant (SynFlow's all-ones input under scores.synflow's Euler-check fallback).
    return jax.shard_map(mapped, mesh=mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False)


def is_primary() -> bool:
    """True in the process that writes results (process 0; the only one on a single host)."""
    return jax.process_index() == 0
