"""The execution processor when an order's answer is lost, against a local HyperLiquid API (the
official SDK on the wire): the order is looked up by its client order id before anything is
concluded, never sent twice, and the venue's positions are reconciled with the portfolio."""

from __future__ import annotations

import uuid

import eth_account
import pytest

from exchanges.hyperliquid import HyperliquidExchange
from models.events import ConsensusDecision
from processors.execution import ExecutionConfig, ExecutionProcessor, ExecutionState
from tests.servers.hyperliquid import FakeHyperliquid

KEY = "0x" + "5d" * 32  # a throwaway test key, never funded
T0 = 1_723_161_600_000


def approval(token: str = "BTC", price: float = 50_000.0, action: str = "BUY") -> ConsensusDecision:
    return ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token=token,
                             source="consensus", consensus_score=85, contributing_agents=["trading.rules", "orderflow"],
                             recommended_action=action, window_start=T0, window_end=T0 + 5000, price=price)


@pytest.fixture
async def venue():
    server = FakeHyperliquid(eth_account.Account.from_key(KEY).address, {"BTC": 50_000.0, "ETH": 2_500.0})
    await server.start()
    stores = {k: {} for k in ("execution_state", "portfolio", "halt", "latest_prices")}
    adapter = HyperliquidExchange(KEY, server.url, fill_timeout_s=2.0)
    ex = ExecutionProcessor(ExecutionConfig(exchange_retries=2, exchange_retry_wait_s=(0.01, 0.02)),
                            ExecutionState(stores["execution_state"], stores["portfolio"], stores["halt"],
                                           stores["latest_prices"]), adapter)
    yield server, ex, stores
    await adapter.stop()
    await server.stop()


async def test_lost_answers_are_resolved_by_the_order_status(venue):
    server, ex, stores = venue
    server.lose_answers = 3  # the first try and both retries execute, but no answer returns
    d = approval()
    out = await ex.process(d, account="paper")
    assert [e.event_type for e in out] == ["trade.placed", "trade.executed", "trade.executed"]
    assert len(server.by_cloid) == 1, "placed once: the retries were refused as duplicates"
    assert {e.fill_id for e in out[1:]} == {"hl-500000001", "hl-500000002"}
    assert out[0].client_order_id in stores["execution_state"]["paper"]["submitted"]
    assert await ex.process(d, account="paper") == out, "a redelivery gets the same outcome, not a second order"
    assert len(server.by_cloid) == 1


async def test_an_order_lost_on_the_way_in_is_rejected_and_its_id_released(venue):
    server, ex, stores = venue
    await ex.adapter()
    server.drop_orders = 3
    d = approval()
    (rejected,) = await ex.process(d, account="paper")
    assert rejected.event_type == "trade.rejected" and "not placed" in rejected.reason
    assert rejected.client_order_id not in stores["execution_state"]["paper"]["submitted"]
    again = await ex.process(d, account="paper")  # the id was released: a redelivery may place it
    assert [e.event_type for e in again] == ["trade.placed", "trade.executed", "trade.executed"]


async def test_an_outcome_nobody_can_tell_keeps_the_id_and_alerts(venue):
    server, ex, stores = venue
    await ex.adapter()
    server.lose_answers, server.info_down = 3, True
    d = approval()
    unknown, alert = await ex.process(d, account="paper")
    assert unknown.event_type == "trade.outcome_unknown" and "may have been placed" in unknown.reason
    assert alert.event_type == "risk.alert" and alert.violation_type == "order_outcome_unknown"
    assert alert.severity == "CRITICAL" and alert.metrics["client_order_id"] == unknown.client_order_id
    assert unknown.client_order_id in stores["execution_state"]["paper"]["submitted"]
    server.info_down = False
    sent = len(server.orders)
    # redelivered once the venue answers again: not sent twice, and the reconciliation that could
    # not run before shows what the lost order did
    again = await ex.process(d, account="paper")
    assert len(server.orders) == sent, "never sent twice"
    (mismatch,) = [e for e in again if getattr(e, "violation_type", None) == "position_mismatch"]
    assert [e for e in again if e is not mismatch] == [unknown, alert]  # the outcome it had, again
    assert mismatch.violation_type == "position_mismatch"
    assert mismatch.metrics["positions"] == {"BTC": {"exchange": pytest.approx(0.2), "portfolio": 0.0}}


async def test_first_order_after_start_reconciles_venue_positions_with_the_portfolio(venue):
    server, ex, stores = venue
    await ex.adapter()
    server.fills.append({"coin": "ETH", "px": "2500", "sz": "1.5", "side": "A", "oid": 1, "tid": 2, "fee": "0",
                         "time": T0})  # a position opened elsewhere on the account
    out = await ex.process(approval(), account="paper")
    alert = out[0]
    assert alert.event_type == "risk.alert" and alert.violation_type == "position_mismatch"
    assert alert.metrics["positions"] == {"ETH": {"exchange": -1.5, "portfolio": 0.0}}
    assert [e.event_type for e in out[1:]] == ["trade.placed", "trade.executed", "trade.executed"]
    assert [e.event_type for e in await ex.process(approval(), account="paper")] == [], "once per start"


async def test_the_venues_asset_metadata_replaces_the_configured_table(venue):
    from domain.risk import AssetSpec

    server, ex, stores = venue
    server.universe[0].update(maxLeverage=20, szDecimals=3)
    assets = ex.config.assets
    assert assets["BTC"] == AssetSpec(40, 5)
    await ex.adapter()
    assert assets["BTC"] == AssetSpec(20, 3) and assets["SOL"] == AssetSpec(20, 2), "others kept as configured"
    (placed, *_) = await ex.process(approval(), account="paper")
    assert placed.size == round(placed.size, 3)
