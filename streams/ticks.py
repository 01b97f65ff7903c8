"""The tick stream: one Faust agent on ``price.ticks`` that decodes and validates each tick once
and hands it to every per-tick processor in turn, :class:`processors.trading.TradingProcessor`
(bars, indicators, rules), :class:`processors.risk.RiskProcessor` (marking, leverage,
liquidation buffer, price moves) and the order-flow and whale agents
(:mod:`processors.flow`), then sends what they answered: risk's first, then the signals in the
order the backtest engine queues them (rules, order flow, whale), so both runtimes give the
consensus the same signals in the same order.

One agent rather than one per processor because Faust delivers a topic's every message to each
agent reading it: each extra reader costs a dispatch and a decode per tick, which was most of the
live path's per-tick cost. Each processor's own time per tick is in
``moondev_processing_seconds{agent="trading"|"risk"|"flow"}``, the whole step's (decode and sends
included) in ``{agent="ticks"}``. A step that closed a bar has the bar stored once the broker has
acknowledged its events, while the stream goes on to the next ticks
(:class:`app.main.StoreAfterAcks`); the time from the step's end until then is in
``{agent="ticks.acks"}``.

The first tick of each token's open bar is acked only once that bar has closed and been stored;
every other tick is acked when its step ends. The consumer never commits past an unacked message
(:class:`app.kafka.CommitBelowUnacked`), so the committed offset never passes the start of an
open bar; after a crash or a rebalance the worker that owns the partition replays from that
offset and the trading processor rebuilds the open bar exactly. Holding every tick of the bar
instead kept a 60 s bar's ticks in memory (60,000 at 1,000 ticks/s, which full garbage
collections then walked) and acked them all in one go at the close: 22,197 acks took 95 ms, in
which the worker handled nothing else. The
risk processor skips replayed ticks older than the last it saw of the token (its ``late`` count),
and its events have ids derived from their inputs, so a replay adds nothing.

A ``trade.force_close`` the risk processor answers is executed in the same step when this worker
owns the account (:func:`streams.execution.force_close_now`): the closing order reaches the
exchange without a Kafka hop. Likewise the signals: once sent, each goes through the consensus in
the same step when this worker owns the token's partition of ``signal.generated``
(:func:`streams.consensus.consensus_now`), and an approval from there through the engine.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from app.main import TOPICS, app, dead_letter, decode_checked, emit, survive
from app.runtime import orderflow as orderflow_processor
from app.runtime import risk as risk_processor
from app.runtime import trading as trading_processor
from app.runtime import tick_writes
from app.runtime import whale as whale_processor
from app.sla import sla
from core.metrics import AGENT_EVENTS, LATE_EVENTS, PROCESSING_SECONDS, TICK_RECEIVE_SECONDS, TICKS_CONSUMED
from domain import indicators as ind
from models.events import EventError, PriceTick
from processors.trading import CLOSED, DROP
from streams.consensus import consensus_now
from streams.execution import force_close_now


def _ack_soon(stream, event) -> None:
    asyncio.ensure_future(stream.ack(event))


@app.agent(TOPICS["price.ticks"], name="ticks")
async def ticks(stream):
    ind.compute([1.0] * 60)  # JIT-compiles pandas-ta's numba kernels now, not in a view or a test
    trading, risk, orderflow, whale = trading_processor, risk_processor, orderflow_processor, whale_processor
    step_s, trading_s, risk_s, flow_s = (PROCESSING_SECONDS.labels(a) for a in ("ticks", "trading", "risk", "flow"))
    trading_late, risk_late = LATE_EVENTS.labels("trading"), LATE_EVENTS.labels("risk")
    risk_in = AGENT_EVENTS.labels("risk", "in")
    held: dict = {}  # token -> (the processor's open bar, the unacked event of its first tick)
    async for event in stream.noack().events():
        t0 = time.perf_counter()
        try:
            tick = decode_checked(event.value, (PriceTick,), event.key)
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "trading")
            await stream.ack(event)
            continue
        TICKS_CONSUMED.inc()
        risk_in.inc()
        if tick.ingest_ms:
            TICK_RECEIVE_SECONDS.observe(max(0.0, time.time() - tick.ingest_ms / 1000.0))

        # A tick the trading processor raised on is dead-lettered and acked (it is in no bar); one
        # that raised after it was folded into its bar is dead-lettered and held as usual.
        verdict = DROP
        async with survive("ticks", event, tick), tick_writes.step(tick) as pending:
            # A bar's close is stored only once its events are in Kafka (processors.base.WriteBehind),
            # without holding up the next ticks (app.main.StoreAfterAcks).
            t1 = time.perf_counter()
            late = trading.late
            outs, verdict = trading.on_tick(tick, event.message.tp)
            if trading.late != late:
                trading_late.inc(trading.late - late)
            t2 = time.perf_counter()
            late = risk.late
            alerts = risk.on_tick(tick)
            if risk.late != late:
                risk_late.inc(risk.late - late)
            t3 = time.perf_counter()
            outs += orderflow.on_tick(tick)
            outs += whale.on_tick(tick)
            trading_s.observe(t2 - t1)
            risk_s.observe(t3 - t2)
            flow_s.observe(time.perf_counter() - t3)

            # Risk first: a force-close must not queue behind a signal, nor wait for a Kafka hop when
            # this worker owns the account (the engine runs on it here, streams.execution).
            for out in alerts:
                pending.append(sent := await emit(out))
                if out.event_type == "risk.alert" and tick.ingest_ms:
                    sla.observe("tick_to_risk_alert", time.time() * 1000.0 - tick.ingest_ms)
                elif out.event_type == "trade.force_close":
                    for done in await force_close_now(out, sent) or ():
                        pending.append(await emit(done))
            sends = []
            for out in outs:
                pending.append(sent := await emit(out))
                sends.append(sent)
            # then the consensus on them here, when this worker owns their partition (streams.consensus)
            for out, sent in zip(outs, sends):
                if out.event_type == "signal.generated":
                    await consensus_now(out, sent)

        if verdict == DROP:
            await stream.ack(event)
        else:
            bar = trading.state.open.get(tick.token)  # the token's open bar, as the processor keeps it
            first = held.get(tick.token)
            if first is not None and first[0] is not bar:
                # The processor dropped the bar when its partition was revoked and rebuilds it from
                # the committed offset: its first tick since is the one to hold. The old one is
                # let go unacked: acked, it could let the commit pass its offset before the replay
                # delivers that tick again.
                first = None
            if verdict == CLOSED or first is None:
                # this tick opens the bar: it holds the commit back in place of the closed bar's first,
                # which is acked once the closed bar is stored
                held[tick.token] = (bar, event)
                if first is not None:
                    tick_writes.after(partial(_ack_soon, stream, first[1]), first[1])
            else:
                await stream.ack(event)
        step_s.observe(time.perf_counter() - t0)
