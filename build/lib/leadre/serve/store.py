"""The candidate store: the near-line job's per-user top-N ads, published as whole snapshots.

A snapshot is every active user's candidates from one near-line run, tagged with the model version that ranked them
and the time the run started. `write_snapshot` publishes a new one atomically: a reader sees the previous snapshot or
the new one, never a mix, and the previous one stays readable until the swap. Two implementations share this contract:

- `SQLiteCandidateStore` (leadre/serve/sqlite_store.py): the embedded default, one file, no server;
- `RedisCandidateStore` (leadre/serve/redis_store.py): for production, shared by every serving replica.

A sharded near-line run stages instead: each shard writes its part with `stage_part` (concurrently, unseen by
readers) and the merge's `publish_staged` switches to the snapshot of all parts with the same single swap.

`open_store("sqlite:///path")` or `open_store("redis://host:6379/0")` picks one from a URL; store options ride in the
URL's query string (e.g. `redis://host/0?namespace=leadre:cand&old_snapshot_ttl_s=600`).

Candidates travel as one blob per user: int64 ad ids then float32 scores, little-endian, sorted by score (highest
first) and de-duplicated at write time, so the online path decodes with two `np.frombuffer` calls and never sorts.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from leadre.errors import UserError

if TYPE_CHECKING:
    from leadre.serve.redis_store import RedisCandidateStore
    from leadre.serve.sqlite_store import SQLiteCandidateStore

__all__ = [
    "Candidates", "CandidateStore", "SnapshotInfo", "StoreError", "open_store",
    "SQLiteCandidateStore", "RedisCandidateStore",
]

AD_ID_DTYPE = np.dtype("<i8")
SCORE_DTYPE = np.dtype("<f4")
_ITEM_BYTES = AD_ID_DTYPE.itemsize + SCORE_DTYPE.itemsize
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Snapshot ids become SQLite table names and Redis key parts: keep them to a shape that is safe in both.
SNAPSHOT_ID_PATTERN = re.compile(r"^s[0-9a-f]{12}_[0-9a-f]{8}$")
# A snapshot no registered model ranked (the near-line job with no champion publishes a baseline's lists) is labelled
# `fallback:<baseline>` where a model version would be: registry versions are numbers, so the two never collide, and
# both stores, their readers and the metrics keep one string field.
FALLBACK_PREFIX = "fallback:"
# A staged snapshot's name, agreed by its shards (leadre/serve/nearline.py derives it from the run): a table name
# part in SQLite, a key part in Redis.
STAGING_PATTERN = re.compile(r"^[a-z0-9_]{1,64}$")


class StoreError(UserError, ValueError):
    """Rows handed to `write_snapshot` (or a store URL) are malformed; the message names the row or option."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    snapshot_id: str
    model_version: str
    created_at: datetime  # when the near-line run that produced it started (what staleness is measured from)
    published_at: datetime
    users: int

    def as_dict(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "model_version": self.model_version,
                "created_at": self.created_at.isoformat(), "published_at": self.published_at.isoformat(),
                "users": self.users}


@dataclass(frozen=True, slots=True)
class Candidates:
    """One user's candidates, all from one snapshot. Arrays are read-only views of the stored blob."""

    ad_ids: np.ndarray  # int64, best first
    scores: np.ndarray  # float32, non-increasing
    model_version: str
    created_at: datetime
    snapshot_id: str
    created_ts: float  # created_at as epoch seconds: the hot path compares it without touching datetime


@runtime_checkable
class CandidateStore(Protocol):
    def write_snapshot(self, rows: Any, model_version: str, created_at: datetime | None = None) -> SnapshotInfo:
        """Publish `rows` (DataFrame or iterable of user_id, ad_ids, scores) as the new current snapshot."""

    def get(self, user_id: int) -> Candidates | None:
        """The user's candidates in the current snapshot, or None (unknown user or no snapshot yet)."""

    def snapshot_info(self) -> SnapshotInfo | None:
        """The current snapshot's metadata, or None before the first publish."""

    def stage_part(self, staging: str, shard: int, shards: int, rows: Any, model_version: str,
                   created_at: datetime | None = None) -> int:
        """Write shard `shard` of `shards` into the staged snapshot `staging`, unseen by readers; returns its users.

        Shards (processes or pods) write their parts concurrently; writing a part again replaces it (a retry)."""

    def publish_staged(self, staging: str, shards: int) -> SnapshotInfo:
        """Make the staged snapshot (every one of its `shards` parts) current in one swap, as `write_snapshot` does."""

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers for the implementations


def new_snapshot_id(now: datetime) -> str:
    """Sortable by publish time (ms, hex), unique across writers (random suffix)."""
    return f"s{int(now.timestamp() * 1000):012x}_{uuid.uuid4().hex[:8]}"


def check_snapshot_id(snapshot_id: str) -> str:
    if not SNAPSHOT_ID_PATTERN.match(snapshot_id):
        raise StoreError(f"corrupt store: snapshot id {snapshot_id!r} does not match {SNAPSHOT_ID_PATTERN.pattern}")
    return snapshot_id


def check_staging(staging: str, shard: int | None = None, shards: int = 1) -> str:
    if not isinstance(staging, str) or not STAGING_PATTERN.match(staging):
        raise StoreError(f"staging name {staging!r} does not match {STAGING_PATTERN.pattern}")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise StoreError(f"staging {staging}: the shard count must be a positive integer, got {shards!r}")
    if shard is not None and (isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards):
        raise StoreError(f"staging {staging}: shard {shard!r} is not in 0..{shards - 1}")
    return staging


@dataclass(frozen=True, slots=True)
class StagedPart:
    """What a shard recorded beside its rows: the publish checks the parts belong together."""

    shard: int
    shards: int
    model_version: str
    created_at: datetime
    users: int


def check_staged(staging: str, parts: Iterable[StagedPart], shards: int) -> tuple[str, datetime, int]:
    """(model version, created_at of the earliest shard, users) of a complete staging; else a StoreError naming the
    missing or mismatched part, and nothing is published."""
    parts = sorted(parts, key=lambda part: part.shard)
    found = {part.shard for part in parts if part.shards == shards}
    missing = [i for i in range(shards) if i not in found]
    if missing:
        raise StoreError(f"staging {staging}: shard(s) {missing} of {shards} have not written their part; the "
                         "current snapshot stays")
    versions = {part.model_version for part in parts if part.shards == shards}
    if len(versions) > 1:
        raise StoreError(f"staging {staging}: parts from different model versions {sorted(versions)}")
    chosen = [part for part in parts if part.shards == shards]
    return versions.pop(), min(part.created_at for part in chosen), sum(part.users for part in chosen)


def check_model_version(model_version: str) -> str:
    if not isinstance(model_version, str) or not model_version.strip():
        raise StoreError(f"model_version must be a non-empty string, got {model_version!r}")
    return model_version


def fallback_label(baseline: str) -> str:
    """The model_version label of a snapshot that holds `baseline`'s lists, not a model's."""
    return f"{FALLBACK_PREFIX}{baseline}"


def fallback_baseline(model_version: str | None) -> str | None:
    """The baseline behind a fallback snapshot's label; None for a registry version (or no snapshot)."""
    if model_version is None or not model_version.startswith(FALLBACK_PREFIX):
        return None
    return model_version[len(FALLBACK_PREFIX):]


def check_created_at(created_at: datetime | None) -> datetime:
    if created_at is None:
        return datetime.now(UTC)
    if not isinstance(created_at, datetime) or created_at.tzinfo is None:
        raise StoreError(f"created_at must be a timezone-aware datetime, got {created_at!r}")
    return created_at.astimezone(UTC)


def encode_candidates(user_id: Any, ad_ids: Any, scores: Any) -> tuple[int, bytes]:
    """Validate one row → (user_id, blob). Sorted by score, highest first; a repeated ad keeps its best score."""
    if isinstance(user_id, (bool, np.bool_)) or not isinstance(user_id, (int, np.integer)):
        raise StoreError(f"user_id must be an integer, got {user_id!r}")
    uid = int(user_id)
    if not INT64_MIN <= uid <= INT64_MAX:
        raise StoreError(f"user_id {uid} does not fit in int64")
    try:
        ids = np.asarray(ad_ids, dtype=AD_ID_DTYPE)
        sc = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"user_id={uid}: ad_ids must be int64 and scores numbers ({exc})") from exc
    if ids.ndim != 1 or sc.ndim != 1 or len(ids) != len(sc):
        raise StoreError(f"user_id={uid}: ad_ids and scores must be flat lists of one length "
                         f"(got shapes {ids.shape} and {sc.shape})")
    if not np.isfinite(sc).all():
        raise StoreError(f"user_id={uid}: scores must be finite")
    order = np.argsort(-sc, kind="stable")
    ids, sc = ids[order], sc[order]
    _, first = np.unique(ids, return_index=True)
    if len(first) < len(ids):
        keep = np.sort(first)  # first occurrence in score order = the best score
        ids, sc = ids[keep], sc[keep]
    return uid, ids.tobytes() + sc.astype(SCORE_DTYPE).tobytes()


def decode_candidates(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    n = len(blob) // _ITEM_BYTES
    cut = n * AD_ID_DTYPE.itemsize
    return (np.frombuffer(blob, dtype=AD_ID_DTYPE, count=n),
            np.frombuffer(blob, dtype=SCORE_DTYPE, count=n, offset=cut))


def iter_rows(rows: Any) -> Iterator[tuple[int, bytes]]:
    """Encoded rows from a DataFrame (columns user_id, ad_ids, scores) or an iterable of mappings or triples.

    A user appearing twice is an error: one snapshot holds one answer per user.
    """
    seen: set[int] = set()
    for index, row in enumerate(_raw_rows(rows)):
        try:
            uid, blob = encode_candidates(*row)
        except TypeError as exc:
            raise StoreError(f"row {index}: expected (user_id, ad_ids, scores), got {row!r}") from exc
        if uid in seen:
            raise StoreError(f"row {index}: user_id={uid} appears more than once in the snapshot")
        seen.add(uid)
        yield uid, blob


def _raw_rows(rows: Any) -> Iterable[tuple[Any, Any, Any]]:
    columns = getattr(rows, "columns", None)
    if columns is not None:  # a DataFrame: walk its columns, not iterrows (which boxes every cell)
        missing = {"user_id", "ad_ids", "scores"} - set(columns)
        if missing:
            raise StoreError(f"candidate frame is missing column(s) {sorted(missing)}")
        return zip(rows["user_id"].tolist(), rows["ad_ids"].tolist(), rows["scores"].tolist())
    return (_as_triple(row) for row in rows)


def _as_triple(row: Any) -> tuple[Any, Any, Any]:
    if isinstance(row, Mapping):
        try:
            return row["user_id"], row["ad_ids"], row["scores"]
        except KeyError as exc:
            raise StoreError(f"candidate row {dict(row)!r} lacks {exc.args[0]!r}") from exc
    return tuple(row)  # type: ignore[return-value]


def query_options(query: str, allowed: Mapping[str, type]) -> dict[str, Any]:
    """`a=1&b=x` → typed keyword arguments; an unknown or unparsable option is an error naming it."""
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise StoreError(f"unknown store option {key!r} (known: {', '.join(sorted(allowed))})")
        kind = allowed[key]
        try:
            options[key] = kind(value)
        except ValueError as exc:
            raise StoreError(f"store option {key}={value!r} is not a valid {kind.__name__}") from exc
        if kind is float and not math.isfinite(options[key]):
            raise StoreError(f"store option {key}={value!r} must be finite")
    return options


def open_store(url: str) -> CandidateStore:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` or `redis://[:password@]host:port/db` (also rediss://)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from leadre.serve.sqlite_store import SQLiteCandidateStore

        # SQLAlchemy's convention: three slashes then a relative path, four for an absolute one.
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise StoreError(f"store URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
        return SQLiteCandidateStore(path, **query_options(parts.query, SQLiteCandidateStore.URL_OPTIONS))
    if parts.scheme in ("redis", "rediss", "unix"):
        from leadre.serve.redis_store import RedisCandidateStore

        return RedisCandidateStore.from_url(url)
    raise StoreError(f"store URL {url!r}: unsupported scheme {parts.scheme!r} (use sqlite:/// or redis://)")


def __getattr__(name: str) -> Any:
    # The implementations live in their own modules (redis is an optional import); expose them here lazily.
    if name == "SQLiteCandidateStore":
        from leadre.serve.sqlite_store import SQLiteCandidateStore

        return SQLiteCandidateStore
    if name == "RedisCandidateStore":
        from leadre.serve.redis_store import RedisCandidateStore

        return RedisCandidateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
