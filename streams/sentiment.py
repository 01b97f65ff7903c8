"""Sentiment agent: ``sentiment.update`` → follower-weighted bullish share over 5 min, 30 min and
1 h event-time windows → ``signal.generated`` (agent ``sentiment``).

The windows are 1-minute buckets in the ``sentiment_windows`` table (changelog backed, keyed by
token, co-partitioned with ``sentiment.updates``), pruned by event time in :mod:`domain.sentiment`
rather than by a Faust windowed table, whose wall-clock expiry would empty the windows of a
replayed hour. The agent does not care where a score came from (a lexicon scorer, a model, a
vendor feed): it reads ``bullish_pct``, ``followers`` and ``confidence``.

At most one signal per token and minute: its id derives from (agent, token, minute), so a replay
re-emits the same id, which the consensus ignores.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, emit, settings, valid_events
from app.metrics import LATE_EVENTS, PROCESSING_SECONDS
from domain import sentiment as sm
from models.events import SentimentUpdate, SignalGenerated, derived_id
from tables import sentiment_windows

AGENT = "sentiment"
_latency = PROCESSING_SECONDS.labels("sentiment")


def on_update(u: SentimentUpdate) -> SignalGenerated | None:
    """Fold one update into its token's windows; returns the signal it triggers, if any."""
    state = sentiment_windows.get(u.token) or sm.new_state()
    if not sm.add(state, u.timestamp, u.bullish_pct, u.followers, u.confidence):
        LATE_EVENTS.labels("sentiment").inc()
        return None
    stats = sm.windows(state)
    minute = sm.bucket_of(u.timestamp)
    out = None
    if state["signalled"] is None or minute > state["signalled"]:
        sig = sm.evaluate(stats, settings.sentiment_bullish_pct, settings.sentiment_velocity_pp,
                          settings.sentiment_min_updates)
        if sig is not None:
            state["signalled"] = minute
            out = SignalGenerated(
                event_id=derived_id("signal", AGENT, u.token, minute), timestamp=u.timestamp, token=u.token,
                source=AGENT, correlation_id=u.correlation_id or u.event_id, ingest_ms=u.ingest_ms,
                action=sig.action, score=sig.score, confidence=sig.confidence, agent=AGENT, reasons=sig.reasons,
                indicators={f"bullish_pct_{k}": v.bullish_pct for k, v in stats.items()}
                | {"velocity_pp": sm.velocity(stats)})
    sentiment_windows[u.token] = state
    return out


@app.agent(TOPICS["sentiment.updates"], name="sentiment")
async def sentiment(stream):
    async for event, update in valid_events(stream, (SentimentUpdate,), "sentiment"):
        t0 = time.perf_counter()
        signal = on_update(update)
        if signal is not None:
            await emit(signal)
        _latency.observe(time.perf_counter() - t0)
