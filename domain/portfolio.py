"""Portfolio accounting for one account: cash, signed positions with average entry price,
realised PnL and fees. Positions may be long (size > 0) or short (size < 0), like perpetual
futures held with cash as collateral.

Cash accounting: a fill of signed quantity q at price p with fee f changes cash by -q·p - f, so
equity = cash + Σ size × mark at any time, and realised PnL on a reducing fill is
(p - entry) × closed quantity × sign of the position (fees counted separately and in ``pnl_usd``
of a closed position).

The state is a plain dict (JSON for the Faust table): ``{"cash", "positions": {token: {"size",
"entry_price", "opened_ms", "realised_pnl", "fees"}}, "realised_pnl", "fees_paid", "applied":
[client_order_id, ...], "day", "day_start_equity", "updated_ms"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from domain.risk import DEFAULT_ASSETS, AssetSpec, evaluate

#: Client order ids remembered per account to make fill application idempotent.
APPLIED_MEMORY = 500
_EPS = 1e-12


def new_portfolio(cash: float) -> dict:
    return {"cash": cash, "positions": {}, "realised_pnl": 0.0, "fees_paid": 0.0, "applied": [],
            "day": None, "day_start_equity": cash, "updated_ms": 0, "fills": 0}


@dataclass(slots=True)
class Closed:
    token: str
    entry_price: float
    exit_price: float
    size: float  # the position's largest signed size over its life (base units)
    pnl_usd: float  # realised over the position's life, net of its fees
    duration_s: float


def apply_fill(pf: dict, token: str, side: str, qty: float, price: float, fee: float,
               ts_ms: int, client_order_id: str) -> Closed | None:
    """Apply one fill in place. ``qty`` base units (> 0), ``price`` USD, ``fee`` USD.

    Returns the position that this fill closed (size back to zero), else ``None``. A position that
    flips sign closes the old one and opens a new one at the fill price. Raises ``ValueError`` on
    a non-positive qty or price.
    """
    if qty <= 0 or price <= 0:
        raise ValueError(f"fill qty and price must be positive, got {qty} @ {price}")
    q = qty if side == "BUY" else -qty
    pf["cash"] -= q * price + fee
    pf["fees_paid"] += fee
    pos = pf["positions"].get(token)
    closed: Closed | None = None
    if pos is None or abs(pos["size"]) < _EPS:
        pf["positions"][token] = {"size": q, "entry_price": price, "opened_ms": ts_ms,
                                  "realised_pnl": 0.0, "fees": fee, "peak_size": q}
    else:
        size = pos["size"]
        pos["fees"] += fee
        if size * q > 0:  # adding to the position: new average entry
            new = size + q
            pos["entry_price"] = (pos["entry_price"] * size + price * q) / new
            pos["size"] = new
            pos["peak_size"] = new if abs(new) > abs(pos.get("peak_size", size)) else pos.get("peak_size", size)
        else:
            reduce = min(abs(q), abs(size))
            pnl = (price - pos["entry_price"]) * reduce * (1 if size > 0 else -1)
            pos["realised_pnl"] += pnl
            pf["realised_pnl"] += pnl
            remaining = size + q
            if abs(remaining) < _EPS or size * remaining < 0:
                # Fee of the part that opens a flipped position belongs to the new one.
                flip_qty = abs(remaining) if size * remaining < 0 else 0.0
                flip_fee = fee * flip_qty / qty
                closed = Closed(token, pos["entry_price"], price, pos.get("peak_size", size),
                                pos["realised_pnl"] - (pos["fees"] - flip_fee),
                                max(0.0, (ts_ms - pos["opened_ms"]) / 1000.0))
                if flip_qty > 0:
                    pf["positions"][token] = {"size": remaining, "entry_price": price, "opened_ms": ts_ms,
                                              "realised_pnl": 0.0, "fees": flip_fee, "peak_size": remaining}
                else:
                    del pf["positions"][token]
            else:
                pos["size"] = remaining
    applied = pf["applied"]
    applied.append(client_order_id)
    if len(applied) > APPLIED_MEMORY:
        del applied[: len(applied) - APPLIED_MEMORY]
    pf["updated_ms"] = max(pf["updated_ms"], ts_ms)
    pf["fills"] = pf.get("fills", 0) + 1
    return closed


def mark(pf: Mapping, marks: Mapping[str, float], assets: Mapping[str, AssetSpec] = DEFAULT_ASSETS,
         max_leverage: float = 3.0) -> dict:
    """Mark positions to market and add their risk (:func:`domain.risk.evaluate`, the one marking
    implementation). ``marks`` token → price (USD); a token without a mark uses its entry price.
    Returns ``{"equity", "gross_notional", "leverage", "unrealised_pnl", "risk_score", "positions":
    {token: {"size", "entry_price", "mark_price", "notional", "unrealised_pnl", "realised_pnl",
    "liquidation_price", "liquidation_distance_pct"}}}``; leverage = gross notional / equity (∞ when
    equity ≤ 0)."""
    r = evaluate(pf["cash"], pf["positions"], marks, assets, max_leverage)
    positions = {
        t: {"size": p.size, "entry_price": p.entry_price, "mark_price": p.mark_price, "notional": p.notional,
            "unrealised_pnl": p.unrealised_pnl, "realised_pnl": pf["positions"][t].get("realised_pnl", 0.0),
            "liquidation_price": p.liquidation_price, "liquidation_distance_pct": p.distance_pct}
        for t, p in r.positions.items()}
    return {"equity": r.equity, "gross_notional": r.gross_notional, "leverage": r.leverage,
            "unrealised_pnl": sum(p.unrealised_pnl for p in r.positions.values()), "risk_score": r.risk_score,
            "positions": positions}


def target_order(position: float, equity: float, price: float, action: str, fraction: float,
                 min_notional: float) -> tuple[str, float] | None:
    """Fixed-fraction sizing: from flat or from the opposite side, the order that brings the
    position to ±fraction × equity / price. A signal in the direction already held places no order
    (no rebalancing on every price move, so the same signals give the same trades).

    Returns ``(side, qty)`` or ``None`` when the action is HOLD, the position already points that
    way, or the order would be below ``min_notional`` (USD).
    """
    if action not in ("BUY", "SELL") or equity <= 0 or price <= 0:
        return None
    if (action == "BUY" and position > 0) or (action == "SELL" and position < 0):
        return None
    target = (1 if action == "BUY" else -1) * fraction * equity / price
    delta = target - position
    if abs(delta) * price < max(min_notional, 1e-9):
        return None
    return ("BUY" if delta > 0 else "SELL"), abs(delta)


def roll_day(pf: dict, ts_ms: int, equity: float) -> float:
    """Daily PnL (USD) since 00:00 UTC of ``ts_ms``'s day, rolling the day start when it changes."""
    day = ts_ms // 86_400_000
    if pf.get("day") != day:
        pf["day"] = day
        pf["day_start_equity"] = equity
    return equity - pf["day_start_equity"]
