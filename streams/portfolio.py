"""Portfolio agent: ``trade.executed`` → the account's ``portfolio`` table (cash, positions,
realised PnL, fees) → ``state.changed``, and ``position.closed`` when a position returns to zero.

Fill application is idempotent on the fill id (``portfolio.applied``, which also lists the client
order ids of applied orders for the execution engine), so a redelivered fill is not counted twice.
The account's positions are mirrored into the ``exposures`` global table, which the risk agent
reads on every tick.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, emit, settings, valid_events
from app.metrics import EQUITY, LEVERAGE, PROCESSING_SECONDS, TICK_TO_FILL_SECONDS
from domain.portfolio import apply_fill, mark, new_portfolio, roll_day
from models.events import PositionClosed, StateEvent, TradeExecuted, derived_id
from streams.risk import invalidate_exposures
from tables import exposures, latest_prices, portfolio

_latency = PROCESSING_SECONDS.labels("portfolio")


def marks_for(pf: dict) -> dict[str, float]:
    out = {}
    for token in pf["positions"]:
        lp = latest_prices.get(token)
        if lp:
            out[token] = lp["price"]
    return out


def portfolio_view(pf: dict) -> dict:
    """JSON view of a portfolio marked to the latest prices (USD)."""
    m = mark(pf, marks_for(pf), settings.assets, settings.max_leverage)
    return {"cash": pf["cash"], "equity": m["equity"], "gross_notional": m["gross_notional"],
            "leverage": m["leverage"] if m["leverage"] != float("inf") else None,
            "realised_pnl": pf["realised_pnl"], "unrealised_pnl": m["unrealised_pnl"],
            "fees_paid": pf["fees_paid"], "fills": pf.get("fills", 0), "updated_ms": pf["updated_ms"],
            "risk_score": m["risk_score"], "positions": m["positions"]}


async def on_fill(fill: TradeExecuted) -> list:
    """Apply one fill to its account; returns the events to emit."""
    account = fill.account
    pf = portfolio.get(account) or new_portfolio(settings.initial_cash_usd)
    key = fill.fill_key
    if key in pf["applied"]:
        return []
    # Equity before the fill opens a new day's PnL: cash plus positions at their marks.
    prior = marks_for(pf)
    roll_day(pf, fill.timestamp, pf["cash"] + sum(p["size"] * (prior.get(t) or p["entry_price"])
                                                  for t, p in pf["positions"].items()))
    closed = apply_fill(pf, fill.token, fill.side, fill.filled_amount, fill.fill_price, fill.fee,
                        fill.timestamp, key)
    if key != fill.client_order_id and fill.client_order_id not in pf["applied"]:
        pf["applied"].append(fill.client_order_id)  # the engine's "order already filled" check
    portfolio[account] = pf
    exposures[account] = {"cash": pf["cash"], "positions": {
        t: {"size": p["size"], "entry_price": p["entry_price"], "opened_ms": p["opened_ms"]}
        for t, p in pf["positions"].items()}}
    invalidate_exposures()
    marks = {**marks_for(pf), fill.token: fill.fill_price}
    view = mark(pf, marks, settings.assets, settings.max_leverage)
    daily = roll_day(pf, fill.timestamp, view["equity"])
    lev = view["leverage"] if view["leverage"] != float("inf") else 1e9
    EQUITY.labels(account).set(view["equity"])
    LEVERAGE.labels(account).set(lev)
    common = dict(timestamp=fill.timestamp, token=fill.token, source="portfolio",
                  correlation_id=fill.correlation_id, ingest_ms=fill.ingest_ms, account=account)
    out: list = []
    if closed is not None:
        out.append(PositionClosed(event_id=derived_id("closed", key), order_id=fill.order_id,
                                  exit_price=fill.fill_price, entry_price=closed.entry_price, size=closed.size,
                                  pnl_usd=closed.pnl_usd, duration_s=closed.duration_s, **common))
    out.append(StateEvent(
        event_id=derived_id("state", key), event_type="state.changed",
        portfolio_value=view["equity"], cash=pf["cash"], leverage_ratio=lev, daily_pnl=daily,
        positions={t: {k: p[k] for k in ("size", "entry_price", "mark_price", "unrealised_pnl",
                                         "liquidation_price", "liquidation_distance_pct")}
                   for t, p in view["positions"].items()},
        delta={"token": fill.token, "side": fill.side, "filled_amount": fill.filled_amount,
               "fill_price": fill.fill_price, "fee": fill.fee, "client_order_id": fill.client_order_id,
               "fill_id": key, "seq": pf["fills"], "risk_score": view["risk_score"]},
        **common))
    if fill.ingest_ms:
        TICK_TO_FILL_SECONDS.observe(max(0.0, time.time() - fill.ingest_ms / 1000.0))
    return out


@app.agent(TOPICS["trade.executed"], name="portfolio")
async def portfolio_agent(stream):
    async for _event, fill in valid_events(stream, (TradeExecuted, PositionClosed), "portfolio"):
        t0 = time.perf_counter()
        if isinstance(fill, PositionClosed):
            continue
        for out in await on_fill(fill):
            await emit(out)
        _latency.observe(time.perf_counter() - t0)
