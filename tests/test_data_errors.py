"""Bad inputs: every one ends in an InputError that names file, line and field."""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

import isletfit.data as data
from isletfit import DataWarning, InputError

FIX = Path(__file__).parent / "fixtures" / "data"
GOOD = "time,glucose_mg_dl\n" + "".join(
    f"2024-03-05T06:{m:02d}:00,{100 + m}\n" for m in range(0, 60, 5)
)


def _write(tmp_path, text, name="p01.csv", mode="w"):
    f = tmp_path / name
    if mode == "wb":
        f.write_bytes(text)
    else:
        f.write_text(text)
    return f


def _error(path, **kw) -> InputError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(InputError) as e:
            data.read(path, **kw)
    assert e.value.file == str(path)
    return e.value


def test_missing_file(tmp_path):
    e = _error(tmp_path / "nope.csv")
    assert "not found" in str(e)


@pytest.mark.parametrize("content", [b"", b"   \n\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    e = _error(_write(tmp_path, content, mode="wb"))
    assert e.line == 1 and "empty" in e.message


def test_header_only(tmp_path):
    e = _error(_write(tmp_path, "time,glucose_mg_dl\n"))
    assert e.line == 2 and "no data rows" in e.message


def test_header_only_vendor(tmp_path):
    head = (FIX / "dexcom_mgdl.csv").read_text(encoding="utf-8-sig").split("\n")[:11]
    e = _error(_write(tmp_path, "\n".join(head) + "\n"))
    assert e.field == "Event Type" and e.line == 2


def test_truncated_mid_line(tmp_path):
    f = _write(
        tmp_path,
        "time,glucose_mg_dl,carbs_g\n2024-03-05T06:00:00,110,\n2024-03-05T06:0",
    )
    e = _error(f)
    assert e.line == 3 and e.field == "time" and "truncated" in e.message


def test_truncated_dexcom(tmp_path):
    text = (FIX / "dexcom_mgdl.csv").read_bytes()
    n_lines = text.count(b"\n")
    cut = text[: len(text) - 30]  # inside the last row (an EGV row)
    e = _error(_write(tmp_path, cut, mode="wb"))
    assert e.line == n_lines and "truncated" in e.message
    assert e.field is not None


def test_last_line_without_newline_is_fine_when_complete(tmp_path):
    p = data.read(_write(tmp_path, GOOD.rstrip("\n")))
    assert len(p.cgm) == 12


@pytest.mark.parametrize(
    ("header", "field"),
    [("when,glucose_mg_dl", "time"), ("time,glucose", "glucose_mg_dl")],
)
def test_missing_columns(tmp_path, header, field):
    f = _write(tmp_path, header + "\n2024-03-05T06:00:00,110\n")
    e = _error(f, format="generic")
    assert e.line == 1 and e.field == field


def test_wrong_columns_auto_is_unknown_format(tmp_path):
    e = _error(_write(tmp_path, "when,glucose\n2024-03-05T06:00:00,110\n"))
    assert "unknown format" in e.message and e.line == 1
    for name in data.available_formats():
        assert name in e.message


def test_unknown_format_random_text(tmp_path):
    e = _error(_write(tmp_path, "hello world\nthis is not data\n", name="x.txt"))
    assert "unknown format" in e.message


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "unparseable glucose"),
        ("-5", "impossible"),
        ("0", "impossible"),
        ("1200", "impossible"),
    ],
)
def test_bad_glucose_alone_raises(tmp_path, value, reason):
    e = _error(_write(tmp_path, f"time,glucose_mg_dl\n2024-03-05T06:00:00,{value}\n"))
    assert e.line == 2 and e.field == "glucose_mg_dl" and reason in e.message
    assert e.expected


def test_bad_date_raises(tmp_path):
    e = _error(_write(tmp_path, "time,glucose_mg_dl\n2024-13-45T06:00:00,110\n"))
    assert e.line == 2 and e.field == "time" and "unparseable time" in e.message


def test_a_few_bad_rows_are_skipped_with_a_counting_warning(tmp_path):
    lines = GOOD.splitlines()
    lines[3] = "2024-03-05T06:10:00,oops"
    lines[5] = "2024-03-05T06:20:00,-3"
    lines[7] = "not-a-date,120"
    f = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.warns(DataWarning) as rec:
        p = data.read(f)
    msg = str(rec[0].message)
    assert msg.startswith(f"{f}: 3 of 12 rows were skipped")
    assert "unparseable glucose (lines 4)" in msg
    assert "impossible glucose" in msg and "(lines 6)" in msg
    assert "unparseable time (lines 8)" in msg
    assert len(p.cgm) == 9
    assert p.counts["skipped_rows"] == 3
    assert p.counts["skipped_unparseable_glucose"] == 1
    assert p.counts["skipped_impossible_glucose"] == 1


def test_more_than_half_bad_raises(tmp_path):
    lines = GOOD.splitlines()
    for i in range(1, 8):
        lines[i] = lines[i].split(",")[0] + ",x"
    e = _error(_write(tmp_path, "\n".join(lines) + "\n"))
    assert e.line == 2 and e.field == "glucose_mg_dl" and "7 of 12" in e.message


def test_bad_json(tmp_path):
    e = _error(
        _write(tmp_path, '[{"sgv": 120, "date": 1709618400000},\n {"sgv": 1', "n.json"),
        format="nightscout",
    )
    assert e.line == 2 and "JSON" in e.message


def test_json_without_records(tmp_path):
    e = _error(_write(tmp_path, '{"status": "ok"}', "n.json"), format="nightscout")
    assert e.field == "sgv"


def test_tidepool_bad_value(tmp_path):
    text = (
        '[\n{"type": "cbg", "units": "mmol/L", "value": -1, '
        '"time": "2024-03-05T06:00:00Z"}\n]'
    )
    e = _error(_write(tmp_path, text, "t.json"))
    assert e.line == 2 and e.field == "value"


def test_dexcom_bad_glucose_row(tmp_path):
    text = (FIX / "dexcom_mmol.csv").read_text()
    text = text.replace(",iOS G7,6.2,", ",iOS G7,6..2,", 1)
    f = _write(tmp_path, text)
    with pytest.warns(DataWarning, match=r"1 of 52 rows were skipped.*lines 12"):
        p = data.read(f)
    assert len(p.cgm) == 47


def test_no_cgm_readings(tmp_path):
    f = _write(tmp_path, "time,glucose_mg_dl,bolus_u\n2024-03-05T06:00:00,,2\n")
    e = _error(f)
    assert e.field == "glucose" and "no CGM readings" in e.message


def test_directory_without_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        data.read(tmp_path / "empty")


ALL_FIXTURES = sorted(p for p in FIX.iterdir() if p.suffix in (".csv", ".json"))


def test_inputs_are_never_modified():
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ALL_FIXTURES}
    stat = {p: p.stat().st_mtime_ns for p in ALL_FIXTURES}
    for p in ALL_FIXTURES:
        if p.name in ("patients.csv", "labs.csv"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            try:
                data.read(p, tz="Europe/Berlin")
            except InputError as e:  # several patients; treatments without CGM
                assert p.name in ("generic_multi.csv", "nightscout_treatments.json")
                assert e.field in ("patient_id", "glucose")
    data.read_patients(FIX / "patients.csv")
    data.read_labs(FIX / "labs.csv", patients=FIX / "patients.csv")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ALL_FIXTURES}
    assert before == after
    assert stat == {p: p.stat().st_mtime_ns for p in ALL_FIXTURES}


def test_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        data.read(tmp_path / "missing.csv")


def test_utf16_with_bom(tmp_path):
    f = _write(tmp_path, GOOD.encode("utf-16"), mode="wb")
    assert len(data.read(f).cgm) == 12


def test_cp1252_file(tmp_path):
    lines = ["time,glucose_mg_dl,note"] + [
        ln + ",caf\xe9" for ln in GOOD.splitlines()[1:]
    ]
    f = _write(tmp_path, ("\n".join(lines) + "\n").encode("cp1252"), mode="wb")
    p = data.read(f)
    assert len(p.cgm) == 12
    np.testing.assert_allclose(p.cgm.glucose_mg_dl[:2], [100, 105])
