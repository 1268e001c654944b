"""read_patients and read_labs: validation and unit conversion."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import isletfit.data as data
from isletfit import InputError

FIX = Path(__file__).parent / "fixtures" / "data"


def test_read_patients():
    df = data.read_patients(FIX / "patients.csv")
    assert list(df.columns) == [
        "patient_id",
        "weight_kg",
        "transplant_date",
        "baseline_tdd_u",
    ]
    assert df["patient_id"].tolist() == ["p01", "p02", "p017"]
    np.testing.assert_allclose(df["weight_kg"], [72.5, 61.0, 80.2])
    assert df["transplant_date"].iloc[0] == pd.Timestamp("2024-01-15")
    assert pd.isna(df["transplant_date"].iloc[2])
    assert np.isnan(df["baseline_tdd_u"].iloc[1])


def test_read_patients_without_optional_column(tmp_path):
    f = tmp_path / "patients.csv"
    f.write_text("patient_id;weight_kg;transplant_date;site\np9;70,5;2024-05-01;Oslo\n")
    df = data.read_patients(f)
    assert df["weight_kg"].tolist() == [70.5]
    assert np.isnan(df["baseline_tdd_u"].iloc[0])
    assert df["site"].tolist() == ["Oslo"]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("patient_id,transplant_date\np1,2024-01-01\n", 1, "weight_kg"),
        ("patient_id,weight_kg,transplant_date\np1,-70,2024-01-01\n", 2, "weight_kg"),
        ("patient_id,weight_kg,transplant_date\np1,heavy,2024-01-01\n", 2, "weight_kg"),
        (
            "patient_id,weight_kg,transplant_date\np1,70,2024-31-01\n",
            2,
            "transplant_date",
        ),
        ("patient_id,weight_kg,transplant_date\np1,70,\np1,71,\n", 3, "patient_id"),
        ("patient_id,weight_kg,transplant_date\n,70,\n", 2, "patient_id"),
        (
            "patient_id,weight_kg,transplant_date,baseline_tdd_u\np1,70,,-3\n",
            2,
            "baseline_tdd_u",
        ),
        ("patient_id,weight_kg,transplant_date\np1,70\n", 2, "weight_kg"),
        ("patient_id,weight_kg,transplant_date\n", 2, None),
    ],
)
def test_read_patients_errors(tmp_path, text, line, field):
    f = tmp_path / "patients.csv"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        data.read_patients(f)
    assert e.value.file == str(f)
    assert e.value.line == line
    assert e.value.field == field


def test_read_labs_converts_units():
    df = data.read_labs(FIX / "labs.csv", patients=FIX / "patients.csv")
    assert list(df.columns) == ["patient_id", "date", "kind", "value", "unit"]
    v = df["value"].to_numpy()
    assert df["unit"].tolist() == [
        "%",
        "%",
        "nmol/L",
        "nmol/L",
        "nmol/L",
        "mg/dL",
        "mg/dL",
        "U/day",
        "U/day",
        "U/kg/day",
        "events/year",
    ]
    assert v[0] == 7.9
    assert v[1] == pytest.approx(53 / 10.929 + 2.15)  # 53 mmol/mol ~ 7.0 %
    assert v[3] == pytest.approx(0.82)  # 820 pmol/L
    assert v[4] == pytest.approx(1.2 * 0.331)  # ng/mL
    assert v[5] == pytest.approx(6.1 * 18.016)
    assert v[7] == pytest.approx(0.21 * 72.5)  # U/kg/day x weight
    assert v[9] == pytest.approx(0.3)  # p03 has no weight: kept per kg
    assert df["date"].iloc[0] == pd.Timestamp("2024-01-10")


def test_read_labs_without_patients_keeps_per_kg():
    df = data.read_labs(FIX / "labs.csv")
    assert df["unit"].iloc[7] == "U/kg/day" and df["value"].iloc[7] == 0.21


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("p1,2024-01-01,ldl,3,mmol/L", "kind"),
        ("p1,2024-01-01,hba1c,7,mg/dL", "unit"),
        ("p1,2024-01-01,hba1c,seven,%", "value"),
        ("p1,2024-01-01,hba1c,70,%", "value"),  # mmol/mol mislabelled as %
        ("p1,01/02/2024x,hba1c,7,%", "date"),
        ("p1,2024-01-01,c_peptide_fasting,500,nmol/L", "value"),
        ("p1,2024-01-01,insulin_dose,9,U/kg/day", "value"),
    ],
)
def test_read_labs_errors(tmp_path, row, field):
    f = tmp_path / "labs.csv"
    f.write_text(
        "patient_id,date,kind,value,unit\np1,2024-01-01,hba1c,7.1,%\n" + row + "\n"
    )
    with pytest.raises(InputError) as e:
        data.read_labs(f)
    assert e.value.file == str(f)
    assert e.value.line == 3
    assert e.value.field == field


def test_read_labs_aliases(tmp_path):
    f = tmp_path / "labs.csv"
    f.write_text(
        "patient_id,date,kind,value,unit\n"
        "p1,2024-01-01,HbA1c,7.1,%\n"
        "p1,2024-01-01,Fasting C-peptide,0.2,nmol/l\n"
        "p1,2024-01-01,severe hypoglycemia,0,events\n"
    )
    df = data.read_labs(f)
    assert df["kind"].tolist() == ["hba1c", "c_peptide_fasting", "severe_hypo"]
