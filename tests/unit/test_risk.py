"""Margin, liquidation, constraints, sizing and the paper exchange: pure unit tests.

The liquidation examples are worked by hand from HyperLiquid's documented formula
(https://hyperliquid.gitbook.io/hyperliquid-docs/trading/liquidations):
liq = price - side × margin_available / |size| / (1 - mmr × side), mmr = 1 / (2 × max leverage).
"""

from __future__ import annotations

import random

import pytest

from domain.risk import (DEFAULT_ASSETS, AssetSpec, Limits, check_order, evaluate, liquidation_price, risk_score,
                         round_price, round_size)
from domain.sizing import SizingRule, equity_fraction, kelly_fraction
from exchanges.base import Order
from exchanges.paper import PaperExchange

BTC, ETH = DEFAULT_ASSETS["BTC"], DEFAULT_ASSETS["ETH"]


def test_maintenance_rate_is_half_the_initial_margin_at_max_leverage():
    assert BTC.maintenance_rate == pytest.approx(0.0125)  # 40x -> 1.25 %
    assert ETH.maintenance_rate == pytest.approx(0.02)  # 25x -> 2 %
    assert AssetSpec(3, 0).maintenance_rate == pytest.approx(1 / 6)  # the docs' 16.7 % for 3x


def test_cross_long_5x_btc_hand_worked():
    # 10 BTC long at 50,000 on 100,000 equity (cash -400,000): notional 500,000, leverage 5.
    # maintenance = 500,000 × 1.25 % = 6,250; margin available = 100,000 - 6,250 = 93,750
    # liq = 50,000 - 93,750 / 10 / (1 - 0.0125) = 50,000 - 9,493.67 = 40,506.33
    r = evaluate(-400_000.0, {"BTC": {"size": 10.0, "entry_price": 50_000.0}}, {"BTC": 50_000.0},
                 DEFAULT_ASSETS, max_leverage=3)
    assert r.equity == pytest.approx(100_000) and r.leverage == pytest.approx(5.0)
    assert r.maintenance_required == pytest.approx(6_250) and r.margin_available == pytest.approx(93_750)
    p = r.positions["BTC"]
    assert p.liquidation_price == pytest.approx(40_506.33, abs=0.01)
    assert p.distance_pct == pytest.approx(18.987, abs=0.001) and not p.critical
    # Cross liquidation price does not move with the mark (the equity moves with it): at 45,000 the
    # buffer is (45,000 - 40,506.33) / 45,000 = 9.99 % < 10 %: critical.
    r2 = evaluate(-400_000.0, {"BTC": {"size": 10.0, "entry_price": 50_000.0}}, {"BTC": 45_000.0},
                  DEFAULT_ASSETS, max_leverage=3)
    assert r2.positions["BTC"].liquidation_price == pytest.approx(40_506.33, abs=0.01)
    assert r2.positions["BTC"].distance_pct == pytest.approx(9.986, abs=0.001) and r2.positions["BTC"].critical
    assert r2.risk_score == 100.0


def test_isolated_short_eth_hand_worked():
    # 10 ETH short at 2,000 with 2,000 USD isolated margin (10x). At the entry mark:
    # maintenance = 20,000 × 2 % = 400; available = 2,000 - 400 = 1,600;
    # liq = 2,000 + 1,600 / 10 / (1 + 0.02) = 2,156.86
    pos = {"ETH": {"size": -10.0, "entry_price": 2_000.0, "margin_mode": "isolated", "margin": 2_000.0}}
    r = evaluate(120_000.0, pos, {"ETH": 2_000.0}, DEFAULT_ASSETS, max_leverage=3)
    assert r.positions["ETH"].liquidation_price == pytest.approx(2_156.86, abs=0.01)
    # Marked higher, the isolated margin shrinks by the loss and the same price comes out.
    r2 = evaluate(120_000.0, pos, {"ETH": 2_100.0}, DEFAULT_ASSETS, max_leverage=3)
    assert r2.positions["ETH"].liquidation_price == pytest.approx(2_156.86, abs=0.01)


def test_isolated_at_max_leverage_liquidates_at_one_over_2L_minus_1():
    # A fresh isolated long at max leverage L: margin = N / L, maintenance N / (2L), so
    # liq = P (1 - 1 / (2L - 1)); BTC 40x -> 1.2658 % below entry.
    pos = {"BTC": {"size": 1.0, "entry_price": 80_000.0, "margin_mode": "isolated", "margin": 2_000.0}}
    r = evaluate(0.0, pos, {"BTC": 80_000.0}, DEFAULT_ASSETS, max_leverage=3)
    assert r.positions["BTC"].liquidation_price == pytest.approx(80_000 * (1 - 1 / 79))


def test_at_the_liquidation_price_equity_equals_maintenance():
    rnd = random.Random(7)
    for _ in range(200):
        size = rnd.choice([-1, 1]) * rnd.uniform(0.1, 20)
        entry = rnd.uniform(100, 100_000)
        lev = rnd.uniform(1.5, 20)
        equity = abs(size) * entry / lev
        cash = equity - size * entry
        r = evaluate(cash, {"BTC": {"size": size, "entry_price": entry}}, {"BTC": entry}, DEFAULT_ASSETS, 3)
        liq = r.positions["BTC"].liquidation_price
        if liq is None:
            continue
        at = evaluate(cash, {"BTC": {"size": size, "entry_price": entry}}, {"BTC": liq}, DEFAULT_ASSETS, 3)
        assert at.equity == pytest.approx(at.maintenance_required, rel=1e-9, abs=1e-6)


def test_no_liquidation_price_for_an_unlevered_long_or_flat():
    assert liquidation_price(0, 100, 50, 0.01) is None
    # 1 BTC long fully collateralised: equity = notional; liq would be <= 0
    r = evaluate(0.0, {"BTC": {"size": 1.0, "entry_price": 50_000.0}}, {}, DEFAULT_ASSETS, 3)
    assert r.positions["BTC"].liquidation_price is None and r.positions["BTC"].distance_pct is None


def test_risk_score_parts():
    assert risk_score(1.5, 3, None) == 25.0
    assert risk_score(6, 3, None) == 100.0
    assert risk_score(0.1, 3, 30.0) == 50.0
    assert risk_score(0.1, 3, 9.0) == 100.0


def test_increments_follow_hyperliquid_rules():
    assert round_size(0.123456789, 5) == 0.12345  # down, never up
    assert round_size(0.3, 4) == 0.3
    assert round_price(64_123.456, 5) == 64_123.0  # 5 significant figures
    assert round_price(1.234567, 2) == 1.2346  # 6 - szDecimals = 4 decimals


LIMITS = Limits(max_leverage=3, order_leverage=10, max_position_notional_usd=50_000, daily_loss_limit_pct=5,
                min_order_notional_usd=10)


def check(**kw):
    base = dict(token="BTC", side="BUY", size=0.1, price=50_000.0, reduce_only=False, position=0.0,
                report=evaluate(100_000.0, {}, {}, DEFAULT_ASSETS, 3), daily_pnl=0.0, day_start_equity=100_000.0,
                halted=None, limits=LIMITS, assets=DEFAULT_ASSETS, fee_bps=4.5)
    base.update(kw)
    return check_order(**base)


def test_constraints_each_reject_with_a_reason():
    assert check() is None
    assert check(token="PEPE").violation_type == "unknown_token"
    assert check(size=0.0).violation_type == "size_increment"
    assert check(halted="max_leverage").reason.startswith("trading halted")
    assert check(size=0.0001).violation_type == "min_notional"  # 5 USD
    assert check(daily_pnl=-5_000.0).violation_type == "daily_loss"
    assert check(size=1.1).violation_type == "position_limit"  # 55,000 USD
    # equity 1,000 USD, 10,000 USD initial margin used by 100,000 of ETH at 10x: no room left
    poorer = evaluate(-99_000.0, {"ETH": {"size": 50.0, "entry_price": 2_000.0}}, {}, DEFAULT_ASSETS, 3)
    assert check(size=0.9, report=poorer).violation_type == "balance"
    lim = Limits(3, 10, 1e9, 5, 10)
    assert check(size=7.0, limits=lim).violation_type == "max_leverage"  # 350,000 / 100,000


def test_reduce_only_bypasses_halt_and_exposure_but_must_reduce():
    assert check(side="SELL", size=10.0, reduce_only=True, position=10.0, halted="max_leverage",
                 daily_pnl=-50_000.0) is None
    assert check(side="SELL", size=0.0001, reduce_only=True, position=0.0001) is None  # below min notional
    assert check(side="BUY", size=1.0, reduce_only=True, position=10.0).violation_type == "reduce_only"
    assert check(side="SELL", size=11.0, reduce_only=True, position=10.0).violation_type == "reduce_only"


def test_kelly_and_fixed_fraction_sizing():
    assert kelly_fraction(0.6, 1.0) == pytest.approx(0.2)
    assert kelly_fraction(0.4, 1.0) < 0
    kelly = SizingRule(method="kelly", payoff_ratio=1.0, kelly_multiplier=0.5, kelly_cap=0.25)
    # score 40, confidence 0.5 -> p = 0.5 + 0.5 × 0.4 × 0.5 = 0.6 -> f* = 0.2 -> half Kelly 0.1
    assert equity_fraction(kelly, 40, 0.5) == pytest.approx(0.1)
    assert equity_fraction(kelly, 100, 0.79) <= 0.25  # capped
    assert equity_fraction(kelly, 0, 0.5) == 0.0  # no edge, no trade
    fixed = SizingRule(fraction=0.1)
    assert equity_fraction(fixed, 90, 0.8) == pytest.approx(0.1)
    assert equity_fraction(fixed, 90, 0.81) == pytest.approx(0.15)  # story 5: > 80 % sizes up
    assert equity_fraction(fixed, 90, None) == pytest.approx(0.1)


def order(size, side="BUY", cloid="0x" + "ab" * 16):
    return Order("paper", "BTC", side, size, 50_000.0, cloid, 1_000)


def test_paper_exchange_walks_the_book_with_fees_and_partial_fills():
    ex = PaperExchange(fee_bps=5, slippage_bps=1, level_notional_usd=250_000, level_step_bps=1, max_levels=2)
    small = ex.fill(order(1.0))
    assert small.status == "filled" and len(small.fills) == 1
    assert small.fills[0].price == pytest.approx(50_005.0)
    assert small.fills[0].fee == pytest.approx(50_005.0 * 1.0 * 5 / 1e4)
    big = ex.fill(order(12.0))  # 5 BTC per level, two levels
    assert big.status == "partially_filled" and [f.size for f in big.fills] == [5.0, 5.0]
    assert [f.price for f in big.fills] == pytest.approx([50_005.0, 50_010.0])
    assert "remainder" in big.reason
    sell = ex.fill(order(6.0, "SELL"))
    assert [f.price for f in sell.fills] == pytest.approx([49_995.0, 49_990.0])
    avg = sum(f.price * f.size for f in sell.fills) / 6.0
    assert 50_000 - avg > 50_000 - small.fills[0].price + 10  # slippage grows with size
    with pytest.raises(ValueError):
        ex.fill(order(0.0))


async def test_paper_exchange_executes_a_client_order_id_once_and_can_be_slow():
    ex = PaperExchange(latency_ms=20)
    first = await ex.submit(order(1.0))
    again = await ex.submit(order(1.0))
    assert first.status == "filled" and again.status == "duplicate"
    assert again.fills == first.fills  # the original fills, same ids
