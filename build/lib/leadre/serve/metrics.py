"""Prometheus metrics of the online service, on a registry of its own (two apps in one process never collide).

Request counts and latency come from a plain ASGI middleware (Starlette's BaseHTTPMiddleware costs far more per
request) labelled by route template, never by raw path, so /v1/recommendations/123 and /456 share one series.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Fine at the low end: the target is p99 <= 5 ms, so most of the resolution sits below 10 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
UNMATCHED_ROUTE = "<unmatched>"


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("leadre_serve_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("leadre_serve_request_seconds", "HTTP request latency, server side",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("leadre_serve_fallbacks", "Answers filled from the fallback, by why", ["reason"],
                                 registry=r)
        self.fallback_items = Counter("leadre_serve_fallback_items", "Ads served from the fallback", registry=r)
        self.nearline_items = Counter("leadre_serve_nearline_items", "Ads served from the candidate store",
                                      registry=r)
        self.store_errors = Counter("leadre_serve_store_errors", "Candidate store reads that raised", registry=r)
        self.bundle = Gauge("leadre_serve_bundle_info", "The serving bundle: 1 on the current version's series",
                            ["model_version", "ads_version"], registry=r)
        self.reloads = Counter("leadre_serve_bundle_reloads", "Bundle swaps (a new version went live)", registry=r)
        self.reload_failures = Counter("leadre_serve_bundle_reload_failures",
                                       "Bundle loads that raised (the previous bundle kept serving)", registry=r)
        self.snapshot = Gauge("leadre_serve_snapshot_info", "The candidate store's current snapshot",
                              ["snapshot_id", "model_version"], registry=r)
        self.snapshot_created = Gauge("leadre_serve_snapshot_created_timestamp_seconds",
                                      "When the current snapshot's near-line run started", registry=r)
        # labels() takes a lock and hashes its arguments on every call; the hot path looks its children up here.
        self._fallback_children: dict[str, Any] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def fallback(self, reason: str) -> Any:
        child = self._fallback_children.get(reason)
        if child is None:
            child = self._fallback_children[reason] = self.fallbacks.labels(reason)
        return child

    def request(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """(request counter, latency histogram) children for one route, method and status."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(route, method, str(status)),
                                                      self.latency.labels(route, str(status)))
        return children

    def set_bundle(self, model_version: str, ads_version: str) -> None:
        self.bundle.clear()  # one series at a time: a dashboard reads the label of the series that is 1
        self.bundle.labels(model_version, ads_version).set(1)

    def set_snapshot(self, snapshot_id: str, model_version: str, created_ts: float) -> None:
        self.snapshot.clear()
        self.snapshot.labels(snapshot_id, model_version).set(1)
        self.snapshot_created.set(created_ts)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before it starts a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # FastAPI's router records the matched route in the scope it was handed (the same dict).
            route = scope.get("route")
            count, latency = self.metrics.request(getattr(route, "path", UNMATCHED_ROUTE), scope["method"], status)
            count.inc()
            latency.observe(time.perf_counter() - start)
