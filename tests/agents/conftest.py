"""Shared fixtures of the agent tests: recording outputs and clean tables."""

from __future__ import annotations

import json

import pytest

import app as _app  # noqa: F401  (registers every agent and table)
from app import main
from streams import risk
from streams import consensus as consensus_mod
from streams import trading as trading_mod
from tables import (consensus_windows, correlation_windows, correlations, execution_state, exposures, halt,
                    latest_prices, portfolio, sentiment_windows, bar_history, indicators)


class Recorder:
    """Stands in for an output topic: keeps what was sent, decoded."""

    def __init__(self):
        self.sent: list[tuple[bytes | None, dict]] = []

    async def send(self, key=None, value=None, **_):
        self.sent.append((key, json.loads(value)))

    def of(self, event_type: str) -> list[dict]:
        return [v for _, v in self.sent if v.get("event_type") == event_type]


@pytest.fixture
def outputs(monkeypatch):
    recorders = {name: Recorder() for name in main.TOPICS}
    for name, rec in recorders.items():
        monkeypatch.setitem(main.OUTPUTS, name, rec)
    for table in (consensus_windows, execution_state, portfolio, latest_prices, exposures, halt, sentiment_windows,
                  correlation_windows, correlations, bar_history, indicators):
        table.data.clear()
    for memo in (risk._alerted, risk._reference, risk._closing, risk._seen, risk._written):
        memo.clear()
    risk.invalidate_exposures()
    consensus_mod._open.clear()
    trading_mod._open.clear()
    trading_mod._minutes.clear()
    consensus_mod._stream_time.clear()
    return recorders
