"""Pure domain logic: bars, indicators, rules, consensus scoring, paper fills, portfolio."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from domain import consensus as cs
from domain import indicators, signals
from domain.bars import Bar, apply_tick, bar_start
from domain.portfolio import apply_fill, mark, new_portfolio, roll_day, target_order
from feeds.files import read_ticks


def test_bars_close_on_event_time_and_drop_late_ticks():
    bar, closed, late = apply_tick(None, 1_000, 10.0, 5.0, 1_000)
    assert (bar.start_ms, bar.open, closed, late) == (1_000, 10.0, None, False)
    bar, closed, _ = apply_tick(bar, 1_500, 12.0, 1.0, 1_000)
    bar, closed, _ = apply_tick(bar, 1_999, 9.0, 1.0, 1_000)
    assert (bar.high, bar.low, bar.close, bar.volume, bar.ticks) == (12.0, 9.0, 9.0, 7.0, 3)
    bar, closed, _ = apply_tick(bar, 3_200, 11.0, 2.0, 1_000)
    assert closed.start_ms == 1_000 and closed.close == 9.0
    assert bar.start_ms == 3_000 and bar.open == 11.0
    same, closed, late = apply_tick(bar, 2_500, 50.0, 1.0, 1_000)
    assert late and closed is None and same.high == 11.0
    assert bar_start(61_234, 60_000) == 60_000
    assert Bar.from_dict(bar.to_dict()) == bar


def test_indicators_agree_with_ta_lib_to_1e9_on_real_candles(candles_path):
    """The running indicators (what the agents use live and in backtests) and pandas-ta (its own
    code: talib=False) against TA-Lib's C implementation, an independent reference, on real FTX
    BTC-PERP 1-minute closes. Compared after a warm-up of ten times the longest period (SMA(50) →
    500 bars): the running path at every bar of the first 6,000, pandas-ta over the last 600 closes
    at every 25th.

    Tolerance: 1e-9 relative. MACD, its signal and histogram are differences of two EMAs of about
    the price (~40,000 USD) and pass through zero, where relative error is undefined; for them the
    bound is 1e-9 relative plus 1e-15 × close, the float64 cancellation floor of that difference
    (a few ulps of the operands). The worst errors seen are printed."""
    talib = pytest.importorskip("talib")
    import numpy as np

    c = pd.read_csv(candles_path, nrows=6000)["close"].to_numpy(dtype=float)
    ref = {"sma_20": talib.SMA(c, 20), "sma_50": talib.SMA(c, 50), "ema": talib.EMA(c, 20), "rsi_14": talib.RSI(c, 14)}
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = talib.MACD(c, 12, 26, 9)
    ref["bb_upper"], ref["bb_mid"], ref["bb_lower"] = talib.BBANDS(c, 20, 2, 2, 0)  # population std, as Bollinger
    worst = {k: 0.0 for k in ref}
    state = indicators.new_state()
    for i in range(len(c)):
        running = indicators.update(state, float(c[i]))
        if i < 500:
            continue
        outs = [running] + ([indicators.compute(c[max(0, i + 1 - 600): i + 1])] if i % 25 == 0 else [])
        for out in outs:
            for k, r in ref.items():
                err = abs(out[k] - r[i])
                floor = 1e-15 * c[i] if k.startswith("macd") else 0.0
                assert err <= 1e-9 * abs(r[i]) + floor, (k, i, out[k], r[i])
                worst[k] = max(worst[k], err / abs(r[i]) if r[i] else err)
    print("worst relative error vs TA-Lib:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert np.isfinite(list(worst.values())).all()


@pytest.mark.parametrize("spec", [indicators.DEFAULT_SPEC,
                                  indicators.IndicatorSpec(sma=(7, 30), ema=5, rsi=3, macd=(5, 13, 4), bb=(10, 1.5))],
                         ids=["default", "custom"])
def test_running_indicators_equal_pandas_ta_at_every_bar(candles_path, spec):
    """Every bar sees the values pandas-ta computes over all bars so far (its vectorised use, the
    batch path), warm-up included: the same definitions and seeds. Bound: 1e-12 relative (MACD:
    1e-12 × close), i.e. rounding; a value is missing in one exactly where it is in the other."""
    c = pd.read_csv(candles_path, nrows=1500)["close"].tolist()
    state = indicators.new_state()
    worst = 0.0
    for i, close in enumerate(c):
        running = indicators.update(state, close, spec)
        if i > 200 and i % 23:
            continue
        batch = indicators.compute(c[: i + 1], spec)
        assert running.keys() == batch.keys()
        for k, v in batch.items():
            assert (running[k] is None) == (v is None), (k, i, running[k], v)
            if v is not None:
                scale = close if k.startswith("macd") else abs(v)
                assert abs(running[k] - v) <= 1e-12 * scale, (k, i, running[k], v)
                worst = max(worst, abs(running[k] - v) / scale if scale else 0.0)
    print(f"worst relative difference running vs pandas-ta: {worst:.1e}")


def test_indicators_are_none_until_enough_bars():
    out = indicators.compute([100.0 + i for i in range(30)])
    assert out["sma_20"] is not None and out["sma_50"] is None


def test_rules_score_and_action():
    up = {"close": 105, "sma_20": 104, "sma_50": 100, "sma_20_prev": 99, "sma_50_prev": 100,
          "macd_hist": 0.5, "rsi_14": 55, "bb_lower": 90, "bb_upper": 110}
    sig = signals.evaluate(up)
    assert sig.action == "BUY" and sig.score == 100.0 and sig.confidence == 1.0
    assert "golden cross SMA20/SMA50" in sig.reasons
    mixed = dict(up, sma_20_prev=105, sma_50_prev=100, macd_hist=-0.5, rsi_14=75)
    sig = signals.evaluate(mixed)
    # trend +30, momentum -20, RSI overbought -15: net -5 of 65 sided
    assert sig.action == "SELL" and sig.score == pytest.approx(100 * 5 / 65, abs=0.01)
    assert signals.evaluate({"close": 1.0}).action == "HOLD"


def test_consensus_score_is_confidence_weighted():
    sigs = [{"agent": "a", "action": "BUY", "score": 80, "confidence": 1.0},
            {"agent": "b", "action": "SELL", "score": 60, "confidence": 0.5}]
    score, eff = cs.score(sigs, {"a": 2.0})
    assert score == pytest.approx((2 * 1 * 80 - 1 * 0.5 * 60) / (2 * 1 + 1 * 0.5))
    assert eff == {"a": 2.0, "b": 0.5}
    assert cs.decide(score, 2, 70, 2) is (abs(score) > 70)
    assert cs.score([], {}) == (0.0, {})
    assert cs.action_of(-3) == "SELL"


def _sig(ts, agent="a", action="BUY", score=90.0):
    return {"ts": ts, "agent": agent, "action": action, "score": score, "confidence": 1.0}


def _add(state, sid, sig, min_agents=2):
    return cs.add(state, sid, sig, 5_000, {}, 70.0, min_agents)


def test_consensus_windows_join_signals_within_the_interval_whatever_the_bucket():
    # 4.0 s and 6.0 s straddle a 5 s bucket boundary: a tumbling window would split them.
    st = cs.new_state()
    assert _add(st, "1", _sig(4_000)) == ([], True)
    decisions, ok = _add(st, "2", _sig(6_000, "b"))
    assert ok and [k for k, _ in decisions] == ["approved"] and decisions[0][1]["anchor"] == 4_000
    # later signals within the window join but never decide again
    assert _add(st, "3", _sig(8_500, "c")) == ([], True)
    assert _add(st, "3", _sig(8_500, "c")) == ([], False)  # the same signal again
    assert set(st["open"]["signals"]) == {"1", "2", "3"}


def test_consensus_windows_close_on_event_time_and_decide_once():
    st = cs.new_state()
    _add(st, "1", _sig(10_000))
    decisions, _ = _add(st, "2", _sig(16_000, "b"))  # 6 s apart: no join; the first window fails
    assert [(k, w["anchor"]) for k, w in decisions] == [("failed", 10_000)]
    assert st["open"]["anchor"] == 16_000 and st["closed_until"] == 15_001
    assert _add(st, "3", _sig(14_000, "c")) == ([], False)  # belongs to a closed window: late
    # an earlier signal may still join when it is within the interval of every member
    assert _add(st, "4", _sig(15_500, "b"))[1] is True and st["open"]["first"] == 15_500
    assert cs.due(st, 21_000, 5_000, 0) and not cs.due(st, 20_400, 5_000, 0)
    failed = cs.close(st, 5_000)
    assert failed["anchor"] == 16_000 and st["open"] is None


def test_consensus_single_agent_and_min_agents():
    st = cs.new_state()
    decisions, _ = _add(st, "1", _sig(0, "a"), min_agents=1)
    assert [k for k, _ in decisions] == ["approved"]
    st = cs.new_state()
    _add(st, "1", _sig(0, "a"))
    assert _add(st, "2", _sig(1_000, "a")) == ([], True)  # the same agent twice is one agent
    assert cs.close(st, 5_000)["anchor"] == 0


def test_sentiment_windows_share_velocity_and_signal():
    from domain import sentiment as sm

    st = sm.new_state()
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    for m in range(60):  # an hour of neutral sentiment
        sm.add(st, t0 + m * 60_000, 50.0, 100, 1.0)
    for i in range(30):  # then a bullish burst in the last minute
        sm.add(st, t0 + 59 * 60_000 + i * 1_000, 90.0, 100, 1.0)
    stats = sm.windows(st)
    assert stats["5m"].updates == 35 and stats["1h"].updates == 90
    assert stats["5m"].bullish_pct == pytest.approx((4 * 50 + 50 + 30 * 90) / 35)
    assert stats["1h"].bullish_pct == pytest.approx((60 * 50 + 30 * 90) / 90)
    vel = sm.velocity(stats)
    assert vel == pytest.approx(stats["5m"].bullish_pct - stats["1h"].bullish_pct)
    sig = sm.evaluate(stats, 60, 5, 20)
    assert sig.action == "BUY" and sig.confidence == 1.0
    assert sig.score == pytest.approx(min(100, 2 * (stats["5m"].bullish_pct - 50) + 2 * vel), abs=0.01)
    # followers weigh in with diminishing returns
    assert sm.weight(9, 1.0) == pytest.approx(2.0) and sm.weight(999_999, 1.0) == pytest.approx(7.0)
    # buckets older than the hour are pruned; updates older than the window are refused
    assert min(int(k) for k in st["buckets"]) == t0
    sm.add(st, t0 + 61 * 60_000, 50.0, 0, 1.0)
    assert min(int(k) for k in st["buckets"]) == t0 + 2 * 60_000
    assert sm.add(st, t0, 50.0, 0, 1.0) is False


def test_correlation_running_sums_match_numpy_over_a_sliding_hour():
    import numpy as np

    from domain import correlation as cr

    rng = np.random.default_rng(7)
    st = cr.new_state()
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    price, xs, ys, got = 40_000.0, {}, {}, []
    cr.add_close(st, t0 - 60_000, price)
    for m in range(150):
        minute = t0 + m * 60_000
        share = float(rng.uniform(20, 80))
        if m % 17 != 5:  # some minutes without sentiment: no point for them
            got += cr.add_sentiment(st, minute + 1_000, share, 0, 1.0)
            xs[minute] = share
        ret = (share - 50) * 1e-4 + float(rng.normal(0, 2e-3))
        new_price = price * (1 + ret)
        got += cr.add_close(st, minute, new_price)
        ys[minute] = new_price / price - 1
        price = new_price
    got += cr.add_sentiment(st, t0 + 150 * 60_000 + 1, 50.0, 0, 1.0)  # closes the last minute
    assert len(got) == len(xs)
    for p in got:
        keys = [k for k in xs if p.minute - 3_600_000 < k <= p.minute]
        assert p.points == len(keys)
        if p.points >= 3:
            ref = np.corrcoef([xs[k] for k in keys], [ys[k] for k in keys])[0, 1]
            assert p.r == pytest.approx(ref, abs=1e-9)
    assert got[-1].r > 0.7  # the returns were built to follow sentiment
    assert cr.implied_action(0.8, 70) == "BUY" and cr.implied_action(0.8, 30) == "SELL"
    assert cr.implied_action(-0.8, 30) == "BUY"


def test_portfolio_cash_positions_and_realised_pnl():
    pf = new_portfolio(1_000.0)
    assert apply_fill(pf, "BTC", "BUY", 2, 100, 1.0, 0, "o1") is None
    apply_fill(pf, "BTC", "BUY", 2, 110, 1.0, 1_000, "o2")
    assert pf["positions"]["BTC"]["size"] == 4 and pf["positions"]["BTC"]["entry_price"] == 105
    closed = apply_fill(pf, "BTC", "SELL", 4, 120, 2.0, 61_000, "o3")
    assert closed.pnl_usd == pytest.approx(4 * 15 - 4.0) and closed.duration_s == 61
    assert "BTC" not in pf["positions"]
    assert pf["cash"] == pytest.approx(1_000 - 200 - 220 + 480 - 4)
    assert pf["realised_pnl"] == pytest.approx(60) and pf["fees_paid"] == pytest.approx(4)
    assert pf["applied"] == ["o1", "o2", "o3"]


def test_portfolio_flip_and_short_marking():
    pf = new_portfolio(1_000.0)
    apply_fill(pf, "ETH", "SELL", 1, 100, 0.0, 0, "a")
    m = mark(pf, {"ETH": 90})
    assert m["equity"] == pytest.approx(1_010) and m["positions"]["ETH"]["unrealised_pnl"] == pytest.approx(10)
    closed = apply_fill(pf, "ETH", "BUY", 3, 90, 3.0, 5_000, "b")
    assert closed.pnl_usd == pytest.approx(10 - 1.0)  # a third of the fee belongs to the closing part
    assert pf["positions"]["ETH"]["size"] == pytest.approx(2) and pf["positions"]["ETH"]["entry_price"] == 90
    assert mark(pf, {})["leverage"] == pytest.approx(180 / (pf["cash"] + 180))


def test_fixed_fraction_sizing():
    assert target_order(0.0, 10_000, 100, "BUY", 0.1, 10) == ("BUY", pytest.approx(10))
    assert target_order(10.0, 10_000, 100, "SELL", 0.1, 10) == ("SELL", pytest.approx(20))
    assert target_order(10.0, 10_000, 100, "BUY", 0.1, 10) is None
    assert target_order(3.0, 10_000, 100, "BUY", 0.1, 10) is None  # already long: no rebalancing
    assert target_order(-3.0, 10_000, 100, "BUY", 0.1, 10) == ("BUY", pytest.approx(13))
    assert target_order(0.0, 50, 100, "BUY", 0.1, 10) is None  # 5 USD < minimum notional
    assert target_order(0.0, 10_000, 100, "HOLD", 0.1, 10) is None


def test_daily_pnl_rolls_at_utc_midnight():
    pf = new_portfolio(100.0)
    assert roll_day(pf, 86_400_000 * 3 + 5, 100.0) == 0
    assert roll_day(pf, 86_400_000 * 3 + 10, 104.0) == 4
    assert roll_day(pf, 86_400_000 * 4, 104.0) == 0


def test_real_sample_reads_in_event_time_order(sample_path):
    rows = read_ticks(sample_path)
    assert len(rows) == 35389
    assert {r.token for r in rows} == {"BTC", "ETH"}
    assert all(a.ts_ms <= b.ts_ms for a, b in zip(rows, rows[1:]))
    assert all(r.price > 0 and r.size and r.size > 0 and not math.isnan(r.price) for r in rows)
