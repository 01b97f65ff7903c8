"""Correlation processor, a windowed join of ``sentiment.update`` and 1-minute price closes
(``price.minute``) per token on event time → ``correlation.detected``.

The series alignment, the sliding 1-hour window and Pearson's r on running sums are in
:mod:`domain.correlation`; pruning is by event time, so a replay sees the same windows as live.

On each new aligned point with at least ``min_points`` points and |r| above ``threshold`` the
processor emits ``correlation.detected`` (id derived from token and minute, so a replay re-emits
the same event), with ``direction`` telling r > threshold (``positive``: prices and sentiment move
together) from r < −threshold (``negative``: they move apart). Only a positive correlation is
active in the ``correlations`` store (a global table in a worker), where the trading processor
reads it to raise the confidence of signals in the direction it points to; a negative one is
reported, with no implied action, and boosts nothing: sentiment that prices move against is not
evidence for a trade. Revocation changes nothing: the state is in the stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain import correlation as cr
from models.events import CorrelationDetected, PriceMinute, SentimentUpdate, derived_id
from processors.base import Store


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    """``threshold``: r above which a (positive) correlation is detected and boosts signals, and
    below whose negative a negative one is reported; ``min_points``: aligned 1-minute points
    needed before r counts."""

    threshold: float = 0.7
    min_points: int = 20

    @classmethod
    def from_settings(cls, s) -> "CorrelationConfig":
        return cls(s.correlation_threshold, s.correlation_min_points)


class CorrelationProcessor:
    name = "correlation"
    topics = ("sentiment.updates", "price.minutes")

    def __init__(self, config: CorrelationConfig, windows: Store, correlations: Store):
        self.config = config
        self.windows = windows
        self.correlations = correlations

    def on_revoked(self, partitions) -> None:
        pass

    def process(self, ev: SentimentUpdate | PriceMinute, partition=None) -> list[CorrelationDetected]:
        """Fold one sentiment update or minute close into its token's join; returns the detections."""
        cfg = self.config
        state = self.windows.get(ev.token) or cr.new_state()
        if isinstance(ev, SentimentUpdate):
            points = cr.add_sentiment(state, ev.timestamp, ev.bullish_pct, ev.followers, ev.confidence)
        else:
            points = cr.add_close(state, ev.timestamp, ev.close)
        self.windows[ev.token] = state
        out = []
        for p in points:
            if p.r is None or p.points < cfg.min_points or abs(p.r) <= cfg.threshold:
                current = self.correlations.get(ev.token) or {}
                if current.get("active") or current.get("direction") == "negative":
                    self.correlations[ev.token] = {"active": False, "coefficient": p.r, "points": p.points,
                                                   "ts": p.minute + cr.BUCKET_MS}
                continue
            positive = p.r > 0
            action = cr.implied_action(p.r, p.bullish_pct) if positive else None
            det = CorrelationDetected(
                event_id=derived_id("correlation", ev.token, p.minute), timestamp=p.minute + cr.BUCKET_MS,
                token=ev.token, source="correlation", correlation_id=ev.correlation_id or ev.event_id,
                ingest_ms=ev.ingest_ms, coefficient=round(p.r, 6), window="1h",
                direction="positive" if positive else "negative", points=p.points, action=action,
                bullish_pct=round(p.bullish_pct, 4))
            self.correlations[ev.token] = {"active": positive, "coefficient": det.coefficient, "points": p.points,
                                           "direction": det.direction, "action": action, "ts": det.timestamp}
            out.append(det)
        return out

    on_input = process
