"""Staged snapshots of a sharded near-line run, against the real SQLite store and a real Redis: shards write their
parts concurrently while readers keep the old snapshot whole, and the publish switches every user at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from leadre.serve.store import CandidateStore, StoreError

USERS, SHARDS, PER_USER = 60, 3, 10
T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def _rows(v: int, users) -> list:
    return [(u, v * 1000 + u * PER_USER + np.arange(PER_USER), v + np.arange(PER_USER) / 100) for u in users]


def _stage(store: CandidateStore, staging: str, v: int, shards: int = SHARDS) -> None:
    """Every shard writes its users (u % shards) from its own thread, as pods would, with its own start time."""
    def shard(i: int) -> None:
        store.stage_part(staging, i, shards, _rows(v, range(i, USERS, shards)), f"v{v}",
                         created_at=T0 + timedelta(minutes=i))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _version_of_every_user(store: CandidateStore) -> set[str]:
    return {store.get(u).model_version for u in range(USERS)}


def test_staged_parts_stay_unseen_until_the_publish_switches_every_user(store: CandidateStore) -> None:
    store.write_snapshot(_rows(0, range(USERS)), "v0")
    _stage(store, "run_a", 1)
    assert _version_of_every_user(store) == {"v0"}  # the staged parts are invisible
    info = store.publish_staged("run_a", SHARDS)
    assert (info.model_version, info.users, info.created_at) == ("v1", USERS, T0)  # the earliest shard's start
    assert store.snapshot_info().snapshot_id == info.snapshot_id
    assert _version_of_every_user(store) == {"v1"}
    assert store.get(7).ad_ids.tolist() == (1000 + 7 * PER_USER + np.arange(PER_USER))[::-1].tolist()


def test_a_missing_part_publishes_nothing_and_a_retried_part_replaces_its_rows(store: CandidateStore) -> None:
    store.write_snapshot(_rows(0, range(USERS)), "v0")
    store.stage_part("run_b", 0, 2, _rows(1, range(0, USERS, 2)), "v1")
    with pytest.raises(StoreError, match=r"staging run_b: shard\(s\) \[1\] of 2"):
        store.publish_staged("run_b", 2)
    assert _version_of_every_user(store) == {"v0"}
    store.stage_part("run_b", 1, 2, _rows(9, range(1, USERS, 2)), "v1")  # a first try, then its retry
    store.stage_part("run_b", 1, 2, _rows(1, range(1, USERS, 2)), "v1")
    assert store.publish_staged("run_b", 2).users == USERS
    assert store.get(3).ad_ids.max() == 1000 + 3 * PER_USER + PER_USER - 1
    with pytest.raises(StoreError, match="shard 2 is not in 0..1"):
        store.stage_part("run_c", 2, 2, [], "v1")
    with pytest.raises(StoreError, match="staging name"):
        store.stage_part("Run C!", 0, 1, [], "v1")


def test_publishing_staged_snapshots_is_atomic_under_concurrent_reads(store: CandidateStore) -> None:
    """Readers hammer `get` while shards stage and publishes switch; every answer comes whole from one snapshot."""
    store.write_snapshot(_rows(0, range(USERS)), "v0")
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def read() -> None:
        rng = np.random.default_rng(0)
        while not stop.is_set():
            user = int(rng.integers(USERS))
            got = store.get(user)
            reads[0] += 1
            if got is None:
                errors.append(f"user {user} vanished")
                continue
            v = int(got.model_version[1:])
            expected = (v * 1000 + user * PER_USER + np.arange(PER_USER))[::-1]
            if got.ad_ids.tolist() != expected.tolist() or not np.all(got.scores // 1 == v):
                errors.append(f"user {user}: {got.model_version} with ads {got.ad_ids[:3]}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for v in range(1, 5):
            _stage(store, f"run_{v}", v)
            store.publish_staged(f"run_{v}", SHARDS)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:5]
    assert reads[0] > 4
    assert _version_of_every_user(store) == {"v4"}
