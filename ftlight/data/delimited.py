"""CSV and TSV rows as records, with the row and line of whatever is wrong in them."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ftlight.errors import DataError


def raise_field_size_limit() -> None:
    """Let csv read fields of any length."""
    # csv's 128 KiB default rejects long documents; sys.maxsize overflows a C long on Windows.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def parse_delimited(handle: IO[str], path: Path, delimiter: str) -> list[dict[str, Any]]:
    """The rows of a CSV/TSV ``handle`` (header first) as records; a repeated column, a row of
    another width, a stray quote that swallows rows and malformed quoting are ``DataError``s
    naming the row and line."""
    lines: list[str] = []  # the physical lines of the row being read
    reader = csv.reader(_recording(handle, lines), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return []
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise DataError(
                f"{path}: the header repeats column(s) {duplicates}; give every column a "
                "unique name."
            )
        records = []
        while True:
            lines.clear()
            row = next(reader, None)
            if row is None:
                break
            if not row:
                continue
            row_number = len(records) + 1
            if len(lines) > 1 and _each_a_row(lines, delimiter, len(header)):
                raise _stray_quote_error(path, row_number, reader.line_num - len(lines) + 1, lines)
            if len(row) != len(header):
                raise DataError(
                    f"{path} row {row_number} (line {reader.line_num}): has {len(row)} "
                    f"values but the header has {len(header)} columns {header}. Quote fields "
                    'that contain the delimiter, newlines or quotes ("a, b"; a quote inside '
                    'a quoted field is written "").'
                )
            records.append(dict(zip(header, row, strict=True)))
    except csv.Error as err:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(
            f"{path} line {reader.line_num}: malformed {kind} ({err}). "
            "Check the quoting around that line."
        ) from err
    return records


def _recording(handle: IO[str], lines: list[str]) -> Iterator[str]:
    """The lines of ``handle``, each also appended to ``lines`` as csv reads it."""
    for line in handle:
        lines.append(line)
        yield line


def _each_a_row(lines: list[str], delimiter: str, columns: int) -> bool:
    """Whether every one of ``lines``, read without quote handling, is a whole row by itself."""
    return all(len(line.rstrip("\r\n").split(delimiter)) == columns for line in lines)


def _stray_quote_error(path: Path, row: int, line: int, lines: list[str]) -> DataError:
    # A quote opening a field makes csv read on to the next quote, however many lines away;
    # an unquoted export with one literal quote would silently merge rows into one text.
    kind = "TSV" if path.name.lower().removesuffix(".gz").endswith(".tsv") else "CSV"
    first = lines[0].rstrip("\r\n")
    shown = first if len(first) <= 80 else first[:77] + "..."
    return DataError(
        f'{path} row {row} (line {line}): a field starts with a quote (") that is not closed on '
        f"that line, so the {kind} reader ran on over {len(lines)} lines ({line} to "
        f"{line + len(lines) - 1}) that each look like a row of their own: {shown!r}. If the "
        'quote is part of the text, quote the whole field and double the quote ("""...") or '
        "remove it; if the field really spans several lines, close its quote."
    )
