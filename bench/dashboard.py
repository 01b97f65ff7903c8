"""Dashboard delivery latency on the real local Kafka broker (``make up`` first).

An isolated worker (own app id, topics, tables) serves ``/dashboard/ws/``; ``--clients`` WebSocket
clients (spread over ``--procs`` client processes, so one client process's parsing does not
stand for the server) connect to it. The bench then produces ``--events`` ``state.changed``
events to ``state.changes`` at ``--rate`` per second, each carrying its wall-clock produce time
(``delta.bench_sent``, taken just before ``send``). Every client records, for every delta, its
receive time minus that produce time: the path is broker → the worker's dashboard hub → fan-out →
client socket → client process. Each run first sends 20 untimed events (the first push after a
connection storm measures the storm), and the first run starts 15 s after the worker is ready
(past its one-off start-up work). The worker runs without the event-store sink (STORE_EVENTS=false),
so the figure is the dashboard path's.

Prints, per client count: deliveries received / expected, p50, p99 and max in ms (goal
< 50 ms p99 at 100 and at 1,000 clients; the state_to_dashboard SLA).

    python bench/dashboard.py [--clients 100,1000] [--events 300] [--rate 20] [--procs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from app.local import Stack  # noqa: E402
from core.settings import get_settings  # noqa: E402
from bench.pipeline import pct  # noqa: E402

BROKER = get_settings().kafka_broker.split("://", 1)[-1]


class RawClient(asyncio.Protocol):
    """A lean WebSocket client: the RFC 6455 handshake, then unmasked server frames parsed in
    ``data_received`` (no task switch per message), so the client process adds little to what is
    measured. Text frames, and pings (answered)."""

    def __init__(self, lat: list[float], expect: int, done: asyncio.Future, handshaken: asyncio.Future):
        self.lat, self.expect, self.done, self.handshaken = lat, expect, done, handshaken
        self.buf = bytearray()
        self.got = 0
        self.open = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.handshaken.set_exception(RuntimeError(bytes(self.buf[:200]).decode(errors="replace")))
                return
            del self.buf[:end + 4]
            self.open = True
            self.handshaken.set_result(None)
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            head = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, head = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, head = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < head + n:
                return
            opcode = self.buf[0] & 0x0F
            payload = bytes(self.buf[head:head + n])
            del self.buf[:head + n]
            if opcode == 0x9:  # ping: answer with a masked pong (RFC 6455 §5.5.3) carrying its payload
                mask = os.urandom(4)
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask
                                     + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                continue
            # deltas only: a snapshot also carries earlier runs' bench_sent values (each account's last state)
            i = payload.find(b'"bench_sent":') if payload.startswith(b'{"type":"state"') else -1
            if i >= 0:
                j = i + 13
                k = j
                while payload[k:k + 1] not in (b",", b"}"):
                    k += 1
                self.lat.append(now - float(payload[j:k]))
                self.got += 1
                if self.got >= self.expect and not self.done.done():
                    self.done.set_result(None)


async def raw_connect(host: str, port: int, lat: list[float], expect: int):
    loop = asyncio.get_running_loop()
    done, handshaken = loop.create_future(), loop.create_future()
    key = base64.b64encode(os.urandom(16)).decode()
    transport, _ = await loop.create_connection(lambda: RawClient(lat, expect, done, handshaken), host, port)
    transport.write(f"GET /dashboard/ws/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await handshaken
    return transport, done


def raw_client_proc(url: str, n: int, expect: int, ready, out, timeout: float) -> None:
    async def run() -> list[float]:
        lat: list[float] = []
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        conns = []
        for i in range(0, n, 50):
            conns += await asyncio.gather(*[raw_connect(host, int(port), lat, expect) for _ in range(min(50, n - i))])
        await asyncio.sleep(0.5)  # the snapshots
        ready.set()
        try:
            await asyncio.wait_for(asyncio.gather(*[d for _, d in conns]), timeout)
        except asyncio.TimeoutError:
            pass
        for t, _ in conns:
            t.close()
        return lat

    out.put(asyncio.run(run()))


def client_proc(url: str, n: int, expect: int, ready, out, timeout: float) -> None:
    async def run() -> list[float]:
        lat: list[float] = []
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            sockets = []
            for i in range(0, n, 50):  # connect in waves: the server's accept backlog is finite
                sockets += await asyncio.gather(*[session.ws_connect(url, max_msg_size=0) for _ in range(min(50, n - i))])
            for ws in sockets:  # the snapshot
                await ws.receive()
            ready.set()

            async def read(ws) -> None:
                got = 0
                while got < expect:
                    msg = await ws.receive()
                    now = time.time()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return
                    data = msg.data
                    if '"bench_sent"' not in data or not data.startswith('{"type":"state"'):
                        continue
                    ev = orjson.loads(data)
                    lat.append(now - ev["event"]["delta"]["bench_sent"])
                    got += 1

            try:
                await asyncio.wait_for(asyncio.gather(*[read(ws) for ws in sockets]), timeout)
            except asyncio.TimeoutError:
                pass
            for ws in sockets:
                await ws.close()
        return lat

    out.put(asyncio.run(run()))


async def produce(topic: str, events: int, rate: float, warmup: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=0)
    await producer.start()
    try:
        await producer.partitions_for(topic)  # metadata first: the first send must not wait for it
        for i in range(warmup):  # not timed: no "bench_sent" field, clients skip them
            await producer.send(topic, orjson.dumps({"event_type": "state.changed", "account": "warmup", "seq": i}),
                                key=b"warmup")
            await asyncio.sleep(1 / rate)
        t0 = time.perf_counter()
        for i in range(events):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            account = f"bench-{i % 20}"
            event = {"event_id": str(uuid.uuid4()), "event_type": "state.changed", "timestamp": int(time.time() * 1000),
                     "source": "bench", "account": account, "token": "BTC", "portfolio_value": 100_000.0 + i,
                     "cash": 90_000.0, "leverage_ratio": 0.1, "daily_pnl": float(i),
                     "positions": {"BTC": {"size": 0.1, "entry_price": 60_000.0, "mark_price": 60_010.0,
                                           "unrealised_pnl": 1.0, "liquidation_price": None,
                                           "liquidation_distance_pct": None}},
                     "delta": {"token": "BTC", "seq": i, "bench_sent": 0.0}}
            event["delta"]["bench_sent"] = time.time()
            await producer.send(topic, orjson.dumps(event), key=account.encode())
        await producer.flush()
    finally:
        await producer.stop()


def run_clients(stack: Stack, worker, clients: int, procs: int, events: int, rate: float,
                kind: str) -> list[float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    readies, ps = [], []
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    timeout = events / rate + 60
    url = worker.url.replace("http", "ws") + "/dashboard/ws/"
    for n in per:
        ready = ctx.Event()
        p = ctx.Process(target=raw_client_proc if kind == "raw" else client_proc, args=(url, n, events, ready, out, timeout), daemon=True)
        p.start()
        readies.append(ready)
        ps.append(p)
    for r in readies:
        if not r.wait(120):
            raise TimeoutError("clients did not connect within 120 s")
    time.sleep(1.0)
    asyncio.run(produce(stack.env["TOPIC_PREFIX"] + "state.changes", events, rate, warmup=20))
    lat: list[float] = []
    for _ in ps:
        lat += out.get(timeout=timeout + 30)
    for p in ps:
        p.join(10)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20.0, help="state.changed events per second")
    ap.add_argument("--procs", type=int, default=1, help="client processes")
    ap.add_argument("--client", choices=["raw", "aiohttp"], default="raw",
                    help="raw: a lean RFC 6455 client; aiohttp: aiohttp's WebSocket client (heavier per message)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), DASHBOARD_MAX_CLIENTS="5000", STORE_EVENTS="false")
        worker = stack.worker("w1").start()
        time.sleep(15)  # past the worker's start-up work (recovery, the one-off heap freeze at 10 s)
        try:
            for clients in [int(c) for c in args.clients.split(",")]:
                lat = run_clients(stack, worker, clients, args.procs, args.events, args.rate, args.client)
                expected = clients * args.events
                if not lat:
                    print(f"dashboard delivery, {clients} clients: no delta received", flush=True)
                    continue
                ms = [v * 1000 for v in lat]
                print(f"dashboard delivery, {clients:>5} {args.client} clients in {args.procs} process(es), {args.events} state.changed at {args.rate:g}/s: "
                      f"received {len(lat)}/{expected}, p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
                      f"max {max(ms):.1f} ms", flush=True)
                m = worker.metrics()
                total = m.get("moondev_dashboard_delivery_seconds_count", 0)
                within = {le: m.get(f'moondev_dashboard_delivery_seconds_bucket{{le="{le}"}}', 0)
                          for le in ("0.01", "0.05", "1.0")}
                print(f"  server side (hub, produce -> written to every socket, cumulative over runs): {total:.0f} "
                      f"pushes, {within['0.01'] / total:.1%} within 10 ms, {within['0.05'] / total:.1%} within 50 ms, "
                      f"{total - within['1.0']:.0f} over 1 s; slow clients dropped "
                      f"{m.get('moondev_dashboard_slow_clients_total', 0):.0f}", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
