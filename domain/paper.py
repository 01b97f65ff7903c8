"""Paper exchange fill model: a market order fills at once at the reference (last tick) price
moved against the taker by a fixed slippage, and pays a taker fee on the filled notional.

fill_price = price × (1 + slippage_bps / 10⁴) for a BUY, × (1 - slippage_bps / 10⁴) for a SELL;
fee (USD) = fill_price × size × fee_bps / 10⁴.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Fill:
    side: str
    size: float  # base units
    fill_price: float  # USD
    fee: float  # USD
    slippage: float  # USD per unit, adverse positive


def market_fill(side: str, size: float, price: float, fee_bps: float, slippage_bps: float) -> Fill:
    """Fill a market order of ``size`` base units at reference ``price`` (USD).

    Raises:
        ValueError: non-positive size or price, or a side other than BUY/SELL.
    """
    if size <= 0 or price <= 0:
        raise ValueError(f"size and price must be positive, got size={size} price={price}")
    if side not in ("BUY", "SELL"):
        raise ValueError(f"side must be BUY or SELL, got {side!r}")
    sign = 1.0 if side == "BUY" else -1.0
    fill_price = price * (1.0 + sign * slippage_bps / 1e4)
    fee = fill_price * size * fee_bps / 1e4
    return Fill(side, size, fill_price, fee, sign * (fill_price - price))
