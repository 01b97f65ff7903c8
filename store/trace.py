"""One decision's story from the event store: the chain of events that share a correlation id,
as a tree of causes.

Every event of a chain carries the ``correlation_id`` of the event that started it (a tick, a
sentiment update) and the ``causation_id`` of the event whose handling produced it (both runtimes
set it, see :mod:`models.events`). :func:`load_chain` reads the chain of any of its events (from
``events``, or from ``backtest_events`` for a backtest run), :func:`build_tree` hangs each event
under its cause (a bar node groups the signals a tick closed), and :func:`render` prints the tree
with timings: event time after the chain's first event, and, where the event store has it, the
wall time from the tick's production (``ingest_ms``) to the event's storage.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson

#: How far around the chain's first event (ms of event time, either way) its events are looked for.
DEFAULT_WITHIN_MS = 24 * 3_600_000


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, timezone.utc)


def _row(r: dict) -> dict:
    stored = r.get("created_at")
    return {"event_id": str(r["event_id"]), "event_type": r["event_type"],
            "timestamp": int(r["timestamp"].timestamp() * 1000), "token": r["token"],
            "data": orjson.loads(r["data"]),
            "stored_ms": int(stored.timestamp() * 1000) if stored is not None else None}


async def load_chain(pool, event_id: uuid.UUID, run_id: str | None = None,
                     within_ms: int = DEFAULT_WITHIN_MS) -> list[dict]:
    """Every stored event of the chain ``event_id`` belongs to (its own id or a correlation id),
    in time order: dicts with ``event_id``, ``event_type``, ``timestamp`` (ms), ``token``,
    ``data`` (the event's JSON) and ``stored_ms`` (when the store wrote it; None for backtests).
    ``run_id``: read the events a backtest run kept instead of the live ones. Events of the chain
    more than ``within_ms`` of event time away from its first one are not looked for.

    Raises ``LookupError`` when no stored event has that id or correlation id."""
    if run_id is None:
        table, stored, scope = "events", "created_at", []
    else:
        table, stored, scope = "backtest_events", "NULL::timestamptz", [("run_id", run_id)]
    columns = f"event_id, event_type, timestamp, token, data::text AS data, {stored} AS created_at"

    def sql(where: str, n_params: int, select: str = columns) -> str:
        # ``where`` numbers its own parameters from $1; the run's scope takes the ones after
        extra = "".join(f" AND {col} = ${n_params + i + 1}" for i, (col, _) in enumerate(scope))
        return f"SELECT {select} FROM {table} WHERE {where}{extra}"

    scoped = [v for _, v in scope]
    by_id = sql("event_id = $1", 1) + " LIMIT 1"
    async with pool.acquire() as conn:
        found = await conn.fetchrow(by_id, event_id, *scoped)
        root = None
        if found is not None:
            correlation = orjson.loads(found["data"]).get("correlation_id") or str(event_id)
            root = found if correlation == str(event_id) else await conn.fetchrow(by_id, uuid.UUID(correlation),
                                                                                  *scoped)
        else:
            correlation = str(event_id)
        if root is not None:
            lo = root["timestamp"]
        else:
            # the chain's first event is not stored (or the id is a correlation id): its earliest member
            lo = await conn.fetchval(sql("data->>'correlation_id' = $1", 1, "min(timestamp)"), correlation, *scoped)
            if lo is None:
                if found is None:
                    raise LookupError(f"no stored event has id or correlation id {event_id}")
                lo = found["timestamp"]
        # around the first event: a bar's signals are stamped at its end, before the tick that closed it
        first_ms = int(lo.timestamp() * 1000)
        rows = await conn.fetch(sql("data->>'correlation_id' = $1 AND timestamp >= $2 AND timestamp < $3", 3)
                                + " ORDER BY timestamp, event_id LIMIT 10000",
                                correlation, _ts(first_ms - within_ms), _ts(first_ms + within_ms), *scoped)
    out = [_row(dict(r)) for r in rows]
    if root is not None and all(e["event_id"] != str(root["event_id"]) for e in out):
        out.insert(0, _row(dict(root)))
    return out


def build_tree(events: list[dict]) -> list[dict]:
    """Nest ``events`` (as :func:`load_chain` gives them) under their causes: each node is the
    event dict with ``children`` (in event-time order); signals a tick closed a bar with hang under
    a ``bar`` node (the bar ending at the signals' time, closing at their price). The root is the
    event that started the chain (its id is the others' correlation id; else the first event);
    an event whose cause is not in the chain hangs under the root."""
    if not events:
        return []
    nodes = {e["event_id"]: {**e, "children": []} for e in events}
    correlations = {e["data"].get("correlation_id") for e in events}
    root_id = next((e["event_id"] for e in events if e["event_id"] in correlations), events[0]["event_id"])
    bars: dict[tuple, dict] = {}
    for e in sorted(events, key=lambda e: e["timestamp"]):
        if e["event_id"] == root_id:
            continue
        node = nodes[e["event_id"]]
        cause = e["data"].get("causation_id")
        parent = nodes[cause] if cause in nodes and cause != e["event_id"] else nodes[root_id]
        if e["event_type"] == "signal.generated" and parent["event_type"] == "price.tick":
            key = (parent["event_id"], e["timestamp"])
            bar = bars.get(key)
            if bar is None:
                bar = bars[key] = {"event_id": None, "event_type": "bar", "timestamp": e["timestamp"],
                                   "token": e["token"], "data": {"close": e["data"].get("price")},
                                   "stored_ms": None, "children": []}
                parent["children"].append(bar)
            bar["children"].append(node)
        else:
            parent["children"].append(node)
    return [nodes[root_id]]


def _summary(node: dict) -> str:
    d, t = node["data"], node["event_type"]
    if t == "price.tick":
        side = f" {d['side']}" if d.get("side") else ""
        size = f" size {d['size']}" if d.get("size") is not None else ""
        return f"{node['token']} {d.get('price')}{size}{side} ({d.get('source')})"
    if t == "bar":
        return f"{node['token']} bar closed at {_clock(node['timestamp'])}, close {d.get('close')}"
    if t in ("signal.generated", "signal.error"):
        return (f"{d.get('agent')} {d.get('action', '')} score {d.get('score')} confidence {d.get('confidence')}"
                if t == "signal.generated" else f"{d.get('agent')}: {d.get('error')}")
    if t in ("trade.consensus_approved", "signal.consensus_failed"):
        extra = f" ({d['reason']})" if d.get("reason") else ""
        return (f"{d.get('recommended_action')} score {d.get('consensus_score')} confidence {d.get('confidence')} "
                f"agents {','.join(d.get('contributing_agents') or [])}{extra}")
    if t in ("trade.placed", "trade.rejected", "trade.force_close", "trade.outcome_unknown"):
        extra = f" ({d['reason']})" if d.get("reason") else ""
        return f"{d.get('account')} {d.get('side')} {d.get('size')} {d.get('token') or ''} id {d.get('client_order_id')}{extra}"
    if t == "trade.executed":
        return (f"{d.get('account')} {d.get('side')} {d.get('filled_amount')} at {d.get('fill_price')} "
                f"fee {d.get('fee')} slippage {d.get('slippage')}")
    if t == "position.closed":
        return f"{d.get('account')} {node['token']} pnl {d.get('pnl_usd')} USD after {d.get('duration_s')} s"
    if t in ("state.changed", "state.snapshot"):
        return (f"{d.get('account')} equity {d.get('portfolio_value')} leverage {d.get('leverage_ratio')} "
                f"positions {','.join(sorted(d.get('positions') or {})) or '-'}")
    if t.startswith("risk."):
        return f"{d.get('account')} {d.get('severity')} {d.get('violation_type') or ''} {d.get('action_required') or ''}".strip()
    return node["token"] or ""


def _clock(ms: int) -> str:
    return _ts(ms).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def render(roots: list[dict]) -> str:
    """The tree as text, one event per line: event type, its gist, ``+Δ ms`` of event time after
    the root (a bar closes before the tick that closes it arrives, so its signals show a negative
    offset), and ``stored +Δ ms`` after the chain's tick was produced when both are known."""
    if not roots:
        return ""
    t0 = roots[0]["timestamp"]
    ingest = roots[0]["data"].get("ingest_ms")
    lines = [f"chain of {roots[0]['event_type']} {roots[0]['event_id']} at {_clock(t0)} UTC"]

    def walk(node: dict, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        timing = f"{node['timestamp'] - t0:+d} ms"
        if node.get("stored_ms") is not None and ingest:
            timing += f", stored +{node['stored_ms'] - ingest} ms"
        ident = f" {node['event_id']}" if node.get("event_id") and not top else ""
        lines.append(f"{prefix}{branch}{node['event_type']}: {_summary(node)} [{timing}]{ident}")
        kids = node["children"]
        for i, child in enumerate(kids):
            walk(child, prefix + ("" if top else ("   " if last else "│  ")), i == len(kids) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)


def as_json(roots: list[dict]) -> list[dict]:
    """The tree as JSON-ready dicts (``event_id``, ``event_type``, ``timestamp``, ``token``,
    ``summary``, ``stored_ms``, ``data``, ``children``)."""
    return [{"event_id": n["event_id"], "event_type": n["event_type"], "timestamp": n["timestamp"],
             "token": n["token"], "summary": _summary(n), "stored_ms": n.get("stored_ms"), "data": n["data"],
             "children": as_json(n["children"])} for n in roots]
