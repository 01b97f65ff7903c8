"""Sentiment processor: ``sentiment.update`` → follower-weighted bullish share over 5 min, 30 min
and 1 h event-time windows → ``signal.generated`` (agent ``sentiment``).

The windows are 1-minute buckets in the ``windows`` store (keyed by token), pruned by event time
in :mod:`domain.sentiment` rather than by a Faust windowed table, whose wall-clock expiry would
empty the windows of a replayed hour. It reads ``bullish_pct``, ``followers`` and ``confidence``
and does not care where a score came from (a lexicon scorer, a model, a vendor feed).

At most one signal per token and minute: its id derives from (agent, token, minute), so a replay
re-emits the same id, which the consensus ignores. Revocation changes nothing: the state is in
the store, which moves with the partition.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain import sentiment as sm
from models.events import SentimentUpdate, SignalGenerated, derived_id
from processors.base import Store

AGENT = "sentiment"


@dataclass(frozen=True, slots=True)
class SentimentConfig:
    """Signal when the 5-minute share is at least ``bullish_pct`` (or at most 100 minus it) and the
    velocity agrees by at least ``velocity_pp`` percentage points; ``min_updates`` updates in the
    5-minute window for full confidence."""

    bullish_pct: float = 60.0
    velocity_pp: float = 5.0
    min_updates: int = 20

    @classmethod
    def from_settings(cls, s) -> "SentimentConfig":
        return cls(s.sentiment_bullish_pct, s.sentiment_velocity_pp, s.sentiment_min_updates)


class SentimentProcessor:
    name = AGENT
    topics = ("sentiment.updates",)

    def __init__(self, config: SentimentConfig, windows: Store):
        self.config = config
        self.windows = windows
        self.late = 0

    def on_revoked(self, partitions) -> None:
        pass

    def process(self, u: SentimentUpdate, partition=None) -> list:
        sig = self.on_update(u)
        return [sig] if sig is not None else []

    def on_update(self, u: SentimentUpdate) -> SignalGenerated | None:
        """Fold one update into its token's windows; returns the signal it triggers, if any."""
        cfg = self.config
        state = self.windows.get(u.token) or sm.new_state()
        if not sm.add(state, u.timestamp, u.bullish_pct, u.followers, u.confidence):
            self.late += 1
            return None
        stats = sm.windows(state)
        minute = sm.bucket_of(u.timestamp)
        out = None
        if state["signalled"] is None or minute > state["signalled"]:
            sig = sm.evaluate(stats, cfg.bullish_pct, cfg.velocity_pp, cfg.min_updates)
            if sig is not None:
                state["signalled"] = minute
                out = SignalGenerated(
                    event_id=derived_id("signal", AGENT, u.token, minute), timestamp=u.timestamp, token=u.token,
                    source=AGENT, correlation_id=u.correlation_id or u.event_id, ingest_ms=u.ingest_ms,
                    action=sig.action, score=sig.score, confidence=sig.confidence, agent=AGENT, reasons=sig.reasons,
                    indicators={f"bullish_pct_{k}": v.bullish_pct for k, v in stats.items()}
                    | {"velocity_pp": sm.velocity(stats)})
        self.windows[u.token] = state
        return out
