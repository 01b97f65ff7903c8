"""Consensus agent: ``signal.generated`` per token over tumbling event-time windows
(CONSENSUS_WINDOW_MS, default 5 s) → ``trade.consensus_approved`` / ``signal.consensus_failed``.

Windows live in a plain table pruned explicitly by event time, not a Faust windowed table (its
expiry runs on the wall clock and would break replay). A window closes when a signal of a later
window arrives for the token; each window decides once: an approval as soon as the score passes
the threshold, a failure when it closes without one. Decision ids derive from (token, window), so
a replayed or redelivered window yields the same id and the execution engine places one order.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, dead_letter, emit, settings
from app.metrics import LATE_EVENTS, PROCESSING_SECONDS
from domain import consensus as cs
from models.events import (ConsensusDecision, EventError, SignalError, SignalGenerated, decode_event,
                           derived_id)
from tables import consensus_windows

_latency = PROCESSING_SECONDS.labels("consensus")


def _decision(token: str, start: int, window: dict, approved: bool, ts: int) -> ConsensusDecision:
    sigs = list(window["signals"].values())
    score, weights = cs.score(sigs, settings.agent_weights)
    last = max(sigs, key=lambda s: s["ts"]) if sigs else {}
    return ConsensusDecision(
        event_id=derived_id("consensus", token, start), timestamp=ts, token=token, source="consensus",
        event_type="trade.consensus_approved" if approved else "signal.consensus_failed",
        correlation_id=last.get("correlation_id"), ingest_ms=last.get("ingest_ms"),
        consensus_score=score, contributing_agents=sorted({s["agent"] for s in sigs}),
        recommended_action=cs.action_of(score), signal_ids=list(window["signals"]), weights=weights,
        window_start=start, window_end=start + settings.consensus_window_ms, price=last.get("price"),
        confidence=cs.confidence(sigs, settings.agent_weights),
        reason=None if approved else f"|score| {abs(score):.1f} <= {settings.consensus_threshold} "
                                     f"or agents {len(weights)} < {settings.consensus_min_agents}")


async def on_signal(sig: SignalGenerated) -> list[ConsensusDecision]:
    """Add one signal to its window; return the decisions it triggers (closed windows' failures
    and this window's approval)."""
    wms = settings.consensus_window_ms
    state = consensus_windows.get(sig.token) or {"closed_until": 0, "windows": {}}
    if sig.timestamp < state["closed_until"]:
        LATE_EVENTS.labels("consensus").inc()
        return []
    out: list[ConsensusDecision] = []
    windows: dict = state["windows"]
    for key in sorted(windows, key=int):
        start = int(key)
        if start + wms <= sig.timestamp:
            w = windows.pop(key)
            if not w["decided"]:
                out.append(_decision(sig.token, start, w, False, start + wms))
            state["closed_until"] = max(state["closed_until"], start + wms)
    start = cs.window_start(sig.timestamp, wms)
    w = windows.setdefault(str(start), {"signals": {}, "decided": False})
    sid = str(sig.event_id)
    if sid not in w["signals"]:
        w["signals"][sid] = {"agent": sig.agent, "action": sig.action, "score": sig.score,
                             "confidence": sig.confidence, "price": sig.price, "ts": sig.timestamp,
                             "correlation_id": str(sig.correlation_id) if sig.correlation_id else None,
                             "ingest_ms": sig.ingest_ms}
        if not w["decided"]:
            score, weights = cs.score(w["signals"].values(), settings.agent_weights)
            if cs.decide(score, len(weights), settings.consensus_threshold, settings.consensus_min_agents):
                w["decided"] = True
                out.append(_decision(sig.token, start, w, True, sig.timestamp))
    consensus_windows[sig.token] = state
    return out


@app.agent(TOPICS["signal.generated"], name="consensus")
async def consensus(stream):
    async for event in stream.events():
        t0 = time.perf_counter()
        try:
            sig = decode_event(event.value, (SignalGenerated, SignalError))
            if event.key is not None and event.key != sig.token.encode():
                raise EventError(f"message key {event.key!r} does not match token {sig.token!r}")
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "consensus")
            continue
        if isinstance(sig, SignalError):
            continue
        for decision in await on_signal(sig):
            await emit(decision)
        _latency.observe(time.perf_counter() - t0)
