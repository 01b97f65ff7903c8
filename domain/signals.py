"""Rule-based trading signal from indicator values.

Each rule votes +1 (BUY), -1 (SELL) or 0 with a weight; rules whose indicators are not yet
available do not vote and lower the confidence.

- trend (30): SMA(20) above / below SMA(50);
- cross (20): SMA(20) crossed SMA(50) on this bar (golden / death cross);
- momentum (20): MACD histogram above / below zero;
- RSI (15): RSI(14) below 30 (oversold, BUY) / above 70 (overbought, SELL);
- Bollinger (15): close below the lower band (BUY) / above the upper band (SELL).

``score`` = 100 × |Σ vote × weight| / Σ weight of the rules that took a side (a neutral rule neither
supports nor opposes), ``action`` its sign (HOLD at 0); ``confidence`` = Σ weight of the rules with
enough data to vote / Σ all weights, so a signal formed before every indicator is warm carries
less weight in the consensus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WEIGHTS = {"trend": 30.0, "cross": 20.0, "momentum": 20.0, "rsi": 15.0, "bollinger": 15.0}


@dataclass(slots=True)
class RuleSignal:
    action: str  # BUY | SELL | HOLD
    score: float  # 0-100
    confidence: float  # 0-1
    reasons: list[str] = field(default_factory=list)


def evaluate(ind: dict[str, float | None]) -> RuleSignal:
    """Apply the rules above to one bar's indicators (keys of :func:`domain.indicators.compute`)."""
    votes: dict[str, int] = {}
    reasons: list[str] = []
    s20, s50 = ind.get("sma_20"), ind.get("sma_50")
    if s20 is not None and s50 is not None:
        votes["trend"] = 1 if s20 > s50 else -1 if s20 < s50 else 0
        reasons.append(f"SMA20 {'>' if s20 > s50 else '<' if s20 < s50 else '='} SMA50")
        p20, p50 = ind.get("sma_20_prev"), ind.get("sma_50_prev")
        if p20 is not None and p50 is not None:
            if p20 <= p50 and s20 > s50:
                votes["cross"] = 1
                reasons.append("golden cross SMA20/SMA50")
            elif p20 >= p50 and s20 < s50:
                votes["cross"] = -1
                reasons.append("death cross SMA20/SMA50")
            else:
                votes["cross"] = 0
    hist = ind.get("macd_hist")
    if hist is not None:
        votes["momentum"] = 1 if hist > 0 else -1 if hist < 0 else 0
        reasons.append(f"MACD histogram {hist:+.4g}")
    rsi = ind.get("rsi_14")
    if rsi is not None:
        votes["rsi"] = 1 if rsi < 30 else -1 if rsi > 70 else 0
        if votes["rsi"]:
            reasons.append(f"RSI14 {rsi:.1f} {'oversold' if rsi < 30 else 'overbought'}")
    close, lo, up = ind.get("close"), ind.get("bb_lower"), ind.get("bb_upper")
    if close is not None and lo is not None and up is not None:
        votes["bollinger"] = 1 if close < lo else -1 if close > up else 0
        if votes["bollinger"]:
            reasons.append("close below lower Bollinger band" if close < lo else "close above upper Bollinger band")
    total = sum(WEIGHTS.values())
    informed = sum(WEIGHTS[k] for k in votes)
    if informed == 0:
        return RuleSignal("HOLD", 0.0, 0.0, ["not enough bars"])
    sided = sum(WEIGHTS[k] for k, v in votes.items() if v)
    net = sum(WEIGHTS[k] * v for k, v in votes.items())
    score = round(100.0 * abs(net) / sided, 2) if sided else 0.0
    action = "BUY" if net > 0 else "SELL" if net < 0 else "HOLD"
    return RuleSignal(action, score, round(informed / total, 4), reasons)


def sma_cross(ind: dict[str, float | None]) -> RuleSignal:
    """The textbook SMA(20)/SMA(50) crossover: BUY (score 100) on the bar SMA(20) crosses above
    SMA(50), SELL on the bar it crosses below, HOLD otherwise. Confidence 1. Used for backtests
    that must match other tools' SMA-cross strategies."""
    s20, s50, p20, p50 = (ind.get(k) for k in ("sma_20", "sma_50", "sma_20_prev", "sma_50_prev"))
    if None in (s20, s50, p20, p50):
        return RuleSignal("HOLD", 0.0, 0.0, ["not enough bars"])
    if p20 < p50 and s20 > s50:
        return RuleSignal("BUY", 100.0, 1.0, ["golden cross SMA20/SMA50"])
    if p20 > p50 and s20 < s50:
        return RuleSignal("SELL", 100.0, 1.0, ["death cross SMA20/SMA50"])
    return RuleSignal("HOLD", 0.0, 1.0, [])


RULE_SETS = {"default": evaluate, "sma_cross": sma_cross}
