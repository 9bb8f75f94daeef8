"""`leadre data import`: bring your own logs (CSV or Parquet in the documented contract) into the platform.

Each table is read through the contract loader, with an optional column mapping for files whose column names
differ, and written as canonical Parquet to data.imported_dir (track it with `dvc add data/imported`). Import checks
structure and types; `leadre data validate` then checks every rule.

Mapping file (YAML), every key optional:

    events:
      file: clickstream.csv        # default: events.parquet or events.csv in the source folder
      columns: {object_id: item_id, ts: event_time}   # contract name: your column name

Single-domain logs: the contents and queries files may be left out (empty tables). Optional ad columns (contract
`optional`) may be left out too; import fills `AD_DEFAULTS` and the manifest's `defaulted` lists what it filled.

`--format recbole`: a RecBole atomic dataset (NAME.inter, optional NAME.item and NAME.user), see `read_recbole`.

The snapshot ("now" for the data) goes into the manifest, where every later step finds it (`Params.snapshot_of`):
`data.snapshot_time` when given (e.g. `-S data.snapshot_time=...` on the import), else the data's own, the earliest
instant the data allows: one second after the last event, and no earlier than any ad's launch or any expired ad's
expiry.
"""

from __future__ import annotations

import csv
import logging
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from leadre.config import Params, RecboleImportParams
from leadre.data.contracts import AD_DEFAULTS, CONTRACTS, TABLES, USERS
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


FORMATS = ("contract", "recbole")
PANDAS_KIND = {"int": "int64", "float": "float64", "str": object, "category": "category",
               "timestamp": "datetime64[ms, UTC]"}


def empty_table(name: str) -> pd.DataFrame:
    """A table with the contract's columns and types and no rows: what an absent optional table reads as."""
    return pd.DataFrame({c.name: pd.Series([], dtype=PANDAS_KIND[c.kind]) for c in CONTRACTS[name].columns})


def run_import(params: Params, source: Path, mapping_file: Path | None = None, out_dir: Path | None = None,
               format: str = "contract") -> dict:
    source = Path(source)
    if format == "recbole":
        if mapping_file is not None:
            raise DataError([Finding(str(mapping_file), "a mapping applies to contract files only", "mapping",
                                     detail="--format recbole reads the atomic files' typed headers")])
        tables, notes = read_recbole(source, params.data.recbole)
    elif format == "contract":
        tables, notes = _read_contract_files(source, read_mapping(mapping_file))
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    snapshot = params.data.snapshot_setting or data_snapshot(tables)
    defaulted = fill_ad_defaults(tables, snapshot)
    out_dir = out_dir or params.path(params.data.imported_dir)
    manifest = {"source": "imported", "format": format, "from": portable_path(source, params.root),
                "snapshot_time": pd.Timestamp(snapshot).isoformat(),
                "snapshot_from": "data.snapshot_time" if params.data.snapshot_setting else "data",
                "defaulted": {"ads": defaulted}, **notes}
    counts = write_tables(tables, out_dir, manifest)
    log.info("imported %s into %s (snapshot %s)", counts, out_dir, manifest["snapshot_time"])
    return counts


def _read_contract_files(source: Path, mapping: dict[str, dict]) -> tuple[dict[str, pd.DataFrame], dict]:
    tables, findings, absent = {}, [], []
    for name in TABLES:
        spec = mapping.get(name, {})
        if "file" not in spec and CONTRACTS[name].optional and not any(source.glob(f"{name}.*")):
            tables[name] = empty_table(name)
            absent.append(name)
            continue
        try:
            path = source / spec["file"] if "file" in spec else table_file(source, name)
            tables[name] = load_table(path, name, spec.get("columns"))
        except DataError as err:
            findings += err.findings
    if findings:
        raise DataError(findings, headline=f"import of {source} failed; nothing was written")
    return tables, {"absent_tables": absent} if absent else {}


def data_snapshot(tables: dict[str, pd.DataFrame]) -> datetime:
    """The earliest snapshot the data allows: after its last event, not before any ad's launch, and not before the
    expiry of an ad it calls expired (status is `expired` exactly when expires_at <= snapshot)."""
    ads, events = tables["ads"], tables["events"]
    if events.empty:
        raise DataError([Finding("events", "at least one event", "events",
                                 detail="the snapshot is taken from the data; give one with -S data.snapshot_time=")])
    candidates = [events["ts"].max() + pd.Timedelta(seconds=1)]
    if ads["created_at"].notna().any():
        candidates.append(ads["created_at"].max())
    expired = (ads["status"].astype(object) == "expired") & ads["expires_at"].notna()
    if expired.any():
        candidates.append(ads.loc[expired, "expires_at"].max())
    return max(candidates).to_pydatetime()


def fill_ad_defaults(tables: dict[str, pd.DataFrame], snapshot: datetime) -> list[str]:
    """Fill the optional ad columns the data left empty with AD_DEFAULTS; return the columns filled (wholly or
    partly). Only a column absent from the file is null throughout; a value missing from a present column is the
    same gap and gets the same default."""
    ads, events = tables["ads"], tables["events"]
    filled = [c.name for c in CONTRACTS["ads"].columns if c.optional and c.name != "expires_at"
              and ads[c.name].isna().any()]
    for name in filled:
        gap = ads[name].isna()
        if name == "description":
            value = ads["title"]
        elif name == "created_at":
            engaged = events[events["domain"].astype(object) == "ad"]
            first = engaged.groupby("object_id")["ts"].min()
            earliest = events["ts"].min() if len(events) else pd.Timestamp(snapshot)
            value = ads["ad_id"].map(first).fillna(earliest).astype("datetime64[ms, UTC]")
        elif name == "status":
            expired = ads["expires_at"].notna() & (ads["expires_at"] <= pd.Timestamp(snapshot))
            value = pd.Series(np.where(expired, "expired", "active"), index=ads.index)
        else:
            value = pd.Series(float(AD_DEFAULTS[name]) if name == "bid" else AD_DEFAULTS[name], index=ads.index)
        column = ads[name].astype(object).where(~gap, value.astype(object))
        ads[name] = column.astype(PANDAS_KIND[CONTRACTS["ads"].column(name).kind])
    if ads["expires_at"].isna().any():
        filled.append("expires_at")  # no value needed: null means never expires, but the manifest says it
    return filled


# --- RecBole atomic files ---------------------------------------------------------------------------------------

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
# RecBole's default field names (USER_ID_FIELD, ITEM_ID_FIELD, TIME_FIELD, RATING_FIELD)
USER_FIELD, ITEM_FIELD, TIME_FIELD, RATING_FIELD = "user_id", "item_id", "timestamp", "rating"
GENDERS = {"m": "male", "male": "male", "f": "female", "female": "female"}
PROFILE_FIELDS = {"gender": "gender", "age": "age", "occupation": "occupation", "education": "education",
                  "residence": "residence", "city": "residence", "location": "residence"}


def _atomic_file(path: Path, suffix: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """One atomic file as text columns named by field, and each field's declared type."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""],
                            quoting=csv.QUOTE_NONE, encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError([Finding(str(path), "text is UTF-8", suffix, detail=str(err))]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError([Finding(str(path), "tab-separated atomic file", suffix, detail=str(err))]) from None
    types, problems = {}, []
    for header in frame.columns:
        name, sep, kind = str(header).rpartition(":")
        if not sep or not name or kind not in RECBOLE_TYPES:
            problems.append(Finding(str(path), "header is field:type", suffix, str(header),
                                    detail=f"type one of {', '.join(RECBOLE_TYPES)}"))
        elif name in types:
            problems.append(Finding(str(path), "field names are unique", suffix, name))
        types[name] = kind
    if problems:
        raise DataError(problems)
    frame.columns = list(types)
    return frame, types


def _require(path: Path, suffix: str, types: dict[str, str], field: str, kinds: tuple[str, ...]) -> None:
    if field not in types:
        raise DataError([Finding(str(path), f"field {field!r} present", suffix, field,
                                 detail=f"header has {', '.join(f'{n}:{t}' for n, t in types.items())}")])
    if types[field] not in kinds:
        raise DataError([Finding(str(path), f"field is of type {' or '.join(kinds)}", suffix, field,
                                 detail=f"declared {types[field]}")])


def _numbers(path: Path, suffix: str, values: pd.Series, field: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy() | ~np.isfinite(numbers.fillna(0).to_numpy())
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise DataError([Finding(str(path), "values are finite numbers", suffix, field, int(bad.sum()),
                                 rows=[int(r) + 1 for r in rows], examples=[repr(values.iloc[r]) for r in rows])])
    return numbers.to_numpy(np.float64)


def _ids(tokens: pd.Series) -> pd.Series:
    """Token → int64 id, indexed by token: the token itself when every token is a non-negative integer (ids stay
    recognisable), else its rank in sorted order."""
    distinct = pd.Index(pd.unique(tokens.dropna()))
    if distinct.str.fullmatch(r"[0-9]{1,18}").all():
        return pd.Series(distinct.astype(np.int64), index=distinct)
    distinct = distinct.sort_values()
    return pd.Series(np.arange(len(distinct), dtype=np.int64), index=distinct)


def _slug(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", str(text).lower())).strip("_") or "unknown"


def read_recbole(folder: Path, settings: RecboleImportParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """A RecBole atomic dataset as contract tables, and notes for the manifest.

    - NAME.inter (one per folder): `user_id:token`, `item_id:token`, `timestamp:float` (seconds since the epoch)
      are required; every interaction becomes a click, and with `conversion_rating` a rating at or above it adds a
      conversion one second later.
    - NAME.item (optional): items become ads. Title: the first of `title_fields` present (else `item <id>`);
      industry: `<field>/<slug of the first token>` from the first of `category_fields` present (else
      `item/unknown`); eCPM: an `ecpm:float` field, else a seeded log-normal draw (`synthetic_ecpm` in the
      manifest). The optional ad columns get AD_DEFAULTS.
    - NAME.user (optional): gender (m/f/male/female, else `unknown`), age (ages outside the contract's range are
      nulled and counted in the manifest), occupation, education, residence/city/location; any other field is kept
      in `attributes` as `name=value`.
    Contents and queries are empty: a single-domain dataset.
    """
    folder = Path(folder)
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise DataError([Finding(str(folder), "exactly one NAME.inter file", "events",
                                 detail=f"found {len(inters)}: {[p.name for p in inters]}")])
    stem = inters[0].with_suffix("")
    inter, types = _atomic_file(inters[0], "inter")
    for field, kinds in ((USER_FIELD, ("token",)), (ITEM_FIELD, ("token",)), (TIME_FIELD, ("float",))):
        _require(inters[0], "inter", types, field, kinds)
    if settings.conversion_rating is not None:
        _require(inters[0], "inter", types, RATING_FIELD, ("float",))
    seconds = _numbers(inters[0], "inter", inter[TIME_FIELD], TIME_FIELD)

    item_path, user_path = stem.with_suffix(".item"), stem.with_suffix(".user")
    items, item_types = _atomic_file(item_path, "item") if item_path.exists() else (pd.DataFrame(), {})
    users, user_types = _atomic_file(user_path, "user") if user_path.exists() else (pd.DataFrame(), {})
    if item_types:
        _require(item_path, "item", item_types, ITEM_FIELD, ("token",))
    if user_types:
        _require(user_path, "user", user_types, USER_FIELD, ("token",))
    item_id = _ids(pd.concat([inter[ITEM_FIELD], items.get(ITEM_FIELD, pd.Series(dtype=str))]))
    user_id = _ids(pd.concat([inter[USER_FIELD], users.get(USER_FIELD, pd.Series(dtype=str))]))

    events = _recbole_events(inter, seconds, user_id, item_id, settings)
    ads, ad_notes = _recbole_ads(item_path, items, item_types, item_id, settings)
    profiles, user_notes = _recbole_users(user_path, users, user_types, user_id)
    tables = {"users": profiles, "ads": ads, "contents": empty_table("contents"), "queries": empty_table("queries"),
              "events": events}
    return tables, {"recbole": {"dataset": stem.name, **ad_notes, **user_notes}}


def _recbole_events(inter: pd.DataFrame, seconds: np.ndarray, user_id: pd.Series, item_id: pd.Series,
                    settings: RecboleImportParams) -> pd.DataFrame:
    ts = pd.to_datetime(np.round(seconds * 1000).astype(np.int64), unit="ms", utc=True)
    clicks = pd.DataFrame({"user_id": user_id.reindex(inter[USER_FIELD]).to_numpy(), "ts": ts,
                           "action": "click_ad", "object_id": item_id.reindex(inter[ITEM_FIELD]).to_numpy()})
    parts = [clicks]
    if settings.conversion_rating is not None:
        rating = pd.to_numeric(inter[RATING_FIELD], errors="coerce").to_numpy()
        converted = clicks[rating >= settings.conversion_rating].assign(action="convert_ad")
        parts.append(converted.assign(ts=converted["ts"] + pd.Timedelta(seconds=1)))
    events = pd.concat(parts, ignore_index=True).sort_values(["user_id", "ts"], kind="stable")
    events = events.drop_duplicates(["user_id", "ts", "action", "object_id"]).reset_index(drop=True)
    events["domain"] = "ad"
    events = events[["user_id", "ts", "domain", "action", "object_id"]]
    for column in ("domain", "action"):
        events[column] = events[column].astype("category")
    events["ts"] = events["ts"].astype("datetime64[ms, UTC]")
    return events


def _recbole_ads(path: Path, items: pd.DataFrame, types: dict[str, str], item_id: pd.Series,
                 settings: RecboleImportParams) -> tuple[pd.DataFrame, dict]:
    by_token = items.drop_duplicates(ITEM_FIELD).set_index(ITEM_FIELD) if len(items) else pd.DataFrame()
    tokens = item_id.index
    title_field = next((f for f in settings.title_fields if f in types), None)
    category_field = next((f for f in settings.category_fields if f in types), None)
    max_title = CONTRACTS["ads"].column("title").max_length
    if title_field:
        titles = by_token[title_field].reindex(tokens)
        titles = titles.where(titles.notna(), "item " + pd.Series(tokens, index=tokens))
    else:
        titles = "item " + pd.Series(tokens, index=tokens)
    if category_field:
        first = by_token[category_field].reindex(tokens).fillna("").str.split().str[0].fillna("")
        industry = _slug(category_field) + "/" + first.map(_slug)
    else:
        industry = pd.Series("item/unknown", index=tokens)
    notes = {"title_field": title_field, "category_field": category_field}
    if "ecpm" in types:
        ecpm = pd.Series(_numbers(path, "item", by_token["ecpm"], "ecpm"), index=by_token.index).reindex(tokens)
        notes["synthetic_ecpm"] = False
    else:
        rng = np.random.default_rng(settings.ecpm_seed)
        ecpm = pd.Series(settings.ecpm_median * np.exp(settings.ecpm_sigma * rng.standard_normal(len(tokens))),
                         index=tokens)
        notes["synthetic_ecpm"] = True
        notes["ecpm"] = f"log-normal, median {settings.ecpm_median:g}, sigma {settings.ecpm_sigma:g}, " \
                        f"seed {settings.ecpm_seed}"
    ads = pd.DataFrame({"ad_id": item_id.to_numpy(), "title": titles.str.slice(0, max_title).to_numpy(),
                        "industry": pd.Categorical(industry.to_numpy()), "ecpm": ecpm.to_numpy()})
    for column in CONTRACTS["ads"].columns:
        if column.name not in ads:
            ads[column.name] = pd.Series([None] * len(ads), dtype=object)
    ads = ads.sort_values("ad_id", kind="stable").reset_index(drop=True)
    ads["created_at"] = ads["created_at"].astype("datetime64[ms, UTC]")
    ads["expires_at"] = ads["expires_at"].astype("datetime64[ms, UTC]")
    return ads[list(CONTRACTS["ads"].column_names)], notes


def _recbole_users(path: Path, users: pd.DataFrame, types: dict[str, str],
                   user_id: pd.Series) -> tuple[pd.DataFrame, dict]:
    by_token = users.drop_duplicates(USER_FIELD).set_index(USER_FIELD).reindex(user_id.index) if len(users) \
        else pd.DataFrame(index=user_id.index)
    out = pd.DataFrame({"user_id": user_id.to_numpy()})
    mapped = {field: PROFILE_FIELDS[field] for field in types if field in PROFILE_FIELDS}
    notes: dict = {}
    for field, column in mapped.items():
        values = by_token[field]
        if column == "gender":
            out[column] = values.str.lower().map(GENDERS).fillna("unknown").to_numpy()
        elif column == "age":
            age = pd.to_numeric(values, errors="coerce")
            contract = USERS.column("age")
            outside = values.notna() & ~(age.between(contract.min, contract.max) & (age % 1 == 0))
            if outside.any():
                notes["ages_nulled"] = int(outside.sum())
                log.warning("%s: %d ages outside %g..%g (or not whole years) nulled, e.g. %s", path,
                            int(outside.sum()), contract.min, contract.max, values[outside].iloc[:3].tolist())
            out[column] = age.where(~outside).astype("Int64").to_numpy()
        else:
            out[column] = values.str.slice(0, USERS.column(column).max_length).to_numpy()
    extra = [f for f in types if f != USER_FIELD and f not in mapped]
    if extra:
        pieces = [(f + "=" + by_token[f].astype(str)).where(by_token[f].notna()) for f in extra]
        joined = pd.concat(pieces, axis=1).apply(lambda row: "; ".join(v for v in row if isinstance(v, str)), axis=1)
        out["attributes"] = joined.where(joined != "").str.slice(0, USERS.column("attributes").max_length).to_numpy()
        notes["user_attributes"] = extra
    for column in USERS.columns:
        if column.name not in out:
            out[column.name] = pd.Series([None] * len(out), dtype=object)
    for column in ("gender", "education", "occupation"):
        out[column] = out[column].astype("category")
    out["age"] = out["age"].astype("Int64")
    return out.sort_values("user_id", kind="stable").reset_index(drop=True)[list(USERS.column_names)], notes
