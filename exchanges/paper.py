"""Paper exchange: fills market orders against a synthetic order book around the reference price.

Book model: level ``k`` (k = 0, 1, …) on the taker's far side sits at
``reference × (1 ± (slippage_bps + k × level_step_bps) / 10⁴)`` and holds ``level_notional_usd`` of
liquidity. A market order walks the levels, one fill per level touched, so slippage grows with
order size (a linear-impact book, the standard first-order model; e.g. Kyle, "Continuous Auctions
and Insider Trading", Econometrica 1985); what remains after ``max_levels`` is cancelled (IOC), a
partial fill. Fee (USD) = fill price × size × ``fee_bps`` / 10⁴ per fill. An optional
``latency_ms`` delays each answer.

Fills are deterministic functions of the order (ids derive from the client order id, prices from
the reference price), so a replay produces the same fills.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from exchanges.base import Fill, Order, OrderResult

_MEMORY = 10_000


class PaperExchange:
    name = "paper"
    assets = None  # the configured table is the paper venue's metadata

    def __init__(self, fee_bps: float = 4.5, slippage_bps: float = 1.0, level_notional_usd: float = 250_000.0,
                 level_step_bps: float = 1.0, max_levels: int = 20, latency_ms: float = 0.0):
        if level_notional_usd <= 0 or max_levels < 1:
            raise ValueError("level_notional_usd must be > 0 and max_levels >= 1")
        self.fee_bps, self.slippage_bps = fee_bps, slippage_bps
        self.level_notional_usd, self.level_step_bps = level_notional_usd, level_step_bps
        self.max_levels, self.latency_ms = max_levels, latency_ms
        self._seen: OrderedDict[str, OrderResult] = OrderedDict()

    @classmethod
    def from_settings(cls, s, latency_ms: float | None = None) -> "PaperExchange":
        """The paper book of the settings (:class:`core.settings.Settings`: FEE_BPS, SLIPPAGE_BPS,
        PAPER_*); ``latency_ms`` overrides PAPER_LATENCY_MS."""
        return cls(s.fee_bps, s.slippage_bps, s.paper_level_notional_usd, s.paper_level_step_bps, s.paper_max_levels,
                   s.paper_latency_ms if latency_ms is None else latency_ms)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def fill(self, order: Order) -> OrderResult:
        """The outcome of ``order`` without latency or duplicate detection.

        Raises:
            ValueError: non-positive size or reference price, or a side other than BUY/SELL.
        """
        if order.size <= 0 or order.reference_price <= 0:
            raise ValueError(f"size and price must be positive, got {order.size} @ {order.reference_price}")
        if order.side not in ("BUY", "SELL"):
            raise ValueError(f"side must be BUY or SELL, got {order.side!r}")
        sign = 1.0 if order.side == "BUY" else -1.0
        order_id = f"paper-{order.client_order_id[2:18]}"
        per_level = self.level_notional_usd / order.reference_price
        remaining = order.size
        fills: list[Fill] = []
        for k in range(self.max_levels):
            if remaining <= 1e-12:
                break
            px = order.reference_price * (1.0 + sign * (self.slippage_bps + k * self.level_step_bps) / 1e4)
            qty = min(remaining, per_level)
            fills.append(Fill(f"{order_id}-{k}", qty, px, px * qty * self.fee_bps / 1e4, order.ts_ms))
            remaining -= qty
        status = "filled" if remaining <= 1e-12 else "partially_filled"
        return OrderResult(status, order_id, fills,
                           None if status == "filled" else f"IOC remainder {remaining:g} cancelled: book exhausted")

    async def order_status(self, order: Order) -> OrderResult | None:
        """The remembered outcome of ``order``'s client order id (the last 10,000), or None."""
        return self._seen.get(order.client_order_id)

    async def positions(self) -> None:
        return None  # positions live only in the portfolio

    async def submit(self, order: Order) -> OrderResult:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000.0)
        seen = self._seen.get(order.client_order_id)
        if seen is not None:
            return OrderResult("duplicate", seen.order_id, seen.fills, "client order id already executed")
        result = self.fill(order)
        self._seen[order.client_order_id] = result
        while len(self._seen) > _MEMORY:
            self._seen.popitem(last=False)
        return result
