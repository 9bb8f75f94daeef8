"""`python -m leadre.serve.server`: the shell entry point, as a real process (start, answer, stop on SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from leadre.serve.bundle import write_bundle
from leadre.serve.store import open_store
from tests.serve.conftest import free_port, make_bundle

# Real uvicorn servers on loopback (threads or processes): the suite's `slow` kind, still run by default.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def test_server_process_serves_and_stops_cleanly(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'candidates.sqlite'}"
    store = open_store(store_url)
    store.write_snapshot([(5, [1003, 1001], [0.9, 0.1])], "nearline-1")
    store.close()
    bundle = write_bundle(tmp_path / "bundle.parquet", make_bundle("champion-3"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "leadre.serve.server", "--store", store_url, "--bundle", str(bundle),
         "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env={**os.environ, "LEADRE_ADMIN_API_KEY": "k"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        body = httpx.get(f"{url}/v1/recommendations/5", params={"k": 2}).json()
        assert [i["ad_id"] for i in body["items"]] == [1003, 1001]
        assert (body["model_version"], body["bundle_version"]) == ("nearline-1", "champion-3")
        status = httpx.get(f"{url}/admin/status", headers={"X-API-Key": "k"})
        assert status.status_code == 200  # the key came from $LEADRE_ADMIN_API_KEY
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the lifespan shutdown, then re-raises the signal it caught: -SIGTERM is a clean stop.
        assert proc.wait(START_TIMEOUT_S) in (0, -signal.SIGTERM)
        assert b"Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
