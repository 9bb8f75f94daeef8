"""Fixtures for the serving tests: a small ad world, stores of both kinds, a local Redis when one can be had."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leadre.serve.bundle import ServingBundle
from leadre.serve.store import CandidateStore, open_store

REDIS_URL_ENV = "LEADRE_TEST_REDIS_URL"
REDIS_START_TIMEOUT_S = 10.0
INDUSTRIES = ("auto/suv", "beauty/skincare", "games/rpg", "travel/hotels")


def make_ads(n: int = 40, industries: tuple[str, ...] = INDUSTRIES) -> pd.DataFrame:
    """Ads 1000..1000+n-1; industry by ad_id % len(industries); popularity falls with the id (1000 most popular)."""
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    return pd.DataFrame({
        "ad_id": ids,
        "industry": [industries[i % len(industries)] for i in range(n)],
        "ecpm": np.linspace(5.0, 1.0, n),
        "popularity": np.linspace(100.0, 1.0, n),
    })


def make_bundle(version: str = "v1", ads: pd.DataFrame | None = None, ads_version: str = "") -> ServingBundle:
    return ServingBundle(version, make_ads() if ads is None else ads, ads_version)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """$LEADRE_TEST_REDIS_URL if it answers; else a throw-away redis-server on a free port; else skip."""
    pytest.importorskip("redis", reason="redis-py is not installed: the Redis store is not tested")
    given = os.environ.get(REDIS_URL_ENV)
    if given:
        if not _ping(given):
            pytest.skip(f"{REDIS_URL_ENV}={given} does not answer PING: the Redis store is not tested")
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"no redis-server on PATH and {REDIS_URL_ENV} unset: the Redis store is not tested")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not _ping(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"redis-server did not start on port {port}: the Redis store is not tested")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(REDIS_START_TIMEOUT_S)


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'candidates.sqlite'}"
    base = request.getfixturevalue("redis_url")
    return f"{base}?namespace=test:{request.node.name}:{time.monotonic_ns()}"  # each test its own keys


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CandidateStore]:
    opened = open_store(store_url(request.param, tmp_path, request))
    yield opened
    opened.close()
