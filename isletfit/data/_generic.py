"""The generic CSV layout of DESIGN.md ("Data contracts")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import InputError
from ._format import Format
from ._raw import (
    MG_DL_PER_MMOL_L,
    RawRecords,
    RowIssues,
    check_amount,
    check_glucose,
    check_time,
    frame,
)
from ._text import detect_separator, read_table
from ._time import parse_iso

_TIME_EXPECTED = "an ISO 8601 time such as 2024-03-05T07:30:00 or ...+01:00"


def _header_index(text: str) -> int:
    for i, line in enumerate(text.split("\n", 50)[:50]):
        if line.strip():
            return i
    return 0


class GenericCSV(Format):
    """Generic CSV: one row per time; one patient per file or a `patient_id` column.

    Columns (names case-insensitive; separator ``,``, ``;`` or tab; decimal commas
    accepted): ``time`` (ISO 8601, an offset such as ``+01:00`` or ``Z`` allowed),
    ``glucose_mg_dl`` or ``glucose_mmol_l``, and optionally ``carbs_g`` [g],
    ``bolus_u`` [U], ``basal_u_per_h`` [U/h] (rate from that time on) and
    ``patient_id``. A glucose cell may be ``Low``/``High`` (censored at the limits
    below) or ``<N``/``>N`` (censored at N, in the file's unit).

    Args:
        low_mg_dl: Value given to ``Low`` readings [mg/dL].
        high_mg_dl: Value given to ``High`` readings [mg/dL].
    """

    name = "generic"

    def __init__(self, *, low_mg_dl: float = 40.0, high_mg_dl: float = 400.0):
        self.low_mg_dl = float(low_mg_dl)
        self.high_mg_dl = float(high_mg_dl)

    def sniff(self, head: str) -> bool:
        """True when the first non-blank line has `time` and a glucose column."""
        lines = [ln for ln in head.split("\n", 50)[:50] if ln.strip()]
        if not lines:
            return False
        sep = detect_separator(lines[0])
        names = {n.strip().strip('"').lower() for n in lines[0].split(sep)}
        return "time" in names and bool(names & {"glucose_mg_dl", "glucose_mmol_l"})

    def parse(self, text: str, *, file: str) -> list[RawRecords]:
        """Parse a generic CSV file (see the class docstring)."""
        table = read_table(text, file=file, header_index=_header_index(text))
        cols = {h.lower(): h for h in table.header}
        hl = table.header_line
        if "time" not in cols:
            raise InputError(
                "no 'time' column",
                file=file,
                line=hl,
                field="time",
                expected="a header with time and glucose_mg_dl (or glucose_mmol_l)",
            )
        if "glucose_mg_dl" in cols:
            gcol, unit, factor = cols["glucose_mg_dl"], "mg/dL", 1.0
        elif "glucose_mmol_l" in cols:
            gcol, unit, factor = cols["glucose_mmol_l"], "mmol/L", MG_DL_PER_MMOL_L
        else:
            raise InputError(
                "no glucose column",
                file=file,
                line=hl,
                field="glucose_mg_dl",
                expected="a glucose_mg_dl or glucose_mmol_l column",
            )
        n = len(table.data)
        if n == 0:
            raise InputError(
                "no data rows after the header",
                file=file,
                line=hl + 1,
                expected="rows of time and glucose",
            )
        line = table.line
        issues = RowIssues(file)
        bad = issues.add(
            table.nfields != len(table.header),
            line,
            field=table.header[-1],
            reason="wrong number of fields",
            expected=f"{len(table.header)} fields",
        )
        times, aware, offsets, wrong = parse_iso(table.column(cols["time"]))
        bad |= issues.add(
            wrong,
            line,
            field=cols["time"],
            reason="time without UTC offset" if aware else "time with a UTC offset",
            expected="the same style of timestamp on every row",
        )
        bad |= ~check_time(
            issues, times, line, field=cols["time"], expected=_TIME_EXPECTED
        )
        glucose, censored, has_glucose = check_glucose(
            issues,
            table.column(gcol),
            line,
            field=gcol,
            unit=unit,
            factor=factor,
            low=self.low_mg_dl,
            high=self.high_mg_dl,
            required=False,
        )
        bad |= ~has_glucose & (table.column(gcol) != "").to_numpy()
        amounts = {}
        for key, what, maximum in (
            ("carbs_g", "carbohydrate", 1000.0),
            ("bolus_u", "bolus", 100.0),
            ("basal_u_per_h", "basal rate", 50.0),
        ):
            if key in cols:
                v, present = check_amount(
                    issues,
                    table.column(cols[key]),
                    line,
                    field=cols[key],
                    what=what,
                    maximum=maximum,
                )
                bad |= (table.column(cols[key]) != "").to_numpy() & ~present
                amounts[key] = (v, present)
        if "patient_id" in cols:
            pid = table.column(cols["patient_id"]).to_numpy(dtype=object)
            bad |= issues.add(
                pid == "",
                line,
                field=cols["patient_id"],
                reason="missing patient_id",
                expected="a patient id",
            )
        else:
            pid = np.full(n, None, dtype=object)
        counts = {"rows_read": n}
        issues.finish(n, counts)
        good = ~bad
        ids = [p for p in pd.unique(pid[good])] if good.any() else [None]
        out = []
        for p in ids:
            sel = good & (pid == p) if p is not None else good
            k = sel & has_glucose
            streams = {
                "cgm": frame(
                    times[k],
                    line[k],
                    offset_min=offsets[k],
                    glucose_mg_dl=glucose[k],
                    censored=censored[k],
                )
            }
            for key, stream, col in (
                ("carbs_g", "carbs", "grams"),
                ("bolus_u", "boluses", "units"),
            ):
                if key in amounts:
                    v, present = amounts[key]
                    k = sel & present & (v > 0)
                    streams[stream] = frame(
                        times[k], line[k], offset_min=offsets[k], **{col: v[k]}
                    )
            if "basal_u_per_h" in amounts:
                v, present = amounts["basal_u_per_h"]
                k = sel & present
                streams["basal"] = frame(
                    times[k],
                    line[k],
                    offset_min=offsets[k],
                    rate_u_per_h=v[k],
                    duration_min=np.nan,
                    scheduled=True,
                )
            c = dict(counts)
            if p is not None and len(ids) > 1:
                c["rows_read"] = int(np.sum(pid == p))
            out.append(
                RawRecords(
                    patient_id=None if p is None else str(p),
                    aware=aware,
                    streams=streams,
                    counts=c,
                )
            )
        return out
