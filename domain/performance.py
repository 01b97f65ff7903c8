"""Backtest performance metrics from an equity curve and closed trades.

Conventions (stated, so results can be compared with other tools):

- returns are simple returns of the equity curve between consecutive samples;
- annualisation uses 365 days a year (crypto trades every day): a series sampled every ``dt``
  seconds has 365 × 86,400 / dt periods a year; annualised return = (1 + total)^(year / span) − 1;
- Sharpe = mean(r) / std(r) × √periods with a zero risk-free rate (Sharpe 1994); Sortino =
  mean(r) / downside deviation × √periods, downside deviation = √(mean(min(r, 0)²)) (Sortino and
  Price 1994), zero target;
- max drawdown = the largest peak-to-trough fall of equity (%), its duration the longest time
  (seconds) from a peak to the recovery of that peak (or to the end);
- win rate = winning closed trades / closed trades; profit factor = gross profit / gross loss;
- exposure = the share of the curve's time with an open position (%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

YEAR_S = 365 * 86_400


@dataclass(slots=True)
class Performance:
    start_equity: float
    end_equity: float
    total_return_pct: float
    annualised_return_pct: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown_pct: float
    max_drawdown_duration_s: float
    trades: int
    win_rate_pct: float | None
    profit_factor: float | None
    exposure_pct: float
    fees_paid: float

    def to_dict(self) -> dict:
        return asdict(self)


def drawdown(equity: Sequence[float], times_s: Sequence[float]) -> tuple[float, float]:
    """(max drawdown %, longest drawdown duration in seconds). A sample at or above every earlier
    one is a peak (the first always is); a fall is measured from the last peak while that peak is
    positive; a drawdown lasts from a peak to the next peak, or to the end if equity ends below
    its peak."""
    import numpy as np

    e = np.asarray(equity, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if len(e) == 0 or len(t) == 0:
        return 0.0, 0.0
    peak = np.concatenate([[-math.inf], np.maximum.accumulate(e)[:-1]])  # the peak before each sample
    at_peak = e >= peak
    falls = ~at_peak & (peak > 0)
    with np.errstate(all="ignore"):
        max_dd = float(((peak[falls] - e[falls]) / peak[falls] * 100.0).max()) if falls.any() else 0.0
    peaks_t = t[at_peak]
    longest = float(np.diff(peaks_t).max()) if len(peaks_t) > 1 else 0.0
    if not at_peak[-1]:  # ends below its peak
        longest = max(longest, float(t[-1] - peaks_t[-1]))
    return max(max_dd, 0.0), max(longest, 0.0)


def evaluate(times_ms: Sequence[int], equity: Sequence[float], exposed: Sequence[bool], trade_pnls: Sequence[float],
             fees_paid: float) -> Performance:
    """Metrics of an equity curve (USD, sampled at ``times_ms``) with a flag per sample for an
    open position, and the realised PnL (USD, net of fees) of each closed trade.

    Raises ValueError when the curve has fewer than two samples or the lengths differ.
    """
    if len(equity) < 2 or len(times_ms) != len(equity) or len(exposed) != len(equity):
        raise ValueError("need an equity curve of at least two samples, with times and exposure flags alike")
    import numpy as np

    t = np.asarray(times_ms, dtype=np.float64) / 1000.0
    e = np.asarray(equity, dtype=np.float64)
    span = float(t[-1] - t[0])
    prev = e[:-1]
    rets = e[1:][prev > 0] / prev[prev > 0] - 1.0
    total = equity[-1] / equity[0] - 1.0
    periods = YEAR_S / (span / len(rets)) if span > 0 and len(rets) else None
    sharpe = sortino = None
    if periods and len(rets) > 1:
        mean = float(rets.mean())
        sd = float(rets.std(ddof=1))
        dd = math.sqrt(float((np.minimum(rets, 0.0) ** 2).mean()))
        sharpe = mean / sd * math.sqrt(periods) if sd > 0 else None
        sortino = mean / dd * math.sqrt(periods) if dd > 0 else None
    annual = (1.0 + total) ** (YEAR_S / span) - 1.0 if span > 0 and total > -1 else None
    if annual is not None and not math.isfinite(annual):
        annual = None
    max_dd, dd_s = drawdown(equity, t)
    wins = [p for p in trade_pnls if p > 0]
    losses = [p for p in trade_pnls if p < 0]
    busy = float(np.diff(t)[np.asarray(exposed[:-1], dtype=bool)].sum())
    return Performance(
        start_equity=equity[0], end_equity=equity[-1], total_return_pct=total * 100.0,
        annualised_return_pct=annual * 100.0 if annual is not None else None, sharpe=sharpe, sortino=sortino,
        max_drawdown_pct=max_dd, max_drawdown_duration_s=dd_s, trades=len(trade_pnls),
        win_rate_pct=len(wins) / len(trade_pnls) * 100.0 if trade_pnls else None,
        profit_factor=sum(wins) / -sum(losses) if losses else None,
        exposure_pct=busy / span * 100.0 if span > 0 else 0.0, fees_paid=fees_paid)
