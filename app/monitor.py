"""Faust's own sensors, exported to Prometheus at a cost a per-message path can afford.

``faust.sensors.prometheus.PrometheusMonitor`` updates several Prometheus metrics on every message
and every table read, each a label lookup under a lock (and a label string rebuilt per event):
measured at about a tenth of a worker's CPU on the tick path. :class:`LeanPrometheusMonitor`
keeps its metrics for what happens rarely (sends, commits, assignments, rebalances) and replaces
the per-message and per-table-access ones by plain integer counts that a collector turns into the
same families at scrape time: ``faust_messages_received_total``,
``faust_messages_received_per_topic_total{topic}``, ``faust_total_events_total``,
``faust_total_events_per_stream_total{stream}``, ``faust_table_operations_total{table,operation}``
and the end offset of each fetched partition, ``faust_topic_partition_end_offset{topic,partition}``.
Left out: the per-partition last-offset gauge (``moondev_consumer_lag`` has the lag, from the
offsets kept here in ``tp_read_offsets``), the active
message/event gauges and the per-event runtime histogram (``moondev_processing_seconds`` has each
stage's time).
"""

from __future__ import annotations

import collections
from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: The FaustMetrics fields updated per message or per table access, replaced by counts.
_PER_MESSAGE = ("messages_received", "active_messages", "messages_received_per_topics",
                "messages_received_per_topics_partition", "total_events", "total_active_events",
                "total_events_per_stream", "events_runtime_latency", "table_operations",
                "topic_partition_end_offset")


class LeanPrometheusMonitor(PrometheusMonitor):
    """A ``PrometheusMonitor`` whose per-message hooks only count (see the module doc)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "faust", **kwargs: Any) -> None:
        metrics = FaustMetrics.create(registry, prefix)
        for name in _PER_MESSAGE:
            registry.unregister(getattr(metrics, name))
        super().__init__(metrics=metrics, **kwargs)
        self.prefix = prefix
        self.received = 0
        self.received_by_topic: collections.Counter = collections.Counter()
        self.events = 0
        self.events_by_stream: collections.Counter = collections.Counter()  # stream object -> n
        self.table_ops: collections.Counter = collections.Counter()  # (table name, operation) -> n
        registry.register(_Collector(self))

    def on_message_in(self, tp, offset, message) -> None:
        self.received += 1
        self.received_by_topic[tp.topic] += 1
        # The offset last handed to the streams, per partition (what moondev_consumer_lag counts
        # from): the consumer's own ``_read_offset`` is reset to the committed offset by Faust's
        # post-recovery seek even when messages past it were already delivered.
        self.tp_read_offsets[tp] = offset

    def on_stream_event_in(self, tp, offset, stream, event):
        self.events += 1
        self.events_by_stream[stream] += 1
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None) -> None:
        pass

    def on_message_out(self, tp, offset, message) -> None:
        pass

    def track_tp_end_offset(self, tp, offset: int) -> None:
        # Called for every partition of every fetch: a dict store, exported at scrape time.
        self.tp_end_offsets[tp] = offset

    def on_table_get(self, table, key) -> None:
        self.table_ops[(table.name, self.KEYS_RETRIEVED)] += 1

    def on_table_set(self, table, key, value) -> None:
        self.table_ops[(table.name, self.KEYS_UPDATED)] += 1

    def on_table_del(self, table, key) -> None:
        self.table_ops[(table.name, self.KEYS_DELETED)] += 1


class _Collector:
    def __init__(self, monitor: LeanPrometheusMonitor) -> None:
        self.m = monitor

    def collect(self):
        m, p = self.m, self.m.prefix
        yield CounterMetricFamily(f"{p}_messages_received", "Total messages received", value=m.received)
        by_topic = CounterMetricFamily(f"{p}_messages_received_per_topic", "Messages received per topic",
                                       labels=["topic"])
        for topic, n in list(m.received_by_topic.items()):
            by_topic.add_metric([topic], n)
        yield by_topic
        yield CounterMetricFamily(f"{p}_total_events", "Total events received", value=m.events)
        by_stream = CounterMetricFamily(f"{p}_total_events_per_stream", "Events received per stream",
                                        labels=["stream"])
        for stream, n in list(m.events_by_stream.items()):
            by_stream.add_metric([f"stream.{m._stream_label(stream)}.events"], n)
        yield by_stream
        tables = CounterMetricFamily(f"{p}_table_operations", "Table operations (get, set, delete)",
                                     labels=["table", "operation"])
        for (table, op), n in list(m.table_ops.items()):
            tables.add_metric([f"table.{table}", op], n)
        yield tables
        ends = GaugeMetricFamily(f"{p}_topic_partition_end_offset", "Offset ends per topic and partition",
                                 labels=["topic", "partition"])
        for tp, offset in list(m.tp_end_offsets.items()):
            ends.add_metric([tp.topic, str(tp.partition)], offset)
        yield ends
