"""Live market data over WebSocket: one long-running feed per exchange, normalised into
``price.tick`` and ``liquidation.event`` and produced to Kafka.

:class:`WsFeed` is the connection loop every exchange shares (aiohttp's WebSocket client, the
stack Faust itself runs on); an exchange is a :class:`Protocol` (``feeds.exchanges``): its URL,
subscribe frames, optional application-level ping, and a parser from a frame to events.

Production behaviour:

- **Subscribe / resubscribe**: the protocol's subscribe frames are sent on every connect; a
  :class:`Resubscribe` raised by the parser (a sequence gap) reconnects and subscribes afresh.
- **Heartbeats**: WebSocket ping/pong (aiohttp ``heartbeat``; server pings are answered by
  aiohttp), plus the protocol's own ping frame where the exchange wants one (HyperLiquid).
- **Reconnect** with exponential backoff and full jitter (delay uniform in
  [0, min(cap, base × 2^attempt)]; AWS Architecture Blog, "Exponential Backoff and Jitter", 2015);
  the attempt count resets once a connection delivers data.
- **Stale-feed watchdog**: no frame for ``stale_seconds`` → reconnect, counted in
  ``moondev_feed_reconnects_total{reason="stale"}``.
- **Back-pressure**: frames become events on the reader and wait in a bounded queue for the
  publisher; when the broker is slow the queue fills, the reader stops reading the socket, and
  TCP pushes back on the exchange. Memory stays bounded by ``queue_size``.
- **Bad frames**: a frame that does not parse goes to the dead letters with the raw frame and the
  reason; the feed goes on.
- **Duplicates**: exchanges may resend after a reconnect; protocols drop trades they already
  published (by trade id), so a reconnect never duplicates a tick.

Metrics (labels ``feed``): frames in, events out by type, parse errors, reconnects by reason,
sequence gaps, feed lag (exchange timestamp → publish, seconds) and publish latency (frame
receipt → broker acknowledgement, seconds).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from core.sla import SlaMonitor
from core.metrics import (FEED_ACK_SECONDS, FEED_EVENTS, FEED_FRAMES, FEED_GAPS, FEED_LAG_SECONDS, FEED_PARSE_ERRORS,
                         FEED_RECONNECTS)
from models.events import Envelope

log = logging.getLogger(__name__)


class ParseError(ValueError):
    """A frame that is not what the exchange documents; the message says why in one line."""


class Resubscribe(Exception):
    """The feed lost messages (a sequence gap): resubscribe. ``events`` are still published."""

    def __init__(self, reason: str, events: list[Envelope] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.events = events or []


class Protocol:
    """One exchange's WebSocket dialect. Subclasses set ``name`` and implement the methods."""

    name = "exchange"
    #: Seconds between application-level pings (``ping_frame``), or None for WebSocket pings only.
    ping_interval: float | None = None

    def url(self) -> str:
        raise NotImplementedError

    def subscribe_frames(self) -> list[dict]:
        return []

    def ping_frame(self) -> dict | None:
        return None

    def on_connect(self) -> None:
        """Called on each new connection, before its first frame."""

    def parse(self, frame: str, received_ms: int) -> list[Envelope]:
        """Events in a frame (empty for control frames). Raises :class:`ParseError` or
        :class:`Resubscribe`."""
        raise NotImplementedError


@dataclass(slots=True)
class FeedStats:
    frames: int = 0
    events: int = 0
    parse_errors: int = 0
    reconnects: int = 0
    gaps: int = 0
    connections: int = 0
    first_frame: float | None = None  # perf_counter of the first frame received
    last_ack: float | None = None  # perf_counter of the last broker acknowledgement

    @property
    def events_per_second(self) -> float | None:
        """Events published per second from the first frame to the last acknowledgement."""
        if self.first_frame is None or self.last_ack is None or self.last_ack <= self.first_frame:
            return None
        return self.events / (self.last_ack - self.first_frame)


#: publish(key, value) -> a future resolved on the broker's acknowledgement
Publish = Callable[[bytes, bytes, str], Awaitable[asyncio.Future]]
DeadLetter = Callable[[str, str, int], Awaitable[None]]


class WsFeed:
    """Connect, subscribe, read, publish; reconnect until :meth:`stop`."""

    def __init__(self, protocol: Protocol, publish: Publish, dead_letter: DeadLetter, encode: Callable[[Envelope], bytes],
                 *, stale_seconds: float = 10.0, heartbeat_seconds: float = 15.0, backoff_base: float = 0.5,
                 backoff_cap: float = 30.0, queue_size: int = 10_000, sla: SlaMonitor | None = None):
        self.protocol = protocol
        self.publish = publish
        self.dead_letter = dead_letter
        self.encode = encode
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        #: frame → broker ack observations go here (``tick_to_publish``) when given
        self.sla = sla
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.stats = FeedStats()
        self.ack_latencies: list[float] = []  # seconds, frame receipt → broker ack (kept for reports)
        self._stopping = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._labels = protocol.name

    def stop(self) -> None:
        self._stopping.set()
        if self._ws is not None and not self._ws.closed:
            asyncio.ensure_future(self._ws.close())

    async def run(self) -> FeedStats:
        publisher = asyncio.ensure_future(self._publisher())
        attempt = 0
        try:
            async with aiohttp.ClientSession() as session:
                while not self._stopping.is_set():
                    reason, got_data = await self._connection(session)
                    if self._stopping.is_set():
                        break
                    self.stats.reconnects += 1
                    # the label is the reason's kind only ("stale", "gap", "connect failed", ...)
                    FEED_RECONNECTS.labels(self._labels, reason.split(":")[0].split(" (")[0]).inc()
                    attempt = 0 if got_data else attempt + 1
                    delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))
                    log.warning("%s feed: %s; reconnecting in %.2f s", self._labels, reason, delay)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
            await self.queue.join()
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
        return self.stats

    async def _connection(self, session: aiohttp.ClientSession) -> tuple[str, bool]:
        """One connection's life; returns why it ended and whether it delivered data."""
        got_data = False
        pinger = None
        try:
            async with session.ws_connect(self.protocol.url(), heartbeat=self.heartbeat_seconds,
                                          max_msg_size=16 * 1024 * 1024) as ws:
                self._ws = ws
                self.stats.connections += 1
                self.protocol.on_connect()
                for frame in self.protocol.subscribe_frames():
                    await ws.send_json(frame)
                if self.protocol.ping_interval:
                    pinger = asyncio.ensure_future(self._ping(ws))
                while True:
                    try:
                        msg = await asyncio.wait_for(ws.receive(), self.stale_seconds)
                    except asyncio.TimeoutError:
                        return "stale", got_data
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                        return "closed by server", got_data
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        return f"error: {ws.exception()}", got_data
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        continue
                    received = time.perf_counter()
                    if self.stats.first_frame is None:
                        self.stats.first_frame = received
                    got_data = True
                    self.stats.frames += 1
                    FEED_FRAMES.labels(self._labels).inc()
                    text = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                    try:
                        events = self.protocol.parse(text, int(time.time() * 1000))
                    except ParseError as exc:
                        self.stats.parse_errors += 1
                        FEED_PARSE_ERRORS.labels(self._labels).inc()
                        await self.dead_letter(text, str(exc), self.stats.frames)
                        continue
                    except Resubscribe as exc:
                        self.stats.gaps += 1
                        FEED_GAPS.labels(self._labels).inc()
                        log.warning("%s feed: %s; resubscribing", self._labels, exc.reason)
                        for ev in exc.events:
                            await self.queue.put((ev, received))
                        return f"gap ({exc.reason})", got_data
                    for ev in events:
                        await self.queue.put((ev, received))  # blocks when full: back-pressure
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return f"connect failed: {type(exc).__name__}: {exc}", got_data
        finally:
            self._ws = None
            if pinger is not None:
                pinger.cancel()

    async def _ping(self, ws) -> None:
        frame = self.protocol.ping_frame()
        while not ws.closed:
            await asyncio.sleep(self.protocol.ping_interval)
            try:
                await ws.send_json(frame)
            except (ConnectionError, RuntimeError):
                return

    async def _publisher(self) -> None:
        while True:
            ev, received = await self.queue.get()
            try:
                fut = await self.publish(ev.token.encode() if ev.token else b"", self.encode(ev), ev.event_type)
                fut.add_done_callback(lambda f, r=received: self._acked(f, r))
                self.stats.events += 1
                FEED_EVENTS.labels(self._labels, ev.event_type).inc()
                ts = getattr(ev, "timestamp", None)
                if ts:
                    FEED_LAG_SECONDS.labels(self._labels).observe(max(0.0, time.time() - ts / 1000.0))
            except Exception:  # noqa: BLE001 - a failed publish must not stop the feed
                log.exception("%s feed: publish failed", self._labels)
            finally:
                self.queue.task_done()

    def _acked(self, fut: asyncio.Future, received: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        now = time.perf_counter()
        self.stats.last_ack = now
        dt = now - received
        FEED_ACK_SECONDS.labels(self._labels).observe(dt)
        if self.sla is not None:
            self.sla.observe("tick_to_publish", dt * 1000.0)
        if len(self.ack_latencies) < 2_000_000:
            self.ack_latencies.append(dt)
