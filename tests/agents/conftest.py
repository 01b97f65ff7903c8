"""Shared fixtures of the Faust agent tests: recording outputs, clean tables and processors, and
``tune`` to change a processor's config for one test."""

from __future__ import annotations

import dataclasses
import json

import pytest

import streams  # noqa: F401  (registers every agent and table, as Faust's autodiscovery does)
from app import main, runtime
from processors.consensus import ConsensusState
from processors.risk import RiskState
from tables import (bar_history, consensus_windows, correlation_windows, correlations, execution_state, exposures,
                    halt, indicators, latest_prices, portfolio, sentiment_windows)


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
    # the processors' in-memory state starts empty too (as in a new worker)
    monkeypatch.setattr(runtime.risk, "state", RiskState(latest_prices, runtime.exposures))
    monkeypatch.setattr(runtime.consensus, "state", ConsensusState(runtime.CONSENSUS_STORES[0]))
    monkeypatch.setattr(runtime.trading.state, "open", {})
    # cleared behind the tables' backs: the views of them read afresh
    for view in (runtime.exposures, runtime.halt_flags, runtime.correlations):
        view.invalidate()
    return recorders


@pytest.fixture
def tune(monkeypatch):
    """``tune(processor, field=value, ...)``: that processor's config with these fields replaced
    for the test (``limits={...}`` replaces fields of the execution limits)."""

    def apply(processor, **changes):
        cfg = processor.config
        if isinstance(changes.get("limits"), dict):
            changes["limits"] = dataclasses.replace(cfg.limits, **changes["limits"])
        monkeypatch.setattr(processor, "config", dataclasses.replace(cfg, **changes))

    return apply
