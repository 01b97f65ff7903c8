"""Technical indicators over closed bars, computed with pandas-ta.

Definitions are pandas-ta's (https://github.com/twopirllc/pandas-ta): SMA, EMA, RSI (Wilder),
MACD(12, 26, 9) and Bollinger Bands(20, 2). The values returned are those of the last bar; a value
is ``None`` while there are too few bars for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import pandas_ta as ta

#: Bars needed before every indicator has a value (SMA(50) is the longest).
MIN_BARS = 50


def _last(series: pd.Series | None, offset: int = 1) -> float | None:
    if series is None or len(series) < offset:
        return None
    v = series.iloc[-offset]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def compute(closes: Sequence[float], ema_length: int = 20) -> dict[str, float | None]:
    """Indicators of the last bar from a sequence of bar closes (oldest first, USD).

    Keys: ``close``, ``sma_20``, ``sma_50``, ``sma_20_prev``, ``sma_50_prev`` (previous bar, for
    cross detection), ``ema``, ``rsi_14`` (0-100), ``macd``, ``macd_signal``, ``macd_hist``,
    ``bb_lower``, ``bb_mid``, ``bb_upper``.
    """
    close = pd.Series(closes, dtype="float64")
    out: dict[str, float | None] = {"close": float(close.iloc[-1]) if len(close) else None}
    sma20 = ta.sma(close, length=20, talib=False)
    sma50 = ta.sma(close, length=50, talib=False)
    out["sma_20"], out["sma_20_prev"] = _last(sma20), _last(sma20, 2)
    out["sma_50"], out["sma_50_prev"] = _last(sma50), _last(sma50, 2)
    out["ema"] = _last(ta.ema(close, length=ema_length, talib=False))
    out["rsi_14"] = _last(ta.rsi(close, length=14, talib=False))
    macd = ta.macd(close, fast=12, slow=26, signal=9, talib=False)
    # pandas-ta names columns MACD_12_26_9, MACDh_..., MACDs_...; take them by position.
    out["macd"] = _last(macd.iloc[:, 0]) if macd is not None else None
    out["macd_hist"] = _last(macd.iloc[:, 1]) if macd is not None else None
    out["macd_signal"] = _last(macd.iloc[:, 2]) if macd is not None else None
    bb = ta.bbands(close, length=20, std=2, ddof=0, talib=False)
    out["bb_lower"] = _last(bb.iloc[:, 0]) if bb is not None else None
    out["bb_mid"] = _last(bb.iloc[:, 1]) if bb is not None else None
    out["bb_upper"] = _last(bb.iloc[:, 2]) if bb is not None else None
    return out
