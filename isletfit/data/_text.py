"""Files as text: encodings, separators, CSV tables, JSON with line numbers."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError

#: Characters of a file that a format's `sniff` sees.
HEAD_CHARS = 65536
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def read_text(path: str | os.PathLike) -> str:
    """The file's text, BOM removed and newlines normalised to LF.

    UTF-8, else UTF-16/32 when a BOM says so, else cp1252, else latin-1. The file is
    only read, never written.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", file=path, expected="an existing file")
    if p.is_dir():
        raise InputError("is a directory", file=path, expected="a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", file=path) from None
    text = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError:
                raise InputError(
                    f"starts with a {encoding} byte-order mark but is not {encoding}",
                    file=path,
                    line=1,
                ) from None
            break
    if text is None:
        for encoding in ("utf-8", "cp1252", "latin-1"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
    assert text is not None  # latin-1 decodes anything
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError(
            "file is empty", file=path, line=1, expected="a header and data rows"
        )
    return text


def detect_separator(line: str) -> str:
    """The most frequent of ``,`` ``;`` and tab outside quotes in a header line."""
    unquoted = re.sub(r'"[^"]*"', "", line)
    counts = {sep: unquoted.count(sep) for sep in (",", ";", "\t")}
    return max(counts, key=lambda s: (counts[s], s == ","))


@dataclasses.dataclass
class Table:
    """A CSV table as strings, with the file's line number of every data row.

    Attributes:
        header: Column names as in the file (stripped).
        header_line: 1-based line number of the header.
        data: One str column per header name (missing fields are ``''``).
        line: 1-based line number of each data row.
        nfields: Number of fields in each data row.
    """

    header: list[str]
    header_line: int
    data: pd.DataFrame
    line: np.ndarray
    nfields: np.ndarray

    def column(self, name: str) -> pd.Series:
        """A column's values, stripped (``''`` where the row had no such field)."""
        return self.data[name].str.strip()


def read_table(
    text: str,
    *,
    file: str,
    header_index: int,
    min_fields: int | None = None,
    sep: str | None = None,
) -> Table:
    """Parse ``text`` as a CSV table whose header is line ``header_index`` (0-based).

    Blank rows are dropped. A last row that is cut short (the file does not end with a
    newline and the row has fewer than `min_fields` fields, default: the header's
    count) raises an `InputError` naming the line and the cut field.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
        ends_with_newline = True
    else:
        ends_with_newline = False
    header_text = lines[header_index]
    sep = sep or detect_separator(header_text)
    body = lines[header_index + 1 :]
    try:
        header = [h.strip() for h in next(csv.reader([header_text], delimiter=sep))]
        rows = list(csv.reader(body, delimiter=sep, strict=False))
        if len(rows) == len(body):
            line = np.arange(len(rows), dtype=np.int64) + header_index + 2
        else:  # quoted fields span lines: recover the line numbers row by row
            reader = csv.reader(io.StringIO("\n".join(body)), delimiter=sep)
            rows, starts, previous = [], [], 0
            for r in reader:
                rows.append(r)
                starts.append(previous)
                previous = reader.line_num
            line = np.asarray(starts, dtype=np.int64) + header_index + 2
    except (csv.Error, StopIteration) as exc:
        raise InputError(
            f"not a readable CSV table ({exc})",
            file=file,
            line=header_index + 1,
            expected="comma-, semicolon- or tab-separated rows",
        ) from None
    nfields = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = max(len(header), int(nfields.max()) if len(rows) else 0)
    names = list(header) + [f"_extra_{k}" for k in range(len(header), width)]
    names = _unique(names)
    if rows:
        columns = list(itertools.zip_longest(*rows, fillvalue=""))
        columns += [("",) * len(rows)] * (width - len(columns))
        data = pd.DataFrame(
            {n: pd.Series(c, dtype=str) for n, c in zip(names, columns, strict=True)}
        )
    else:
        data = pd.DataFrame({n: pd.Series([], dtype=str) for n in names})
    keep = nfields > 0
    if keep.any():
        blank = ~data.ne("").any(axis=1).to_numpy() & (nfields <= width)
        keep &= ~blank
    min_fields = len(header) if min_fields is None else min_fields
    if not ends_with_newline and len(rows) and keep[-1] and nfields[-1] < min_fields:
        k = int(nfields[-1])
        raise InputError(
            f"the file ends in the middle of a row (truncated?): {k} of "
            f"{len(header)} fields",
            file=file,
            line=int(line[-1]),
            field=header[max(k - 1, 0)] if header else None,
            expected=f"{min_fields} or more fields",
        )
    data = data[keep].reset_index(drop=True)
    return Table(
        header=names[: len(header)],
        header_line=header_index + 1,
        data=data,
        line=line[keep],
        nfields=nfields[keep],
    )


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}.{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def first_lines(text: str, n: int = 20) -> list[str]:
    """The first `n` lines of the text."""
    return text.split("\n", n)[:n]


# ---------------------------------------------------------------------------- JSON


class _Scanner:
    """Walks a JSON document's top level and records where each array element starts."""

    _ws = re.compile(r"[ \t\n\r]*")

    def __init__(self, text: str, file: str):
        self.text = text
        self.file = file
        self.decoder = json.JSONDecoder()

    def error(self, message: str, pos: int) -> InputError:
        line = self.text.count("\n", 0, pos) + 1
        return InputError(
            f"not valid JSON: {message}", file=self.file, line=line, expected="JSON"
        )

    def skip(self, pos: int) -> int:
        return self._ws.match(self.text, pos).end()  # type: ignore[union-attr]

    def value(self, pos: int) -> tuple[Any, int]:
        try:
            return self.decoder.raw_decode(self.text, pos)
        except json.JSONDecodeError as exc:
            raise self.error(exc.msg, exc.pos) from None
        except RecursionError:
            raise self.error("nested too deeply", pos) from None

    def array(self, pos: int) -> tuple[list[Any], list[int], int]:
        """Elements and their start offsets of the array at `pos` (a ``[``)."""
        items, starts = [], []
        pos = self.skip(pos + 1)
        if self.text.startswith("]", pos):
            return items, starts, pos + 1
        while True:
            starts.append(pos)
            item, pos = self.value(pos)
            items.append(item)
            pos = self.skip(pos)
            if self.text.startswith(",", pos):
                pos = self.skip(pos + 1)
            elif self.text.startswith("]", pos):
                return items, starts, pos + 1
            else:
                raise self.error("expected ',' or ']'", pos)


def json_records(text: str, *, file: str) -> dict[str, tuple[list[Any], np.ndarray]]:
    """Records of a JSON file with the 1-based line where each starts.

    A top-level array gives ``{"": (records, lines)}``; a top-level object gives one
    entry per key whose value is an array (and ``{"": ([obj], [1])}`` when none is).
    """
    sc = _Scanner(text, file)
    pos = sc.skip(0)
    out: dict[str, tuple[list[Any], list[int]]] = {}
    if text.startswith("[", pos):
        items, starts, pos = sc.array(pos)
        out[""] = (items, starts)
    elif text.startswith("{", pos):
        start = pos
        pos = sc.skip(pos + 1)
        while not text.startswith("}", pos):
            key, pos = sc.value(pos)
            if not isinstance(key, str):
                raise sc.error("expected a key", pos)
            pos = sc.skip(pos)
            if not text.startswith(":", pos):
                raise sc.error("expected ':'", pos)
            pos = sc.skip(pos + 1)
            if text.startswith("[", pos):
                items, starts, pos = sc.array(pos)
                out[key] = (items, starts)
            else:
                _, pos = sc.value(pos)
            pos = sc.skip(pos)
            if text.startswith(",", pos):
                pos = sc.skip(pos + 1)
            elif not text.startswith("}", pos):
                raise sc.error("expected ',' or '}'", pos)
        pos += 1
        if not out:
            obj, _ = sc.value(start)
            out[""] = ([obj], [start])
    else:
        raise sc.error("expected '[' or '{'", pos)
    if sc.skip(pos) != len(text):
        raise sc.error("extra data after the end", sc.skip(pos))
    newlines = np.flatnonzero(
        np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == 10
    )
    return {
        k: (items, np.searchsorted(newlines, np.asarray(s, dtype=np.int64)) + 1)
        for k, (items, s) in out.items()
    }
