"""Tidepool JSON export (the platform's device-data records)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError
from ._format import Format
from ._jsonfmt import get, numbers, spread, strings
from ._raw import (
    MAX_GLUCOSE_MG_DL,
    MG_DL_PER_MMOL_L,
    RawRecords,
    RowIssues,
    check_time,
    frame,
)
from ._text import json_records
from ._time import parse_iso

_TYPES = (
    "cbg|smbg|basal|bolus|wizard|food|insulin|pumpSettings|upload|deviceEvent|"
    "cgmSettings|physicalActivity|dosingDecision|reportedState|cbgSettings"
)
_SNIFF = re.compile(r'"type"\s*:\s*"(' + _TYPES + r')"')


def _out_of_range(items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Censoring from ``bg/out-of-range`` annotations: (direction, threshold mg/dL)."""
    direction = np.zeros(len(items), np.int8)
    threshold = np.full(len(items), np.nan)
    for i, notes in enumerate(get(items, "annotations")):
        if not isinstance(notes, list):
            continue
        for a in notes:
            if isinstance(a, dict) and a.get("code") == "bg/out-of-range":
                direction[i] = {"low": -1, "high": 1}.get(str(a.get("value")), 0)
                th, _ = numbers([a.get("threshold")])
                threshold[i] = th[0] if th[0] > 35 else th[0] * MG_DL_PER_MMOL_L
    return direction, threshold


class Tidepool(Format):
    """Tidepool JSON export: a list of device-data records.

    Read: ``cbg`` (CGM) and ``smbg`` (fingerstick), ``value`` in ``units`` (mmol/L, as
    Tidepool stores it, or mg/dL), censored by a ``bg/out-of-range`` annotation;
    ``bolus`` (``normal`` now, ``extended`` spread over ``duration`` [ms] in 5-min
    doses; sub-types normal, square, dual/square, automated); ``basal`` (``rate``
    [U/h] for ``duration`` [ms]; ``deliveryType`` scheduled, automated, temp, suspend
    = rate 0); ``food`` (``nutrition.carbohydrate.net`` [g]); ``wizard``
    (``carbInput`` [g]; its bolus is counted once: a linked id or an embedded copy of
    a listed bolus adds nothing, an embedded bolus found nowhere else is added);
    ``insulin`` (injections: ``dose.total``; long-acting formulations go to
    long-acting doses). Times: ``time`` (ISO UTC); the local offset is
    ``timezoneOffset`` [min].
    """

    name = "tidepool"

    def sniff(self, head: str) -> bool:
        """True for JSON whose records have a Tidepool ``type``."""
        return head.lstrip()[:1] in ("[", "{") and bool(_SNIFF.search(head))

    def parse(self, text: str, *, file: str) -> list[RawRecords]:
        """Parse a Tidepool export (see the class docstring)."""
        groups = json_records(text, file=file)
        items, lines = groups.get("data", groups.get("", ([], np.zeros(0, np.int64))))
        n = len(items)
        if n == 0:
            raise InputError(
                "no records",
                file=file,
                line=1,
                field="type",
                expected="a JSON list of Tidepool records",
            )
        lines = np.asarray(lines, dtype=np.int64)
        issues = RowIssues(file)
        kind = strings(get(items, "type")).to_numpy()
        issues.add(
            np.array([not isinstance(it, dict) for it in items]),
            lines,
            field="type",
            reason="unrecognised record",
            expected="a JSON object with a type",
        )
        ok = np.array([isinstance(it, dict) for it in items])
        used = np.isin(kind, ["cbg", "smbg", "bolus", "basal", "food", "wizard"])
        used |= kind == "insulin"
        t_text = strings(get(items, "time"))
        time, aware, _, wrong = parse_iso(t_text)
        if not aware:
            time = time.dt.tz_localize("UTC")
        need = used & ok
        ok &= ~issues.add(
            need & wrong, lines, field="time", reason="time without Z", expected="UTC"
        )
        ok_t = check_time(
            issues,
            time.where(need, pd.Timestamp("2000-01-01", tz="UTC")),
            lines,
            field="time",
            expected="an ISO 8601 UTC time such as 2024-03-05T06:30:00.000Z",
        )
        ok &= ok_t
        off, _ = numbers(get(items, "timezoneOffset"))
        num = {}
        for key, path, maximum in (
            ("value", ("value",), 1000.0),
            ("normal", ("normal",), 200.0),
            ("extended", ("extended",), 200.0),
            ("duration", ("duration",), 5 * 86_400_000.0),
            ("rate", ("rate",), 50.0),
            ("net", ("nutrition", "carbohydrate", "net"), 1000.0),
            ("carbInput", ("carbInput",), 1000.0),
            ("dose", ("dose", "total"), 200.0),
        ):
            v, bad = numbers(get(items, *path))
            ok &= ~issues.add(
                need & (bad | (v < 0) | (v > maximum)),
                lines,
                field=".".join(path),
                reason=f"bad {key}",
                expected=f"a number from 0 to {maximum:g}",
            )
            num[key] = v
        streams: dict[str, pd.DataFrame] = {}
        self._glucose(items, kind, num["value"], time, off, lines, ok, issues, streams)
        self._insulin(items, kind, num, time, off, lines, ok, streams)
        carbs = ok & (
            ((kind == "food") & (num["net"] > 0))
            | ((kind == "wizard") & (num["carbInput"] > 0))
        )
        grams = np.where(kind == "food", num["net"], num["carbInput"])
        streams["carbs"] = frame(
            time[carbs], lines[carbs], offset_min=off[carbs], grams=grams[carbs]
        )
        counts = {"rows_read": n, "ignored_other_records": int(np.sum(~used))}
        issues.finish(max(int(used.sum()), 1), counts)
        return [RawRecords(patient_id=None, aware=True, streams=streams, counts=counts)]

    @staticmethod
    def _glucose(
        items: list[Any],
        kind: np.ndarray,
        value: np.ndarray,
        time: pd.Series,
        off: np.ndarray,
        lines: np.ndarray,
        ok: np.ndarray,
        issues: RowIssues,
        streams: dict[str, pd.DataFrame],
    ) -> None:
        is_bg = np.isin(kind, ["cbg", "smbg"])
        units = strings(get(items, "units")).str.lower().to_numpy()
        mg = np.char.find(units.astype(str), "mg") >= 0
        glucose = value * np.where(mg, 1.0, MG_DL_PER_MMOL_L)
        ok &= ~issues.add(
            ok & is_bg & (np.isnan(glucose) | (glucose <= 0) | (glucose > 1000)),
            lines,
            field="value",
            reason="impossible glucose (<= 0 or > 1000 mg/dL)",
            expected=f"0 < glucose <= {MAX_GLUCOSE_MG_DL:g} mg/dL",
        )
        direction, threshold = _out_of_range(items)
        cens = direction != 0
        glucose = np.where(cens & np.isfinite(threshold), threshold, glucose)
        for k, name in (("cbg", "cgm"), ("smbg", "smbg")):
            s = ok & (kind == k)
            extra = {"censored": direction[s]} if k == "cbg" else {}
            streams[name] = frame(
                time[s], lines[s], offset_min=off[s], glucose_mg_dl=glucose[s], **extra
            )

    @staticmethod
    def _insulin(
        items: list[Any],
        kind: np.ndarray,
        num: dict[str, np.ndarray],
        time: pd.Series,
        off: np.ndarray,
        lines: np.ndarray,
        ok: np.ndarray,
        streams: dict[str, pd.DataFrame],
    ) -> None:
        # wizard records with an embedded bolus that is not listed on its own
        listed = {
            it.get("id") for it, k in zip(items, kind, strict=True) if k == "bolus"
        }
        listed.discard(None)
        extra_items, extra_rows = [], []
        for i in np.flatnonzero(ok & (kind == "wizard")):
            b = items[i].get("bolus")
            if isinstance(b, dict) and b.get("id", object()) not in listed:
                extra_items.append(dict(b, time=items[i].get("time")))
                extra_rows.append(lines[i])
        if extra_items:
            e_time, _, _, _ = parse_iso(strings(get(extra_items, "time")))
            e_normal, _ = numbers(get(extra_items, "normal"))
            e_ext, _ = numbers(get(extra_items, "extended"))
            e_dur, _ = numbers(get(extra_items, "duration"))
            e_ok = e_time.notna().to_numpy()
            e_time = e_time.dt.tz_convert("UTC") if e_time.dt.tz else e_time
        bolus = ok & (kind == "bolus")
        normal = bolus & (num["normal"] > 0)
        ext = bolus & (num["extended"] > 0)
        parts = [
            frame(time[normal], lines[normal], units=num["normal"][normal]),
            _spread3(time, num["extended"], num["duration"], lines, ext),
        ]
        if extra_items:
            rows = np.asarray(extra_rows, np.int64)
            k = e_ok & (e_normal > 0)
            parts.append(frame(e_time[k], rows[k], units=e_normal[k]))
            k = e_ok & (e_ext > 0)
            parts.append(_spread3(e_time, e_ext, e_dur, rows, k))
        dose = num["dose"]
        inj = ok & (kind == "insulin") & (dose > 0)
        acting = strings(get(items, "formulation", "simple", "actingType")).to_numpy()
        long = inj & np.isin(acting, ["long", "intermediate"])
        parts.append(
            frame(time[inj & ~long], lines[inj & ~long], units=dose[inj & ~long])
        )
        streams["boluses"] = pd.concat(parts, ignore_index=True)
        streams["long_acting"] = frame(time[long], lines[long], units=dose[long])
        basal = ok & (kind == "basal")
        delivery = strings(get(items, "deliveryType")).to_numpy()
        rate = np.where(delivery == "suspend", 0.0, num["rate"])
        streams["basal"] = frame(
            time[basal],
            lines[basal],
            offset_min=off[basal],
            rate_u_per_h=rate[basal],
            duration_min=num["duration"][basal] / 60_000.0,
            scheduled=(delivery == "scheduled")[basal],
        )


def _spread3(
    time: pd.Series,
    units: np.ndarray,
    duration_ms: np.ndarray,
    rows: np.ndarray,
    sel: np.ndarray,
) -> pd.DataFrame:
    t, u, r = spread(time[sel], units[sel], duration_ms[sel] / 60_000.0, rows[sel])
    return frame(t, r, units=u)
