"""Risk agents.

``risk`` (on every ``price.tick``): records the latest price (``latest_prices`` global table) and
evaluates every account exposed to the token (:func:`domain.risk.evaluate`: mark to market, gross
leverage, per-position liquidation price and distance under HyperLiquid's margin model, a risk
score), then emits

* ``risk.alert`` ``max_leverage`` when leverage exceeds MAX_LEVERAGE (at most once a minute of
  event time per account while it lasts), which halts trading, and ``risk.ok`` when it falls back
  under the limit, which resumes it;
* ``risk.alert`` ``price_move`` when the price moved PRICE_ALERT_PCT against the reference price
  (the entry price, then the price of the last such alert) of an open position;
* ``risk.critical`` and a ``trade.force_close`` (to ``orders``, for the execution engine) when a
  position is within 10 % of its liquidation price; once per position (again if it grows or is
  still critical 5 s of event time later), with a client order id derived from the position's
  state, so a repeated request closes once.

``cascade`` (on ``liquidation.events``): estimates the adverse price impact of the liquidated
notional with the square-root law (impact = σ_daily × √(Q / V_daily); Almgren, Thum, Hauptmann
and Li, "Direct Estimation of Equity Market Impact", Risk 2005; Tóth et al., "Anomalous price
impact and the critical nature of liquidity in financial markets", PRX 2011) and emits
``risk.cascade_detected`` for each account whose position on that side would lose more than
CASCADE_ALERT_PCT_EQUITY of its equity.

``halt`` (on ``risk.alerts``): keeps the ``halt`` global table (visible to every worker): a
``risk.alert`` with ``violation_type`` ``max_leverage`` or ``manual`` halts the account, a
``risk.ok`` clears it. The trading agent stops signalling and the execution engine refuses
opening orders while it is set.

Invalid ticks are sent to the dead letters by the trading agent, which reads the same topic; here
they are skipped. Ticks older than the last one seen for their token (out of order) do not move
marks.
"""

from __future__ import annotations

import math
import time

from app.main import TOPICS, app, emit, settings, valid_events
from app.metrics import AGENT_EVENTS, LATE_EVENTS, PROCESSING_SECONDS, RISK_EVAL_SECONDS
from app.sla import sla
from domain.risk import CRITICAL_BUFFER_PCT, RiskReport, evaluate
from models.events import (EventError, LiquidationEvent, OrderEvent, PriceTick, RiskEvent, decode_event,
                           derived_id, new_event_id)
from streams.execution import force_close_id
from tables import exposures, halt, latest_prices

_latency = PROCESSING_SECONDS.labels("risk")
ALERT_EVERY_MS = 60_000
HALTING = ("max_leverage", "manual")
#: The shared latest price is rewritten when it is this old (event time) or has moved this much:
#: marks stay within 200 ms of the tape without a changelog message for every trade.
PRICE_REFRESH_MS = 200
PRICE_REFRESH_MOVE = 0.0005
#: The exposures snapshot is re-read at most this often (wall clock, seconds); the portfolio
#: agent invalidates it at once when it changes an account in this process.
EXPOSURE_REFRESH_S = 0.05

# In-memory throttles (after a restart one alert may repeat; force-closes are idempotent by id).
#: account -> event time of the last leverage alert
_alerted: dict[str, int] = {}
#: (account, token, opened_ms) -> reference price of the price-move alert
_reference: dict[tuple, float] = {}
#: (account, token) -> (opened_ms, |size|, event time) of the last force-close requested
_closing: dict[tuple, tuple] = {}
#: A position still critical this long (event time) after its force-close is requested again.
FORCE_CLOSE_RETRY_MS = 5_000
#: token -> (price, ts, volume_1m) of the last tick seen here and of the last one written
_seen: dict[str, tuple[float, int, float]] = {}
_written: dict[str, tuple[float, int]] = {}
_exposure_cache: dict = {"at": float("-inf"), "items": []}


def invalidate_exposures() -> None:
    _exposure_cache["at"] = float("-inf")


def _exposures() -> list[tuple[str, dict]]:
    now = time.monotonic()
    if now - _exposure_cache["at"] > EXPOSURE_REFRESH_S:
        _exposure_cache["items"] = [(k.decode() if isinstance(k, bytes) else k, v)
                                    for k, v in exposures.items() if v and v.get("positions")]
        _exposure_cache["at"] = now
    return _exposure_cache["items"]


def _mark_price(token: str) -> float | None:
    seen = _seen.get(token)
    if seen is not None:
        return seen[0]
    lp = latest_prices.get(token)
    return lp["price"] if lp else None


def _metrics(r: RiskReport) -> dict:
    fin = (lambda x: x if x is not None and math.isfinite(x) else None)
    return {"leverage": fin(r.leverage), "equity": r.equity, "gross_notional": r.gross_notional,
            "max_leverage": settings.max_leverage, "risk_score": r.risk_score,
            "margin_available": r.margin_available, "min_liquidation_distance_pct": r.min_distance_pct}


def evaluate_account(account: str, exp: dict, tick: PriceTick) -> list:
    """Risk events for one exposed account after ``tick``."""
    marks = {t: _mark_price(t) for t in exp["positions"]}
    marks[tick.token] = tick.price
    t0 = time.perf_counter()
    r = evaluate(exp["cash"], exp["positions"], {t: p for t, p in marks.items() if p}, settings.assets,
                 settings.max_leverage)
    dt = time.perf_counter() - t0
    RISK_EVAL_SECONDS.observe(dt)
    sla.observe("risk_evaluation", dt * 1000.0)
    common = dict(timestamp=tick.timestamp, token=tick.token, source="risk", account=account,
                  correlation_id=tick.correlation_id or tick.event_id, ingest_ms=tick.ingest_ms)
    out: list = []
    last = _alerted.get(account)
    if r.leverage > settings.max_leverage:
        if last is None or tick.timestamp - last >= ALERT_EVERY_MS:
            _alerted[account] = tick.timestamp
            out.append(RiskEvent(event_id=new_event_id(), event_type="risk.alert", severity="WARNING",
                                 violation_type="max_leverage", action_required="trading halted; reduce exposure",
                                 metrics=_metrics(r), **common))
    elif last is not None:
        del _alerted[account]
        out.append(RiskEvent(event_id=new_event_id(), event_type="risk.ok", severity="INFO",
                             action_required="trading resumed", metrics=_metrics(r), **common))
    pos = exp["positions"].get(tick.token)
    pr = r.positions.get(tick.token)
    if pos is None or pr is None:
        return out
    opened = int(pos.get("opened_ms", 0))
    ref_key = (account, tick.token, opened)
    ref = _reference.setdefault(ref_key, pos["entry_price"])
    move = (tick.price / ref - 1.0) * 100.0
    if abs(move) >= settings.price_alert_pct:
        _reference[ref_key] = tick.price
        out.append(RiskEvent(event_id=new_event_id(), event_type="risk.alert", severity="WARNING",
                             violation_type="price_move", action_required="review position",
                             metrics={**_metrics(r), "move_pct": round(move, 4), "reference_price": ref,
                                      "price": tick.price, "position": pos["size"]}, **common))
    prev = _closing.get((account, tick.token))
    # Once per position: a partly applied close (smaller size) is not a new request; a grown
    # position or a close that has not landed within FORCE_CLOSE_RETRY_MS is.
    if pr.critical and (prev is None or prev[0] != opened or abs(pos["size"]) > prev[1] + 1e-12
                        or tick.timestamp - prev[2] >= FORCE_CLOSE_RETRY_MS):
        _closing[(account, tick.token)] = (opened, abs(pos["size"]), tick.timestamp)
        reason = (f"liquidation buffer {pr.distance_pct:.2f}% < {CRITICAL_BUFFER_PCT:.0f}% "
                  f"(mark {tick.price:g}, liquidation {pr.liquidation_price:g})")
        cloid = force_close_id(account, tick.token, opened, pos["size"])
        out.append(RiskEvent(event_id=derived_id("critical", cloid), event_type="risk.critical",
                             severity="CRITICAL", violation_type="liquidation_buffer", action_required="force close",
                             metrics={**_metrics(r), "liquidation_price": pr.liquidation_price,
                                      "distance_pct": pr.distance_pct, "mark_price": tick.price,
                                      "position": pos["size"], "client_order_id": cloid}, **common))
        out.append(OrderEvent(event_id=derived_id("force_close", cloid), event_type="trade.force_close",
                              client_order_id=cloid, side="SELL" if pos["size"] > 0 else "BUY",
                              size=abs(pos["size"]), price=tick.price, reason=reason, reduce_only=True, **common))
    return out


async def on_tick(tick: PriceTick) -> list:
    seen = _seen.get(tick.token)
    if seen is not None and tick.timestamp < seen[1]:
        LATE_EVENTS.labels("risk").inc()
        return []
    _seen[tick.token] = (tick.price, tick.timestamp, tick.volume_1m)
    wrote = _written.get(tick.token)
    if (wrote is None or tick.timestamp - wrote[1] >= PRICE_REFRESH_MS
            or abs(tick.price - wrote[0]) >= PRICE_REFRESH_MOVE * wrote[0]):
        latest_prices[tick.token] = {"price": tick.price, "ts": tick.timestamp, "volume_1m": tick.volume_1m}
        _written[tick.token] = (tick.price, tick.timestamp)
    out: list = []
    for account, exp in _exposures():
        if tick.token in exp["positions"]:
            out += evaluate_account(account, exp, tick)
    return out


@app.agent(TOPICS["price.ticks"], name="risk")
async def risk(stream):
    received = AGENT_EVENTS.labels("risk", "in")
    async for event in stream.events():
        t0 = time.perf_counter()
        received.inc()
        try:
            tick = decode_event(event.value, (PriceTick,))
        except EventError:
            continue  # the trading agent dead-letters it
        for out in await on_tick(tick):
            await emit(out)
            if out.event_type == "risk.alert" and tick.ingest_ms:
                sla.observe("tick_to_risk_alert", time.time() * 1000.0 - tick.ingest_ms)
        _latency.observe(time.perf_counter() - t0)


# ------------------------------------------------------------------ liquidation cascades
def cascade_impact_pct(notional_usd: float, daily_volume_usd: float, daily_vol: float) -> float:
    """Square-root-law price impact (%) of ``notional_usd`` traded against ``daily_volume_usd``."""
    return 100.0 * daily_vol * math.sqrt(max(notional_usd, 0.0) / max(daily_volume_usd, 1.0))


def on_liquidation(ev: LiquidationEvent) -> list[RiskEvent]:
    seen = _seen.get(ev.token)
    vol_1m = seen[2] if seen else (latest_prices.get(ev.token) or {}).get("volume_1m", 0.0)
    daily_volume = vol_1m * 1440 if vol_1m else settings.cascade_default_daily_volume_usd
    impact = cascade_impact_pct(ev.notional, daily_volume, settings.cascade_daily_vol)
    # Forced sells (longs liquidated) push the price down and hurt longs; forced buys hurt shorts.
    hurt = 1.0 if ev.side == "SELL" else -1.0
    out = []
    for account, exp in _exposures():
        pos = exp["positions"].get(ev.token)
        if not pos or pos["size"] * hurt <= 0:
            continue
        price = _mark_price(ev.token) or pos["entry_price"]
        exposure = pos["size"] * price
        loss = abs(exposure) * impact / 100.0
        r = evaluate(exp["cash"], exp["positions"], {ev.token: price}, settings.assets, settings.max_leverage)
        if r.equity <= 0 or loss / r.equity * 100.0 < settings.cascade_alert_pct_equity:
            continue
        out.append(RiskEvent(
            event_id=derived_id("cascade", ev.event_id, account), event_type="risk.cascade_detected",
            severity="CRITICAL", violation_type="liquidation_cascade", action_required="reduce exposure",
            timestamp=ev.timestamp, token=ev.token, source="risk", account=account,
            correlation_id=ev.correlation_id or ev.event_id,
            metrics={"exposure_usd": exposure, "liquidated_notional_usd": ev.notional, "side": ev.side,
                     "liquidation_count": ev.liquidation_count, "cascade_indicator": ev.cascade_indicator,
                     "estimated_impact_pct": impact, "estimated_loss_usd": loss,
                     "estimated_loss_pct_equity": loss / r.equity * 100.0, "daily_volume_usd": daily_volume}))
    return out


@app.agent(TOPICS["liquidation.events"], name="cascade")
async def cascade(stream):
    async for _event, ev in valid_events(stream, (LiquidationEvent,), "cascade"):
        for out in on_liquidation(ev):
            await emit(out)


# ------------------------------------------------------------------ trading halt
def halt_transition(current: dict, ev: dict) -> dict | None:
    """The halt flag after one risk event (as JSON fields), or None when it does not change.

    ``risk.alert`` of a halting type halts; ``risk.ok`` resumes, except that a manual halt (the
    control endpoint's) is lifted only by a manual ``risk.ok``: an automatic all-clear from the
    risk agent must not undo an operator's decision.
    """
    vt = ev.get("violation_type")
    if ev.get("event_type") == "risk.alert" and vt in HALTING:
        if current.get("halted") and (current.get("manual") or vt != "manual"):
            return None
        return {"halted": True, "manual": vt == "manual",
                "reason": f"{vt}: {ev.get('action_required') or ''}".strip(),
                "since_ms": ev.get("timestamp"), "event_id": str(ev.get("event_id")), "metrics": ev.get("metrics") or {}}
    if ev.get("event_type") == "risk.ok" and current.get("halted"):
        if current.get("manual") and vt != "manual":
            return None
        return {"halted": False, "manual": False, "reason": None, "since_ms": ev.get("timestamp"),
                "event_id": str(ev.get("event_id"))}
    return None


def apply_halt(ev: RiskEvent) -> bool:
    """Update the halt flag from one risk event; returns whether it changed."""
    changed = halt_transition(halt.get(ev.account) or {}, ev.model_dump(mode="json"))
    if changed is not None:
        halt[ev.account] = changed
    return changed is not None


def halted_accounts() -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k for k, v in halt.items() if v and v.get("halted")]


@app.agent(TOPICS["risk.alerts"], name="halt")
async def halt_agent(stream):
    async for _event, ev in valid_events(stream, (RiskEvent,), "halt"):
        apply_halt(ev)
