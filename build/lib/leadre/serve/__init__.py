"""Online serving: the candidate store the near-line job publishes to, and the FastAPI service that reads it.

`open_store(url)` → a `CandidateStore`; `create_app(ServeSettings(...))` → the FastAPI app; `run_server` runs it.
"""

from leadre.serve.bundle import (
    BundleError,
    FileBundleLoader,
    ServingBundle,
    read_bundle,
    write_bundle,
)
from leadre.serve.store import (
    Candidates,
    CandidateStore,
    SnapshotInfo,
    StoreError,
    open_store,
)

__all__ = [
    "BundleError", "Candidates", "CandidateStore", "FileBundleLoader", "ServeSettings", "ServingBundle",
    "SnapshotInfo", "StoreError", "create_app", "open_store", "read_bundle", "run_server", "write_bundle",
]


def __getattr__(name: str):
    # The web stack (FastAPI, uvicorn, prometheus-client) loads only for callers that serve, not for the near-line
    # writer that needs just the store.
    if name == "create_app":
        from leadre.serve.app import create_app

        return create_app
    if name == "run_server":
        from leadre.serve.server import run_server

        return run_server
    if name == "ServeSettings":
        from leadre.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
