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
    try:
        mapping = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataError([Finding(str(path), "readable YAML mapping", "mapping", detail=str(err))]) from None
    problems = [f"unknown table {name!r}" for name in mapping if name not in TABLES]
    for name, spec in mapping.items():
        if not isinstance(spec, dict) or set(spec) - {"file", "columns"}:
            problems.append(f"{name}: expected keys 'file' and/or 'columns'")
        elif not isinstance(spec.get("columns", {}), dict):
            problems.append(f"{name}.columns: expected a mapping of contract column to your column")
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
