"""Every reader against a generic CSV of the same readings, and format specifics."""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import isletfit.data as data
from isletfit import DataWarning, InputError

FIX = Path(__file__).parent / "fixtures" / "data"

PAIRS = [
    ("dexcom_mgdl.csv", "dexcom_clarity"),
    ("dexcom_mmol.csv", "dexcom_clarity"),
    ("libre_us.csv", "libreview"),
    ("libre_eu.csv", "libreview"),
    ("nightscout.json", "nightscout"),
    ("tidepool.json", "tidepool"),
]


def _generic_twin(name: str) -> Path:
    return FIX / (name.rsplit(".", 1)[0] + ".generic.csv")


def _same_events(a, b, *, rtol=1e-9):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.time_min, b.time_min, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.amount, b.amount, rtol=rtol, equal_nan=True)


@pytest.mark.parametrize(("name", "fmt"), PAIRS)
def test_format_matches_its_generic_twin(name, fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fixtures are clean: no warning at all
        vendor = data.read(FIX / name)
        generic = data.read(_generic_twin(name))
    assert vendor.format == fmt
    assert generic.format == "generic"
    assert vendor.reference_time == generic.reference_time
    assert vendor.timezone == generic.timezone
    # Tidepool stores mmol/L = mg/dL / 18.01559, read back with 18.016
    rtol = 1e-4 if fmt == "tidepool" else 1e-9
    _same_events(vendor.cgm, generic.cgm, rtol=rtol)
    np.testing.assert_array_equal(vendor.cgm.censored, generic.cgm.censored)
    assert (vendor.cgm.timestamp == generic.cgm.timestamp).all()
    _same_events(vendor.boluses, generic.boluses)
    _same_events(vendor.carbs, generic.carbs)
    # the generic CSV cannot say "rate unknown from here": compare up to that
    known = np.isfinite(vendor.basal.rate_u_per_h)
    assert np.isnan(vendor.basal.rate_u_per_h[~known]).all()
    _same_events(vendor.basal.take(known), generic.basal)


def test_dexcom_censoring_smbg_and_long_acting():
    p = data.read(FIX / "dexcom_mgdl.csv")
    assert p.patient_id == "dexcom_mgdl"
    assert len(p.cgm) == 48
    low = p.cgm.censored == -1
    high = p.cgm.censored == 1
    assert low.sum() == 1 and high.sum() == 1
    assert p.cgm.glucose_mg_dl[low][0] == 40.0
    assert p.cgm.glucose_mg_dl[high][0] == 400.0
    np.testing.assert_allclose(p.smbg.glucose_mg_dl, [118.0])
    np.testing.assert_allclose(p.smbg.time_min, [7 * 60 + 31 + 40 / 60])
    np.testing.assert_allclose(p.long_acting.units, [12.0])
    np.testing.assert_allclose(p.long_acting.time_min, [9 * 60])
    assert p.counts["ignored_metadata"] == 10
    assert p.counts["ignored_other_events"] == 1  # the Exercise row
    # line numbers: the header is line 1, 10 metadata rows, first EGV on line 12
    assert p.cgm.row[0] == 12
    assert p.cgm.timestamp.tz is None and p.timezone is None


def test_mmol_equals_mg_dl_within_rounding():
    mg = data.read(FIX / "dexcom_mgdl.csv")
    mmol = data.read(FIX / "dexcom_mmol.csv")
    np.testing.assert_allclose(mg.cgm.time_min, mmol.cgm.time_min)
    # one decimal in mmol/L is at most 0.05 * 18.016 = 0.9 mg/dL off
    np.testing.assert_allclose(mg.cgm.glucose_mg_dl, mmol.cgm.glucose_mg_dl, atol=0.91)
    np.testing.assert_array_equal(mg.cgm.censored, mmol.cgm.censored)


def test_libre_record_types_and_order():
    p = data.read(FIX / "libre_us.csv")
    assert len(p.cgm) == 32 + 2  # historic + scans, sorted together
    assert np.all(np.diff(p.cgm.time_min) > 0)
    assert p.cgm.time_min[0] == 6 * 60 and p.cgm.time_min[-1] == 13 * 60 + 45
    assert p.cgm.censored[p.cgm.glucose_mg_dl == 40].tolist() == [-1]
    assert p.cgm.censored[p.cgm.glucose_mg_dl == 500].tolist() == [1]
    np.testing.assert_allclose(p.smbg.glucose_mg_dl, [121.0])
    np.testing.assert_allclose(p.long_acting.units, [10.0])
    assert p.counts["ignored_other_records"] == 2  # the two type-6 rows
    assert str(p.cgm.timestamp[-1]) == "2024-03-15 13:45:00"  # 01:45 PM


def test_libre_eu_semicolon_decimal_comma_matches_us():
    us = data.read(FIX / "libre_us.csv")
    eu = data.read(FIX / "libre_eu.csv")
    np.testing.assert_allclose(us.cgm.time_min, eu.cgm.time_min)
    np.testing.assert_allclose(us.cgm.glucose_mg_dl, eu.cgm.glucose_mg_dl, atol=0.91)
    np.testing.assert_array_equal(us.cgm.censored, eu.cgm.censored)


def test_libre_ambiguous_dates_warn_and_can_be_overridden(tmp_path):
    text = (FIX / "libre_eu.csv").read_text().replace("15-03-2024", "05-03-2024")
    f = tmp_path / "amb.csv"
    f.write_text(text)
    with pytest.warns(DataWarning, match="assumed DD-MM-YYYY"):
        p = data.read(f)
    assert str(p.reference_time.date()) == "2024-03-05"
    q = data.read(f, format=data.LibreView(date_order="mdy"))
    assert str(q.reference_time.date()) == "2024-05-03"


def test_libre_month_first_detected_from_content():
    p = data.read(FIX / "libre_us.csv")  # 03-15-2024: 15 > 12 is the day
    assert str(p.reference_time.date()) == "2024-03-15"


def test_nightscout_lists_merge_to_the_object_form():
    whole = data.read(FIX / "nightscout.json")
    parts = data.read(
        [FIX / "nightscout_entries.json", FIX / "nightscout_treatments.json"]
    )
    assert parts.sources == (
        str(FIX / "nightscout_entries.json"),
        str(FIX / "nightscout_treatments.json"),
    )
    for stream in ("cgm", "boluses", "carbs", "basal", "smbg"):
        _same_events(getattr(whole, stream), getattr(parts, stream))
    assert set(parts.boluses.source) == {1}
    assert set(parts.cgm.source) == {0}


def test_nightscout_specifics():
    p = data.read(FIX / "nightscout.json")
    assert p.timezone == "UTC+01:00"
    assert str(p.reference_time) == "2024-03-05 00:00:00+01:00"
    assert p.cgm.censored.tolist().count(-1) == 1  # sgv 39
    np.testing.assert_allclose(p.smbg.glucose_mg_dl, [6.5 * 18.016])
    # temp basals: 0.5 U/h 06:45-07:15, 1.1 U/h 07:15-07:45, then unknown
    np.testing.assert_allclose(p.basal.time_min, [405, 435, 465])
    np.testing.assert_allclose(p.basal.rate_u_per_h, [0.5, 1.1, np.nan])
    # entries are newest-first in the file; rows keep their own line numbers
    assert np.all(np.diff(p.cgm.row) < 0)


def test_tidepool_bolus_kinds_and_wizard_counted_once():
    p = data.read(FIX / "tidepool.json")
    # 4 (normal) + 2 (square over 30 min) + 1 + 1 (dual/square) + 1 (embedded) U
    assert p.boluses.units.sum() == pytest.approx(4 + 2 + 2 + 1)
    assert len(p.boluses) == 1 + 6 + 1 + 2 + 1
    np.testing.assert_allclose(p.carbs.grams, [40, 15, 10])
    np.testing.assert_allclose(p.basal.rate_u_per_h, [0.8, 1.2, 0.8, np.nan])
    np.testing.assert_allclose(p.basal.time_min, [360, 420, 450, 600])
    assert p.cgm.censored.tolist().count(-1) == 1
    assert p.cgm.glucose_mg_dl[p.cgm.censored == -1][0] == 40.0
    assert p.counts["ignored_other_records"] == 1  # the upload record


def test_temp_basal_returns_to_the_scheduled_rate(tmp_path):
    recs = """[
 {"type": "cbg", "units": "mg/dL", "value": 120, "time": "2024-03-05T11:00:00Z"},
 {"type": "basal", "deliveryType": "scheduled", "rate": 0.8, "duration": 7200000,
  "time": "2024-03-05T11:00:00Z"},
 {"type": "basal", "deliveryType": "temp", "rate": 0.2, "duration": 1800000,
  "time": "2024-03-05T11:30:00Z"}
]"""
    f = tmp_path / "tp.json"
    f.write_text(recs)
    p = data.read(f)
    # scheduled 0.8 from 11:00 to 13:00; temp 0.2 11:30-12:00; back to 0.8; unknown
    np.testing.assert_allclose(p.basal.time_min - p.basal.time_min[0], [0, 30, 60, 120])
    np.testing.assert_allclose(p.basal.rate_u_per_h, [0.8, 0.2, 0.8, np.nan])
    np.testing.assert_allclose(p.basal.rate_at(p.basal.time_min[0] + 45), 0.2)


def test_bom_semicolon_decimal_comma_generic():
    p = data.read(FIX / "generic_bom_semicolon.csv")
    np.testing.assert_allclose(
        p.cgm.glucose_mg_dl, np.array([6.1, 6.0, 5.8, 5.9, 6.3]) * 18.016
    )
    np.testing.assert_allclose(p.boluses.units, [2.5])
    np.testing.assert_allclose(p.carbs.grams, [30])


def test_duplicates_dropped_counted_and_out_of_order_sorted():
    with pytest.warns(DataWarning, match="2 exact duplicate records dropped"):
        p = data.read(FIX / "generic_dups_unsorted.csv")
    assert p.counts["duplicates_dropped"] == 2
    assert p.counts["rows_read"] == 8
    np.testing.assert_allclose(
        p.cgm.time_min - p.cgm.time_min[0], [0, 5, 10, 15, 20, 25]
    )
    np.testing.assert_allclose(p.cgm.glucose_mg_dl, [110, 115, 120, 125, 130, 135])
    assert p.cgm.row.tolist() == [3, 4, 2, 7, 6, 9]  # the first copy is kept


def test_gaps_are_kept():
    p = data.read(FIX / "p017.csv")
    assert np.diff(p.cgm.time_min).max() == 25.0  # 06:55 -> 07:20


def test_generic_basal_and_censoring():
    p = data.read(FIX / "p017.csv")
    np.testing.assert_allclose(p.basal.rate_u_per_h, [0.8, 1.0, 0.8])
    np.testing.assert_allclose(p.basal.time_min, [360, 405, 450])
    assert p.cgm.glucose_mg_dl[p.cgm.censored == -1].tolist() == [40.0]
    assert p.cgm.glucose_mg_dl[p.cgm.censored == 1].tolist() == [400.0]


def test_generic_custom_limits():
    p = data.read(
        FIX / "p017.csv", format=data.GenericCSV(low_mg_dl=39, high_mg_dl=401)
    )
    assert sorted(p.cgm.glucose_mg_dl[p.cgm.censored != 0]) == [39.0, 401.0]


@pytest.mark.parametrize(("name", "fmt"), [*PAIRS, ("p017.csv", "generic")])
def test_sniff_recognises_content_not_name(tmp_path, name, fmt):
    renamed = tmp_path / "export.dat"
    renamed.write_bytes((FIX / name).read_bytes())
    assert data.read(renamed).format == fmt
    head = (FIX / name).read_text(encoding="utf-8-sig")[:65536]
    hits = [
        f.name
        for f in (
            data.DexcomClarity(),
            data.LibreView(),
            data.Tidepool(),
            data.Nightscout(),
            data.GenericCSV(),
        )
        if f.sniff(head)
    ]
    assert hits == [fmt]


@pytest.mark.parametrize(
    "fmt",
    ["dexcom_clarity", "Dexcom", "clarity", data.DexcomClarity(), data.DexcomClarity],
)
def test_format_by_name_or_instance(fmt):
    assert data.read(FIX / "dexcom_mgdl.csv", format=fmt).format == "dexcom_clarity"


def test_unknown_format_name():
    with pytest.raises(InputError) as e:
        data.read(FIX / "p017.csv", format="medtronic")
    assert e.value.field == "format"
    assert "libreview" in str(e.value)


def test_available_formats():
    assert data.available_formats() == (
        "dexcom_clarity",
        "libreview",
        "tidepool",
        "nightscout",
        "generic",
    )


def test_read_many_splits_patient_id_column_and_merges_same_ids(tmp_path):
    ps = data.read_many([FIX / "generic_multi.csv", FIX / "p017.csv"])
    assert [p.patient_id for p in ps] == ["p01", "p02", "p017"]
    assert [len(p.cgm) for p in ps] == [6, 6, 15]
    np.testing.assert_allclose(ps[1].cgm.glucose_mg_dl[:2], [150, 153])
    assert ps[0].counts["rows_read"] == 6
    # same id from two files (file stem) -> one merged patient
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "p017.csv").write_text(
        "time,glucose_mg_dl\n2024-03-06T06:00:00,99\n"
    )
    merged = data.read_many([FIX / "p017.csv", tmp_path / "a"])
    assert len(merged) == 1 and len(merged[0].cgm) == 16
    assert merged[0].sources == (
        str(FIX / "p017.csv"),
        str(tmp_path / "a" / "p017.csv"),
    )


def test_read_refuses_several_patients():
    with pytest.raises(InputError) as e:
        data.read(FIX / "generic_multi.csv")
    assert e.value.field == "patient_id"
    assert "read_many" in str(e.value)


def test_merging_naive_and_offset_files_needs_tz():
    with pytest.raises(InputError) as e:
        data.read([FIX / "p017.csv", FIX / "nightscout.json"])
    assert e.value.field == "tz"
    p = data.read([FIX / "p017.csv", FIX / "nightscout.json"], tz="Europe/Berlin")
    assert p.format == "generic+nightscout"
    assert len(p.cgm) == 15 + 25


def test_patientdata_is_immutable():
    p = data.read(FIX / "p017.csv")
    with pytest.raises(ValueError):
        p.cgm.glucose_mg_dl[0] = 1.0
    with pytest.raises(AttributeError):
        p.patient_id = "x"
    q = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(q.cgm.time_min, p.cgm.time_min)
    assert q.counts == p.counts and q.reference_time == p.reference_time


def test_quoted_newlines_keep_line_numbers(tmp_path):
    lines = (FIX / "libre_us.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",,,,,,,,,,,,,,", ',,,,,,,,,"two\nline note",,,,,')
    f = tmp_path / "notes.csv"
    f.write_text("\n".join(lines) + "\n")
    p = data.read(f)
    assert len(p.cgm) == 34
    assert p.cgm.row[:3].tolist() == [3, 4, 6]  # row 4 spans lines 4-5


def test_window_days_and_n_days():
    p = data.read(FIX / "dexcom_mgdl.csv")
    assert p.n_days == 1 and p.days().tolist() == [0]
    w = p.window(7 * 60, 8 * 60)
    assert (
        len(w.cgm) == 12 and w.cgm.time_min.min() >= 420 and w.cgm.time_min.max() < 480
    )
    assert len(w.boluses) == 1 and len(w.long_acting) == 0
    assert w.reference_time == p.reference_time
    t = data.read(FIX / "tidepool.json")
    w = t.window(430, 440)  # inside the temp basal: carried in at the window start
    np.testing.assert_allclose(w.basal.time_min, [430])
    np.testing.assert_allclose(w.basal.rate_u_per_h, [1.2])


def test_empty_event_sets_are_arrays():
    p = data.read(FIX / "dexcom_dst_fall.csv")
    for stream in (p.smbg, p.boluses, p.basal, p.carbs, p.long_acting):
        assert len(stream) == 0
        assert stream.time_min.dtype == np.float64
    assert p.cgm.censored.dtype == np.int8
    assert p.cgm.row.dtype == np.int64
    assert isinstance(p.cgm.timestamp, pd.DatetimeIndex)


def test_directory_skips_files_of_no_known_format(tmp_path):
    for name in ("p017.csv", "patients.csv"):
        (tmp_path / name).write_bytes((FIX / name).read_bytes())
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.warns(DataWarning, match="skipped 2 file.*notes.txt, patients.csv"):
        ps = data.read_many(tmp_path)
    assert [p.patient_id for p in ps] == ["p017"]
    with pytest.raises(InputError):  # named explicitly, it is an error
        data.read(tmp_path / "patients.csv")
