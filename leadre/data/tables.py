"""Reading and writing the contract tables.

`load_table` is the one way a table enters the platform (import and validate both use it): it reads CSV or Parquet,
renames mapped columns, and coerces every column to its contract type. Anything it cannot read is a `DataError`
that names the file, the column, the rule and the first offending rows. Rows are numbered from 1, the header not
counted; for a CSV, row N is on line N + 1.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leadre.data.contracts import CONTRACTS, TABLES, Column, Table
from leadre.errors import UserError
from leadre.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMATS = (".parquet", ".csv")


@dataclass
class Finding:
    """One broken rule: where it is and a few of the rows that break it."""

    file: str
    rule: str
    table: str
    column: str | None = None
    count: int | None = None  # offending rows, when known
    rows: list[int] = field(default_factory=list)  # 1-based
    examples: list[str] = field(default_factory=list)
    detail: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}" + (f", column '{self.column}'" if self.column else "")
        text = f"{where}: rule '{self.rule}' broken"
        if self.count is not None:
            text += f" by {self.count} row{'s' if self.count != 1 else ''}"
        if self.detail:
            text += f" ({self.detail})"
        if self.rows:
            shown = self.examples or [str(r) for r in self.rows]
            text += "; e.g. " + "; ".join(f"row {r}: {e}" if self.examples else f"row {r}"
                                          for r, e in zip(self.rows, shown))
        return text


class DataError(UserError, ValueError):
    """Input data breaks its contract. Carries every finding; str() is the message a user reads."""

    def __init__(self, findings: list[Finding], headline: str = "data does not meet its contract"):
        self.findings = findings
        super().__init__(headline + ":\n" + "\n".join(f"  - {f}" for f in findings))


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
        raise DataError([Finding(str(path), "text is UTF-8", table.name, rows=[line - 1],
                                 examples=[f"byte 0x{raw[err.start]:02x} at offset {err.start} (line {line})"])])
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as err:
        raise DataError([Finding(str(path), "well-formed CSV", table.name, detail=str(err))]) from None


def _read_parquet(path: Path, table: Table) -> pd.DataFrame:
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError([Finding(str(path), "readable Parquet file", table.name, detail=str(err))]) from None
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
        present = series.notna().to_numpy()
        values = pd.to_numeric(series, errors="coerce")
        bad = present & values.isna().to_numpy()
        if column.kind == "int":
            fractional = values.notna().to_numpy() & (values.fillna(0) % 1 != 0).to_numpy()
            values = values.where(~fractional)
            return values.astype("Int64" if values.isna().any() else "int64"), bad | fractional
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


def load_table(path: Path | str, name: str, column_map: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read one table file and return it with contract columns, in contract order and types."""
    path, table = Path(path), CONTRACTS[name]
    if not path.exists():
        raise DataError([Finding(str(path), "table file exists", name)])
    if path.stat().st_size == 0:
        raise DataError([Finding(str(path), "file is not empty", name, detail="0 bytes")])
    frame = _read_csv(path, table) if path.suffix == ".csv" else _read_parquet(path, table)
    rename = {source: target for target, source in (column_map or {}).items()}
    unknown = sorted(set(rename) - set(frame.columns))
    if unknown:
        raise DataError([Finding(str(path), "mapped column exists", name, ", ".join(unknown),
                                 detail=f"the column mapping names {unknown}; the file has {list(frame.columns)}")])
    frame = frame.rename(columns=rename)
    missing = [c for c in table.column_names if c not in frame.columns]
    if missing:
        raise DataError([Finding(str(path), "required column present", name, c,
                                 detail=f"file has {list(frame.columns)}") for c in missing])
    extra = [c for c in frame.columns if c not in table.column_names]
    if extra:
        log.info("%s: ignoring columns outside the %s contract: %s", path, name, extra)
    findings, columns = [], {}
    for column in table.columns:
        values, bad = _coerce(frame[column.name], column)
        if bad.any():
            rows = np.flatnonzero(bad)
            findings.append(Finding(str(path), f"values are of type {column.kind}", name, column.name, int(bad.sum()),
                                    rows=[int(r) + 1 for r in rows[:5]],
                                    examples=[repr(frame[column.name].iloc[r]) for r in rows[:5]]))
        columns[column.name] = values
    if findings:
        raise DataError(findings)
    return pd.DataFrame(columns).reset_index(drop=True)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: Path, manifest: dict) -> dict[str, int]:
    """Write contract tables as Parquet plus a manifest, replacing `out_dir` as a whole."""
    counts = {name: len(tables[name]) for name in TABLES}
    with atomic_dir(out_dir) as tmp:
        for name in TABLES:
            frame = tables[name][list(CONTRACTS[name].column_names)]
            frame.to_parquet(tmp / f"{name}.parquet", index=False, row_group_size=1_000_000)
        write_json(tmp / MANIFEST, {**manifest, "rows": counts})
    return counts


def read_tables(folder: Path | str, names: tuple[str, ...] = TABLES) -> dict[str, pd.DataFrame]:
    """Read written contract tables (e.g. data/validated) without re-checking them."""
    folder = Path(folder)
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in names}


def read_manifest(folder: Path | str) -> dict:
    return read_json(Path(folder) / MANIFEST)
