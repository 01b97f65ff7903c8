"""Consensus over a tumbling event-time window of signals (SPEC story 2).

score = Σ(w_agent × confidence × signed score) / Σ(w_agent × confidence), where the signed score
is +score for BUY, -score for SELL and 0 for HOLD; the result lies in -100..100 and its sign gives
the recommended action. A window approves when |score| exceeds the threshold with at least
``min_agents`` distinct agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def window_start(ts_ms: int, window_ms: int) -> int:
    return ts_ms - ts_ms % window_ms


def score(signals: Iterable[Mapping], weights: Mapping[str, float], default_weight: float = 1.0
          ) -> tuple[float, dict[str, float]]:
    """Confidence-weighted consensus score of signals (dicts with ``agent``, ``action``, ``score``,
    ``confidence``). Returns ``(score, effective weight per agent)``; ``(0.0, {})`` when no signal
    has weight."""
    num = den = 0.0
    eff: dict[str, float] = {}
    for s in signals:
        w = weights.get(s["agent"], default_weight) * s["confidence"]
        sign = 1.0 if s["action"] == "BUY" else -1.0 if s["action"] == "SELL" else 0.0
        num += w * sign * s["score"]
        den += w
        eff[s["agent"]] = eff.get(s["agent"], 0.0) + w
    if den <= 0:
        return 0.0, {}
    return round(num / den, 4), eff


def decide(score_value: float, agents: int, threshold: float, min_agents: int) -> bool:
    return abs(score_value) > threshold and agents >= min_agents


def action_of(score_value: float) -> str:
    return "BUY" if score_value > 0 else "SELL" if score_value < 0 else "HOLD"


def confidence(signals: Iterable[Mapping], weights: Mapping[str, float], default_weight: float = 1.0) -> float | None:
    """Agent-weight-averaged confidence (0-1) of the signals; ``None`` without signals."""
    num = den = 0.0
    for s in signals:
        w = weights.get(s["agent"], default_weight)
        num += w * s["confidence"]
        den += w
    return round(num / den, 6) if den > 0 else None
