"""Consensus agent, a windowed join of ``signal.generated`` per token on event time →
``trade.consensus_approved`` / ``signal.consensus_failed``.

Window semantics are those of :mod:`domain.consensus` (interval join: signals within
CONSENSUS_WINDOW_MS of each other). Windows live in the ``consensus_windows`` table (changelog
backed, keyed by token, co-partitioned with ``signal.generated``) and are pruned explicitly, not
by a Faust windowed table, whose expiry runs on the wall clock and would break replay.

Closing: a window closes when a signal of its token falls beyond it, or when the partition's
stream time (the latest signal time seen on the partition, as in Kafka Streams) passes its end
plus CONSENSUS_GRACE_MS. Each window decides once: decision ids derive from (token, window
anchor), the window's ``decided`` flag is in the table, so a redelivered signal, a restart in the
middle of a window or a replay yields no second decision (and the execution engine places one
order per decision id anyway).
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, dead_letter, emit, settings, valid_events
from app.metrics import LATE_EVENTS, PROCESSING_SECONDS, TICK_TO_DECISION_SECONDS
from domain import consensus as cs
from models.events import ConsensusDecision, SignalError, SignalGenerated, derived_id
from tables import consensus_windows

_latency = PROCESSING_SECONDS.labels("consensus")

#: partition -> stream time (ms); partition -> {token: window first ts} of open windows. Both are
#: rebuilt from the table after an assignment (``_rebuild``), so they are caches, not state.
_stream_time: dict[int, int] = {}
_open: dict[int, dict[str, int]] = {}
_stale = True


@app.on_partitions_assigned.connect
async def _assigned(app_, assigned, **kwargs) -> None:
    global _stale
    _stale = True


def _rebuild() -> None:
    global _stale
    _open.clear()
    for key, state in consensus_windows.items():
        w = state.get("open")
        if w is not None and state.get("partition") is not None:
            token = key.decode() if isinstance(key, bytes) else key
            _open.setdefault(state["partition"], {})[token] = w["first"]
    _stale = False


def _state(token: str) -> dict:
    state = consensus_windows.get(token)
    if state is None or "open" not in state:
        # none yet, or the tumbling-window layout of earlier versions: keep its watermark only
        return cs.new_state() | ({"closed_until": state.get("closed_until", 0)} if state else {})
    return state


def _decision(token: str, w: dict, approved: bool, ts: int) -> ConsensusDecision:
    wms = settings.consensus_window_ms
    sigs = list(w["signals"].values())
    score, weights = cs.score(sigs, settings.agent_weights)
    last = max(sigs, key=lambda s: s["ts"])
    return ConsensusDecision(
        event_id=derived_id("consensus", token, w["anchor"]), timestamp=ts, token=token, source="consensus",
        event_type="trade.consensus_approved" if approved else "signal.consensus_failed",
        correlation_id=last.get("correlation_id"), ingest_ms=last.get("ingest_ms"),
        consensus_score=score, contributing_agents=sorted({s["agent"] for s in sigs}),
        recommended_action=cs.action_of(score), signal_ids=list(w["signals"]), weights=weights,
        window_start=w["first"], window_end=w["first"] + wms, price=last.get("price"),
        confidence=cs.confidence(sigs, settings.agent_weights),
        reason=None if approved else f"|score| {abs(score):.1f} <= {settings.consensus_threshold} "
                                     f"or agents {len(weights)} < {settings.consensus_min_agents}")


def on_signal(sig: SignalGenerated, partition: int = 0) -> list[ConsensusDecision]:
    """Add one signal to its token's window and close the partition's windows that stream time
    has passed; returns the decisions to emit."""
    if _stale:
        _rebuild()
    wms = settings.consensus_window_ms
    out: list[ConsensusDecision] = []
    st = _stream_time[partition] = max(_stream_time.get(partition, 0), sig.timestamp)
    opened = _open.setdefault(partition, {})
    for token in [t for t, first in opened.items() if t != sig.token and st > first + wms + settings.consensus_grace_ms]:
        state = consensus_windows.get(token)
        del opened[token]
        if state is None:
            continue
        failed = cs.close(state, wms)
        if failed is not None:
            out.append(_decision(token, failed, False, failed["first"] + wms))
        consensus_windows[token] = state

    state = _state(sig.token)
    state["partition"] = partition
    entry = {"agent": sig.agent, "action": sig.action, "score": sig.score, "confidence": sig.confidence,
             "price": sig.price, "ts": sig.timestamp,
             "correlation_id": str(sig.correlation_id) if sig.correlation_id else None, "ingest_ms": sig.ingest_ms}
    decisions, accepted = cs.add(state, str(sig.event_id), entry, wms, settings.agent_weights,
                                 settings.consensus_threshold, settings.consensus_min_agents)
    if not accepted:
        LATE_EVENTS.labels("consensus").inc()
    for kind, w in decisions:
        if kind == "failed":
            out.append(_decision(sig.token, w, False, w["first"] + wms))
        else:
            out.append(_decision(sig.token, w, True, sig.timestamp))
    if cs.due(state, st, wms, settings.consensus_grace_ms) and state["open"]["decided"]:
        cs.close(state, wms)  # nothing left to decide: free it
    if state["open"] is not None:
        opened[sig.token] = state["open"]["first"]
    else:
        opened.pop(sig.token, None)
    if decisions or accepted:
        consensus_windows[sig.token] = state
    return out


@app.agent(TOPICS["signal.generated"], name="consensus")
async def consensus(stream):
    async for event, sig in valid_events(stream, (SignalGenerated, SignalError), "consensus"):
        t0 = time.perf_counter()
        if event.key is not None and event.key != sig.token.encode():
            await dead_letter(event.message, f"message key {event.key!r} does not match token {sig.token!r}",
                              "consensus")
            continue
        if isinstance(sig, SignalError):
            continue
        for decision in on_signal(sig, event.message.partition):
            await emit(decision)
            if decision.ingest_ms:
                TICK_TO_DECISION_SECONDS.observe(max(0.0, time.time() - decision.ingest_ms / 1000.0))
        _latency.observe(time.perf_counter() - t0)
