"""Time handling: reference midnight, daylight-saving rules, explicit offsets, tz=."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import isletfit.data as data
from isletfit import InputError

FIX = Path(__file__).parent / "fixtures" / "data"


def test_reference_is_local_midnight_and_clock_time():
    p = data.read(FIX / "dexcom_mgdl.csv")
    assert p.reference_time == pd.Timestamp("2024-03-05")
    assert p.cgm.time_min[0] == pytest.approx(6 * 60 + 3 + 12 / 60)
    clock = (
        p.cgm.timestamp.hour * 60 + p.cgm.timestamp.minute + p.cgm.timestamp.second / 60
    )
    np.testing.assert_allclose(p.cgm.time_min % 1440, clock)


def test_fall_back_repeated_hour_resolved_by_row_order():
    p = data.read(FIX / "generic_dst_fall.csv", tz="Europe/Berlin")
    # 01:30..02:50 CEST, then 02:00..03:30 CET: 19 readings 10 min apart
    np.testing.assert_allclose(np.diff(p.cgm.time_min), 10.0)
    np.testing.assert_allclose(p.cgm.glucose_mg_dl, 100 + np.arange(19))
    offsets = [t.utcoffset().total_seconds() / 3600 for t in p.cgm.timestamp]
    assert offsets[:9] == [2.0] * 9 and offsets[9:] == [1.0] * 10
    assert p.timezone == "Europe/Berlin"
    assert p.reference_time == pd.Timestamp("2024-10-27", tz="Europe/Berlin")
    assert p.cgm.time_min[0] == 90.0  # 01:30 CEST is 90 min after midnight CEST


def test_fall_back_newest_first_file(tmp_path):
    lines = (FIX / "generic_dst_fall.csv").read_text().splitlines()
    f = tmp_path / "rev.csv"
    f.write_text("\n".join([lines[0], *lines[1:][::-1]]) + "\n")
    p = data.read(f, tz="Europe/Berlin")
    np.testing.assert_allclose(np.diff(p.cgm.time_min), 10.0)
    np.testing.assert_allclose(p.cgm.glucose_mg_dl, 100 + np.arange(19))


def test_fall_back_without_tz_stays_naive():
    p = data.read(FIX / "generic_dst_fall.csv")
    assert p.timezone is None and p.cgm.timestamp.tz is None
    assert len(p.cgm) == 19  # the repeated hour overlaps, nothing is lost
    assert p.counts["duplicates_dropped"] == 0


def test_dexcom_fall_back_new_york():
    p = data.read(FIX / "dexcom_dst_fall.csv", tz="America/New_York")
    np.testing.assert_allclose(
        np.diff(p.cgm.time_min)[[5, 6, 16, 17, 18, 28, 29]],
        [5.0, 5.0, 5.0, 5 + 1 / 60, 5.0, 5.0, 5.0],
        atol=1e-9,
    )
    np.testing.assert_allclose(p.cgm.glucose_mg_dl, 100 + np.arange(36))
    assert np.all(np.diff(p.cgm.time_min) > 4.9)


def test_spring_forward_nonexistent_time_shifted_by_the_gap():
    p = data.read(FIX / "generic_dst_spring.csv", tz="Europe/Berlin")
    # 02:30 does not exist: read as 03:30 CEST (= 01:30 UTC = 150 min after midnight)
    by_value = dict(zip(p.cgm.glucose_mg_dl, p.cgm.time_min, strict=True))
    assert by_value[103.0] == 150.0
    assert by_value[101.0] == 100.0 and by_value[104.0] == 160.0
    assert p.cgm.glucose_mg_dl.tolist() == [101, 102, 103, 104, 105]


def test_explicit_offsets_across_a_dst_change():
    p = data.read(FIX / "generic_offsets.csv")
    np.testing.assert_allclose(np.diff(p.cgm.time_min), 5.0)
    assert p.timezone == "UTC+01:00"
    assert p.reference_time == pd.Timestamp("2024-03-31T00:00:00+01:00")
    assert p.cgm.time_min[0] == 30.0
    q = data.read(FIX / "generic_offsets.csv", tz="Europe/Berlin")
    np.testing.assert_allclose(q.cgm.time_min, p.cgm.time_min)
    assert str(q.cgm.timestamp[-1]) == "2024-03-31 03:05:00+02:00"


def test_tz_interprets_naive_times():
    naive = data.read(FIX / "p017.csv")
    zoned = data.read(FIX / "p017.csv", tz="America/Chicago")
    np.testing.assert_allclose(naive.cgm.time_min, zoned.cgm.time_min)
    assert str(zoned.cgm.timestamp[0]) == "2024-03-05 06:00:00-06:00"
    assert zoned.reference_time == pd.Timestamp("2024-03-05", tz="America/Chicago")


def test_utc_instants_shown_in_tz():
    p = data.read(FIX / "tidepool.json", tz="America/New_York")
    assert p.timezone == "America/New_York"
    assert str(p.cgm.timestamp[0]) == "2024-03-05 06:00:31-05:00"
    assert p.cgm.time_min[0] == pytest.approx(360 + 31 / 60)


def test_unknown_time_zone():
    with pytest.raises(InputError) as e:
        data.read(FIX / "p017.csv", tz="Mars/Olympus")
    assert e.value.field == "tz"


def test_z_suffix_and_offsets_mixed_in_one_file(tmp_path):
    f = tmp_path / "z.csv"
    f.write_text(
        "time,glucose_mg_dl\n2024-03-05T05:00:00Z,100\n2024-03-05T06:05:00+01:00,105\n"
    )
    p = data.read(f)
    np.testing.assert_allclose(p.cgm.time_min - p.cgm.time_min[0], [0, 5])
    assert p.timezone == "UTC"
