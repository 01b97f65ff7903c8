"""Execution engine: ``trade.consensus_approved`` → constraints → fixed-fraction sizing → paper
exchange → ``trade.placed`` + ``trade.executed`` (or ``trade.rejected`` and
``risk.constraint_violation``).

Approvals are keyed by token; ``route_approvals`` re-keys them by account onto the internal
``execution.requests`` topic, so the engine runs on the partition that owns the account's
``portfolio`` and ``execution_state`` tables.

Idempotency: the client order id is derived from the approving event's id; an id already
submitted (``execution_state``) or already filled (``portfolio.applied``) is never sent again, so a
redelivered or replayed approval reaches the exchange once. Fills not yet applied to the
portfolio are kept as in-flight quantities and counted in the position used for sizing.
"""

from __future__ import annotations

import logging
import time

from app.main import OUTPUTS, TOPICS, app, dead_letter, emit, settings
from app.metrics import PROCESSING_SECONDS
from domain import paper
from domain.portfolio import mark, new_portfolio, target_order
from models.events import (ConsensusDecision, EventError, OrderEvent, RiskEvent, TradeExecuted, decode_event,
                           derived_id, new_event_id)
from tables import execution_state, latest_prices, portfolio

log = logging.getLogger(__name__)
_latency = PROCESSING_SECONDS.labels("execution")
SUBMITTED_MEMORY = 500


def client_order_id(account: str, decision_id) -> str:
    """Exchange client order id: 128-bit hex (HyperLiquid's ``cloid`` format) derived from the
    approving event, equal on every retry or replay of that decision."""
    return "0x" + derived_id("order", account, decision_id).hex


@app.agent(TOPICS["consensus"], name="route_approvals")
async def route_approvals(stream):
    async for event in stream.events():
        try:
            decision = decode_event(event.value, (ConsensusDecision,))
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "route_approvals")
            continue
        if decision.event_type == "trade.consensus_approved":
            await OUTPUTS["execution.requests"].send(key=settings.account.encode(), value=event.value)


async def on_approval(account: str, d: ConsensusDecision) -> list:
    """Decide and place the order for one approval; returns the events to emit, in order."""
    cloid = client_order_id(account, d.event_id)
    st = execution_state.get(account) or {"inflight": {}, "submitted": []}
    pf = portfolio.get(account) or new_portfolio(settings.initial_cash_usd)
    applied = set(pf["applied"])
    if cloid in st["submitted"] or cloid in applied:
        log.info("duplicate decision %s for %s: order %s already placed", d.event_id, d.token, cloid)
        return []
    # In-flight fills the portfolio has applied by now are no longer pending.
    st["inflight"] = {k: v for k, v in st["inflight"].items() if k not in applied}
    # The decision's price (the last tick of the bar that produced it) is the reference fill
    # price, so a replay fills at the same price; the shared latest price only stands in for it.
    price = d.price or (latest_prices.get(d.token) or {}).get("price")
    if not price:
        return [OrderEvent(event_id=new_event_id(), event_type="trade.rejected", timestamp=d.timestamp,
                           token=d.token, source="execution", correlation_id=d.correlation_id,
                           account=account, client_order_id=cloid, side="BUY" if d.recommended_action == "BUY" else "SELL",
                           size=0.0, reason="no price for token", decision_id=d.event_id)]
    positions = {t: dict(p) for t, p in pf["positions"].items()}
    for fill in st["inflight"].values():
        p = positions.setdefault(fill["token"], {"size": 0.0, "entry_price": fill["price"]})
        p["size"] += fill["qty"]
    marks = {t: (latest_prices.get(t) or {}).get("price") for t in positions}
    marks[d.token] = price
    view = mark({"cash": pf["cash"] + sum(-f["qty"] * f["price"] - f["fee"] for f in st["inflight"].values()),
                 "positions": positions}, {t: m for t, m in marks.items() if m})
    position = positions.get(d.token, {}).get("size", 0.0)
    order = target_order(position, view["equity"], price, d.recommended_action, settings.position_fraction,
                         settings.min_order_notional_usd)
    if order is None:
        return []
    side, qty = order
    new_pos = position + (qty if side == "BUY" else -qty)
    gross_after = view["gross_notional"] - abs(position * price) + abs(new_pos * price)
    lev_after = gross_after / view["equity"] if view["equity"] > 0 else float("inf")
    common = dict(timestamp=d.timestamp, token=d.token, source="execution", correlation_id=d.correlation_id,
                  ingest_ms=d.ingest_ms, account=account)
    if lev_after > settings.max_leverage:
        reason = f"leverage after trade {lev_after:.2f} > max {settings.max_leverage:.2f}"
        return [
            RiskEvent(event_id=new_event_id(), event_type="risk.constraint_violation", severity="WARNING",
                      violation_type="max_leverage", action_required="order rejected",
                      metrics={"leverage_after": lev_after, "max_leverage": settings.max_leverage,
                               "client_order_id": cloid}, **common),
            OrderEvent(event_id=new_event_id(), event_type="trade.rejected", client_order_id=cloid, side=side,
                       size=qty, price=price, reason=reason, decision_id=d.event_id, **common),
        ]
    fill = paper.market_fill(side, qty, price, settings.fee_bps, settings.slippage_bps)
    order_id = f"paper-{cloid[2:18]}"
    st["submitted"].append(cloid)
    del st["submitted"][:-SUBMITTED_MEMORY]
    st["inflight"][cloid] = {"token": d.token, "qty": qty if side == "BUY" else -qty,
                             "price": fill.fill_price, "fee": fill.fee}
    execution_state[account] = st
    return [
        OrderEvent(event_id=derived_id("placed", cloid), event_type="trade.placed", order_id=order_id,
                   client_order_id=cloid, side=side, size=qty, order_type="market", price=price,
                   decision_id=d.event_id, reason=f"consensus {d.consensus_score:+.1f}", **common),
        TradeExecuted(event_id=derived_id("fill", cloid), order_id=order_id, client_order_id=cloid, side=side,
                      fill_price=fill.fill_price, filled_amount=qty, fee=fill.fee, slippage=fill.slippage,
                      decision_price=price, **common),
    ]


@app.agent(TOPICS["execution.requests"], name="execution")
async def execution(stream):
    async for event in stream.events():
        t0 = time.perf_counter()
        try:
            decision = decode_event(event.value, (ConsensusDecision,))
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "execution")
            continue
        account = event.key.decode() if event.key else settings.account
        for out in await on_approval(account, decision):
            await emit(out)
        _latency.observe(time.perf_counter() - t0)
