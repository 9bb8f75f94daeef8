"""Corrupted inputs: each is rejected with a message naming the file, the rule and the offending row, and no
validated output is written (an existing one is left exactly as it was)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leadre.config import Params
from leadre.data.tables import DataError
from leadre.data.validate import _duplicated, run_validate


@dataclass
class Corruption:
    name: str
    corrupt: Callable[[Path], int | None]  # changes the source folder; returns the offending 1-based row, if one
    file: str
    rule: str


Change = Callable[[pd.DataFrame], tuple[pd.DataFrame, int | None]]


def _edit(table: str, change: Change) -> Callable[[Path], int | None]:
    def corrupt(folder: Path) -> int | None:
        frame, row = change(pd.read_parquet(folder / f"{table}.parquet"))
        frame.to_parquet(folder / f"{table}.parquet", index=False)
        return row
    return corrupt


def _set(frame: pd.DataFrame, row: int, column: str, value) -> tuple[pd.DataFrame, int]:
    """Put `value` at 0-based `row`, widening the column's type as a careless writer would; return the 1-based row."""
    frame = frame.copy()
    if frame[column].dtype.name == "category" and value not in frame[column].cat.categories:
        frame[column] = frame[column].astype(str)
    elif isinstance(value, str) and frame[column].dtype.kind in "iuf":
        frame[column] = frame[column].astype(str)  # numbers stored as text, one of them not a number
    elif value is None and frame[column].dtype.kind in "iu":
        frame[column] = frame[column].astype("Int64")
    frame.loc[row, column] = value
    return frame, row + 1


def _first(frame: pd.DataFrame, mask) -> int:
    return int(mask.to_numpy().nonzero()[0][0])


def _ad_event_row(frame):
    return _first(frame, frame["action"] == "click_ad")


def _duplicate_event(frame):
    row = 10
    return pd.concat([frame.iloc[: row + 1], frame.iloc[[row]], frame.iloc[row + 1:]], ignore_index=True), row + 2


def _swap_two_events_of_a_user(frame):
    frame = frame.copy()
    row = _first(frame, frame["user_id"].shift(-1) == frame["user_id"])
    frame.loc[[row, row + 1], "ts"] = frame.loc[[row + 1, row], "ts"].to_numpy()
    return frame, row + 2  # the second of the pair now goes back in time


def _launch_clicked_ad_after_its_clicks(folder: Path) -> int:
    events = pd.read_parquet(folder / "events.parquet")
    ads = pd.read_parquet(folder / "ads.parquet")
    row = _ad_event_row(events)
    ad_id = events.loc[row, "object_id"]
    first_event = _first(events, events["object_id"] == ad_id)
    ads.loc[ads["ad_id"] == ad_id, "created_at"] = events.loc[events["object_id"] == ad_id, "ts"].max()
    ads.to_parquet(folder / "ads.parquet", index=False)
    return first_event + 1


def _empty_file(table: str):
    def corrupt(folder: Path) -> None:
        (folder / f"{table}.parquet").write_bytes(b"")
    return corrupt


def _as_csv(table: str, edit: Callable[[bytes], tuple[bytes, int | None]]):
    """Replace the table's Parquet file by a CSV, then edit the CSV's bytes."""
    def corrupt(folder: Path) -> int | None:
        frame = pd.read_parquet(folder / f"{table}.parquet")
        (folder / f"{table}.parquet").unlink()
        data, row = edit(frame.to_csv(index=False).encode())
        (folder / f"{table}.csv").write_bytes(data)
        return row
    return corrupt


def _latin1_in_line(data: bytes) -> tuple[bytes, int]:
    lines = data.split(b"\n")
    lines[7] = lines[7].replace(b"e", "\u00e9".encode("latin-1"), 1)  # a lone 0xE9: valid Latin-1, invalid UTF-8
    return b"\n".join(lines), 7  # line 8 of the file is data row 7


def _header_only(data: bytes) -> tuple[bytes, None]:
    return data.split(b"\n")[0] + b"\n", None


def _unparseable_time(data: bytes) -> tuple[bytes, int]:
    lines = data.split(b"\n")
    fields = lines[3].split(b",")
    fields[1] = b"yesterday"
    lines[3] = b",".join(fields)
    return b"\n".join(lines), 3


def _csv_field(line: int, column: int, value: bytes):
    """Set one field of the CSV's 0-based `line` (the header is line 0, so data row N is line N); count `column` from
    the end to step past text fields that hold commas."""
    def edit(data: bytes) -> tuple[bytes, int]:
        lines = data.split(b"\n")
        fields = lines[line].split(b",")
        fields[column] = value
        lines[line] = b",".join(fields)
        return b"\n".join(lines), line
    return edit


def _duplicate_header(data: bytes) -> tuple[bytes, None]:
    """A second `ecpm` column (the last one): a reader that renames it `ecpm.1` would silently ignore it."""
    lines = data.split(b"\n")
    lines = [line + (b",ecpm" if i == 0 else b",-1") if line else line for i, line in enumerate(lines)]
    return b"\n".join(lines), None


def _csv_of(table: str, change: Change):
    """Replace the table's Parquet file by a CSV of the changed frame (pandas quotes what needs quoting)."""
    def corrupt(folder: Path) -> int | None:
        frame, row = change(pd.read_parquet(folder / f"{table}.parquet"))
        (folder / f"{table}.parquet").unlink()
        frame.to_csv(folder / f"{table}.csv", index=False)
        return row
    return corrupt


def _title_with_line_break_then_bad_id(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Row 2's title spans two lines (quoted, legal CSV); row 5's id is not a number."""
    frame, _ = _set(frame, 1, "title", "first line\nsecond line")
    return _set(frame, 4, "content_id", "abc")


CORRUPTIONS = [
    Corruption("missing column", _edit("ads", lambda f: (f.drop(columns=["ecpm"]), None)), "ads.parquet",
               "required column present"),
    Corruption("wrong type", _edit("events", lambda f: _set(f, 3, "object_id", "abc")), "events.parquet",
               "values are of type int"),
    Corruption("null id", _edit("users", lambda f: _set(f, 2, "user_id", None)), "users.parquet", "not null"),
    Corruption("duplicate id", _edit("contents", lambda f: _set(f, 5, "content_id", int(f.loc[4, "content_id"]))),
               "contents.parquet", "unique"),
    Corruption("unknown object id", _edit("events", lambda f: _set(f, _ad_event_row(f), "object_id", 999)),
               "events.parquet", "event's object exists in its domain's table"),
    Corruption("unknown user", _edit("events", lambda f: _set(f, 0, "user_id", 987654321)), "events.parquet",
               "event's user exists in users"),
    Corruption("future timestamp", _edit("events", lambda f: _set(f, len(f) - 1, "ts",
                                                                  pd.Timestamp("2030-01-01", tz="UTC"))),
               "events.parquet", "event before the snapshot"),
    Corruption("duplicate event", _edit("events", _duplicate_event), "events.parquet", "no duplicate event"),
    Corruption("unordered timestamps", _edit("events", _swap_two_events_of_a_user), "events.parquet",
               "timestamps ordered per user"),
    Corruption("empty file", _empty_file("events"), "events.parquet", "file is not empty"),
    Corruption("header-only table", _as_csv("ads", _header_only), "ads.csv", "table has at least one row"),
    Corruption("non-UTF-8 text", _as_csv("contents", _latin1_in_line), "contents.csv", "text is UTF-8"),
    Corruption("unparseable timestamp", _as_csv("events", _unparseable_time), "events.csv",
               "values are of type timestamp"),
    Corruption("negative eCPM", _edit("ads", lambda f: _set(f, 4, "ecpm", -3.5)), "ads.parquet", "value > 0"),
    Corruption("blank title", _edit("contents", lambda f: _set(f, 6, "title", "   ")), "contents.parquet",
               "text is not blank"),
    Corruption("unknown action", _edit("events", lambda f: _set(f, 8, "action", "like")), "events.parquet",
               "one of click_ad"),
    Corruption("action of another domain", _edit("events", lambda f: _set(f, _first(f, f["domain"] == "search"),
                                                                          "action", "click_ad")),
               "events.parquet", "action allowed for the domain"),
    Corruption("age out of range", _edit("users", lambda f: _set(f, 9, "age", 7)), "users.parquet", "value >= 13"),
    Corruption("one-level industry", _edit("ads", lambda f: _set(f, 1, "industry", "Finance")), "ads.parquet",
               "matches ^[a-z0-9_]+/[a-z0-9_]+$"),
    Corruption("expiry before launch", _edit("ads", lambda f: _set(f, 2, "expires_at", f.loc[2, "created_at"]
                                                                    - pd.Timedelta(days=1))),
               "ads.parquet", "expires_at after created_at"),
    Corruption("status contradicts expiry", _edit("ads", lambda f: _set(
        f, _first(f, f["status"] == "active"), "status", "expired")), "ads.parquet", "status is expired exactly when"),
    Corruption("ad clicked before launch", _launch_clicked_ad_after_its_clicks, "events.parquet",
               "ad event not before the ad's created_at"),
    # numbers must be finite: an infinite eCPM would pass "> 0" and break ranking downstream
    Corruption("infinite eCPM", _edit("ads", lambda f: _set(f, 4, "ecpm", float("inf"))), "ads.parquet",
               "finite value > 0"),
    Corruption("minus infinite bid", _edit("ads", lambda f: _set(f, 3, "bid", float("-inf"))), "ads.parquet",
               "finite value > 0"),
    Corruption("NaN eCPM", _edit("ads", lambda f: _set(f, 6, "ecpm", float("nan"))), "ads.parquet", "not null"),
    Corruption("eCPM 'inf' in a CSV", _as_csv("ads", _csv_field(3, -4, b"inf")), "ads.csv", "finite value > 0"),
    Corruption("eCPM '1e999' in a CSV", _as_csv("ads", _csv_field(2, -4, b"1e999")), "ads.csv", "finite value > 0"),
    Corruption("eCPM 'NaN' in a CSV", _as_csv("ads", _csv_field(2, -4, b"NaN")), "ads.csv", "values are of type float"),
    # ids are integer literals, read exactly
    Corruption("id in exponent notation", _as_csv("users", _csv_field(4, 0, b"3e0")), "users.csv",
               "values are of type int"),
    Corruption("id with a decimal point", _as_csv("events", _csv_field(6, 4, b"4.0")), "events.csv",
               "values are of type int"),
    Corruption("id beyond 64 bits", _as_csv("queries", _csv_field(2, 0, b"99999999999999999999")), "queries.csv",
               "values are of type int"),
    Corruption("duplicated CSV header", _as_csv("ads", _duplicate_header), "ads.csv", "column names are unique"),
    Corruption("record with a line break, then a bad id", _csv_of("contents", _title_with_line_break_then_bad_id),
               "contents.csv", "values are of type int"),
    # times before 1990 are what broken exports write (0 → 1970-01-01), not ad logs
    Corruption("event in 1970", _edit("events", lambda f: _set(f, 0, "ts", pd.Timestamp("1970-01-01", tz="UTC"))),
               "events.parquet", "on or after 1990-01-01"),
    Corruption("ad launched in 1970", _edit("ads", lambda f: _set(f, 0, "created_at",
                                                                  pd.Timestamp("1970-01-01", tz="UTC"))),
               "ads.parquet", "on or after 1990-01-01"),
    # text reaches the training prompts: no control or direction-changing characters, bounded length
    Corruption("NUL in a title", _edit("ads", lambda f: _set(f, 2, "title", "Cheap\x00 flights")), "ads.parquet",
               "no control or bidi characters"),
    Corruption("ESC sequence in a query", _edit("queries", lambda f: _set(f, 3, "text", "\x1b[31mred")),
               "queries.parquet", "no control or bidi characters"),
    Corruption("bidi override in a title", _edit("contents", lambda f: _set(f, 1, "title", "abc\u202edcba")),
               "contents.parquet", "no control or bidi characters"),
    Corruption("line break in an advertiser", _edit("ads", lambda f: _set(f, 5, "advertiser", "Acme\nInc")),
               "ads.parquet", "no control or bidi characters"),
    Corruption("100 kB title", _edit("ads", lambda f: _set(f, 7, "title", "x" * 100_000)), "ads.parquet",
               "length <= 200"),
]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_corrupted_input_is_rejected_with_file_rule_and_row(workspace: Params, case: Corruption):
    source = workspace.path(workspace.data.generated_dir)
    row = case.corrupt(source)
    with pytest.raises(DataError) as caught:
        run_validate(workspace)
    message = str(caught.value)
    finding = next((f for f in caught.value.findings if case.rule in f.rule), None)
    assert finding is not None, f"expected rule {case.rule!r} in:\n{message}"
    assert Path(finding.file).name == case.file
    assert case.file in message and case.rule in message
    if row is not None:
        assert row in finding.rows and f"row {row}" in message
    assert not workspace.path(workspace.data.validated_dir).exists()


def test_csv_rows_are_records_and_the_message_gives_the_line_each_starts_on(workspace: Params):
    """A quoted field may hold a line break: row 5 is then on line 7 of the file, not line 6."""
    _csv_of("contents", _title_with_line_break_then_bad_id)(workspace.path(workspace.data.generated_dir))
    with pytest.raises(DataError) as caught:
        run_validate(workspace)
    finding = next(f for f in caught.value.findings if f.column == "content_id")
    assert finding.rows == [5] and finding.lines == [7]
    assert "row 5 (line 7): 'abc'" in str(caught.value)
    text = (workspace.path(workspace.data.generated_dir) / "contents.csv").read_text().splitlines()
    assert text[7 - 1].startswith("abc,")


def test_an_overflowing_id_is_reported_as_written(workspace: Params):
    _as_csv("queries", _csv_field(2, 0, b"99999999999999999999"))(workspace.path(workspace.data.generated_dir))
    with pytest.raises(DataError, match="row 2 \\(line 3\\): '99999999999999999999'") as caught:
        run_validate(workspace)
    assert "-9223372036854775808" not in str(caught.value)


def test_a_duplicated_csv_header_names_the_column_and_both_positions(workspace: Params):
    _as_csv("ads", _duplicate_header)(workspace.path(workspace.data.generated_dir))
    with pytest.raises(DataError, match="ads.csv, column 'ecpm': rule 'column names are unique' broken "
                                        "\\(header has 'ecpm' in columns 8 and 12\\)"):
        run_validate(workspace)


def test_failed_validation_keeps_previous_validated_data(workspace: Params):
    run_validate(workspace)
    validated = workspace.path(workspace.data.validated_dir)
    before = _fingerprint(validated)
    _edit("ads", lambda f: _set(f, 4, "ecpm", -1.0))(workspace.path(workspace.data.generated_dir))
    with pytest.raises(DataError, match="value > 0"):
        run_validate(workspace)
    assert _fingerprint(validated) == before


def test_reports_are_written_for_a_failure_too(workspace: Params):
    _edit("ads", lambda f: _set(f, 4, "ecpm", -1.0))(workspace.path(workspace.data.generated_dir))
    with pytest.raises(DataError):
        run_validate(workspace)
    import json
    summary = json.loads((workspace.path(workspace.validation.reports_dir) / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["failures"][0]["rows"] == [5] and summary["failures"][0]["column"] == "ecpm"


def test_duplicate_events_are_every_copy_of_a_full_identity_and_nothing_else():
    """The duplicate-event rule's own search (GX's compound-unique check took ~70 s at 44M events) flags exactly the
    rows pandas does: every copy, and never two events that differ in one column."""
    rng = np.random.default_rng(0)
    columns = [rng.integers(low, high, 20_000) for low, high in ((0, 30), (0, 50), (-1, 3), (0, 4), (0, 5))]
    expected = pd.DataFrame(dict(enumerate(columns))).duplicated(keep=False).to_numpy()
    assert 0 < expected.sum() < len(expected) / 2
    assert np.array_equal(_duplicated(columns), expected)
