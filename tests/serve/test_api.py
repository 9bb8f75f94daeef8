"""The online service through a real uvicorn server on loopback, driven with httpx."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from leadre.serve.app import create_app
from leadre.serve.bundle import ServingBundle
from leadre.serve.server import BackgroundServer
from leadre.serve.service import serve_settings
from leadre.serve.settings import ServeSettings
from leadre.serve.store import open_store
from tests.conftest import write_params
from tests.serve.conftest import make_ads, make_bundle

# Real uvicorn servers on loopback (threads or processes): the suite's `slow` kind, still run by default.
pytestmark = pytest.mark.slow

KEY = "test-admin-key"
WAIT_S = 10.0
POLL_S = 0.05
ROUTE = "/v1/recommendations"


class SwitchableLoader:
    """The bundle loader a test controls: hand back `bundle`, or raise `error` if set."""

    def __init__(self, bundle: ServingBundle) -> None:
        self.bundle = bundle
        self.error: Exception | None = None

    def __call__(self) -> ServingBundle:
        if self.error is not None:
            raise self.error
        return self.bundle


def live_ads() -> pd.DataFrame:
    """40 ads; 1006 is gone from the live list (paused) and 1010 expired a minute ago."""
    ads = make_ads()
    ads = ads[ads["ad_id"] != 1006].copy()
    now = pd.Timestamp.now(tz="UTC")
    ads["expires_at"] = now + pd.Timedelta(days=30)
    ads.loc[ads["ad_id"] == 1010, "expires_at"] = now - pd.Timedelta(minutes=1)
    return ads


CANDIDATES = [
    (1, list(range(1020, 1032)), [1.0 - i / 100 for i in range(12)]),  # 12 live ads, best first
    (2, [1006, 1010, 1014, 1022], [0.9, 0.8, 0.7, 0.6]),  # two no longer live; all in industry games/rpg
]


@contextmanager
def serve(tmp_path: Path, loader: Callable[[], ServingBundle], *, rows: Any = CANDIDATES,
          created_at: datetime | None = None, **settings: Any) -> Iterator[httpx.Client]:
    url = f"sqlite:///{tmp_path / 'candidates.sqlite'}"
    store = open_store(url)
    store.write_snapshot(rows, "nearline-7", created_at or datetime.now(UTC))
    store.close()
    app = create_app(ServeSettings(**{"bundle_loader": loader, "store_url": url, "admin_api_key": KEY, **settings}))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[httpx.Client]:
    """One server for the read-only tests (the reload tests start their own)."""
    with serve(tmp_path_factory.mktemp("api"), SwitchableLoader(make_bundle("v1", live_ads()))) as c:
        yield c


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def admin_status(client: httpx.Client) -> dict:
    return client.get("/admin/status", headers={"X-API-Key": KEY}).json()


# -- recommendations ---------------------------------------------------------------------------------------------


def test_known_user_gets_nearline_candidates(client: httpx.Client) -> None:
    response = client.get(f"{ROUTE}/1", params={"k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == 1
    assert body["items"] == [{"ad_id": 1020 + i, "score": pytest.approx(1.0 - i / 100), "source": "nearline"}
                             for i in range(3)]
    assert (body["model_version"], body["bundle_version"], body["fallback_reason"]) == ("nearline-7", "v1", None)
    assert datetime.fromisoformat(body["snapshot_created_at"]) <= datetime.fromisoformat(body["served_at"])


def test_default_k_is_ten(client: httpx.Client) -> None:
    assert len(client.get(f"{ROUTE}/1").json()["items"]) == 10


def test_unknown_user_gets_popular_ads_from_the_fallback(client: httpx.Client) -> None:
    body = client.get(f"{ROUTE}/999", params={"k": 5}).json()
    assert [item["source"] for item in body["items"]] == ["fallback"] * 5
    assert [item["ad_id"] for item in body["items"]] == [1000, 1001, 1002, 1003, 1004]  # global popularity
    assert (body["model_version"], body["snapshot_created_at"]) == (None, None)
    assert body["fallback_reason"] == "unknown_user"


def test_ads_no_longer_live_are_filtered_and_the_gap_filled(client: httpx.Client) -> None:
    body = client.get(f"{ROUTE}/2", params={"k": 4}).json()
    ads = [item["ad_id"] for item in body["items"]]
    assert ads[:2] == [1014, 1022]
    assert 1006 not in ads and 1010 not in ads
    assert [item["source"] for item in body["items"]] == ["nearline"] * 2 + ["fallback"] * 2
    # The fill comes from the user's industry (games/rpg: ad_id % 4 == 2), most popular first, no repeats.
    assert ads[2:] == [1002, 1018]
    assert body["fallback_reason"] == "too_few"


@pytest.mark.parametrize("path, params, field", [
    (f"{ROUTE}/abc", {}, "user_id"),
    (f"{ROUTE}/1.5", {}, "user_id"),
    (f"{ROUTE}/-1", {}, "user_id"),
    (f"{ROUTE}/{2**63}", {}, "user_id"),
    (f"{ROUTE}/{'9' * 5000}", {}, "user_id"),
    (f"{ROUTE}/%EF%BC%97", {}, "user_id"),  # a full-width digit 7: int() would take it
    (f"{ROUTE}/1", {"k": 0}, "k"),
    (f"{ROUTE}/1", {"k": 101}, "k"),
    (f"{ROUTE}/1", {"k": "ten"}, "k"),
])
def test_malformed_input_is_a_422_naming_the_field(client: httpx.Client, path: str, params: dict, field: str) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert [f["field"] for f in body["fields"]] == [field]
    assert field in body["message"]


def test_unknown_route_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/v1/nope")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


# -- request headers: a bounded amount per request (431 beyond it), whatever the client sends ------------------------


MIB = 1024 * 1024


@pytest.mark.parametrize("headers", [
    [("X-Padding", "a" * MIB)],  # one 1 MiB header
    [("X-Padding", "a" * 16 * MIB)],  # one 16 MiB header
    [(f"X-Header-{i}", "1") for i in range(10_000)],  # ten thousand small ones
    [(f"X-Header-{i}", "a" * 1000) for i in range(20)],  # 20 kB in headers under the count limit
], ids=["1MiB", "16MiB", "10k-headers", "20kB-in-20"])
def test_oversized_request_headers_are_refused_with_431(client: httpx.Client, headers: list) -> None:
    response = client.get(f"{ROUTE}/1", headers=headers)
    assert response.status_code == 431
    assert response.json()["error"] == "request_headers_too_large"
    assert response.headers["connection"] == "close"
    assert client.get(f"{ROUTE}/1").status_code == 200  # the server is unharmed


def test_headers_within_the_limits_are_served(client: httpx.Client) -> None:
    headers = [(f"X-Header-{i}", "a" * 100) for i in range(50)]  # 50 headers, ~6 kB: a heavy but normal client
    assert client.get(f"{ROUTE}/1", headers=headers).status_code == 200


def test_header_limits_come_from_the_settings(tmp_path: Path) -> None:
    with serve(tmp_path, SwitchableLoader(make_bundle()), max_headers=8, max_header_bytes=1024) as c:
        assert c.get("/healthz", headers=[(f"X-{i}", "1") for i in range(3)]).status_code == 200
        assert c.get("/healthz", headers=[(f"X-{i}", "1") for i in range(8)]).status_code == 431
        assert c.get("/healthz", headers={"X-Padding": "a" * 1024}).status_code == 431
        assert 'status="431"' in c.get("/metrics").text


def test_params_yaml_sets_the_header_limits(tmp_path: Path) -> None:
    params = write_params(tmp_path, {"serve.max_headers": 12, "serve.max_header_bytes": 4096})
    settings = serve_settings(params)
    assert (settings.max_headers, settings.max_header_bytes) == (12, 4096)


# -- health, readiness, metrics ------------------------------------------------------------------------------------


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["bundle"]["model_version"] == "v1"
    assert body["store"]["snapshot"]["model_version"] == "nearline-7"


def test_metrics_count_requests_fallbacks_and_name_the_version(client: httpx.Client) -> None:
    client.get(f"{ROUTE}/999")
    client.get(f"{ROUTE}/abc")
    text = client.get("/metrics").text
    route = 'route="/v1/recommendations/{user_id}"'
    assert f'leadre_serve_requests_total{{method="GET",{route},status="200"}}' in text
    assert f'leadre_serve_requests_total{{method="GET",{route},status="422"}}' in text
    assert f'leadre_serve_request_seconds_bucket{{le="0.005",{route},status="200"}}' in text
    assert 'leadre_serve_fallbacks_total{reason="unknown_user"}' in text
    assert 'leadre_serve_bundle_info{ads_version="",model_version="v1"} 1.0' in text
    assert "leadre_serve_bundle_reload_failures_total 0.0" in text
    assert 'leadre_serve_snapshot_info{model_version="nearline-7"' in text


# -- admin -----------------------------------------------------------------------------------------------------------


def test_admin_routes_require_the_key(client: httpx.Client) -> None:
    missing = client.post("/admin/reload")
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    assert "X-API-Key" in missing.json()["message"]
    wrong = client.post("/admin/reload", headers={"X-API-Key": "nope"})
    assert (wrong.status_code, wrong.json()["error"]) == (403, "forbidden")
    assert client.get("/admin/status").status_code == 401
    ok = client.post("/admin/reload", headers={"X-API-Key": KEY})
    assert ok.status_code == 200
    assert ok.json() == {"swapped": False, "model_version": "v1", "previous_version": "v1"}


def test_admin_routes_are_closed_without_a_configured_key(tmp_path: Path) -> None:
    with serve(tmp_path, SwitchableLoader(make_bundle()), admin_api_key=None) as c:
        response = c.post("/admin/reload", headers={"X-API-Key": ""})
        assert (response.status_code, response.json()["error"]) == (403, "admin_disabled")


# -- staleness and hot reload (each with its own server) -------------------------------------------------------------


def test_a_stale_snapshot_is_served_from_the_fallback(tmp_path: Path) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    with serve(tmp_path, SwitchableLoader(make_bundle("v1", live_ads())), created_at=old,
               staleness_limit_s=3600) as c:
        body = c.get(f"{ROUTE}/1", params={"k": 3}).json()
    assert [item["source"] for item in body["items"]] == ["fallback"] * 3
    assert body["fallback_reason"] == "stale"
    assert body["model_version"] == "nearline-7"  # the entry exists; it is just too old to trust


def test_hot_reload_picks_up_a_new_version_without_restart(tmp_path: Path) -> None:
    loader = SwitchableLoader(make_bundle("v1", live_ads()))
    with serve(tmp_path, loader, reload_interval_s=POLL_S) as c:
        assert 1020 in [i["ad_id"] for i in c.get(f"{ROUTE}/1").json()["items"]]
        ads = live_ads()
        loader.bundle = make_bundle("v2", ads[ads["ad_id"] != 1020])  # v2 also retires ad 1020
        wait_for(lambda: admin_status(c)["bundle"]["model_version"] == "v2", "the poller to swap in v2")
        body = c.get(f"{ROUTE}/1").json()
        assert body["bundle_version"] == "v2"
        assert 1020 not in [i["ad_id"] for i in body["items"]]
        assert 'model_version="v2"} 1.0' in c.get("/metrics").text
        assert admin_status(c)["bundle"]["reloads"] == 2  # start-up, then v2


def test_a_failed_reload_keeps_the_old_version_and_reports_it(tmp_path: Path) -> None:
    loader = SwitchableLoader(make_bundle("v1", live_ads()))
    with serve(tmp_path, loader, reload_interval_s=POLL_S) as c:
        loader.error = RuntimeError("registry unreachable")
        wait_for(lambda: admin_status(c)["bundle"]["reload_failures"] >= 1, "a failed poll")

        ready = c.get("/readyz")
        assert ready.status_code == 200  # still serving v1: no reason to pull the pod out of rotation
        bundle = ready.json()["bundle"]
        assert (bundle["model_version"], bundle["last_reload_failed"]) == ("v1", True)
        assert bundle["last_failure"]["error"] == "RuntimeError: registry unreachable"
        assert c.get(f"{ROUTE}/1").json()["bundle_version"] == "v1"

        forced = c.post("/admin/reload", headers={"X-API-Key": KEY})
        assert forced.status_code == 500
        assert forced.json()["error"] == "reload_failed"
        assert forced.json()["model_version"] == "v1"
        assert "registry unreachable" in forced.json()["failure"]["error"]
        assert "leadre_serve_bundle_reload_failures_total 0.0" not in c.get("/metrics").text

        # A bundle that loads but cannot be served (no popularity column) is a failure too.
        loader.error = None
        loader.bundle = make_bundle("v3", make_ads().drop(columns="popularity"))
        failed = c.post("/admin/reload", headers={"X-API-Key": KEY})
        assert failed.status_code == 500 and "popularity" in failed.json()["failure"]["error"]
        assert admin_status(c)["bundle"]["model_version"] == "v1"

        loader.bundle = make_bundle("v4", live_ads())
        wait_for(lambda: admin_status(c)["bundle"]["model_version"] == "v4", "recovery")
        assert admin_status(c)["bundle"]["last_reload_failed"] is False


def test_a_service_whose_first_load_fails_is_not_ready(tmp_path: Path) -> None:
    loader = SwitchableLoader(make_bundle())
    loader.error = FileNotFoundError("no champion yet")
    with serve(tmp_path, loader, reload_interval_s=POLL_S) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        response = c.get(f"{ROUTE}/1")
        assert (response.status_code, response.json()["error"]) == (503, "not_ready")
        loader.error = None
        wait_for(lambda: c.get("/readyz").status_code == 200, "the poller's first good load")
        assert c.get(f"{ROUTE}/1").status_code == 200


def test_an_unreadable_store_degrades_to_the_fallback_and_fails_readiness(tmp_path: Path) -> None:
    with serve(tmp_path, SwitchableLoader(make_bundle("v1", live_ads()))) as c:
        with sqlite3.connect(tmp_path / "candidates.sqlite") as conn:
            conn.execute("DROP TABLE current")  # what a corrupted or half-restored file looks like to a reader
        response = c.get(f"{ROUTE}/1", params={"k": 3})
        assert response.status_code == 200  # the ad slot still gets ads
        assert response.json()["fallback_reason"] == "store_error"
        assert [i["source"] for i in response.json()["items"]] == ["fallback"] * 3
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "no such table" in ready.json()["store"]["error"]
        assert "leadre_serve_store_errors_total 1.0" in c.get("/metrics").text


def test_the_service_reads_a_redis_store(tmp_path: Path, redis_url: str) -> None:
    url = f"{redis_url}?namespace=test:api:{time.monotonic_ns()}"
    store = open_store(url)
    store.write_snapshot(CANDIDATES, "nearline-redis")
    store.close()
    app = create_app(ServeSettings(bundle_loader=SwitchableLoader(make_bundle("v1", live_ads())), store_url=url))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as c:
        known = c.get(f"{ROUTE}/2", params={"k": 4}).json()
        unknown = c.get(f"{ROUTE}/999", params={"k": 2}).json()
        assert c.get("/readyz").json()["store"]["snapshot"]["model_version"] == "nearline-redis"
    assert [i["ad_id"] for i in known["items"]][:2] == [1014, 1022]
    assert known["model_version"] == "nearline-redis"
    assert unknown["fallback_reason"] == "unknown_user"
