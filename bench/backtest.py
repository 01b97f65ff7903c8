"""Backtest throughput: the in-process engine through the whole agent chain, against backtesting.py
on the same candles and rules, and a parameter sweep.

Prints:

1. ticks/s of the in-process engine on the bundled real tick sample (35,389 Binance trades, default
   rules on 1-second bars, every processor: bars, indicators, rules, risk marking, consensus,
   execution, portfolio), the engine's loop alone and the whole run (loop + equity curve and
   metrics), best of ``--repeat``;
2. bars/s of the same on the 45,031 FTX BTC-PERP one-minute candles with the SMA(20)/SMA(50)
   crossover, and of backtesting.py's ``Backtest.run`` on the same candles with the same rules
   (``trade_on_close=True``, the same sizing and fees), run alternately with ours ``--repeat``
   times, and the median of the pairs' ratios;
3. the wall time of a sweep of 100 parameter pairs (fast 5..50 step 5 × slow 60..150 step 10) on
   the candles, in ``--processes`` worker processes.

Data are read before timing starts, for both tools. Usage: ``python bench/backtest.py [--repeat 3]
[--processes 2] [--no-sweep]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from app.local import SAMPLE  # noqa: E402
from backtest import api  # noqa: E402
from tests.reference import sma_cross_backtest  # noqa: E402

CANDLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "candles" / "ftx_btc_perp_1m_20211231_20220201.csv"
SMA_SETTINGS = dict(consensus_threshold=50, position_fraction=0.1, slippage_bps=0, fee_bps=4.5,
                    daily_loss_limit_pct=100, max_position_notional_usd=1e9, price_alert_pct=50)


def ours(data: api.Data, **kw) -> tuple[float, float, api.Result]:
    """One run: (engine-loop events/s, whole-run events/s, result)."""
    s = api.backtest_settings(**kw)
    t0 = time.perf_counter()
    res = api.run_sync(api.arun(data, s))
    wall = time.perf_counter() - t0
    return res.events_per_second, len(data.events) / wall, res


def backtesting_py(df: pd.DataFrame) -> tuple[float, int]:
    """One ``Backtest.run`` (the Backtest built before timing): (bars/s, trades)."""
    bt = sma_cross_backtest(df, 20, 50)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = bt.run()
    return len(df) / (time.perf_counter() - t0), stats["# Trades"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (best rates and median ratio are printed)")
    ap.add_argument("--processes", type=int, default=2, help="sweep worker processes")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep")
    args = ap.parse_args()
    if not CANDLES.exists():
        sys.exit(f"error: {CANDLES} not found (../shared/data)")

    ticks = api.load(SAMPLE)
    runs = [ours(ticks, bar_seconds=1.0, rules="default", params={}) for _ in range(args.repeat)]
    res = runs[-1][2]
    print(f"in-process, tick sample ({len(ticks.events):,} ticks, default rules, 1 s bars): "
          f"{max(r[0] for r in runs):,.0f} ticks/s (engine loop), {max(r[1] for r in runs):,.0f} ticks/s (whole run); "
          f"{len(res.fills)} fills, {res.counts}")

    # Ours and backtesting.py alternate, so both see the same state of this shared machine; the
    # ratio is taken pair by pair and its median printed beside the best rates.
    candles = api.load(CANDLES, "BTC")
    df = pd.read_csv(CANDLES, parse_dates=["timestamp"], index_col="timestamp")
    pairs = []
    for _ in range(args.repeat):
        loop, whole, res = ours(candles, bar_seconds=60.0, rules="sma_cross", params={}, **SMA_SETTINGS)
        ref, ref_trades = backtesting_py(df)
        pairs.append((loop, whole, ref))
    ratios = sorted(whole / ref for _, whole, ref in pairs)
    print(f"in-process, FTX candles ({len(candles.events):,} bars, SMA(20)/SMA(50)): "
          f"{max(p[0] for p in pairs):,.0f} bars/s (engine loop), {max(p[1] for p in pairs):,.0f} bars/s (whole run); "
          f"{res.performance.trades} round trips")
    print(f"backtesting.py Backtest.run, same candles and rules: {max(p[2] for p in pairs):,.0f} bars/s; "
          f"{ref_trades} trades")
    print(f"ratio (whole run / backtesting.py), {len(ratios)} alternating pairs: median {statistics.median(ratios):.2f}x "
          f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")

    if not args.no_sweep:
        grid = api.parse_grid(["fast=5:50:5", "slow=60:150:10"])
        t0 = time.perf_counter()
        df = api.sweep(candles, "sma_cross", grid, metric="sharpe", processes=args.processes, bar_seconds=60.0,
                       progress=False, **SMA_SETTINGS)
        wall = time.perf_counter() - t0
        ok = df["error"].isna().sum() if "error" in df.columns else len(df)
        print(f"sweep of {len(df)} pairs ({ok} valid) on {len(candles.events):,} candles, {args.processes} processes: "
              f"{wall:.1f} s wall ({len(df) / wall:.2f} runs/s); best sharpe "
              f"{df.iloc[0]['sharpe']:.3f} at fast={df.iloc[0]['fast']}, slow={df.iloc[0]['slow']}")


if __name__ == "__main__":
    main()
