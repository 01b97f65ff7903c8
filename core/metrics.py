"""Prometheus metrics (prometheus-client), served by the ``/metrics/`` view.

Counters are per worker process; Prometheus sums them across replicas.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)


class LightHistogram:
    """A Prometheus histogram for the per-tick path: ``labels(...).observe(v)`` is a bisect and two
    additions, no lock (the worker is one event loop), exported in the standard exposition at
    scrape time. prometheus-client's ``Histogram`` takes a lock and updates every bucket on each
    observation, which a profile of the tick path showed at several percent of a worker's CPU."""

    def __init__(self, name: str, documentation: str, labelnames=(), buckets=(), registry=REGISTRY):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple, _LightChild] = {}
        if not self.labelnames:
            self._children[()] = _LightChild(self.bounds)
        registry.register(self)

    def labels(self, *values: str) -> "_LightChild":
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _LightChild(self.bounds)
        return child

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, c in list(self._children.items()):
            cumulative, acc = [], 0
            for bound, n in zip((*self.bounds, float("inf")), c.counts):
                acc += n
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", acc))
            fam.add_metric(list(key), cumulative, c.sum)
        yield fam


class _LightChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LightCounter:
    """A counter without labels for the per-tick path: ``inc()`` is one addition (see
    :class:`LightHistogram`)."""

    def __init__(self, name: str, documentation: str, registry=REGISTRY):
        self.name, self.documentation, self.value = name.removesuffix("_total"), documentation, 0
        registry.register(self)

    def inc(self, n: int = 1) -> None:
        self.value += n

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self):
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


TICKS_CONSUMED = LightCounter("moondev_ticks_consumed_total", "price.tick events consumed by the tick stream")
EVENTS_PRODUCED = Counter("moondev_events_produced_total", "Events produced, by event type",
                          ["event_type"], registry=REGISTRY)
DEAD_LETTERS = Counter("moondev_dead_letters_total", "Messages sent to the dead-letter topic, by source topic",
                       ["topic"], registry=REGISTRY)
LATE_EVENTS = Counter("moondev_late_events_total", "Events older than the agent's event-time watermark, dropped",
                      ["agent"], registry=REGISTRY)
PROCESSING_SECONDS = LightHistogram(
    "moondev_processing_seconds", "Time to process one event in an agent or stage (seconds)", ["agent"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY)
TICK_TO_FILL_SECONDS = Histogram(
    "moondev_tick_to_fill_seconds", "Wall-clock time from the tick's produce to its fill (seconds)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
TICK_RECEIVE_SECONDS = LightHistogram(
    "moondev_tick_receive_seconds", "Wall-clock time from a tick's produce to the tick stream reading it (seconds)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
SINK_ROWS = Counter("moondev_sink_rows_total", "Rows written to the event store, by topic", ["topic"],
                    registry=REGISTRY)
SINK_BATCH_SECONDS = Histogram("moondev_sink_batch_seconds", "Event-store batch write time (seconds)",
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
                               registry=REGISTRY)
SINK_LAG = Gauge("moondev_sink_lag", "Events the event-store sink has yet to store, by topic (this worker's "
                 "partitions: high watermark - position)", ["topic"], registry=REGISTRY)
SINK_RESTARTS = Counter("moondev_sink_restarts_total", "Event-store sink processes that exited and were restarted",
                        registry=REGISTRY)
SINK_REFUSED = Counter("moondev_sink_refused_rows_total", "Rows the event store refused for their data "
                       "(dead-lettered, not retried)", registry=REGISTRY)
SINK_WAITING = Gauge("moondev_sink_batch_waiting_seconds", "How long the event-store batch being written has "
                     "waited (0 between batches)", registry=REGISTRY)
SINK_ERRORS = Counter("moondev_sink_errors_total", "Failed event-store batch writes (retried)", registry=REGISTRY)
CONSUMER_LAG = Gauge("moondev_consumer_lag", "Messages behind the partition's high watermark",
                     ["topic", "partition"], registry=REGISTRY)


class EventLoopCPU:
    """``moondev_event_loop_cpu_seconds_total``: CPU seconds (user + system) used by the process's
    main thread, which in a worker runs the event loop: Faust's dispatch of every message, every
    agent and the web views. Its ``rate()`` is the share of one core that thread keeps busy: near
    1, the worker is at its own ceiling however many partitions it has, and only another replica on
    another core adds throughput (aiokafka's consumer thread and the event-store sink are not
    counted). Read at scrape time from the thread's CPU clock (``pthread_getcpuclockid``); not
    exported where the platform has none."""

    name = "moondev_event_loop_cpu_seconds"
    documentation = ("CPU seconds used by the worker's main thread (its event loop: Faust's dispatch and every "
                     "agent); a rate near 1 means the worker is bound by that one core")

    def __init__(self, registry=REGISTRY):
        self._thread = threading.main_thread()
        registry.register(self)

    def seconds(self) -> float | None:
        """The main thread's CPU seconds so far, or None where thread CPU clocks are unavailable."""
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))
        except (AttributeError, OSError):
            return None

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self):
        value = self.seconds()
        if value is not None:
            yield CounterMetricFamily(self.name, self.documentation, value=value)


EVENT_LOOP_CPU = EventLoopCPU()


BOUNDS_HIT = Counter("moondev_bounds_hit_total", "Times a bounded map, memory or label set was full and dropped or "
                     "folded an entry, or a wait was capped, by bound", ["bound"], registry=REGISTRY)


class BoundedLabel:
    """A label value from data (an account): the first ``cap`` distinct values are kept as they
    are, later ones become ``other`` (counted in ``moondev_bounds_hit_total{bound=name}``), so
    whatever reaches a topic, a worker's metric series stay bounded."""

    def __init__(self, cap: int = 1_000, name: str = "account_label") -> None:
        self.cap = cap
        self.name = name
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            BOUNDS_HIT.labels(self.name).inc()
            return "other"
        self.seen.add(value)
        return value


#: The ``account`` label of the per-account gauges.
ACCOUNT_LABEL = BoundedLabel()
EQUITY = Gauge("moondev_portfolio_equity_usd", "Portfolio equity (USD)", ["account"], registry=REGISTRY)
LEVERAGE = Gauge("moondev_portfolio_leverage", "Gross notional / equity", ["account"], registry=REGISTRY)
ORDERS = Counter("moondev_orders_total", "Orders by outcome (filled, partially_filled, rejected, duplicate, "
                 "constraint)", ["outcome"], registry=REGISTRY)
EXCHANGE_ERRORS = Counter("moondev_exchange_errors_total", "Exchange adapter errors (retried)", ["exchange"],
                          registry=REGISTRY)
# observed for every tick of a token an account holds: the light kind, like the stage timings
RISK_EVAL_SECONDS = LightHistogram(
    "moondev_risk_evaluation_seconds", "Risk evaluation of one account on one tick (seconds)",
    buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005), registry=REGISTRY)
NOTIFICATIONS = Counter("moondev_notifications_total", "Discord notifications by outcome (sent, dropped, "
                        "rate_limited)", ["outcome"], registry=REGISTRY)
LLM_REQUESTS = Counter("moondev_llm_requests_total", "LLM advice requests by outcome (ok, timeout, api_error, "
                       "invalid, late, superseded, dropped)", ["outcome"], registry=REGISTRY)
LLM_SECONDS = Histogram("moondev_llm_seconds", "LLM advice request time (seconds)",
                        buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0), registry=REGISTRY)
FEED_FRAMES = Counter("moondev_feed_frames_total", "WebSocket frames received, by feed", ["feed"], registry=REGISTRY)
FEED_EVENTS = Counter("moondev_feed_events_total", "Events published by a feed, by type", ["feed", "event_type"],
                      registry=REGISTRY)
FEED_PARSE_ERRORS = Counter("moondev_feed_parse_errors_total", "Frames that failed to parse (dead-lettered)", ["feed"],
                            registry=REGISTRY)
FEED_RECONNECTS = Counter("moondev_feed_reconnects_total", "Feed reconnects by reason (stale, closed by server, gap, "
                          "connect failed, ...)", ["feed", "reason"], registry=REGISTRY)
FEED_GAPS = Counter("moondev_feed_sequence_gaps_total", "Sequence gaps detected (each triggers a resubscribe)", ["feed"],
                    registry=REGISTRY)
FEED_LAG_SECONDS = Histogram("moondev_feed_lag_seconds", "Exchange timestamp to publish (seconds)", ["feed"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0), registry=REGISTRY)
FEED_ACK_SECONDS = Histogram("moondev_feed_publish_seconds", "Frame receipt to broker acknowledgement (seconds)",
                             ["feed"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.5),
                             registry=REGISTRY)
AGENT_ERRORS = Counter("moondev_agent_errors_total", "Messages whose handling raised (agent.error + dead letter), "
                       "by agent", ["agent"], registry=REGISTRY)
AGENT_EVENTS = Counter("moondev_agent_events_total", "Events per agent (the event source) and direction (in, out)",
                       ["agent", "direction"], registry=REGISTRY)
TICK_TO_DECISION_SECONDS = Histogram(
    "moondev_tick_to_decision_seconds", "Wall-clock time from the tick's produce to its consensus decision (seconds)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
SINK_BATCH_ROWS = Histogram("moondev_sink_batch_rows", "Rows per event-store batch write",
                            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000), registry=REGISTRY)
SLA_VIOLATIONS = Counter("moondev_sla_violations_total", "Observations over their SLA limit, by metric",
                         ["metric"], registry=REGISTRY)
DASHBOARD_CLIENTS = Gauge("moondev_dashboard_clients", "Connected dashboard WebSocket clients", registry=REGISTRY)
DASHBOARD_MESSAGES = Counter("moondev_dashboard_messages_total", "Dashboard pushes by kind", ["kind"],
                             registry=REGISTRY)
DASHBOARD_DROPPED = Counter("moondev_dashboard_slow_clients_total", "Dashboard clients disconnected for being slow",
                            registry=REGISTRY)
DASHBOARD_DELIVERY_SECONDS = Histogram(
    "moondev_dashboard_delivery_seconds", "Produce time of a state.changed event to its push to the clients (seconds)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=REGISTRY)
CONTROL_REQUESTS = Counter("moondev_control_requests_total", "Control endpoint requests by action and outcome "
                           "(accepted, unauthorized, rate_limited, invalid)", ["action", "outcome"], registry=REGISTRY)
