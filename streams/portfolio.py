"""Portfolio agent: the Faust runtime of :class:`processors.portfolio.PortfolioProcessor` on
``trade.executed``; sets the equity and leverage gauges from each ``state.changed``."""

from __future__ import annotations

import time

from app.main import TOPICS, app, emit, survive, valid_events
from app.runtime import portfolio as processor
from core.metrics import ACCOUNT_LABEL, EQUITY, LEVERAGE, PROCESSING_SECONDS, TICK_TO_FILL_SECONDS
from models.events import PositionClosed, TradeExecuted

_latency = PROCESSING_SECONDS.labels("portfolio")


def portfolio_view(pf: dict) -> dict:
    """JSON view of a portfolio marked to the latest prices (USD)."""
    return processor.view(pf)


@app.agent(TOPICS["trade.executed"], name="portfolio")
async def portfolio_agent(stream):
    async for event, fill in valid_events(stream, (TradeExecuted, PositionClosed), "portfolio"):
        async with survive("portfolio", event, fill):
            t0 = time.perf_counter()
            for out in processor.process(fill):
                await emit(out)
                if out.event_type == "state.changed":
                    account = ACCOUNT_LABEL(out.account)
                    EQUITY.labels(account).set(out.portfolio_value)
                    LEVERAGE.labels(account).set(out.leverage_ratio)
            if fill.event_type == "trade.executed" and fill.ingest_ms:
                TICK_TO_FILL_SECONDS.observe(max(0.0, time.time() - fill.ingest_ms / 1000.0))
            _latency.observe(time.perf_counter() - t0)
