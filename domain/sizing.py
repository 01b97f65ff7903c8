"""Position sizing: fixed fraction of equity or (fractional, capped) Kelly, chosen per strategy.

Kelly fraction for a bet won with probability ``p`` that pays ``b`` per unit risked and loses the
stake otherwise: ``f* = p - (1 - p) / b`` (J. L. Kelly Jr., "A New Interpretation of Information
Rate", Bell System Technical Journal 35(4), 1956; E. O. Thorp, "The Kelly criterion in blackjack,
sports betting and the stock market", 2006, §7). Full Kelly is too aggressive for estimated ``p``,
so the fraction used is ``min(cap, multiplier × max(f*, 0))``.

``p`` comes from the decision: ``p = 0.5 + 0.5 × |consensus score| / 100 × confidence`` (a
unanimous, fully confident 100-score decision is a sure bet; a score of 0 is a coin flip); ``b``,
the payoff ratio, is set per strategy (the researcher's estimate from backtests).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SizingRule(BaseModel):
    """How one strategy sizes: ``fraction`` of equity as target position notional (fixed), or Kelly
    with ``payoff_ratio`` b, ``kelly_multiplier`` (0.5 = half Kelly) and ``kelly_cap`` (max
    fraction of equity). Confidence above ``boost_confidence`` multiplies the fraction by
    ``boost_multiplier``."""

    method: Literal["fixed", "kelly"] = "fixed"
    fraction: float = Field(0.10, gt=0, le=10)
    payoff_ratio: float = Field(1.0, gt=0)
    kelly_multiplier: float = Field(0.5, gt=0, le=1)
    kelly_cap: float = Field(0.25, gt=0, le=10)
    boost_confidence: float = Field(0.8, ge=0, le=1)
    boost_multiplier: float = Field(1.5, ge=1, le=5)


def kelly_fraction(p: float, b: float) -> float:
    """Kelly's optimal fraction ``p - (1 - p) / b`` (may be negative: no edge)."""
    return p - (1.0 - p) / b


def win_probability(score: float, confidence: float) -> float:
    return 0.5 + 0.5 * min(abs(score), 100.0) / 100.0 * max(0.0, min(confidence, 1.0))


def equity_fraction(rule: SizingRule, score: float, confidence: float | None) -> float:
    """Target position notional as a fraction of equity for a decision with consensus ``score``
    (-100..100) and ``confidence`` (0-1; ``None`` when the decision carries none: Kelly then uses
    the score alone and there is no boost). 0 means do not trade."""
    if rule.method == "kelly":
        p = win_probability(score, 1.0 if confidence is None else confidence)
        f = min(rule.kelly_cap, rule.kelly_multiplier * max(0.0, kelly_fraction(p, rule.payoff_ratio)))
    else:
        f = rule.fraction
    if confidence is not None and confidence > rule.boost_confidence:
        f *= rule.boost_multiplier
    return f
