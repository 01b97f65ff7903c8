"""Consensus processor, a windowed join of ``signal.generated`` per token on event time →
``trade.consensus_approved`` / ``signal.consensus_failed``.

Window semantics are those of :mod:`domain.consensus` (interval join: signals within
``window_ms`` of each other). Windows live in the ``windows`` store (keyed by token) and are pruned
explicitly on event time, not by a Faust windowed table, whose expiry runs on the wall clock and
would break replay.

Closing: a window closes when a signal of its token falls beyond it, or when the partition's
stream time (the latest signal time seen on that input partition, as in Kafka Streams) passes its
end plus ``grace_ms``. Each window decides once: decision ids derive from (token, window anchor)
and the window's ``decided`` flag is stored, so a redelivered signal, a restart in the middle of a
window or a replay yields no second decision.

The per-partition stream time and the index of open windows are caches rebuilt from the store
after an assignment or revocation (:meth:`ConsensusProcessor.on_revoked`); stream time restarts
from the next signal.

A signal handed over twice (a worker runs the consensus on the signals its tick step produced and
then reads their copies from ``signal.generated``) is dropped the second time without a trace, as
long as it is among the last ``RECENT`` signals taken; an older repeat finds its window holding it
or closed, changes nothing and counts as late.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from domain import consensus as cs
from models.events import ConsensusDecision, SignalGenerated, derived_id
from processors.base import Store, key_str

#: How many of the last signals taken a consensus remembers, to drop a second copy silently.
RECENT = 10_000


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """``window_ms`` (ms), ``threshold`` (|score|, 0-100), ``min_agents``, ``grace_ms`` (ms), the
    agents' ``weights`` (agents not listed weigh 1; 0 switches an agent off: its signals are
    ignored) and ``min_confidence`` (0-1) of a decision."""

    window_ms: int = 5000
    threshold: float = 70.0
    min_agents: int = 2
    grace_ms: int = 1000
    weights: Mapping[str, float] = field(default_factory=dict)
    min_confidence: float = 0.0

    @classmethod
    def from_settings(cls, s) -> "ConsensusConfig":
        return cls(s.consensus_window_ms, s.consensus_threshold, s.consensus_min_agents, s.consensus_grace_ms,
                   dict(s.agent_weights), s.consensus_min_confidence)


class ConsensusState:
    """``windows``: token -> window state (:func:`domain.consensus.new_state`); caches:
    ``stream_time`` partition -> ms, ``open`` partition -> {token: window start ms}, ``recent``:
    the ids of the last :data:`RECENT` signals taken."""

    def __init__(self, windows: Store):
        self.windows = windows
        self.stream_time: dict = {}
        self.open: dict = {}
        self.recent: OrderedDict = OrderedDict()
        self.stale = True


class ConsensusProcessor:
    name = "consensus"
    topics = ("signal.generated",)

    def __init__(self, config: ConsensusConfig, state: ConsensusState):
        self.config = config
        self.state = state
        self.late = 0

    def on_revoked(self, partitions=None) -> None:
        """Forget the caches; they are rebuilt from the store on the next signal."""
        self.state.stale = True

    on_assigned = on_revoked

    def _rebuild(self) -> None:
        st = self.state
        st.open.clear()
        for key, state in st.windows.items():
            w = state.get("open")
            if w is not None and state.get("partition") is not None:
                st.open.setdefault(state["partition"], {})[key_str(key)] = w["first"]
        st.stale = False

    def _load(self, token: str) -> dict:
        state = self.state.windows.get(token)
        if state is None or "open" not in state:
            # none yet, or the tumbling-window layout of earlier versions: keep its watermark only
            return cs.new_state() | ({"closed_until": state.get("closed_until", 0)} if state else {})
        return state

    def _decision(self, token: str, w: dict, approved: bool, ts: int) -> ConsensusDecision:
        cfg = self.config
        sigs = list(w["signals"].values())
        score, weights = cs.score(sigs, cfg.weights)
        confidence = cs.confidence(sigs, cfg.weights)
        last = max(sigs, key=lambda s: s["ts"])
        return ConsensusDecision(
            event_id=derived_id("consensus", token, w["anchor"]), timestamp=ts, token=token, source="consensus",
            event_type="trade.consensus_approved" if approved else "signal.consensus_failed",
            correlation_id=last.get("correlation_id"), ingest_ms=last.get("ingest_ms"),
            consensus_score=score, contributing_agents=sorted({s["agent"] for s in sigs}),
            recommended_action=cs.action_of(score), signal_ids=list(w["signals"]), weights=weights,
            window_start=w["first"], window_end=w["first"] + cfg.window_ms, price=last.get("price"),
            confidence=confidence,
            reason=None if approved else self._failure(score, len(weights), confidence))

    def _failure(self, score: float, agents: int, confidence: float | None) -> str:
        """Why a window failed: each bound it missed, e.g. ``agents 1 < 2``."""
        cfg = self.config
        missed = []
        if abs(score) <= cfg.threshold:
            missed.append(f"|score| {abs(score):.1f} <= {cfg.threshold}")
        if agents < cfg.min_agents:
            missed.append(f"agents {agents} < {cfg.min_agents}")
        if (confidence or 0.0) < cfg.min_confidence:
            missed.append(f"confidence {confidence or 0:.2f} < {cfg.min_confidence}")
        return "; ".join(missed)

    def process(self, sig, partition=0) -> list:
        if sig.event_type != "signal.generated":
            return []  # signal.error: nothing to join
        if self.config.weights.get(sig.agent, 1.0) <= 0:
            return []  # a switched-off agent: its signal neither votes nor opens a window
        return self.on_signal(sig, partition)

    def on_signal(self, sig: SignalGenerated, partition=0) -> list[ConsensusDecision]:
        """Add one signal to its token's window and close the partition's windows that stream
        time has passed; returns the decisions to emit."""
        st, cfg = self.state, self.config
        sig_id = str(sig.event_id)
        if sig_id in st.recent:
            return []  # taken already (in the step that produced it)
        st.recent[sig_id] = None
        if len(st.recent) > RECENT:
            st.recent.popitem(last=False)
        if st.stale:
            self._rebuild()
        wms = cfg.window_ms
        out: list[ConsensusDecision] = []
        stream_time = st.stream_time[partition] = max(st.stream_time.get(partition, 0), sig.timestamp)
        opened = st.open.setdefault(partition, {})
        for token in [t for t, first in opened.items() if t != sig.token and stream_time > first + wms + cfg.grace_ms]:
            state = st.windows.get(token)
            del opened[token]
            if state is None:
                continue
            failed = cs.close(state, wms)
            if failed is not None:
                out.append(self._decision(token, failed, False, failed["first"] + wms))
            st.windows[token] = state

        state = self._load(sig.token)
        state["partition"] = partition
        entry = {"agent": sig.agent, "action": sig.action, "score": sig.score, "confidence": sig.confidence,
                 "price": sig.price, "ts": sig.timestamp,
                 "correlation_id": str(sig.correlation_id) if sig.correlation_id else None, "ingest_ms": sig.ingest_ms}
        decisions, accepted = cs.add(state, sig_id, entry, wms, cfg.weights, cfg.threshold, cfg.min_agents,
                                     cfg.min_confidence)
        if not accepted:
            self.late += 1
        for kind, w in decisions:
            if kind == "failed":
                out.append(self._decision(sig.token, w, False, w["first"] + wms))
            else:
                out.append(self._decision(sig.token, w, True, sig.timestamp))
        if cs.due(state, stream_time, wms, cfg.grace_ms) and state["open"]["decided"]:
            cs.close(state, wms)  # nothing left to decide: free it
        if state["open"] is not None:
            opened[sig.token] = state["open"]["first"]
        else:
            opened.pop(sig.token, None)
        if decisions or accepted:
            st.windows[sig.token] = state
        return out
