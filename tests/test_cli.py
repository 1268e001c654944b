"""The command line: demo, version, and errors as one clear line."""

import csv

import pytest

from isletfit._cli import main


@pytest.mark.filterwarnings("ignore")
def test_demo_quick_fits_a_virtual_trial_and_compares_with_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "truth_vs_estimate.csv").open()))
    # 3 patients x 2 visits (baseline, day 180), every one fitted
    assert len(rows) == 6 and len({r["patient_id"] for r in rows}) == 3
    for r in rows:
        true_b, est = float(r["true_b"]), float(r["graft_b"])
        lo, hi = float(r["graft_b_lower"]), float(r["graft_b_upper"])
        assert lo <= est <= hi
        if float(r["study_day_start"]) < 0:  # before the infusion: no graft
            assert true_b == 0.0 and est == 0.0
        else:
            assert true_b > 0.0 and est > 0.0
    text = capsys.readouterr().out
    assert "estimated (95 % band) vs true" in text and "report.html" in text
    html = (out / "report.html").read_text()
    assert all(r["patient_id"] in html for r in rows)
    assert (out / "summary.csv").exists() and (out / "data" / "truth.csv").exists()
    for pid in {r["patient_id"] for r in rows}:
        assert (out / pid / "graft_function.csv").exists()
        assert (out / pid / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # atomic writes leave no temporary files behind
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "isletfit" in capsys.readouterr().out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_fit_commands_expose_the_cpu_cores_unless_the_user_chose():
    """`isletfit fit`/`demo` make every core a JAX device (windows split over them);
    a user's own choice (JAX_NUM_CPU_DEVICES) stands, and one device means no mesh."""
    import os
    import subprocess
    import sys

    code = (
        "from isletfit._cli import _cores_as_devices, _window_mesh\n"
        "_cores_as_devices()\n"
        "import jax\n"
        "mesh = _window_mesh()\n"
        "print(jax.local_device_count(), None if mesh is None else mesh.axis_names)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = ""
    cores = os.cpu_count() or 1
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    mesh = "('windows',)" if cores > 1 else "None"
    assert out.stdout.split() == [str(cores), *mesh.split()]
    for chosen in ("1", "3"):
        env["JAX_NUM_CPU_DEVICES"] = chosen
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        mesh = "None" if chosen == "1" else "('windows',)"
        assert out.stdout.split() == [chosen, *mesh.split()]
