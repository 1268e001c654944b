"""The command line: demo, version, and errors as one clear line."""

import csv

import pytest

from isletfit._cli import main


def test_demo_quick_writes_figure_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    png = out / "demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "demo_summary.csv").open()))
    assert [float(r["visit_day"]) for r in rows] == [-14.0, 30.0, 90.0, 180.0, 365.0]
    b = [float(r["graft_b"]) for r in rows]
    insulin = [float(r["insulin_u_per_day"]) for r in rows]
    assert b[0] == 0.0 and b[-1] > 0.5 and b == sorted(b)
    assert insulin[0] > 20.0 and insulin[-1] == 0.0
    assert float(rows[-1]["mean_glucose_mg_dl"]) < float(rows[0]["mean_glucose_mg_dl"])
    text = capsys.readouterr().out
    assert "per visit" in text and "demo.png" in text
    # nothing but the outputs is left in the folder (atomic writes clean up)
    assert sorted(p.name for p in out.iterdir()) == ["demo.png", "demo_summary.csv"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "isletfit" in capsys.readouterr().out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
