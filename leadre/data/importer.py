"""`leadre data import`: bring your own logs (CSV or Parquet in the documented contract) into the platform.

Each table is read through the contract loader, with an optional column mapping for files whose column names
differ, and written as canonical Parquet to data.imported_dir (track it with `dvc add data/imported`). Import checks
structure and types; `leadre data validate` then checks every rule.

Mapping file (YAML), every key optional:

    events:
      file: clickstream.csv        # default: events.parquet or events.csv in the source folder
      columns: {object_id: item_id, ts: event_time}   # contract name: your column name
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from leadre.config import Params
from leadre.data.contracts import TABLES
from leadre.data.tables import DataError, Finding, load_table, table_file, write_tables
from leadre.io import portable_path

log = logging.getLogger(__name__)


def read_mapping(path: Path | None) -> dict[str, dict]:
    if path is None:
        return {}
    raw = b""
    try:
        raw = Path(path).read_bytes()
        mapping = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError([Finding(str(path), "text is UTF-8", "mapping",
                                 detail=f"byte 0x{raw[err.start]:02x} at offset {err.start}")]) from None
    except (OSError, yaml.YAMLError) as err:
        raise DataError([Finding(str(path), "readable YAML mapping", "mapping", detail=str(err))]) from None
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, dict):
        raise DataError([Finding(str(path), "valid column mapping", "mapping", detail=(
            f"expected a mapping of table name to its file and columns, got a {type(mapping).__name__}"))])
    problems = [f"unknown table {name!r}" for name in mapping if name not in TABLES]
    for name, spec in mapping.items():
        if not isinstance(spec, dict) or set(spec) - {"file", "columns"}:
            problems.append(f"{name}: expected keys 'file' and/or 'columns'")
            continue
        if "file" in spec and not (isinstance(spec["file"], str) and spec["file"].strip()):
            problems.append(f"{name}.file: expected a file name, got {spec['file']!r}")
        columns = spec.get("columns", {})
        if not isinstance(columns, dict):
            problems.append(f"{name}.columns: expected a mapping of contract column to your column")
        elif not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
            problems.append(f"{name}.columns: expected contract column: your column name (text)")
    if problems:
        raise DataError([Finding(str(path), "valid column mapping", "mapping", detail="; ".join(problems))])
    return mapping


def run_import(params: Params, source: Path, mapping_file: Path | None = None, out_dir: Path | None = None) -> dict:
    mapping = read_mapping(mapping_file)
    tables, findings = {}, []
    for name in TABLES:
        spec = mapping.get(name, {})
        try:
            path = source / spec["file"] if "file" in spec else table_file(source, name)
            tables[name] = load_table(path, name, spec.get("columns"))
        except DataError as err:
            findings += err.findings
    if findings:
        raise DataError(findings, headline=f"import of {source} failed; nothing was written")
    out_dir = out_dir or params.path(params.data.imported_dir)
    counts = write_tables(tables, out_dir, {"source": "imported", "from": portable_path(source, params.root),
                                            "snapshot_time": params.data.snapshot_time.isoformat()})
    log.info("imported %s into %s", counts, out_dir)
    return counts
