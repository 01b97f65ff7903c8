"""Faust agent tests: the real agents, run in Faust's test context with the ``memory://`` table
store. What an agent emits is read from the ``OUTPUTS`` map, which the test points at recording
outputs instead of Kafka topics."""

from __future__ import annotations

import uuid

import pytest

import streams  # noqa: F401  (registers every agent and table, as Faust's autodiscovery does)
from app import main, runtime
from domain.sizing import SizingRule
from feeds.files import read_ticks
from models.events import ConsensusDecision, PriceTick, SignalGenerated, TradeExecuted, encode_event, new_event_id
from streams.consensus import consensus
from domain.orders import client_order_id
from streams.execution import execution
from streams.portfolio import portfolio_agent
from streams.ticks import ticks as trading
from tables import latest_prices, portfolio

T0 = 1_723_161_280_000


def signal(ts: int, action="BUY", score=90.0, agent="trading.rules", price=100.0) -> SignalGenerated:
    return SignalGenerated(event_id=new_event_id(), timestamp=ts, token="BTC", source=agent, action=action,
                           score=score, confidence=1.0, agent=agent, price=price)


async def test_trading_agent_builds_bars_and_signals_from_real_ticks(outputs, sample_path):
    rows = [r for r in read_ticks(sample_path) if r.token == "BTC"][:6000]
    async with trading.test_context() as agent:
        for r in rows:
            t = PriceTick(event_id=new_event_id(), timestamp=r.ts_ms, token=r.token, source="test", price=r.price,
                          size=r.size)
            await agent.put(value=encode_event(t), key=b"BTC")
    sigs = outputs["signal.generated"].of("signal.generated")
    assert sigs, "real BTC trades over a minute of 1 s bars produce signals"
    for s in sigs:
        assert s["action"] in ("BUY", "SELL") and 40 <= s["score"] <= 100 and 0 < s["confidence"] <= 1
        assert s["timestamp"] % 1000 == 0 and s["reasons"] and s["indicators"]["sma_20"] is not None
    # bars close on event time: a signal never comes from a bar later than the ticks seen
    assert max(s["timestamp"] for s in sigs) <= rows[-1].ts_ms


async def test_trading_agent_sends_bad_ticks_to_dead_letters_and_goes_on(outputs):
    good = PriceTick(event_id=new_event_id(), timestamp=T0, token="BTC", source="test", price=1.0)
    async with trading.test_context() as agent:
        await agent.put(value=b'{"event_type": "price.tick", "price": "abc"}', key=b"BTC")
        await agent.put(value=encode_event(good), key=b"ETH")  # key does not match the token
        await agent.put(value=encode_event(good), key=b"BTC")
    dead = outputs["dead.letters"].of("dead_letter")
    assert len(dead) == 2
    assert "validation error" in dead[0]["reason"] and dead[0]["raw"].startswith('{"event_type"')
    assert "does not match token" in dead[1]["reason"]


def signal_of(token: str, ts: int, action="BUY", score=90.0, agent="trading.rules") -> SignalGenerated:
    return signal(ts, action, score, agent).model_copy(update={"token": token})


async def test_consensus_decides_each_window_once(outputs):
    """Interval windows (min agents 2): rules + sentiment 1 s apart approve; later members of a
    decided window decide nothing; a signal 6 s after the anchor opens a new window; a window of
    one agent fails when event time passes it, for its own token or (stream time) another's."""
    assert main.settings.consensus_min_agents == 2
    async with consensus.test_context() as agent:
        puts = [signal_of("ETH", T0 + 1000),
                signal_of("BTC", T0 + 1000), signal_of("BTC", T0 + 2000, agent="sentiment"),
                signal_of("BTC", T0 + 3000, "SELL", 20), signal_of("BTC", T0 + 7000, "SELL", 20),
                signal_of("BTC", T0 + 13_000)]
        for s in puts:
            await agent.put(value=encode_event(s), key=s.token.encode())
        await agent.put(value=encode_event(puts[2]), key=b"BTC")  # redelivered: counted once
        await agent.put(value=encode_event(signal_of("BTC", T0 + 4000, agent="x")), key=b"BTC")  # late
    decisions = [v for _, v in outputs["consensus"].sent]
    kinds = [(v["event_type"], v["token"], v["window_start"]) for v in decisions]
    assert kinds == [("trade.consensus_approved", "BTC", T0 + 1000), ("signal.consensus_failed", "ETH", T0 + 1000),
                     ("signal.consensus_failed", "BTC", T0 + 7000)]
    approved = decisions[0]
    assert approved["consensus_score"] == 90 and approved["recommended_action"] == "BUY"
    assert approved["contributing_agents"] == ["sentiment", "trading.rules"] and len(approved["signal_ids"]) == 2
    assert approved["weights"] == {"trading.rules": 1.0, "sentiment": 0.8}
    assert decisions[1]["reason"].endswith("agents 1 < 2")


async def test_consensus_state_survives_in_the_table(outputs):
    """The window is in the table: a new signal after the in-memory caches are lost (a restart)
    still joins it, and the window decides once."""
    async with consensus.test_context() as agent:
        await agent.put(value=encode_event(signal_of("BTC", T0 + 100)), key=b"BTC")
        runtime.consensus.state.open.clear()  # a restart: the in-memory caches are gone
        runtime.consensus.state.stream_time.clear()
        runtime.consensus.on_assigned()
        await agent.put(value=encode_event(signal_of("BTC", T0 + 2100, agent="sentiment")), key=b"BTC")
        await agent.put(value=encode_event(signal_of("BTC", T0 + 3100, agent="trading.llm")), key=b"BTC")
    (decision,) = outputs["consensus"].sent
    assert decision[1]["event_type"] == "trade.consensus_approved"
    assert decision[1]["contributing_agents"] == ["sentiment", "trading.rules"]


def approval(score=85.0, price=100.0) -> ConsensusDecision:
    return ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token="BTC",
                             source="consensus", consensus_score=score, contributing_agents=["trading.rules"],
                             recommended_action="BUY" if score > 0 else "SELL", window_start=T0,
                             window_end=T0 + 5000, price=price)


async def test_execution_places_one_order_per_decision(outputs):
    d = approval()
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(d), key=b"paper")
        await agent.put(value=encode_event(d), key=b"paper")  # redelivered: no second order
    placed = outputs["orders"].of("trade.placed")
    fills = outputs["trade.executed"].of("trade.executed")
    # The redelivery gets the first order's outcome again (its events may not have reached Kafka
    # before a crash), identical, ids included: one order, one fill.
    assert len(placed) == 2 and len(fills) == 2
    assert placed[0] == placed[1] and fills[0] == fills[1]
    assert placed[0]["client_order_id"] == fills[0]["client_order_id"] == client_order_id("paper", d.event_id)
    s = main.settings
    qty = s.position_fraction * s.initial_cash_usd / 100.0
    assert fills[0]["filled_amount"] == pytest.approx(qty)
    assert fills[0]["fill_price"] == pytest.approx(100.0 * (1 + s.slippage_bps / 1e4))
    assert fills[0]["fee"] == pytest.approx(fills[0]["fill_price"] * qty * s.fee_bps / 1e4)


async def test_execution_rejects_orders_over_max_leverage(outputs, tune):
    tune(runtime.execution, sizing={**runtime.execution.config.sizing, "default": SizingRule(fraction=5.0)},
         limits={"max_position_notional_usd": 1e9})
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(approval()), key=b"paper")
    assert not outputs["trade.executed"].sent
    (rejected,) = outputs["orders"].of("trade.rejected")
    assert "leverage after trade" in rejected["reason"]
    (violation,) = outputs["risk.alerts"].of("risk.constraint_violation")
    assert violation["violation_type"] == "max_leverage"


async def test_portfolio_applies_each_fill_once(outputs):
    fill = TradeExecuted(event_id=new_event_id(), timestamp=T0, token="BTC", source="execution", account="paper",
                         order_id="o1", client_order_id="0xabc", side="BUY", fill_price=100.0, filled_amount=2.0,
                         fee=0.5)
    close = fill.model_copy(update={"event_id": new_event_id(), "client_order_id": "0xdef", "side": "SELL",
                                    "fill_price": 110.0, "timestamp": T0 + 10_000})
    async with portfolio_agent.test_context() as agent:
        await agent.put(value=encode_event(fill), key=b"paper")
        await agent.put(value=encode_event(fill), key=b"paper")  # duplicate
        await agent.put(value=encode_event(close), key=b"paper")
    states = outputs["state.changes"].of("state.changed")
    assert len(states) == 2
    (closed,) = outputs["trade.executed"].of("position.closed")
    assert closed["pnl_usd"] == pytest.approx(2 * 10 - 1.0) and closed["duration_s"] == 10
    pf = portfolio.get("paper")
    assert pf["cash"] == pytest.approx(main.settings.initial_cash_usd - 200 + 220 - 1.0)
    assert pf["positions"] == {}


async def test_trading_agent_replay_after_restart_rebuilds_open_bar_without_double_counting(outputs, sample_path):
    """A restart replays from the committed offset, which never passes an open bar's ticks: the
    open bar is rebuilt and ticks of bars already stored are skipped."""
    import copy

    from tables import bar_history

    rows = [r for r in read_ticks(sample_path) if r.token == "ETH"][:3000]
    ticks = [PriceTick(event_id=new_event_id(), timestamp=r.ts_ms, token="ETH", source="t", price=r.price,
                       size=r.size) for r in rows]
    half = len(ticks) // 2
    async with trading.test_context() as agent:
        for t in ticks[:half]:
            await agent.put(value=encode_event(t), key=b"ETH")
        before = copy.deepcopy(bar_history.get("ETH"))
        runtime.trading.state.open.clear()  # the worker restarts: in-memory open bars are gone
        replay_from = next(i for i, t in enumerate(ticks) if t.timestamp >= (before["last_start"] // 1000 - 3) * 1000)
        for t in ticks[replay_from:]:
            await agent.put(value=encode_event(t), key=b"ETH")
    replayed = copy.deepcopy(bar_history.get("ETH"))
    assert replayed["ind"]["n"] > before["ind"]["n"] > 20
    # one update per bar: the running indicator state equals a straight run's, to the bit
    runtime.trading.state.open.clear()
    bar_history.data.clear()
    async with trading.test_context() as agent:
        for t in ticks:
            await agent.put(value=encode_event(t), key=b"ETH")
    assert bar_history.get("ETH") == replayed


async def test_risk_agent_marks_to_market_and_alerts_above_max_leverage(outputs):
    from streams.ticks import ticks
    from tables import exposures

    exposures.data[b"paper"] = {"cash": -200_000.0, "positions": {"BTC": {"size": 4.0, "entry_price": 60_000.0}}}
    def tick(ts, price):
        return PriceTick(event_id=new_event_id(), timestamp=ts, token="BTC", source="t", price=price)
    async with ticks.test_context() as agent:
        await agent.put(value=encode_event(tick(T0, 60_000.0)), key=b"BTC")  # equity 40k, leverage 6
        await agent.put(value=encode_event(tick(T0 + 1000, 60_100.0)), key=b"BTC")  # still high: no repeat
        runtime.exposures.invalidate()
        exposures.data[b"paper"] = {"cash": 0.0, "positions": {"BTC": {"size": 1.0, "entry_price": 60_000.0}}}
        await agent.put(value=encode_event(tick(T0 + 2000, 60_000.0)), key=b"BTC")  # leverage 1: ok again
    alerts = outputs["risk.alerts"].sent
    assert [v["event_type"] for _, v in alerts] == ["risk.alert", "risk.ok"]
    assert alerts[0][0] == b"paper" and alerts[0][1]["metrics"]["leverage"] == pytest.approx(6.0)
    assert alerts[0][1]["violation_type"] == "max_leverage"
    assert latest_prices.get("BTC")["price"] == 60_000.0


async def test_a_slow_message_is_reported_as_agent_lagging_once_a_minute(outputs, monkeypatch):
    """A message whose handling takes AGENT_SLOW_MS or more: ``agent.lagging`` with reason
    processing_time, the agent, where the message was and how long it took; at most once a
    minute per agent."""
    monkeypatch.setattr(main.settings, "agent_slow_ms", 0.001)
    monkeypatch.setattr(main.slow_messages, "reported", {})
    good = PriceTick(event_id=new_event_id(), timestamp=T0, token="BTC", source="test", price=1.0)
    async with trading.test_context() as agent:
        await agent.put(value=encode_event(good), key=b"BTC")
        await agent.put(value=encode_event(good.model_copy(update={"timestamp": T0 + 1000})), key=b"BTC")
    [lagging] = outputs["system"].of("agent.lagging")
    assert (lagging["agent"], lagging["reason"]) == ("ticks", "processing_time")
    assert lagging["processing_ms"] >= lagging["threshold"] == 0.001 and lagging["topic"].endswith("price.ticks")
