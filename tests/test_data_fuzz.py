"""Property tests: mutated files and random bytes give PatientData or InputError.

Nothing else may come out: no other exception type, no warning other than DataWarning.
"""

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isletfit.data as data
from isletfit import DataWarning, InputError

FIX = Path(__file__).parent / "fixtures" / "data"
SOURCES = [
    "dexcom_mgdl.csv",
    "dexcom_mmol.csv",
    "libre_us.csv",
    "libre_eu.csv",
    "nightscout.json",
    "tidepool.json",
    "p017.csv",
    "generic_multi.csv",
]
ORIGINALS = {name: (FIX / name).read_bytes() for name in SOURCES}
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _outcome(content: bytes, suffix: str, tz: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"fuzz{suffix}"
        f.write_bytes(content)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", DataWarning)
            try:
                result = data.read_many(f, tz=tz)
            except InputError as e:
                assert e.file is not None or e.field is not None
                return "error"
        assert f.read_bytes() == content
    for p in result:
        assert isinstance(p, data.PatientData)
        assert len(p.cgm) > 0
        assert np.all(np.diff(p.cgm.time_min) >= 0)
        assert np.all(np.isfinite(p.cgm.glucose_mg_dl))
        assert np.all((p.cgm.glucose_mg_dl > 0) & (p.cgm.glucose_mg_dl <= 1000))
        assert set(np.unique(p.cgm.censored)) <= {-1, 0, 1}
        g = data.resample(p)
        assert np.all(np.isfinite(g.glucose_mg_dl))
    return "ok"


def _mutate(content: bytes, ops, draw) -> bytes:
    b = bytearray(content)
    for op in ops:
        if not b:
            break
        if op == "flip":
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            b = b[: draw(st.integers(0, len(b)))]
        else:
            lines = bytes(b).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "delete":
                del lines[i]
            else:
                lines.insert(i, lines[i])
            b = bytearray(b"\n".join(lines))
    return bytes(b)


@pytest.mark.parametrize("name", SOURCES)
@SETTINGS
@given(st.data())
def test_mutated_files_read_or_raise_input_error(name, rnd):
    ops = rnd.draw(
        st.lists(
            st.sampled_from(["flip", "truncate", "delete", "duplicate"]),
            min_size=1,
            max_size=6,
        )
    )
    content = _mutate(ORIGINALS[name], ops, rnd.draw)
    tz = rnd.draw(st.sampled_from([None, "Europe/Berlin"]))
    _outcome(content, Path(name).suffix, tz)


@pytest.mark.parametrize("name", ["patients.csv", "labs.csv"])
@SETTINGS
@given(st.data())
def test_mutated_sheets_read_or_raise_input_error(name, rnd):
    ops = rnd.draw(
        st.lists(
            st.sampled_from(["flip", "truncate", "delete", "duplicate"]),
            min_size=1,
            max_size=4,
        )
    )
    content = _mutate((FIX / name).read_bytes(), ops, rnd.draw)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / name
        f.write_bytes(content)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                if name == "patients.csv":
                    df = data.read_patients(f)
                    assert df["patient_id"].is_unique
                    assert (df["weight_kg"] > 0).all()
                else:
                    df = data.read_labs(f)
                    assert df["value"].notna().all()
            except InputError:
                pass


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(max_size=3000), st.sampled_from([".csv", ".json", ".txt"]))
def test_random_bytes_read_or_raise_input_error(content, suffix):
    _outcome(content, suffix)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(
        st.sampled_from(
            [
                "2024-03-05T06:00:00,110",
                "2024-03-05T06:05:00+01:00,112",
                "2024-03-05T06:10:00,Low",
                "2024-13-05T06:10:00,99",
                "2024-03-05T06:15:00,-1",
                "2024-03-05T06:20:00,5,6",
                ",",
                "",
                "2024-03-05T06:25:00,",
                '"2024-03-05T06:30:00","1e3"',
                "2024-03-05T06:35:00,nan",
                "2024-03-05T06:40:00,inf",
                "0001-01-01T00:00:00,100",
                "9999-12-31T23:59:59,100",
            ]
        ),
        max_size=12,
    )
)
def test_generic_rows_any_mix(rows):
    content = ("time,glucose_mg_dl\n" + "\n".join(rows) + "\n").encode()
    _outcome(content, ".csv")
