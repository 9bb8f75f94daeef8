"""Bring-your-own-data: CSV or Parquet in the contract, with a column mapping, through import and validation."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from leadre.config import Params
from leadre.data.contracts import TABLES
from leadre.data.importer import run_import
from leadre.data.tables import DataError, read_manifest, read_tables
from leadre.data.validate import run_validate

RENAMED = {"events": {"object_id": "item_id", "ts": "event_time"}, "ads": {"ecpm": "expected_cpm"}}


def _export_as_logs(params: Params, folder):
    """Write the generated world as a user's own logs: CSV files, some columns under other names."""
    folder.mkdir()
    for name, frame in read_tables(params.path(params.data.generated_dir)).items():
        frame.rename(columns={ours: theirs for ours, theirs in RENAMED.get(name, {}).items()}).to_csv(
            folder / f"{name}.csv", index=False)
    mapping = folder / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({name: {"columns": cols} for name, cols in RENAMED.items()}))
    return mapping


def test_csv_logs_with_mapping_import_then_validate(workspace: Params, tmp_path):
    mapping = _export_as_logs(workspace, tmp_path / "logs")
    counts = run_import(workspace, tmp_path / "logs", mapping)
    imported = workspace.path(workspace.data.imported_dir)
    original = read_tables(workspace.path(workspace.data.generated_dir))
    assert counts == {name: len(original[name]) for name in TABLES}
    for name, frame in read_tables(imported).items():
        pd.testing.assert_frame_equal(frame, original[name], check_dtype=False, check_categorical=False)
    summary = run_validate(workspace, source_dir=imported)
    assert summary["status"] == "passed"
    assert workspace.path(workspace.data.validated_dir).joinpath("events.parquet").exists()


def test_mapping_naming_a_missing_column_fails_and_writes_nothing(workspace: Params, tmp_path):
    mapping = _export_as_logs(workspace, tmp_path / "logs")
    mapping.write_text(yaml.safe_dump({"events": {"columns": {"object_id": "itemid"}}}))
    with pytest.raises(DataError, match=r"events.csv, column 'itemid': rule 'mapped column exists'"):
        run_import(workspace, tmp_path / "logs", mapping)
    assert not workspace.path(workspace.data.imported_dir).exists()


def test_mapping_for_an_unknown_table_is_rejected(workspace: Params, tmp_path):
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({"clicks": {"columns": {}}}))
    with pytest.raises(DataError, match="unknown table 'clicks'"):
        run_import(workspace, tmp_path, mapping)


def test_missing_table_file_is_named(workspace: Params, tmp_path):
    _export_as_logs(workspace, tmp_path / "logs")
    (tmp_path / "logs" / "ads.csv").unlink()
    with pytest.raises(DataError, match=r"ads.parquet: rule 'table file exists'.*ads.parquet or ads.csv"):
        run_import(workspace, tmp_path / "logs")


def test_a_single_domain_log_leaves_out_contents_queries_and_optional_ad_columns(workspace: Params, tmp_path):
    """Items and interactions only: no contents or queries files, ads with title, industry and eCPM alone."""
    logs = tmp_path / "logs"
    logs.mkdir()
    tables = read_tables(workspace.path(workspace.data.generated_dir))
    events = tables["events"]
    events[events["domain"] == "ad"].to_csv(logs / "events.csv", index=False)
    tables["users"].to_csv(logs / "users.csv", index=False)
    tables["ads"][["ad_id", "title", "industry", "ecpm"]].to_csv(logs / "ads.csv", index=False)
    run_import(workspace, logs)
    imported = workspace.path(workspace.data.imported_dir)
    manifest = read_manifest(imported)
    assert manifest["absent_tables"] == ["contents", "queries"]
    assert set(manifest["defaulted"]["ads"]) == {"description", "advertiser", "landing_type", "bid", "created_at",
                                                 "expires_at", "status"}
    ads = read_tables(imported, ("ads",))["ads"]
    assert (ads["status"] == "active").all() and ads["expires_at"].isna().all()  # no expiry: live
    # the snapshot is the data's own: the last event + 1 s, recorded once and read by validation
    assert pd.Timestamp(manifest["snapshot_time"]) == events["ts"].max() + pd.Timedelta(seconds=1)
    assert run_validate(workspace, source_dir=imported)["status"] == "passed"


@pytest.mark.parametrize(("content", "problem"), [
    (b"- events\n- ads\n", "expected a mapping of table name to its file and columns, got a list"),
    (b"events.csv\n", "expected a mapping of table name to its file and columns, got a str"),
    (b"events:\n  file: null\n", "events.file: expected a file name, got None"),
    (b"events:\n  columns: {ts: 5}\n", "events.columns: expected contract column: your column name (text)"),
    (b"events:\n  file: caf\xe9.csv\n", "text is UTF-8"),
], ids=["list", "scalar", "file null", "column not text", "not UTF-8"])
def test_a_malformed_mapping_is_one_error_naming_the_file(workspace: Params, tmp_path, content: bytes, problem: str):
    _export_as_logs(workspace, tmp_path / "logs")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_bytes(content)
    with pytest.raises(DataError) as caught:
        run_import(workspace, tmp_path / "logs", mapping)
    assert str(mapping) in str(caught.value) and problem in str(caught.value)
    assert not workspace.path(workspace.data.imported_dir).exists()


def test_a_folder_where_a_table_file_should_be_is_named(workspace: Params, tmp_path):
    _export_as_logs(workspace, tmp_path / "logs")
    (tmp_path / "logs" / "events.csv").unlink()
    (tmp_path / "logs" / "events.csv").mkdir()
    with pytest.raises(DataError, match=r"events.csv: rule 'table file is a regular file' broken \(it is a folder"):
        run_import(workspace, tmp_path / "logs")
