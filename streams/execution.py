"""Execution engine: ``trade.consensus_approved`` and ``trade.force_close`` → pre-trade constraints
→ sizing → exchange adapter → ``trade.placed`` + ``trade.executed`` per fill (or ``trade.rejected``
and ``risk.constraint_violation`` with the reason).

Input: approvals are keyed by token, so ``route_approvals`` re-keys them by account onto the
internal ``execution.requests`` topic; force-close requests arrive on ``orders`` (keyed by
account). The engine reads both topics (5 partitions each, co-partitioned with the account's
``portfolio`` and ``execution_state`` tables) and ignores its own ``trade.placed``/``rejected``.

Idempotency, without Faust's ``exactly_once``: the client order id derives from the approving
event (or from the position a force-close closes); an id already submitted (``execution_state``)
or whose fills the portfolio applied is never sent again, the adapters refuse a reused id, and
every emitted event has an id derived from the order or fill, so a replay re-emits identical
events that the portfolio and the event store drop. Fills not yet applied to the portfolio are
kept as in-flight quantities and counted in the position used for sizing and limits.

Closing orders (force-close, close-all) are reduce-only: they skip the halt flag, exposure,
balance and minimum-notional checks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.main import OUTPUTS, TOPICS, TOPIC_SPECS, app, emit, settings, valid_events
from app.metrics import EXCHANGE_ERRORS, ORDERS, PROCESSING_SECONDS
from app.sla import sla
from domain.portfolio import new_portfolio, roll_day, target_order
from domain.risk import check_order, evaluate, round_size
from domain.sizing import equity_fraction
from exchanges.base import Exchange, ExchangeError, Order, OrderResult
from models.events import ConsensusDecision, OrderEvent, RiskEvent, TradeExecuted, derived_id
from tables import execution_state, halt, latest_prices, portfolio

log = logging.getLogger(__name__)
_latency = PROCESSING_SECONDS.labels("execution")
SUBMITTED_MEMORY = 500
EXCHANGE_RETRIES = (0.2, 0.5, 1.0)

#: The engine's input: re-keyed approvals and the orders topic (for trade.force_close).
EXECUTION_INPUT = app.topic(settings.topic("execution.requests"), settings.topic("orders"),
                            partitions=5, retention=TOPIC_SPECS["orders"].retention, internal=True,
                            key_type=bytes, value_type=bytes)


def build_exchange() -> Exchange:
    """The adapter selected by EXCHANGE (``paper`` unless ``hyperliquid`` with keys)."""
    if settings.exchange == "hyperliquid":
        from exchanges.hyperliquid import HyperliquidExchange
        return HyperliquidExchange(settings.hyperliquid_secret_key.get_secret_value(), settings.hyperliquid_base_url,
                                   settings.hyperliquid_account_address, taker_fee_bps=settings.fee_bps)
    from exchanges.paper import PaperExchange
    return PaperExchange(settings.fee_bps, settings.slippage_bps, settings.paper_level_notional_usd,
                         settings.paper_level_step_bps, settings.paper_max_levels, settings.paper_latency_ms)


_exchange: dict = {"adapter": None, "lock": None}


async def exchange() -> Exchange:
    """The started adapter (started on first use, once per process)."""
    if _exchange["adapter"] is None:
        if _exchange["lock"] is None:
            _exchange["lock"] = asyncio.Lock()
        async with _exchange["lock"]:
            if _exchange["adapter"] is None:
                adapter = build_exchange()
                await adapter.start()
                _exchange["adapter"] = adapter
    return _exchange["adapter"]


def use_exchange(adapter: Exchange | None) -> None:
    """Replace the adapter (tests and benchmarks); ``None`` rebuilds it from settings on next use."""
    _exchange["adapter"] = adapter


def client_order_id(account: str, decision_id) -> str:
    """Exchange client order id: 128-bit hex (HyperLiquid's ``cloid`` format) derived from the
    approving event, equal on every retry or replay of that decision."""
    return "0x" + derived_id("order", account, decision_id).hex


def force_close_id(account: str, token: str, opened_ms: int, size: float) -> str:
    """Client order id of the force-close of one position state (a partial close changes ``size``
    and so gets a new id)."""
    return "0x" + derived_id("force_close", account, token, opened_ms, f"{size:.12g}").hex


def _halted(account: str) -> str | None:
    h = halt.get(account)
    return h.get("reason") or "halted" if h and h.get("halted") else None


class _Book:
    """The account as the engine sees it: the portfolio plus fills not yet applied."""

    def __init__(self, account: str):
        self.account = account
        self.state = execution_state.get(account) or {"inflight": {}, "submitted": []}
        self.pf = portfolio.get(account) or new_portfolio(settings.initial_cash_usd)
        self.applied = set(self.pf["applied"])
        self.state["inflight"] = {k: v for k, v in self.state["inflight"].items() if k not in self.applied}
        self.positions = {t: dict(p) for t, p in self.pf["positions"].items()}
        self.cash = self.pf["cash"]
        for f in self.state["inflight"].values():
            p = self.positions.setdefault(f["token"], {"size": 0.0, "entry_price": f["price"]})
            p["size"] += f["qty"]
            self.cash += -f["qty"] * f["price"] - f["fee"]
        self.positions = {t: p for t, p in self.positions.items() if abs(p["size"]) > 1e-12}

    def seen(self, cloid: str) -> bool:
        return cloid in self.state["submitted"] or cloid in self.applied

    def position(self, token: str) -> float:
        return self.positions.get(token, {}).get("size", 0.0)

    def report(self, token: str, price: float):
        marks = {t: (latest_prices.get(t) or {}).get("price") for t in self.positions}
        marks[token] = price
        return evaluate(self.cash, self.positions, {t: m for t, m in marks.items() if m}, settings.assets,
                        settings.max_leverage)


def _reject(common: dict, cloid: str, side: str, size: float, price: float | None, violation_type: str,
            reason: str, metrics: dict, decision_id=None, reduce_only: bool = False) -> list:
    ORDERS.labels("constraint").inc()
    log.info("order %s rejected: %s", cloid, reason)
    return [
        RiskEvent(event_id=derived_id("violation", cloid), event_type="risk.constraint_violation",
                  severity="WARNING", violation_type=violation_type, action_required="order rejected",
                  metrics={**metrics, "client_order_id": cloid, "reason": reason}, **common),
        OrderEvent(event_id=derived_id("rejected", cloid), event_type="trade.rejected", client_order_id=cloid,
                   side=side, size=size, price=price, reason=reason, decision_id=decision_id,
                   reduce_only=reduce_only, **common),
    ]


async def _submit(book: _Book, order: Order, common: dict, placed_reason: str, decision_id=None,
                  decision_price: float | None = None) -> list:
    st = book.state
    st["submitted"].append(order.client_order_id)
    del st["submitted"][:-SUBMITTED_MEMORY]
    execution_state[book.account] = st
    adapter = await exchange()
    result: OrderResult | None = None
    for delay in (*EXCHANGE_RETRIES, None):
        try:
            result = await adapter.submit(order)
            break
        except ExchangeError as exc:
            EXCHANGE_ERRORS.labels(adapter.name).inc()
            if delay is None:
                result = OrderResult("rejected", None, [], f"exchange error: {exc}")
                st["submitted"].remove(order.client_order_id)  # a redelivery may try again
                execution_state[book.account] = st
                break
            log.warning("exchange error on %s (retrying in %.1fs): %s", order.client_order_id, delay, exc)
            await asyncio.sleep(delay)
    ORDERS.labels(result.status).inc()
    base = dict(client_order_id=order.client_order_id, side=order.side, reduce_only=order.reduce_only, **common)
    if result.status == "rejected":
        return [OrderEvent(event_id=derived_id("rejected", order.client_order_id), event_type="trade.rejected",
                           size=order.size, price=order.reference_price, reason=result.reason,
                           decision_id=decision_id, **base)]
    if result.status == "duplicate" and not result.fills:
        log.info("exchange reports order %s as a duplicate: %s", order.client_order_id, result.reason)
        return []
    out: list = [OrderEvent(event_id=derived_id("placed", order.client_order_id), event_type="trade.placed",
                            order_id=result.order_id, size=order.size, order_type="market",
                            price=order.reference_price, decision_id=decision_id, reason=placed_reason, **base)]
    sign = 1.0 if order.side == "BUY" else -1.0
    ref = decision_price or order.reference_price
    for f in result.fills:
        st["inflight"][f.fill_id] = {"token": order.token, "qty": sign * f.size, "price": f.price, "fee": f.fee}
        out.append(TradeExecuted(event_id=derived_id("fill", f.fill_id), order_id=result.order_id,
                                 fill_id=f.fill_id, fill_price=f.price, filled_amount=f.size, fee=f.fee,
                                 slippage=sign * (f.price - ref), decision_price=ref, **base))
    execution_state[book.account] = st
    if result.status == "partially_filled":
        out.append(OrderEvent(event_id=derived_id("remainder", order.client_order_id), event_type="trade.rejected",
                              order_id=result.order_id, size=max(0.0, order.size - result.filled_size),
                              price=order.reference_price, reason=result.reason, decision_id=decision_id, **base))
    return out


async def on_approval(account: str, d: ConsensusDecision) -> list:
    """Size, check and place the order of one approval; returns the events to emit, in order."""
    cloid = client_order_id(account, d.event_id)
    book = _Book(account)
    if book.seen(cloid):
        ORDERS.labels("duplicate").inc()
        log.info("duplicate decision %s for %s: order %s already placed", d.event_id, d.token, cloid)
        return []
    common = dict(timestamp=d.timestamp, token=d.token, source="execution", correlation_id=d.correlation_id,
                  ingest_ms=d.ingest_ms, account=account)
    action_side = "BUY" if d.recommended_action == "BUY" else "SELL"
    # The decision's price (last tick of the bar behind it) is the reference fill price, so a
    # replay fills at the same price; the shared latest price only stands in for a missing one.
    price = d.price or (latest_prices.get(d.token) or {}).get("price")
    if not price:
        return _reject(common, cloid, action_side, 0.0, None, "no_price", "no price for token", {},
                       decision_id=d.event_id)
    if d.token not in settings.assets:
        return _reject(common, cloid, action_side, 0.0, price, "unknown_token",
                       f"unknown token {d.token!r}: no exchange metadata", {}, decision_id=d.event_id)
    report = book.report(d.token, price)
    position = book.position(d.token)
    rule = settings.sizing.get(d.strategy or "default") or settings.sizing["default"]
    fraction = equity_fraction(rule, d.consensus_score, d.confidence)
    order = target_order(position, report.equity, price, d.recommended_action, fraction, 0.0)
    if order is None:
        return []  # HOLD, or already positioned this way: nothing to do, nothing denied
    side, qty = order
    size = round_size(qty, settings.assets[d.token].sz_decimals)
    day = dict(book.pf)
    daily = roll_day(day, d.timestamp, report.equity)
    violation = check_order(token=d.token, side=side, size=size, price=price, reduce_only=False,
                            position=position, report=report, daily_pnl=daily,
                            day_start_equity=day["day_start_equity"],
                            halted=_halted(account), limits=settings.limits, assets=settings.assets,
                            fee_bps=settings.fee_bps)
    if violation is not None:
        return _reject(common, cloid, side, size, price, violation.violation_type, violation.reason,
                       violation.metrics, decision_id=d.event_id)
    return await _submit(book, Order(account, d.token, side, size, price, cloid, d.timestamp), common,
                         f"consensus {d.consensus_score:+.1f} ({d.strategy or 'default'}, "
                         f"{fraction:.3f} of equity)", decision_id=d.event_id, decision_price=price)


async def on_force_close(account: str, req: OrderEvent) -> list:
    """Close ``req.token``'s position (all positions when the request has no token) with
    reduce-only market orders. Allowed while trading is halted."""
    book = _Book(account)
    tokens = [req.token] if req.token else sorted(book.positions)
    out: list = []
    for token in tokens:
        position = book.position(token)
        common = dict(timestamp=req.timestamp, token=token, source="execution",
                      correlation_id=req.correlation_id or req.event_id, ingest_ms=req.ingest_ms, account=account)
        side = "SELL" if position > 0 else "BUY"
        if abs(position) < 1e-12:
            log.info("force-close of %s/%s: already flat", account, token)
            continue
        cloid = req.client_order_id if req.token and len(tokens) == 1 else force_close_id(
            account, token, int(book.positions[token].get("opened_ms", 0)), position)
        if book.seen(cloid):
            ORDERS.labels("duplicate").inc()
            continue
        price = (req.price if req.token else None) or (latest_prices.get(token) or {}).get("price") \
            or book.positions[token]["entry_price"]
        decimals = settings.assets[token].sz_decimals if token in settings.assets else 8
        size = min(round(abs(position), decimals), abs(position))
        violation = check_order(token=token, side=side, size=size, price=price, reduce_only=True,
                                position=position, report=book.report(token, price), daily_pnl=0.0,
                                day_start_equity=0.0, halted=None, limits=settings.limits,
                                assets=settings.assets, fee_bps=settings.fee_bps)
        if violation is not None:
            out += _reject(common, cloid, side, size, price, violation.violation_type, violation.reason,
                           violation.metrics, reduce_only=True)
            continue
        out += await _submit(book, Order(account, token, side, size, price, cloid, req.timestamp, reduce_only=True),
                             common, f"force-close: {req.reason or 'requested'}", decision_price=price)
    return out


@app.agent(TOPICS["consensus"], name="route_approvals")
async def route_approvals(stream):
    async for event, decision in valid_events(stream, (ConsensusDecision,), "route_approvals"):
        if decision.event_type == "trade.consensus_approved":
            await OUTPUTS["execution.requests"].send(key=settings.account.encode(), value=event.value)


@app.agent(EXECUTION_INPUT, name="execution")
async def execution(stream):
    async for event, req in valid_events(stream, (ConsensusDecision, OrderEvent), "execution"):
        t0 = time.perf_counter()
        if isinstance(req, OrderEvent):
            if req.event_type != "trade.force_close":
                continue  # the engine's own placed/rejected orders
            outs = await on_force_close(req.account, req)
        else:
            account = event.key.decode() if event.key else settings.account
            outs = await on_approval(account, req) if req.event_type == "trade.consensus_approved" else []
        for out in outs:
            await emit(out)
            if out.event_type == "trade.placed" and event.message.timestamp:
                # from the approving decision's (or force-close request's) produce time
                sla.observe("signal_to_order", max(0.0, time.time() - event.message.timestamp) * 1000.0)
        _latency.observe(time.perf_counter() - t0)
