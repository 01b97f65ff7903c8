"""WebSocket market-data adapters: normalisation checked frame by frame against the real
recordings, and the feed loop against a local server replaying them in each exchange's format
(drops, stalls, garbage, sequence gaps, a slow broker)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import datetime

import pytest

from feeds.exchanges import Binance, Coinbase, Hyperliquid
from feeds.live import ParseError, Resubscribe, WsFeed
from models.events import derived_id, encode_event
from tests.servers.exchange_ws import DATA, FakeExchangeWS, binance_raw, coinbase_recording

pytestmark = pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
RAW = {"examples_spot_btcusdt_20240808.gz": "BTCUSDT", "examples_usdm_ethusdt_20240718.gz": "ETHUSDT"}


# ---------------------------------------------------------------- normalisation on real frames
@pytest.mark.parametrize("name, symbol", RAW.items())
def test_binance_every_trade_frame_is_one_tick(name, symbol):
    frames = binance_raw(name)
    proto = Binance([symbol])
    trades = 0
    for frame in frames:
        events = proto.parse(frame, 0)
        data = json.loads(frame).get("data", {})  # one REST depth snapshot is in the recording too
        if data.get("e") == "trade":
            trades += 1
            (tick,) = events
            assert (tick.price, tick.size, tick.timestamp) == (float(data["p"]), float(data["q"]), data["T"])
            assert tick.token == symbol[:3] and tick.event_type == "price.tick"
            # the buyer was the maker: a seller took the trade
            assert (tick.side, tick.trade_id) == ("SELL" if data["m"] else "BUY", str(data["t"]))
        else:
            assert events == []
    assert trades == sum('"e":"trade"' in f for f in frames) > 1000


def test_binance_force_orders_are_liquidations():
    n = 0
    for file in ("binance_futures_messages.json", "binance_delivery_messages.json"):
        for msg in json.loads((DATA / "liquidations" / file).read_text()):
            data = msg.get("data", msg)
            events = Binance([]).parse(json.dumps(msg), 0)
            if data.get("e") == "forceOrder":
                n += 1
                (liq,) = events
                o = data["o"]
                assert liq.event_type == "liquidation.event" and liq.side == o["S"] and liq.timestamp == o["T"]
                coin_m = "USD_" in o["s"]  # delivery contracts: 100 USD each for BTC
                assert liq.notional == pytest.approx(float(o["z"]) * 100 if coin_m else float(o["ap"]) * float(o["z"]))
                assert liq.token == "BTC" and liq.liquidation_count == 1
            else:
                assert all(e.event_type == "price.tick" for e in events)
    assert n >= 2


def test_coinbase_every_trade_is_one_tick_across_matches_and_tickers():
    proto = Coinbase(["BAND-GBP"])
    trades: dict[tuple, dict] = {}
    ticks = []
    for frame in coinbase_recording():
        msg = json.loads(frame)
        try:
            ticks += proto.parse(frame, 0)
        except Resubscribe as exc:  # the recording has no gaps
            pytest.fail(exc.reason)
        if msg.get("type") in ("match", "last_match") or (msg.get("type") == "ticker" and "trade_id" in msg):
            trades.setdefault((msg["product_id"], msg["trade_id"]), msg)
    assert len(ticks) == len(trades) > 100
    by_id = {derived_id("coinbase", p, tid): m for (p, tid), m in trades.items()}
    for t in ticks:
        src = by_id[t.event_id]
        assert t.price == float(src["price"]) and t.size == float(src.get("size") or src["last_size"])
        # a match names the maker's side, a ticker the taker's: the aggressor either way
        taker = src["side"] if src["type"] == "ticker" else {"buy": "sell", "sell": "buy"}[src["side"]]
        assert (t.side, t.trade_id) == (taker.upper(), str(src["trade_id"]))
        assert t.timestamp == int(datetime.fromisoformat(src["time"].replace("Z", "+00:00")).timestamp() * 1000)
    assert Counter(t.token for t in ticks)["BAND-GBP"] == len({tid for p, tid in trades if p == "BAND-GBP"})


def test_coinbase_gap_in_trade_ids_asks_for_a_resubscribe():
    proto = Coinbase(["BTC-USD"])
    base = {"type": "match", "product_id": "BTC-USD", "price": "100.5", "size": "0.1", "side": "buy",
            "time": "2021-04-17T16:43:37.089723Z"}
    assert proto.parse(json.dumps(base | {"trade_id": 10, "sequence": 100}), 0)[0].token == "BTC"
    assert proto.parse(json.dumps(base | {"trade_id": 10, "sequence": 100}), 0) == []  # resent
    with pytest.raises(Resubscribe) as gap:
        proto.parse(json.dumps(base | {"trade_id": 13, "sequence": 105}), 0)
    assert "2 missed" in gap.value.reason and len(gap.value.events) == 1
    with pytest.raises(ParseError, match="price"):
        proto.parse(json.dumps(base | {"trade_id": 14, "sequence": 106, "price": "abc"}), 0)


def test_hyperliquid_trades_mids_and_liquidation_fills():
    proto = Hyperliquid(["BTC", "ETH"], users=["0x360878d351f05975e25f1807a27895e1e5e004fb"])
    import gzip
    n_trades, ticks = 0, []
    with gzip.open(DATA / "hyperliquid" / "ws_raw_btc_20250126.gz", "rt") as fh:
        for line in fh:
            frame = line.split(" ", 1)[1]
            msg = json.loads(frame)
            events = proto.parse(frame, 0)
            if msg["channel"] == "trades":
                n_trades += len(msg["data"])
                for t, e in zip(msg["data"], events):
                    assert (e.price, e.size, e.timestamp, e.token) == (float(t["px"]), float(t["sz"]), t["time"], "BTC")
                    assert e.side == {"B": "BUY", "A": "SELL"}[t["side"]]
                ticks += events
    assert len(ticks) == n_trades > 0
    for msg in json.loads((DATA / "hyperliquid" / "ws_messages_tardis.json").read_text()):
        events = proto.parse(json.dumps(msg), 0)
        assert len(events) == (len(msg["data"]) if msg["channel"] == "trades" else 0)
    mids = proto.parse((DATA / "hyperliquid" / "nautilus_samples" / "ws_allmids.json").read_text(), 123)
    assert sorted((e.token, e.price) for e in mids) == [("BTC", 80868.5), ("ETH", 2296.45)]
    (liq,) = proto.parse((DATA / "hyperliquid" / "nautilus_samples" / "ws_user_fill_liquidation.json").read_text(), 0)
    # the subscribed user is the one liquidated and sold: a liquidation sell (longs hurt)
    assert (liq.token, liq.side, liq.notional, liq.timestamp) == ("BTC", "SELL", pytest.approx(66.653), 1781528065899)
    other = Hyperliquid(["BTC"], users=["0xabc"])
    (liq2,) = other.parse((DATA / "hyperliquid" / "nautilus_samples" / "ws_user_fill_liquidation.json").read_text(), 0)
    assert liq2.side == "BUY"


# ---------------------------------------------------------------- the feed loop against a local server
class Sink:
    """Stands in for the Kafka producer (acks at once) and the dead-letter topic."""

    def __init__(self, delay: float = 0.0):
        self.sent: list[tuple[bytes, dict]] = []
        self.dead: list[tuple[str, str]] = []
        self.delay = delay

    async def publish(self, key: bytes, value: bytes, event_type: str) -> asyncio.Future:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.sent.append((key, json.loads(value)))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def dead_letter(self, raw: str, reason: str, n: int) -> None:
        self.dead.append((raw, reason))


async def run_feed(server: FakeExchangeWS, proto, sink: Sink, timeout: float = 60, **kw) -> WsFeed:
    feed = WsFeed(proto, sink.publish, sink.dead_letter, encode_event, **kw)
    task = asyncio.create_task(feed.run())
    deadline = time.monotonic() + timeout
    while not server.finished.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    feed.stop()
    await asyncio.wait_for(task, 10)
    assert server.finished.is_set(), "the server did not get to the end of the recording"
    return feed


async def test_binance_full_speed_three_disconnects_nothing_lost_or_duplicated():
    frames = binance_raw("examples_spot_btcusdt_20240808.gz")
    trade_ids = [json.loads(f)["data"]["t"] for f in frames if '"e":"trade"' in f]
    server = FakeExchangeWS("binance", frames, overlap=25)
    n = len(frames)
    server.drop_after = {n // 4, n // 2, 3 * n // 4}
    await server.start()
    sink = Sink()
    try:
        feed = await run_feed(server, Binance(["BTCUSDT"], base_url=server.url), sink, backoff_base=0.05)
    finally:
        await server.stop()
    assert server.connections == 4 and feed.stats.reconnects >= 3
    assert server.subscribes[0] == {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@forceOrder"], "id": 1}
    got = [v["event_id"] for _, v in sink.sent]
    assert len(got) == len(set(got)) == len(trade_ids)  # none lost, none duplicated (25 frames resent per reconnect)
    assert [v["price"] for _, v in sink.sent][:3] == [float(json.loads(f)["data"]["p"]) for f in frames
                                                      if '"e":"trade"' in f][:3]
    assert all(k == b"BTC" for k, _ in sink.sent)


async def test_stalled_feed_reconnects_within_the_watchdog_and_garbage_goes_to_dead_letters():
    frames = binance_raw("examples_usdm_ethusdt_20240718.gz")[:3000]
    trades = sum('"e":"trade"' in f for f in frames)
    server = FakeExchangeWS("binance", frames)
    server.stall_at = 1000
    server.garbage_before = {500, 2000}
    await server.start()
    sink = Sink()
    try:
        feed = await run_feed(server, Binance(["ETHUSDT"], base_url=server.url), sink, stale_seconds=1.0,
                              backoff_base=0.05)
    finally:
        await server.stop()
    assert server.connections == 2 and feed.stats.reconnects == 1
    silent = server.connected_at[1] - server.stalled_at
    # the watchdog (1 s) plus the first backoff (at most 0.05 s) plus connecting
    assert 1.0 <= silent < 1.0 + 0.05 + 0.5, silent
    assert len(sink.sent) == trades
    assert [raw for raw, _ in sink.dead] == ['{"this is": not json'] * 2
    assert all(reason.startswith("not JSON") for _, reason in sink.dead)


async def test_coinbase_handshake_and_sequence_gap_resubscribes():
    frames = coinbase_recording()
    skipped = next(i for i, f in enumerate(frames) if '"type":"match"' in f and "SKL-USD" in f and i > 200)
    server = FakeExchangeWS("coinbase", frames)
    server.skip = {skipped, skipped + 1 + next(j for j, f in enumerate(frames[skipped + 1:]) if '"type":"ticker"' in f
                                               and json.loads(f)["trade_id"] == json.loads(frames[skipped])["trade_id"])}
    await server.start()
    sink = Sink()
    try:
        feed = await run_feed(server, Coinbase(["SKL-USD", "BAND-GBP"], base_url=server.url), sink, backoff_base=0.05)
    finally:
        await server.stop()
    assert feed.stats.gaps == 1 and server.connections == 2
    assert [s["type"] for s in server.subscribes] == ["subscribe", "subscribe"]
    assert server.subscribes[0]["channels"] == ["ticker", "matches", "heartbeat"]
    ids = [v["event_id"] for _, v in sink.sent]
    assert len(ids) == len(set(ids))


async def test_hyperliquid_subscribes_and_pings():
    msgs = json.loads((DATA / "hyperliquid" / "ws_messages_tardis.json").read_text())
    trades = sum(len(m["data"]) for m in msgs if m["channel"] == "trades")
    frames = [json.dumps(m) for m in msgs] * 3
    server = FakeExchangeWS("hyperliquid", frames, rate=20)
    await server.start()
    proto = Hyperliquid(["BTC"], base_url=server.url)
    proto.ping_interval = 0.2
    sink = Sink()
    try:
        await run_feed(server, proto, sink)
    finally:
        await server.stop()
    assert {"method": "subscribe", "subscription": {"type": "allMids"}} in server.subscribes
    assert {"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}} in server.subscribes
    assert server.pings >= 3
    assert len(sink.sent) == trades  # each recorded trade once, although the server sent them three times


async def test_slow_broker_back_pressure_keeps_memory_bounded():
    frames = binance_raw("examples_usdm_ethusdt_20240718.gz")[:2000]
    trades = sum('"e":"trade"' in f for f in frames)
    server = FakeExchangeWS("binance", frames)
    await server.start()
    sink = Sink(delay=0.002)
    feed = WsFeed(Binance(["ETHUSDT"], base_url=server.url), sink.publish, sink.dead_letter, encode_event, queue_size=16)
    task = asyncio.create_task(feed.run())
    peak = 0
    try:
        while len(sink.sent) < trades:
            peak = max(peak, feed.queue.qsize())
            await asyncio.sleep(0.001)
        feed.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await server.stop()
    assert peak <= 16 and len(sink.sent) == trades
