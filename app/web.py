"""Web views on the Faust web port (WEB_PORT, 6066 by default).

- ``GET /health/``: broker reachable, database reachable, tables recovered; 200 when all are, else 503.
- ``GET /portfolio/`` and ``/portfolio/{account}/``: cash, equity, positions (size, entry and mark
  price, unrealised PnL), leverage, realised PnL and fees (USD). Routed to the worker that owns
  the account's partition, so any replica answers.
- ``GET /indicators/{token}/``: the last closed bar, its indicator values and the rule signal.
- ``GET /sentiment/{token}/``: follower-weighted bullish share (%), updates and weight of the 5m,
  30m and 1h windows, and the velocity (percentage points).
- ``GET /correlation/{token}/``: the latest sentiment–price correlation (r, points, implied action).
- ``GET /events/?start=&end=&token=&type=&limit=&cursor=``: the event store by time range
  (``start``/``end`` in ms since epoch or ISO-8601, end exclusive), token and event type (comma
  separated), ordered by time, ``limit`` per page (default 500, at most 10,000) and a ``cursor``
  for the next page (``next_cursor`` of the previous answer). 400 with the reason on bad input.
- ``GET /metrics/``: Prometheus text exposition.

Token views are routed to the worker that owns the token's partition (404 when nothing is known);
tokens are upper case, as in the events.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.main import app, settings
from app.metrics import CONSUMER_LAG, REGISTRY
from streams.portfolio import portfolio_view
from streams.sink import store
from domain import sentiment as sm
from feeds.files import parse_time_ms
from tables import correlations, indicators, portfolio, sentiment_windows


async def _broker_ok() -> bool:
    url = urlparse(settings.kafka_broker.split(";")[0].split(",")[0])
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port or 9092), 1.0)
        writer.close()
        return True
    except (OSError, asyncio.TimeoutError):
        return False


async def _database_ok() -> bool:
    try:
        pool = await asyncio.wait_for(store.pool(), 2.0)
        return await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0) == 1
    except Exception:  # noqa: BLE001 - any failure means not healthy
        return False


def _tables_ready() -> bool:
    recovery = app.tables.recovery
    return recovery.completed.is_set() and not app.rebalancing


@app.page("/health/")
class Health(View):
    async def get(self, request: Request) -> Response:
        broker, database = await asyncio.gather(_broker_ok(), _database_ok())
        checks = {"broker": broker, "database": database, "tables_ready": _tables_ready()}
        ok = all(checks.values())
        return self.json({"status": "ok" if ok else "degraded", **checks}, status=200 if ok else 503)


def _portfolio_json(account: str) -> dict:
    pf = portfolio.get(account)
    if pf is None:
        return {"account": account, "cash": settings.initial_cash_usd, "equity": settings.initial_cash_usd,
                "positions": {}, "leverage": 0.0, "realised_pnl": 0.0, "unrealised_pnl": 0.0, "fees_paid": 0.0,
                "fills": 0}
    return {"account": account, **portfolio_view(pf)}


@app.page("/portfolio/")
class Portfolio(View):
    @app.table_route(table=portfolio, exact_key=settings.account)
    async def get(self, request: Request) -> Response:
        return self.json(_portfolio_json(settings.account))


@app.page("/portfolio/{account}/")
class AccountPortfolio(View):
    @app.table_route(table=portfolio, match_info="account")
    async def get(self, request: Request, account: str) -> Response:
        return self.json(_portfolio_json(account))


def _sentiment_json(state: dict) -> dict:
    stats = sm.windows(state)
    return {"watermark_ms": state["watermark"], "velocity_pp": sm.velocity(stats),
            "windows": {k: {"bullish_pct": v.bullish_pct, "updates": v.updates, "weight": v.weight}
                        for k, v in stats.items()}}


def _token_json(view: View, table, token: str, missing: str, render=lambda v: v) -> Response:
    value = table.get(token)
    if value is None:
        return view.json({"error": f"{missing} for {token}"}, status=404)
    return view.json({"token": token, **render(value)})


@app.page("/indicators/{token}/")
class Indicators(View):
    @app.table_route(table=indicators, match_info="token")
    async def get(self, request: Request, token: str) -> Response:
        return _token_json(self, indicators, token, "no closed bar")


@app.page("/sentiment/{token}/")
class Sentiment(View):
    @app.table_route(table=sentiment_windows, match_info="token")
    async def get(self, request: Request, token: str) -> Response:
        return _token_json(self, sentiment_windows, token, "no sentiment", _sentiment_json)


@app.page("/correlation/{token}/")
class Correlation(View):
    async def get(self, request: Request, token: str) -> Response:
        # a global table: every worker has it, no routing
        return _token_json(self, correlations, token, "no correlation", lambda v: {"window": "1h", **v})


def _time_arg(value: str | None, name: str) -> int:
    if value is None:
        raise ValueError(f"{name} is required")
    try:
        return parse_time_ms(value)
    except ValueError:
        raise ValueError(f"{name} must be ms since epoch or ISO-8601, got {value!r}") from None


@app.page("/events/")
class Events(View):
    async def get(self, request: Request) -> Response:
        q = request.query
        try:
            start, end = _time_arg(q.get("start"), "start"), _time_arg(q.get("end"), "end")
            limit = int(q.get("limit", "500"))
            types = [t for t in q.get("type", "").split(",") if t] or None
            rows, cursor = await store.query(start, end, token=q.get("token") or None, event_types=types,
                                             limit=limit, cursor=q.get("cursor") or None)
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        return self.json({"events": [dict(r, data=json.loads(r["data"])) for r in rows], "next_cursor": cursor})


def _update_lag() -> None:
    consumer = app.consumer
    try:
        assignment = consumer.assignment()
    except Exception:  # noqa: BLE001 - not started yet
        return
    for tp in assignment:
        hw = consumer.highwater(tp)
        read = consumer._read_offset.get(tp)  # last offset this worker read (Faust keeps it per partition)
        if hw is None:
            continue
        lag = hw - (read + 1 if read is not None else 0)
        CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


@app.page("/metrics/")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        _update_lag()
        return self.bytes(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])
