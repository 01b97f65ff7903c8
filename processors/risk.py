"""Risk processors.

:class:`RiskProcessor`, on every ``price.tick``: records the latest price (``latest_prices``
store, shared with every worker) and evaluates every account exposed to the token
(:func:`domain.risk.evaluate`: mark to market, gross leverage, per-position liquidation price and
distance under HyperLiquid's margin model, a risk score), then emits

* ``risk.alert`` ``max_leverage`` when leverage exceeds ``max_leverage`` (at most once per
  ``alert_every_ms`` of event time per account while it lasts), which halts trading, and
  ``risk.ok`` when it falls back under the limit, which resumes it;
* ``risk.alert`` ``price_move`` when the price moved ``price_alert_pct`` against the reference
  price (the entry price, then the price of the last such alert) of an open position;
* ``risk.critical`` and a ``trade.force_close`` when a position is within 10 % of its liquidation
  price; once per position (again if it grows or is still critical ``force_close_retry_ms`` of
  event time later), with a client order id derived from the position's state
  (:func:`domain.orders.force_close_id`), so a repeated request closes once.

On ``liquidation.event``: estimates the adverse price impact of the liquidated notional with the
square-root law (:func:`domain.risk.cascade_impact_pct`) and emits ``risk.cascade_detected`` for
each account whose position on the hurt side would lose more than ``cascade_alert_pct_equity`` %
of its equity.

Ticks older than the last one seen for their token (out of order) do not move marks. The
throttles (last alert, reference prices, force-closes requested) are per-process memory: after a
restart one alert may repeat, and force-closes are idempotent by id. Revocation changes nothing:
the state read here is in stores every worker has (global tables).

:class:`HaltProcessor`, on ``risk.alerts``: keeps the ``halt`` store (:mod:`domain.halt`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from domain.halt import halt_transition
from domain.orders import force_close_id
from domain.risk import (CRITICAL_BUFFER_PCT, DEFAULT_ASSETS, AssetSpec, RiskReport, cascade_impact_pct, distance_pct,
                         evaluate, liquidation_price)
from models.events import LiquidationEvent, OrderEvent, PriceTick, RiskEvent, derived_id
from processors.base import ExposureView, Store

#: what domain.risk.evaluate assumes for a token without exchange metadata
_DEFAULT_ASSET = AssetSpec(10, 4)


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """``max_leverage`` (×), ``price_alert_pct`` (%), ``assets`` (exchange metadata per token),
    cascade estimate inputs (daily volatility as a fraction, fallback daily volume USD, alert
    threshold % of equity), event-time throttles (ms) and the shared-price refresh (ms, fraction)."""

    max_leverage: float = 3.0
    price_alert_pct: float = 5.0
    assets: Mapping[str, AssetSpec] = field(default_factory=lambda: dict(DEFAULT_ASSETS))
    cascade_daily_vol: float = 0.03
    cascade_default_daily_volume_usd: float = 1e9
    cascade_alert_pct_equity: float = 0.5
    alert_every_ms: int = 60_000
    force_close_retry_ms: int = 5_000
    #: The shared latest price is rewritten when it is this old (event time) or has moved this
    #: much: marks stay within 0.05 % of the tape, and their time within 1 s, without a changelog
    #: message for every trade. Each write is a table write, its changelog message and, the table
    #: being global, its read-back in every worker: on the bundled sample a 200 ms refresh made
    #: 2,135 writes (8 of them for a move), 1 s makes 615.
    price_refresh_ms: int = 1000
    price_refresh_move: float = 0.0005

    @classmethod
    def from_settings(cls, s) -> "RiskConfig":
        return cls(s.max_leverage, s.price_alert_pct, dict(s.assets), s.cascade_daily_vol,
                   s.cascade_default_daily_volume_usd, s.cascade_alert_pct_equity)


class RiskState:
    """``latest_prices``: token -> {"price", "ts", "volume_1m"} (written); ``exposures``: the
    accounts' positions (read); throttles in memory: ``alerted`` account -> event time of the last
    leverage alert, ``reference`` (account, token, opened_ms) -> price-move reference,
    ``closing`` (account, token) -> (opened_ms, |size|, event time) of the last force-close,
    ``seen``/``written`` token -> last tick seen / last price written."""

    def __init__(self, latest_prices: Store, exposures: ExposureView):
        self.latest_prices = latest_prices
        self.exposures = exposures
        self.alerted: dict[str, int] = {}
        self.reference: dict[tuple, float] = {}
        self.closing: dict[tuple, tuple] = {}
        self.seen: dict[str, tuple[float, int, float]] = {}
        self.written: dict[str, tuple[float, int]] = {}


class RiskProcessor:
    name = "risk"
    topics = ("price.ticks", "liquidation.events")

    def __init__(self, config: RiskConfig, state: RiskState,
                 observe_evaluation: Callable[[float], None] | None = None):
        """``observe_evaluation``: called with each account evaluation's duration (seconds), for
        a runtime's metrics; evaluations are not timed without it."""
        self.config = config
        self.state = state
        self.observe_evaluation = observe_evaluation
        self.late = 0
        #: :meth:`quiet_run` may use :meth:`quiet_band` (tests compare it with the element-wise check)
        self.use_band = True

    def process(self, event, partition=None) -> list:
        if event.event_type == "price.tick":
            return self.on_tick(event)
        if event.event_type == "liquidation.event":
            return self.on_liquidation(event)
        return []

    def on_revoked(self, partitions) -> None:
        pass

    def mark_price(self, token: str) -> float | None:
        seen = self.state.seen.get(token)
        if seen is not None:
            return seen[0]
        lp = self.state.latest_prices.get(token)
        return lp["price"] if lp else None

    def on_tick(self, tick: PriceTick) -> list:
        st, cfg = self.state, self.config
        token, ts, price = tick.token, tick.timestamp, tick.price
        seen = st.seen.get(token)
        if seen is not None and ts < seen[1]:
            self.late += 1
            return []
        st.seen[token] = (price, ts, tick.volume_1m)
        wrote = st.written.get(token)
        if (wrote is None or ts - wrote[1] >= cfg.price_refresh_ms
                or abs(price - wrote[0]) >= cfg.price_refresh_move * wrote[0]):
            st.latest_prices[token] = {"price": price, "ts": ts, "volume_1m": tick.volume_1m}
            st.written[token] = (price, ts)
        out: list = []
        for account, exp in st.exposures.items():
            if token in exp["positions"]:
                out += self.evaluate_account(account, exp, tick)
        return out

    def _metrics(self, r: RiskReport) -> dict:
        lev = r.leverage if r.leverage is not None and math.isfinite(r.leverage) else None
        return {"leverage": lev, "equity": r.equity, "gross_notional": r.gross_notional,
                "max_leverage": self.config.max_leverage, "risk_score": r.risk_score,
                "margin_available": r.margin_available, "min_liquidation_distance_pct": r.min_distance_pct}

    def _quiet(self, account: str, exp: dict, tick: PriceTick) -> bool:
        """Whether an account with only cross-margin positions has nothing to report on this tick:
        :func:`domain.risk.evaluate`'s arithmetic (the same expressions over the positions in the
        same order, so the same floats) for what decides that, without building its report. False
        sends the tick through the full evaluation."""
        cfg, st = self.config, self.state
        positions = exp["positions"]
        t0 = time.perf_counter() if self.observe_evaluation else 0.0
        gross = value = maint = 0.0
        assets = cfg.assets
        own = tick.token
        m_own = 0.0
        for token, p in positions.items():
            if p.get("margin_mode", "cross") != "cross":
                return False
            if token == own:
                m = m_own = tick.price or p["entry_price"]
            else:
                m = self.mark_price(token) or p["entry_price"]
            notional = p["size"] * m
            gross += abs(notional)
            value += notional
            maint += abs(notional) * assets.get(token, _DEFAULT_ASSET).maintenance_rate
        equity = exp["cash"] + value
        leverage = gross / equity if equity > 0 else math.inf
        p = positions[own]
        mmr = assets.get(own, _DEFAULT_ASSET).maintenance_rate
        dist = distance_pct(m_own, liquidation_price(p["size"], m_own, equity - maint, mmr))
        if self.observe_evaluation:
            self.observe_evaluation(time.perf_counter() - t0)
        if dist is not None and dist < CRITICAL_BUFFER_PCT:
            return False
        last = st.alerted.get(account)
        if leverage > cfg.max_leverage:
            if last is None or tick.timestamp - last >= cfg.alert_every_ms:
                return False
        elif last is not None:
            return False
        ref = st.reference.get((account, own, int(p.get("opened_ms", 0)))) or p["entry_price"]
        return abs(tick.price / ref - 1.0) * 100.0 < cfg.price_alert_pct

    def quiet_band(self, account: str, exp: dict, token: str) -> tuple[float, float] | None:
        """Prices (USD) of ``token`` strictly between which an account holding only a cross
        position in it is quiet (what :meth:`_quiet` finds), or ``None`` when no such band is
        worked out here (several positions, isolated margin, an active leverage alert, a short
        without cash, ``max_leverage`` under 1.01).

        Solved from :func:`domain.risk.evaluate`'s definitions for one position of size ``s``
        with cash ``c`` and maintenance rate ``r``: the price move stays under
        ``price_alert_pct`` of the reference; leverage ``|s|m / (c + s m)`` stays at most
        ``max_leverage`` (L), i.e. ``m ≥ L|c| / (s(L − 1))`` for a long on borrowed cash and
        ``m ≤ L c / (|s|(1 + L))`` for a short; the liquidation price is ``−c / (s(1 − r))`` for a
        long and ``c / (|s|(1 + r))`` for a short, and the distance to it stays at least 10 % of
        the mark above it (long: ``m ≥ liq / 0.9``) or below it (short: ``m ≤ liq / 1.1``). The
        band is narrowed by 1e-9 of each bound, a thousand times the rounding of the float
        evaluation, so every price inside it is quiet there too; a price outside it is left to the
        exact check."""
        st, cfg = self.state, self.config
        positions = exp["positions"]
        if len(positions) != 1 or token not in positions or st.alerted.get(account) is not None:
            return None
        p = positions[token]
        lev = cfg.max_leverage
        if p.get("margin_mode", "cross") != "cross" or lev < 1.01:
            return None
        s, c = p["size"], exp["cash"]
        r = cfg.assets.get(token, _DEFAULT_ASSET).maintenance_rate
        ref = st.reference.get((account, token, int(p.get("opened_ms", 0)))) or p["entry_price"]
        move = cfg.price_alert_pct / 100.0
        lo, hi = max(0.0, ref * (1.0 - move)), ref * (1.0 + move)
        if s > 0:
            if c < 0:
                lo = max(lo, lev * -c / (s * (lev - 1.0)), -c / (s * (1.0 - r)) / 0.9)
        elif s < 0 and c > 0:
            hi = min(hi, lev * c / (-s * (1.0 + lev)), c / (-s * (1.0 + r)) / 1.1)
        else:
            return None
        return lo * (1.0 + 1e-9), hi * (1.0 - 1e-9)

    def quiet_run(self, ts, px, tok, names: list[str]) -> int:
        """How many leading ticks of a run leave every account quiet (nothing to emit), as
        :meth:`on_tick` would find them one by one, provided the accounts do not change in between.

        ``ts`` (int64 ms), ``px`` (float64 USD) and ``tok`` (int codes into ``names``) are numpy
        arrays of consecutive ticks in time order. :meth:`_quiet`'s arithmetic, element-wise: the
        same expressions over the positions in the same order, every other position marked at the
        price its token last had at that tick, so the same floats. An account with an isolated
        position, or a tick older than its token's last, ends the run (0)."""
        import numpy as np

        st, cfg = self.state, self.config
        n = len(px)
        exposures = st.exposures.items()
        if n == 0:
            return 0
        single = len(names) == 1  # one token's ticks: its marks are the prices themselves
        for c, name in enumerate(names):
            seen = st.seen.get(name)
            if seen is not None:
                first = ts[0] if single else (ts[tok == c][0] if (tok == c).any() else seen[1])
                if first < seen[1]:
                    return 0
        if not exposures:
            return n
        code = {name: c for c, name in enumerate(names)}
        marks: dict[str, object] = {}

        def mark(token: str, entry: float):
            c = code.get(token)
            if c is not None and single:
                return px
            m0 = self.mark_price(token) or entry
            if c is None:
                return m0
            if token not in marks:
                idx = np.arange(n)
                last = np.maximum.accumulate(np.where(tok == c, idx, -1))
                marks[token] = np.where(last >= 0, px[np.maximum(last, 0)], m0)
            return marks[token]

        first_bad = n
        for account, exp in exposures:
            positions = exp["positions"]
            own = {t: p for t, p in positions.items() if t in code}
            if not own:
                continue
            band = self.quiet_band(account, exp, names[0]) if single and self.use_band else None
            if band is not None:
                inside = (px > band[0]) & (px < band[1])
                if not inside.all():
                    first_bad = min(first_bad, int(inside.argmin()))
                continue
            gross = value = maint = None
            for token, p in positions.items():
                if p.get("margin_mode", "cross") != "cross":
                    return 0
                notional = p["size"] * mark(token, p["entry_price"])
                a = np.abs(notional)
                m = a * cfg.assets.get(token, _DEFAULT_ASSET).maintenance_rate
                # 0.0 + x is x: starting from the first term gives evaluate's sums
                gross, value, maint = (a, notional, m) if gross is None else (gross + a, value + notional, maint + m)
            equity = exp["cash"] + value
            if single:
                (token, p), = own.items()
                size, ref = p["size"], st.reference.get((account, token, int(p.get("opened_ms", 0)))) or p["entry_price"]
                mmr = cfg.assets.get(token, _DEFAULT_ASSET).maintenance_rate
                side = 1.0 if size > 0 else -1.0
                k = 1.0 - mmr * side
                abs_size = abs(size)
            else:
                size_c, mmr_c, ref_c = np.zeros(len(names)), np.zeros(len(names)), np.ones(len(names))
                for token, p in own.items():
                    c = code[token]
                    size_c[c] = p["size"]
                    mmr_c[c] = cfg.assets.get(token, _DEFAULT_ASSET).maintenance_rate
                    ref_c[c] = st.reference.get((account, token, int(p.get("opened_ms", 0)))) or p["entry_price"]
                size, mmr, ref = size_c[tok], mmr_c[tok], ref_c[tok]
                side = np.where(size > 0, 1.0, -1.0)
                k = 1.0 - mmr * side
                abs_size = np.abs(size)
            with np.errstate(all="ignore"):
                liq = px - side * (equity - maint) / abs_size / k
                bad = (liq > 0) & (liq < np.inf) & (np.abs(px - liq) / px * 100.0 < CRITICAL_BUFFER_PCT)
                over = np.where(equity > 0, gross / equity, np.inf) > cfg.max_leverage
                bad |= ~(np.abs(px / ref - 1.0) * 100.0 < cfg.price_alert_pct)
            last = st.alerted.get(account)
            bad |= over if last is None else (over & (ts - last >= cfg.alert_every_ms)) | ~over
            if not single:
                bad &= np.isin(tok, [code[t] for t in own]) & (size != 0)
            if bad.any():
                first_bad = min(first_bad, int(bad.argmax()))
        return first_bad

    def skip_run(self, ts: list[int], px: list[float], vol: list[float], tokens: list[str]) -> None:
        """Take a run of ticks that :meth:`quiet_run` found quiet: the state :meth:`on_tick` would
        leave (last tick seen per token, the shared latest price with its refresh rule)."""
        st, cfg = self.state, self.config
        written = st.written
        due: dict[str, int] = {}
        for k, token in enumerate(tokens):
            t, price = ts[k], px[k]
            wrote = written.get(token)
            if (wrote is None or t - wrote[1] >= cfg.price_refresh_ms
                    or abs(price - wrote[0]) >= cfg.price_refresh_move * wrote[0]):
                written[token] = (price, t)
                due[token] = k
            st.seen[token] = (price, t, vol[k])
        for token, k in due.items():
            st.latest_prices[token] = {"price": px[k], "ts": ts[k], "volume_1m": vol[k]}

    def evaluate_account(self, account: str, exp: dict, tick: PriceTick) -> list:
        """Risk events for one exposed account after ``tick``."""
        st, cfg = self.state, self.config
        positions = exp["positions"]
        if self._quiet(account, exp, tick):
            return []
        if len(positions) == 1:
            marks = {tick.token: tick.price}  # the only position is the tick's token
        else:
            marks = {t: m for t in positions if (m := self.mark_price(t))}
            marks[tick.token] = tick.price
        t0 = time.perf_counter() if self.observe_evaluation else 0.0
        r = evaluate(exp["cash"], positions, marks, cfg.assets, cfg.max_leverage)
        if self.observe_evaluation:
            self.observe_evaluation(time.perf_counter() - t0)
        out: list = []
        last = st.alerted.get(account)
        lev_alert = r.leverage > cfg.max_leverage and (last is None or tick.timestamp - last >= cfg.alert_every_ms)
        pos = positions.get(tick.token)
        pr = r.positions.get(tick.token)
        if not lev_alert and (last is None or r.leverage > cfg.max_leverage) and (pr is None or not pr.critical):
            ref = st.reference.get((account, tick.token, int(pos.get("opened_ms", 0)))) if pos else None
            if pos is None or abs(tick.price / (ref or pos["entry_price"]) - 1.0) * 100.0 < cfg.price_alert_pct:
                return out  # the common case: nothing to report on this tick
        common = dict(timestamp=tick.timestamp, token=tick.token, source="risk", account=account,
                      correlation_id=tick.correlation_id or tick.event_id, ingest_ms=tick.ingest_ms)
        if r.leverage > cfg.max_leverage:
            if lev_alert:
                st.alerted[account] = tick.timestamp
                out.append(RiskEvent(event_id=derived_id("risk.alert", "max_leverage", account, tick.event_id),
                                     event_type="risk.alert", severity="WARNING", violation_type="max_leverage",
                                     action_required="trading halted; reduce exposure", metrics=self._metrics(r),
                                     **common))
        elif last is not None:
            del st.alerted[account]
            out.append(RiskEvent(event_id=derived_id("risk.ok", account, tick.event_id), event_type="risk.ok",
                                 severity="INFO", action_required="trading resumed", metrics=self._metrics(r),
                                 **common))
        if pos is None or pr is None:
            return out
        opened = int(pos.get("opened_ms", 0))
        ref_key = (account, tick.token, opened)
        ref = st.reference.setdefault(ref_key, pos["entry_price"])
        move = (tick.price / ref - 1.0) * 100.0
        if abs(move) >= cfg.price_alert_pct:
            st.reference[ref_key] = tick.price
            out.append(RiskEvent(event_id=derived_id("risk.alert", "price_move", account, tick.event_id),
                                 event_type="risk.alert", severity="WARNING", violation_type="price_move",
                                 action_required="review position",
                                 metrics={**self._metrics(r), "move_pct": round(move, 4), "reference_price": ref,
                                          "price": tick.price, "position": pos["size"]}, **common))
        prev = st.closing.get((account, tick.token))
        # Once per position: a partly applied close (smaller size) is not a new request; a grown
        # position or a close that has not landed within force_close_retry_ms is.
        if pr.critical and (prev is None or prev[0] != opened or abs(pos["size"]) > prev[1] + 1e-12
                            or tick.timestamp - prev[2] >= cfg.force_close_retry_ms):
            st.closing[(account, tick.token)] = (opened, abs(pos["size"]), tick.timestamp)
            reason = (f"liquidation buffer {pr.distance_pct:.2f}% < {CRITICAL_BUFFER_PCT:.0f}% "
                      f"(mark {tick.price:g}, liquidation {pr.liquidation_price:g})")
            cloid = force_close_id(account, tick.token, opened, pos["size"])
            out.append(RiskEvent(event_id=derived_id("critical", cloid), event_type="risk.critical",
                                 severity="CRITICAL", violation_type="liquidation_buffer",
                                 action_required="force close",
                                 metrics={**self._metrics(r), "liquidation_price": pr.liquidation_price,
                                          "distance_pct": pr.distance_pct, "mark_price": tick.price,
                                          "position": pos["size"], "client_order_id": cloid}, **common))
            out.append(OrderEvent(event_id=derived_id("force_close", cloid), event_type="trade.force_close",
                                  client_order_id=cloid, side="SELL" if pos["size"] > 0 else "BUY",
                                  size=abs(pos["size"]), price=tick.price, reason=reason, reduce_only=True,
                                  **common))
        return out

    def on_liquidation(self, ev: LiquidationEvent) -> list[RiskEvent]:
        st, cfg = self.state, self.config
        seen = st.seen.get(ev.token)
        vol_1m = seen[2] if seen else (st.latest_prices.get(ev.token) or {}).get("volume_1m", 0.0)
        daily_volume = vol_1m * 1440 if vol_1m else cfg.cascade_default_daily_volume_usd
        impact = cascade_impact_pct(ev.notional, daily_volume, cfg.cascade_daily_vol)
        # Forced sells (longs liquidated) push the price down and hurt longs; forced buys hurt shorts.
        hurt = 1.0 if ev.side == "SELL" else -1.0
        out = []
        for account, exp in st.exposures.items():
            pos = exp["positions"].get(ev.token)
            if not pos or pos["size"] * hurt <= 0:
                continue
            price = self.mark_price(ev.token) or pos["entry_price"]
            exposure = pos["size"] * price
            loss = abs(exposure) * impact / 100.0
            r = evaluate(exp["cash"], exp["positions"], {ev.token: price}, cfg.assets, cfg.max_leverage)
            if r.equity <= 0 or loss / r.equity * 100.0 < cfg.cascade_alert_pct_equity:
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


class HaltProcessor:
    """Keeps the ``halt`` store (account -> flag) from risk events (:func:`domain.halt.halt_transition`).
    Emits nothing. Revocation changes nothing (the store is global)."""

    name = "halt"
    topics = ("risk.alerts",)

    def __init__(self, halt: Store):
        self.halt = halt

    def process(self, ev: RiskEvent, partition=None) -> list:
        self.apply(ev)
        return []

    def on_revoked(self, partitions) -> None:
        pass

    def apply(self, ev: RiskEvent) -> bool:
        """Update the flag from one risk event; returns whether it changed."""
        if ev.event_type not in ("risk.alert", "risk.ok"):
            return False
        changed = halt_transition(self.halt.get(ev.account) or {}, ev.model_dump(mode="json"))
        if changed is not None:
            self.halt[ev.account] = changed
        return changed is not None
