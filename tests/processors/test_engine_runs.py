"""The in-process engine's shortcuts give what the processors give tick by tick: indicators of a
whole series equal to the running ones bit for bit, rule masks that keep every signal bar, and
runs of quiet ticks taken at once with the same outputs, fills and state."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pandas as pd
import pytest

from backtest import api
from backtest.engine import InProcessEngine
from domain import indicators as ind
from domain.signals import resolve


@pytest.fixture(scope="module")
def closes(candles_path) -> np.ndarray:
    return pd.read_csv(candles_path)["close"].to_numpy()


def _fsum_windows(a: np.ndarray, n: int) -> np.ndarray:
    return np.array([math.fsum(a[i - n + 1:i + 1].tolist()) if i >= n - 1 else np.nan for i in range(len(a))])


@pytest.mark.parametrize("n", [1, 2, 7, 20, 50, 150, 1000])
def test_exact_window_sums_equal_fsum_on_real_candles(closes, n):
    a = closes[:12_000]
    assert np.array_equal(ind.exact_window_sums(a, n), _fsum_windows(a, n), equal_nan=True)


def test_exact_window_sums_over_several_binades_and_signs_and_their_limit():
    rng = np.random.default_rng(3)
    walk = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 20_000)))  # spans several powers of two
    assert np.ptp(np.frexp(walk)[1]) >= 4
    mixed = rng.choice([-1.0, 1.0], 5_000) * rng.uniform(100.0, 1_000.0, 5_000)
    for a, n in ((walk, 3), (walk, 64), (mixed, 5), (mixed, 500)):
        assert np.array_equal(ind.exact_window_sums(a, n), _fsum_windows(a, n), equal_nan=True)
    assert ind.exact_window_sums(np.exp(rng.normal(0, 3, 1_000)), 10) is None  # too wide: the caller falls back


@pytest.mark.parametrize("spec", [ind.IndicatorSpec(sma=(10, 30), ema=None, rsi=None, macd=None, bb=None),
                                  ind.DEFAULT_SPEC])
def test_series_equals_the_running_update_bit_for_bit(closes, spec):
    a = closes[:4_000]
    got = ind.series(a, spec)
    state = ind.new_state()
    rows = [ind.update(state, c, spec) for c in a.tolist()]
    assert list(got) == list(rows[-1])
    for key, values in got.items():
        ref = np.array([np.nan if r[key] is None else r[key] for r in rows])
        assert np.array_equal(values, ref, equal_nan=True), key


@pytest.mark.parametrize("fast, slow", [(20, 50), (3, 7), (45, 150)])
def test_sma_cross_mask_keeps_every_bar_it_signals_on(closes, fast, slow):
    rules, params = resolve("sma_cross", {"fast": fast, "slow": slow})
    spec = rules.indicators(params)
    values = ind.series(closes[:20_000], spec)
    mask = rules.may_signal(values, params)
    state = ind.new_state()
    actions = [rules.evaluate(ind.update(state, c, spec), params).action for c in closes[:20_000].tolist()]
    assert mask.tolist() == [a != "HOLD" for a in actions]
    assert sum(mask) > 100


def _run(data, settings, precompute: bool):
    engine = InProcessEngine(settings, keep_outputs=True, sentiment_input=False, precompute=precompute)
    run = asyncio.run(engine.run(data.events))
    stores = {k: engine.stores[k] for k in ("portfolio", "exposures", "latest_prices", "halt", "execution_state")}
    stores["open bars"] = {t: (ob.bar.to_dict(), ob.last_closed) for t, ob in engine.trading.state.open.items()}
    stores["last closed"] = {t: v["last_start"] for t, v in engine.stores["bar_history"].items()}
    return [e.model_dump() for e in run.outputs], run.counts, stores, engine


CASES = {
    "candles sma 20/50": ("candles", 60.0, "sma_cross", {}, dict(consensus_threshold=50, position_fraction=0.1,
                                                                 fee_bps=4.5, max_position_notional_usd=1e9)),
    "candles sma 5/13, leveraged": ("candles", 60.0, "sma_cross", {"fast": 5, "slow": 13},
                                    dict(consensus_threshold=50, position_fraction=1.95, max_leverage=3.0,
                                         price_alert_pct=0.5, max_position_notional_usd=1e9,
                                         daily_loss_limit_pct=100)),
    "ticks default rules": ("ticks", 1.0, "default", {}, {}),
    "ticks sma 3/8, alerts": ("ticks", 1.0, "sma_cross", {"fast": 3, "slow": 8},
                              dict(consensus_threshold=50, position_fraction=1.95, max_leverage=3.0,
                                   price_alert_pct=0.03, max_position_notional_usd=1e9)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quiet_runs_taken_at_once_give_the_tick_by_tick_outputs(case, candles_path, sample_path, tmp_path):
    kind, bar, rules, params, extra = CASES[case]
    if kind == "candles":
        path = tmp_path / "c.csv"
        pd.read_csv(candles_path, nrows=8_000).to_csv(path, index=False)
        data = api.load(path, "BTC")
    else:
        data = api.load(sample_path)
    s = api.backtest_settings(bar_seconds=bar, rules=rules, params=params, **extra)
    fast_out, fast_counts, fast_stores, engine = _run(data, s, True)
    slow_out, slow_counts, slow_stores, _ = _run(data, s, False)
    assert fast_counts.get("trade.executed", 0) > 5
    assert fast_counts == slow_counts
    assert fast_out == slow_out
    assert fast_stores == slow_stores
    assert engine.ticks_skipped > len(data.events) // 2, "most ticks were taken in quiet runs"
    if "alerts" in case or "leveraged" in case:
        assert fast_counts.get("risk.alert", 0) > 0
