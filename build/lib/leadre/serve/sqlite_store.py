"""SQLite candidate store: one file, WAL mode, one table per snapshot and a one-row pointer swapped in a transaction.

Why this layout:
- each snapshot is built in its own table inside the same write transaction that moves the pointer, so the swap is
  the commit: a crash mid-write rolls back and leaves no half-built snapshot and no orphan table;
- WAL lets readers run alongside that (possibly long) write transaction and see the last committed snapshot;
- a reader reads the pointer and the user's row inside one read transaction, so both come from the same committed
  state even if a writer swaps and drops the old table in between (WAL readers keep their snapshot of the file);
- a sharded near-line run stages one part table per shard (`stage_part`), unseen by readers, and `publish_staged`
  copies them into a snapshot table and moves the pointer in one transaction, as above;
- dropping a superseded table (rather than DELETE-ing rows) frees its pages in one step; the next snapshot reuses
  them, so the file settles at about two snapshots' size.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from leadre.serve.store import (
    Candidates,
    SnapshotInfo,
    StagedPart,
    StoreError,
    check_created_at,
    check_model_version,
    check_snapshot_id,
    check_staged,
    check_staging,
    decode_candidates,
    iter_rows,
    new_snapshot_id,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id   TEXT PRIMARY KEY,
    model_version TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    published_at  TEXT NOT NULL,
    users         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS current (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    snapshot_id TEXT NOT NULL REFERENCES snapshots(snapshot_id)
);
CREATE TABLE IF NOT EXISTS staged_parts (
    staging       TEXT NOT NULL,
    shard         INTEGER NOT NULL,
    shards        INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    users         INTEGER NOT NULL,
    PRIMARY KEY (staging, shard)
);
"""
_POINTER = "SELECT snapshot_id FROM current WHERE id = 0"
_INFO = ("SELECT s.snapshot_id, s.model_version, s.created_at, s.published_at, s.users "
         "FROM current c JOIN snapshots s USING (snapshot_id) WHERE c.id = 0")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # some errors (e.g. a full disk) have already rolled the transaction back
        conn.execute("ROLLBACK")


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error. IMMEDIATE takes the write lock at once, so two writers
    queue instead of one failing at commit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _publish(conn: sqlite3.Connection, snapshot_id: str, model_version: str, created_at: datetime,
             published_at: datetime, users: int) -> None:
    """Record the snapshot and point readers at it (inside the caller's transaction)."""
    conn.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)",
                 (snapshot_id, model_version, created_at.isoformat(), published_at.isoformat(), users))
    conn.execute("INSERT OR REPLACE INTO current (id, snapshot_id) VALUES (0, ?)", (snapshot_id,))


def _table(snapshot_id: str) -> str:
    return f"cand_{check_snapshot_id(snapshot_id)}"


def _part_table(staging: str, shard: int) -> str:
    return f"part_{check_staging(staging)}_{int(shard)}"


class SQLiteCandidateStore:
    """Embedded default store. Safe to share across threads: each thread reads through its own cached connection."""

    URL_OPTIONS: ClassVar[dict[str, type]] = {"busy_timeout_s": float, "cache_mb": int, "mmap_mb": int}

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0, cache_mb: int = 64, mmap_mb: int = 256):
        """busy_timeout_s: how long a writer waits for another writer's lock; cache_mb / mmap_mb: per reader
        connection, so a hot lookup touches memory, not the file system."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._cache_mb = cache_mb
        self._mmap_mb = mmap_mb
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._snapshots: dict[str, _Snapshot] = {}  # snapshot_id → what a read needs; snapshots are immutable
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file, so readers inherit it
            conn.executescript(_SCHEMA)

    # -- connections ----------------------------------------------------------------------------------------------

    def _connect(self) -> closing[sqlite3.Connection]:
        """A writer connection, closed on leaving the `with` (sqlite3's own context manager only commits)."""
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; Python's implicit transactions would interleave.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a power cut loses at most the last swap
        return closing(conn)

    def _reader(self) -> _Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            # check_same_thread=False only so close() may close it from another thread; it is read by this one.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute(f"PRAGMA cache_size=-{self._cache_mb * 1024}")
            conn.execute(f"PRAGMA mmap_size={self._mmap_mb * 2**20}")
            reader = _Reader(conn)
            self._local.reader = reader
            with self._readers_lock:
                self._readers.add(reader)
        return reader

    # -- reads ----------------------------------------------------------------------------------------------------

    def get(self, user_id: int) -> Candidates | None:
        cursor = self._reader().cursor  # one cursor per thread: conn.execute would build a new one per statement
        cursor.execute("BEGIN")
        try:
            row = cursor.execute(_POINTER).fetchone()
            if row is None:
                return None
            snapshot_id = row[0]
            snapshot = self._snapshots.get(snapshot_id) or self._load_snapshot(cursor, snapshot_id)
            hit = cursor.execute(snapshot.select, (user_id,)).fetchone()
        finally:
            cursor.execute("COMMIT")
        if hit is None:
            return None
        ad_ids, scores = decode_candidates(hit[0])
        return Candidates(ad_ids, scores, snapshot.model_version, snapshot.created_at, snapshot_id,
                          snapshot.created_ts)

    def _load_snapshot(self, cursor: sqlite3.Cursor, snapshot_id: str) -> _Snapshot:
        model_version, created = cursor.execute(
            "SELECT model_version, created_at FROM snapshots WHERE snapshot_id = ?", (snapshot_id,)).fetchone()
        created_at = datetime.fromisoformat(created)
        snapshot = _Snapshot(f"SELECT payload FROM {_table(snapshot_id)} WHERE user_id = ?", model_version,
                             created_at, created_at.timestamp())
        self._snapshots[snapshot_id] = snapshot
        return snapshot

    def snapshot_info(self) -> SnapshotInfo | None:
        row = self._reader().conn.execute(_INFO).fetchone()
        if row is None:
            return None
        snapshot_id, model_version, created, published, users = row
        return SnapshotInfo(snapshot_id, model_version, datetime.fromisoformat(created),
                            datetime.fromisoformat(published), users)

    # -- writes ---------------------------------------------------------------------------------------------------

    def write_snapshot(self, rows: Any, model_version: str, created_at: datetime | None = None) -> SnapshotInfo:
        model_version = check_model_version(model_version)
        created_at = check_created_at(created_at)
        published_at = datetime.now(UTC)
        snapshot_id = new_snapshot_id(published_at)
        table = _table(snapshot_id)
        with self._connect() as conn:
            with _write_transaction(conn):
                conn.execute(f"CREATE TABLE {table} (user_id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
                before = conn.total_changes
                conn.executemany(f"INSERT INTO {table} (user_id, payload) VALUES (?, ?)", iter_rows(rows))
                users = conn.total_changes - before
                _publish(conn, snapshot_id, model_version, created_at, published_at, users)
            self._collect_garbage(conn, keep=snapshot_id)
        return SnapshotInfo(snapshot_id, model_version, created_at, published_at, users)

    # -- staged snapshots (sharded near-line runs) ------------------------------------------------------------------
    # Each shard writes its own part table in its own short transaction (rows are encoded before the write lock is
    # taken, so shards queue only for the inserts); the publish copies the parts into one snapshot table and moves
    # the pointer in one transaction: readers see all of the old snapshot or all of the new one.

    def stage_part(self, staging: str, shard: int, shards: int, rows: Any, model_version: str,
                   created_at: datetime | None = None) -> int:
        check_staging(staging, shard, shards)
        part = StagedPart(shard, shards, check_model_version(model_version), check_created_at(created_at), 0)
        encoded = list(iter_rows(rows))
        table = _part_table(staging, shard)
        with self._connect() as conn:
            with _write_transaction(conn):
                conn.execute(f"DROP TABLE IF EXISTS {table}")  # a retried shard replaces its part
                conn.execute(f"CREATE TABLE {table} (user_id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
                conn.executemany(f"INSERT INTO {table} (user_id, payload) VALUES (?, ?)", encoded)
                conn.execute("INSERT OR REPLACE INTO staged_parts VALUES (?, ?, ?, ?, ?, ?)",
                             (staging, shard, shards, part.model_version, part.created_at.isoformat(), len(encoded)))
        return len(encoded)

    def publish_staged(self, staging: str, shards: int) -> SnapshotInfo:
        check_staging(staging, None, shards)
        published_at = datetime.now(UTC)
        snapshot_id = new_snapshot_id(published_at)
        table = _table(snapshot_id)
        with self._connect() as conn:
            with _write_transaction(conn):
                parts = [StagedPart(shard, n, version, datetime.fromisoformat(created), users)
                         for shard, n, version, created, users in conn.execute(
                             "SELECT shard, shards, model_version, created_at, users FROM staged_parts "
                             "WHERE staging = ?", (staging,))]
                model_version, created_at, users = check_staged(staging, parts, shards)
                conn.execute(f"CREATE TABLE {table} (user_id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
                for shard in range(shards):
                    try:
                        conn.execute(f"INSERT INTO {table} SELECT user_id, payload FROM {_part_table(staging, shard)}")
                    except sqlite3.IntegrityError:
                        raise StoreError(f"staging {staging}: shard {shard} has a user another shard already "
                                         "wrote; the current snapshot stays") from None
                _publish(conn, snapshot_id, model_version, created_at, published_at, users)
            self._collect_garbage(conn, keep=snapshot_id)
        return SnapshotInfo(snapshot_id, model_version, created_at, published_at, users)

    def _collect_garbage(self, conn: sqlite3.Connection, keep: str) -> None:
        """Drop every snapshot but `keep`, and every staged part (one near-line run publishes at a time, so a part
        left now is from a run that died). Readers mid-transaction on an old one still finish on their WAL view."""
        with _write_transaction(conn):
            old = [r[0] for r in conn.execute("SELECT snapshot_id FROM snapshots WHERE snapshot_id != ?", (keep,))]
            for snapshot_id in old:
                conn.execute(f"DROP TABLE IF EXISTS {_table(snapshot_id)}")
            conn.execute("DELETE FROM snapshots WHERE snapshot_id != ?", (keep,))
            for staging, shard in conn.execute("SELECT staging, shard FROM staged_parts").fetchall():
                conn.execute(f"DROP TABLE IF EXISTS {_part_table(staging, shard)}")
            conn.execute("DELETE FROM staged_parts")
        # Fold the WAL back into the file now rather than at some reader's commit; if a reader is mid-read this
        # does what it can and the next checkpoint finishes it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for snapshot_id in old:
            self._snapshots.pop(snapshot_id, None)

    def close(self) -> None:
        """Close every thread's reader connection (call once no request is in flight)."""
        with self._readers_lock:
            readers = list(self._readers)
            self._readers.clear()
        for reader in readers:
            reader.conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteCandidateStore({str(self.path)!r})"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    select: str  # the user lookup on this snapshot's table, built (and its id checked) once
    model_version: str
    created_at: datetime
    created_ts: float


class _Reader:
    """Holder so the store can find (and close) every thread's connection; sqlite3.Connection takes no weakref."""

    __slots__ = ("conn", "cursor", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
