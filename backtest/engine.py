"""The in-process backtest engine: the same processors as a worker, in one process, over dicts.

A deterministic event loop, on event time throughout (nothing reads the wall clock):

* input events (ticks, sentiment updates, liquidations) are taken in timestamp order (a stable
  sort: equal timestamps keep their input order);
* each event goes to the processors that subscribe to its topic, in the order the worker's agents
  are listed for it (``ROUTES``); their outputs join a FIFO queue, and the queue is drained before
  the next input event. Events of one key therefore arrive in the order they were produced, which
  is the order Kafka delivers one partition's messages; the consensus' stream time is kept per
  partition, computed with Kafka's default partitioner (murmur2 of the key, as aiokafka's
  producer does), so windows close as they would in a worker;
* approvals are re-keyed by the configured account, as the worker's ``route_approvals`` does.

Fills are those of the paper exchange with the run's fees and slippage and no latency, so the
same input gives the same fills as a replay through Kafka at any speed (tested), as long as the
outcome does not depend on how fast one topic is consumed against another (risk events reacting
to fills that a worker would still have in flight; none of the strategies' fills do).

The LLM advisor is left out (its answers come on the wall clock), as are the store sink, the
notifier and the dashboard.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from aiokafka.partitioner import murmur2

from exchanges.paper import PaperExchange
from models.events import (EVENT_NAMESPACE, Envelope, LiquidationEvent, PriceTick, SentimentUpdate, TradeExecuted,
                           decode_event)
from models.topics import TOPIC_OF_EVENT, TOPIC_SPECS
from processors.base import ExposureView
from processors.consensus import ConsensusConfig, ConsensusProcessor, ConsensusState
from processors.correlation import CorrelationConfig, CorrelationProcessor
from processors.execution import ExecutionConfig, ExecutionProcessor, ExecutionState
from processors.portfolio import PortfolioConfig, PortfolioProcessor
from processors.risk import HaltProcessor, RiskConfig, RiskProcessor, RiskState
from processors.sentiment import SentimentConfig, SentimentProcessor
from processors.trading import TradingConfig, TradingProcessor, TradingState

#: event types an engine takes as input
INPUT_TYPES = ("price.tick", "sentiment.update", "liquidation.event")
STORES = ("bar_history", "indicators", "consensus_windows", "portfolio", "execution_state", "sentiment_windows",
          "correlation_windows", "correlations", "latest_prices", "exposures", "halt")


class Tick:
    """A ``price.tick`` as the processors read it, without pydantic validation (the input was
    validated when it was read) and with its id derived only if something asks for it.

    ``event_id`` is uuid5(``id_key``) (see :func:`tick_id`) unless given."""

    __slots__ = ("token", "timestamp", "price", "size", "volume_1m", "ingest_ms", "correlation_id", "_id", "_key")
    event_type = "price.tick"
    source = "backtest"

    def __init__(self, token: str, timestamp: int, price: float, size: float | None = None, volume_1m: float = 0.0,
                 event_id: uuid.UUID | None = None, id_key: str | None = None):
        self.token, self.timestamp, self.price, self.size, self.volume_1m = token, timestamp, price, size, volume_1m
        self.ingest_ms = None
        self.correlation_id = None
        self._id, self._key = event_id, id_key

    @property
    def event_id(self) -> uuid.UUID:
        if self._id is None:
            self._id = uuid.uuid5(EVENT_NAMESPACE, self._key or f"{self.token}:{self.timestamp}:{self.price}")
        return self._id


def tick_id(source: str, index: int) -> uuid.UUID:
    """The id of the ``index``-th tick read from ``source`` (a file name): what both engines give
    a tick of a data file."""
    return uuid.uuid5(EVENT_NAMESPACE, f"backtest.input:{source}:{index}")


def as_input(ev) -> Envelope | Tick:
    """An input event from a dict (SPEC JSON, e.g. a row of the event store) or a model."""
    if isinstance(ev, (Envelope, Tick)):
        return ev
    if ev.get("event_type") == "price.tick":
        return Tick(ev["token"], int(ev["timestamp"]), float(ev["price"]), ev.get("size"), ev.get("volume_1m") or 0.0,
                    uuid.UUID(str(ev["event_id"])))
    return decode_event(ev if isinstance(ev, (bytes, str)) else orjson.dumps(ev),
                        (PriceTick, SentimentUpdate, LiquidationEvent))


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partition of a key (murmur2, as aiokafka's and the Java producer)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class EngineRun:
    """What a run produced: ``fills`` (``trade.executed`` events), ``outputs`` every emitted event
    (when kept), counts per event type, inputs and the wall time (s) of the loop."""

    fills: list[TradeExecuted]
    outputs: list[Envelope]
    counts: dict[str, int]
    inputs: int
    seconds: float
    stores: dict = field(default_factory=dict)


class InProcessEngine:
    """The worker's processors over dicts, built from a settings object
    (:class:`core.settings.Settings`); ``keep_outputs`` keeps every emitted event."""

    def __init__(self, settings, keep_outputs: bool = False, sentiment_input: bool = True):
        """``sentiment_input``: whether the input has sentiment updates (without them the
        correlation join has nothing to pair, so the 1-minute price closes are not produced)."""
        s = settings
        self.settings = s
        self.keep_outputs = keep_outputs
        self.stores: dict[str, dict] = {name: {} for name in STORES}
        st = self.stores
        exposures = ExposureView(st["exposures"], refresh_s=float("inf"))
        trading_config = dataclasses.replace(TradingConfig.from_settings(s), keep_view=False,
                                             minute_closes=sentiment_input)
        self.trading = TradingProcessor(trading_config,
                                        TradingState(st["bar_history"], st["indicators"], st["correlations"],
                                                     st["halt"]))
        self.risk = RiskProcessor(RiskConfig.from_settings(s), RiskState(st["latest_prices"], exposures))
        self.halt = HaltProcessor(st["halt"])
        self.consensus = ConsensusProcessor(ConsensusConfig.from_settings(s), ConsensusState(st["consensus_windows"]))
        self.sentiment = SentimentProcessor(SentimentConfig.from_settings(s), st["sentiment_windows"])
        self.correlation = CorrelationProcessor(CorrelationConfig.from_settings(s), st["correlation_windows"],
                                                st["correlations"])
        self.exchange = PaperExchange.from_settings(s, latency_ms=0.0)
        self.execution = ExecutionProcessor(ExecutionConfig.from_settings(s),
                                            ExecutionState(st["execution_state"], st["portfolio"], st["halt"],
                                                           st["latest_prices"]), self.exchange)
        self.portfolio = PortfolioProcessor(PortfolioConfig.from_settings(s), st["portfolio"], exposures,
                                            st["latest_prices"])
        signal_partitions = TOPIC_SPECS["signal.generated"].partitions
        self._signal_partition: dict[str, int] = {}

        def consensus(ev):
            p = self._signal_partition.get(ev.token)
            if p is None:
                p = self._signal_partition[ev.token] = partition_of(ev.token, signal_partitions)
            return self.consensus.process(ev, p)

        def approvals(ev):
            if ev.event_type == "trade.consensus_approved":
                return self.execution.on_approval(s.account, ev)
            return ()

        def force_closes(ev):
            return self.execution.on_force_close(ev.account, ev) if ev.event_type == "trade.force_close" else ()

        def halt(ev):
            self.halt.apply(ev)
            return ()

        on_tick = self.trading.on_tick
        #: topic -> handlers, in the worker's order; each returns events (or an awaitable of them)
        self.routes = {
            "price.ticks": (lambda ev: on_tick(ev)[0], self.risk.on_tick),
            "liquidation.events": (self.risk.on_liquidation,),
            "sentiment.updates": (self.sentiment.process, self.correlation.process),
            "price.minutes": (self.correlation.process,),
            "signal.generated": (consensus,),
            "consensus": (approvals,),
            "orders": (force_closes,),
            "risk.alerts": (halt,),
            "trade.executed": (self.portfolio.process,),
        }

    async def run(self, events: Iterable, progress=None) -> EngineRun:
        """Replay ``events`` (dicts, models or :class:`Tick`) in timestamp order; ``progress(n)``
        is called every 10,000 inputs."""
        inputs = sorted((as_input(e) for e in events), key=lambda e: e.timestamp)
        routes, topic_of = self.routes, TOPIC_OF_EVENT
        fills: list[TradeExecuted] = []
        outputs: list[Envelope] = []
        counts: dict[str, int] = {}
        keep = self.keep_outputs
        tick_handlers = routes["price.ticks"]
        queue: deque = deque()
        t0 = time.perf_counter()
        for i, ev in enumerate(inputs):
            if ev.event_type == "price.tick":
                # the hot path: both tick processors, then whatever they emitted
                for handler in tick_handlers:
                    out = handler(ev)
                    if out:
                        queue.extend(out)
            else:
                queue.append(ev)
            while queue:
                out_ev = queue.popleft()
                et = out_ev.event_type
                if out_ev is not ev:
                    counts[et] = counts.get(et, 0) + 1
                    if keep:
                        outputs.append(out_ev)
                    if et == "trade.executed":
                        fills.append(out_ev)
                for handler in routes.get(topic_of.get(et, ""), ()):
                    out = handler(out_ev)
                    if inspect.isawaitable(out):
                        out = await out
                    if out:
                        queue.extend(out)
            if progress is not None and i % 10_000 == 9_999:
                progress(10_000)
        if progress is not None:
            progress(len(inputs) % 10_000)
        return EngineRun(fills, outputs, counts, len(inputs), time.perf_counter() - t0, self.stores)
