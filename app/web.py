"""Web views on the Faust web port (WEB_PORT, 6066 by default).

- ``GET /health/``: broker reachable, database reachable with the event-store schema in place,
  tables recovered, dashboard hub caught up, event-store sink not stuck (its batch waiting or the
  sink silent for over SINK_STUCK_SECONDS); 200 when all are, else 503.
- ``GET /health/live/`` (liveness: the event loop answers) and ``GET /health/ready/`` (readiness:
  broker reachable, tables recovered, no rebalance in progress, dashboard hub caught up; 503
  otherwise), for Kubernetes
  probes. The health views never require a token.
- ``GET /portfolio/`` and ``/portfolio/{account}/``: cash, equity, positions (size, entry and mark
  price, unrealised PnL), leverage, realised PnL and fees (USD). Routed to the worker that owns
  the account's partition, so any replica answers.
- ``GET /indicators/{token}/``: the last closed bar, its indicator values and the rule signal.
- ``GET /sentiment/{token}/``: follower-weighted bullish share (%), updates and weight of the 5m,
  30m and 1h windows, and the velocity (percentage points).
- ``GET /correlation/{token}/``: the latest sentiment–price correlation (r, points, implied action).
- ``GET /trace/{event_id}/``: the chain of events the id belongs to (tick, bar, signals, decision,
  orders, fills, portfolio changes) as a tree of causes with timings, JSON (``faust -A app trace``
  prints the same as text).
- ``GET /events/?start=&end=&token=&type=&limit=&cursor=``: the event store by time range
  (``start``/``end`` in ms since epoch or ISO-8601, end exclusive), token and event type (comma
  separated), ordered by time, ``limit`` per page (default 500, at most 10,000) and a ``cursor``
  for the next page (``next_cursor`` of the previous answer). 400 with the reason on bad input.
- ``GET /positions/`` and ``/positions/{account}/``: the account's open positions as a list (size,
  entry and mark price, unrealised PnL, liquidation price and distance %), routed like the
  portfolio.
- ``GET /signals/``, ``/decisions/``, ``/alerts/``, ``/orders/``, ``/trades/``: the most recent
  events (DASHBOARD_HISTORY, oldest first) across every partition, from the dashboard hub, so every
  replica gives the same answer; ``?token=`` filters by token.
- ``GET /halt/``: the trading-halt flag per account (a global table: every worker has it).
- ``GET /prices/``: the last price per token that positions are marked with (a global table).
- ``GET /router/``: which worker holds which partitions of each table (Faust's router view; its
  ``/table/`` views, which served raw table contents, are switched off).
- ``GET /dashboard/``: the live dashboard page; ``/dashboard/ws/`` its WebSocket
  (:mod:`app.dashboard`); ``/static/...`` its vendored assets. The page and assets carry a
  Content-Security-Policy (own scripts, styles and WebSocket only); the page writes event fields
  as text, never as markup; the WebSocket refuses (403) a browser Origin other than the worker's
  own or DASHBOARD_ALLOWED_ORIGINS.
- ``POST /control/halt/``, ``/control/resume/``, ``/control/close-all/`` with a JSON body
  ``{"reason": "...", "account": "..."}`` (account defaults to ACCOUNT): need ``Authorization:
  Bearer <token>`` (:mod:`app.control`); 401 without a valid one, 429 past
  CONTROL_RATE_PER_MINUTE per client, 400 on a bad body, 202 when the action is sent. Every
  request, refused or not, is audited as a ``control.action`` event (who, why, client, outcome).
- ``GET /metrics/``: Prometheus text exposition (Faust's sensors and the domain metrics);
  ``?name[]=<family>`` (repeatable) answers only those families.

The event-store views (``/events/``, ``/trace/``) need the bearer token unless EVENTS_AUTH=false.
With READ_AUTH set, every read view except the health views and the dashboard's page and assets
needs it too.

Token views are routed to the worker that owns the token's partition (404 when nothing is known);
tokens are upper case, as in the events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.control import MAX_BODY, authenticate, client_address, events_auth, limiter, read_auth, unauthorized
from app.dashboard import STATIC, hub
from app.main import app, emit, settings
from core.metrics import CONSUMER_LAG, CONTROL_REQUESTS, REGISTRY
from app.sla import emit_due
from models.events import AgentLagging, ControlAction, OrderEvent, RiskEvent, StartupFailure, derived_id, new_event_id
from streams.portfolio import portfolio_view
from store.eventstore import UNAVAILABLE
from streams.sink import health as sink_health
from streams.sink import schema_ready, store
from domain import sentiment as sm
from feeds.files import parse_time_ms
from tables import correlations, halt, indicators, latest_prices, portfolio, sentiment_windows

log = logging.getLogger("moondev.web")


async def _broker_ok() -> bool:
    host, _, port = settings.bootstrap_servers[0].partition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port or 9092)), 1.0)
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


async def health_checks() -> dict[str, bool]:
    """The checks of ``/health/``: name -> passed."""
    broker, database = await asyncio.gather(_broker_ok(), _database_ok())
    return {"broker": broker, "database": database and schema_ready.is_set(), "tables_ready": _tables_ready(),
            "dashboard_ready": hub.ready.is_set(),
            "event_store_sink": not (settings.store_events and sink_health.stuck())}


@app.page("/health/")
class Health(View):
    async def get(self, request: Request) -> Response:
        checks = await health_checks()
        ok = all(checks.values())
        return self.json({"status": "ok" if ok else "degraded", **checks}, status=200 if ok else 503)


@app.task
async def _watch_startup() -> None:
    """``system.startup_failure`` once, when the health checks do not all pass within
    STARTUP_TIMEOUT_SECONDS of the start (the worker goes on: a dependency may come back)."""
    t0 = time.monotonic()
    while True:
        checks = await health_checks()
        waited = time.monotonic() - t0
        if all(checks.values()):
            return
        if waited >= settings.startup_timeout_seconds:
            break
        await asyncio.sleep(1.0)
    failing = sorted(k for k, ok in checks.items() if not ok)
    where = f"{settings.web_host}:{settings.web_port}"
    log.error("worker %s not ready %.0f s after its start: %s failing", where, waited, ", ".join(failing))
    try:
        await emit(StartupFailure(event_id=new_event_id(), timestamp=int(time.time() * 1000), source="worker",
                                  worker=where, reason="not ready: " + ", ".join(failing) + " failing",
                                  checks=checks, waited_s=round(waited, 1)), wait=True)
    except Exception:  # noqa: BLE001 - Kafka itself may be what fails
        log.exception("could not send system.startup_failure")


def _portfolio_json(account: str) -> dict:
    pf = portfolio.get(account)
    if pf is None:
        return {"account": account, "cash": settings.initial_cash_usd, "equity": settings.initial_cash_usd,
                "positions": {}, "leverage": 0.0, "realised_pnl": 0.0, "unrealised_pnl": 0.0, "fees_paid": 0.0,
                "fills": 0}
    return {"account": account, **portfolio_view(pf)}


@app.page("/portfolio/")
class Portfolio(View):
    @read_auth
    @app.table_route(table=portfolio, exact_key=settings.account)
    async def get(self, request: Request) -> Response:
        return self.json(_portfolio_json(settings.account))


@app.page("/portfolio/{account}/")
class AccountPortfolio(View):
    @read_auth
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
    @read_auth
    @app.table_route(table=indicators, match_info="token")
    async def get(self, request: Request, token: str) -> Response:
        return _token_json(self, indicators, token, "no closed bar")


@app.page("/sentiment/{token}/")
class Sentiment(View):
    @read_auth
    @app.table_route(table=sentiment_windows, match_info="token")
    async def get(self, request: Request, token: str) -> Response:
        return _token_json(self, sentiment_windows, token, "no sentiment", _sentiment_json)


@app.page("/correlation/{token}/")
class Correlation(View):
    @read_auth
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
    @events_auth
    async def get(self, request: Request) -> Response:
        q = request.query
        try:
            start, end = _time_arg(q.get("start"), "start"), _time_arg(q.get("end"), "end")
            limit = int(q.get("limit", "500"))
            types = [t for t in q.get("type", "").split(",") if t] or None
            token = q.get("token") or None
            for name, value in (("token", token), *(("type", t) for t in types or ())):
                if value is not None and (len(value) > 64 or not value.isprintable()):
                    raise ValueError(f"{name} must be at most 64 printable characters")
            rows, cursor = await store.query(start, end, token=token, event_types=types, limit=limit,
                                             cursor=q.get("cursor") or None, max_bytes=settings.events_page_max_bytes)
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        except UNAVAILABLE as exc:
            log.warning("/events/: event store unavailable (%s)", type(exc).__name__)
            return self.json({"error": "event store unavailable"}, status=503)
        return self.json({"events": [dict(r, data=json.loads(r["data"])) for r in rows], "next_cursor": cursor})


@app.page("/trace/{event_id}/")
class Trace(View):
    """One decision's chain from the event store as a tree of causes (store.trace), JSON; 400 for
    an id that is not a UUID, 404 when nothing stored has it, 503 when the store is down."""

    @events_auth
    async def get(self, request: Request, event_id: str) -> Response:
        from store.trace import as_json, build_tree, load_chain

        try:
            ident = uuid.UUID(event_id)
        except ValueError:
            return self.json({"error": "event id must be a UUID"}, status=400)
        try:
            events = await load_chain(await store.pool(), ident)
        except LookupError as exc:
            return self.json({"error": str(exc)}, status=404)
        except UNAVAILABLE as exc:
            log.warning("/trace/: event store unavailable (%s)", type(exc).__name__)
            return self.json({"error": "event store unavailable"}, status=503)
        return self.json({"event_id": event_id, "events": len(events), "tree": as_json(build_tree(events))})


def _update_lag() -> dict:
    """Messages behind the high watermark per assigned partition (also set in the gauge)."""
    consumer = app.consumer
    try:
        assignment = consumer.assignment()
    except Exception:  # noqa: BLE001 - not started yet
        return {}
    lags = {}
    for tp in assignment:
        try:
            hw = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - revoked while we look (a rebalance): skip it
            continue
        # The last offset handed to this worker's streams (app.monitor); before the first message
        # of a partition, the consumer's read offset, which is the committed offset then.
        read = app.monitor.tp_read_offsets.get(tp)
        if read is None:
            read = consumer._read_offset.get(tp)
        if hw is None:
            continue
        lags[tp] = lag = max(hw - (read + 1 if read is not None else 0), 0)
        CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
    return lags


@app.on_partitions_revoked.connect
async def _forget_read_offsets(app_, revoked, **kwargs) -> None:
    # A partition assigned again is read from its committed offset: until its first message the
    # offset read before the revocation would hide that lag.
    for tp in revoked:
        app.monitor.tp_read_offsets.pop(tp, None)


class LagReporter:
    """``agent.lagging`` for every agent input partition at least ``threshold`` messages behind,
    at most once per ``every_s`` seconds per partition while it stays behind."""

    def __init__(self, threshold: int, every_s: float = 60.0) -> None:
        self.threshold = threshold
        self.every_s = every_s
        self.reported: dict = {}  # TopicPartition -> monotonic time of its last report

    def due(self, lags: dict, agent_of: dict, now: float) -> list[AgentLagging]:
        out = []
        for tp, lag in lags.items():
            agent = agent_of.get(tp.topic)
            if agent is None or lag < self.threshold:
                continue
            if now - self.reported.get(tp, -self.every_s) < self.every_s:
                continue
            self.reported[tp] = now
            out.append(AgentLagging(event_id=new_event_id(), timestamp=int(time.time() * 1000),
                                    source=f"worker:{settings.web_port}", agent=agent, reason="consumer_lag",
                                    topic=tp.topic, partition=tp.partition, lag=lag, threshold=self.threshold))
        return out


lag_reporter = LagReporter(settings.agent_lag_threshold)


def _agent_inputs() -> dict[str, str]:
    """Topic name -> name of the agent that reads it."""
    out = {}
    for name, agent in app.agents.items():
        for topic in getattr(agent.channel, "topics", ()):
            out[topic] = name.rsplit(".", 1)[-1]
    return out


# Every second: a worker can work off a backlog of tens of thousands of ticks within a few seconds
# of starting, and a check every 5 s (skipped while the first rebalance runs) could miss it whole.
@app.timer(1.0)
async def _report_lagging() -> None:
    if app.rebalancing:
        return  # partitions are moving: positions and high watermarks mean nothing yet
    try:
        due = lag_reporter.due(_update_lag(), _agent_inputs(), time.monotonic())
        for event in due:
            log.warning("agent %s is %d messages behind on %s[%d]", event.agent, event.lag, event.topic,
                        event.partition)
            await emit(event)
    except Exception:  # noqa: BLE001 - a health report must never take the worker down
        log.exception("agent.lagging check failed")


@app.timer(1.0)
async def _emit_sla_violations() -> None:
    await emit_due(f"worker:{settings.web_port}")


@app.page("/metrics/")
class Metrics(View):
    @read_auth
    async def get(self, request: Request) -> Response:
        # ``?name[]=a&name[]=b`` restricts the answer to those families, as prometheus-client's own
        # exporter does: a full exposition takes ~10 ms of the worker's loop, too much for a
        # caller that polls a counter several times a second (the benchmarks).
        names = request.query.getall("name[]", [])
        if not names:
            _update_lag()
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        return self.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])


# ------------------------------------------------------------------ probes
@app.page("/health/live/")
class Live(View):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "alive"})


@app.page("/health/ready/")
class Ready(View):
    async def get(self, request: Request) -> Response:
        checks = {"broker": await _broker_ok(), "tables_ready": _tables_ready(), "dashboard_ready": hub.ready.is_set()}
        ok = all(checks.values())
        return self.json({"status": "ready" if ok else "not_ready", **checks}, status=200 if ok else 503)


# ------------------------------------------------------------------ positions, recent events, halt
def _positions_json(account: str) -> dict:
    pf = _portfolio_json(account)
    return {"account": account, "positions": [{"token": t, **p} for t, p in sorted(pf["positions"].items())]}


@app.page("/positions/")
class Positions(View):
    @read_auth
    @app.table_route(table=portfolio, exact_key=settings.account)
    async def get(self, request: Request) -> Response:
        return self.json(_positions_json(settings.account))


@app.page("/positions/{account}/")
class AccountPositions(View):
    @read_auth
    @app.table_route(table=portfolio, match_info="account")
    async def get(self, request: Request, account: str) -> Response:
        return self.json(_positions_json(account))


def _recent_view(kind: str):
    class Recent(View):
        @read_auth
        async def get(self, request: Request) -> Response:
            token = request.query.get("token")
            events = [e for e in hub.recent_events(kind) if not token or e.get("token") == token.upper()]
            return self.json({"ready": hub.ready.is_set(), "events": events})
    Recent.__name__ = f"Recent_{kind}"
    return Recent


for _kind, _path in [("signal", "/signals/"), ("decision", "/decisions/"), ("alert", "/alerts/"),
                     ("order", "/orders/"), ("trade", "/trades/")]:
    app.page(_path)(_recent_view(_kind))


@app.page("/halt/")
class Halt(View):
    @read_auth
    async def get(self, request: Request) -> Response:
        flags = {(k.decode() if isinstance(k, bytes) else k): v for k, v in halt.items()}
        return self.json({"halted": sorted(a for a, v in flags.items() if v and v.get("halted")), "accounts": flags})


@app.page("/prices/")
class Prices(View):
    @read_auth
    async def get(self, request: Request) -> Response:
        # a global table: the last price every worker marks positions with
        return self.json({(k.decode() if isinstance(k, bytes) else k): v for k, v in latest_prices.items()})


# ------------------------------------------------------------------ dashboard
_ASSETS = {
    "dashboard.js": "application/javascript", "dashboard.css": "text/css",
    "vendor/uPlot.iife.min.js": "application/javascript", "vendor/uPlot.min.css": "text/css",
}


#: The page loads only its own scripts, styles and WebSocket; nothing inline, no frames, no
#: forms, and the URL (which holds the token with READ_AUTH) is not sent on as a referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def origin_allowed(request: Request) -> bool:
    """Whether a WebSocket request may be served: no ``Origin`` (not a browser), an Origin naming
    the host the request was sent to, or one of DASHBOARD_ALLOWED_ORIGINS. A page on another site
    cannot open the push channel from its visitors' browsers."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in settings.dashboard_allowed_origins:
        return True
    host = request.headers.get("Host", "")
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


@app.page("/router/")
class Router(View):
    """Which worker (host:port) holds which partitions of each table: Faust's own router view,
    under READ_AUTH like the other read views."""

    @read_auth
    async def get(self, request: Request) -> Response:
        return self.json(app.router.tables_metadata())


@app.page("/dashboard/")
class Dashboard(View):
    async def get(self, request: Request) -> Response:
        return self.html((STATIC / "dashboard.html").read_text(), headers=dict(PAGE_HEADERS))


@app.page("/dashboard/ws/")
class DashboardSocket(View):
    async def get(self, request: Request):
        if not origin_allowed(request):
            return self.json({"error": "origin not allowed"}, status=403)
        if settings.read_auth and authenticate(request) is None:
            return unauthorized(self)
        return await hub.serve(request)


@app.page("/static/{path:.+}")
class Static(View):
    async def get(self, request: Request, path: str) -> Response:
        kind = _ASSETS.get(path)
        if kind is None:  # only the listed files: no path traversal
            return self.json({"error": "not found"}, status=404)
        return self.bytes((STATIC / path).read_bytes(), content_type=kind,
                          headers={"Cache-Control": "public, max-age=3600", **PAGE_HEADERS})


# ------------------------------------------------------------------ control
async def _read_body(request: Request) -> bytes | None:
    """The whole request body (however many segments it arrives in), or None when it is longer
    than MAX_BODY bytes (read no further)."""
    if (request.content_length or 0) > MAX_BODY:
        return None
    raw = b""
    while chunk := await request.content.read(MAX_BODY + 1 - len(raw)):
        raw += chunk
        if len(raw) > MAX_BODY:
            return None
    return raw


async def _audit(action: str, account: str, who: str | None, why: str, client: str, outcome: str,
                 audit_id=None) -> None:
    """Emit the ``control.action`` audit event and wait for the broker's acknowledgement, so that
    an answer to the client means the audit is durable."""
    audit_id = audit_id or new_event_id()
    await emit(ControlAction(event_id=audit_id, timestamp=int(time.time() * 1000), source="web.control",
                             correlation_id=audit_id, action=action, account=account, who=who or "anonymous",
                             why=why, client=client, outcome=outcome), wait=True)
    # what the client sent is escaped (newlines, control and non-ASCII characters as \n, \x..,
    # \u....), so a body cannot forge log lines
    log.warning("control %s for %s by %s from %s: %s (%s)", action, _escaped(account), who or "anonymous", client,
                _escaped(why) or "-", outcome)


def _escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


async def _control(view: View, request: Request, action: str) -> Response:
    client = client_address(request)
    who = authenticate(request)
    key = f"holder:{who}" if who else f"addr:{client}"
    allowed, retry_after = limiter.allow(key)
    if not allowed:
        CONTROL_REQUESTS.labels(action, "rate_limited").inc()
        refused = limiter.refusals_to_report(key)
        if refused:  # audited, but once per client per RateLimiter.REPORT_EVERY_S however hard it pushes
            await _audit(action, settings.account, who, "", client, f"rate_limited: {refused} request(s) refused")
        return view.json({"error": "rate limited", "retry_after_s": round(retry_after, 1)}, status=429,
                         headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})
    raw = await _read_body(request)
    try:
        body = json.loads(raw) if raw is not None and raw.strip() else ({} if raw is not None else None)
    except ValueError:
        body = None
    valid = isinstance(body, dict)
    body = body if valid else {}
    why = str(body.get("reason") or "").strip()[:500]
    account = str(body.get("account") or settings.account)[:64]
    now = int(time.time() * 1000)
    audit_id = new_event_id()
    if who is None:
        outcome = "unauthorized"
    elif not valid:
        outcome = f"invalid: body must be a JSON object of at most {MAX_BODY} bytes"
    elif not why:
        outcome = "invalid: a reason is required"
    elif account not in settings.known_accounts():
        outcome = f"invalid: unknown account {_escaped(account)!r} (ACCOUNT, ACCOUNTS)"
    else:
        outcome = "accepted"
    if who is None:  # an anonymous body is not evidence of anything: audit the attempt, not its words
        why, account = "", settings.account
    await _audit(action, account, who, why, client, outcome, audit_id)
    CONTROL_REQUESTS.labels(action, outcome.split(":")[0]).inc()
    if who is None:
        return unauthorized(view)
    if outcome != "accepted":
        return view.json({"error": outcome.split(": ", 1)[1]}, status=400)
    common = dict(timestamp=now, source="web.control", correlation_id=audit_id, account=account)
    text = f"{action} by {who}: {why}"
    if action == "halt":
        await emit(RiskEvent(event_id=derived_id("control", audit_id), event_type="risk.alert", severity="WARNING",
                             violation_type="manual", action_required=text, metrics={"who": who}, **common),
                   wait=True)
    elif action == "resume":
        await emit(RiskEvent(event_id=derived_id("control", audit_id), event_type="risk.ok", severity="INFO",
                             violation_type="manual", action_required=text, metrics={"who": who}, **common),
                   wait=True)
    else:
        await emit(OrderEvent(event_id=derived_id("control", audit_id), event_type="trade.force_close",
                              client_order_id="0x" + derived_id("close_all", audit_id).hex, side="SELL", size=0.0,
                              reason=text, reduce_only=True, **common), wait=True)
    return view.json({"accepted": True, "action": action, "account": account, "who": who,
                      "event_id": str(audit_id)}, status=202)


@app.page("/control/halt/")
class ControlHalt(View):
    async def post(self, request: Request) -> Response:
        return await _control(self, request, "halt")


@app.page("/control/resume/")
class ControlResume(View):
    async def post(self, request: Request) -> Response:
        return await _control(self, request, "resume")


@app.page("/control/close-all/")
class ControlCloseAll(View):
    async def post(self, request: Request) -> Response:
        return await _control(self, request, "close_all")
