"""Exchange WebSocket dialects for :class:`feeds.live.WsFeed`: Binance USD-M futures, Coinbase
Exchange and HyperLiquid, each turning its own frames into ``price.tick`` and
``liquidation.event``.

Every trade yields exactly one tick with the exchange's price (quote currency), size (base units)
and trade time (ms); ids derive from the exchange's trade id, and a trade id already published is
dropped, so an exchange that resends after a reconnect never duplicates a tick. Token names go
through ``token_map`` first (``{"XBTUSD": "BTC"}``), then :func:`feeds.files.normalise_token`
(``BTCUSDT``, ``BTC-USD``, ``BTC`` → ``BTC``).

Wire formats:
- Binance: https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams
  (combined stream ``/stream``, ``SUBSCRIBE`` method; ``trade``, ``aggTrade``, ``forceOrder``).
- Coinbase: https://docs.cdp.coinbase.com/exchange/docs/websocket-channels (``subscribe`` with
  ``ticker``, ``matches``, ``heartbeat``).
- HyperLiquid: https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/websocket
  (``allMids``, ``trades``, ``userFills``/``userEvents``; ``{"method": "ping"}``).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Iterable, Mapping

import orjson

from feeds.files import normalise_token, parse_time_ms
from feeds.live import ParseError, Protocol, Resubscribe
from models.events import Envelope, LiquidationEvent, PriceTick, derived_id

log = logging.getLogger(__name__)


def _json(frame: str) -> dict:
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ParseError(f"not a JSON object: {type(msg).__name__}")
    return msg


def _num(d: Mapping, key: str) -> float:
    try:
        v = float(d[key])
    except KeyError:
        raise ParseError(f"missing field {key!r}") from None
    except (TypeError, ValueError):
        raise ParseError(f"field {key!r} is not a number: {d[key]!r}") from None
    if not v == v or v in (float("inf"), float("-inf")):
        raise ParseError(f"field {key!r} is not finite")
    return v


def _coinbase_aggressor(kind: str, side) -> str | None:
    """The aggressor side of a Coinbase trade message: a ``match`` names the maker order's side
    (the taker took the other), a ``ticker`` the taker's own (checked on the recorded feed: every
    ticker's side is the opposite of its match's). ``None`` when absent or unknown."""
    s = str(side or "").lower()
    if s not in ("buy", "sell"):
        return None
    if kind == "ticker":
        return s.upper()
    return "SELL" if s == "buy" else "BUY"


def _int(d: Mapping, key: str) -> int:
    try:
        return int(d[key])
    except KeyError:
        raise ParseError(f"missing field {key!r}") from None
    except (TypeError, ValueError):
        raise ParseError(f"field {key!r} is not an integer: {d[key]!r}") from None


def _positive(v: float, key: str) -> float:
    if v <= 0:
        raise ParseError(f"field {key!r} must be > 0, got {v}")
    return v


class _Seen:
    """Bounded memory of published trade ids (for exchanges whose ids are not ordered)."""

    def __init__(self, size: int = 100_000):
        self._order: deque = deque(maxlen=size)
        self._set: set = set()

    def add(self, key) -> bool:
        """False when ``key`` was seen already."""
        if key in self._set:
            return False
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(key)
        self._set.add(key)
        return True


class _Base(Protocol):
    def __init__(self, symbols: Iterable[str], token_map: Mapping[str, str] | None = None, base_url: str | None = None):
        self.symbols = [s.strip() for s in symbols if s.strip()]
        self.token_map = {k.upper(): v.upper() for k, v in (token_map or {}).items()}
        self.base_url = base_url

    def token(self, symbol: str) -> str:
        return self.token_map.get(symbol.upper()) or normalise_token(symbol)


class Binance(_Base):
    """Binance USD-M futures: ``<symbol>@trade`` (or ``aggTrade``) → ticks, ``<symbol>@forceOrder``
    → liquidations. Trade ids are ordered per symbol."""

    name = "binance"

    def __init__(self, symbols, token_map=None, base_url=None, trade_stream: str = "trade"):
        super().__init__(symbols, token_map, base_url or "wss://fstream.binance.com")
        if trade_stream not in ("trade", "aggTrade"):
            raise ValueError(f"trade_stream must be 'trade' or 'aggTrade', got {trade_stream!r}")
        self.trade_stream = trade_stream
        self.last_id: dict[str, int] = {}

    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/stream"

    def streams(self) -> list[str]:
        return [f"{s.lower()}@{kind}" for s in self.symbols for kind in (self.trade_stream, "forceOrder")]

    def subscribe_frames(self) -> list[dict]:
        return [{"method": "SUBSCRIBE", "params": self.streams(), "id": 1}]

    def parse(self, frame: str, received_ms: int) -> list[Envelope]:
        msg = _json(frame)
        if "id" in msg and ("result" in msg or "error" in msg):
            if msg.get("error"):
                raise ParseError(f"subscribe refused: {msg['error']}")
            return []
        data = msg.get("data", msg)
        if not isinstance(data, dict):
            raise ParseError("'data' is not an object")
        kind = data.get("e")
        if kind in ("trade", "aggTrade"):
            symbol = str(data.get("s") or "")
            if not symbol:
                raise ParseError("missing field 's'")
            # aggTrade: the aggregate id "a"; old recordings lack it, and its last trade id "l" orders it too
            trade_id = _int(data, "t" if kind == "trade" else "a" if "a" in data else "l")
            price, qty, ts = _positive(_num(data, "p"), "p"), _num(data, "q"), _int(data, "T")
            if trade_id <= self.last_id.get(symbol, -1):
                return []  # resent after a reconnect
            self.last_id[symbol] = trade_id
            maker = data.get("m")  # the buyer was the maker: the seller was the aggressor
            return [PriceTick(event_id=derived_id("binance", kind, symbol, trade_id), timestamp=ts,
                              token=self.token(symbol), source="binance", price=price, size=qty,
                              side=None if maker is None else "SELL" if maker else "BUY", trade_id=str(trade_id),
                              ingest_ms=received_ms)]
        if kind == "forceOrder":
            o = data.get("o")
            if not isinstance(o, dict):
                raise ParseError("forceOrder without 'o'")
            symbol, side = str(o.get("s") or ""), o.get("S")
            if side not in ("BUY", "SELL") or not symbol:
                raise ParseError(f"forceOrder with bad symbol/side {symbol!r}/{side!r}")
            # filled quantity and average price once filled, else the order's
            qty = _num(o, "z") if o.get("z") not in (None, "", "0") else _num(o, "q")
            price = _num(o, "ap") if o.get("ap") not in (None, "", "0") else _num(o, "p")
            ts = _int(o, "T")
            # Coin-margined contracts (BTCUSD_PERP, BTCUSD_200925) count contracts of 100 USD (BTC)
            # or 10 USD (others); USD-M quantities are in the base coin.
            coin_m = "USD_" in symbol
            notional = qty * (100.0 if symbol.startswith("BTC") else 10.0) if coin_m else price * qty
            return [LiquidationEvent(event_id=derived_id("binance", "forceOrder", symbol, ts, side, qty, price),
                                     timestamp=ts, token=self.token(symbol), source="binance", liquidation_count=1,
                                     notional=notional, side=side, ingest_ms=received_ms)]
        return []  # depth, bookTicker, markPrice...: not ours


class Coinbase(_Base):
    """Coinbase Exchange: ``matches`` (and ``last_match``) and ``ticker`` → ticks, one per trade id.

    Sequence checks: the ``sequence`` of a product only grows (an older one is a resend and is
    dropped), and its trade ids are consecutive; a trade id (in a match, ticker or heartbeat)
    beyond the last published + 1 means missed trades: the gap is logged, counted and triggers a
    resubscribe. (``sequence`` itself is not consecutive on these channels, which carry only part
    of the order book's messages.)

    Trades that happen while the feed reconnects are lost for good (the channels do not replay),
    so the first trade of a product on a new connection sets a new baseline: the trades missed
    across the reconnect are logged and counted, without triggering yet another resubscribe.
    """

    name = "coinbase"

    def __init__(self, symbols, token_map=None, base_url=None):
        super().__init__(symbols, token_map, base_url or "wss://ws-feed.exchange.coinbase.com")
        self.last_trade: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.baseline: set[str] = set()
        self.missed_on_reconnect = 0

    def url(self) -> str:
        return self.base_url

    def on_connect(self) -> None:
        self.baseline = set(self.last_trade)

    def subscribe_frames(self) -> list[dict]:
        return [{"type": "subscribe", "product_ids": self.symbols, "channels": ["ticker", "matches", "heartbeat"]}]

    @staticmethod
    def _time(d: Mapping) -> int:
        try:
            return parse_time_ms(str(d["time"]))
        except (KeyError, ValueError):
            raise ParseError(f"bad or missing 'time': {d.get('time')!r}") from None

    def parse(self, frame: str, received_ms: int) -> list[Envelope]:
        msg = _json(frame)
        kind = msg.get("type")
        if kind in ("match", "last_match", "ticker"):
            product = str(msg.get("product_id") or "")
            if not product:
                raise ParseError("missing field 'product_id'")
            if kind == "ticker" and "trade_id" not in msg:
                return []
            trade_id, seq = _int(msg, "trade_id"), _int(msg, "sequence")
            size = _num(msg, "last_size" if kind == "ticker" else "size")
            price, ts = _positive(_num(msg, "price"), "price"), self._time(msg)
            if seq < self.last_seq.get(product, -1):
                return []  # an older message resent
            self.last_seq[product] = max(seq, self.last_seq.get(product, -1))
            last = self.last_trade.get(product)
            if last is not None and trade_id <= last:
                return []  # this trade was published from the other channel or before a reconnect
            self.last_trade[product] = trade_id
            tick = PriceTick(event_id=derived_id("coinbase", product, trade_id), timestamp=ts, token=self.token(product),
                             source="coinbase", price=price, size=size, side=_coinbase_aggressor(kind, msg.get("side")),
                             trade_id=str(trade_id), ingest_ms=received_ms)
            if last is not None and trade_id > last + 1:
                if product in self.baseline:
                    self.baseline.discard(product)
                    self.missed_on_reconnect += trade_id - last - 1
                    log.warning("coinbase %s: %d trades missed while reconnecting", product, trade_id - last - 1)
                    return [tick]
                raise Resubscribe(f"{product} trade ids {last} -> {trade_id}: {trade_id - last - 1} missed", [tick])
            self.baseline.discard(product)
            return [tick]
        if kind == "heartbeat":
            product, last_id = msg.get("product_id"), msg.get("last_trade_id")
            last = self.last_trade.get(product)
            if last is not None and product not in self.baseline and isinstance(last_id, int) and last_id > last:
                raise Resubscribe(f"{product} heartbeat last_trade_id {last_id} > published {last}")
            return []
        if kind == "error":
            raise ParseError(f"exchange error: {msg.get('message')} {msg.get('reason') or ''}".strip())
        if kind in ("subscriptions", "snapshot", "l2update", "received", "open", "done", "change", "activate", "status"):
            return []
        if kind is None:
            raise ParseError("missing field 'type'")
        return []


class Hyperliquid(_Base):
    """HyperLiquid: ``allMids`` → a tick per configured coin (mid price, receive time), ``trades``
    → a tick per trade, liquidation fills of the configured ``users`` (``userFills`` /
    ``userEvents``) → ``liquidation.event``. HyperLiquid closes connections idle for 60 s, so the
    feed pings every 30 s."""

    name = "hyperliquid"
    ping_interval = 30.0

    def __init__(self, symbols, token_map=None, base_url=None, users: Iterable[str] = ()):
        super().__init__(symbols, token_map, base_url or "wss://api.hyperliquid.xyz")
        self.users = [u.lower() for u in users]
        self.coins = {s.upper() for s in self.symbols}
        self.seen = _Seen()

    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/ws"

    def subscribe_frames(self) -> list[dict]:
        frames = [{"method": "subscribe", "subscription": {"type": "allMids"}}]
        frames += [{"method": "subscribe", "subscription": {"type": "trades", "coin": c}} for c in self.symbols]
        frames += [{"method": "subscribe", "subscription": {"type": "userFills", "user": u}} for u in self.users]
        return frames

    def ping_frame(self) -> dict:
        return {"method": "ping"}

    def parse(self, frame: str, received_ms: int) -> list[Envelope]:
        msg = _json(frame)
        channel, data = msg.get("channel"), msg.get("data")
        if channel == "trades":
            if not isinstance(data, list):
                raise ParseError("trades 'data' is not a list")
            out = []
            for t in data:
                if not isinstance(t, dict):
                    raise ParseError("a trade is not an object")
                coin = str(t.get("coin") or "")
                tid = _int(t, "tid")
                price, size, ts = _positive(_num(t, "px"), "px"), _num(t, "sz"), _int(t, "time")
                if not coin:
                    raise ParseError("missing field 'coin'")
                if self.seen.add((coin, tid)):
                    side = t.get("side")  # the aggressor's: B(id) bought, A(sk) sold
                    out.append(PriceTick(event_id=derived_id("hyperliquid", coin, tid), timestamp=ts,
                                         token=self.token(coin), source="hyperliquid", price=price, size=size,
                                         side="BUY" if side == "B" else "SELL" if side == "A" else None,
                                         trade_id=str(tid), ingest_ms=received_ms))
            return out
        if channel == "allMids":
            mids = (data or {}).get("mids") if isinstance(data, dict) else None
            if not isinstance(mids, dict):
                raise ParseError("allMids without 'mids'")
            return [PriceTick(event_id=uuid.uuid4(), timestamp=received_ms, token=self.token(coin), source="hyperliquid",
                              price=_positive(_num(mids, coin), coin), ingest_ms=received_ms)
                    for coin in mids if coin.upper() in self.coins]
        if channel in ("userFills", "user"):
            if not isinstance(data, dict) or not isinstance(data.get("fills", []), list):
                raise ParseError(f"{channel} without a 'fills' list")
            user = str(data.get("user") or (self.users[0] if len(self.users) == 1 else "")).lower()
            out = []
            for f in data.get("fills", []):
                liq = f.get("liquidation") if isinstance(f, dict) else None
                if not liq:
                    continue
                coin, side, tid = str(f.get("coin") or ""), f.get("side"), _int(f, "tid")
                if side not in ("A", "B") or not coin:
                    raise ParseError(f"fill with bad coin/side {coin!r}/{side!r}")
                if not self.seen.add(("liq", coin, tid)):
                    continue
                fill_side = "SELL" if side == "A" else "BUY"
                # The liquidation order's side: the fill's own side when the subscribed user is the
                # one liquidated, else the opposite (the user took the other side of it).
                liquidated = str(liq.get("liquidatedUser") or "").lower()
                liq_side = fill_side if liquidated == user else ("BUY" if fill_side == "SELL" else "SELL")
                price, size = _num(f, "px"), _num(f, "sz")
                out.append(LiquidationEvent(event_id=derived_id("hyperliquid", "liq", coin, tid), timestamp=_int(f, "time"),
                                            token=self.token(coin), source="hyperliquid", liquidation_count=1,
                                            notional=price * size, side=liq_side, ingest_ms=received_ms))
            return out
        if channel in ("subscriptionResponse", "pong", "l2Book", "bbo", "activeAssetCtx", "activeSpotAssetCtx",
                       "notification", "webData2", "candle", "orderUpdates", "userEvents"):
            return []
        if channel == "error":
            raise ParseError(f"exchange error: {data}")
        if channel is None:
            raise ParseError("missing field 'channel'")
        return []


PROTOCOLS = {"binance": Binance, "coinbase": Coinbase, "hyperliquid": Hyperliquid}
