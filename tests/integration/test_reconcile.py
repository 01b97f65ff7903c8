"""A worker trading on HyperLiquid (a local HyperLiquid API, the official SDK on the wire) compares
the venue's open positions with its portfolio as soon as its tables are recovered, before any
tick or order: a position the portfolio does not hold is a ``risk.alert`` (``position_mismatch``)
at start."""

from __future__ import annotations

import asyncio

import eth_account
import pytest

from app.local import Stack
from tests.servers.bus import Bus
from tests.servers.hyperliquid import FakeHyperliquid

pytestmark = pytest.mark.integration

KEY = "0x" + "5d" * 32  # a throwaway test key, never funded


async def test_positions_are_reconciled_at_start_before_any_order(tmp_path):
    server = FakeHyperliquid(eth_account.Account.from_key(KEY).address, {"BTC": 50_000.0, "ETH": 2_500.0})
    await server.start()
    # a position opened elsewhere on the account while no worker ran
    server.fills.append({"coin": "ETH", "px": "2500", "sz": "1.5", "side": "A", "oid": 1, "tid": 2, "fee": "0",
                         "time": 1_723_161_600_000})
    stack = Stack(tmp_path, EXCHANGE="hyperliquid", HYPERLIQUID_SECRET_KEY=KEY, HYPERLIQUID_BASE_URL=server.url,
                  ACCOUNTS="[]", STORE_EVENTS="false")
    try:
        worker = stack.worker("w1")
        await asyncio.to_thread(worker.start)
        async with Bus(stack.env["TOPIC_PREFIX"], ("risk.alerts", "orders", "trade.executed")) as bus:
            await bus.wait(lambda: bus.of("risk.alert", violation_type="position_mismatch"), 60,
                           "the position_mismatch alert at start")
            await asyncio.sleep(2)  # anything else would be here by now
        alerts = bus.of("risk.alert", violation_type="position_mismatch")
        assert len(alerts) == 1 and alerts[0]["account"] == "paper" and alerts[0]["severity"] == "CRITICAL"
        assert alerts[0]["metrics"]["positions"] == {"ETH": {"exchange": -1.5, "portfolio": 0.0}}
        assert not bus.of("trade.placed") and not bus.of("trade.executed"), "no order was needed to reconcile"
        assert server.orders == []
    finally:
        await asyncio.to_thread(stack.stop)
        await server.stop()
