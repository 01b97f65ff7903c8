"""Risk agent: on every ``price.tick``, record the latest price (``latest_prices`` global table)
and mark to market every account exposed to the token; gross leverage (Σ |size × mark| / equity)
above MAX_LEVERAGE → ``risk.alert`` (at most once a minute of event time per account while it
lasts; ``risk.ok`` when it falls back under the limit).

Invalid ticks are sent to the dead letters by the trading agent, which reads the same topic; here
they are skipped.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, emit, settings
from app.metrics import PROCESSING_SECONDS
from domain.portfolio import mark
from models.events import EventError, PriceTick, RiskEvent, decode_event, new_event_id
from tables import exposures, latest_prices

_latency = PROCESSING_SECONDS.labels("risk")
ALERT_EVERY_MS = 60_000
#: The shared latest price is rewritten when it is this old (event time) or has moved this much:
#: marks stay within 200 ms of the tape without a changelog message for every trade.
PRICE_REFRESH_MS = 200
PRICE_REFRESH_MOVE = 0.0005
#: The exposures snapshot is re-read at most this often (wall clock, seconds); the portfolio
#: agent invalidates it at once when it changes an account in this process.
EXPOSURE_REFRESH_S = 0.05

#: account -> event time of the last leverage alert (in memory: after a restart one alert repeats)
_alerted: dict[str, int] = {}
#: token -> (price, ts) of the last tick seen here and of the last one written to latest_prices
_seen: dict[str, tuple[float, int]] = {}
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


async def on_tick(tick: PriceTick) -> list[RiskEvent]:
    _seen[tick.token] = (tick.price, tick.timestamp)
    wrote = _written.get(tick.token)
    if (wrote is None or tick.timestamp - wrote[1] >= PRICE_REFRESH_MS
            or abs(tick.price - wrote[0]) >= PRICE_REFRESH_MOVE * wrote[0]):
        latest_prices[tick.token] = {"price": tick.price, "ts": tick.timestamp}
        _written[tick.token] = (tick.price, tick.timestamp)
    out: list[RiskEvent] = []
    for account, exp in _exposures():
        if tick.token not in exp["positions"]:
            continue
        marks = {t: _mark_price(t) for t in exp["positions"]}
        marks[tick.token] = tick.price
        m = mark(exp, {t: p for t, p in marks.items() if p})
        lev = m["leverage"]
        metrics = {"leverage": lev if lev != float("inf") else None, "equity": m["equity"],
                   "gross_notional": m["gross_notional"], "max_leverage": settings.max_leverage}
        common = dict(timestamp=tick.timestamp, token=tick.token, source="risk", account=account,
                      correlation_id=tick.correlation_id or tick.event_id, ingest_ms=tick.ingest_ms)
        last = _alerted.get(account)
        if lev > settings.max_leverage:
            if last is None or tick.timestamp - last >= ALERT_EVERY_MS:
                _alerted[account] = tick.timestamp
                out.append(RiskEvent(event_id=new_event_id(), event_type="risk.alert", severity="WARNING",
                                     violation_type="max_leverage", action_required="reduce exposure",
                                     metrics=metrics, **common))
        elif last is not None:
            del _alerted[account]
            out.append(RiskEvent(event_id=new_event_id(), event_type="risk.ok", severity="INFO",
                                 metrics=metrics, **common))
    return out


@app.agent(TOPICS["price.ticks"], name="risk")
async def risk(stream):
    async for event in stream.events():
        t0 = time.perf_counter()
        try:
            tick = decode_event(event.value, (PriceTick,))
        except EventError:
            continue
        for out in await on_tick(tick):
            await emit(out)
        _latency.observe(time.perf_counter() - t0)
