"""Execution processor: ``trade.consensus_approved`` and ``trade.force_close`` → pre-trade
constraints → sizing → exchange adapter → ``trade.placed`` + ``trade.executed`` per fill (or
``trade.rejected`` and ``risk.constraint_violation`` with the reason).

Commands and what happened are distinct: an approval or a force-close request is a command; a
denial by the pre-trade checks is ``risk.constraint_violation`` + ``trade.rejected`` (reason
from the check), a refusal by the venue is ``trade.rejected`` (reason from the venue), a fill is
``trade.executed``.

Idempotency: the client order id derives from the approving event (or from the position a
force-close closes; :mod:`domain.orders`); an id already submitted (``execution_state`` store) or
whose fills the portfolio applied is never sent again, the adapters refuse a reused id, and every
emitted event has an id derived from the order or fill, so a replay re-emits identical events that
the portfolio and the event store drop. A redelivered command for an order already submitted gets
that order's outcome events again (kept with the state of the last ``outcome_memory`` orders): the
worker that submitted it may have died after writing its state and before its events reached
Kafka. Fills not yet applied to the portfolio are kept as in-flight quantities and counted in the
position used for sizing and limits.

An approval is answered once, whatever the answer: one that needed no order (the position already
points its way) or that the pre-trade checks denied is remembered too (``answered``, with the
denial's events), so a redelivery gets the same answer. Answered again against the account as it
is by then, a SELL that found the account short might find it long after a later BUY filled, and
place an order the first delivery did not: a worker killed and replaying its input would trade
otherwise than one that was not.

Pre-trade checks and sizing value the account with the traded token at the order's reference
price and every other position at its entry price (not the shared latest prices, which a replay
may have moved past the decision), so the same decisions give the same orders at any replay speed.

Closing orders (force-close, close-all) are reduce-only: they skip the halt flag, exposure,
balance and minimum-notional checks. Revocation changes nothing: the state is in the stores.

Unknown outcomes: when an order's answer is lost through every retry, the exchange is asked for
the order by its client order id before anything is concluded. Not there: it was never placed,
``trade.rejected`` and the id is released (a redelivery may try again). There: its fills are
reported as if the answer had arrived. The exchange cannot be asked either:
``trade.outcome_unknown`` and a ``risk.alert`` (``order_outcome_unknown``), and the id stays
submitted, so the order is never sent twice.

Venue state: once the adapter has started, the asset metadata it publishes (HyperLiquid's
``meta``) replaces the configured entries in ``config.assets`` (a table the worker shares with the
risk processor); and at the first order of each account after start, the venue's open positions
are compared with the portfolio's (fills in flight included), any difference being a
``risk.alert`` (``position_mismatch``, the sizes per token) for an operator.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from core.metrics import EXCHANGE_ERRORS, ORDERS
from domain.halt import halted_reason
from domain.orders import client_order_id, force_close_id
from domain.portfolio import new_portfolio, roll_day, target_order
from domain.risk import DEFAULT_ASSETS, AssetSpec, Limits, check_order, evaluate, round_size
from domain.sizing import SizingRule, equity_fraction
from exchanges.base import Exchange, ExchangeError, Order, OrderResult
from models.events import (ConsensusDecision, OrderEvent, RiskEvent, TradeExecuted, decode_event, derived_id,
                           encode_event)
from processors.base import Store

log = logging.getLogger(__name__)

#: How many of the last force-close requests an engine remembers, to drop a second copy silently.
RECENT_CLOSES = 1000


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """Pre-trade ``limits``, ``assets`` (exchange metadata), ``fee_bps`` (taker fee, bp of
    notional, for the balance check), sizing rules per strategy (``sizing``, a ``default`` one
    required), ``account`` for approvals without one, ``initial_cash_usd`` of a new account,
    ``exchange_retries`` (how many times an exchange error is retried) with
    ``exchange_retry_wait_s`` (``(multiplier, max)`` seconds of tenacity's full-jitter exponential
    wait: a random wait up to ``min(max, multiplier × 2^attempt)``, so workers that fail together
    do not retry in lockstep), how many submitted ids (and, apart, ids of approvals answered without
    an order) are remembered and, of the last of each, how many keep their outcome events."""

    limits: Limits = field(default_factory=lambda: Limits(3.0, 10.0, 50_000.0, 5.0, 10.0))
    assets: Mapping[str, AssetSpec] = field(default_factory=lambda: dict(DEFAULT_ASSETS))
    fee_bps: float = 4.5
    max_leverage: float = 3.0
    sizing: Mapping[str, SizingRule] = field(default_factory=lambda: {"default": SizingRule()})
    account: str = "paper"
    initial_cash_usd: float = 100_000.0
    exchange_retries: int = 3
    exchange_retry_wait_s: tuple[float, float] = (0.2, 1.0)
    #: how many submitted order ids, and how many ids of approvals answered without an order, are
    #: remembered (a redelivery of an older one is answered anew)
    submitted_memory: int = 500
    #: how many of the last submitted orders (and answered approvals) keep their outcome events,
    #: re-sent on a redelivery
    outcome_memory: int = 20

    @classmethod
    def from_settings(cls, s) -> "ExecutionConfig":
        return cls(s.limits, dict(s.assets), s.fee_bps, s.max_leverage, dict(s.sizing), s.account,
                   s.initial_cash_usd)


class ExecutionState:
    """``execution_state``: account -> {"inflight": {fill id: fill}, "submitted": [client order
    ids], "answered": [client order ids of commands answered without an order under that id],
    "outcomes": {client order id: [encoded events]}} (written); ``portfolio``, ``halt``,
    ``latest_prices`` (read)."""

    def __init__(self, execution_state: Store, portfolio: Mapping, halt: Mapping, latest_prices: Mapping):
        self.execution_state = execution_state
        self.portfolio = portfolio
        self.halt = halt
        self.latest_prices = latest_prices


class _Book:
    """The account as the engine sees it: the portfolio plus fills not yet applied."""

    def __init__(self, account: str, st: ExecutionState, cfg: ExecutionConfig):
        self.account = account
        self.st = st
        self.cfg = cfg
        self.state = st.execution_state.get(account) or {"inflight": {}, "submitted": []}
        self.pf = st.portfolio.get(account) or new_portfolio(cfg.initial_cash_usd)
        applied = self.pf["applied"]  # a list; the few fills in flight are looked up in it
        self.state["inflight"] = {k: v for k, v in self.state["inflight"].items() if k not in applied}
        self.positions = {t: dict(p) for t, p in self.pf["positions"].items()}
        self.cash = self.pf["cash"]
        for f in self.state["inflight"].values():
            p = self.positions.setdefault(f["token"], {"size": 0.0, "entry_price": f["price"]})
            p["size"] += f["qty"]
            self.cash += -f["qty"] * f["price"] - f["fee"]
        self.positions = {t: p for t, p in self.positions.items() if abs(p["size"]) > 1e-12}

    def seen(self, cloid: str) -> bool:
        return (cloid in self.state["submitted"] or cloid in self.state.get("answered", ())
                or cloid in self.pf["applied"])

    def position(self, token: str) -> float:
        return self.positions.get(token, {}).get("size", 0.0)

    def report(self, token: str, price: float):
        # The traded token at the order's price, the others at their entry prices: a decision is
        # sized and checked the same however far the price stream has run ahead of it (live, in a
        # replay at any speed, in process); the risk processor marks to market on every tick.
        return evaluate(self.cash, self.positions, {token: price}, self.cfg.assets, self.cfg.max_leverage)


class ExecutionProcessor:
    name = "execution"
    topics = ("execution.requests", "orders")

    def __init__(self, config: ExecutionConfig, state: ExecutionState, exchange: Exchange):
        """``exchange``: the adapter orders go to; started on first use."""
        self.config = config
        self.state = state
        self.exchange = exchange
        self._started = False
        self._lock: asyncio.Lock | None = None
        self._orders: dict = {}  # status -> its labelled counter (labels() takes a lock per call)
        #: one at a time per account: a runtime may run a force-close in another task (the tick
        #: stream) while the engine's own stream handles the same account
        self._accounts: dict[str, asyncio.Lock] = {}
        self._reconciled: set[str] = set()  # accounts whose venue positions were compared since start
        #: ids of the last force-close requests answered since start: a worker's tick step runs
        #: the engine on its own request and still sends it to ``orders``, where the engine reads
        #: it again; that copy is dropped. One from before a restart is answered from the state
        #: (its outcome sent again: the worker that answered it may have died before its events
        #: reached Kafka).
        self._closes: OrderedDict[uuid.UUID, None] = OrderedDict()

    def _count(self, status: str) -> None:
        child = self._orders.get(status)
        if child is None:
            child = self._orders[status] = ORDERS.labels(status)
        child.inc()

    def on_revoked(self, partitions) -> None:
        pass

    async def adapter(self) -> Exchange:
        if not self._started:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self._started:
                    await self.exchange.start()
                    self._adopt_venue_assets()
                    self._started = True
        return self.exchange

    def _adopt_venue_assets(self) -> None:
        venue = getattr(self.exchange, "assets", None)
        assets = self.config.assets
        if not venue or not isinstance(assets, dict):
            return
        changed = {t: (assets.get(t), spec) for t, spec in venue.items() if t in assets and assets[t] != spec}
        assets.update(venue)
        for token, (before, now) in sorted(changed.items()):
            log.warning("%s metadata of %s: %s (configured %s)", self.exchange.name, token, now, before)
        log.info("%s asset metadata loaded: %d listed perpetuals", self.exchange.name, len(venue))

    async def reconcile(self, account: str, timestamp: int) -> list:
        """Once per account after start: the venue's open positions against the portfolio's (fills
        in flight included). Returns a ``risk.alert`` (``position_mismatch``) listing the tokens
        whose sizes differ, or nothing (no difference, or a venue that keeps no positions). When the
        venue cannot be asked, nothing is concluded and the next order asks again."""
        if account in self._reconciled:
            return []
        adapter = await self.adapter()
        try:
            venue = await adapter.positions()
        except ExchangeError as exc:
            log.warning("positions of %s on %s unavailable, not reconciled yet: %s", account, adapter.name, exc)
            return []
        self._reconciled.add(account)
        if venue is None:
            return []
        book = _Book(account, self.state, self.config)
        mine = {t: p["size"] for t, p in book.positions.items()}
        diff = {t: {"exchange": venue.get(t, 0.0), "portfolio": mine.get(t, 0.0)}
                for t in sorted(set(venue) | set(mine)) if abs(venue.get(t, 0.0) - mine.get(t, 0.0)) > 1e-9}
        if not diff:
            log.info("positions of %s on %s agree with the portfolio (%d open)", account, adapter.name, len(mine))
            return []
        log.warning("positions of %s on %s differ from the portfolio: %s", account, adapter.name, diff)
        return [RiskEvent(event_id=derived_id("reconcile", account, timestamp, sorted(diff.items())),
                          event_type="risk.alert", timestamp=timestamp, source="execution", account=account,
                          severity="CRITICAL", violation_type="position_mismatch",
                          action_required="positions on the exchange differ from the portfolio: check before "
                                          "trading on", metrics={"positions": diff})]

    async def reconcile_now(self, account: str, timestamp: int) -> list:
        """:meth:`reconcile` in turn with the account's orders (for a runtime that compares at
        start, before any order)."""
        async with self._lock_of(account):
            return await self.reconcile(account, timestamp)

    async def process(self, event, partition=None, account: str | None = None) -> list:
        """Handle one approval (``account``: the message key, else the configured account) or
        force-close request; other order events (this processor's own) are ignored. Calls for
        the same account run one at a time."""
        if isinstance(event, OrderEvent):
            if event.event_type != "trade.force_close":
                return []
            async with self._lock_of(event.account):
                # looked up under the lock: the copy may arrive while the tick step still runs it
                if event.event_id in self._closes:
                    return []
                out = [*await self.reconcile(event.account, event.timestamp),
                       *await self.on_force_close(event.account, event)]
                self._closes[event.event_id] = None
                while len(self._closes) > RECENT_CLOSES:
                    self._closes.popitem(last=False)
                return out
        if isinstance(event, ConsensusDecision) and event.event_type == "trade.consensus_approved":
            account = account or self.config.account
            async with self._lock_of(account):
                return [*await self.reconcile(account, event.timestamp), *await self.on_approval(account, event)]
        return []

    def _lock_of(self, account: str) -> asyncio.Lock:
        lock = self._accounts.get(account)
        if lock is None:
            lock = self._accounts[account] = asyncio.Lock()
        return lock

    def _reject(self, common: dict, cloid: str, side: str, size: float, price: float | None, violation_type: str,
                reason: str, metrics: dict, decision_id=None, reduce_only: bool = False) -> list:
        self._count("constraint")
        log.info("order %s rejected: %s", cloid, reason)
        return [
            RiskEvent(event_id=derived_id("violation", cloid), event_type="risk.constraint_violation",
                      severity="WARNING", violation_type=violation_type, action_required="order rejected",
                      metrics={**metrics, "client_order_id": cloid, "reason": reason}, **common),
            OrderEvent(event_id=derived_id("rejected", cloid), event_type="trade.rejected", client_order_id=cloid,
                       side=side, size=size, price=price, reason=reason, decision_id=decision_id,
                       reduce_only=reduce_only, **common),
        ]

    async def _submit(self, book: _Book, order: Order, common: dict, placed_reason: str, decision_id=None,
                      decision_price: float | None = None) -> list:
        """Place ``order``; returns its outcome events, which are also kept with the account's
        state (the last ``outcome_memory`` orders) in the same write as its fills in flight."""
        out = await self._place(book, order, common, placed_reason, decision_id, decision_price)
        self._keep_outcome(book, order.client_order_id, out)
        return out

    def _answer(self, book: _Book, cloid: str, out: list) -> list:
        """Remember that the command of order id ``cloid`` was answered without an order under
        that id (none needed, denied with the events ``out``, or a close-all whose orders have ids
        of their own, ``out`` their events), so a redelivery gets ``out`` again; returns ``out``."""
        st = book.state
        answered = st.setdefault("answered", [])
        answered.append(cloid)
        del answered[:-self.config.submitted_memory]
        self._keep_outcome(book, cloid, out)
        return out

    def _keep_outcome(self, book: _Book, cloid: str, out: list) -> None:
        """Keep ``out`` as the answer to ``cloid`` (for the last ``outcome_memory`` submitted and
        answered ids each) and write the account's state."""
        st = book.state
        outcomes = st.setdefault("outcomes", {})
        if out:
            outcomes[cloid] = [encode_event(e).decode() for e in out]
        memory = self.config.outcome_memory
        keep = {*st["submitted"][-memory:], *st.get("answered", ())[-memory:]}
        for old in [c for c in outcomes if c not in keep]:
            del outcomes[old]
        self.state.execution_state[book.account] = st

    def _outcome(self, book: _Book, cloid: str) -> list:
        """The events an already submitted order was answered with, to send again: the state that
        marks it submitted may have been written by a worker killed before its events reached
        Kafka. Their ids derive from the order, so consumers that got them drop them."""
        kept = book.state.get("outcomes", {}).get(cloid)
        if not kept:
            return []
        log.info("order %s already answered: its %d outcome event(s) sent again", cloid, len(kept))
        return [decode_event(e) for e in kept]

    async def _place(self, book: _Book, order: Order, common: dict, placed_reason: str, decision_id=None,
                     decision_price: float | None = None) -> list:
        cfg, store = self.config, self.state.execution_state
        st = book.state
        st["submitted"].append(order.client_order_id)
        del st["submitted"][:-cfg.submitted_memory]
        store[book.account] = st
        adapter = await self.adapter()
        result: OrderResult | None = None

        def retrying(state) -> None:
            EXCHANGE_ERRORS.labels(adapter.name).inc()
            log.warning("exchange error on %s (retrying in %.2fs): %s", order.client_order_id,
                        state.next_action.sleep, state.outcome.exception())

        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(ExchangeError),
                                               stop=stop_after_attempt(cfg.exchange_retries + 1),
                                               wait=wait_random_exponential(*cfg.exchange_retry_wait_s),
                                               before_sleep=retrying, reraise=True):
                with attempt:
                    result = await adapter.submit(order)
        except ExchangeError as exc:
            EXCHANGE_ERRORS.labels(adapter.name).inc()
            result = await self._look_up(adapter, order, exc)
            if result is not None and result.order_id is None:  # never placed
                st["submitted"].remove(order.client_order_id)  # a redelivery may try again
                store[book.account] = st
        base = dict(client_order_id=order.client_order_id, side=order.side, reduce_only=order.reduce_only, **common)
        if result is None:
            self._count("unknown")
            reason = f"no answer from {adapter.name} and the order cannot be looked up: it may have been placed"
            return [OrderEvent(event_id=derived_id("unknown", order.client_order_id),
                               event_type="trade.outcome_unknown", size=order.size, price=order.reference_price,
                               reason=reason, decision_id=decision_id, **base),
                    RiskEvent(event_id=derived_id("unknown_alert", order.client_order_id), event_type="risk.alert",
                              severity="CRITICAL", violation_type="order_outcome_unknown",
                              action_required=f"check order {order.client_order_id} on {adapter.name}: {reason}",
                              metrics={"client_order_id": order.client_order_id, "side": order.side,
                                       "size": order.size}, **common)]
        self._count(result.status)
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
        store[book.account] = st
        if result.status == "partially_filled":
            out.append(OrderEvent(event_id=derived_id("remainder", order.client_order_id),
                                  event_type="trade.rejected", order_id=result.order_id,
                                  size=max(0.0, order.size - result.filled_size), price=order.reference_price,
                                  reason=result.reason, decision_id=decision_id, **base))
        return out

    async def _look_up(self, adapter: Exchange, order: Order, error: ExchangeError) -> OrderResult | None:
        """After the last retry: the order's outcome from the exchange by client order id; a
        ``rejected`` result without an order id when it was never placed; None when unknown."""
        try:
            found = await adapter.order_status(order)
        except ExchangeError as exc:
            EXCHANGE_ERRORS.labels(adapter.name).inc()
            log.error("order %s: no answer (%s) and no order status (%s): outcome unknown, id kept",
                      order.client_order_id, error, exc)
            return None
        if found is None:
            return OrderResult("rejected", None, [], f"exchange error: {error} (the exchange has no order "
                                                     f"{order.client_order_id}: not placed)")
        log.warning("order %s: answer lost (%s); the exchange reports it %s with %d fill(s)",
                    order.client_order_id, error, found.status, len(found.fills))
        return found

    async def on_approval(self, account: str, d: ConsensusDecision) -> list:
        """Size, check and place the order of one approval; returns the events to emit, in order."""
        cfg = self.config
        cloid = client_order_id(account, d.event_id)
        book = _Book(account, self.state, cfg)
        if book.seen(cloid):
            self._count("duplicate")
            log.info("duplicate decision %s for %s: order %s already answered", d.event_id, d.token, cloid)
            return self._outcome(book, cloid)
        common = dict(timestamp=d.timestamp, token=d.token, source="execution", correlation_id=d.correlation_id,
                      ingest_ms=d.ingest_ms, account=account)
        action_side = "BUY" if d.recommended_action == "BUY" else "SELL"
        # The decision's price (last tick of the bar behind it) is the reference fill price, so a
        # replay fills at the same price; the shared latest price only stands in for a missing one.
        price = d.price or (self.state.latest_prices.get(d.token) or {}).get("price")
        if not price:
            return self._answer(book, cloid, self._reject(common, cloid, action_side, 0.0, None, "no_price",
                                                          "no price for token", {}, decision_id=d.event_id))
        if d.token not in cfg.assets:
            return self._answer(book, cloid, self._reject(common, cloid, action_side, 0.0, price, "unknown_token",
                                                          f"unknown token {d.token!r}: no exchange metadata", {},
                                                          decision_id=d.event_id))
        report = book.report(d.token, price)
        position = book.position(d.token)
        rule = cfg.sizing.get(d.strategy or "default") or cfg.sizing["default"]
        fraction = equity_fraction(rule, d.consensus_score, d.confidence)
        order = target_order(position, report.equity, price, d.recommended_action, fraction, 0.0)
        if order is None:
            return self._answer(book, cloid, [])  # HOLD, or already positioned this way: nothing denied
        side, qty = order
        size = round_size(qty, cfg.assets[d.token].sz_decimals)
        day = dict(book.pf)
        daily = roll_day(day, d.timestamp, report.equity)
        violation = check_order(token=d.token, side=side, size=size, price=price, reduce_only=False,
                                position=position, report=report, daily_pnl=daily,
                                day_start_equity=day["day_start_equity"],
                                halted=halted_reason(self.state.halt, account), limits=cfg.limits, assets=cfg.assets,
                                fee_bps=cfg.fee_bps)
        if violation is not None:
            return self._answer(book, cloid, self._reject(common, cloid, side, size, price, violation.violation_type,
                                                          violation.reason, violation.metrics, decision_id=d.event_id))
        return await self._submit(book, Order(account, d.token, side, size, price, cloid, d.timestamp), common,
                                  f"consensus {d.consensus_score:+.1f} ({d.strategy or 'default'}, "
                                  f"{fraction:.3f} of equity)", decision_id=d.event_id, decision_price=price)

    async def on_force_close(self, account: str, req: OrderEvent) -> list:
        """Close ``req.token``'s position (all positions when the request has no token) with
        reduce-only market orders. Allowed while trading is halted.

        Like an approval, a request is answered once: a token's request that found the position
        flat or was denied is remembered under its client order id, and a close-all under its
        own id with every event it answered with, so a redelivery gets the same answer. Answered
        again against the account as it is by then, a close-all would close positions opened
        after it was given. (A close-all an order of which the venue refused is not retried by a
        redelivery: an operator gives a new one.)"""
        cfg = self.config
        book = _Book(account, self.state, cfg)
        if book.seen(req.client_order_id):
            self._count("duplicate")
            return self._outcome(book, req.client_order_id)
        tokens = [req.token] if req.token else sorted(book.positions)
        out: list = []
        no_order = False
        for token in tokens:
            position = book.position(token)
            common = dict(timestamp=req.timestamp, token=token, source="execution",
                          correlation_id=req.correlation_id or req.event_id, ingest_ms=req.ingest_ms, account=account)
            side = "SELL" if position > 0 else "BUY"
            if abs(position) < 1e-12:
                log.info("force-close of %s/%s: already flat", account, token)
                no_order = True
                continue
            cloid = req.client_order_id if req.token else force_close_id(
                account, token, int(book.positions[token].get("opened_ms", 0)), position)
            if book.seen(cloid):
                self._count("duplicate")
                out += self._outcome(book, cloid)
                continue
            price = (req.price if req.token else None) or (self.state.latest_prices.get(token) or {}).get("price") \
                or book.positions[token]["entry_price"]
            decimals = cfg.assets[token].sz_decimals if token in cfg.assets else 8
            size = min(round(abs(position), decimals), abs(position))
            violation = check_order(token=token, side=side, size=size, price=price, reduce_only=True,
                                    position=position, report=book.report(token, price), daily_pnl=0.0,
                                    day_start_equity=0.0, halted=None, limits=cfg.limits,
                                    assets=cfg.assets, fee_bps=cfg.fee_bps)
            if violation is not None:
                out += self._reject(common, cloid, side, size, price, violation.violation_type, violation.reason,
                                    violation.metrics, reduce_only=True)
                no_order = True
                continue
            out += await self._submit(book, Order(account, token, side, size, price, cloid, req.timestamp,
                                                  reduce_only=True),
                                      common, f"force-close: {req.reason or 'requested'}", decision_price=price)
        if no_order or not req.token:  # a venue's refusal releases the id instead (a redelivery may retry)
            self._answer(book, req.client_order_id, out)
        return out
