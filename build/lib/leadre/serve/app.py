"""The online service: `create_app(settings)` → FastAPI.

Routes: GET /v1/recommendations/{user_id}?k=, /healthz (process up), /readyz (bundle loaded and store readable;
with or without a champion: without one the answers are the labelled fallback),
/metrics (Prometheus), POST /admin/reload and GET /admin/status (header X-API-Key).

The recommendation route is `async def` on purpose: a candidate read is a few tens of microseconds (an SQLite
lookup or one Redis round trip), cheaper than handing the request to the thread pool and back. Routes that may
block longer (reload, status, readiness, metrics) are plain `def`, which FastAPI runs in its thread pool.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from leadre.serve.metrics import MetricsMiddleware, ServeMetrics
from leadre.serve.recommend import FallbackReason, recommend
from leadre.serve.reloader import BundleManager
from leadre.serve.settings import ServeSettings
from leadre.serve.store import INT64_MAX, CandidateStore, fallback_baseline, open_store

log = logging.getLogger(__name__)
API_KEY_HEADER = "X-API-Key"


class ApiError(Exception):
    """An error answer: `{"error": code, "message": message, **extra}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _json(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson (already installed: dvc-data depends on it) encodes a 10-item answer ~10x faster than json, and a
    # ready Response skips FastAPI's response-model pass.
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


class Service:
    """What the routes share: settings, the store, the bundle manager and the metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.manager = BundleManager(settings.bundle_loader, settings.fallback_size, self.metrics)
        self.store: CandidateStore | None = None
        self.started_at = datetime.now(UTC)
        self.store_failing = False

    def start(self) -> None:
        self.store = open_store(self.settings.store_url)
        # A failed first load (no ads file yet, a registry down) is not fatal: the app starts unready (503) and the
        # poller keeps trying. No champion is no failure: the bundle loads and the fallback is served.
        self.manager.reload("startup")
        self.refresh_store_gauges()
        self.manager.start_polling(self.settings.reload_interval_s, on_tick=self.refresh_store_gauges)

    def stop(self) -> None:
        self.manager.stop(self.settings.stop_timeout_s)
        if self.store is not None:
            self.store.close()

    def store_read_failed(self, user_id: int) -> None:
        self.metrics.store_errors.inc()
        if not self.store_failing:  # log the first failure in full, not one traceback per request of an outage
            self.store_failing = True
            log.exception("candidate store read failed (user %s); serving the fallback until it recovers", user_id)

    def store_read_recovered(self) -> None:
        self.store_failing = False
        log.warning("candidate store readable again")

    def refresh_store_gauges(self) -> None:
        info = self.store.snapshot_info() if self.store is not None else None
        if info is not None:
            self.metrics.set_snapshot(info.snapshot_id, info.model_version, info.created_at.timestamp())

    def store_status(self) -> dict[str, Any]:
        try:
            info = self.store.snapshot_info() if self.store is not None else None
        except Exception as exc:  # the point of this call is to report the failure, not to raise it
            return {"readable": False, "error": f"{type(exc).__name__}: {exc}", "snapshot": None}
        return {"readable": self.store is not None, "error": None, "snapshot": info.as_dict() if info else None}


class RequestHeaderLimit:
    """431 for a request whose headers exceed `max_count` or `max_bytes` (names and values together).

    uvicorn's httptools parser, the one it picks, has no bound of its own (h11's is the 16 kB default of
    `h11_max_incomplete_event_size`); checking the parsed headers here holds whichever parser runs. Pure ASGI, not
    BaseHTTPMiddleware: it costs one pass over a handful of header pairs per request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_count: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_count = max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers) if len(headers) <= self.max_count else 0
            if len(headers) > self.max_count or size > self.max_bytes:
                message = (f"{len(headers)} request headers, at most {self.max_count} allowed"
                           if len(headers) > self.max_count
                           else f"request headers of {size} bytes, at most {self.max_bytes} allowed")
                response = _json({"error": "request_headers_too_large", "message": message}, 431,
                                 headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: ServeSettings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="LEADRE online recommendations", lifespan=lifespan)
    app.state.service = service
    # inside the metrics middleware, so refused requests are counted (status 431) like any other answer
    app.add_middleware(RequestHeaderLimit, max_bytes=settings.max_header_bytes, max_count=settings.max_headers)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _install_error_handlers(app)

    def require_admin(x_api_key: Annotated[str | None, Header(alias=API_KEY_HEADER)] = None) -> None:
        expected = settings.admin_api_key
        if not expected:
            raise ApiError(403, "admin_disabled", "admin routes are disabled: the service has no admin API key")
        if x_api_key is None:
            raise ApiError(401, "unauthorized", f"missing {API_KEY_HEADER} header")
        if not hmac.compare_digest(x_api_key.encode(), expected.encode()):
            raise ApiError(403, "forbidden", f"invalid {API_KEY_HEADER}")

    # Parsed by hand rather than declared as typed FastAPI parameters: FastAPI's per-request validation of typed
    # parameters cost ~30 us a request in a profile, more than the store read and the ranking together. The OpenAPI
    # schema still documents both, and errors have the same shape as every other validation error.
    @app.get("/v1/recommendations/{user_id}", openapi_extra={"parameters": [
        {"name": "user_id", "in": "path", "required": True, "description": "user id (int64, >= 0)",
         "schema": {"type": "integer", "minimum": 0, "maximum": INT64_MAX}},
        {"name": "k", "in": "query", "required": False, "description": "how many ads",
         "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": settings.default_k}},
    ]})
    async def recommendations(request: Request) -> Response:
        user_id = _int_param(request.path_params["user_id"], "user_id", "path", 0, INT64_MAX)
        raw_k = request.query_params.get("k")
        k = settings.default_k if raw_k is None else _int_param(raw_k, "k", "query", 1, settings.max_k)
        index = service.manager.current
        store = service.store
        if index is None or store is None:
            raise ApiError(503, "not_ready", "no serving bundle loaded yet")
        store_failed = False
        try:
            candidates = store.get(user_id)
        except Exception:
            # Degrade to the fallback rather than fail the ad slot; the counter and the log say it happened.
            service.store_read_failed(user_id)
            candidates, store_failed = None, True
        else:
            if service.store_failing:
                service.store_read_recovered()
        now = time.time()
        rec = recommend(index, candidates, k, now, settings.staleness_limit_s, settings.fallback_industries,
                        store_failed=store_failed)
        # a snapshot the near-line job published without a champion holds a baseline's lists: served, as fallback
        baseline = fallback_baseline(candidates.model_version) if candidates else None
        n = 0 if baseline else rec.nearline
        reason = (FallbackReason.NO_CHAMPION if index.model_version is None
                  else FallbackReason.NEARLINE_PENDING if baseline else rec.fallback_reason)
        metrics = service.metrics
        if reason is not None:
            metrics.fallback(reason.value).inc()
            metrics.fallback_items.inc(len(rec.ad_ids) - n)
        metrics.nearline_items.inc(n)
        items = [{"ad_id": ad_id, "score": score, "source": "nearline" if i < n else "fallback"}
                 for i, (ad_id, score) in enumerate(zip(rec.ad_ids, rec.scores))]
        return _json({
            "user_id": user_id,
            "items": items,
            # The version that ranked the near-line candidates (null for a user the snapshot does not hold, or for
            # a fallback snapshot); bundle_version is the champion whose live-ads list filtered and filled the
            # answer (null: no champion yet).
            "model_version": None if baseline or not candidates else candidates.model_version,
            "snapshot_created_at": candidates.created_at.isoformat() if candidates else None,
            "bundle_version": index.model_version,
            "fallback_reason": reason.value if reason else None,
            # what the fallback items are: a baseline's per-user lists (the no-champion snapshot), else popular ads
            "fallback_source": baseline or ("popularity" if n < len(items) else None),
            "served_at": datetime.fromtimestamp(now, UTC).isoformat(),
        })

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        bundle = service.manager.status()
        store = service.store_status()
        ready = service.manager.current is not None and store["readable"]  # a fallback bundle is ready too
        return _json({"ready": ready, "bundle": bundle, "store": store}, 200 if ready else 503)

    @app.get("/metrics")
    def metrics_route() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", dependencies=[Depends(require_admin)])
    def admin_reload(
        force: Annotated[bool, Query(description="swap even if the loader returns the serving version")] = False,
    ) -> Response:
        result = service.manager.reload("admin", force=force)
        body = {"swapped": result.swapped, "model_version": result.model_version,
                "previous_version": result.previous_version}
        if result.failure is not None:
            raise ApiError(500, "reload_failed", f"bundle load failed; still serving {result.model_version}",
                           failure=result.failure.as_dict(), **body)
        return _json(body)

    @app.get("/admin/status", dependencies=[Depends(require_admin)])
    def admin_status() -> Response:
        return _json({
            "bundle": service.manager.status(),
            "store": service.store_status(),
            "started_at": service.started_at.isoformat(),
            "settings": {"store_url": _redact(settings.store_url), "default_k": settings.default_k,
                         "max_k": settings.max_k, "fallback_size": settings.fallback_size,
                         "fallback_industries": settings.fallback_industries,
                         "staleness_limit_s": settings.staleness_limit_s,
                         "reload_interval_s": settings.reload_interval_s},
        })

    return app


def _int_param(raw: str, name: str, where: str, low: int, high: int) -> int:
    # isdigit + isascii, not a bare int(): int() also takes " 7", "+7", "1_000" and non-ASCII digits; the length
    # check keeps a 10,000-digit "id" from reaching int() (which refuses over 4,300 digits with a ValueError).
    if len(raw) <= len(str(high)) and raw.isascii() and raw.isdigit() and low <= (value := int(raw)) <= high:
        return value
    raise ApiError(422, "invalid_request", f"invalid {name}", fields=[{
        "field": name, "in": where, "message": f"must be an integer in [{low}, {high}]", "input": raw}])


def _redact(url: str) -> str:
    """A store URL without its password (redis://:secret@host → redis://:***@host)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = creds.partition(":")
    return f"{scheme}{sep}{user}{colon}{'***' if colon else ''}@{host}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return _json({"error": exc.code, "message": exc.message, **exc.extra}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        fields = [{"field": ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0]),
                   "in": str(err["loc"][0]), "message": err["msg"], "input": _jsonable(err.get("input"))}
                  for err in exc.errors()]
        names = ", ".join(f["field"] for f in fields)
        return _json({"error": "invalid_request", "message": f"invalid {names}", "fields": fields}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json({"error": code, "message": str(exc.detail)}, exc.status_code, exc.headers)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
