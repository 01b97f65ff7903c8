"""The worker's processors: each agent's logic (:mod:`processors`) built from the settings and
given the worker's Faust tables as its stores. ``streams/`` runs them as Faust agents; the
in-process backtest engine builds the same classes over dicts (:mod:`backtest.engine`)."""

from __future__ import annotations

import dataclasses
import logging

import tables
from app.main import StoreAfterAcks, app, emit, settings
from app.sla import sla
from core.metrics import PROCESSING_SECONDS, RISK_EVAL_SECONDS
from exchanges.base import Exchange
from processors.base import ExposureView, StoreSnapshot, WriteBehind
from processors.consensus import ConsensusConfig, ConsensusProcessor, ConsensusState
from processors.correlation import CorrelationConfig, CorrelationProcessor
from processors.execution import ExecutionConfig, ExecutionProcessor, ExecutionState
from processors.flow import OrderFlowConfig, OrderFlowProcessor, WhaleConfig, WhaleProcessor
from processors.portfolio import PortfolioConfig, PortfolioProcessor
from processors.risk import HaltProcessor, RiskConfig, RiskProcessor, RiskState
from processors.sentiment import SentimentConfig, SentimentProcessor
from processors.trading import TradingConfig, TradingProcessor, TradingState


def build_exchange(s=settings) -> Exchange:
    """The adapter selected by EXCHANGE (``paper`` unless ``hyperliquid`` with keys)."""
    if s.exchange == "hyperliquid":
        from exchanges.hyperliquid import HyperliquidExchange
        return HyperliquidExchange(s.hyperliquid_secret_key.get_secret_value(), s.hyperliquid_base_url,
                                   s.hyperliquid_account_address, taker_fee_bps=s.fee_bps)
    from exchanges.paper import PaperExchange
    return PaperExchange.from_settings(s)


def build_advisor():
    """The LLM advisor, or None without ANTHROPIC_API_KEY."""
    if settings.anthropic_api_key is None:
        return None
    import anthropic

    from processors.llm import LLMAdvisor

    client = anthropic.AsyncAnthropic(api_key=settings.anthropic_api_key.get_secret_value(),
                                      base_url=settings.anthropic_base_url, timeout=settings.llm_timeout_seconds,
                                      max_retries=0)
    return LLMAdvisor(client, settings.llm_model, settings.llm_timeout_seconds, settings.llm_concurrency,
                      settings.llm_queue_size, settings.llm_max_tokens, emit)


def _observe_risk_evaluation(seconds: float) -> None:
    RISK_EVAL_SECONDS.observe(seconds)
    sla.observe("risk_evaluation", seconds * 1000.0)


log = logging.getLogger(__name__)

#: One exposures view per worker, shared by risk (reads) and portfolio (writes): re-read after
#: any change to the global table, this worker's or another's (app.main.RawKeyGlobalTable), rather
#: than every 50 ms through RocksDB, which cost 2 % of the event loop.
exposures = ExposureView(tables.exposures)
tables.exposures.on_change.append(exposures.invalidate)
#: One asset table per worker, shared by risk (maintenance margin) and execution (leverage, size
#: increments): the venue's metadata replaces its entries once the exchange adapter has started.
assets = dict(settings.assets)

#: The stores whose writes mark an input as done (a bar closed, a window decided), so that a replay
#: skips it: held until the broker has acknowledged the events of the step that wrote them
#: (app.main.holding), per agent.
TICK_STORES = tuple(WriteBehind(t) for t in (tables.bar_history, tables.indicators, tables.orderflow, tables.whales))
#: The tick stream's writes of those stores, made once the broker has acknowledged the events of
#: their step while the stream goes on (app.main.StoreAfterAcks).
tick_writes = StoreAfterAcks("ticks", TICK_STORES, stored=PROCESSING_SECONDS.labels("ticks.acks"))
app.steps.writes.append(tick_writes)  # a graceful stop lets them be written before the tables close
CONSENSUS_STORES = (WriteBehind(tables.consensus_windows),)

#: What the tick step's processors read of the halt flags (on every signal) and the correlations
#: (on every bar close): copies re-read after a change, not RocksDB reads each time.
halt_flags, correlations = StoreSnapshot(tables.halt), StoreSnapshot(tables.correlations)
tables.halt.on_change.append(halt_flags.invalidate)
tables.correlations.on_change.append(correlations.invalidate)

trading = TradingProcessor(TradingConfig.from_settings(settings),
                           TradingState(TICK_STORES[0], TICK_STORES[1], correlations, halt_flags),
                           advisor=build_advisor())
orderflow = OrderFlowProcessor(OrderFlowConfig.from_settings(settings), TICK_STORES[2], halt_flags)
whale = WhaleProcessor(WhaleConfig.from_settings(settings), TICK_STORES[3], halt_flags)
risk = RiskProcessor(dataclasses.replace(RiskConfig.from_settings(settings), assets=assets),
                     RiskState(tables.latest_prices, exposures),
                     observe_evaluation=_observe_risk_evaluation)
halt = HaltProcessor(tables.halt)
consensus = ConsensusProcessor(ConsensusConfig.from_settings(settings), ConsensusState(CONSENSUS_STORES[0]))
sentiment = SentimentProcessor(SentimentConfig.from_settings(settings), tables.sentiment_windows)
correlation = CorrelationProcessor(CorrelationConfig.from_settings(settings), tables.correlation_windows,
                                   tables.correlations)
execution = ExecutionProcessor(dataclasses.replace(ExecutionConfig.from_settings(settings), assets=assets),
                               ExecutionState(tables.execution_state, tables.portfolio, tables.halt,
                                              tables.latest_prices),
                               build_exchange())
portfolio = PortfolioProcessor(PortfolioConfig.from_settings(settings), tables.portfolio, exposures,
                               tables.latest_prices, tables.execution_state, tables.halt)

ALL = (trading, orderflow, whale, risk, halt, consensus, sentiment, correlation, execution, portfolio)


@app.on_partitions_revoked.connect
async def _revoked(app_, revoked, **kwargs) -> None:
    # before Faust revokes the tables' partitions: a revoked partition's unwritten layers go
    tick_writes.on_revoked(revoked)
    for p in ALL:
        p.on_revoked(revoked)


@app.on_partitions_assigned.connect
async def _assigned(app_, assigned, **kwargs) -> None:
    consensus.on_assigned(assigned)


@app.task
async def _start_exchange() -> None:
    # At start rather than at the first order, so that the venue's asset metadata is in place
    # before the first tick is marked; the configured table stands until then or if it fails.
    try:
        await execution.adapter()
    except Exception as exc:  # noqa: BLE001 - the first order tries again
        log.warning("exchange adapter not started (%s: %s); the first order retries", type(exc).__name__, exc)
