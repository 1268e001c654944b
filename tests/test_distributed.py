"""Multi-controller population fits: two processes on localhost, one CPU device each.

The two-process tests start two Python processes that connect through
`initialize_distributed` (coordinator on a free localhost port, ``ISLETFIT_*``
environment variables) and fit the same small cohort on a mesh over both processes'
devices; process 0 saves the result. The reference is the same fit in this process,
unsharded. Every subprocess has a timeout, so a hang fails the test instead of
blocking the run. The `isletfit fit --distributed` test (about 90 s on a busy 2-core
machine) is marked slow.

The cohort is written by a few lines of numpy (a glucose curve with meal bumps and
noise, 1 day per patient), not simulated: the tests compare two runs of one fit, and
the cohort simulation would cost as much as a fit to compile.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pandas as pd
import pytest

from isletfit import InputError
from isletfit._cli import main
from isletfit.data import read, read_patients
from isletfit.fitting import fit_population
from isletfit.fitting._distributed import initialize_distributed

from fit_fixtures import write_meal_day_records

N = 4
FIT = dict(max_rounds=1, starts=1)
SEED = 0
#: Seconds before a two-process run counts as hung.
TIMEOUT = 420

_WORKER = textwrap.dedent(
    """
    import glob, os, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from isletfit import InputError
    from isletfit.fitting._distributed import (
        initialize_distributed, is_main_process, patient_mesh)

    info = initialize_distributed()  # before any other JAX work
    from isletfit.data import read, read_patients
    from isletfit.fitting import fit_population

    folder, out, ckpt = sys.argv[1:4]
    patients = [read(f) for f in sorted(glob.glob(os.path.join(folder, "cgm", "*")))]
    sheet = read_patients(os.path.join(folder, "patients.csv"))
    try:
        res = fit_population(patients, sheet=sheet, key=jax.random.key({seed}),
                             mesh=patient_mesh(), checkpoint=ckpt, resume=True,
                             **{fit})
    except InputError as err:
        print("InputError:", err, file=sys.stderr)
        sys.exit(5)
    if is_main_process():
        log_b = np.stack([res.results[p].log_b for p in res.patient_id])
        np.savez(out, mu=res.mu, omega=res.omega, theta=res.theta,
                 theta_sd=res.theta_sd, log_b=log_b, n_devices=res.n_devices,
                 processes=info.num_processes, rounds=res.rounds)
    """
).format(seed=SEED, fit=FIT)


def _write_cohort(folder):
    """``N`` patients, 1 CGM day each (day 30 after the infusion), in generic CSV."""
    rows = [
        {
            "patient_id": f"d{i + 1:02d}",
            "weight_kg": 70.0 + i,
            "transplant_date": "2024-01-02",
        }
        for i in range(N)
    ]
    write_meal_day_records(folder, rows, [pd.Timestamp("2024-02-01")])
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(argvs, logs, *, timeout=TIMEOUT):
    """Run one process per ``argv`` as a multi-controller run; return exit codes.

    Output goes to files (a full pipe would stall one process and, through the
    collectives, the other). On a timeout both processes are killed and the test
    fails with their output.
    """
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "PMI", "ISLETFIT_"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="1",
        XLA_FLAGS=env.get("XLA_FLAGS", "")
        + " --xla_force_host_platform_device_count=1",
        ISLETFIT_COORDINATOR=f"127.0.0.1:{port}",
        # bind the coordinator service to localhost only (JAX's default is [::])
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
        ISLETFIT_NUM_PROCESSES=str(len(argvs)),
    )
    procs = []
    for rank, (argv, log) in enumerate(zip(argvs, logs, strict=True)):
        with open(log, "w") as fh:
            procs.append(
                subprocess.Popen(
                    argv,
                    env={**env, "ISLETFIT_PROCESS_ID": str(rank)},
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        pytest.fail(
            f"two-process run hung for {timeout} s:\n"
            + "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
        )
    return codes


def _output(logs) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return _write_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def reference(cohort):
    """The fit in this process, unsharded."""
    patients = [read(f) for f in sorted((cohort / "cgm").glob("*.csv"))]
    sheet = read_patients(cohort / "patients.csv")
    return fit_population(patients, sheet=sheet, key=jax.random.key(SEED), **FIT)


def test_two_processes_equal_one(cohort, reference, tmp_path):
    """Two processes x one device: the result of the unsharded fit, to 1e-8.

    Then the processes are given different checkpoints (one finds the first run's,
    the other none): both stop with an InputError before the first solve.
    """
    out, ckpt = tmp_path / "result.npz", tmp_path / "state.npz"
    argv = [sys.executable, "-c", _WORKER, str(cohort), str(out), str(ckpt)]
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    codes = _launch([argv, argv], logs)
    assert codes == [0, 0], _output(logs)
    res = reference
    assert res.failures == {}
    with np.load(out) as z:
        assert int(z["processes"]) == 2 and int(z["n_devices"]) == 2
        assert int(z["rounds"]) == res.rounds
        np.testing.assert_allclose(z["mu"], res.mu, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["omega"], res.omega, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["theta"], res.theta, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["theta_sd"], res.theta_sd, rtol=0, atol=1e-8)
        log_b = np.stack([res.results[p].log_b for p in res.patient_id])
        np.testing.assert_allclose(z["log_b"], log_b, rtol=0, atol=1e-8)
    # process 0 wrote the checkpoint (atomically: no temporary file left)
    with np.load(ckpt) as z:
        assert int(z["round"]) == res.rounds
        np.testing.assert_allclose(z["mu"], res.mu, rtol=0, atol=1e-8)
    assert not list(ckpt.parent.glob(".*.tmp"))

    # one process finds the checkpoint, the other none (a file system not shared)
    out = tmp_path / "again.npz"
    argvs = [
        [sys.executable, "-c", _WORKER, str(cohort), str(out), str(ckpt)],
        [sys.executable, "-c", _WORKER, str(cohort), str(out), str(tmp_path / "no")],
    ]
    codes = _launch(argvs, logs, timeout=180)
    assert codes == [5, 5], _output(logs)  # an InputError in both, no hang
    assert "found different checkpoints" in logs[1].read_text()
    assert not out.exists()


@pytest.mark.slow
def test_fit_command_distributed(cohort, reference, tmp_path):
    """`isletfit fit --population --distributed` on two processes: process 0 writes."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "isletfit._cli",
        "fit",
        str(cohort / "cgm"),
        "--patients",
        str(cohort / "patients.csv"),
        "--out",
        str(out),
        "--population",
        "--distributed",
        "--starts",
        str(FIT["starts"]),
        "--max-rounds",
        str(FIT["max_rounds"]),
        "--seed",
        str(SEED),
        "--vpc-draws",
        "0",
    ]
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    codes = _launch([argv, argv], logs)
    assert codes == [0, 0], _output(logs)
    first, second = (log.read_text() for log in logs)
    assert f"{N} of {N} patients fitted" in first
    assert "patients fitted" not in second  # the other process is quiet
    table = pd.read_csv(out / "population_parameters.csv")
    expected = reference.parameters()
    np.testing.assert_allclose(table["mu"], reference.mu, rtol=0, atol=1e-8)
    for column in expected.select_dtypes("number"):
        np.testing.assert_allclose(
            table[column], expected[column], rtol=1e-7, atol=1e-8
        )
    assert (out / "report.html").exists() and (out / "summary.csv").exists()
    assert (out / "population_checkpoint.npz").exists()
    for pid in reference.patient_id:
        assert (out / pid / "graft_function.csv").exists()


# ----------------------------------------------------------------- settings errors
_LAUNCH_VARS = ("SLURM_", "OMPI_", "ISLETFIT_", "JAX_COORDINATOR", "JAX_NUM_PROC")


@pytest.fixture
def no_launcher(monkeypatch):
    """An environment with no launcher and no coordinator settings."""
    for k in list(os.environ):
        if k.startswith(_LAUNCH_VARS) or k == "JAX_PROCESS_ID":
            monkeypatch.delenv(k)
    return monkeypatch


def test_initialize_without_settings_is_a_clear_error(no_launcher):
    with pytest.raises(InputError, match="no Slurm or Open MPI launch detected"):
        initialize_distributed()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ISLETFIT_NUM_PROCESSES": "two"}, "bad process count"),
        ({"ISLETFIT_PROCESS_ID": "-1"}, "bad process id"),
        ({"ISLETFIT_NUM_PROCESSES": "2", "ISLETFIT_PROCESS_ID": "2"}, "not below"),
        ({"ISLETFIT_NUM_PROCESSES": "0", "ISLETFIT_PROCESS_ID": "0"}, "at least 1"),
        ({"ISLETFIT_COORDINATOR": "node001"}, "bad coordinator"),
    ],
)
def test_initialize_with_bad_settings(no_launcher, env, match):
    env = {
        "ISLETFIT_COORDINATOR": "127.0.0.1:1",
        "ISLETFIT_NUM_PROCESSES": "2",
        "ISLETFIT_PROCESS_ID": "0",
        **env,
    }
    for k, v in env.items():
        no_launcher.setenv(k, v)
    with pytest.raises(InputError, match=match):
        initialize_distributed()


def test_fit_command_distributed_without_settings(
    no_launcher, cohort, tmp_path, capsys
):
    argv = ["fit", str(cohort / "cgm"), "--out", str(tmp_path / "o"), "--population"]
    assert main([*argv, "--distributed"]) == 2
    err = capsys.readouterr().err
    assert "no Slurm or Open MPI launch detected" in err and "docs/cluster.md" in err
    assert main([argv[0], *argv[1:4], "--distributed"]) == 2
    assert "--distributed needs --population" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
