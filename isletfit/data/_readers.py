"""`read` and `read_many`: files in, `PatientData` out; format detection."""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from .._errors import DataWarning, InputError
from ._assemble import assemble
from ._dexcom import DexcomClarity
from ._format import Format
from ._generic import GenericCSV
from ._libre import LibreView
from ._nightscout import Nightscout
from ._patient import PatientData
from ._raw import RawRecords
from ._text import HEAD_CHARS, read_text
from ._tidepool import Tidepool
from ._time import zone

PathLike = str | os.PathLike
_SUFFIXES = {".csv", ".json", ".txt", ".tsv"}
_ALIASES = {
    "auto": "auto",
    "csv": "generic",
    "dexcom": "dexcom_clarity",
    "clarity": "dexcom_clarity",
    "libre": "libreview",
    "freestyle_libre": "libreview",
}


def _detectors() -> tuple[Format, ...]:
    """The built-in formats in the order auto-detection tries them."""
    return (DexcomClarity(), LibreView(), Tidepool(), Nightscout(), GenericCSV())


def available_formats() -> tuple[str, ...]:
    """Names accepted by ``format=`` (besides ``'auto'``), in detection order.

    Returns:
        The built-in format names, e.g. ``('dexcom_clarity', 'libreview', ...)``.
    """
    return tuple(f.name for f in _detectors())


def _resolve(format: str | Format | None) -> Format | None:
    """A `Format` instance from an instance or a name; None for ``'auto'``/None."""
    if format is None:
        return None
    if isinstance(format, Format):
        return format
    if isinstance(format, type) and issubclass(format, Format):
        return format()
    key = str(format).strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key == "auto":
        return None
    for f in _detectors():
        if f.name == key:
            return f
    raise InputError(
        f"unknown format {format!r}",
        field="format",
        expected="'auto' or one of " + ", ".join(available_formats()),
    )


def _parse(path: PathLike, format: str | Format) -> tuple[Format, list[RawRecords]]:
    text = read_text(path)
    file = os.fspath(path)
    fmt = _resolve(format)
    if fmt is None:
        head = text[:HEAD_CHARS]
        fmt = next((f for f in _detectors() if f.sniff(head)), None)
        if fmt is None:
            raise InputError(
                "unknown format: the content matches none of "
                + ", ".join(available_formats()),
                file=file,
                line=1,
                expected="a generic CSV (time, glucose_mg_dl), a Dexcom Clarity or "
                "LibreView CSV export, or a Nightscout or Tidepool JSON file",
            )
    return fmt, fmt.parse(text, file=file)


def _recognised(path: Path, format: str | Format) -> bool:
    try:
        head = read_text(path)[:HEAD_CHARS]
    except InputError:
        return False
    fmt = _resolve(format)
    candidates = _detectors() if fmt is None else (fmt, *_detectors())
    return any(f.sniff(head) for f in candidates)


def _paths(
    path_or_paths: PathLike | Sequence[PathLike], format: str | Format
) -> list[PathLike]:
    """Files to read; a directory stands for its CSV/JSON files of a known format.

    Files in a directory that no format recognises are skipped with a `DataWarning`.
    """
    if isinstance(path_or_paths, str | os.PathLike):
        items: list[PathLike] = [path_or_paths]
    else:
        items = list(path_or_paths)
    out: list[PathLike] = []
    skipped: list[str] = []
    for p in items:
        if Path(p).is_dir():
            for q in sorted(Path(p).iterdir()):
                if not q.is_file() or q.suffix.lower() not in _SUFFIXES:
                    continue
                if _recognised(q, format):
                    out.append(q)
                else:
                    skipped.append(q.name)
        else:
            out.append(p)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) of no known format in a directory: "
            + ", ".join(skipped[:10]),
            DataWarning,
            stacklevel=3,
        )
    if not out:
        raise InputError(
            "no files to read", file=str(path_or_paths), expected="CSV or JSON files"
        )
    return out


def _stem(path: PathLike) -> str:
    return Path(path).stem


def read(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    format: str | Format = "auto",
    tz: str | dt.tzinfo | None = None,
) -> PatientData:
    """Read one patient's CGM record (and treatments) from one or more files.

    Several files (of any formats) are merged into one record; a directory stands for
    the CSV/JSON files in it that a format recognises (others, such as a
    ``patients.csv`` kept beside the data, are skipped with a `DataWarning`). The
    patient id is the file's ``patient_id`` column, else the first file's name
    without its extension.

    Times. Timestamps with a UTC offset (or ``Z``, or epoch numbers) are instants.
    Naive timestamps are local wall-clock time: with ``tz=None`` they stay naive
    (every day 1440 min; a daylight-saving change is not seen); with a `tz` they are
    localised there with this rule for daylight-saving changes:

    * the repeated hour in autumn (e.g. 02:00-03:00 twice in Europe/Berlin) is
      resolved by row order: rows are taken in file order (newest-first files in
      reverse), and within the repeated hour the first pass is daylight time and,
      from the first row whose wall time goes backwards, the second pass is standard
      time;
    * a nonexistent time in the hour skipped in spring (02:30 in Europe/Berlin) is
      shifted forward by the gap (to 03:30), as a device clock not yet changed.

    ``time_min`` counts elapsed minutes since `PatientData.reference_time`, the local
    midnight before the first CGM reading (in `tz`, else in the first reading's own
    UTC offset).

    Bad rows: a few (at most half the rows of a file) are skipped with a
    `DataWarning` that counts them by reason and lists their first lines; more raise
    an `InputError`. Exact duplicates are dropped with a `DataWarning`. Input files
    are only read.

    Args:
        path_or_paths: A file, a directory, or a list of them, of one patient.
        format: ``'auto'`` (detect from the content), a format name
            (`available_formats`) or a `Format` instance.
        tz: The patient's IANA time zone (``'Europe/Berlin'``) to interpret naive
            local timestamps and to show all times in.

    Returns:
        The patient's `PatientData`.

    Raises:
        InputError: A missing, empty, truncated or unrecognised file, missing
            columns, too many bad rows, no CGM readings, or files that hold several
            patients (use `read_many`); the error names file, line and field.
    """
    zone_ = zone(tz)
    paths = _paths(path_or_paths, format)
    parts: list[tuple[RawRecords, int]] = []
    names: list[str] = []
    for i, p in enumerate(paths):
        fmt, records = _parse(p, format)
        names.append(fmt.name)
        ids = {r.patient_id for r in records if r.patient_id is not None}
        if len(ids) > 1:
            raise InputError(
                f"holds {len(ids)} patients ({', '.join(sorted(ids)[:5])}); "
                "read() reads one patient: use read_many()",
                file=os.fspath(p),
                field="patient_id",
                expected="one patient id",
            )
        parts.extend((r, i) for r in records)
    ids = [r.patient_id for r, _ in parts if r.patient_id is not None]
    patient_id = ids[0] if ids else _stem(paths[0])
    return assemble(
        parts,
        patient_id=patient_id,
        sources=tuple(os.fspath(p) for p in paths),
        format_name="+".join(dict.fromkeys(names)),
        tz=zone_,
    )


def read_many(
    paths: PathLike | Sequence[PathLike],
    *,
    format: str | Format = "auto",
    tz: str | dt.tzinfo | None = None,
) -> list[PatientData]:
    """Read several patients: one per file, or one per id of a ``patient_id`` column.

    Files that give the same patient id (a ``patient_id`` value, else the file name
    without its extension) are merged into one record, as `read` merges them.

    Args:
        paths: Files or directories (a directory stands for its CSV/JSON files).
        format: ``'auto'``, a format name or a `Format` instance (for every file).
        tz: The patients' IANA time zone for naive local timestamps (see `read`).

    Returns:
        One `PatientData` per patient, in order of first appearance.

    Raises:
        InputError: As `read`, for the first file that cannot be read.
    """
    zone_ = zone(tz)
    files = _paths(paths, format)
    by_id: dict[str, list[tuple[RawRecords, int]]] = {}
    names: dict[str, list[str]] = {}
    for i, p in enumerate(files):
        fmt, records = _parse(p, format)
        for r in records:
            pid = r.patient_id if r.patient_id is not None else _stem(p)
            by_id.setdefault(pid, []).append((r, i))
            names.setdefault(pid, []).append(fmt.name)
    out = []
    for pid, parts in by_id.items():
        used = sorted({i for _, i in parts})
        remap = {i: k for k, i in enumerate(used)}
        out.append(
            assemble(
                [(r, remap[i]) for r, i in parts],
                patient_id=pid,
                sources=tuple(os.fspath(files[i]) for i in used),
                format_name="+".join(dict.fromkeys(names[pid])),
                tz=zone_,
            )
        )
    return out
