"""`leadre data validate`: Great Expectations suites over the raw tables; on success, the canonical validated copy.

Each contract rule (leadre/data/contracts.py) becomes a GX expectation in a per-table suite. Rules that span
tables run as suites over frames derived from `events` (one row per event, indexed by the event's row), so a
failure still points at the event row that breaks it: every event's user and object exist, ad events fall inside
the ad's life, content actions match the content kind, timestamps are ordered per user.

Outputs: `validation.reports_dir` (summary.json and GX data docs, written whether or not the data passes) and, only
when every rule holds, `data.validated_dir`. A failure raises `DataError` and leaves the previous validated data as
it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leadre.config import Params
from leadre.data.contracts import (ACTION_BY_CONTENT_KIND, ACTIONS_BY_DOMAIN, CONTRACTS, EARLIEST_TIME, EVENT_IDENTITY,
                                   FORBIDDEN_TEXT_CHARACTERS, TABLES, Table)
from leadre.data.importer import empty_table
from leadre.data.tables import DataError, Finding, load_table, shown_value, table_file, write_tables
from leadre.io import atomic_dir, portable_path, write_json

log = logging.getLogger(__name__)

FLOAT_MAX = float(np.finfo(np.float64).max)
# Frames whose rows are event rows: their findings are reported against the events file.
EVENT_REFERENCES = "event_references"
AD_LIFECYCLE = "ad_lifecycle"


@dataclass(frozen=True)
class Rule:
    """A contract rule as GX sees it: the expectation, the table its rows belong to, and what to quote."""

    expectation: Any
    table: str
    rule: str
    column: str | None = None
    quote: tuple[str, ...] = ()  # source columns shown for each offending row


def _gx():
    import great_expectations as gx  # ~5 s import: only when validating

    return gx


def table_rules(table: Table, snapshot: datetime) -> list[Rule]:
    """The per-table suite, generated from the contract."""
    E = _gx().expectations
    rules = [] if table.optional else [
        Rule(E.ExpectTableRowCountToBeBetween(min_value=1), table.name, "table has at least one row")]
    for c in table.columns:
        quote = (table.key, c.name) if c.name != table.key else (c.name,)
        if not c.nullable:
            rules.append(Rule(E.ExpectColumnValuesToNotBeNull(column=c.name), table.name, "not null", c.name, quote))
        if c.unique:
            rules.append(Rule(E.ExpectColumnValuesToBeUnique(column=c.name), table.name, "unique", c.name, quote))
        if c.kind == "float" or c.min is not None or c.max is not None:
            # inf passes "> 0" and NaN no comparison at all: a float rule bounds both ends with finite numbers (NaN
            # is a null here, which the not-null rule rejects where the column is required). int64 is finite by type.
            finite = c.kind == "float"
            bounds = f"{'>' if c.strict_min else '>='} {c.min:g}" if c.min is not None else ""
            bounds += (" and " if bounds and c.max is not None else "") + (f"<= {c.max:g}" if c.max is not None else "")
            rules.append(Rule(E.ExpectColumnValuesToBeBetween(
                column=c.name, strict_min=c.strict_min,
                min_value=-FLOAT_MAX if c.min is None and finite else c.min,
                max_value=FLOAT_MAX if c.max is None and finite else c.max),
                table.name, ("finite " if finite else "") + f"value {bounds}".strip(), c.name, quote))
        if c.kind == "timestamp":
            rules.append(Rule(E.ExpectColumnValuesToBeBetween(column=c.name, min_value=pd.Timestamp(EARLIEST_TIME)),
                              table.name, f"on or after {EARLIEST_TIME[:10]}", c.name, quote))
        if c.allowed:
            rules.append(Rule(E.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(c.allowed)),
                              table.name, f"one of {', '.join(c.allowed)}", c.name, quote))
        if c.pattern:
            rules.append(Rule(E.ExpectColumnValuesToMatchRegex(column=c.name, regex=c.pattern),
                              table.name, f"matches {c.pattern}", c.name, quote))
        if c.text:
            rules.append(Rule(E.ExpectColumnValuesToMatchRegex(column=c.name, regex=r"\S"),
                              table.name, "text is not blank", c.name, quote))
            rules.append(Rule(E.ExpectColumnValuesToNotMatchRegex(column=c.name, regex=FORBIDDEN_TEXT_CHARACTERS),
                              table.name, "no control or bidi characters", c.name, quote))
        if c.max_length is not None:
            rules.append(Rule(E.ExpectColumnValueLengthsToBeBetween(column=c.name, max_value=c.max_length),
                              table.name, f"length <= {c.max_length}", c.name, quote))
    snapshot_ts = pd.Timestamp(snapshot).tz_convert("UTC")
    if table.name == "ads":
        rules += [
            Rule(E.ExpectColumnValuesToBeBetween(column="created_at", max_value=snapshot_ts), "ads",
                 "ad launched no later than the snapshot", "created_at", ("ad_id", "created_at")),
            Rule(E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="expires_at", column_B="created_at",
                                                           ignore_row_if="either_value_is_missing"),
                 "ads", "expires_at after created_at", "expires_at", ("ad_id", "created_at", "expires_at")),
        ]
    if table.name == "events":
        rules += [
            Rule(E.ExpectColumnValuesToBeBetween(column="ts", max_value=snapshot_ts, strict_max=True), "events",
                 f"event before the snapshot {snapshot_ts.isoformat()}", "ts", ("user_id", "ts")),
        ]
    return rules


def event_references_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per event row: do its user and object exist, is it a copy of another event, is an ad event inside the ad's
    life, is the user's time order kept, does the action fit the domain and the content kind. Index = the event's
    row."""
    events, ads = tables["events"], tables["ads"]
    object_id = events["object_id"].to_numpy()
    known_object = np.zeros(len(events), dtype=bool)
    ad_row = np.full(len(events), -1)
    kind_codes, kind_labels = _codes(tables["contents"]["kind"])
    content_kind = np.full(len(events), -1, dtype=kind_codes.dtype)
    for name, key, dom in (("ads", "ad_id", "ad"), ("contents", "content_id", "content"), ("queries", "query_id", "search")):
        in_domain = (events["domain"] == dom).to_numpy()  # on categorical codes: no per-row strings
        rows = _lookup(tables[name][key].to_numpy(), object_id[in_domain])
        known_object[in_domain] = rows >= 0
        if dom == "ad":
            ad_row[in_domain] = rows
        if dom == "content":
            content_kind[np.flatnonzero(in_domain)[rows >= 0]] = kind_codes[rows[rows >= 0]]
    del object_id
    ts = _epoch_ms(events["ts"])
    created, expires = _epoch_ms(ads["created_at"]), _epoch_ms(ads["expires_at"])
    has_ad = np.flatnonzero(ad_row >= 0)
    # float64, not float32 at half the memory: GX compares only int64 and float64 columns vectorised and walks any
    # other dtype in Python, row by row (~10 s a column at 44M events)
    since_launch = np.full(len(events), np.nan)
    before_expiry = np.full(len(events), np.nan)
    since_launch[has_ad] = ts[has_ad] - created[ad_row[has_ad]]
    before_expiry[has_ad] = expires[ad_row[has_ad]] - ts[has_ad]
    del ad_row, has_ad
    user = events["user_id"].to_numpy()
    # GX's compound-unique expectation factorises every column of 44M rows (~70 s); this finds the same rows. ts as
    # its float64 bits: equal bits, equal times (NaT is one NaN)
    domain, action = _codes(events["domain"]), _codes(events["action"])
    duplicate = _duplicated([user, ts.view(np.int64), domain[0], action[0], events["object_id"].to_numpy()])
    since_previous = np.full(len(events), np.nan)
    same_user = np.flatnonzero(user[1:] == user[:-1]) + 1  # "ordered per user" means in file order within a user
    since_previous[same_user] = ts[same_user] - ts[same_user - 1]
    del same_user, ts
    return pd.DataFrame({
        "user_known": _lookup(tables["users"]["user_id"].to_numpy(), user) >= 0,
        "object_known": known_object,
        "duplicate_event": duplicate,
        "ms_since_ad_launch": since_launch,
        "ms_before_ad_expiry": before_expiry,
        "ms_since_previous_user_event": since_previous,
        "domain_action": _pair_labels(domain, action),
        "action_content_kind": _pair_labels(action, (content_kind, kind_labels)),
    }, copy=False)  # the arrays are ours: no second copy of 40M-row columns


def ad_lifecycle_frame(tables: dict[str, pd.DataFrame], snapshot: datetime) -> pd.DataFrame:
    """Per ad row: its status next to whether its expiry has passed at the snapshot."""
    expires = _epoch_ms(tables["ads"]["expires_at"])
    snapshot_ms = pd.Timestamp(snapshot).value // 1_000_000
    expired_by_time = (expires <= snapshot_ms).astype(int)  # NaN (no expiry) compares False: never expired
    return pd.DataFrame({"status_expired_by_time": _pair_labels(_codes(tables["ads"]["status"]),
                                                                (expired_by_time, np.array(["no", "yes"])))})


def _codes(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (-1 for null) and their labels, straight from a categorical's codes when it is one."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return series.cat.codes.to_numpy(), series.cat.categories.to_numpy()
    return pd.factorize(series)


def _pair_labels(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> pd.Categorical:
    """"a:b" per row (null if either is) from two (codes, labels) pairs, as a categorical built from codes.

    GX's pair-in-set expectation walks rows in Python (hours at 40M events); a set check on one derived column is
    vectorised and reports the same rows.
    """
    (codes_a, labels_a), (codes_b, labels_b) = a, b
    codes_a, codes_b = codes_a.astype(np.int64), codes_b.astype(np.int64)
    pairs = [f"{x}:{y}" for x in labels_a for y in labels_b]
    codes = np.where((codes_a < 0) | (codes_b < 0), -1, codes_a * max(len(labels_b), 1) + codes_b)
    if len(set(pairs)) < len(pairs):  # values containing ":" collide as labels: spell each row out instead
        return pd.Categorical(np.where(codes < 0, None, np.array(pairs + [None], dtype=object)[codes]))
    return pd.Categorical.from_codes(codes, categories=pairs)


def _duplicated(columns: list[np.ndarray]) -> np.ndarray:
    """Rows equal to another row in every column, every copy flagged (as `DataFrame.duplicated(keep=False)`).

    Exact: a 64-bit mix of the columns picks candidate rows with one sort of 64-bit integers (a third of the time
    of pandas' hash table at 44M rows), and only those rows (true copies, plus the rare mix collision) are compared
    column by column.
    """
    mixed = np.zeros(len(columns[0]), dtype=np.uint64)
    for values in columns:
        mixed ^= values.astype(np.int64, copy=False).view(np.uint64)
        mixed *= np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64, as a hash mix should
        mixed ^= mixed >> np.uint64(29)
    ordered = np.sort(mixed)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    candidates = np.flatnonzero(np.isin(mixed, repeated)) if len(repeated) else np.array([], dtype=np.int64)
    duplicated = np.zeros(len(mixed), dtype=bool)
    if len(candidates):
        full = pd.DataFrame({i: values[candidates] for i, values in enumerate(columns)})
        duplicated[candidates] = full.duplicated(keep=False).to_numpy()
    return duplicated


def _lookup(keys: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Row of each target in `keys` (first occurrence; duplicate keys are the unique rule's finding), -1 if absent."""
    index = pd.Index(keys)
    if index.is_unique:
        return index.get_indexer(targets)
    first = ~index.duplicated()
    rows = index[first].get_indexer(targets)
    return np.where(rows >= 0, np.flatnonzero(first)[rows], -1)


def _epoch_ms(series: pd.Series) -> np.ndarray:
    """Milliseconds since the epoch as float, NaN where the timestamp is missing (so no rule fires on it twice)."""
    values = series.dt.tz_convert(None).to_numpy().astype("datetime64[ms]")
    return np.where(np.isnat(values), np.nan, values.astype(np.int64).astype(np.float64))


def cross_table_rules(snapshot: datetime) -> list[Rule]:
    E = _gx().expectations
    # the snapshot is named in the rule: a wrong one (data.snapshot_time, or the import manifest's) shows at once
    snapshot_ts = pd.Timestamp(snapshot).tz_convert("UTC")
    ev = ("user_id", "ts", "domain", "object_id")
    return [
        Rule(E.ExpectColumnValuesToBeInSet(column="user_known", value_set=[True]), EVENT_REFERENCES,
             "event's user exists in users", "user_id", ("user_id", "ts")),
        Rule(E.ExpectColumnValuesToBeInSet(column="object_known", value_set=[True]), EVENT_REFERENCES,
             "event's object exists in its domain's table (ads, contents or queries)", "object_id", ev),
        Rule(E.ExpectColumnValuesToBeInSet(column="duplicate_event", value_set=[False]), EVENT_REFERENCES,
             "no duplicate event", None, EVENT_IDENTITY),
        Rule(E.ExpectColumnValuesToBeBetween(column="ms_since_ad_launch", min_value=0), EVENT_REFERENCES,
             "ad event not before the ad's created_at", "ts", ev),
        Rule(E.ExpectColumnValuesToBeBetween(column="ms_before_ad_expiry", min_value=0, strict_min=True),
             EVENT_REFERENCES, "ad event before the ad's expires_at", "ts", ev),
        Rule(E.ExpectColumnValuesToBeInSet(column="domain_action", value_set=[
            f"{domain}:{action}" for domain, actions in ACTIONS_BY_DOMAIN.items() for action in actions]),
            EVENT_REFERENCES, "action allowed for the domain", "action", ("user_id", "domain", "action")),
        Rule(E.ExpectColumnValuesToBeInSet(column="action_content_kind", value_set=[
            f"{action}:{kind}" for kind, action in ACTION_BY_CONTENT_KIND.items()]),
            EVENT_REFERENCES, "content action matches the content kind", "action", ("user_id", "action", "object_id")),
        Rule(E.ExpectColumnValuesToBeBetween(column="ms_since_previous_user_event", min_value=0), EVENT_REFERENCES,
             "timestamps ordered per user", "ts", ("user_id", "ts")),
        Rule(E.ExpectColumnValuesToBeInSet(column="status_expired_by_time",
                                           value_set=["expired:yes", "active:no", "paused:no"]),
             AD_LIFECYCLE, f"status is expired exactly when expires_at <= snapshot {snapshot_ts.isoformat()}", "status",
             ("ad_id", "expires_at", "status")),
    ]


def _report_table(frame_name: str) -> str:
    return {EVENT_REFERENCES: "events", AD_LIFECYCLE: "ads"}.get(frame_name, frame_name)


def _quote(frame: pd.DataFrame, row: int, columns: tuple[str, ...]) -> str:
    values = {c: frame[c].iloc[row] for c in columns if c in frame.columns}
    return ", ".join(f"{c}={shown_value(v)}" for c, v in values.items())


def run_suites(frames: dict[str, Callable[[], pd.DataFrame]], rules: list[Rule], tables: dict[str, pd.DataFrame],
               files: dict[str, Path], examples: int, docs_dir: Path | None) -> tuple[list[Finding], dict]:
    """Validate every frame against its suite; return findings and per-table counts.

    Frames come as callables, built just before their suite runs and dropped after it: at 40M events a derived
    frame held while GX checks another costs gigabytes of peak memory.
    """
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("leadre")
    definitions, by_suite = [], {}
    for frame_name in frames:
        suite_rules = [r for r in rules if r.table == frame_name]
        suite = context.suites.add(gx.ExpectationSuite(name=frame_name))
        for number, rule in enumerate(suite_rules):
            # GX reorders results; the number in meta maps each result back to its rule.
            rule.expectation.meta = {"rule": rule.rule, "table": _report_table(frame_name), "number": number}
            suite.add_expectation(rule.expectation)
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe("snapshot")
        definitions.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=frame_name, data=batch, suite=suite)))
        by_suite[frame_name] = suite_rules
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name="leadre", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["leadre"]))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": examples}
    findings, counts = [], {}
    for definition, frame_name in zip(definitions, frames):
        # One checkpoint per frame: a checkpoint passes the same batch parameters (here, the dataframe) to all of
        # its definitions. They share the data docs site, so its index lists every table.
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"leadre_{frame_name}", validation_definitions=[definition], actions=actions,
            result_format=result_format))
        outcome = next(iter(checkpoint.run(batch_parameters={"dataframe": frames[frame_name]()}).run_results.values()))
        table = _report_table(frame_name)
        stats = counts.setdefault(table, {"expectations": 0, "failed": 0})
        for res in outcome.results:
            rule = by_suite[frame_name][res.expectation_config.meta["number"]]
            stats["expectations"] += 1
            if res.success:
                continue
            stats["failed"] += 1
            raised = (res.exception_info or {}).get("raised_exception")
            detail = (res.exception_info or {}).get("exception_message") if raised else None
            rows = [int(i) for i in (res.result.get("partial_unexpected_index_list") or [])][:examples]
            source_frame = tables[table]
            findings.append(Finding(
                file=str(files[table]), rule=rule.rule, table=table, column=rule.column,
                count=res.result.get("unexpected_count") if not raised else None,
                rows=[r + 1 for r in rows],
                examples=[_quote(source_frame, r, rule.quote) for r in rows] if rule.quote else [],
                detail=detail or (None if rows or raised else _observed(res.result)),
            ))
    return findings, counts


def _observed(result: dict) -> str | None:
    return f"observed {result['observed_value']}" if "observed_value" in result else None


def _as_ids(series: pd.Series) -> np.ndarray:
    """Ids as int64 with -1 for missing ones (contract ids are >= 0, so -1 never matches a row)."""
    return series.fillna(-1).astype("int64").to_numpy()


def load_source(source: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Path], list[Finding]]:
    """Load every table of `source` through the contract loader, collecting structural findings."""
    tables, files, findings = {}, {}, []
    for name in TABLES:
        try:
            files[name] = table_file(source, name)
        except DataError as err:
            if CONTRACTS[name].optional and not any(source.glob(f"{name}.*")):
                files[name], tables[name] = source / f"{name}.parquet", empty_table(name)
            else:
                findings += err.findings
            continue
        try:
            tables[name] = load_table(files[name], name)
        except DataError as err:
            findings += err.findings
    return tables, files, findings


def run_validate(params: Params, source_dir: Path | None = None) -> dict:
    """Validate `source_dir` (default data.source_dir); write reports, and validated data only if all rules hold."""
    started = time.perf_counter()
    settings = params.validation
    source = Path(source_dir) if source_dir else params.path(params.data.source_dir)
    snapshot = params.snapshot_of(source)
    reports_dir = params.path(settings.reports_dir)
    tables, files, findings = load_source(source)
    counts: dict = {}
    with atomic_dir(reports_dir) as tmp:
        if not findings:  # GX runs on tables that loaded; a structural error already says what to fix first
            with_int_ids = _with_int_ids(tables)
            frames = {name: (lambda frame=frame: frame) for name, frame in tables.items()}
            frames[EVENT_REFERENCES] = lambda: event_references_frame(with_int_ids)
            frames[AD_LIFECYCLE] = lambda: ad_lifecycle_frame(with_int_ids, snapshot)
            rules = [r for name in TABLES for r in table_rules(CONTRACTS[name], snapshot)] + cross_table_rules(snapshot)
            findings, counts = run_suites(frames, rules, tables, files, settings.examples_per_rule,
                                          tmp / "data_docs" if settings.data_docs else None)
        n_expectations = sum(c["expectations"] for c in counts.values())
        # Paths relative to the project and no wall time: the summary of a passing run is the same bytes in every
        # clone (DVC hashes it, as it hashes the metrics file below); the run's seconds go to the log only.
        summary = {
            "status": "failed" if findings else "passed",
            "source": portable_path(source, params.root),
            "snapshot_time": snapshot.isoformat(),
            "tables": {name: {"file": portable_path(files[name], params.root) if name in files else "",
                              "rows": len(tables[name]) if name in tables else None,
                              **counts.get(name, {})} for name in TABLES},
            "failures": [{**asdict(f), "message": str(f)} for f in findings],
        }
        write_json(tmp / "summary.json", summary)
    write_json(params.path(settings.metrics_file), {
        "passed": not findings,
        "rules_failed": len(findings),
        "expectations": n_expectations,
        "rows": {name: len(frame) for name, frame in tables.items()},
    })
    if findings:
        raise DataError(findings, headline=f"validation of {source} failed: {len(findings)} rule(s) broken "
                                           f"(full report: {reports_dir / 'summary.json'})")
    validated_dir = params.path(params.data.validated_dir)
    manifest = {"source": portable_path(source, params.root), "snapshot_time": snapshot.isoformat(),
                "expectations": n_expectations}
    write_tables(tables, validated_dir, manifest)
    log.info("validated %s → %s in %.1fs", source, validated_dir, time.perf_counter() - started)
    return summary


def _with_int_ids(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Cross-table joins need plain int64 ids; nulls (already a not-null finding) become -1 and match nothing."""
    id_columns = {"users": ["user_id"], "ads": ["ad_id"], "contents": ["content_id"], "queries": ["query_id"],
                  "events": ["user_id", "object_id"]}
    out = {}
    for name, frame in tables.items():
        columns = {c: _as_ids(frame[c]) for c in id_columns[name] if frame[c].dtype != np.int64}
        out[name] = frame.assign(**columns) if columns else frame
    return out
