"""Run the online service with uvicorn: `run_server(settings, host, port)`, or from a shell

    python -m leadre.serve.server --store sqlite:///data/serving/candidates.sqlite --bundle bundle.parquet

(the shell form reads the bundle from a file, see leadre/serve/bundle.py; the admin key from $LEADRE_ADMIN_API_KEY).
One worker per process: the bundle index and the store's connections live in the process, so scale out with more
pods (or processes behind a balancer), each polling the bundle on its own.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from dataclasses import fields
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from leadre.serve.app import create_app
from leadre.serve.bundle import FileBundleLoader
from leadre.serve.settings import ADMIN_API_KEY_ENV, ServeSettings, admin_key_from_env

STARTUP_POLL_S = 0.01


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    # loop/http "auto" pick uvloop and httptools when installed (they are, via uvicorn[standard]'s pins); the
    # access log is off because one log line per request costs more than the request itself.
    return uvicorn.Config(app, host=host, port=port, workers=1, loop="auto", http="auto", lifespan="on",
                          access_log=False, log_level=log_level)


def run_server(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM (uvicorn finishes in-flight requests, then the lifespan stops the poller)."""
    uvicorn.Server(uvicorn_config(create_app(settings), host, port, log_level)).run()


class BackgroundServer:
    """A real uvicorn server in a thread on a free loopback port (tests): `with BackgroundServer(app) as s: s.url`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", startup_timeout_s: float = 10.0,
                 log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.log_level = log_level
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        # Bind first, on port 0, and hand uvicorn the socket: no race for a "free" port between two test servers.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port, self.log_level))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"uvicorn-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"uvicorn did not start on {self.url} within {self.startup_timeout_s}s")
            time.sleep(STARTUP_POLL_S)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.startup_timeout_s)


def main(argv: list[str] | None = None) -> None:
    defaults = {f.name: f.default for f in fields(ServeSettings)}
    parser = argparse.ArgumentParser(prog="python -m leadre.serve.server", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=defaults["store_url"], help="candidate store URL (sqlite:/// or redis://)")
    parser.add_argument("--bundle", required=True, help="serving bundle file (leadre.serve.bundle.write_bundle)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reload-interval", type=float, default=defaults["reload_interval_s"])
    parser.add_argument("--staleness-limit", type=float, default=defaults["staleness_limit_s"])
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = ServeSettings(bundle_loader=FileBundleLoader(args.bundle), store_url=args.store,
                             admin_api_key=admin_key_from_env(ADMIN_API_KEY_ENV),
                             reload_interval_s=args.reload_interval, staleness_limit_s=args.staleness_limit)
    run_server(settings, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
