"""Nightscout JSON: ``entries`` (CGM) and ``treatments`` (insulin, carbs, basal)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError
from ._format import Format
from ._jsonfmt import get, numbers, spread, strings
from ._raw import MAX_GLUCOSE_MG_DL, MG_DL_PER_MMOL_L, RawRecords, RowIssues, frame
from ._raw import check_time as _check_time
from ._text import json_records
from ._time import from_epoch_ms, parse_iso

_KEYS = re.compile(r'"(sgv|eventType|entries|treatments)"\s*:')
_ISO = "an ISO 8601 time or milliseconds since 1970"


def _when(
    items: list[Any], keys: tuple[str, ...]
) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """UTC times from the first usable of `keys` (numbers = ms epoch, strings = ISO).

    Returns ``(time, offset_min_from_string, key_used_index)``.
    """
    n = len(items)
    time = pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]")
    offset = np.full(n, np.nan)
    used = np.full(n, -1)
    for j, key in enumerate(keys):
        todo = time.isna().to_numpy()
        if not todo.any():
            break
        values = get(items, key)
        num, _ = numbers([v if not isinstance(v, str) else None for v in values])
        t_num = from_epoch_ms(num)
        text = strings(values)
        has_text = (text != "").to_numpy()
        t_iso, aware, off, _ = parse_iso(text)
        if not aware:  # naive ISO: Nightscout means UTC
            t_iso = t_iso.dt.tz_localize("UTC")
            off = np.full(n, np.nan)
        t = t_num.where(t_num.notna(), t_iso)
        take = todo & t.notna().to_numpy()
        time[take] = t[take]
        offset[take & has_text] = off[take & has_text]
        used[take] = j
    return time, offset, used


class Nightscout(Format):
    """Nightscout JSON: entries and treatments, as the API or a site export gives them.

    Accepts a list of entries (``{"type": "sgv", "sgv": 132, "date": <ms since 1970>,
    "dateString": ..., "direction": ...}``), a list of treatments (``{"eventType":
    ..., "created_at": ..., "insulin": ..., "carbs": ...}``), a mixed list, or an
    object ``{"entries": [...], "treatments": [...]}``. ``sgv`` is mg/dL; 39 means
    below range (censored at 40); 0-38 are sensor status codes (ignored). ``mbg``
    entries and ``BG Check`` treatments are fingersticks. Any treatment's
    ``insulin`` is a bolus (a ``Combo Bolus``'s extended part, ``enteredinsulin`` -
    ``insulin``, is spread over its ``duration``), its ``carbs`` are carbs; ``Temp
    Basal`` gives ``absolute`` (else ``rate``) [U/h] for ``duration`` [min] (a percent
    temp basal has an unknown rate). Times: ``date``/``mills`` (ms) or ``dateString``/
    ``created_at`` (ISO); the local offset is ``utcOffset`` [min] or that of the
    ISO string.
    """

    name = "nightscout"

    def sniff(self, head: str) -> bool:
        """True for JSON that has Nightscout's ``sgv``/``eventType`` keys."""
        s = head.lstrip()
        return s[:1] in ("[", "{") and bool(_KEYS.search(head))

    def parse(self, text: str, *, file: str) -> list[RawRecords]:
        """Parse a Nightscout JSON file (see the class docstring)."""
        groups = json_records(text, file=file)
        entries: list[Any] = []
        e_line: list[int] = []
        treats: list[Any] = []
        t_line: list[int] = []
        other: list[int] = []
        ignored = 0
        for key, (items, lines) in groups.items():
            if key not in ("", "entries", "treatments", "sgvs"):
                ignored += len(items)
                continue
            for it, ln in zip(items, lines, strict=True):
                if isinstance(it, dict) and ("eventType" in it):
                    treats.append(it)
                    t_line.append(ln)
                elif isinstance(it, dict) and ("sgv" in it or "mbg" in it):
                    entries.append(it)
                    e_line.append(ln)
                elif isinstance(it, dict) and key == "" and "type" in it:
                    ignored += 1
                else:
                    other.append(int(ln))
        n = len(entries) + len(treats) + len(other)
        if not entries and not treats:
            raise InputError(
                "no Nightscout entries or treatments",
                file=file,
                line=int(other[0]) if other else 1,
                field="sgv",
                expected="entries with sgv and date, or treatments with eventType",
            )
        issues = RowIssues(file)
        issues.add(
            np.ones(len(other), bool),
            np.asarray(other, dtype=np.int64),
            field="(record)",
            reason="unrecognised record",
            expected="an entry (sgv, date) or a treatment (eventType, created_at)",
        )
        streams: dict[str, pd.DataFrame] = {}
        self._entries(entries, np.asarray(e_line, np.int64), issues, streams)
        self._treatments(treats, np.asarray(t_line, np.int64), issues, streams)
        counts = {"rows_read": n, "ignored_other_records": ignored}
        issues.finish(n, counts)
        return [RawRecords(patient_id=None, aware=True, streams=streams, counts=counts)]

    def _entries(
        self,
        items: list[Any],
        line: np.ndarray,
        issues: RowIssues,
        streams: dict[str, pd.DataFrame],
    ) -> None:
        if not items:
            return
        time, off, _ = _when(items, ("date", "dateString", "sysTime"))
        utc_off, _ = numbers(get(items, "utcOffset"))
        off = np.where(np.isfinite(utc_off), utc_off, off)
        ok = _check_time(issues, time, line, field="date", expected=_ISO)
        kind = strings(get(items, "type")).str.lower().to_numpy()
        sgv, bad_sgv = numbers(get(items, "sgv"))
        mbg, bad_mbg = numbers(get(items, "mbg"))
        is_sgv = ~np.isnan(sgv) | bad_sgv
        is_mbg = ~is_sgv & (~np.isnan(mbg) | bad_mbg)
        is_mbg |= kind == "mbg"
        value = np.where(is_mbg, mbg, sgv)
        bad_value = np.where(is_mbg, bad_mbg, bad_sgv)
        ok &= ~issues.add(
            bad_value | np.isnan(value),
            line,
            field="sgv",
            reason="unparseable glucose",
            expected="a glucose value in mg/dL",
        )
        ok &= ~issues.add(
            ok & ((value < 0) | (value > MAX_GLUCOSE_MG_DL) | (is_mbg & (value == 0))),
            line,
            field="sgv",
            reason="impossible glucose (< 0 or > 1000 mg/dL)",
            expected="0 < glucose <= 1000 mg/dL",
        )
        status = is_sgv & (value < 39)
        cgm = ok & is_sgv & ~status
        censored = np.where(value == 39, -1, 0).astype(np.int8)
        glucose = np.where(value == 39, 40.0, value)
        streams["cgm"] = frame(
            time[cgm],
            line[cgm],
            offset_min=off[cgm],
            glucose_mg_dl=glucose[cgm],
            censored=censored[cgm],
        )
        m = ok & is_mbg
        streams["smbg"] = frame(
            time[m], line[m], offset_min=off[m], glucose_mg_dl=value[m]
        )

    def _treatments(
        self,
        items: list[Any],
        line: np.ndarray,
        issues: RowIssues,
        streams: dict[str, pd.DataFrame],
    ) -> None:
        if not items:
            return
        time, off, _ = _when(items, ("created_at", "timestamp", "mills", "date"))
        utc_off, _ = numbers(get(items, "utcOffset"))
        off = np.where(np.isfinite(utc_off), utc_off, off)
        ok = _check_time(issues, time, line, field="created_at", expected=_ISO)
        event = strings(get(items, "eventType")).str.lower().to_numpy()
        vals = {}
        for key, maximum in (
            ("insulin", 200.0),
            ("carbs", 1000.0),
            ("absolute", 50.0),
            ("rate", 50.0),
            ("duration", 7 * 1440.0),
            ("enteredinsulin", 200.0),
            ("glucose", 1000.0),
        ):
            v, bad = numbers(get(items, key))
            ok &= ~issues.add(
                bad | (v < 0) | (v > maximum),
                line,
                field=key,
                reason=f"bad {key}",
                expected=f"a number from 0 to {maximum:g}",
            )
            vals[key] = v
        temp = event == "temp basal"
        ins = vals["insulin"]
        b = ok & ~temp & (ins > 0)
        entered = vals["enteredinsulin"]
        combo = ok & (event == "combo bolus") & (entered > np.nan_to_num(ins))
        combo &= vals["duration"] > 0
        ext_t, ext_u, ext_r = spread(
            time[combo],
            (entered - np.nan_to_num(ins))[combo],
            vals["duration"][combo],
            line[combo],
        )
        streams["boluses"] = pd.concat(
            [
                frame(time[b], line[b], offset_min=off[b], units=ins[b]),
                frame(ext_t, ext_r, units=ext_u),
            ],
            ignore_index=True,
        )
        c = ok & (vals["carbs"] > 0)
        streams["carbs"] = frame(
            time[c], line[c], offset_min=off[c], grams=vals["carbs"][c]
        )
        rate = np.where(np.isnan(vals["absolute"]), vals["rate"], vals["absolute"])
        t = ok & temp
        streams["basal"] = frame(
            time[t],
            line[t],
            offset_min=off[t],
            rate_u_per_h=rate[t],
            duration_min=vals["duration"][t],
            scheduled=False,
        )
        units = strings(get(items, "units")).str.lower().to_numpy()
        g = vals["glucose"] * np.where(
            np.char.find(units.astype(str), "mmol") >= 0, MG_DL_PER_MMOL_L, 1.0
        )
        s = ok & (event == "bg check") & (g > 0)
        smbg = frame(time[s], line[s], offset_min=off[s], glucose_mg_dl=g[s])
        streams["smbg"] = pd.concat(
            [x for x in (streams.get("smbg"), smbg) if x is not None],
            ignore_index=True,
        )
