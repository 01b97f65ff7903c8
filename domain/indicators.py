"""Technical indicators over closed bars: SMA, EMA, RSI (Wilder), MACD and Bollinger Bands.

Two implementations of the same definitions, pandas-ta's (https://github.com/twopirllc/pandas-ta,
``talib=False``):

* :func:`compute`, the batch path: pandas-ta over a sequence of closes (the reference);
* :func:`update`, the running path: O(1) state per token, updated once per closed bar. Live
  workers and the in-process backtest engine both use it, so every bar sees the same values in
  both runtimes. It agrees with :func:`compute` over the same bars to ~1e-12 relative (tested on
  real candles; the definitions below are pandas-ta's, seeds included).

Definitions (closes ``c``, oldest first):

* SMA(n) = mean of the last n closes (``math.fsum``, correctly rounded);
* EMA(n): α = 2 / (n + 1), seeded with the SMA of the first n closes (pandas-ta's ``presma``,
  TA-Lib's convention), then ``e = ((1 − α)·e + α·c) / ((1 − α) + α)`` (pandas' ``ewm(adjust=False)``);
* RSI(n): gains and losses of ``c.diff()`` smoothed with Wilder's moving average (``ewm(alpha=1/n,
  adjust=False)``, seeded with the first difference, as pandas-ta's ``rma``), RSI = 100·gain /
  (gain + |loss|), defined from n + 1 closes;
* MACD(f, s, k): EMA(f) − EMA(s); signal = EMA(k) of the MACD line from its first value; histogram
  = MACD − signal;
* Bollinger(n, m): middle = SMA(n), bands = middle ± m × population standard deviation of the last
  n closes (``ddof=0``, Bollinger's definition and TA-Lib's).

A value is ``None`` while there are too few bars for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IndicatorSpec:
    """Which indicators to compute, with their periods (bars). ``sma``: the SMA periods (each gives
    ``sma_<n>`` and ``sma_<n>_prev``, the previous bar's, for cross detection); ``ema``: EMA length
    (key ``ema``); ``rsi``: RSI length (key ``rsi_<n>``); ``macd``: (fast, slow, signal) (keys
    ``macd``, ``macd_signal``, ``macd_hist``); ``bb``: (length, standard deviations) (keys
    ``bb_lower``, ``bb_mid``, ``bb_upper``). ``None`` leaves an indicator out."""

    sma: tuple[int, ...] = (20, 50)
    ema: int | None = 20
    rsi: int | None = 14
    macd: tuple[int, int, int] | None = (12, 26, 9)
    bb: tuple[int, float] | None = (20, 2.0)

    @property
    def window(self) -> int:
        """Closes the running state keeps (the longest SMA or Bollinger length)."""
        return max([*self.sma, self.bb[0] if self.bb else 1, 1])

    @property
    def warmup(self) -> int:
        """Bars before every indicator of the spec has a value."""
        macd = (max(self.macd[0], self.macd[1]) + self.macd[2] - 1) if self.macd else 0
        return max(self.window + 1, (self.ema or 0), (self.rsi or 0) + 1, macd)


DEFAULT_SPEC = IndicatorSpec()


# ------------------------------------------------------------------ batch (pandas-ta)
def _last(series, offset: int = 1) -> float | None:
    if series is None or len(series) < offset:
        return None
    v = series.iloc[-offset]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def compute(closes: Sequence[float], spec: IndicatorSpec = DEFAULT_SPEC) -> dict[str, float | None]:
    """Indicators of the last bar from a sequence of bar closes (oldest first, USD), with
    pandas-ta. Keys as in :class:`IndicatorSpec`, plus ``close``."""
    import pandas as pd
    import pandas_ta as ta

    close = pd.Series(closes, dtype="float64")
    out: dict[str, float | None] = {"close": float(close.iloc[-1]) if len(close) else None}
    for n in spec.sma:
        s = ta.sma(close, length=n, talib=False)
        out[f"sma_{n}"], out[f"sma_{n}_prev"] = _last(s), _last(s, 2)
    if spec.ema:
        out["ema"] = _last(ta.ema(close, length=spec.ema, talib=False))
    if spec.rsi:
        out[f"rsi_{spec.rsi}"] = _last(ta.rsi(close, length=spec.rsi, talib=False))
    if spec.macd:
        f, s, k = spec.macd
        macd = ta.macd(close, fast=f, slow=s, signal=k, talib=False)
        # pandas-ta names columns MACD_f_s_k, MACDh_..., MACDs_...; take them by position.
        out["macd"] = _last(macd.iloc[:, 0]) if macd is not None else None
        out["macd_hist"] = _last(macd.iloc[:, 1]) if macd is not None else None
        out["macd_signal"] = _last(macd.iloc[:, 2]) if macd is not None else None
    if spec.bb:
        n, m = spec.bb
        bb = ta.bbands(close, length=n, lower_std=m, upper_std=m, ddof=0, talib=False)
        out["bb_lower"] = _last(bb.iloc[:, 0]) if bb is not None else None
        out["bb_mid"] = _last(bb.iloc[:, 1]) if bb is not None else None
        out["bb_upper"] = _last(bb.iloc[:, 2]) if bb is not None else None
    return out


# ------------------------------------------------------------------ running state
def new_state() -> dict:
    """Empty running state (a JSON dict, so a Faust table can hold it): ``n`` bars seen, ``win``
    the last closes, ``ema`` {length: [bars, value or running sum]}, ``rsi`` [previous close,
    gain average, loss average], ``sig`` the MACD signal's EMA state, ``prev`` last bar's SMAs."""
    return {"n": 0, "win": [], "ema": {}, "rsi": None, "sig": None, "prev": {}}


def _ema(st: dict, key: str, length: int, x: float) -> float | None:
    """One step of an SMA-seeded EMA kept in ``st[key]`` = [count, value or seed sum]."""
    e = st.get(key)
    if e is None:
        e = st[key] = [0, 0.0]
    if e[0] < length:
        e[0] += 1
        e[1] += x
        if e[0] < length:
            return None
        e[1] = e[1] / length
        return e[1]
    alpha = 2.0 / (length + 1.0)
    old = 1.0 - alpha
    e[1] = (old * e[1] + alpha * x) / (old + alpha)
    return e[1]


def _rma(prev: float, x: float, length: int) -> float:
    alpha = 1.0 / length
    old = 1.0 - alpha
    return (old * prev + alpha * x) / (old + alpha)


def update(state: dict, close: float, spec: IndicatorSpec = DEFAULT_SPEC) -> dict[str, float | None]:
    """Fold one closed bar's ``close`` (USD) into ``state`` (changed in place) and return the
    indicators of that bar (keys as :func:`compute`)."""
    state["n"] += 1
    win = state["win"]
    win.append(close)
    if len(win) > spec.window:
        del win[0]
    n_win = len(win)
    out: dict[str, float | None] = {"close": close}
    prev = state["prev"]
    for p in spec.sma:
        key = f"sma_{p}"
        v = math.fsum(win[-p:]) / p if n_win >= p else None
        out[key], out[f"{key}_prev"] = v, prev.get(key)
        prev[key] = v
    emas = state["ema"]
    if spec.ema:
        out["ema"] = _ema(emas, str(spec.ema), spec.ema, close)
    if spec.rsi:
        length = spec.rsi
        r = state["rsi"]
        value = None
        if r is None:
            state["rsi"] = [close, None, None]
        else:
            diff = close - r[0]
            gain, loss = (diff if diff > 0 else 0.0), (diff if diff < 0 else 0.0)
            if r[1] is None:
                r[1], r[2] = gain, loss
            else:
                r[1], r[2] = _rma(r[1], gain, length), _rma(r[2], loss, length)
            r[0] = close
            denom = r[1] + abs(r[2])
            if state["n"] >= length + 1 and denom > 0:
                value = 100.0 * r[1] / denom
        out[f"rsi_{length}"] = value
    if spec.macd:
        f, s, k = spec.macd
        fast = _ema(emas, f"macd_fast_{f}", f, close)
        slow = _ema(emas, f"macd_slow_{s}", s, close)
        macd = fast - slow if fast is not None and slow is not None else None
        signal = _ema(emas, f"macd_signal_{k}", k, macd) if macd is not None else None
        # pandas-ta reports the MACD line only once its signal exists
        out["macd"], out["macd_signal"] = (macd if signal is not None else None), signal
        out["macd_hist"] = macd - signal if signal is not None else None
    if spec.bb:
        length, m = spec.bb
        if n_win >= length:
            xs = win[-length:]
            mid = math.fsum(xs) / length
            sd = math.sqrt(math.fsum((x - mid) * (x - mid) for x in xs) / length)
            out["bb_lower"], out["bb_mid"], out["bb_upper"] = mid - m * sd, mid, mid + m * sd
        else:
            out["bb_lower"] = out["bb_mid"] = out["bb_upper"] = None
    return out


def warm(closes: Sequence[float], spec: IndicatorSpec = DEFAULT_SPEC) -> tuple[dict, dict[str, float | None]]:
    """Running state after ``closes`` (oldest first) and the last bar's indicators: how a token's
    state is rebuilt from a stored bar history."""
    state = new_state()
    values: dict[str, float | None] = {}
    for c in closes:
        values = update(state, c, spec)
    return state, values


# ------------------------------------------------------------------ whole series at once
def exact_window_sums(closes, n: int):
    """Correctly rounded sums of every window of ``n`` consecutive ``closes`` (float64 array),
    equal bit for bit to ``math.fsum`` of each window, or ``None`` when the series' binary
    exponents spread too far for the method (prices over a range wider than about 500×).

    Method: every value is an integer multiple of the smallest ulp in the series, so scaled by
    that power of two each is an exact int64 (while the exponents span at most 9 binades). Window
    sums of the high and low 32-bit halves are exact integer differences of cumulative sums; the
    float of ``hi · 2³² + lo`` is then one IEEE addition of two exact doubles, which rounds the
    exact sum correctly, as ``fsum`` does (both round half to even). Scaling back by a power of
    two is exact. Element ``i`` is the window ending at ``i`` (NaN for ``i < n - 1``).
    """
    import numpy as np

    a = np.asarray(closes, dtype=np.float64)
    out = np.full(len(a), np.nan)
    if len(a) < n:
        return out
    nz = a[a != 0.0]
    if len(nz) == 0:
        out[n - 1:] = 0.0
        return out
    _, exps = np.frexp(nz)
    e_min = int(exps.min()) - 53
    if int(exps.max()) - e_min > 62:
        return None
    ints = np.ldexp(a, -e_min).astype(np.int64)
    hi, lo = ints >> 32, ints & 0xFFFFFFFF
    zero = np.zeros(1, dtype=np.int64)
    chi, clo = np.concatenate([zero, np.cumsum(hi)]), np.concatenate([zero, np.cumsum(lo)])
    s_hi, s_lo = chi[n:] - chi[:-n], clo[n:] - clo[:-n]
    s_hi += s_lo >> 32  # carry, so 0 <= s_lo < 2^32 and both halves are exact doubles
    s_lo &= 0xFFFFFFFF
    out[n - 1:] = np.ldexp(np.ldexp(s_hi.astype(np.float64), 32) + s_lo.astype(np.float64), e_min)
    return out


def series(closes, spec: IndicatorSpec = DEFAULT_SPEC) -> dict:
    """Every bar's indicators from a whole series of bar closes (oldest first, USD): what
    :func:`update` gives at each bar from a new state, bit for bit, as float64 arrays (NaN where it
    gives ``None``). Keys as :func:`update`'s.

    The SMAs of an SMA-only spec are computed at once (:func:`exact_window_sums`, divided by the
    period as :func:`update` does); any other spec, or a series the exact sums cannot take, runs
    :func:`update` bar by bar. For a runtime that holds the whole input (the backtest engine)."""
    import numpy as np

    a = np.asarray(closes, dtype=np.float64)
    sma_only = spec.ema is None and spec.rsi is None and spec.macd is None and spec.bb is None
    if sma_only:
        out = {"close": a}
        for p in spec.sma:
            sums = exact_window_sums(a, p)
            if sums is None:
                break
            sma = sums / p
            out[f"sma_{p}"] = sma
            out[f"sma_{p}_prev"] = np.concatenate([[np.nan], sma[:-1]])
        else:
            return out
    state = new_state()
    rows = [update(state, c, spec) for c in a.tolist()]
    keys = rows[0].keys() if rows else ["close"]
    return {k: np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=np.float64) for k in keys}
