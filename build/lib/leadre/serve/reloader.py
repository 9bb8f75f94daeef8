"""Hot reload of the serving bundle: poll the loader, compile a new version off the request path, swap it in whole.

Requests read `manager.current` once and use that object to the end, so a swap never mixes two bundles inside one
answer, and the swap itself is a single attribute assignment (atomic under the GIL). A load that raises leaves the
current bundle serving; the failure is counted and kept for /readyz and /admin/status until a later load succeeds.
A bundle without a champion (model_version None) is no failure: it is served (the labelled fallback), and the log
says so once, as a warning, when serving turns to it, not at every poll.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leadre.errors import UserError
from leadre.serve.bundle import BundleIndex, ServingBundle
from leadre.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
NO_CHAMPION_LABEL = "none"  # the bundle gauge's model_version while the fallback is served


@dataclass(frozen=True)
class ReloadFailure:
    at: datetime
    error: str  # "ExceptionType: message"
    trigger: str  # "startup", "poll" or "admin"

    def as_dict(self) -> dict[str, str]:
        return {"at": self.at.isoformat(), "error": self.error, "trigger": self.trigger}


@dataclass(frozen=True)
class ReloadResult:
    swapped: bool
    model_version: str | None  # serving now
    previous_version: str | None
    failure: ReloadFailure | None = None


class BundleManager:
    def __init__(self, loader: Callable[[], ServingBundle], fallback_size: int, metrics: ServeMetrics) -> None:
        self._loader = loader
        self._fallback_size = fallback_size
        self._metrics = metrics
        self._lock = threading.Lock()  # one load at a time: the poller and an admin call never race
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: BundleIndex | None = None
        self.loaded_at: datetime | None = None
        self.reloads = 0
        self.failures = 0
        self.last_failure: ReloadFailure | None = None
        self.last_attempt_failed = False
        self.last_check_at: datetime | None = None

    def reload(self, trigger: str, force: bool = False) -> ReloadResult:
        """Load the bundle; swap it in if its version differs from the current one's (or `force`)."""
        with self._lock:
            previous = self.current
            previous_version = previous.model_version if previous else None
            self.last_check_at = datetime.now(UTC)
            try:
                bundle = self._loader()
                if force or previous is None or bundle.key != previous.key:
                    index = BundleIndex(bundle, self._fallback_size)
                else:
                    index = None
            except Exception as exc:  # a bad bundle must never take down the one serving now
                failure = ReloadFailure(datetime.now(UTC), f"{type(exc).__name__}: {exc}", trigger)
                self.failures += 1
                self.last_failure = failure
                # The traceback once per outage, then one line per attempt: a poll every few seconds against a
                # broken registry must not bury the log. None for our own errors: their message says what to fix.
                unexpected = not isinstance(exc, UserError) and not self.last_attempt_failed
                detail = f"\n{traceback.format_exc()}" if unexpected else ""
                self.last_attempt_failed = True
                self._metrics.reload_failures.inc()
                log.error("bundle reload (%s) failed: %s; still serving %s%s", trigger, failure.error,
                          previous_version, detail)
                return ReloadResult(False, previous_version, previous_version, failure)
            self.last_attempt_failed = False
            if index is None:
                return ReloadResult(False, previous_version, previous_version)
            self.current = index
            self.loaded_at = datetime.now(UTC)
            self.reloads += 1
            self._metrics.reloads.inc()
            self._metrics.set_bundle(index.model_version or NO_CHAMPION_LABEL, index.ads_version)
            if index.model_version is None and (previous is None or previous.model_version is not None):
                log.warning("no champion in the registry: serving the labelled fallback (the near-line run's "
                            "baseline lists, popular ads for the rest; %d live ads) until one is promoted",
                            len(index))
            else:
                log.info("serving bundle %s (ads %r, %d live ads; was %s)", index.model_version, index.ads_version,
                         len(index), previous_version)
            return ReloadResult(True, index.model_version, previous_version)

    def start_polling(self, interval_s: float, on_tick: Callable[[], None] | None = None) -> None:
        """Poll every `interval_s` in a daemon thread; `on_tick` runs after each poll (e.g. refresh store gauges)."""
        if interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval_s):
                self.reload("poll")
                if on_tick is not None:
                    try:
                        on_tick()
                    except Exception:  # a gauge refresh is best effort; the next tick tries again
                        log.warning("poll tick failed", exc_info=True)

        self._thread = threading.Thread(target=run, name="leadre-bundle-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def status(self) -> dict[str, Any]:
        current = self.current
        return {
            "model_version": current.model_version if current else None,
            # what the answers rank with: the champion's lists, the fallback (no champion), or nothing yet (503)
            "serving": None if current is None else "champion" if current.model_version else "fallback",
            "ads_version": current.ads_version if current else None,
            "live_ads": len(current) if current else 0,
            "loaded_at": self.loaded_at.isoformat() if self.loaded_at else None,
            "last_check_at": self.last_check_at.isoformat() if self.last_check_at else None,
            "reloads": self.reloads,
            "reload_failures": self.failures,
            "last_reload_failed": self.last_attempt_failed,
            "last_failure": self.last_failure.as_dict() if self.last_failure else None,
        }
