"""Risk agent, halt flag, cascade detection and the execution engine's force-close path, run as the
real Faust agents in Faust's test context (``memory://`` tables, recording outputs)."""

from __future__ import annotations

import uuid

import pytest

from app import main, runtime
from models.events import (ConsensusDecision, LiquidationEvent, OrderEvent, PriceTick, RiskEvent, TradeExecuted,
                           encode_event, new_event_id)
from streams.execution import execution
from streams.portfolio import portfolio_agent
from streams.risk import cascade, halt_agent
from streams.ticks import ticks
from domain.halt import any_halted
from tables import halt, portfolio

T0 = 1_723_161_280_000


def fill(side, qty, price, ts=T0, account="acct", token="BTC", cloid=None):
    cloid = cloid or "0x" + uuid.uuid4().hex
    return TradeExecuted(event_id=new_event_id(), timestamp=ts, token=token, source="test", account=account,
                         order_id="o-" + cloid[2:10], client_order_id=cloid, side=side, fill_price=price,
                         filled_amount=qty, fee=0.0)


def tick(price, ts, token="BTC"):
    return PriceTick(event_id=new_event_id(), timestamp=ts, token=token, source="test", price=price)


async def build_5x_long(outputs):
    """10 BTC long at 50,000 on 100,000 USD: 5x, liquidation at 40,506.33 (cross, BTC mmr 1.25 %)."""
    async with portfolio_agent.test_context() as agent:
        await agent.put(value=encode_event(fill("BUY", 10.0, 50_000.0)), key=b"acct")
    outputs["state.changes"].sent.clear()


async def test_critical_buffer_emits_risk_critical_and_one_force_close(outputs, tune):
    tune(runtime.portfolio, initial_cash_usd=100_000.0)
    tune(runtime.execution, initial_cash_usd=100_000.0)
    await build_5x_long(outputs)
    async with ticks.test_context() as agent:
        for i, px in enumerate([50_000.0, 48_000.0, 46_000.0, 45_000.0, 44_900.0, 44_800.0]):
            await agent.put(value=encode_event(tick(px, T0 + 1000 * (i + 1))), key=b"BTC")
    alerts = outputs["risk.alerts"]
    (lev,) = [a for a in alerts.of("risk.alert") if a["violation_type"] == "max_leverage"]
    assert lev["metrics"]["leverage"] == pytest.approx(5.0)
    moves = [a for a in alerts.of("risk.alert") if a["violation_type"] == "price_move"]
    assert [m["metrics"]["price"] for m in moves] == [46_000.0]  # -8 % from the 50,000 entry
    (crit,) = alerts.of("risk.critical")  # once, though three ticks are inside the buffer
    assert crit["metrics"]["liquidation_price"] == pytest.approx(40_506.33, abs=0.01)
    assert crit["metrics"]["distance_pct"] < 10
    (fc,) = outputs["orders"].of("trade.force_close")
    assert fc["account"] == "acct" and fc["side"] == "SELL" and fc["size"] == 10.0 and fc["reduce_only"]
    assert fc["client_order_id"] == crit["metrics"]["client_order_id"]

    # The engine closes the whole position, though trading is halted (max leverage): reduce-only.
    async with halt_agent.test_context() as agent:
        await agent.put(value=encode_event(RiskEvent.model_validate(lev)), key=b"acct")
    assert halt.get("acct")["halted"]
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(OrderEvent.model_validate(fc)), key=b"acct")
        await agent.put(value=encode_event(OrderEvent.model_validate(fc)), key=b"acct")  # duplicate
    closing = outputs["trade.executed"].of("trade.executed")  # 450,000 USD walks two book levels
    assert sum(f["filled_amount"] for f in closing) == pytest.approx(10.0) and len(closing) == 2
    assert all(f["side"] == "SELL" and f["reduce_only"] for f in closing)
    assert closing[0]["fill_price"] == pytest.approx(45_000.0 * (1 - main.settings.slippage_bps / 1e4))
    async with portfolio_agent.test_context() as agent:
        for f in closing:
            await agent.put(value=encode_event(TradeExecuted.model_validate(f)), key=b"acct")
    assert portfolio.get("acct")["positions"] == {}
    (closed,) = outputs["trade.executed"].of("position.closed")
    assert closed["pnl_usd"] < -49_000


async def test_halt_blocks_opening_orders_until_risk_ok(outputs):
    alert = RiskEvent(event_id=new_event_id(), event_type="risk.alert", timestamp=T0, source="test", account="paper",
                      severity="WARNING", violation_type="max_leverage", action_required="halt")
    ok = RiskEvent(event_id=new_event_id(), event_type="risk.ok", timestamp=T0 + 1, source="test", account="paper",
                   severity="INFO")
    d = ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token="BTC",
                          source="consensus", consensus_score=85, contributing_agents=["a", "b"],
                          recommended_action="BUY", window_start=T0, window_end=T0 + 5000, price=50_000.0)
    assert any_halted(runtime.trading.state.halt) == []  # the tick step's copy of the flags, taken now
    async with halt_agent.test_context() as agent:
        await agent.put(value=encode_event(alert), key=b"paper")
    assert any_halted(runtime.trading.state.halt) == ["paper"], "the copy is re-read after the halt agent's write"
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(d), key=b"paper")
    (rej,) = outputs["orders"].of("trade.rejected")
    assert rej["reason"].startswith("trading halted")
    async with halt_agent.test_context() as agent:
        await agent.put(value=encode_event(ok), key=b"paper")
    assert not halt.get("paper")["halted"]
    assert any_halted(runtime.trading.state.halt) == []
    d2 = d.model_copy(update={"event_id": uuid.uuid4()})
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(d2), key=b"paper")
    assert len(outputs["trade.executed"].of("trade.executed")) == 1


async def test_large_order_fills_in_parts_and_portfolio_counts_each_part_once(outputs, tune):
    from domain.sizing import SizingRule
    tune(runtime.execution, limits={"max_position_notional_usd": 1e9, "max_leverage": 10.0},
         sizing={**runtime.execution.config.sizing, "big": SizingRule(fraction=6.0)})  # 600,000 USD
    tune(runtime.portfolio, max_leverage=10.0)
    d = ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token="BTC",
                          source="consensus", consensus_score=85, contributing_agents=["a", "b"],
                          recommended_action="BUY", window_start=T0, window_end=T0 + 5000, price=50_000.0,
                          strategy="big")
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(d), key=b"paper")
    fills = outputs["trade.executed"].of("trade.executed")
    assert [f["filled_amount"] for f in fills] == pytest.approx([5.0, 5.0, 2.0])  # 250,000 USD per level
    assert len({f["fill_id"] for f in fills}) == 3
    assert fills[2]["slippage"] > fills[0]["slippage"] > 0
    async with portfolio_agent.test_context() as agent:
        for f in fills + fills:  # each redelivered
            await agent.put(value=encode_event(TradeExecuted.model_validate(f)), key=b"paper")
    assert portfolio.get("paper")["positions"]["BTC"]["size"] == pytest.approx(12.0)
    async with execution.test_context() as agent:  # the approval again: already filled
        await agent.put(value=encode_event(d), key=b"paper")
    placed = outputs["orders"].of("trade.placed")
    assert len(placed) == 2 and placed[0] == placed[1], "not placed again: the same outcome sent again"
    assert outputs["trade.executed"].of("trade.executed") == fills + fills


async def test_constraint_denials_are_events_with_reasons(outputs):
    d = ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token="PEPE",
                          source="consensus", consensus_score=85, contributing_agents=["a", "b"],
                          recommended_action="BUY", window_start=T0, window_end=T0 + 5000, price=0.00001)
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(d), key=b"paper")
    (rej,) = outputs["orders"].of("trade.rejected")
    (viol,) = outputs["risk.alerts"].of("risk.constraint_violation")
    assert viol["violation_type"] == "unknown_token" and "PEPE" in rej["reason"]


async def test_cascade_on_exposed_side_only(outputs):
    async with portfolio_agent.test_context() as agent:
        await agent.put(value=encode_event(fill("BUY", 10.0, 50_000.0, account="acct")), key=b"acct")
    liq = LiquidationEvent(event_id=new_event_id(), timestamp=T0 + 1000, token="BTC", source="test",
                           liquidation_count=40, notional=25_000_000.0, side="SELL", cascade_indicator=3.0)
    async with cascade.test_context() as agent:
        await agent.put(value=encode_event(liq), key=b"BTC")
        await agent.put(value=encode_event(liq.model_copy(update={"event_id": new_event_id(), "side": "BUY"})),
                        key=b"BTC")  # forced buys do not hurt a long
    (c,) = outputs["risk.alerts"].of("risk.cascade_detected")
    # sqrt law: 3 % × sqrt(25e6 / 1e9) = 0.474 % of 500,000 exposure = 2,372 USD = 2.4 % of equity
    assert c["metrics"]["estimated_impact_pct"] == pytest.approx(3 * (25e6 / 1e9) ** 0.5)
    assert c["metrics"]["estimated_loss_usd"] == pytest.approx(500_000 * 0.03 * (25e6 / 1e9) ** 0.5)
    assert c["severity"] == "CRITICAL" and c["account"] == "acct"


async def test_out_of_order_and_invalid_ticks_do_not_move_marks(outputs):
    await build_5x_long(outputs)
    async with ticks.test_context() as agent:
        await agent.put(value=encode_event(tick(50_000.0, T0 + 2000)), key=b"BTC")
        await agent.put(value=encode_event(tick(30_000.0, T0 + 1000)), key=b"BTC")  # late: ignored
        await agent.put(value=b'{"event_type": "price.tick", "price": -1}', key=b"BTC")
        await agent.put(value=b'{"event_type":"price.tick","event_id":"%s","timestamp":1,"token":"BTC",'
                              b'"source":"x","price":NaN}' % str(uuid.uuid4()).encode(), key=b"BTC")
    assert not outputs["risk.alerts"].of("risk.critical")
    assert not outputs["orders"].sent


async def test_ticks_out_of_event_time_bounds_or_keyed_to_another_token_move_nothing(outputs):
    """A valid tick stamped in 2286 or in 1995, or keyed to another token, is refused by the
    tick stream (dead letter with the reason) before the trading or the risk processor sees it:
    marks and bars follow the real ticks around it."""
    await build_5x_long(outputs)
    bogus = [(tick(99_999.0, 10**13), b"BTC"), (tick(1.0, 788_918_400_000), b"BTC"),
             (tick(99_999.0, T0 + 1500, token="SOL"), b"ETH")]
    async with ticks.test_context() as agent:
        await agent.put(value=encode_event(tick(50_000.0, T0 + 1000)), key=b"BTC")
        for ev, key in bogus:
            await agent.put(value=encode_event(ev), key=key)
        await agent.put(value=encode_event(tick(49_000.0, T0 + 2000)), key=b"BTC")
    assert runtime.risk.mark_price("BTC") == 49_000.0 and "SOL" not in runtime.risk.state.seen
    assert runtime.trading.state.open["BTC"].bar.close == 49_000.0
    reasons = [d["reason"] for d in outputs["dead.letters"].of("dead_letter")]
    assert len(reasons) == 3
    assert "ahead of the clock" in reasons[0] and "before the floor" in reasons[1] and "does not match" in reasons[2]


def test_event_store_sink_rows_and_dead_letters_of_unvalidated_topics():
    """The sink's batch step: valid events become rows counted by topic; an invalid message on a
    topic no agent reads becomes a dead letter (once, with its location and the reason); one on
    a topic an agent validates is left to that agent."""
    from types import SimpleNamespace

    from app.main import settings
    from store import sink

    good = tick(50_000.0, T0 + 1000)
    records = [SimpleNamespace(topic=settings.topic("price.ticks"), partition=0, offset=7, timestamp=T0,
                               key=b"BTC", value=encode_event(good)),
               SimpleNamespace(topic=settings.topic("whale.activity"), partition=2, offset=9, timestamp=T0,
                               key=b"BTC", value=b'{"not": "an event"'),
               SimpleNamespace(topic=settings.topic("price.ticks"), partition=1, offset=3, timestamp=T0,
                               key=b"BTC", value=b"junk")]
    rows, per_topic, dead, origins = sink.rows_of(records, sink.stored_topics(settings), settings)
    assert [r.event_id for r in rows] == [good.event_id] and dict(per_topic) == {"price.ticks": 1}
    assert origins == [records[0]]
    (dl,) = [d.model_dump() for d in dead]
    assert (dl["topic"], dl["partition"], dl["offset"], dl["timestamp"]) == (settings.topic("whale.activity"), 2, 9, T0)
    assert dl["source"] == "sink.whale.activity" and dl["reason"]


async def test_a_message_whose_handling_raises_is_reported_and_the_stream_goes_on(outputs, monkeypatch):
    """A schema-valid message an agent cannot handle (an engine that raises on an approval; a
    processor that raises on a tick) gives one ``agent.error`` naming the exception, and one dead
    letter with it as the reason; the next message is handled as usual. A non-UTF-8 key on the
    engine's input names no account it trades: a dead letter saying so, not an error."""
    d = ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token="BTC",
                          source="consensus", consensus_score=85, contributing_agents=["a", "b"],
                          recommended_action="BUY", window_start=T0, window_end=T0 + 5000, price=50_000.0)
    real_process = runtime.execution.process
    raised = []

    async def flaky_process(event, partition=None, account=None):
        if not raised:
            raised.append(event.event_id)
            raise ZeroDivisionError("division by zero")
        return await real_process(event, partition, account=account)

    monkeypatch.setattr(runtime.execution, "process", flaky_process)
    async with execution.test_context() as agent:
        await agent.put(value=encode_event(d.model_copy(update={"event_id": uuid.uuid4()})), key=b"\xff\xfe")
        await agent.put(value=encode_event(d), key=b"paper")
        await agent.put(value=encode_event(d.model_copy(update={"event_id": uuid.uuid4()})), key=b"paper")
    (err,) = outputs["system"].of("agent.error")
    assert err["agent"] == "execution" and err["context"]["exception"] == "ZeroDivisionError"
    assert err["context"]["event_id"] == str(d.event_id) and err["token"] == "BTC"
    unknown, raising = outputs["dead.letters"].of("dead_letter")
    assert unknown["source"] == "execution" and unknown["reason"].startswith("unknown account")
    assert raising["source"] == "execution" and raising["reason"].startswith("ZeroDivisionError in execution")
    assert len(outputs["trade.executed"].of("trade.executed")) == 1  # the next approval filled

    calls = []
    real = runtime.risk.on_tick

    def flaky(t):
        calls.append(t.price)
        if len(calls) == 1:
            raise ZeroDivisionError("division by zero")
        return real(t)

    monkeypatch.setattr(runtime.risk, "on_tick", flaky)
    async with ticks.test_context() as agent:
        await agent.put(value=encode_event(tick(50_000.0, T0 + 1000)), key=b"BTC")
        await agent.put(value=encode_event(tick(50_100.0, T0 + 2000)), key=b"BTC")
    assert calls == [50_000.0, 50_100.0]
    errors = [e for e in outputs["system"].of("agent.error") if e["agent"] == "ticks"]
    assert len(errors) == 1 and errors[0]["context"]["exception"] == "ZeroDivisionError"
    assert runtime.risk.mark_price("BTC") == 50_100.0  # the stream went on


async def test_a_force_close_for_an_account_not_traded_here_is_left_to_the_engine_agent(monkeypatch):
    """The engine's agent dead-letters a command for an account outside ACCOUNT and ACCOUNTS; the
    tick step's shortcut must not execute one when its worker happens to own the partition."""
    from streams import execution as execution_stream

    ran = []

    async def run(topic, partition, key, value, trace, coro_fn):
        ran.append(key)
        return []

    monkeypatch.setattr(execution_stream, "_owned_partition", lambda account: 0)
    monkeypatch.setattr(main.app.input_order, "ready", lambda *tps: True)
    monkeypatch.setattr(execution_stream, "run_as_read", run)
    fc = OrderEvent(event_id=new_event_id(), event_type="trade.force_close", timestamp=T0, token="BTC",
                    source="risk", account="ghost", client_order_id="0x" + uuid.uuid4().hex, side="SELL",
                    size=1.0, reduce_only=True)
    assert await execution_stream.execute_now(fc) is None and ran == []
    assert await execution_stream.execute_now(fc.model_copy(update={"account": "acct"})) == [] and ran == [b"acct"]


def test_another_workers_halt_reaches_the_tick_steps_copy_through_the_changelog(outputs):
    """A global table's changelog applied here (another worker's write, or this worker's read back)
    re-reads the copies of it that the tick step's processors read (app.main.RawKeyGlobalTable)."""
    from types import SimpleNamespace

    assert any_halted(runtime.trading.state.halt) == []
    flag = {"halted": True, "manual": True, "reason": "manual: test", "since_ms": T0, "event_id": "x"}
    halt.apply_changelog_batch([SimpleNamespace(key="paper", value=flag,
                                                message=SimpleNamespace(value=b"{}", partition=0))])
    assert any_halted(runtime.trading.state.halt) == ["paper"]
    assert any_halted(runtime.orderflow.halt) == ["paper"] and any_halted(runtime.whale.halt) == ["paper"]
