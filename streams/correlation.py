"""Correlation agent, a windowed join of ``sentiment.update`` and 1-minute price closes per token
on event time → ``correlation.detected``.

Both inputs are keyed by token with 3 partitions (``sentiment.updates`` and the internal
``price.minutes`` that the trading agent fills), so one agent reads them co-partitioned and each
token's join state lives in one partition of the ``correlation_windows`` table. The series
alignment, the sliding 1-hour window and Pearson's r on running sums are in
:mod:`domain.correlation`; pruning is by event time, so a replay sees the same windows as live.

On each new aligned point with at least CORRELATION_MIN_POINTS points and |r| above
CORRELATION_THRESHOLD the agent emits ``correlation.detected`` (id derived from token and minute,
so a replay re-emits the same event) and records the latest correlation in the ``correlations``
global table, where the trading agent reads it to raise the confidence of signals in the
correlated direction.
"""

from __future__ import annotations

import time

from app.main import TOPIC_SPECS, app, emit, settings
from app.metrics import PROCESSING_SECONDS
from domain import correlation as cr
from models.events import CorrelationDetected, EventError, PriceMinute, SentimentUpdate, decode_event, derived_id
from tables import correlation_windows, correlations

_latency = PROCESSING_SECONDS.labels("correlation")

CORRELATION_INPUT = app.topic(settings.topic("sentiment.updates"), settings.topic("price.minutes"),
                              partitions=3, retention=TOPIC_SPECS["price.minutes"].retention, internal=True,
                              key_type=bytes, value_type=bytes)


def on_input(ev: SentimentUpdate | PriceMinute) -> list[CorrelationDetected]:
    """Fold one sentiment update or minute close into its token's join; returns the detections."""
    state = correlation_windows.get(ev.token) or cr.new_state()
    if isinstance(ev, SentimentUpdate):
        points = cr.add_sentiment(state, ev.timestamp, ev.bullish_pct, ev.followers, ev.confidence)
    else:
        points = cr.add_close(state, ev.timestamp, ev.close)
    correlation_windows[ev.token] = state
    out = []
    for p in points:
        if p.r is None or p.points < settings.correlation_min_points or abs(p.r) <= settings.correlation_threshold:
            if (correlations.get(ev.token) or {}).get("active"):
                correlations[ev.token] = {"active": False, "coefficient": p.r, "points": p.points,
                                          "ts": p.minute + cr.BUCKET_MS}
            continue
        action = cr.implied_action(p.r, p.bullish_pct)
        det = CorrelationDetected(
            event_id=derived_id("correlation", ev.token, p.minute), timestamp=p.minute + cr.BUCKET_MS,
            token=ev.token, source="correlation", correlation_id=ev.correlation_id or ev.event_id,
            ingest_ms=ev.ingest_ms, coefficient=round(p.r, 6), window="1h",
            direction="positive" if p.r > 0 else "negative", points=p.points, action=action,
            bullish_pct=round(p.bullish_pct, 4))
        correlations[ev.token] = {"active": True, "coefficient": det.coefficient, "points": p.points,
                                  "action": action, "ts": det.timestamp}
        out.append(det)
    return out


@app.agent(CORRELATION_INPUT, name="correlation")
async def correlation(stream):
    async for event in stream.events():
        t0 = time.perf_counter()
        try:
            ev = decode_event(event.value, (SentimentUpdate, PriceMinute))
        except EventError:
            continue  # the sentiment agent sends invalid updates to the dead letters
        for det in on_input(ev):
            await emit(det)
        _latency.observe(time.perf_counter() - t0)
