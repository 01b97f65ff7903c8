"""Live dashboard: the page, its WebSocket push, and the recent-event views every replica answers.

Each worker runs one :class:`Hub`: a plain aiokafka consumer (no consumer group, so it is not part
of the app's partition assignment) assigned to *every* partition of ``state.changes``,
``risk.alerts``, ``consensus``, ``signal.generated``, ``orders``, ``trade.executed`` and
``price.ticks``. So every replica sees every account's deltas, whichever worker owns the account,
and a browser may connect to any of them. At start the hub reads back the last
DASHBOARD_HISTORY events of each partition (the recent lists and each account's last state) and
then follows the topics' heads.

Pushes (JSON text frames, one per event, ``{"type": ..., "event": {...}, "produced_ms": ...}``;
``produced_ms`` is the Kafka record's produce time):

- ``snapshot`` on connect: accounts' last state, recent signals, decisions, alerts, orders,
  trades, halt flags and per-token price series;
- ``state`` (``state.changed``/``state.snapshot``), ``signal``, ``decision``, ``alert``,
  ``order``, ``trade`` deltas as they arrive (an ``alert`` also carries the account's ``halt``
  flag after it);
- ``prices``: once a second, for each token that ticked, its 1-second points (``[[t_ms, price],
  ...]``, last price of each event-time second; when the hub reads a backlog, the last of each
  fetched batch) changed since the previous push.

The same bytes go to every client: one WebSocket frame is built per event and written to each
client's transport without awaiting (RFC 6455 §5.2 framing; aiohttp's own writer would await a
drain per client). A client whose unsent bytes exceed DASHBOARD_CLIENT_BUFFER_BYTES is
disconnected (counted) rather than slowing everyone else.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import struct
import time
from pathlib import Path

import orjson
from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.main import aiokafka_connection, app, decode_checked, settings
from core.metrics import (BOUNDS_HIT, DASHBOARD_CLIENTS, DASHBOARD_DELIVERY_SECONDS, DASHBOARD_DROPPED, DASHBOARD_MESSAGES)
from app.sla import sla
from domain.halt import halt_transition
from models.events import EventError

log = logging.getLogger("moondev.dashboard")

STATIC = Path(__file__).resolve().parent / "static"

#: Catalogue topic -> (push type, recent list it feeds or None)
WATCHED = {
    "state.changes": "state",
    "risk.alerts": "alert",
    "consensus": "decision",
    "signal.generated": "signal",
    "orders": "order",
    "trade.executed": "trade",
    "price.ticks": "price",
}
LISTS = ("signal", "decision", "alert", "order", "trade")
PRICE_POINTS = 900  # 15 min of 1-second points per token


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


#: Bounds on what the hub keeps per key, whatever is written to the topics it reads: accounts
#: (state and halt flags) and tokens (price series). Past a bound, the key seen longest ago goes.
MAX_ACCOUNTS = 10_000
MAX_TOKENS = 1_000


def _bounded_set(store: dict, key, value, cap: int, age, bound: str) -> None:
    """``store[key] = value``, then, over ``cap`` keys, drop the other key whose ``age(value)`` is
    the smallest (O(n), only when a new key overflows; counted as ``bound`` in
    ``moondev_bounds_hit_total``)."""
    new = key not in store
    store[key] = value
    if new and len(store) > cap:
        del store[min((k for k in store if k != key), key=lambda k: age(store[k]))]
        BOUNDS_HIT.labels(bound).inc()


class Hub:
    """Follows the watched topics and fans their events out to WebSocket clients."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.accounts: dict[str, dict] = {}
        self.halt: dict[str, dict] = {}
        #: kind -> [((event time ms, event id), event)], ascending, at most ``history`` long
        self.recent: dict[str, list] = {k: [] for k in LISTS}
        self.prices: dict[str, collections.deque] = {}
        self._price_dirty: dict[str, int] = {}  # token -> first second changed since the last push
        self.clients: dict[web.WebSocketResponse, asyncio.BaseTransport] = {}
        self.ready = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None

    # ------------------------------------------------------------------ state
    def recent_events(self, kind: str) -> list[dict]:
        """The recent events of one list, oldest first (event time, then id)."""
        return [event for _, event in self.recent[kind]]

    def snapshot(self) -> dict:
        return {"type": "snapshot", "ready": self.ready.is_set(), "accounts": self.accounts, "halt": self.halt,
                "recent": {k: self.recent_events(k) for k in LISTS},
                "prices": {t: list(p) for t, p in self.prices.items()}, "server_ms": int(time.time() * 1000)}

    def apply(self, kind: str, event: dict) -> bool:
        """Fold one event into the hub's state. Returns whether it changed what a client shows: a
        redelivered event (a producer's retry, a replay after a rebalance) or an account state
        older than the one kept changes nothing, and is not pushed."""
        if kind == "state":
            account = event.get("account")
            if account:
                prev = self.accounts.get(account)
                if prev is None or event.get("timestamp", 0) >= prev.get("timestamp", 0):
                    if prev == event:
                        return False
                    _bounded_set(self.accounts, account, event, MAX_ACCOUNTS, lambda e: e.get("timestamp", 0),
                                 "dashboard_accounts")
                    return True
            return False
        elif kind == "price":
            token, price, ts = event.get("token"), event.get("price"), event.get("timestamp")
            if token and price and ts:
                series = self.prices.get(token)
                if series is None:
                    series = collections.deque(maxlen=PRICE_POINTS)
                    _bounded_set(self.prices, token, series, MAX_TOKENS, lambda p: p[-1][0] if p else 0,
                                 "dashboard_tokens")
                    self._price_dirty = {t: v for t, v in self._price_dirty.items() if t in self.prices}
                sec = ts // 1000 * 1000
                if series and series[-1][0] == sec:
                    series[-1] = [sec, price]
                elif not series or sec > series[-1][0]:
                    series.append([sec, price])
                self._price_dirty.setdefault(token, sec)
                return True
            return False
        halt_changed = self._apply_halt(event) if kind == "alert" else False
        return self._remember(kind, event) or halt_changed

    def _remember(self, kind: str, event: dict) -> bool:
        """Keep the ``history`` latest events of a list by (event time, id), not by arrival: a
        hub reads the topic's partitions in an order of its own, and two replicas must show the
        same latest events once both have read them all. Returns whether the event was kept."""
        latest = self.recent[kind]
        key = (event.get("timestamp", 0), str(event.get("event_id")))
        if len(latest) >= self.history and key <= latest[0][0]:
            return False  # older than everything kept
        i = bisect.bisect_left(latest, key, key=lambda item: item[0])
        if i < len(latest) and latest[i][0] == key:
            return False  # the same event again (a redelivery)
        latest.insert(i, (key, event))
        if len(latest) > self.history:
            del latest[0]
        return True

    def _apply_prices(self, records: list, last_only: bool) -> None:
        """Fold in a fetched batch of one ``price.ticks`` partition: every valid tick, or with
        ``last_only`` each token's last valid tick (looked for from the newest back). The chart
        keeps one price per second, and a batch spans well under a second of ticks when the hub
        keeps up (decoding every tick cost the worker as much as a tenth of the tick path); the
        start-up history is read whole."""
        done: set = set()
        for record in reversed(records) if last_only else records:
            if record.key in done:
                continue
            try:
                tick = decode_checked(record.value, key=record.key)
            except EventError:
                continue
            if last_only:
                done.add(record.key)
            self.apply("price", {"token": tick.token, "price": getattr(tick, "price", None), "timestamp": tick.timestamp})

    def _apply_halt(self, event: dict) -> bool:
        # The same transition as the halt agent's, for display; the halt table stays the authority.
        account = event.get("account")
        if account:
            changed = halt_transition(self.halt.get(account) or {}, event)
            if changed is not None:
                _bounded_set(self.halt, account, changed, MAX_ACCOUNTS, lambda h: h.get("since_ms") or 0)
                return True
        return False

    # ------------------------------------------------------------------ fan-out
    def broadcast(self, message: bytes, kind: str) -> int:
        """Write one message to every client; returns how many got it."""
        if not self.clients:
            return 0
        frame = ws_text_frame(message)
        limit = settings.dashboard_client_buffer_bytes
        sent = 0
        for ws, transport in list(self.clients.items()):
            if transport.is_closing():
                self.clients.pop(ws, None)
                continue
            if transport.get_write_buffer_size() > limit:
                DASHBOARD_DROPPED.inc()
                log.warning("dashboard client %s too slow (%d bytes queued): disconnected",
                            transport.get_extra_info("peername"), transport.get_write_buffer_size())
                transport.abort()
                self.clients.pop(ws, None)
                continue
            transport.write(frame)
            sent += 1
        DASHBOARD_CLIENTS.set(len(self.clients))
        DASHBOARD_MESSAGES.labels(kind).inc()
        return sent

    def _flush_prices(self) -> None:
        if not self._price_dirty:
            return
        # every second that changed (a replay runs many event-time seconds per wall second)
        points = {t: [p for p in self.prices[t] if p[0] >= since] for t, since in self._price_dirty.items()
                  if self.prices.get(t)}
        self._price_dirty.clear()
        self.broadcast(orjson.dumps({"type": "prices", "points": points}), "prices")

    # ------------------------------------------------------------------ consuming
    async def _assign(self) -> dict[TopicPartition, str]:
        consumer = self.consumer
        kinds: dict[TopicPartition, str] = {}
        for name, kind in WATCHED.items():
            topic = settings.topic(name)
            for _ in range(100):
                parts = consumer.partitions_for_topic(topic)
                if parts:
                    break
                await consumer._client.force_metadata_update()  # noqa: SLF001 - topic just declared
                if consumer.partitions_for_topic(topic):
                    break
                await asyncio.sleep(0.2)
            for p in consumer.partitions_for_topic(topic) or ():
                kinds[TopicPartition(topic, p)] = kind
        consumer.assign(list(kinds))
        return kinds

    async def run(self) -> None:
        # The broker holds a fetch until 256 KiB or 200 ms have gathered: the chart keeps one
        # price a second, and a fetch answered per byte (or a short wait: it was 5 ms) meant
        # hundreds of small responses a second at a live trickle, each decoded in Python.
        self.consumer = consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="latest",
            fetch_min_bytes=256 * 1024, fetch_max_wait_ms=200, max_partition_fetch_bytes=4 * 1024 * 1024,
            client_id=f"{settings.app_id}-dashboard", **aiokafka_connection())
        await consumer.start()
        try:
            kinds = await self._assign()
            tps = list(kinds)
            begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            for tp in tps:
                back = self.history * (3 if kinds[tp] == "price" else 1)
                consumer.seek(tp, max(begin[tp], end[tp] - back))
            pending = {tp for tp in tps if end[tp] > begin[tp]}
            if not pending:
                self.ready.set()
            last_flush = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                live = self.ready.is_set()
                for tp, records in batches.items():
                    kind = kinds[tp]
                    if kind == "price":
                        self._apply_prices(records, last_only=live)
                    else:
                        self._apply_events(kind, records, live)
                    if not live and tp in pending and records and records[-1].offset + 1 >= end[tp]:
                        pending.discard(tp)
                if not live and not pending:
                    self.ready.set()
                    log.info("dashboard hub caught up: %d accounts, %s", len(self.accounts),
                             {k: len(v) for k, v in self.recent.items()})
                if self.ready.is_set() and time.monotonic() - last_flush >= 1.0:
                    last_flush = time.monotonic()
                    self._flush_prices()
        finally:
            await consumer.stop()

    def _apply_events(self, kind: str, records, live: bool) -> None:
        """Fold one partition's fetched records of a non-price kind in and, once caught up
        (``live``), send each to the clients."""
        for record in records:
            try:
                # the agents' own validation, event-time bounds included: what they dead-letter
                # is not shown, and no message can stop the hub
                decode_checked(record.value, key=record.key, topic=record.topic)
            except EventError:
                continue
            event = orjson.loads(record.value)
            if self.apply(kind, event) and live and self.clients:
                message = {"type": kind, "event": event, "produced_ms": record.timestamp}
                if kind == "alert":
                    message["halt"] = self.halt.get(event.get("account"))
                self.broadcast(orjson.dumps(message), kind)
                if kind == "state":
                    delay = max(0.0, time.time() - record.timestamp / 1000.0)
                    DASHBOARD_DELIVERY_SECONDS.observe(delay)
                    sla.observe("state_to_dashboard", delay * 1000.0)

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """The WebSocket endpoint: a snapshot, then every delta."""
        ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=65536)
        if len(self.clients) >= settings.dashboard_max_clients:
            return web.json_response({"error": "too many dashboard clients"}, status=503)
        await ws.prepare(request)
        await ws.send_str(orjson.dumps(self.snapshot()).decode())
        self.clients[ws] = request.transport
        DASHBOARD_CLIENTS.set(len(self.clients))
        try:
            async for msg in ws:  # clients send nothing but pings; read to see them close
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.clients.pop(ws, None)
            DASHBOARD_CLIENTS.set(len(self.clients))
        return ws


hub = Hub(settings.dashboard_history)


@app.task
async def _run_hub() -> None:
    # A lost broker connection or any error restarts the hub (the page shows it reconnecting).
    if not settings.dashboard_enabled:
        hub.ready.set()  # nothing to wait for: the views answer from an empty hub
        return
    while True:
        try:
            await hub.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("dashboard hub failed; restarting in 2 s")
            hub.ready.clear()
            await asyncio.sleep(2)
