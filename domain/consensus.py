"""Consensus of the signals of one token that lie within a 5 s event-time interval.

score = Σ(w_agent × confidence × signed score) / Σ(w_agent × confidence), where the signed score
is +score for BUY, -score for SELL and 0 for HOLD; the result lies in -100..100 and its sign gives
the recommended action. The decision's confidence is the confidence-weighted mean of the signals'
confidences, Σ(w × confidence²) / Σ(w × confidence): the weights the score gives each signal, so a
confident signal counts for more both in the score and in how sure the decision is. A window
approves when |score| exceeds the threshold with at least ``min_agents`` distinct agents and a
confidence of at least ``min_confidence``: a lone signal scores ±100 whatever its confidence (the
confidence cancels out of the score), so the confidence bound is what keeps a weak one out.

Windows have interval-join semantics (like Kafka Streams' ``JoinWindows``): a window opens at its
first signal and takes every signal whose time lies within ``window_ms`` of all its others, so two
signals 2 s apart always meet (no bucket boundary can split them) and two signals 6 s apart never
do. A window closes on event time only: when a signal of the token falls beyond it, or when the
stream time of its partition (the latest signal time seen there) passes its end plus a grace.
Each window decides once: approved as soon as it passes, failed when it closes without passing.

The per-token state is a JSON dict (a Faust table value); these functions are pure so the
backtester and tests can use them without Faust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def score(signals: Iterable[Mapping], weights: Mapping[str, float], default_weight: float = 1.0
          ) -> tuple[float, dict[str, float]]:
    """Confidence-weighted consensus score of signals (dicts with ``agent``, ``action``, ``score``,
    ``confidence``). Returns ``(score, effective weight per agent)``; ``(0.0, {})`` when no signal
    has weight. Agents weighted 0 are left out entirely."""
    num = den = 0.0
    eff: dict[str, float] = {}
    for s in signals:
        w = weights.get(s["agent"], default_weight) * s["confidence"]
        if weights.get(s["agent"], default_weight) <= 0:
            continue  # an agent weighted 0 is switched off: it neither votes nor counts
        sign = 1.0 if s["action"] == "BUY" else -1.0 if s["action"] == "SELL" else 0.0
        num += w * sign * s["score"]
        den += w
        eff[s["agent"]] = eff.get(s["agent"], 0.0) + w
    if den <= 0:
        return 0.0, {}
    return round(num / den, 4), eff


def decide(score_value: float, agents: int, threshold: float, min_agents: int,
           confidence_value: float | None = None, min_confidence: float = 0.0) -> bool:
    """|score| above ``threshold``, at least ``min_agents`` agents and a confidence (0-1) of at
    least ``min_confidence``."""
    return (abs(score_value) > threshold and agents >= min_agents
            and (confidence_value or 0.0) >= min_confidence)


def action_of(score_value: float) -> str:
    return "BUY" if score_value > 0 else "SELL" if score_value < 0 else "HOLD"


def confidence(signals: Iterable[Mapping], weights: Mapping[str, float], default_weight: float = 1.0) -> float | None:
    """Confidence-weighted mean confidence (0-1) of the signals, Σ(w × c²) / Σ(w × c) with ``w``
    the agent's weight; agents weighted 0 are left out. ``None`` without a signal of positive
    weight and confidence."""
    num = den = 0.0
    for s in signals:
        w = weights.get(s["agent"], default_weight)
        if w <= 0:
            continue
        c = s["confidence"]
        num += w * c * c
        den += w * c
    return round(num / den, 6) if den > 0 else None


# ---------------------------------------------------------------- windows
def new_state() -> dict:
    """``open``: the open window or None; ``closed_until``: signals before this time (ms) are
    late; ``partition``: the partition the token's signals arrive on."""
    return {"open": None, "closed_until": 0, "partition": None}


def _new_window(sig_id: str, sig: dict) -> dict:
    # ``anchor`` (the first signal's time) names the window for good, even if an earlier signal
    # joins later; decision ids derive from it.
    return {"anchor": sig["ts"], "first": sig["ts"], "last": sig["ts"], "signals": {sig_id: sig}, "decided": False}


def close(state: dict, window_ms: int) -> dict | None:
    """Close the open window; returns it when it closes undecided (a failure to report)."""
    w = state["open"]
    if w is None:
        return None
    state["open"] = None
    state["closed_until"] = max(state["closed_until"], w["first"] + window_ms + 1)
    return None if w["decided"] else w


def due(state: dict, stream_time: int, window_ms: int, grace_ms: int) -> bool:
    """Whether the partition's stream time has passed the open window's end plus the grace."""
    w = state["open"]
    return w is not None and stream_time > w["first"] + window_ms + grace_ms


def add(state: dict, sig_id: str, sig: dict, window_ms: int, weights: Mapping[str, float],
        threshold: float, min_agents: int, min_confidence: float = 0.0) -> tuple[list[tuple[str, dict]], bool]:
    """Add one signal (dict with ``ts``, ``agent``, ``action``, ``score``, ``confidence``);
    ``min_confidence`` is the decision confidence (:func:`confidence`) a window needs to approve.

    Returns ``(decisions, accepted)``: decisions are ``("failed", window)`` for a window this
    signal closed and ``("approved", window)`` when this signal makes its window pass;
    ``accepted`` is False for a late signal (before ``closed_until``, or too early to join the
    open window) or one already counted.
    """
    ts = sig["ts"]
    if ts < state["closed_until"]:
        return [], False
    out: list[tuple[str, dict]] = []
    w = state["open"]
    if w is not None:
        if sig_id in w["signals"]:
            return [], False
        if ts - w["first"] > window_ms:
            failed = close(state, window_ms)
            if failed is not None:
                out.append(("failed", failed))
            w = None
        elif w["last"] - ts > window_ms:
            return out, False  # earlier than the open window can reach
    if w is None:
        w = state["open"] = _new_window(sig_id, sig)
    else:
        w["signals"][sig_id] = sig
        w["first"], w["last"] = min(w["first"], ts), max(w["last"], ts)
    if not w["decided"]:
        value, eff = score(w["signals"].values(), weights)
        if decide(value, len(eff), threshold, min_agents, confidence(w["signals"].values(), weights), min_confidence):
            w["decided"] = True
            out.append(("approved", w))
    return out, True
