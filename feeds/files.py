"""Read real market data files as ticks, in event-time order.

Formats, recognised by their CSV header (``.csv`` or gzip-compressed ``.csv.gz``):

- **Binance trades** (``shared/data/binance/trades.csv.gz`` layout): ``symbol, trade_time_ms,
  price, qty, ...``: one tick per trade, at the trade time. For coin-margined perpetuals
  (``market`` = ``cm``) ``qty`` is in contracts, so no base size is given. ``is_buyer_maker``, when
  present, gives the aggressor side (a maker buyer means the seller took: ``SELL``), and
  ``trade_id`` the trade's id.
- **OHLCV candles** (``timestamp, open, high, low, close, volume``; timestamp ISO-8601 UTC or ms):
  one tick per candle at its close time, with the candle's volume as quote volume. The token comes
  from ``--token`` (a candle file names no symbol).

Every row has a stable identity (:attr:`TickRow.key`), from which a fed tick's ``event_id``
derives, so feeding the same data twice gives the same events and the store keeps one copy: a
Binance trade is ``("binance", stream kind, symbol, trade id)``, the parts the live Binance adapter
derives its ids from, so a file of captured trades and the live feed agree; a candle is its token and
close time; a row with no trade id is its own content plus how many identical rows came before it.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

from pydantic import ValidationError

from models.events import PriceTick, derived_id, encode_event

#: Quote-currency suffixes stripped to get the token (BTCUSDT, BTC-USD, BTCUSD_PERP → BTC).
_SUFFIXES = ("USD_PERP", "-USD-PERP", "-PERP", "USDT", "USDC", "-USD", "_USD", "USD", "/USD")


def normalise_token(symbol: str) -> str:
    """Exchange symbol → token: ``BTCUSDT``, ``BTC-USD``, ``BTCUSD_PERP``, ``BTCUSD_200925`` (a
    delivery future), ``BTC`` → ``BTC``."""
    s = symbol.strip().upper()
    if len(s) > 7 and s[-7] == "_" and s[-6:].isdigit():
        s = s[:-7]
    for suffix in _SUFFIXES:
        if s.endswith(suffix) and len(s) > len(suffix):
            return s[: -len(suffix)].rstrip("-_/")
    return s


@dataclass(slots=True, frozen=True)
class TickRow:
    ts_ms: int  # event time, ms since epoch UTC
    token: str
    price: float  # USD
    size: float | None  # base units, when known
    quote_volume: float  # USD notional of this tick
    key: tuple = ()  # the row's identity in its source (see the module docstring)
    side: str | None = None  # the aggressor's side, BUY or SELL, when the file says
    trade_id: str | None = None  # the venue's trade id, when the file has one

    @property
    def event_id(self) -> UUID:
        """The ``event_id`` of this row's tick: :func:`models.events.derived_id` of :attr:`key`."""
        return derived_id(*self.key)


class FeedError(ValueError):
    """The file cannot be read as market data; the message says why in one line."""


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise FeedError(f"no such file: {path}")
    raw = path.open("rb")
    head = raw.read(2)
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


def parse_time_ms(value: str) -> int:
    """A time as ms since epoch UTC: digits are ms (or seconds when below 1e11), anything else
    ISO-8601 (UTC when it names no zone; a trailing ``Z`` is accepted). Raises ``ValueError``."""
    v = value.strip()
    if v.isdigit():
        n = int(v)
        return n if n > 10**11 else n * 1000
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def read_ticks(path: str | Path, token: str | None = None, limit: int | None = None) -> list[TickRow]:
    """All ticks of a file, sorted by event time (stable, so same-ms trades keep file order).

    Raises:
        FeedError: missing file, unknown header, or a row that does not parse (with its line).
    """
    path = Path(path)
    rows: list[TickRow] = []
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        if {"symbol", "trade_time_ms", "price", "qty"} <= fields:
            kind = "binance"
        elif {"timestamp", "close", "volume"} <= fields:
            kind = "candles"
            if not token:
                raise FeedError("a candle file names no symbol: give --token")
        else:
            raise FeedError(f"unrecognised header in {path.name}: {sorted(fields)}")
        try:
            for row in reader:
                if kind == "binance":
                    price = float(row["price"])
                    qty = float(row["qty"])
                    coin_qty = row.get("market") != "cm"
                    symbol = row["symbol"].strip().upper()
                    key = ()
                    trade_id = (row.get("trade_id") or "").strip() or None
                    if trade_id:
                        stream_kind = (row.get("stream") or "").partition("@")[2] or "trade"
                        key = ("binance", stream_kind, symbol, int(trade_id))
                    rows.append(TickRow(int(row["trade_time_ms"]), token or normalise_token(symbol), price,
                                        qty if coin_qty else None, price * qty if coin_qty else qty * 100.0, key,
                                        _maker_flag_side(row.get("is_buyer_maker")), trade_id))
                else:
                    rows.append(TickRow(parse_time_ms(row["timestamp"]), token, float(row["close"]), None,
                                        float(row["volume"])))
        except (KeyError, ValueError) as exc:
            raise FeedError(f"{path.name} line {reader.line_num}: {exc}") from None
    if kind == "candles":
        # a candle's close is its open time plus the interval (the shortest step between candles)
        interval = candle_interval_ms(rows)
        rows = [TickRow(r.ts_ms + interval, r.token, r.price, r.size, r.quote_volume,
                        ("candle", r.token, r.ts_ms + interval)) for r in rows]
    seen: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        if not r.key:  # in file order, so the n-th identical row keeps its number on every read
            content = ("row", r.token, r.ts_ms, repr(r.price), repr(r.size), repr(r.quote_volume))
            n = seen[content] = seen.get(content, -1) + 1
            rows[i] = TickRow(r.ts_ms, r.token, r.price, r.size, r.quote_volume, (*content, n), r.side, r.trade_id)
    rows.sort(key=lambda r: r.ts_ms)
    return rows[:limit] if limit else rows


def _maker_flag_side(flag: str | None) -> str | None:
    """The aggressor side from Binance's ``is_buyer_maker`` (``True``/``False``, any case; empty:
    unknown). Raises ``ValueError`` for anything else."""
    f = (flag or "").strip().lower()
    if not f:
        return None
    if f in ("true", "1"):
        return "SELL"
    if f in ("false", "0"):
        return "BUY"
    raise ValueError(f"is_buyer_maker {flag!r} is neither true nor false")


def candle_interval_ms(rows: list[TickRow]) -> int:
    """The candles' interval (ms): the shortest positive step between consecutive open times (weekends
    and gaps are longer, never shorter); 60,000 for a single candle."""
    times = sorted({r.ts_ms for r in rows})
    steps = [b - a for a, b in zip(times, times[1:])]
    return min(steps) if steps else 60_000


def is_candle_file(path: str | Path) -> bool:
    """Whether the file is OHLCV candles (by its header). Raises FeedError for a missing file."""
    with _open_text(Path(path)) as fh:
        return {"timestamp", "close", "volume"} <= set(csv.DictReader(fh).fieldnames or [])


class RollingVolume:
    """Quote volume (USD) per token over the last ``window_ms`` of event time."""

    def __init__(self, window_ms: int = 60_000):
        self.window_ms = window_ms
        self._q: dict[str, deque] = {}
        self._sum: dict[str, float] = {}

    def add(self, token: str, ts_ms: int, notional: float) -> float:
        q = self._q.setdefault(token, deque())
        total = self._sum.get(token, 0.0) + notional
        q.append((ts_ms, notional))
        while q and q[0][0] <= ts_ms - self.window_ms:
            total -= q.popleft()[1]
        self._sum[token] = total
        return max(total, 0.0)


def schedule(rows: list[TickRow], speed: float | None, max_gap_s: float = 5.0) -> Iterator[tuple[float, TickRow]]:
    """Yield ``(due_s, row)``: when to send each row, in seconds after the first, so that event
    time runs ``speed`` times faster than real time (``None`` = as fast as possible: all due at 0).
    Gaps longer than ``max_gap_s`` of wall time (between recording sessions) shrink to it."""
    due = 0.0
    prev = None
    for row in rows:
        if speed and prev is not None:
            due += min(max(0.0, (row.ts_ms - prev) / 1000.0 / speed), max_gap_s)
        prev = row.ts_ms
        yield due, row


#: What :func:`encode_ticks` leaves in a tick's JSON for ``ingest_ms``. A JSON key occurs once in
#: an object and a quote inside a string value is escaped, so this text occurs once in a tick.
_INGEST_PLACEHOLDER = b'"ingest_ms":0'


@dataclass(slots=True, frozen=True)
class EncodedTick:
    """A row's ``price.tick`` as its Kafka key (the token) and its JSON value around ``ingest_ms``,
    which is only known when the tick is sent: ``head + ms + tail`` is the JSON of the tick with
    ``ingest_ms`` = ms (:meth:`value`), byte for byte what :func:`models.events.encode_event` gives."""

    key: bytes
    head: bytes
    tail: bytes

    def value(self, ingest_ms: int) -> bytes:
        """The tick's JSON with ``ingest_ms`` (ms since epoch UTC) filled in."""
        return self.head + str(ingest_ms).encode() + self.tail


def encode_ticks(rows: list[TickRow], source: str) -> list[EncodedTick]:
    """Each row as a validated, encoded ``price.tick`` (``source`` its ``source`` field,
    ``volume_1m`` from :class:`RollingVolume` over the rows in order), so that sending one costs a
    splice (:meth:`EncodedTick.value`), not a validation and an encode. About 300 bytes a tick.

    Raises:
        FeedError: a row is not a valid tick (a price that is not positive, say); the message
            names the row (1-based, in event-time order), the field and the problem.
    """
    vol = RollingVolume()
    out = []
    for i, row in enumerate(rows):
        try:
            tick = PriceTick(event_id=row.event_id, timestamp=row.ts_ms, token=row.token, source=source,
                             price=row.price, size=row.size, side=row.side, trade_id=row.trade_id,
                             volume_1m=vol.add(row.token, row.ts_ms, row.quote_volume), ingest_ms=0)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err.get("loc", ()))
            raise FeedError(f"tick {i + 1} ({row.token} at {row.ts_ms} ms) is invalid: {field}: {err['msg']}") from None
        head, _, tail = encode_event(tick).partition(_INGEST_PLACEHOLDER)
        out.append(EncodedTick(row.token.encode(), head + b'"ingest_ms":', tail))
    return out
