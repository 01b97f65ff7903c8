"""OHLCV bars from ticks, on event time.

A bar covers ``[start_ms, start_ms + length_ms)``; it closes when the first tick of a later bar
arrives, so replaying the same ticks gives the same bars whatever the wall clock does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Bar:
    """One OHLCV bar: prices in quote currency (USD), ``volume`` in quote units (USD notional)."""

    start_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    ticks: int

    def to_dict(self) -> dict:
        return {"start_ms": self.start_ms, "open": self.open, "high": self.high, "low": self.low,
                "close": self.close, "volume": self.volume, "ticks": self.ticks}

    @classmethod
    def from_dict(cls, d: dict) -> "Bar":
        return cls(**d)


def bar_start(ts_ms: int, length_ms: int) -> int:
    """Start of the bar holding ``ts_ms`` (bars aligned to the epoch)."""
    return ts_ms - ts_ms % length_ms


def apply_tick(current: Bar | None, ts_ms: int, price: float, notional: float,
               length_ms: int) -> tuple[Bar | None, Bar | None, bool]:
    """Fold one tick into the open bar.

    Returns ``(open_bar, closed_bar, late)``: ``closed_bar`` is the bar this tick closed (or
    ``None``); ``late`` is true when the tick belongs to an already closed bar and was dropped.
    """
    start = bar_start(ts_ms, length_ms)
    if current is None:
        return Bar(start, price, price, price, price, notional, 1), None, False
    if start < current.start_ms:
        return current, None, True
    if start > current.start_ms:
        return Bar(start, price, price, price, price, notional, 1), current, False
    current.high = max(current.high, price)
    current.low = min(current.low, price)
    current.close = price
    current.volume += notional
    current.ticks += 1
    return current, None, False
