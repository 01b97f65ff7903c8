"""The SMA crossover as backtesting.py (an independent backtester) runs it, for the cross-checks
in tests and the comparison in bench/backtest.py.

The strategy is the one the agents run with ``TRADING_RULES=sma_cross``: trade at the close of
the bar whose close completes a cross (``trade_on_close=True``), reverse in one go, a signal in the
direction already held places no order, 15 % of equity per position (POSITION_FRACTION 0.1 × the
1.5 boost for confidence > 0.8), 4.5 bp of notional per fill, no slippage. backtesting.py trades
whole units, so prices are scaled by 2^-17 (one unit = 2^-17 BTC, about HyperLiquid's 0.00001 BTC
size step). A power of two scales every sum and mean exactly: FTX prices are whole dollars, so
SMAs of different periods can be exactly equal at a bar, and a decimal scale would turn such a tie
into a cross one bar early in the reference.
"""

from __future__ import annotations

import warnings

import pandas as pd

SCALE = 2.0 ** -17


def sma_cross_backtest(df: pd.DataFrame, fast: int, slow: int):
    """backtesting.py's ``Backtest`` of the crossover on candles ``df`` (columns open, high, low,
    close, volume in USD), ready to ``run()``."""
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    data = pd.DataFrame({"Open": df["open"] * SCALE, "High": df["high"] * SCALE, "Low": df["low"] * SCALE,
                         "Close": df["close"] * SCALE, "Volume": df["volume"]})

    def sma(x, n):
        return pd.Series(x).rolling(n).mean()

    class SmaCross(Strategy):
        def init(self):
            self.fast = self.I(sma, self.data.Close, fast)
            self.slow = self.I(sma, self.data.Close, slow)

        def next(self):
            if crossover(self.fast, self.slow) and not self.position.is_long:
                self.position.close()
                self.buy(size=0.15)
            elif crossover(self.slow, self.fast) and not self.position.is_short:
                self.position.close()
                self.sell(size=0.15)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Backtest(data, SmaCross, cash=100_000, commission=0.00045, trade_on_close=True, finalize_trades=False)
