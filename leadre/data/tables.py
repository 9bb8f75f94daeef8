"""Reading and writing the contract tables.

`load_table` is the one way a table enters the platform (import and validate both use it): it reads CSV or Parquet,
renames mapped columns, and coerces every column to its contract type. Anything it cannot read is a `DataError`
that names the file, the column, the rule and the first offending rows. Rows are records numbered from 1, the header
not counted; a quoted CSV field may hold a line break, so for a CSV each finding also gives the line its rows start on.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from leadre.data.contracts import CONTRACTS, TABLES, Column, Table
from leadre.errors import UserError
from leadre.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMATS = (".parquet", ".csv")
INTEGER_LITERAL = r"^\s*[+-]?[0-9]+\s*$"  # "3e0" and "4.0" are not ids, though a float parser reads them as 3 and 4
EXACT_FLOAT_INTEGERS = 2 ** 53  # beyond this a float no longer holds every integer: an id stored so is already lost
SHOWN_CHARACTERS = 80  # a quoted value longer than this is cut in messages (a 100 kB title must not fill a screen)


@dataclass
class Finding:
    """One broken rule: where it is and a few of the rows that break it."""

    file: str
    rule: str
    table: str
    column: str | None = None
    count: int | None = None  # offending rows, when known
    rows: list[int] = field(default_factory=list)  # 1-based records, header not counted
    examples: list[str] = field(default_factory=list)
    detail: str | None = None
    lines: list[int] = field(default_factory=list)  # CSV only: the file line each of `rows` starts on

    def __str__(self) -> str:
        where = f"{self.file}" + (f", column '{self.column}'" if self.column else "")
        text = f"{where}: rule '{self.rule}' broken"
        if self.count is not None:
            text += f" by {self.count} row{'s' if self.count != 1 else ''}"
        if self.detail:
            text += f" ({self.detail})"
        if self.rows:
            places = [f"row {r}" + (f" (line {line})" if line else "")
                      for r, line in zip(self.rows, self.lines or [None] * len(self.rows))]
            shown = [f"{p}: {e}" for p, e in zip(places, self.examples)] if self.examples else places
            text += "; e.g. " + "; ".join(shown)
        return text


class DataError(UserError, ValueError):
    """Input data breaks its contract. Carries every finding; str() is the message a user reads."""

    def __init__(self, findings: list[Finding], headline: str = "data does not meet its contract"):
        self.findings = _with_csv_lines(findings)
        super().__init__(headline + ":\n" + "\n".join(f"  - {f}" for f in findings))


def shown_value(value) -> str:
    """A value as a message quotes it: repr (so control characters show escaped), long text cut."""
    if isinstance(value, str) and len(value) > SHOWN_CHARACTERS:
        return f"{value[:SHOWN_CHARACTERS]!r}… ({len(value):,} characters)"
    return repr(value) if isinstance(value, str) else str(value)


def csv_record_lines(path: Path, last_row: int) -> list[int]:
    """The line each data row 1..last_row of a CSV starts on (as pandas counts rows: blank lines skipped).

    Read again only when a finding needs it: row N is on line N + 1 only until a quoted field holds a line break.
    """
    starts, next_line = [], 1
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        for record in reader:
            if record:
                starts.append(next_line)
            next_line = reader.line_num + 1
            if len(starts) > last_row:
                break
    return starts[1:]  # starts[0] is the header


def _with_csv_lines(findings: list[Finding]) -> list[Finding]:
    lines_of: dict[str, list[int]] = {}
    for finding in findings:
        if finding.rows and not finding.lines and finding.file.endswith(".csv") and Path(finding.file).is_file():
            if finding.file not in lines_of or len(lines_of[finding.file]) < max(finding.rows):
                lines_of[finding.file] = csv_record_lines(Path(finding.file), max(finding.rows))
            starts = lines_of[finding.file]
            finding.lines = [starts[r - 1] if r <= len(starts) else 0 for r in finding.rows]
    return findings


def table_file(folder: Path, name: str) -> Path:
    """The file holding table `name` in `folder`: name.parquet or name.csv."""
    found = [folder / f"{name}{ext}" for ext in FORMATS if (folder / f"{name}{ext}").exists()]
    if not found:
        raise DataError([Finding(str(folder / f"{name}.parquet"), "table file exists", name,
                                 detail=f"expected {name}.parquet or {name}.csv in {folder}")])
    if len(found) > 1:
        raise DataError([Finding(str(found[0]), "one file per table", name,
                                 detail=f"both {found[0].name} and {found[1].name} exist; keep one")])
    return found[0]


def _read_csv(path: Path, table: Table) -> pd.DataFrame:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        starts = csv_record_lines(path, line)  # the record holding the byte: the last one starting on or before it
        row = bisect.bisect_right(starts, line)
        raise DataError([Finding(str(path), "text is UTF-8", table.name, rows=[row], lines=[line],
                                 examples=[f"byte 0x{raw[err.start]:02x} at offset {err.start}"])]) from None
    try:
        header = next(csv.reader(_lines(text)), [])
        _check_unique_names(path, table, header)
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, csv.Error) as err:
        raise DataError([Finding(str(path), "well-formed CSV", table.name, detail=str(err))]) from None


def _lines(text: str):
    """Lines of `text` one at a time: the header needs the first, not a second copy of a multi-gigabyte file."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _check_unique_names(path: Path, table: Table, names: Sequence[str]) -> None:
    """A reader keeps one of two same-named columns (pandas renames the second `x.1`): which one holds the data
    is a guess, so a repeated name is an error."""
    positions: dict[str, list[int]] = {}
    for number, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(number)
    repeated = {name: numbers for name, numbers in positions.items() if len(numbers) > 1}
    if repeated:
        raise DataError([Finding(str(path), "column names are unique", table.name, name,
                                 detail=f"header has {name!r} in columns {', '.join(map(str, numbers[:-1]))} and "
                                        f"{numbers[-1]}") for name, numbers in repeated.items()])


def _read_parquet(path: Path, table: Table) -> pd.DataFrame:
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError([Finding(str(path), "readable Parquet file", table.name, detail=str(err))]) from None
    _check_unique_names(path, table, arrow.schema.names)
    for i, f in enumerate(arrow.schema):
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):  # text stored as raw bytes
            values = arrow.column(i).to_pylist()
            bad = [r for r, v in enumerate(values) if v is not None and not _is_utf8(v)]
            if bad:
                raise DataError([Finding(str(path), "text is UTF-8", table.name, f.name, len(bad),
                                         rows=[r + 1 for r in bad[:5]], examples=[repr(values[r]) for r in bad[:5]])])
            arrow = arrow.set_column(i, f.name, pa.array([None if v is None else v.decode() for v in values]))
    # self_destruct frees each Arrow column as it is converted: the table is not held twice at 40M rows.
    return arrow.to_pandas(self_destruct=True, split_blocks=True)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _coerce(series: pd.Series, column: Column) -> tuple[pd.Series, np.ndarray]:
    """Cast to the contract type; also return a mask of values present but not convertible.

    Columns already of the right type (what Parquet written by this platform holds) pass without per-row work:
    at 40M events a per-row Python check costs minutes and gigabytes.
    """
    none_bad = np.zeros(len(series), dtype=bool)
    dtype = series.dtype
    if column.kind in ("int", "float"):
        if pd.api.types.is_bool_dtype(dtype):
            return series, series.notna().to_numpy()  # booleans are not numbers here
        if column.kind == "int" and pd.api.types.is_integer_dtype(dtype):
            return series.astype("Int64" if series.isna().any() else "int64"), none_bad
        if column.kind == "float" and pd.api.types.is_numeric_dtype(dtype):
            return series.astype("float64"), none_bad
        if column.kind == "int" and not pd.api.types.is_numeric_dtype(dtype):
            return _integers_from_text(series)
        present = series.notna().to_numpy()
        values = pd.to_numeric(series, errors="coerce")
        bad = present & values.isna().to_numpy()
        if column.kind == "int":  # floats: integral and small enough to be exact
            inexact = values.notna().to_numpy() & ((values.fillna(0) % 1 != 0)
                                                   | (values.abs() >= EXACT_FLOAT_INTEGERS)).to_numpy()
            values = values.where(~inexact)
            return values.astype("Int64" if values.isna().any() else "int64"), bad | inexact
        return values.astype("float64"), bad
    if column.kind == "timestamp":
        if pd.api.types.is_datetime64_any_dtype(dtype):
            values = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
            return values.astype("datetime64[ms, UTC]"), none_bad
        # text: ISO-8601; a value without an offset is read as UTC
        values = pd.to_datetime(series.astype("string"), utc=True, errors="coerce", format="ISO8601")
        return values.astype("datetime64[ms, UTC]"), series.notna().to_numpy() & values.isna().to_numpy()
    if isinstance(dtype, pd.CategoricalDtype):
        bad_labels = [c for c in dtype.categories if not isinstance(c, str)]
        if not bad_labels:
            return (series if column.kind == "category" else series.astype("str")), none_bad
        series = series.astype(object)
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return (series.astype("category") if column.kind == "category" else series), none_bad
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        text = series.astype("string").astype(object).where(series.notna(), None)  # numbers written as text are text
        bad = none_bad
    else:  # object column: every present value must already be text
        text = series
        bad = series.notna().to_numpy() & ~series.map(lambda v: isinstance(v, str), na_action="ignore").fillna(
            True).to_numpy(dtype=bool)
    values = text.where(~bad, None).astype("str")
    return (values.astype("category") if column.kind == "category" else values), bad


def _integers_from_text(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Integer literals parsed exactly into int64 (Arrow kernels: no per-row Python on the good path); anything else,
    a value beyond int64 included, is marked bad rather than rounded through a float or wrapped around."""
    text = pa.array(series.astype("string"), type=pa.string(), from_pandas=True)
    literal = pc.fill_null(pc.match_substring_regex(text, INTEGER_LITERAL), False)
    digits = pc.replace_substring_regex(pc.utf8_trim_whitespace(pc.if_else(literal, text, pa.scalar(None, pa.string()))), r"^\+", "")
    try:
        values = pc.cast(digits, pa.int64())
    except pa.ArrowInvalid:  # some literal overflows int64: find which (rare, so per row is fine)
        numbers = [None if d is None else int(d) for d in digits.to_pylist()]
        fits = [n is None or -(2 ** 63) <= n < 2 ** 63 for n in numbers]
        values = pa.array([n if ok else None for n, ok in zip(numbers, fits)], type=pa.int64())
        literal = pc.and_(literal, pa.array(fits))
    bad = series.notna().to_numpy() & ~literal.to_numpy(zero_copy_only=False)
    missing = values.is_null().to_numpy(zero_copy_only=False)
    result = pd.Series(values.fill_null(0).to_numpy(), index=series.index)
    return (result.astype("Int64").mask(missing) if missing.any() else result), bad


def load_table(path: Path | str, name: str, column_map: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read one table file and return it with contract columns, in contract order and types."""
    path, table = Path(path), CONTRACTS[name]
    if not path.exists():
        raise DataError([Finding(str(path), "table file exists", name)])
    if not path.is_file():
        raise DataError([Finding(str(path), "table file is a regular file", name,
                                 detail="it is a folder; write each table as one .csv or .parquet file")])
    if path.stat().st_size == 0:
        raise DataError([Finding(str(path), "file is not empty", name, detail="0 bytes")])
    try:
        frame = _read_csv(path, table) if path.suffix == ".csv" else _read_parquet(path, table)
    except OSError as err:  # permissions, a vanished file: what the system said, as one line
        raise DataError([Finding(str(path), "readable file", name, detail=err.strerror or str(err))]) from None
    rename = {source: target for target, source in (column_map or {}).items()}
    unknown = sorted(set(rename) - set(frame.columns))
    if unknown:
        raise DataError([Finding(str(path), "mapped column exists", name, ", ".join(unknown),
                                 detail=f"the column mapping names {unknown}; the file has {list(frame.columns)}")])
    frame = frame.rename(columns=rename)
    missing = [c.name for c in table.columns if c.name not in frame.columns and not c.optional]
    if missing:
        raise DataError([Finding(str(path), "required column present", name, c,
                                 detail=f"file has {list(frame.columns)}") for c in missing])
    extra = [c for c in frame.columns if c not in table.column_names]
    if extra:
        log.info("%s: ignoring columns outside the %s contract: %s", path, name, extra)
    findings, columns = [], {}
    for column in table.columns:
        if column.name not in frame.columns:  # an optional column left out: null here, its default at import
            frame[column.name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        values, bad = _coerce(frame[column.name], column)
        if bad.any():
            rows = np.flatnonzero(bad)
            findings.append(Finding(str(path), f"values are of type {column.kind}", name, column.name, int(bad.sum()),
                                    rows=[int(r) + 1 for r in rows[:5]],
                                    examples=[shown_value(frame[column.name].iloc[r]) for r in rows[:5]]))
        columns[column.name] = values
    if findings:
        raise DataError(findings)
    return pd.DataFrame(columns).reset_index(drop=True)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: Path, manifest: dict) -> dict[str, int]:
    """Write contract tables as Parquet plus a manifest, replacing `out_dir` as a whole."""
    counts = {name: len(tables[name]) for name in TABLES}
    with atomic_dir(out_dir) as tmp:
        for name in TABLES:
            # reindex: a writer that predates an optional column (the generator, for `users.attributes`) leaves
            # it null
            frame = tables[name].reindex(columns=list(CONTRACTS[name].column_names))
            frame.to_parquet(tmp / f"{name}.parquet", index=False, row_group_size=1_000_000)
        write_json(tmp / MANIFEST, {**manifest, "rows": counts})
    return counts


def read_tables(folder: Path | str, names: tuple[str, ...] = TABLES) -> dict[str, pd.DataFrame]:
    """Read written contract tables (e.g. data/validated) without re-checking them."""
    folder = Path(folder)
    # What pd.read_parquet gives, without its copy of same-typed columns into one block (split_blocks): the events'
    # int64 columns stay Arrow's buffers, and each column's Arrow memory is freed once converted (self_destruct).
    # At 1M users (43.8M events) that read 2.0-2.6 s against 2.9-3.8 s, the frames equal.
    return {name: pq.read_table(folder / f"{name}.parquet").to_pandas(split_blocks=True, self_destruct=True)
            for name in names}


def read_manifest(folder: Path | str) -> dict:
    return read_json(Path(folder) / MANIFEST)
