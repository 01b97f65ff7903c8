"""The topic catalogue: every topic's name, partition count, retention and key, and which topic
each event type goes to. Pure data, shared by the Faust app (which declares the topics) and the
in-process backtest engine (which routes events the same way without a broker).

Partition counts: each agent that reads a table consumes a topic keyed like that table with the
same partition count (Faust's co-partitioning rule): the trading agent's tables have
``price.ticks``' 10 partitions, consensus the 5 of ``signal.generated``, execution and portfolio
the 5 of their account-keyed topics. Consensus decisions are keyed by token, so approvals are
re-keyed by account through the internal topic ``execution.requests`` (5 partitions) before the
execution engine reads the account's tables; 1-minute closes go through the internal
``price.minutes`` (3 partitions, like ``sentiment.updates``) for the correlation join.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from models.events import Envelope

DAY = timedelta(days=1)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention: timedelta
    key: str | None  # "token", "account" or None


TOPIC_SPECS: dict[str, TopicSpec] = {
    s.name: s
    for s in [
        TopicSpec("price.ticks", 10, timedelta(hours=24), "token"),
        TopicSpec("liquidation.events", 3, 7 * DAY, "token"),
        TopicSpec("sentiment.updates", 3, 7 * DAY, "token"),
        TopicSpec("whale.activity", 3, 7 * DAY, "token"),
        TopicSpec("signal.generated", 5, 7 * DAY, "token"),
        TopicSpec("consensus", 5, 7 * DAY, "token"),
        TopicSpec("risk.alerts", 3, 7 * DAY, "account"),
        TopicSpec("correlation", 3, 7 * DAY, "token"),
        TopicSpec("orders", 5, 7 * DAY, "account"),
        TopicSpec("trade.executed", 5, 7 * DAY, "account"),
        TopicSpec("state.changes", 5, 7 * DAY, "account"),
        TopicSpec("system", 1, 7 * DAY, None),
        TopicSpec("dead.letters", 1, 7 * DAY, None),
        # Internal: approvals re-keyed by account for the execution engine.
        TopicSpec("execution.requests", 5, 7 * DAY, "account"),
        # Internal: 1-minute closes per token from the trading agent, co-partitioned with
        # sentiment.updates for the correlation join.
        TopicSpec("price.minutes", 3, 7 * DAY, "token"),
    ]
}

#: event_type -> topic name
TOPIC_OF_EVENT: dict[str, str] = {
    "price.tick": "price.ticks",
    "price.minute": "price.minutes",
    "liquidation.event": "liquidation.events",
    "sentiment.update": "sentiment.updates",
    "whale.activity": "whale.activity",
    "signal.generated": "signal.generated",
    "signal.error": "signal.generated",
    "trade.consensus_approved": "consensus",
    "signal.consensus_failed": "consensus",
    "risk.ok": "risk.alerts",
    "risk.alert": "risk.alerts",
    "risk.critical": "risk.alerts",
    "risk.cascade_detected": "risk.alerts",
    "risk.constraint_violation": "risk.alerts",
    "correlation.detected": "correlation",
    "trade.placed": "orders",
    "trade.rejected": "orders",
    "trade.force_close": "orders",
    "trade.outcome_unknown": "orders",
    "trade.executed": "trade.executed",
    "position.closed": "trade.executed",
    "state.snapshot": "state.changes",
    "state.changed": "state.changes",
    "agent.error": "system",
    "system.startup_failure": "system",
    "agent.lagging": "system",
    "metric.sla_violation": "system",
    "control.action": "system",
    "backtest.report": "system",
    "dead_letter": "dead.letters",
}


def topic_of(event: Envelope) -> str:
    """The topic an event is sent to. Raises KeyError for an event type with no topic."""
    return TOPIC_OF_EVENT[event.event_type]


def key_of(event: Envelope, topic_name: str) -> bytes | None:
    """The message key of ``event`` on ``topic_name``: its token or account (UTF-8), or None for
    unkeyed topics."""
    kind = TOPIC_SPECS[topic_name].key
    if kind == "token":
        return event.token.encode()
    if kind == "account":
        return event.account.encode()  # type: ignore[attr-defined]
    return None
