"""Redis candidate store: the production store, shared by every serving replica.

Keys (NS = the namespace, `leadre:candidates` by default):
- `NS:current`                  → the current snapshot id (the pointer; swapped with one SET);
- `NS:snap:<id>:meta`           → hash: model_version, created_at, published_at, users;
- `NS:snap:<id>:u:<user_id>`    → the user's candidate blob (see leadre/serve/store.py);
- `NS:snapshots`                → set of snapshot ids whose keys still exist (so a crashed write is collected too);
- `NS:staging:<name>`           → the snapshot id a sharded run's shards write into (the first shard sets it);
- `NS:staging:<name>:parts`     → hash: shard → its part's record (shards, model version, created_at, users).

A sharded near-line run's shards write their users' keys straight into one staged snapshot id, which no reader
finds because the pointer does not name it; `publish_staged` checks every part is there, writes the metadata and
moves the pointer: the same single SET as an unsharded publish, however many shards wrote.

A snapshot's keys are written first, without a TTL, then the pointer moves with a single SET; the superseded
snapshots' keys get a TTL (`old_snapshot_ttl_s`) rather than an immediate delete, so a reader that fetched the old
pointer a moment ago still finds its keys. A read is one round trip: a Lua script reads the pointer and the user's
key atomically, so it can never pair one snapshot's pointer with another's row.

Cluster note: the script reads a key it derives from the pointer, which Redis Cluster forbids across slots; put the
namespace in a hash tag (`namespace={leadre:candidates}`) to keep every key in one slot, or use a single node.
One writer at a time: a publish expires every other registered snapshot, including one another writer (or another
run's shards) is still filling. The DAG runs one near-line job at a time (max_active_runs=1), so it needs no lock.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    query_options,
)

REDIS_PASSWORD_ENV = "LEADRE_REDIS_PASSWORD"

# KEYS[1] = pointer key; ARGV[1] = namespace, ARGV[2] = user id. Returns nil (no snapshot), {sid, nil} (unknown
# user: GET's false becomes a nil element) or {sid, blob}.
_GET_SCRIPT = """
local sid = redis.call('GET', KEYS[1])
if not sid then return false end
return {sid, redis.call('GET', ARGV[1] .. ':snap:' .. sid .. ':u:' .. ARGV[2])}
"""


class RedisCandidateStore:
    URL_OPTIONS: ClassVar[dict[str, type]] = {"namespace": str, "old_snapshot_ttl_s": int, "write_batch": int}
    # redis-py waits forever by default; the service reads on its event loop, so a hung Redis must fail fast
    # (the request then gets the fallback). The URL can set others, e.g. ?socket_timeout=0.05.
    DEFAULT_SOCKET_TIMEOUTS: ClassVar[dict[str, float]] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}

    def __init__(self, client: Any, *, namespace: str = "leadre:candidates", old_snapshot_ttl_s: int = 300,
                 write_batch: int = 2000):
        """client: a redis.Redis (bytes replies, i.e. decode_responses=False). old_snapshot_ttl_s: how long a
        superseded snapshot stays readable; write_batch: SETs per pipeline round trip when publishing."""
        if old_snapshot_ttl_s <= 0 or write_batch <= 0:
            raise StoreError("old_snapshot_ttl_s and write_batch must be positive")
        self.client = client
        self.namespace = namespace
        self.old_snapshot_ttl_s = old_snapshot_ttl_s
        self.write_batch = write_batch
        self._pointer = f"{namespace}:current"
        self._registry = f"{namespace}:snapshots"
        self._get = client.register_script(_GET_SCRIPT)
        self._meta: dict[str, tuple[str, datetime, float]] = {}
        self._meta_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> RedisCandidateStore:
        """redis://[[user]:password@]host[:port][/db][?namespace=…&old_snapshot_ttl_s=…&write_batch=…]; any other
        query option goes to redis-py (e.g. socket_timeout=0.05). Without a password in the URL,
        $LEADRE_REDIS_PASSWORD is used if set."""
        import redis

        parts = urlsplit(url)
        ours, theirs = [], []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            (ours if key in cls.URL_OPTIONS else theirs).append((key, value))
        # Options in the URL win over these keyword defaults (redis-py merges the URL's last). The password may come
        # from the environment instead of the URL: on Kubernetes both the server and the clients read it from one
        # Secret key, and the URL stays free of credentials.
        password = {"password": os.environ[REDIS_PASSWORD_ENV]} if os.environ.get(REDIS_PASSWORD_ENV) else {}
        client = redis.Redis.from_url(urlunsplit(parts._replace(query=urlencode(theirs))),
                                      **cls.DEFAULT_SOCKET_TIMEOUTS, **password)
        return cls(client, **query_options(urlencode(ours), cls.URL_OPTIONS))

    def _user_key(self, snapshot_id: str, user_id: int) -> str:
        return f"{self.namespace}:snap:{snapshot_id}:u:{user_id}"

    def _meta_key(self, snapshot_id: str) -> str:
        return f"{self.namespace}:snap:{snapshot_id}:meta"

    # -- reads ----------------------------------------------------------------------------------------------------

    def get(self, user_id: int) -> Candidates | None:
        reply = self._get(keys=[self._pointer], args=[self.namespace, int(user_id)])
        if not reply or len(reply) < 2 or reply[1] is None:
            return None
        snapshot_id = reply[0].decode()
        model_version, created_at, created_ts = self._meta.get(snapshot_id) or self._load_meta(snapshot_id)
        ad_ids, scores = decode_candidates(reply[1])
        return Candidates(ad_ids, scores, model_version, created_at, snapshot_id, created_ts)

    def _load_meta(self, snapshot_id: str) -> tuple[str, datetime, float]:
        raw = self.client.hgetall(self._meta_key(check_snapshot_id(snapshot_id)))
        if not raw:
            raise StoreError(f"snapshot {snapshot_id} has no metadata (expired before it was read?)")
        created_at = datetime.fromisoformat(raw[b"created_at"].decode())
        meta = (raw[b"model_version"].decode(), created_at, created_at.timestamp())
        with self._meta_lock:
            self._meta[snapshot_id] = meta
        return meta

    def snapshot_info(self) -> SnapshotInfo | None:
        pointer = self.client.get(self._pointer)
        if pointer is None:
            return None
        snapshot_id = pointer.decode()
        raw = {k.decode(): v.decode() for k, v in self.client.hgetall(self._meta_key(snapshot_id)).items()}
        if not raw:
            return None
        return SnapshotInfo(snapshot_id, raw["model_version"], datetime.fromisoformat(raw["created_at"]),
                            datetime.fromisoformat(raw["published_at"]), int(raw["users"]))

    # -- writes ---------------------------------------------------------------------------------------------------

    def write_snapshot(self, rows: Any, model_version: str, created_at: datetime | None = None) -> SnapshotInfo:
        model_version = check_model_version(model_version)
        created_at = check_created_at(created_at)
        published_at = datetime.now(UTC)
        snapshot_id = new_snapshot_id(published_at)
        # Registered before the first key, so a writer that dies half-way leaves keys the next publish collects.
        self.client.sadd(self._registry, snapshot_id)
        users = self._write_rows(snapshot_id, rows)
        return self._publish(snapshot_id, model_version, created_at, published_at, users)

    def _write_rows(self, snapshot_id: str, rows: Any) -> int:
        users = 0
        encoded: Iterator[tuple[int, bytes]] = iter_rows(rows)
        while batch := list(islice(encoded, self.write_batch)):
            pipe = self.client.pipeline(transaction=False)
            for user_id, blob in batch:
                pipe.set(self._user_key(snapshot_id, user_id), blob)
            pipe.execute()
            users += len(batch)
        return users

    def _publish(self, snapshot_id: str, model_version: str, created_at: datetime, published_at: datetime,
                 users: int) -> SnapshotInfo:
        self.client.hset(self._meta_key(snapshot_id), mapping={
            "model_version": model_version, "created_at": created_at.isoformat(),
            "published_at": published_at.isoformat(), "users": users})
        self.client.set(self._pointer, snapshot_id)  # the swap
        self._collect_garbage(keep=snapshot_id)
        return SnapshotInfo(snapshot_id, model_version, created_at, published_at, users)

    # -- staged snapshots (sharded near-line runs) ------------------------------------------------------------------

    def _staging_key(self, staging: str) -> str:
        return f"{self.namespace}:staging:{staging}"

    def stage_part(self, staging: str, shard: int, shards: int, rows: Any, model_version: str,
                   created_at: datetime | None = None) -> int:
        key = self._staging_key(check_staging(staging, shard, shards))
        model_version = check_model_version(model_version)
        created_at = check_created_at(created_at)
        # The first shard names the snapshot (SET NX), the others read its choice; registered before any user key,
        # so the keys of a run that dies are collected by the next publish.
        self.client.set(key, new_snapshot_id(datetime.now(UTC)), nx=True)
        snapshot_id = check_snapshot_id(self.client.get(key).decode())
        self.client.sadd(self._registry, snapshot_id)
        users = self._write_rows(snapshot_id, rows)  # a retried shard overwrites its own users' keys
        self.client.hset(f"{key}:parts", str(shard), json.dumps(
            {"shards": shards, "model_version": model_version, "created_at": created_at.isoformat(),
             "users": users}))
        return users

    def publish_staged(self, staging: str, shards: int) -> SnapshotInfo:
        key = self._staging_key(check_staging(staging, None, shards))
        raw_id = self.client.get(key)
        parts = []
        for shard, record in self.client.hgetall(f"{key}:parts").items():
            fields = json.loads(record)
            parts.append(StagedPart(int(shard), fields["shards"], fields["model_version"],
                                    datetime.fromisoformat(fields["created_at"]), fields["users"]))
        model_version, created_at, users = check_staged(staging, parts, shards)
        if raw_id is None:  # pragma: no cover - parts without their id: the staging key was deleted by hand
            raise StoreError(f"staging {staging}: its snapshot id is gone; run the shards again")
        return self._publish(check_snapshot_id(raw_id.decode()), model_version, created_at, datetime.now(UTC), users)

    def _collect_garbage(self, keep: str) -> None:
        """Expire every snapshot but `keep`, and forget every staging (one near-line run publishes at a time: a
        staging left now is the published one or from a run that died; its keys are registered snapshots)."""
        stagings = list(self.client.scan_iter(match=f"{self.namespace}:staging:*", count=self.write_batch))
        if stagings:
            self.client.delete(*stagings)
        for raw in self.client.smembers(self._registry):
            snapshot_id = raw.decode()
            if snapshot_id == keep:
                continue
            pipe = self.client.pipeline(transaction=False)
            for key in self.client.scan_iter(match=f"{self.namespace}:snap:{snapshot_id}:*", count=self.write_batch):
                pipe.expire(key, self.old_snapshot_ttl_s)
                if len(pipe) >= self.write_batch:
                    pipe.execute()
            pipe.execute()
            self.client.srem(self._registry, snapshot_id)
            with self._meta_lock:
                self._meta.pop(snapshot_id, None)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisCandidateStore(namespace={self.namespace!r})"
