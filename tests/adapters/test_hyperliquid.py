"""The HyperLiquid adapter (official SDK) against a local HyperLiquid API over HTTP + WebSocket."""

from __future__ import annotations

import eth_account
import pytest

from exchanges.base import Order
from exchanges.hyperliquid import HyperliquidExchange
from tests.servers.hyperliquid import FakeHyperliquid

KEY = "0x" + "4c" * 32  # a throwaway test key, never funded


@pytest.fixture
async def hl():
    wallet = eth_account.Account.from_key(KEY)
    server = FakeHyperliquid(wallet.address, {"BTC": 50_000.0, "ETH": 2_500.0})
    url = await server.start()
    adapter = HyperliquidExchange(KEY, url, fill_timeout_s=3.0)
    await adapter.start()
    await server.wait_subscribed()
    yield server, adapter
    sdk_thread = adapter._info.ws_manager
    await adapter.stop()
    assert not sdk_thread.is_alive(), "the SDK's WebSocket thread ends with stop()"
    await server.stop()


def order(size=0.02, side="BUY", token="BTC", cloid="0x" + "1f" * 16, reduce_only=False):
    return Order("hl", token, side, size, 50_000.0 if token == "BTC" else 2_500.0, cloid, 1_000, reduce_only)


async def test_signed_ioc_order_with_cloid_fills_from_the_user_fills_channel(hl):
    server, adapter = hl
    result = await adapter.submit(order(0.02))
    assert result.status == "filled" and result.order_id == "77747314"
    # Two fills pushed on userFills, each with HyperLiquid's trade id and fee.
    assert [f.size for f in result.fills] == [0.01, 0.01]
    assert {f.fill_id for f in result.fills} == {"hl-500000001", "hl-500000002"}
    assert all(f.price == 50_000.0 and f.fee == pytest.approx(0.01 * 50_000 * 0.00045) for f in result.fills)
    (sent,) = server.orders
    wire = sent["action"]["orders"][0]
    # IOC limit at +5 % (the SDK's market convention), 5 significant figures; our cloid; signed by us.
    assert wire["t"] == {"limit": {"tif": "Ioc"}} and wire["p"] == "52500" and wire["s"] == "0.02"
    assert wire["c"] == "0x" + "1f" * 16 and wire["r"] is False
    assert server.signers == [eth_account.Account.from_key(KEY).address.lower()]


async def test_same_client_order_id_reaches_the_exchange_once(hl):
    server, adapter = hl
    first = await adapter.submit(order(0.02))
    again = await adapter.submit(order(0.02))
    assert first.status == "filled" and again.status == "duplicate" and not again.fills


async def test_exchange_rejections_carry_hyperliquid_reason(hl):
    server, adapter = hl
    small = await adapter.submit(order(0.0001, cloid="0x" + "2a" * 16))  # 5 USD
    assert small.status == "rejected" and "minimum value of $10" in small.reason
    unknown = await adapter.submit(Order("hl", "PEPE", "BUY", 1.0, 1.0, "0x" + "3b" * 16, 1))
    assert unknown.status == "rejected" and "unknown coin" in unknown.reason


async def test_reduce_only_sell(hl):
    server, adapter = hl
    result = await adapter.submit(order(0.5, side="SELL", token="ETH", cloid="0x" + "4d" * 16, reduce_only=True))
    assert result.status == "filled" and sum(f.size for f in result.fills) == pytest.approx(0.5)
    wire = server.orders[-1]["action"]["orders"][0]
    assert wire["r"] is True and wire["b"] is False and wire["p"] == "2375"


async def test_missing_user_fills_fall_back_to_the_order_response(hl):
    server, adapter = hl
    server._sockets.clear()  # the WebSocket push is lost
    adapter.fill_timeout_s = 0.3
    result = await adapter.submit(order(0.02, cloid="0x" + "5e" * 16))
    (f,) = result.fills
    assert f.size == 0.02 and f.price == 50_000.0 and f.fee == pytest.approx(0.02 * 50_000 * 4.5e-4)
    assert "secret" not in repr(adapter) and KEY not in repr(adapter)


def test_unclaimed_fills_are_bounded_but_awaited_orders_kept():
    """Fills of orders nobody waits for (placed elsewhere on the account, or after a timeout) are
    kept for the most recent MAX_UNCLAIMED_ORDERS orders; an order being awaited is never dropped."""
    import asyncio

    from core.metrics import BOUNDS_HIT
    from exchanges import hyperliquid

    before = BOUNDS_HIT.labels("hyperliquid_unclaimed_fills")._value.get()
    ex = hyperliquid.HyperliquidExchange("0x" + "11" * 32, "http://127.0.0.1:9")
    ex._waiters[0] = asyncio.Event()
    n = hyperliquid.MAX_UNCLAIMED_ORDERS + 50
    for oid in range(n):
        ex._record_fills({"data": {"fills": [{"oid": oid, "sz": "1", "px": "1"}]}})
    assert len(ex._fills) == hyperliquid.MAX_UNCLAIMED_ORDERS
    assert 0 in ex._fills and ex._waiters[0].is_set()
    assert 1 not in ex._fills and n - 1 in ex._fills  # the oldest unclaimed went first
    assert BOUNDS_HIT.labels("hyperliquid_unclaimed_fills")._value.get() - before == 50, "each drop counted"


async def test_asset_metadata_comes_from_the_venues_meta(hl):
    """Info.meta() at start: max leverage and size decimals as HyperLiquid lists them."""
    from domain.risk import AssetSpec

    server, adapter = hl
    assert adapter.assets == {"BTC": AssetSpec(40, 5), "ETH": AssetSpec(25, 4)}
    server.universe[0].update(maxLeverage=50, szDecimals=4)
    server.universe.append({"name": "OLD", "szDecimals": 2, "maxLeverage": 3, "isDelisted": True})
    again = HyperliquidExchange(KEY, server.url)
    await again.start()
    try:
        assert again.assets == {"BTC": AssetSpec(50, 4), "ETH": AssetSpec(25, 4)}, "the venue's values; delisted left out"
    finally:
        sdk_thread = again._info.ws_manager
        await again.stop()
    assert not sdk_thread.is_alive(), "stopped before the venue answered the subscription, the thread ends too"


async def test_an_order_whose_answer_was_lost_is_found_by_its_cloid(hl):
    from exchanges.base import ExchangeError

    server, adapter = hl
    server.lose_answers = 1  # executed, but the answer never comes back
    lost = order(0.02, cloid="0x" + "6f" * 16)
    with pytest.raises(ExchangeError):
        await adapter.submit(lost)
    found = await adapter.order_status(lost)
    assert found.status == "filled" and found.order_id == "77747314"
    assert sorted(f.fill_id for f in found.fills) == ["hl-500000001", "hl-500000002"]
    assert sum(f.size for f in found.fills) == pytest.approx(0.02)
    assert await adapter.order_status(order(0.02, cloid="0x" + "70" * 16)) is None, "never placed"
    assert await adapter.positions() == {"BTC": pytest.approx(0.02)}
    server.info_down = True
    with pytest.raises(ExchangeError):
        await adapter.order_status(lost)
    with pytest.raises(ExchangeError):
        await adapter.positions()
