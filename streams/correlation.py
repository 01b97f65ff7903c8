"""Correlation agent: the Faust runtime of :class:`processors.correlation.CorrelationProcessor`.

Both inputs are keyed by token with 3 partitions (``sentiment.updates`` and the internal
``price.minutes`` that the trading agent fills), so one agent reads them co-partitioned and each
token's join state lives in one partition of the ``correlation_windows`` table.
"""

from __future__ import annotations

import time

from app.main import app, decode_checked, emit, settings, survive
from app.runtime import correlation as processor
from core.metrics import PROCESSING_SECONDS
from models.events import EventError, PriceMinute, SentimentUpdate

_latency = PROCESSING_SECONDS.labels("correlation")

#: Declared with the catalogue's settings (replicas, min.insync.replicas); one retention for both:
#: the longer of theirs.
CORRELATION_INPUT = app.topic(settings.topic("sentiment.updates"), settings.topic("price.minutes"),
                              partitions=3, internal=True, key_type=bytes, value_type=bytes,
                              retention=max(settings.topic_retention("sentiment.updates"),
                                            settings.topic_retention("price.minutes")),
                              replicas=settings.topic_replication_factor, config=settings.topic_configs())


@app.agent(CORRELATION_INPUT, name="correlation")
async def correlation(stream):
    async for event in stream.events():
        t0 = time.perf_counter()
        try:
            ev = decode_checked(event.value, (SentimentUpdate, PriceMinute), event.key, event.message.topic)
        except EventError:
            continue  # the sentiment agent sends invalid updates to the dead letters
        async with survive("correlation", event, ev):
            for det in processor.process(ev):
                await emit(det)
            _latency.observe(time.perf_counter() - t0)
