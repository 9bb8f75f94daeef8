"""The candidate store contract, run against SQLite and (when a server can be had) Redis."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from leadre.serve.redis_store import REDIS_PASSWORD_ENV
from leadre.serve.sqlite_store import SQLiteCandidateStore
from leadre.serve.store import CandidateStore, StoreError, open_store
from tests.serve.conftest import free_port

CREATED = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def test_round_trip_from_a_frame(store: CandidateStore) -> None:
    rows = pd.DataFrame({"user_id": [7, 8, 9],
                         "ad_ids": [[11, 12, 13], [21], []],
                         "scores": [[0.1, 0.9, 0.5], [1.0], []]})
    info = store.write_snapshot(rows, "m-1", CREATED)
    assert (info.model_version, info.created_at, info.users) == ("m-1", CREATED, 3)
    assert store.snapshot_info() == info

    got = store.get(7)
    assert got is not None
    assert got.ad_ids.tolist() == [12, 13, 11]  # stored best first
    assert got.scores.tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert (got.model_version, got.created_at, got.snapshot_id) == ("m-1", CREATED, info.snapshot_id)
    assert got.created_ts == CREATED.timestamp()
    assert store.get(9).ad_ids.tolist() == []
    assert store.get(10) is None


def test_rows_as_dicts_or_triples_with_repeats_folded(store: CandidateStore) -> None:
    store.write_snapshot([{"user_id": 1, "ad_ids": [5, 6, 5], "scores": [0.2, 0.3, 0.8]},
                          (2, np.array([2**62]), np.array([1.5]))], "m-1")
    assert store.get(1).ad_ids.tolist() == [5, 6]  # ad 5 kept once, with its best score
    assert store.get(1).scores.tolist() == pytest.approx([0.8, 0.3])
    assert store.get(2).ad_ids.tolist() == [2**62]


def test_empty_store_answers_none(store: CandidateStore) -> None:
    assert store.get(1) is None
    assert store.snapshot_info() is None


def test_a_new_snapshot_replaces_the_old_whole(store: CandidateStore) -> None:
    store.write_snapshot([(1, [10], [1.0]), (2, [20], [1.0])], "m-1", CREATED)
    second = store.write_snapshot([(2, [21], [1.0])], "m-2", CREATED + timedelta(hours=1))
    assert store.get(1) is None  # not carried over from the old snapshot
    assert store.get(2).ad_ids.tolist() == [21]
    assert store.get(2).model_version == "m-2"
    assert store.snapshot_info() == second


@pytest.mark.parametrize("rows, message", [
    ([(1, [1, 2], [0.5])], "one length"),
    ([(1, [1], [float("nan")])], "finite"),
    ([(1, [1], [0.5]), (1, [2], [0.5])], "more than once"),
    ([("u1", [1], [0.5])], "user_id must be an integer"),
    ([(1, [1])], "expected (user_id, ad_ids, scores)"),
    (pd.DataFrame({"user_id": [1], "ad_ids": [[1]]}), "missing column"),
])
def test_bad_rows_are_rejected_and_the_old_snapshot_stays(store: CandidateStore, rows, message: str) -> None:
    store.write_snapshot([(1, [10], [1.0])], "m-1")
    with pytest.raises(StoreError, match=message[:20].replace("(", r"\(")):
        store.write_snapshot(rows, "m-2")
    assert store.get(1).model_version == "m-1"
    assert store.snapshot_info().model_version == "m-1"


def test_snapshot_metadata_is_checked(store: CandidateStore) -> None:
    with pytest.raises(StoreError, match="model_version"):
        store.write_snapshot([], "")
    with pytest.raises(StoreError, match="timezone-aware"):
        store.write_snapshot([], "m", datetime(2026, 1, 1))


def test_the_old_snapshot_stays_readable_while_the_new_one_is_written(store: CandidateStore) -> None:
    store.write_snapshot([(u, [u], [1.0]) for u in range(10)], "old")
    seen_mid_write = []

    def rows():
        for u in range(10):
            if u == 5:  # half of the new snapshot is written: readers must still get the old one, whole
                seen_mid_write.extend(store.get(v) for v in range(10))
            yield u, [u + 100], [1.0]

    store.write_snapshot(rows(), "new")
    assert [c.model_version for c in seen_mid_write] == ["old"] * 10
    assert [c.ad_ids.tolist() for c in seen_mid_write] == [[u] for u in range(10)]
    assert store.get(3).ad_ids.tolist() == [103]


def test_swap_is_atomic_under_concurrent_reads(store: CandidateStore) -> None:
    """Readers hammer `get` while snapshots are published; every answer must come whole from one snapshot.

    Snapshot v gives each user ads v*1000 + j and scores v + j/100, so a row mixing snapshots, or a row from one
    snapshot labelled with another's version, shows up as a mismatch.
    """
    users, versions, per_user, readers = 50, 8, 20, 4
    store.write_snapshot(_versioned_rows(0, users, per_user), "v0")
    stop = threading.Event()
    errors: list[str] = []
    reads = [0] * readers

    def read(slot: int) -> None:
        rng = np.random.default_rng(slot)
        while not stop.is_set():
            user = int(rng.integers(users))
            try:
                got = store.get(user)
            except Exception as exc:  # e.g. the old snapshot dropped between reading the pointer and the row
                errors.append(f"user {user}: {type(exc).__name__}: {exc}")
                continue
            reads[slot] += 1
            if got is None:
                errors.append(f"user {user} vanished during a swap")
                continue
            v = int(got.model_version[1:])
            expected = v * 1000 + user * per_user + np.arange(per_user)
            if got.ad_ids.tolist() != expected[::-1].tolist() or not np.all(got.scores // 1 == v):
                errors.append(f"user {user}: {got.model_version} with ads {got.ad_ids[:3]}…")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    try:
        for v in range(1, versions):
            store.write_snapshot(_versioned_rows(v, users, per_user), f"v{v}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert sum(reads) > versions * readers  # the readers really ran during the swaps
    assert store.snapshot_info().model_version == f"v{versions - 1}"


def _versioned_rows(v: int, users: int, per_user: int):
    for user in range(users):
        ads = v * 1000 + user * per_user + np.arange(per_user)
        yield user, ads, v + np.arange(per_user) / 100  # highest score on the last ad: stored reversed


def test_sqlite_collects_old_snapshot_tables(tmp_path) -> None:
    store = SQLiteCandidateStore(tmp_path / "c.sqlite")
    for v in range(3):
        store.write_snapshot([(1, [v], [1.0])], f"m{v}")
    import sqlite3

    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'cand_%'")]
        snapshots = conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert tables == [f"cand_{store.snapshot_info().snapshot_id}"]
    assert (snapshots, journal) == (1, "wal")
    store.close()


def test_redis_expires_old_snapshot_keys(redis_url: str) -> None:
    store = open_store(f"{redis_url}?namespace=test:expiry&old_snapshot_ttl_s=120")
    client = store.client
    client.delete(*client.keys("test:expiry:*") or ["test:expiry:none"])
    old = store.write_snapshot([(1, [1], [1.0]), (2, [2], [1.0])], "m1")
    new = store.write_snapshot([(1, [3], [1.0])], "m2")
    old_keys = client.keys(f"test:expiry:snap:{old.snapshot_id}:*")
    assert old_keys and all(0 < client.ttl(k) <= 120 for k in old_keys)
    assert all(client.ttl(k) == -1 for k in client.keys(f"test:expiry:snap:{new.snapshot_id}:*"))
    assert client.smembers("test:expiry:snapshots") == {new.snapshot_id.encode()}
    store.close()


@pytest.mark.parametrize("url, message", [
    ("postgres://x", "unsupported scheme"),
    ("sqlite://host/x.db", "expected sqlite:///"),
    ("sqlite:///x.db?cache=1", "unknown store option 'cache'"),
    ("sqlite:///x.db?cache_mb=lots", "not a valid int"),
])
def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_open_store_sqlite_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///sub/rel.sqlite?busy_timeout_s=2")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.sqlite'}")
    assert relative.path.resolve() == tmp_path / "sub" / "rel.sqlite"
    assert absolute.path == tmp_path / "abs.sqlite"
    assert isinstance(relative, CandidateStore)
    relative.close()
    absolute.close()


def test_the_redis_password_comes_from_the_url_or_the_environment(monkeypatch) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed")
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "from-env")
    for url, password in (("redis://127.0.0.1:1/0", "from-env"), ("redis://:in-url@127.0.0.1:1/0", "in-url")):
        store = open_store(url)  # redis-py connects on first use: nothing listens on port 1, nothing is tried
        assert store.client.connection_pool.connection_kwargs["password"] == password
        store.close()


def test_a_password_protected_redis_needs_the_password(monkeypatch) -> None:
    redis = pytest.importorskip("redis", reason="redis-py is not installed")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH: the password check against a real server is not run")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                               "no", "--requirepass", "s3cret"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url, password="s3cret", socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
        anonymous = open_store(url)
        with pytest.raises(redis.AuthenticationError):
            anonymous.snapshot_info()
        anonymous.close()
        monkeypatch.setenv(REDIS_PASSWORD_ENV, "s3cret")
        store = open_store(url)
        store.write_snapshot([(1, [10, 11], [0.9, 0.1])], "v1")
        assert store.get(1).ad_ids.tolist() == [10, 11]
        store.close()
    finally:
        server.terminate()
        server.wait(10)
