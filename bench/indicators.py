"""Indicator update per closed bar: the running state the worker uses (:func:`domain.indicators.update`:
SMA 20/50, EMA 20, RSI 14, MACD 12/26/9, Bollinger 20/2) against pandas-ta over the last 600 bars
(:func:`domain.indicators.compute`, what a worker did per bar before, and the reference), on the
45,031 real FTX BTC-PERP one-minute closes of ``../shared/data/candles``. Prints p50/p99 µs per
closed bar of each and the largest relative difference between them after warm-up (relative to
the value, floored at 1e-6 of the close for the MACD lines that cross zero; goal: update p99 <
50 µs, agreement within 1e-9).

    python bench/indicators.py [--bars 45031] [--reference-bars 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from domain import indicators as ind  # noqa: E402

CANDLES = ROOT.parent / "shared" / "data" / "candles" / "ftx_btc_perp_1m_20211231_20220201.csv"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=45_031)
    ap.add_argument("--reference-bars", type=int, default=2_000, help="bars timed through pandas-ta")
    args = ap.parse_args()
    closes = pd.read_csv(CANDLES)["close"].astype(float).tolist()[: args.bars]
    spec = ind.DEFAULT_SPEC
    ind.compute(closes[:100], spec)  # pandas-ta's numba kernels compiled before timing

    state, _ = ind.warm([], spec)
    running, values = [], []
    for c in closes:
        t0 = time.perf_counter_ns()
        v = ind.update(state, c, spec)
        running.append((time.perf_counter_ns() - t0) / 1000)
        values.append(v)

    window = 600
    reference, worst = [], 0.0
    start = max(window, spec.warmup * 4)
    for i in range(start, min(len(closes), start + args.reference_bars)):
        t0 = time.perf_counter_ns()
        ref = ind.compute(closes[i - window + 1: i + 1], spec)
        reference.append((time.perf_counter_ns() - t0) / 1000)
        for k, r in ref.items():
            x = values[i].get(k)
            if r is not None and x is not None and k != "close":
                # MACD lines cross zero: relative to the value, floored at 1e-6 of the price
                worst = max(worst, abs(x - r) / max(abs(r), 1e-6 * closes[i]))
    print(f"indicator update per closed bar (running state, {len(running)} bars): "
          f"p50 {pct(running, .5):.1f} µs  p99 {pct(running, .99):.1f} µs (goal p99 < 50 µs)")
    print(f"pandas-ta over the last {window} bars per closed bar ({len(reference)} bars): "
          f"p50 {pct(reference, .5):.0f} µs  p99 {pct(reference, .99):.0f} µs  "
          f"= {pct(reference, .5) / pct(running, .5):.0f}× the running update at p50")
    print(f"largest relative difference, running vs pandas-ta after warm-up: {worst:.2e} (bound 1e-9)")


if __name__ == "__main__":
    main()
