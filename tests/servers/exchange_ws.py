"""A local exchange WebSocket server that replays real recordings frame by frame in the exchange's
own format, with its subscribe handshake (Binance ``SUBSCRIBE`` → ``{"result": null, "id": n}``;
Coinbase ``subscribe`` → ``subscriptions``; HyperLiquid ``subscribe`` → ``subscriptionResponse``
and ``{"method": "ping"}`` → ``{"channel": "pong"}``), and only the frames of what the client
subscribed to.

On command it drops the connection after a frame, stalls (stops sending, connection open),
sends a garbage frame, or skips a frame (a sequence gap). The replay position survives
reconnects; a new connection resumes ``overlap`` frames back, as exchanges may resend.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from pathlib import Path

from aiohttp import WSMsgType, web

from tests.servers import serve

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def binance_raw(name: str) -> list[str]:
    """Frames of a raw Binance recording (``<recv_ns> <combined JSON>`` per line)."""
    with gzip.open(DATA / "binance" / "raw" / name, "rt") as fh:
        return [line.split(" ", 1)[1].rstrip("\n") for line in fh if " " in line]


def coinbase_recording() -> list[str]:
    """Server frames of the recorded Coinbase session (client ``<-`` lines and the header left out)."""
    out = []
    with open(DATA / "coinbase" / "ws_feed_recording_20210417.txt") as fh:
        for line in fh:
            if "wss://" in line:
                continue
            _, _, js = line.partition(": ")
            if js.strip():
                out.append(js.rstrip("\n"))
    return out


class FakeExchangeWS:
    def __init__(self, dialect: str, frames: list[str], rate: float | None = None, overlap: int = 0):
        assert dialect in ("binance", "coinbase", "hyperliquid")
        self.dialect = dialect
        self.frames = frames
        self.rate = rate  # frames/s, None = as fast as the client reads
        self.overlap = overlap
        self.cursor = 0
        self.drop_after: set[int] = set()  # close the connection after sending frame i
        self.stall_at: int | None = None  # stop sending before frame i (once), connection left open
        self.garbage_before: set[int] = set()
        self.skip: set[int] = set()
        self.connections = 0
        self.subscribes: list[dict] = []
        self.pings = 0
        self.connected_at: list[float] = []  # monotonic time of each connection
        self.stalled_at: float | None = None
        self.sent_ids: list[int] = []  # indices of frames sent, in order (with resends)
        self.finished = asyncio.Event()
        self.runner = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner, self.url = await serve(app)
        self.url = self.url.replace("http://", "ws://")
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()

    def _wanted(self, frame: str, subs: dict) -> bool:
        if self.dialect == "binance":
            stream = frame[frame.find('"stream":"') + 10:].split('"', 1)[0] if '"stream":"' in frame else None
            return stream is None or stream in subs.get("streams", set())
        if self.dialect == "coinbase":
            products = subs.get("products", set())
            pid = frame[frame.find('"product_id":"') + 14:].split('"', 1)[0] if '"product_id":"' in frame else None
            return pid is None or pid in products
        return True

    async def _handshake(self, ws, msg: dict, subs: dict) -> bool:
        """Answer a client frame; True when it subscribed to something."""
        self.subscribes.append(msg)
        if self.dialect == "binance" and msg.get("method") == "SUBSCRIBE":
            subs.setdefault("streams", set()).update(msg.get("params", []))
            await ws.send_str(json.dumps({"result": None, "id": msg.get("id")}))
            return True
        if self.dialect == "coinbase" and msg.get("type") == "subscribe":
            subs.setdefault("products", set()).update(msg.get("product_ids", []))
            await ws.send_str(json.dumps({"type": "subscriptions", "channels": [
                {"name": c, "product_ids": msg.get("product_ids", [])} for c in msg.get("channels", [])]}))
            return True
        if self.dialect == "hyperliquid":
            if msg.get("method") == "ping":
                self.pings += 1
                await ws.send_str('{"channel":"pong"}')
                return False
            if msg.get("method") == "subscribe":
                await ws.send_str(json.dumps({"channel": "subscriptionResponse", "data": msg}))
                return True
        await ws.send_str(json.dumps({"type": "error", "message": "unknown request"}))
        return False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        self.connected_at.append(time.monotonic())
        subs: dict = {}
        subscribed = asyncio.Event()

        async def reader():
            async for m in ws:
                if m.type == WSMsgType.TEXT:
                    try:
                        msg = json.loads(m.data)
                    except ValueError:
                        continue
                    if await self._handshake(ws, msg, subs):
                        subscribed.set()

        read_task = asyncio.create_task(reader())
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            await asyncio.sleep(0.05)  # let the rest of the subscribe frames arrive
            self.cursor = max(0, self.cursor - self.overlap) if self.connections > 1 else self.cursor
            t0, n = asyncio.get_running_loop().time(), 0
            while self.cursor < len(self.frames):
                if ws.closed or read_task.done():
                    return ws  # the client left: the next connection resumes from the cursor
                i = self.cursor
                if self.stall_at == i:
                    self.stall_at = None
                    self.stalled_at = time.monotonic()
                    await read_task  # silent until the client's watchdog gives up on this connection
                    return ws
                if i in self.garbage_before:
                    self.garbage_before.discard(i)
                    await ws.send_str('{"this is": not json')
                self.cursor += 1
                if i not in self.skip and self._wanted(self.frames[i], subs):
                    await ws.send_str(self.frames[i])
                    self.sent_ids.append(i)
                    n += 1
                    if self.rate:
                        delay = t0 + n / self.rate - asyncio.get_running_loop().time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    elif n % 200 == 0:
                        await asyncio.sleep(0)
                if i in self.drop_after:
                    self.drop_after.discard(i)
                    await ws.close()
                    return ws
            self.finished.set()
            await read_task  # keep the connection open until the client leaves
        except (asyncio.TimeoutError, ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            read_task.cancel()
        return ws
