"""Settings of the online service. Plain dataclass: the owner maps a `serve:` section of params.yaml onto it and
supplies the bundle loader (code, not configuration)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from leadre.serve.bundle import ServingBundle

ADMIN_API_KEY_ENV = "LEADRE_ADMIN_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    bundle_loader: Callable[[], ServingBundle]  # returns the current bundle; called at start-up and every poll
    store_url: str = "sqlite:///data/serving/candidates.sqlite"  # or redis://host:6379/0
    # None disables the admin routes (every call gets 403). Read it from the environment, never from params.yaml.
    admin_api_key: str | None = None
    default_k: int = 10
    max_k: int = 100
    fallback_size: int = 200  # most popular live ads kept per industry and overall, to fill short answers
    fallback_industries: int = 3  # how many of the user's top industries the fill draws from (then global)
    staleness_limit_s: float = 86_400.0  # a snapshot entry older than this is ignored (fallback instead)
    reload_interval_s: float = 30.0  # bundle poll period; 0 turns polling off (POST /admin/reload still works)
    stop_timeout_s: float = 5.0  # how long shutdown waits for the poller to finish a load in progress
    # request headers beyond these are refused with 431: a client has no reason to send more, and the server would
    # otherwise hold and parse whatever it is sent
    max_header_bytes: int = 16_384  # names + values, all headers of a request together
    max_headers: int = 100

    def __post_init__(self) -> None:
        if not callable(self.bundle_loader):
            raise ValueError("bundle_loader must be callable")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"default_k must be within 1..max_k ({self.max_k}), got {self.default_k}")
        for name in ("fallback_size", "fallback_industries", "max_header_bytes", "max_headers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("staleness_limit_s", "reload_interval_s", "stop_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.fallback_size < self.max_k:
            raise ValueError(f"fallback_size ({self.fallback_size}) must be >= max_k ({self.max_k}), or an unknown "
                             "user could get fewer than k ads while more are live")


def admin_key_from_env(env: str = ADMIN_API_KEY_ENV) -> str | None:
    return os.environ.get(env) or None
