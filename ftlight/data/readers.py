"""Read a data file (jsonl, json, csv, tsv, parquet; optionally gzipped) into a list of records."""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ftlight.data.delimited import parse_delimited, raise_field_size_limit
from ftlight.errors import DataError

SUPPORTED_EXTENSIONS = (
    ".jsonl",
    ".json",
    ".csv",
    ".tsv",
    ".parquet",
    ".jsonl.gz",
    ".json.gz",
    ".csv.gz",
    ".tsv.gz",
)
"""File name endings `read_records` understands, longest match wins."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read every row of a data file as a dict; the reader is chosen by the file extension."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data file '{path}' does not exist. Check the path (relative paths are resolved "
            f"from '{Path.cwd()}')."
        )
    if not path.is_file():
        raise DataError(f"data path '{path}' is not a file; point it at a {_supported()} file.")
    extension = _extension(path)
    reader = _READERS.get(extension)
    if reader is None:
        raise DataError(
            f"data file '{path}' has an unsupported extension; supported: {_supported()}. "
            "Convert the file or rename it to the matching extension."
        )
    try:
        records = reader(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"data file '{path}' is not UTF-8 text ({err.reason} at byte {err.start}); "
            "re-save it as UTF-8."
        ) from err
    except (OSError, EOFError, zlib.error) as err:
        fix = ""
        if path.name.lower().endswith(".gz"):
            fix = " The compressed file is cut short or damaged: copy or compress it again."
        raise DataError(f"data file '{path}' cannot be read: {err}.{fix}") from err
    if not records:
        raise DataError(f"data file '{path}' has no rows; add data or fix the path.")
    return records


def _supported() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS)


def _extension(path: Path) -> str:
    name = path.name.lower()
    matches = [ext for ext in SUPPORTED_EXTENSIONS if name.endswith(ext)]
    return max(matches, key=len) if matches else path.suffix.lower()


def _open_text(path: Path, encoding: str = "utf-8", newline: str | None = None) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, newline=newline)
    return open(path, encoding=encoding, newline=newline)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with _open_text(path, encoding="utf-8-sig") as handle:
        return list(_iter_jsonl(handle, path))


def _iter_jsonl(lines: Iterator[str] | IO[str], path: Path) -> Iterator[dict[str, Any]]:
    decoder = _KeyCheckingDecoder()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record, duplicate = decoder.decode(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {line_number}: not valid JSON ({err.msg} at column {err.colno}). "
                "Each line of a .jsonl file must hold one complete JSON object; fix or delete "
                "that line."
            ) from err
        if not isinstance(record, dict):
            raise DataError(
                f"{path} line {line_number}: is {_kind(record)}, expected a JSON object such as "
                '{"instruction": "...", "output": "..."}.'
            )
        if duplicate is not None:
            raise _duplicate_error(f"{path} line {line_number}", duplicate)
        yield record


def _read_json(path: Path) -> list[dict[str, Any]]:
    with _open_text(path, encoding="utf-8-sig") as handle:
        text = handle.read()
    if not text.strip():
        return []
    try:
        data, duplicate = _KeyCheckingDecoder().decode(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":
            # Many ".json" files are really JSON Lines; read them as such rather than fail.
            return list(_iter_jsonl(iter(text.splitlines()), path))
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). "
            "Fix the file, or save it as .jsonl with one object per line."
        ) from err
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if _is_list_of_objects(value)]
        if len(lists) != 1:
            found = f"{len(lists)} ({', '.join(lists)})" if lists else "none"
            raise DataError(
                f"{path}: the top-level object must hold exactly one list of row objects, "
                f'such as {{"data": [...]}}; found {found} among keys {sorted(data)}. '
                "Save the rows as a top-level JSON list instead."
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: top level is {_kind(data)}, expected a list of objects "
            '([{"...": "..."}, ...]) or an object holding one such list.'
        )
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path} row {number}: is {_kind(record)}, expected a JSON object.")
        if duplicate is not None and _holds(record, duplicate):
            raise _duplicate_error(f"{path} row {number}", duplicate)
    if duplicate is not None:  # outside the rows, e.g. in the object that holds them
        raise _duplicate_error(str(path), duplicate)
    return data


class JSONNumber(float):
    """A JSON number with a fraction or exponent, that remembers how the file wrote it."""

    def __new__(cls, text: str) -> JSONNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return JSONNumber, (self.text,)

    text: str


class _Repeated(dict):
    """A JSON object in which ``key`` appeared more than once (the last value kept)."""

    key: str = ""


class _KeyCheckingDecoder:
    """Decodes JSON text and remembers the first object in it that repeats a key."""

    def __init__(self) -> None:
        self._first: _Repeated | None = None
        # one decoder per file: building it per line would double the parsing time
        self._decoder = json.JSONDecoder(object_pairs_hook=self._build, parse_float=JSONNumber)

    def _build(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        seen: set[str] = set()
        repeated = _Repeated(obj)
        repeated.key = next(k for k, _ in pairs if k in seen or seen.add(k))
        if self._first is None:
            self._first = repeated
        return repeated

    def decode(self, text: str) -> tuple[Any, _Repeated | None]:
        """The value of ``text`` and the first object that repeats a key (None if none)."""
        self._first = None
        return self._decoder.decode(text), self._first


def _holds(value: Any, target: _Repeated) -> bool:
    """Whether ``target`` is ``value`` or nested anywhere inside it."""
    if value is target:
        return True
    if isinstance(value, dict):
        return any(_holds(v, target) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, target) for v in value)
    return False


def _duplicate_error(where: str, obj: _Repeated) -> DataError:
    return DataError(
        f"{where}: key {obj.key!r} appears more than once in the same object; JSON keeps only "
        "the last value, so the other would be lost without a word. Remove or rename the "
        "repeated key."
    )


def _is_list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _read_delimited(path: Path, delimiter: str) -> list[dict[str, Any]]:
    old_limit = csv.field_size_limit()
    raise_field_size_limit()
    try:
        with _open_text(path, encoding="utf-8-sig", newline="") as handle:
            return parse_delimited(handle, path, delimiter)
    finally:
        csv.field_size_limit(old_limit)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot be read as Parquet ({err}).") from err
    return table.to_pylist()


_READERS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    ".jsonl": _read_jsonl,
    ".jsonl.gz": _read_jsonl,
    ".json": _read_json,
    ".json.gz": _read_json,
    ".csv": lambda path: _read_delimited(path, ","),
    ".csv.gz": lambda path: _read_delimited(path, ","),
    ".tsv": lambda path: _read_delimited(path, "\t"),
    ".tsv.gz": lambda path: _read_delimited(path, "\t"),
    ".parquet": _read_parquet,
}
