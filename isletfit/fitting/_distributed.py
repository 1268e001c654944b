"""Multi-controller JAX: one population fit over the devices of several processes.

A population fit on a cluster runs one Python process per node (or per GPU), all
executing the same program ("multi-controller" JAX). Each process

1. calls `initialize_distributed` before any other JAX work, which connects it to the
   other processes (through a coordinator service that process 0 starts);
2. reads every patient (the same inputs everywhere: the data are small next to the
   fit, and identical host-side data on every process is what lets each one place
   its own shards without communication);
3. calls `fit_population` with ``mesh=patient_mesh()``, a mesh over the devices of
   *all* processes, so that each device fits its block of patients. Between rounds
   the per-patient results are gathered to every host (`gather_to_host`), where the
   M-step runs identically in every process;
4. leaves the writing to process 0 (`is_main_process`): checkpoints, per-patient
   outputs, summary and report.

How the processes find each other: `jax.distributed.initialize` detects Slurm
(``srun``) and Open MPI (``mpirun``) launches on its own. Elsewhere give the
coordinator ``host:port`` (the address of process 0, a free port), the number of
processes and each process's id, as arguments or in the environment variables
``ISLETFIT_COORDINATOR``, ``ISLETFIT_NUM_PROCESSES`` and ``ISLETFIT_PROCESS_ID``
(else ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). See
``docs/cluster.md``.

On CPU, collectives between processes (the gathers) need a cross-process
implementation: JAX 0.10 uses gloo by default (``jax_cpu_collectives_implementation``,
in ``jax/_src/config.py``); `initialize_distributed` selects gloo only where that
setting is unset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._errors import InputError

__all__ = [
    "ProcessInfo",
    "auto_axes",
    "gather_to_host",
    "initialize_distributed",
    "is_main_process",
    "patient_mesh",
    "place_on",
    "same_in_every_process",
    "spans_processes",
]

#: Environment variables read by `initialize_distributed` (isletfit's, then JAX's).
ENV_COORDINATOR = ("ISLETFIT_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("ISLETFIT_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("ISLETFIT_PROCESS_ID", "JAX_PROCESS_ID")

# the launchers `jax.distributed.initialize` detects by itself, and the variables it
# needs of each (jax 0.10.2, jax/_src/clusters/slurm_cluster.py and ompi_cluster.py;
# Open MPI 5 no longer sets OMPI_MCA_orte_hnp_uri, so it is not detected there)
_LAUNCHER_VARS = {
    "Slurm": (
        "SLURM_JOB_ID",
        "SLURM_STEP_NODELIST",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
    ),
    "Open MPI": ("OMPI_MCA_orte_hnp_uri",),
}


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """This process's place in a multi-controller run.

    Attributes:
        process_id: Index of this process (0 writes the outputs).
        num_processes: Processes in the run.
        local_devices: Devices of this process.
        global_devices: Devices of all processes (what `patient_mesh` spans).
        launcher: How the processes were found: ``"Slurm"`` or ``"Open MPI"``
            (detected by JAX), ``"settings"`` (arguments or the ``ISLETFIT_*`` /
            ``JAX_*`` variables), or ``"earlier call"`` (already initialised).
    """

    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int
    launcher: str


def _env(names: Sequence[str]) -> tuple[str | None, str | None]:
    """The first of ``names`` set (non-empty) in the environment, and its value."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None, None


def _int_setting(value, names: Sequence[str], what: str) -> int | None:
    """``value`` or the environment variable, as a non-negative int (None if unset)."""
    field = "argument"
    if value is None:
        field, value = _env(names)
        if value is None:
            return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise InputError(
            f"bad {what}: {value!r}",
            field=field,
            expected=f"a whole number >= 0 for the {what}",
        )
    return number


def _launcher() -> str | None:
    """The launcher JAX can read the process layout from, or None."""
    for name, variables in _LAUNCHER_VARS.items():
        if all(os.environ.get(v) for v in variables):
            return name
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> ProcessInfo:
    """Start multi-controller JAX in this process (a wrapper of `jax.distributed`).

    Call it first, before any JAX computation (JAX refuses to connect processes once
    a backend has started), in every process of the run. Calling it again is a no-op.

    Settings not given as arguments come from the environment variables
    ``ISLETFIT_COORDINATOR`` (``host:port`` of process 0), ``ISLETFIT_NUM_PROCESSES``
    and ``ISLETFIT_PROCESS_ID`` (or JAX's ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); under Slurm (``srun``) or Open MPI
    (``mpirun``) `jax.distributed.initialize` finds whatever is still missing.

    Args:
        coordinator_address: ``host:port`` of process 0's coordinator service (a port
            free on that host, reachable from every process).
        num_processes: Processes in the run.
        process_id: This process's index, 0 to ``num_processes - 1``.
        initialization_timeout: How long to wait for the other processes [s].

    Returns:
        This process's `ProcessInfo`.

    Raises:
        InputError: The settings are incomplete (no launcher detected and no
            coordinator, process count or id given), malformed, or JAX has already
            started a backend in this process, or the processes cannot connect.
    """
    if jax.distributed.is_initialized():
        return _info("earlier call")
    launcher = _launcher()
    if coordinator_address is None:
        _, coordinator_address = _env(ENV_COORDINATOR)
    num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES, "process count")
    process_id = _int_setting(process_id, ENV_PROCESS_ID, "process id")
    explicit = (coordinator_address, num_processes, process_id)
    if launcher is None and None in explicit:
        missing = [
            f"{name} ({' or '.join(env)})"
            for name, value, env in zip(
                ("coordinator address", "process count", "process id"),
                explicit,
                (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID),
                strict=True,
            )
            if value is None
        ]
        raise InputError(
            "cannot start a distributed run: no Slurm or Open MPI launch detected "
            "and no " + ", ".join(missing) + " given",
            expected="a launch with srun or mpirun, or ISLETFIT_COORDINATOR=host:port,"
            " ISLETFIT_NUM_PROCESSES=N and ISLETFIT_PROCESS_ID=0..N-1 set in every "
            "process (see docs/cluster.md)",
        )
    if num_processes is not None and num_processes < 1:
        raise InputError(
            "bad process count: 0",
            field="num_processes",
            expected="at least 1 process",
        )
    if None not in (num_processes, process_id) and process_id >= num_processes:
        raise InputError(
            f"process id {process_id} is not below the process count {num_processes}",
            field="process_id",
            expected=f"a process id from 0 to {num_processes - 1}",
        )
    if coordinator_address is not None and ":" not in coordinator_address:
        raise InputError(
            f"bad coordinator address {coordinator_address!r}",
            field="coordinator_address",
            expected="host:port of process 0, e.g. node001:12345",
        )
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
        # gathers between CPU processes need a collectives implementation; JAX 0.10
        # defaults to gloo, older versions had none
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=initialization_timeout,
        )
    except RuntimeError as err:
        started = "must be called before" in str(err)
        raise InputError(
            "cannot start a distributed run: "
            + ("JAX has already started in this process" if started else str(err)),
            expected="initialize_distributed called before any JAX computation, and "
            "every process of the run started within the timeout",
        ) from err
    except ValueError as err:
        raise InputError(
            f"cannot start a distributed run: {err}",
            expected="the coordinator address, process count and process id of the "
            "run (see docs/cluster.md)",
        ) from err
    how = launcher if launcher is not None and None in explicit else "settings"
    return _info(how)


def _info(launcher: str) -> ProcessInfo:
    return ProcessInfo(
        process_id=jax.process_index(),
        num_processes=jax.process_count(),
        local_devices=jax.local_device_count(),
        global_devices=jax.device_count(),
        launcher=launcher,
    )


def is_main_process() -> bool:
    """Whether this process writes the outputs (process 0, or a single process)."""
    return jax.process_index() == 0


def auto_axes(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """A copy of ``mesh`` whose axes all have automatic types.

    With explicit axis types (`jax.make_mesh`'s default) the traced arrays carry
    sharding types, and the solvers' in-place buffer updates (diffrax's, the fixed
    grid's) are rejected.
    """
    return jax.sharding.Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
    )


def patient_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A one-axis mesh ``("patients",)`` over the devices of every process.

    Devices are ordered by process, so each process's devices hold a contiguous block
    of patients.

    Args:
        devices: The devices (default `jax.devices()`: all devices of all processes).

    Returns:
        The mesh for ``fit_population(..., mesh=...)``.
    """
    devices = list(jax.devices() if devices is None else devices)
    devices.sort(key=lambda d: (d.process_index, d.id))
    return jax.sharding.Mesh(
        np.asarray(devices, dtype=object),
        ("patients",),
        axis_types=(jax.sharding.AxisType.Auto,),
    )


def spans_processes(mesh: jax.sharding.Mesh | None) -> bool:
    """Whether ``mesh`` holds devices of several processes (a multi-controller fit).

    Args:
        mesh: A device mesh, or None.

    Returns:
        True if the mesh holds devices of more than one process.

    Raises:
        InputError: The mesh holds devices of some processes but not of all (the
            gathers between rounds involve every process).
    """
    if mesh is None:
        return False
    processes = {d.process_index for d in mesh.devices.flat}
    if len(processes) == 1:
        return False
    if processes != set(range(jax.process_count())):
        raise InputError(
            f"the mesh holds devices of processes {sorted(processes)} of "
            f"{jax.process_count()}",
            field="mesh",
            expected="a mesh over the devices of every process (patient_mesh()) or "
            "of this process only",
        )
    return True


def place_on(tree: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """Put host data, the same in every process, on ``sharding``.

    Every leaf must hold the same values in every process (it is not checked: each
    process copies only the shards of its own devices, with no communication, where
    `jax.device_put` would first compare the whole array across processes).

    Args:
        tree: A PyTree of arrays (numpy or JAX).
        sharding: Where to put them, or None to leave ``tree`` as it is.

    Returns:
        ``tree`` with every leaf a `jax.Array` on ``sharding``.
    """
    if sharding is None:
        return tree
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(
            host.shape, sharding, lambda index: host[index]
        )

    return jax.tree.map(put, tree)


def gather_to_host(tree: Any) -> Any:
    """Every leaf as a numpy array holding all its values, in every process.

    A leaf sharded over devices of other processes is gathered (a collective: every
    process must call this with the same arrays); the others are copied to the host.

    Args:
        tree: A PyTree of arrays.

    Returns:
        The same PyTree of numpy arrays.
    """

    def host(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(host, tree)


def same_in_every_process(data: bytes) -> bool:
    """Whether ``data`` is the same in every process (compared by SHA-256 digest).

    A collective: every process must call it, before any other collective that
    depends on the answer. True at once with a single process.

    Args:
        data: Bytes to compare (e.g. a checkpoint's contents).

    Returns:
        True if every process passed equal bytes.
    """
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(data).digest(), dtype=np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(digest[None], tiled=True))
    return bool(np.all(gathered == gathered[:1]))
