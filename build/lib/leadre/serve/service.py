"""The online service as the platform runs it: settings from params.yaml, the bundle from the MLflow registry.

`RegistryBundleLoader` is what makes promotion reach serving without a restart: the service polls it, it asks the
registry which version `champion` names, and when that changes it returns a new bundle (that version + the serving
ads file the near-line run wrote). No champion yet is no failure: the bundle says so (model_version None) and the
service answers with the labelled fallback. If the registry cannot be read or the ads file is missing or broken, it
raises, and the service keeps serving the bundle it has and reports the failure on /readyz and /admin/status.
"""

from __future__ import annotations

import os
from pathlib import Path

from leadre.config import SQLITE_PREFIX, Params
from leadre.serve.bundle import BundleError, ServingBundle, read_bundle
from leadre.serve.settings import ServeSettings, admin_key_from_env

STORE_URL_ENV = "LEADRE_STORE_URL"


def store_url(params: Params) -> str:
    """$LEADRE_STORE_URL, else params' URL with a relative SQLite path resolved against the params folder."""
    url = params.url(os.environ.get(STORE_URL_ENV) or params.serve.store_url)
    if url.startswith(SQLITE_PREFIX):
        Path(url[len(SQLITE_PREFIX):]).parent.mkdir(parents=True, exist_ok=True)
    return url


class RegistryBundleLoader:
    """Champion version from the registry, live ads from the near-line run's ads file; cached until either moves."""

    def __init__(self, params: Params):
        self.params = params
        self.ads_file = params.path(params.serve.ads_file)
        self._key: tuple[str | None, tuple[int, int]] | None = None
        self._bundle: ServingBundle | None = None

    def __call__(self) -> ServingBundle:
        from leadre.registry.models import CHAMPION, alias_version

        champion = alias_version(self.params, CHAMPION)
        version = str(champion.version) if champion is not None else None
        try:
            stat = self.ads_file.stat()
        except FileNotFoundError:
            raise BundleError(f"{self.ads_file}: no serving ads file (run `leadre nearline` first)") from None
        key = (version, (stat.st_mtime_ns, stat.st_size))
        if key != self._key:
            ads = read_bundle(self.ads_file)
            # the champion moves first (promote), the ads file follows with the next near-line run: serve the new
            # version's name at once, with the freshest live ads there are
            self._bundle = ServingBundle(version, ads.ads, ads_version=ads.ads_version)
            self._key = key
        return self._bundle

    def __repr__(self) -> str:
        return f"RegistryBundleLoader({self.params.registry.model_name!r}@champion, ads={str(self.ads_file)!r})"


def serve_settings(params: Params, bundle_loader=None) -> ServeSettings:
    s = params.serve
    return ServeSettings(bundle_loader=bundle_loader or RegistryBundleLoader(params), store_url=store_url(params),
                         admin_api_key=admin_key_from_env(), default_k=s.default_k, max_k=s.max_k,
                         fallback_size=s.fallback_size, fallback_industries=s.fallback_industries,
                         staleness_limit_s=s.staleness_limit_s, reload_interval_s=s.reload_interval_s,
                         max_header_bytes=s.max_header_bytes, max_headers=s.max_headers)


def run_serve(params: Params, host: str | None = None, port: int | None = None) -> None:
    from leadre.serve.server import run_server
    from leadre.tracking import configure

    configure(params)  # the registry the loader polls
    run_server(serve_settings(params), host or params.serve.host, port or params.serve.port)
