"""One trace per decision, without a broker: JSON log lines carry the handled event's ids, the
in-process engine sets every event's cause as a worker does, and a chain becomes a tree of causes
(tick → bar → signals → decision → order and fill → portfolio)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid

from backtest import api
from core.logs import TRACE_FIELDS, JsonFormatter, logging_config, trace_fields, tracing
from models.events import PriceTick, SignalGenerated
from store.trace import as_json, build_tree, render


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.trace.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, out


def test_json_lines_carry_the_handled_events_ids_and_nothing_outside():
    logger, out = _logger()
    tick = PriceTick(event_id=uuid.uuid4(), timestamp=1_723_161_280_000, token="BTC", source="t", price=1.0)
    sig = SignalGenerated(event_id=uuid.uuid4(), timestamp=1_723_161_281_000, token="BTC", source="trading.rules",
                          correlation_id=tick.event_id, causation_id=tick.event_id, action="BUY", score=90,
                          confidence=1.0, agent="trading.rules")
    logger.info("outside")
    with tracing("consensus", sig):
        logger.info("inside %s", "a signal")
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    for line in (outside, inside):
        assert list(line)[:4] == ["time", "level", "logger", "process"] or {"time", "level", "logger"} <= set(line)
        assert set(TRACE_FIELDS) <= set(line)
    assert outside["correlation_id"] is None and outside["message"] == "outside"
    assert inside["message"] == "inside a signal" and inside["agent"] == "consensus"
    assert (inside["event_id"], inside["correlation_id"], inside["causation_id"]) == (
        str(sig.event_id), str(tick.event_id), str(tick.event_id))
    assert inside["token"] == "BTC" and inside["level"] == "INFO" and inside["time"].endswith("+00:00")
    # an event without a correlation id starts its chain
    assert trace_fields("ticks", tick)["correlation_id"] == str(tick.event_id)
    assert logging_config("text") is None
    assert logging_config("json")["formatters"]["default"] == {"()": "core.logs.JsonFormatter"}


def test_every_event_the_engine_emits_names_its_cause(sample_path):
    data = api.load(sample_path, "BTC")
    s = api.backtest_settings(agents=("trading.rules", "orderflow", "whale"), bar_seconds=1.0)
    res = asyncio.run(api.arun(data, s, keep_outputs=True, agents=("trading.rules", "orderflow", "whale")))
    kept = {e["event_id"]: e for e in res.kept}
    outputs = [e for e in res.kept if e["event_type"] != "price.tick"]
    assert outputs and all(e.get("causation_id") for e in outputs)
    by_type: dict[str, list] = {}
    for e in outputs:
        by_type.setdefault(e["event_type"], []).append(e)
    for sig in by_type["signal.generated"]:
        assert kept[sig["causation_id"]]["event_type"] == "price.tick" == kept[sig["correlation_id"]]["event_type"]
    for d in by_type["trade.consensus_approved"]:
        assert kept[d["causation_id"]]["event_type"] == "signal.generated"
        assert d["causation_id"] in d["signal_ids"]
    for f in by_type["trade.executed"]:
        assert kept[f["causation_id"]]["event_type"] == "trade.consensus_approved"
    for st in by_type["state.changed"]:
        assert kept[st["causation_id"]]["event_type"] == "trade.executed"

    # one decision's chain, as the trace command reads it from the store
    fill = by_type["trade.executed"][0]
    chain = sorted((e for e in res.kept if (e.get("correlation_id") or e["event_id"]) == fill["correlation_id"]),
                   key=lambda e: e["timestamp"])
    events = [{"event_id": e["event_id"], "event_type": e["event_type"], "timestamp": e["timestamp"],
               "token": e.get("token"), "data": e, "stored_ms": None} for e in chain]
    [root] = build_tree(events)
    assert root["event_type"] == "price.tick"
    [bar] = [c for c in root["children"] if c["event_type"] == "bar"]
    assert {c["event_type"] for c in bar["children"]} == {"signal.generated"}
    decision = next(n for s in bar["children"] for n in s["children"] if n["event_type"] == "trade.consensus_approved")
    kinds = {c["event_type"] for c in decision["children"]}
    assert {"trade.placed", "trade.executed"} <= kinds
    text = render([root])
    for word in ("price.tick", "bar", "signal.generated", "trade.consensus_approved", "trade.executed",
                 "state.changed"):
        assert word in text, word
    assert text.splitlines()[0].startswith("chain of price.tick")
    assert as_json([root])[0]["children"][0]["event_type"] in ("bar", "signal.generated", "whale.activity")
