"""Sentiment agent: the Faust runtime of :class:`processors.sentiment.SentimentProcessor` on
``sentiment.updates``."""

from __future__ import annotations

import time

from app.main import TOPICS, app, emit, survive, valid_events
from app.runtime import sentiment as processor
from core.metrics import LATE_EVENTS, PROCESSING_SECONDS
from models.events import SentimentUpdate

_latency = PROCESSING_SECONDS.labels("sentiment")
_late = LATE_EVENTS.labels("sentiment")


@app.agent(TOPICS["sentiment.updates"], name="sentiment")
async def sentiment(stream):
    async for event, update in valid_events(stream, (SentimentUpdate,), "sentiment"):
        async with survive("sentiment", event, update):
            t0 = time.perf_counter()
            late = processor.late
            for out in processor.process(update):
                await emit(out)
            if processor.late != late:
                _late.inc(processor.late - late)
            _latency.observe(time.perf_counter() - t0)
