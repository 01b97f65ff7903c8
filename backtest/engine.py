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
* approvals go to the execution engine for the configured account, as the worker's consensus step
  hands them over (:mod:`streams.consensus`).

Fills are those of the paper exchange with the run's fees and slippage and no latency, so the
same input gives the same fills as a replay through Kafka at any speed (tested), as long as the
outcome does not depend on how fast one topic is consumed against another (risk events reacting
to fills that a worker would still have in flight; none of the strategies' fills do).

The LLM advisor is left out (its answers come on the wall clock), as are the store sink, the
notifier and the dashboard.
"""

from __future__ import annotations

import dataclasses
import gc
import operator
from bisect import bisect_left
import inspect
import time
import uuid
from collections import deque
from collections.abc import Iterable
from itertools import islice
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
from processors.flow import ORDERFLOW, WHALE, OrderFlowConfig, OrderFlowProcessor, WhaleConfig, WhaleProcessor
from processors.portfolio import PortfolioConfig, PortfolioProcessor
from processors.risk import HaltProcessor, RiskConfig, RiskProcessor, RiskState
from processors.sentiment import SentimentConfig, SentimentProcessor
from processors.trading import TradingConfig, TradingProcessor, TradingState

#: event types an engine takes as input
INPUT_TYPES = ("price.tick", "sentiment.update", "liquidation.event")
STORES = ("bar_history", "indicators", "consensus_windows", "portfolio", "execution_state", "sentiment_windows",
          "correlation_windows", "correlations", "latest_prices", "exposures", "halt", "orderflow", "whales")


class Tick:
    """A ``price.tick`` as the processors read it, without pydantic validation (the input was
    validated when it was read) and with its id derived only if something asks for it.

    ``event_id`` is uuid5(``id_key``) (see :func:`tick_id`) unless given."""

    __slots__ = ("token", "timestamp", "price", "size", "volume_1m", "side", "trade_id", "ingest_ms", "correlation_id",
                 "_id", "_key")
    event_type = "price.tick"
    source = "backtest"

    def __init__(self, token: str, timestamp: int, price: float, size: float | None = None, volume_1m: float = 0.0,
                 event_id: uuid.UUID | None = None, id_key: str | None = None, side: str | None = None,
                 trade_id: str | None = None):
        self.token, self.timestamp, self.price, self.size, self.volume_1m = token, timestamp, price, size, volume_1m
        self.side, self.trade_id = side, trade_id
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
    """An input event from a dict (wire JSON, e.g. a row of the event store) or a model."""
    if isinstance(ev, (Envelope, Tick)):
        return ev
    if ev.get("event_type") == "price.tick":
        return Tick(ev["token"], int(ev["timestamp"]), float(ev["price"]), ev.get("size"), ev.get("volume_1m") or 0.0,
                    uuid.UUID(str(ev["event_id"])), side=ev.get("side"), trade_id=ev.get("trade_id"))
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

    def __init__(self, settings, keep_outputs: bool = False, sentiment_input: bool = True,
                 precompute: bool = True):
        """``sentiment_input``: whether the input has sentiment updates (without them the
        correlation join has nothing to pair, so the 1-minute price closes are not produced);
        ``precompute``: compute the bars' indicators over the whole input at once
        (:meth:`processors.trading.TradingProcessor.use_series`; the same signals)."""
        s = settings
        self.settings = s
        self.keep_outputs = keep_outputs
        self.precompute = precompute
        self.stores: dict[str, dict] = {name: {} for name in STORES}
        st = self.stores
        exposures = ExposureView(st["exposures"])
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
                                            st["latest_prices"], st["execution_state"], st["halt"])
        # The order-flow and whale agents run only when they vote (a weight above 0): a backtest of
        # other agents computes nothing for them.
        self.flow_processors = [
            p for p in (OrderFlowProcessor(OrderFlowConfig.from_settings(s), st["orderflow"], st["halt"]),
                        WhaleProcessor(WhaleConfig.from_settings(s), st["whales"], st["halt"]))
            if s.agent_weights.get(p.name, 1.0) > 0]
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
            "price.ticks": (lambda ev: on_tick(ev)[0], self.risk.on_tick, *(p.on_tick for p in self.flow_processors)),
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
        is called every 10,000 inputs.

        With ``precompute`` and an input of ticks only, runs of ticks on which no processor can
        emit anything are taken at once: the trading processor knows from the precomputed bars
        which tick closes the next bar its rules may signal on, the risk processor finds how many
        ticks before that leave every account quiet (its own arithmetic over arrays), and both
        take the run as they would have tick by tick (:meth:`TradingProcessor.skip_run`,
        :meth:`RiskProcessor.skip_run`). Every other tick goes through the processors one by one."""
        # The input's many live objects make every full collection of the cyclic garbage collector
        # slow, while what the loop allocates is freed by reference counting: collect after the run.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return await self._run(events, progress)
        finally:
            if collecting:
                gc.enable()

    async def _run(self, events: Iterable, progress) -> EngineRun:
        inputs = [e if e.__class__ is Tick else as_input(e) for e in events]
        times = [e.timestamp for e in inputs]
        if any(map(operator.gt, times, islice(times, 1, None))):
            inputs.sort(key=operator.attrgetter("timestamp"))  # stable: equal times keep their order
        cfg = self.trading.config
        skipper = None
        if self.precompute:
            ticks_only = all(ev.event_type == "price.tick" for ev in inputs)
            ticks = inputs if ticks_only else [ev for ev in inputs if ev.event_type == "price.tick"]
            by_token: dict[str, list] = {}
            for k, ev in enumerate(ticks):
                by_token.setdefault(ev.token, []).append(k)
            ts, px, sz = [e.timestamp for e in ticks], [e.price for e in ticks], [e.size for e in ticks]
            self.trading.use_series({tok: ([ts[k] for k in ks], [px[k] for k in ks], [sz[k] for k in ks])
                                     for tok, ks in by_token.items()})
            # (the processors mark a 0 at entry; the flow agents vote on every bar, nothing is quiet)
            if (ticks_only and ticks and not cfg.keep_view and not cfg.minute_closes and not self.flow_processors
                    and self.trading.advisor is None and min(px) > 0):
                skipper = _RunSkipper(ticks, ts, px, by_token, self.trading, self.risk)
        routes, topic_of = self.routes, TOPIC_OF_EVENT
        fills: list[TradeExecuted] = []
        outputs: list[Envelope] = []
        counts: dict[str, int] = {}
        keep = self.keep_outputs
        tick_handlers = routes["price.ticks"]
        queue: deque = deque()
        n_inputs = len(inputs)
        reported = 0
        i = 0
        t0 = time.perf_counter()
        while i < n_inputs:
            if skipper is not None:
                i = skipper.skip_from(i)
                if i >= n_inputs:
                    break
            ev = inputs[i]
            if ev.event_type == "price.tick":
                # the hot path: both tick processors, then whatever they emitted
                for handler in tick_handlers:
                    out = handler(ev)
                    if out:
                        queue.extend(_caused(out, ev.event_id))
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
                    if out.__class__ is not list and inspect.isawaitable(out):
                        out = await out
                    if out:
                        queue.extend(_caused(out, out_ev.event_id))
            i += 1
            if progress is not None and i - reported >= 10_000:
                progress(i - reported)
                reported = i
        if progress is not None and n_inputs > reported:
            progress(n_inputs - reported)
        #: input ticks taken in quiet runs rather than one by one (last run)
        self.ticks_skipped = skipper.taken if skipper is not None else 0
        return EngineRun(fills, outputs, counts, n_inputs, time.perf_counter() - t0, self.stores)


def _caused(events, cause) -> list:
    """``events`` with ``causation_id`` set to ``cause`` where they have none, as a worker's
    ``emit`` sets it from the event being handled."""
    return [e if e.causation_id is not None else e.model_copy(update={"causation_id": cause}) for e in events]


class _RunSkipper:
    """Finds and takes runs of input ticks on which no processor can emit (see
    :meth:`InProcessEngine.run`). The risk check looks ahead in chunks that double while the ticks
    stay quiet, so a busy stretch costs little more than the tick-by-tick path."""

    def __init__(self, inputs: list, ts: list[int], px: list[float], where: dict[str, list[int]],
                 trading: TradingProcessor, risk: RiskProcessor):
        """``inputs``: the ticks; ``ts``, ``px`` their times and prices; ``where`` token -> the
        indices of its ticks."""
        import numpy as np

        self.trading, self.risk = trading, risk
        self.names = sorted(where)
        code = {name: c for c, name in enumerate(self.names)}
        self.tokens = [ev.token for ev in inputs]
        self.ts, self.px = ts, px
        self.vol = [ev.volume_1m or 0.0 for ev in inputs]
        self.ts_a = np.array(ts, dtype=np.int64)
        self.px_a = np.array(px, dtype=np.float64)
        self.tok_a = np.zeros(len(ts), dtype=np.int64)
        for name, ks in where.items():
            self.tok_a[ks] = code[name]
        self.where = where
        self.chunk = 64
        self.taken = 0  # ticks taken in quiet runs

    def skip_from(self, i: int) -> int:
        """Take the quiet runs from input ``i``; returns the index of the next tick to process
        one by one (or the input's length)."""
        n = len(self.ts)
        while i < n:
            hi = n
            for name in self.names:
                k = self.trading.next_signal_tick(name)
                if k is not None:
                    hi = min(hi, self.where[name][k])
            if hi <= i:
                return i
            end = min(hi, i + self.chunk)
            q = self.risk.quiet_run(self.ts_a[i:end], self.px_a[i:end], self.tok_a[i:end], self.names)
            if q:
                self._take(i, i + q)
            if i + q < end:
                self.chunk = 64
                return i + q
            self.chunk = min(self.chunk * 2, 16_384)
            i = end
        return i

    def _take(self, i: int, j: int) -> None:
        self.taken += j - i
        for name in self.names:
            where = self.where[name]
            a, b = bisect_left(where, i), bisect_left(where, j)
            if b > a:
                self.trading.skip_run(name, a, b)
        self.risk.skip_run(self.ts[i:j], self.px[i:j], self.vol[i:j], self.tokens[i:j])
