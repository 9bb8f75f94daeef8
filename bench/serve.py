"""`python -m bench.serve [--seconds 60] [--rate 500]`: the online service under an open-loop load on loopback.

The real server (uvicorn, one worker, `python -m leadre.serve.server`) runs in a subprocess over a generated SQLite
store (5k users × 50 candidates, some of them paused or expired ads) and a 2k-ad bundle. The load generator, in this
process, speaks HTTP/1.1 over raw keep-alive sockets (asyncio + uvloop): httpx would spend more CPU per request than
the server does. Phases, in this order, in one run:

1. generator ceiling: the generator flat out (closed loop) against a stub server that answers every request with a
   canned 200 and no routing: the most this generator can drive. It must sit well above the figures below;
2. hello ceiling: the same closed loop against the real server's bare /healthz, its framework floor;
3. recommendations ceiling: closed loop against /v1/recommendations; the ratio to (2) is the goal (>= 0.5);
4. open loop at --rate for --seconds against /v1/recommendations: requests leave on a fixed schedule whatever the
   server does, and latency is measured from the scheduled instant (no coordinated omission), so a stall shows up
   in p99 instead of silently lowering the rate. Latency from the actual send is reported beside it, together with
   the send lag, so generator lateness can be told apart from server time.

The machine's cores are shared by the server and the generator (and anything else running): the CPU seconds both
used are reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from bench import save_results

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class BenchConfig:
    users: int = 5_000
    ads: int = 2_000
    industries: int = 40
    candidates_per_user: int = 50
    unavailable_ad_share: float = 0.05  # paused or expired since the snapshot: filtered on every request
    unknown_user_share: float = 0.05  # requests for users the snapshot lacks: the fallback path
    k: int = 10
    closed_loop_connections: int = 32  # for the ceilings: enough to keep a single worker busy
    open_loop_connections: int = 64  # opened before the open loop starts; more are opened if all are busy
    open_loop_max_connections: int = 1024
    request_timeout_s: float = 2.0
    warmup_s: float = 2.0
    startup_timeout_s: float = 60.0
    seed: int = 5


# ---------------------------------------------------------------------------------------------------------------
# The world the server reads


def make_inputs(root: Path, cfg: BenchConfig) -> tuple[str, Path]:
    from leadre.serve.bundle import ServingBundle, write_bundle
    from leadre.serve.store import open_store

    rng = np.random.default_rng(cfg.seed)
    ad_ids = np.arange(1_000_000, 1_000_000 + cfg.ads, dtype=np.int64)
    industries = np.array([f"industry_{i % 8}/sub_{i}" for i in range(cfg.industries)])
    ads = pd.DataFrame({
        "ad_id": ad_ids,
        "industry": industries[rng.integers(cfg.industries, size=cfg.ads)],
        "ecpm": rng.lognormal(1.0, 0.5, cfg.ads),
        "popularity": rng.lognormal(0.0, 1.0, cfg.ads),
        "status": np.where(rng.random(cfg.ads) < cfg.unavailable_ad_share / 2, "paused", "active"),
        "expires_at": pd.Timestamp.now(tz="UTC") + pd.to_timedelta(rng.integers(1, 60, cfg.ads), unit="D"),
    })
    expired = rng.random(cfg.ads) < cfg.unavailable_ad_share / 2
    ads.loc[expired, "expires_at"] = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    bundle = write_bundle(root / "bundle.parquet", ServingBundle("bench-v1", ads))

    popularity = ads["popularity"].to_numpy() / ads["popularity"].sum()

    def rows():
        for user in range(cfg.users):
            picked = rng.choice(ad_ids, size=cfg.candidates_per_user, replace=False, p=popularity)
            yield user, picked, rng.random(cfg.candidates_per_user)

    url = f"sqlite:///{root / 'candidates.sqlite'}"
    store = open_store(url)
    store.write_snapshot(rows(), "bench-nearline", datetime.now(UTC))
    store.close()
    return url, bundle


def request_paths(cfg: BenchConfig, n: int) -> list[bytes]:
    rng = np.random.default_rng(cfg.seed + 1)
    users = rng.integers(cfg.users, size=n)
    unknown = rng.random(n) < cfg.unknown_user_share
    users = np.where(unknown, users + 10**9, users)  # ids the snapshot does not hold
    return [f"/v1/recommendations/{u}?k={cfg.k}".encode() for u in users.tolist()]


# ---------------------------------------------------------------------------------------------------------------
# Processes: the real server, and the stub that measures the generator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(store_url: str, bundle: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leadre.serve.server", "--store", store_url, "--bundle",
                             str(bundle), "--host", HOST, "--port", str(port), "--log-level", "warning"], cwd=REPO)


def start_stub(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.serve", "--stub-port", str(port)], cwd=REPO)


def run_stub(port: int) -> None:
    """A server that only frames requests and answers a canned 200: the cheapest thing a generator can talk to."""
    body = b'{"status":"ok"}'
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            requests = self.buffer.count(b"\r\n\r\n")  # GETs only: no bodies to skip
            if requests:
                self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4:]
                self.transport.write(reply * requests)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Canned, HOST, port)
        await server.serve_forever()

    _event_loop_run(serve())


async def wait_until_up(port: int, path: bytes, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = await Connection.open(port)
            status, _ = await conn.get(path, timeout_s)
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not come up (exit code {proc.poll()})")
        await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------------------
# The load generator


class Connection:
    """One keep-alive HTTP/1.1 connection; `get` sends a request and reads the whole response."""

    _LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def get(self, path: bytes, timeout_s: float) -> tuple[int, bytes]:
        self.writer.write(b"GET %s HTTP/1.1\r\nhost: bench\r\n\r\n" % path)
        async with asyncio.timeout(timeout_s):  # unlike wait_for, no extra task per request
            return await self._response()

    async def _response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = self._LENGTH.search(head)
        body = await self.reader.readexactly(int(length.group(1))) if length else b""
        return int(head[9:12]), body

    def close(self) -> None:
        self.writer.close()


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latency_s: list[float] = field(default_factory=list)  # from the scheduled instant (open loop) or the send
    service_s: list[float] = field(default_factory=list)  # from the actual send
    lag_s: list[float] = field(default_factory=list)  # send - scheduled

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def closed_loop(port: int, paths: list[bytes], seconds: float, connections: int,
                      timeout_s: float) -> dict[str, Any]:
    """`connections` clients, each sending its next request as soon as the last answer is in: the max rate."""
    conns = [await Connection.open(port) for _ in range(connections)]
    tally = Tally()
    cpu0, start = time.process_time(), time.perf_counter()
    end = start + seconds

    async def client(slot: int, conn: Connection) -> None:
        i = slot
        while (sent := time.perf_counter()) < end:
            try:
                status, _ = await conn.get(paths[i % len(paths)], timeout_s)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                tally.error(type(exc).__name__)
                conn.close()
                conn = await Connection.open(port)
                continue
            tally.latency_s.append(time.perf_counter() - sent)
            if status == 200:
                tally.ok += 1
            else:
                tally.error(f"http_{status}")
            i += connections

    await asyncio.gather(*(client(slot, conn) for slot, conn in enumerate(conns)))
    wall = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return {"connections": connections, "seconds": wall, "ok": tally.ok, "errors": tally.errors,
            "error_kinds": tally.error_kinds, "req_per_s": tally.ok / wall,
            "generator_cpu_share": (time.process_time() - cpu0) / wall, **percentiles("latency", tally.latency_s)}


async def open_loop(port: int, paths: list[bytes], rate: float, seconds: float, cfg: BenchConfig) -> dict[str, Any]:
    """Requests leave at t0 + i/rate whatever happens to earlier ones; each takes an idle connection or a new one."""
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in whole milliseconds
    # FIFO, not a stack: every connection stays in use, so none idles past uvicorn's keep-alive timeout (5 s) and
    # gets closed under a request.
    idle = deque([await Connection.open(port) for _ in range(cfg.open_loop_connections)])
    opened = len(idle)
    tally = Tally()
    pending: set[asyncio.Task] = set()

    async def one(conn: Connection, path: bytes, scheduled: float) -> None:
        sent = clock()
        try:
            status, _ = await conn.get(path, cfg.request_timeout_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            tally.error(type(exc).__name__)
            conn.close()  # its stream may hold half an answer: never reuse it
            return
        done = clock()
        idle.append(conn)
        tally.lag_s.append(sent - scheduled)
        tally.latency_s.append(done - scheduled)
        tally.service_s.append(done - sent)
        if status == 200:
            tally.ok += 1
        else:
            tally.error(f"http_{status}")

    n = int(rate * seconds)
    cpu0 = time.process_time()
    t0 = clock() + 0.05
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            conn = idle.popleft()
        elif opened < cfg.open_loop_max_connections:
            conn = await Connection.open(port)
            opened += 1
        else:
            tally.error("no_free_connection")
            continue
        task = asyncio.create_task(one(conn, paths[i % len(paths)], scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    wall = clock() - t0
    for conn in idle:
        conn.close()
    return {"target_req_per_s": rate, "seconds": wall, "sent": n, "ok": tally.ok, "errors": tally.errors,
            "error_kinds": tally.error_kinds, "req_per_s": tally.ok / wall, "connections_opened": opened,
            "generator_cpu_share": (time.process_time() - cpu0) / wall,
            **percentiles("latency", tally.latency_s), **percentiles("service", tally.service_s),
            **percentiles("send_lag", tally.lag_s)}


def percentiles(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name}_{p}_ms": None for p in ("p50", "p90", "p99", "p999", "max")}
    ms = np.asarray(values) * 1000
    return {f"{name}_p50_ms": float(np.percentile(ms, 50)), f"{name}_p90_ms": float(np.percentile(ms, 90)),
            f"{name}_p99_ms": float(np.percentile(ms, 99)), f"{name}_p999_ms": float(np.percentile(ms, 99.9)),
            f"{name}_max_ms": float(ms.max())}


async def scrape_metrics(port: int, cfg: BenchConfig) -> dict[str, float]:
    """The server's own counters: fallback answers by reason, items by source, and the latency histogram of the
    recommendation route (cumulative bucket counts, keyed by upper bound)."""
    conn = await Connection.open(port)
    _, body = await conn.get(b"/metrics", cfg.request_timeout_s)
    conn.close()
    wanted = re.compile(r"^(leadre_serve_(?:fallbacks_total\{[^}]*\}|fallback_items_total|nearline_items_total|"
                        r"store_errors_total))\s+(\S+)$", re.MULTILINE)
    bucket = re.compile(r'^leadre_serve_request_seconds_bucket\{le="([^"]+)",route="/v1/recommendations/\{user_id\}",'
                        r'status="200"\}\s+(\S+)$', re.MULTILINE)
    text = body.decode()
    found = {name: float(value) for name, value in wanted.findall(text)}
    found.update({f"bucket_le_{le}": float(count) for le, count in bucket.findall(text)})
    return found


def server_side_quantiles(before: dict[str, float], after: dict[str, float]) -> dict[str, str]:
    """p50/p99 of the server's own timing (inside the app, no socket or queueing time) as histogram bucket bounds."""
    buckets = sorted(((float(k.removeprefix("bucket_le_")), after[k] - before.get(k, 0.0))
                      for k in after if k.startswith("bucket_le_")), key=lambda b: b[0])
    total = buckets[-1][1] if buckets else 0.0
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        bound = next((le for le, count in buckets if total and count >= q * total), float("inf"))
        out[f"server_{name}_ms_at_most"] = f"{bound * 1000:g}"
    return out


# ---------------------------------------------------------------------------------------------------------------


def _event_loop_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def runqueue_wait_s(pid: int) -> float:
    """Seconds this process's threads spent runnable but waiting for a CPU (Linux schedstat; 0 elsewhere). On a
    shared machine this, not the code, is where the latency tail comes from."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def cpu_seconds(proc: subprocess.Popen) -> float:
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


async def drive(cfg: BenchConfig, store_url: str, bundle: Path, seconds: float, rate: float,
                ceiling_seconds: float) -> dict[str, Any]:
    paths = request_paths(cfg, max(int(rate * seconds), 50_000))
    hello = [b"/healthz"]
    result: dict[str, Any] = {}

    stub_port = free_port()
    stub = start_stub(stub_port)
    try:
        await wait_until_up(stub_port, b"/", cfg.startup_timeout_s, stub)
        print("generator ceiling (stub server)…", flush=True)
        result["generator_ceiling"] = await closed_loop(stub_port, hello, ceiling_seconds,
                                                        cfg.closed_loop_connections, cfg.request_timeout_s)
    finally:
        stop(stub)

    port = free_port()
    server = start_server(store_url, bundle, port)
    try:
        await wait_until_up(port, b"/readyz", cfg.startup_timeout_s, server)
        await closed_loop(port, paths, cfg.warmup_s, cfg.closed_loop_connections, cfg.request_timeout_s)
        for name, target in (("hello_ceiling", hello), ("recommendations_ceiling", paths)):
            print(f"{name.replace('_', ' ')}…", flush=True)
            cpu0 = cpu_seconds(server)
            result[name] = await closed_loop(port, target, ceiling_seconds, cfg.closed_loop_connections,
                                             cfg.request_timeout_s)
            r = result[name]
            r["server_cpu_share"] = (cpu_seconds(server) - cpu0) / r["seconds"]
            r["server_cpu_us_per_request"] = r["server_cpu_share"] * 1e6 / r["req_per_s"]
        print(f"open loop: {rate:g} req/s for {seconds:g} s…", flush=True)
        before = await scrape_metrics(port, cfg)
        cpu0 = cpu_seconds(server)
        waits0 = runqueue_wait_s(server.pid), runqueue_wait_s(os.getpid())
        result["open_loop"] = await open_loop(port, paths, rate, seconds, cfg)
        o = result["open_loop"]
        o["server_cpu_share"] = (cpu_seconds(server) - cpu0) / o["seconds"]
        o["server_cpu_us_per_request"] = o["server_cpu_share"] * 1e6 / o["req_per_s"]
        o["server_runqueue_wait_ms_per_s"] = (runqueue_wait_s(server.pid) - waits0[0]) * 1000 / o["seconds"]
        o["generator_runqueue_wait_ms_per_s"] = (runqueue_wait_s(os.getpid()) - waits0[1]) * 1000 / o["seconds"]
        after = await scrape_metrics(port, cfg)
        result["open_loop"]["server_counters"] = {k: v - before.get(k, 0.0) for k, v in after.items()
                                                  if not k.startswith("bucket_le_")}
        result["open_loop"].update(server_side_quantiles(before, after))
    finally:
        stop(server)
    result["ratio_to_hello"] = (result["recommendations_ceiling"]["req_per_s"]
                                / result["hello_ceiling"]["req_per_s"])
    # The same ratio from CPU time per request: what it would be if both ceilings had got the same CPU share, which
    # on a shared machine they may not (the other tenants' load moves between the two phases).
    result["cpu_ratio_to_hello"] = (result["hello_ceiling"]["server_cpu_us_per_request"]
                                    / result["recommendations_ceiling"]["server_cpu_us_per_request"])
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)  # the stub has no server CPU to report


def report(result: dict[str, Any]) -> str:
    o = result["open_loop"]
    lines = [
        f"{result['users']:,} users × {result['candidates_per_user']} candidates, {result['ads']:,} ads; "
        f"{result['cpus']} CPUs (load average {result['load_average_before']:.2f} before the run)", "",
        "| phase | req/s | errors | p50 ms | p99 ms | max ms | generator CPU | server CPU | server CPU us/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("generator_ceiling", "hello_ceiling", "recommendations_ceiling"):
        r = result[name]
        lines.append(f"| {name.replace('_', ' ')} (closed loop, {r['connections']} conns) | {r['req_per_s']:,.0f} | "
                     f"{r['errors']} | {r['latency_p50_ms']:.2f} | {r['latency_p99_ms']:.2f} | "
                     f"{r['latency_max_ms']:.1f} | {r['generator_cpu_share']:.0%} | "
                     f"{_fmt(r.get('server_cpu_share'), '.0%')} | {_fmt(r.get('server_cpu_us_per_request'), '.0f')} |")
    lines.append(f"| open loop at {o['target_req_per_s']:g} req/s, {o['seconds']:.0f} s | {o['req_per_s']:,.0f} | "
                 f"{o['errors']} | {o['latency_p50_ms']:.2f} | {o['latency_p99_ms']:.2f} | {o['latency_max_ms']:.1f} |"
                 f" {o['generator_cpu_share']:.0%} | {o['server_cpu_share']:.0%} | "
                 f"{o['server_cpu_us_per_request']:.0f} |")
    lines += [
        "",
        f"open loop: latency from the scheduled instant p50 {o['latency_p50_ms']:.2f} / p90 {o['latency_p90_ms']:.2f}"
        f" / p99 {o['latency_p99_ms']:.2f} / p99.9 {o['latency_p999_ms']:.2f} ms; from the send p99 "
        f"{o['service_p99_ms']:.2f} ms; send lag p50 {o['send_lag_p50_ms']:.2f} / p99 {o['send_lag_p99_ms']:.2f} ms; "
        f"inside the app p50 <= {o['server_p50_ms_at_most']} / p99 <= {o['server_p99_ms_at_most']} ms; "
        f"{o['connections_opened']} connections; errors {o['error_kinds'] or 'none'}",
        f"waiting for a CPU (run queue) during the open loop: server {o['server_runqueue_wait_ms_per_s']:.0f} ms/s, "
        f"generator {o['generator_runqueue_wait_ms_per_s']:.0f} ms/s",
        f"server counters during the open loop: {o['server_counters']}",
        f"recommendations / hello max req/s: {result['ratio_to_hello']:.2f} (goal >= 0.5; by server CPU per "
        f"request {result['cpu_ratio_to_hello']:.2f}); "
        f"p99 {o['latency_p99_ms']:.2f} ms at {o['req_per_s']:.0f} req/s (goal <= 5 ms at 500)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="open-loop duration")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop request rate (req/s)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="duration of each closed-loop ceiling")
    parser.add_argument("--users", type=int, default=BenchConfig.users)
    parser.add_argument("--stub-port", type=int, help=argparse.SUPPRESS)  # internal: run the stub server
    args = parser.parse_args()
    if args.stub_port:
        run_stub(args.stub_port)
        return
    cfg = BenchConfig(users=args.users)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="leadre-bench-serve-") as tmp:
        print(f"generating {cfg.users:,} users' candidates…", flush=True)
        store_url, bundle = make_inputs(Path(tmp), cfg)
        result = _event_loop_run(drive(cfg, store_url, bundle, args.seconds, args.rate, args.ceiling_seconds))
    result.update({"users": cfg.users, "ads": cfg.ads, "candidates_per_user": cfg.candidates_per_user, "k": cfg.k,
                   "cpus": os.cpu_count(), "load_average_before": load_before, "config": cfg.__dict__})
    print(report(result))
    print(f"\nsaved {save_results('serve', result)}")


if __name__ == "__main__":
    main()
