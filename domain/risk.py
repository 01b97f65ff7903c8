"""Margin, liquidation and pre-trade risk arithmetic. Pure functions, shared by the risk agent, the
execution engine and backtests.

Margin model: HyperLiquid's, from its documentation
(https://hyperliquid.gitbook.io/hyperliquid-docs/trading/liquidations):

* The maintenance margin is half of the initial margin at the asset's max leverage:
  ``mmr = 1 / (2 × max_leverage)`` of the position notional (1.25 % for BTC at 40×, 2 % for ETH at
  25×, 16.7 % for a 3× asset).
* Liquidation price::

      liq_price = price - side × margin_available / |size| / (1 - mmr × side)

  with ``side`` = +1 for a long and -1 for a short, ``price`` the current mark and
  ``margin_available = account_value - maintenance_margin_required`` for cross margin (account
  value and requirement over every cross position) or
  ``isolated_margin - maintenance_margin_required`` of the position for isolated margin, where the
  isolated margin counts the unrealised PnL at ``price`` (the margin the position holds now).

Both give the price at which account value equals the maintenance requirement, holding every other
position's mark constant; :func:`liquidation_price` is tested against that identity and against
hand-worked examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

#: A position whose mark is closer than this to its liquidation price (% of the mark) is critical.
CRITICAL_BUFFER_PCT = 10.0


@dataclass(frozen=True, slots=True)
class AssetSpec:
    """Exchange metadata of one perpetual: ``max_leverage`` (×) and ``sz_decimals`` (size
    increment 10^-sz_decimals base units; prices have at most 5 significant figures and
    ``6 - sz_decimals`` decimals, HyperLiquid's tick rules)."""

    max_leverage: float
    sz_decimals: int

    @property
    def maintenance_rate(self) -> float:
        return 1.0 / (2.0 * self.max_leverage)


#: HyperLiquid's listed max leverage and size decimals for the tokens this product ships with.
DEFAULT_ASSETS: dict[str, AssetSpec] = {
    "BTC": AssetSpec(40, 5), "ETH": AssetSpec(25, 4), "SOL": AssetSpec(20, 2), "XRP": AssetSpec(20, 0),
    "DOGE": AssetSpec(10, 0), "BNB": AssetSpec(10, 3), "AVAX": AssetSpec(10, 2), "LINK": AssetSpec(10, 1),
}


def liquidation_price(size: float, price: float, margin_available: float, mmr: float) -> float | None:
    """HyperLiquid liquidation price (USD) of a position of signed ``size`` (base units, + long)
    marked at ``price`` (USD), with ``margin_available`` (USD) and maintenance rate ``mmr``.

    Returns ``None`` for a flat position or when no positive price liquidates it (a long whose
    margin covers the whole notional).
    """
    if size == 0:
        return None
    side = 1.0 if size > 0 else -1.0
    liq = price - side * margin_available / abs(size) / (1.0 - mmr * side)
    if liq <= 0 or not math.isfinite(liq):
        return None
    return liq


def distance_pct(price: float, liq: float | None) -> float | None:
    """Distance from the mark to the liquidation price, % of the mark (``None`` without one)."""
    if liq is None or price <= 0:
        return None
    return abs(price - liq) / price * 100.0


@dataclass(slots=True)
class PositionRisk:
    size: float
    entry_price: float
    mark_price: float
    notional: float  # signed, USD
    unrealised_pnl: float
    maintenance_margin: float
    liquidation_price: float | None
    distance_pct: float | None  # % of mark to liquidation
    margin_mode: str = "cross"

    @property
    def critical(self) -> bool:
        return self.distance_pct is not None and self.distance_pct < CRITICAL_BUFFER_PCT


@dataclass(slots=True)
class RiskReport:
    equity: float  # account value, USD
    gross_notional: float  # USD
    leverage: float  # gross notional / equity (inf when equity <= 0)
    maintenance_required: float  # USD, cross positions
    margin_available: float  # USD, cross
    risk_score: float  # 0-100
    positions: dict[str, PositionRisk] = field(default_factory=dict)

    @property
    def min_distance_pct(self) -> float | None:
        ds = [p.distance_pct for p in self.positions.values() if p.distance_pct is not None]
        return min(ds) if ds else None


def risk_score(leverage: float, max_leverage: float, min_distance: float | None) -> float:
    """0-100: the larger of a leverage part (50 at MAX_LEVERAGE, 100 at twice it) and a liquidation
    part (0 at ≥ 50 % distance, 100 at ≤ 10 %, linear between)."""
    lev_part = 100.0 if not math.isfinite(leverage) else min(100.0, 50.0 * leverage / max_leverage)
    liq_part = 0.0
    if min_distance is not None:
        liq_part = min(100.0, max(0.0, (50.0 - min_distance) / (50.0 - CRITICAL_BUFFER_PCT) * 100.0))
    return round(max(lev_part, liq_part), 2)


def evaluate(cash: float, positions: Mapping[str, Mapping], marks: Mapping[str, float],
             assets: Mapping[str, AssetSpec], max_leverage: float,
             default_asset: AssetSpec = AssetSpec(10, 4)) -> RiskReport:
    """Mark an account to market and compute its risk.

    Args:
        cash: account cash (USD); equity = cash + Σ size × mark (perpetuals held with cash as
            collateral, the portfolio's convention).
        positions: token → ``{"size", "entry_price"}`` and optionally ``"margin_mode": "isolated"``
            with ``"margin"`` (USD allocated to the isolated position at entry).
        marks: token → mark price (USD); a token without one is marked at its entry price.
        assets: token → :class:`AssetSpec`; unknown tokens use ``default_asset``.
        max_leverage: the account's MAX_LEVERAGE, for the risk score.
    """
    prs: dict[str, PositionRisk] = {}
    gross = value = maint_cross = 0.0
    for token, p in positions.items():
        size = p["size"]
        m = marks.get(token) or p["entry_price"]
        notional = size * m
        u = (m - p["entry_price"]) * size
        spec = assets.get(token, default_asset)
        mm = abs(notional) * spec.maintenance_rate
        mode = p.get("margin_mode", "cross")
        prs[token] = PositionRisk(size, p["entry_price"], m, notional, u, mm, None, None, mode)
        gross += abs(notional)
        value += notional
        if mode == "cross":
            maint_cross += mm
    equity = cash + value
    avail = equity - maint_cross
    for token, pr in prs.items():
        mmr = assets.get(token, default_asset).maintenance_rate
        if pr.margin_mode == "isolated":
            iso = float(positions[token].get("margin", 0.0)) + pr.unrealised_pnl
            liq = liquidation_price(pr.size, pr.mark_price, iso - pr.maintenance_margin, mmr)
        else:
            liq = liquidation_price(pr.size, pr.mark_price, avail, mmr)
        pr.liquidation_price = liq
        pr.distance_pct = distance_pct(pr.mark_price, liq)
    leverage = gross / equity if equity > 0 else math.inf
    report = RiskReport(equity, gross, leverage, maint_cross, avail, 0.0, prs)
    report.risk_score = risk_score(leverage, max_leverage, report.min_distance_pct)
    return report


# ------------------------------------------------------------------ order increments
def round_size(size: float, sz_decimals: int) -> float:
    """Round a size (base units) down to the asset's increment (never up: an order never grows)."""
    q = 10.0 ** sz_decimals
    return math.floor(size * q + 1e-9) / q


def round_price(price: float, sz_decimals: int) -> float:
    """HyperLiquid perp price rule: at most 5 significant figures and ``6 - sz_decimals``
    decimals (the SDK's ``_slippage_price`` rounding)."""
    return round(float(f"{price:.5g}"), max(0, 6 - sz_decimals))


# ------------------------------------------------------------------ pre-trade constraints
@dataclass(frozen=True, slots=True)
class Limits:
    """Pre-trade limits of an account: ``max_leverage`` gross (×), ``order_leverage`` the leverage
    orders are opened at (initial margin = notional / min(order_leverage, asset max)),
    ``max_position_notional_usd`` per token, ``daily_loss_limit_pct`` of the day's start equity,
    ``min_order_notional_usd``."""

    max_leverage: float
    order_leverage: float
    max_position_notional_usd: float
    daily_loss_limit_pct: float
    min_order_notional_usd: float


@dataclass(frozen=True, slots=True)
class Violation:
    violation_type: str  # halted, unknown_token, size_increment, min_notional, balance, ...
    reason: str
    metrics: dict


def check_order(*, token: str, side: str, size: float, price: float, reduce_only: bool,
                position: float, report: RiskReport, daily_pnl: float, day_start_equity: float,
                halted: str | None, limits: Limits, assets: Mapping[str, AssetSpec],
                fee_bps: float) -> Violation | None:
    """Pre-trade checks of one order (``size`` base units, already rounded; ``price`` USD
    reference). Returns the first violation, or ``None`` when the order may go.

    Reduce-only orders (closing, force-close, close-all) skip the halt, exposure, balance and
    minimum-notional checks; they must still reduce the position.
    """
    if token not in assets:
        return Violation("unknown_token", f"unknown token {token!r}: no exchange metadata", {"token": token})
    if size <= 0:
        return Violation("size_increment", f"size rounds to 0 at {assets[token].sz_decimals} decimals",
                         {"size": size})
    signed = size if side == "BUY" else -size
    if reduce_only:
        if position == 0 or position * signed > 0 or size > abs(position) + 1e-12:
            return Violation("reduce_only", f"reduce-only {side} {size} does not reduce position {position}",
                             {"position": position, "size": size})
        return None
    if halted:
        return Violation("halted", f"trading halted: {halted}", {})
    notional = size * price
    if notional < limits.min_order_notional_usd:
        return Violation("min_notional", f"order notional {notional:.2f} USD < minimum "
                         f"{limits.min_order_notional_usd:.2f}", {"notional": notional})
    if day_start_equity > 0 and daily_pnl <= -limits.daily_loss_limit_pct / 100.0 * day_start_equity:
        return Violation("daily_loss", f"daily loss {daily_pnl:.2f} USD reached the limit "
                         f"{limits.daily_loss_limit_pct:.1f}% of {day_start_equity:.2f}", {"daily_pnl": daily_pnl})
    new_pos = position + signed
    if abs(new_pos) * price > limits.max_position_notional_usd:
        return Violation("position_limit", f"position notional after trade {abs(new_pos) * price:.2f} USD > max "
                         f"{limits.max_position_notional_usd:.2f}", {"notional_after": abs(new_pos) * price})
    # Initial margin of every position at its leverage, plus the order's fee, must fit the equity.
    used = 0.0
    for t, pr in report.positions.items():
        lev = min(limits.order_leverage, assets.get(t, assets[token]).max_leverage)
        used += abs(pr.notional) / lev
    lev_t = min(limits.order_leverage, assets[token].max_leverage)
    added = (abs(new_pos) - abs(position)) * price / lev_t
    fee = notional * fee_bps / 1e4
    available = report.equity - used
    if added > 0 and added + fee > available:
        return Violation("balance", f"insufficient available balance: order needs {added + fee:.2f} USD margin "
                         f"and fee, {available:.2f} available", {"required": added + fee, "available": available})
    gross_after = report.gross_notional - abs(position) * price + abs(new_pos) * price
    lev_after = gross_after / report.equity if report.equity > 0 else math.inf
    if lev_after > limits.max_leverage:
        return Violation("max_leverage", f"leverage after trade {lev_after:.2f} > max {limits.max_leverage:.2f}",
                         {"leverage_after": lev_after if math.isfinite(lev_after) else None,
                          "max_leverage": limits.max_leverage})
    return None


def cascade_impact_pct(notional_usd: float, daily_volume_usd: float, daily_vol: float) -> float:
    """Square-root-law price impact (%) of ``notional_usd`` traded against ``daily_volume_usd``
    with daily volatility ``daily_vol`` (fraction): impact = σ_daily × √(Q / V_daily) (Almgren,
    Thum, Hauptmann and Li, "Direct Estimation of Equity Market Impact", Risk 2005; Tóth et al.,
    "Anomalous price impact and the critical nature of liquidity in financial markets", PRX 2011)."""
    return 100.0 * daily_vol * math.sqrt(max(notional_usd, 0.0) / max(daily_volume_usd, 1.0))
