"""Replay backtests: history from the event store (or a data file) through the same agents,
isolated from live trading.

A run starts its own worker process (``faust -A app worker``) with its own app id and topic
prefix, hence its own consumer group, tables and changelogs, its own paper exchange and account
balance, and ``STORE_EVENTS=false`` so nothing it derives mixes with the live event store. The
input events are produced to the run's topics in timestamp order with their original timestamps;
every agent works on event time (bars, windows, the 5 s consensus), so the wall clock does not
enter the result. When the worker has consumed the input and gone quiet, the fills are read back
from the run's ``trade.executed`` topic, the portfolio is rebuilt from them with
:mod:`domain.portfolio`, marked at every bar close with the input prices, and measured with
:mod:`domain.performance`. Reports: JSON, a self-contained HTML page (plotly, its JavaScript
inlined, so it opens offline) and a ``backtest.report`` event in the event store.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from app.local import Stack
from domain.performance import Performance, evaluate
from domain.portfolio import apply_fill, new_portfolio

#: event types replayed from the store (the inputs of the agents)
INPUT_TYPES = ("price.tick", "sentiment.update", "liquidation.event")
TOPIC_OF_INPUT = {"price.tick": "price.ticks", "sentiment.update": "sentiment.updates",
                  "liquidation.event": "liquidation.events"}


@dataclass
class Result:
    run_id: str
    params: dict
    performance: Performance
    fills: list[dict]
    curve: list[tuple[int, float]]  # (ms, equity USD)
    prices: dict[str, list[tuple[int, float]]]  # token -> (ms, close) per bar
    events: int
    replay_seconds: float
    data_span_s: float
    extra: dict = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.replay_seconds if self.replay_seconds > 0 else 0.0

    def report(self) -> dict:
        return {"run_id": self.run_id, "params": self.params, "metrics": self.performance.to_dict(),
                "replay": {"events": self.events, "seconds": round(self.replay_seconds, 3),
                           "events_per_second": round(self.events_per_second, 1),
                           "data_span_seconds": self.data_span_s,
                           "real_time_multiple": round(self.data_span_s / self.replay_seconds, 1)
                           if self.replay_seconds > 0 else None},
                "trades": [{k: f.get(k) for k in ("timestamp", "token", "side", "fill_price", "filled_amount", "fee")}
                           for f in self.fills]}


def broker_address(kafka_broker: str) -> str:
    return kafka_broker.split("://", 1)[-1].split(";")[0]


async def _produce(broker: str, prefix: str, events: list[dict], speed: float | None,
                   progress: Callable[[int], None]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        t0, first = time.monotonic(), events[0]["timestamp"] if events else 0
        for i, ev in enumerate(events):
            if speed:
                wait = t0 + (ev["timestamp"] - first) / 1000.0 / speed - time.monotonic()
                if wait > 0.001:
                    await asyncio.sleep(wait)
            ev = dict(ev, ingest_ms=int(time.time() * 1000))
            await producer.send(prefix + TOPIC_OF_INPUT[ev["event_type"]], json.dumps(ev).encode(),
                                key=ev["token"].encode())
            if i % 1000 == 999:
                progress(1000)
        await producer.flush()
        progress(len(events) % 1000)
    finally:
        await producer.stop()


async def read_topics(broker: str, topics: list[str], idle_s: float) -> list[tuple[str, dict]]:
    """Every event on the topics from the beginning, as (topic, event), until none arrives for
    ``idle_s`` seconds."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[tuple[str, dict]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return out
            for msgs in batch.values():
                out += [(m.topic, json.loads(m.value)) for m in msgs]
    finally:
        await consumer.stop()


async def _delete_topics(broker: str, prefixes: tuple[str, ...]) -> None:
    """Delete the run's topics (its prefix) and changelogs (its app id)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def equity_curve(events: list[dict], fills: list[dict], balance: float, bar_ms: int
                 ) -> tuple[list[int], list[float], list[bool], list[float], float, dict]:
    """Rebuild the account from its fills and mark it at each bar close with the input prices.

    Returns (times ms, equity USD, exposed flags, closed-trade PnLs USD, fees USD, bar closes per
    token)."""
    pf = new_portfolio(balance)
    fills = sorted(fills, key=lambda f: (f["timestamp"], f.get("fill_id") or ""))
    last: dict[str, float] = {}
    times, equity, exposed, pnls = [], [], [], []
    closes: dict[str, list[tuple[int, float]]] = {}
    fi, bucket = 0, None

    def apply_until(t: float) -> None:
        nonlocal fi
        while fi < len(fills) and fills[fi]["timestamp"] <= t:
            f = fills[fi]
            closed = apply_fill(pf, f["token"], f["side"], f["filled_amount"], f["fill_price"], f["fee"],
                                f["timestamp"], f.get("fill_id") or f["client_order_id"])
            if closed is not None:
                pnls.append(closed.pnl_usd)
            fi += 1

    def sample(t: int) -> None:
        eq = pf["cash"] + sum(p["size"] * last.get(tok, p["entry_price"]) for tok, p in pf["positions"].items())
        times.append(t)
        equity.append(eq)
        exposed.append(bool(pf["positions"]))

    for ev in events:
        if ev["event_type"] != "price.tick":
            continue
        ts = ev["timestamp"]
        b = ts - ts % bar_ms
        if bucket is not None and b > bucket:
            for tok, px in last.items():
                closes.setdefault(tok, []).append((bucket + bar_ms, px))
            apply_until(bucket + bar_ms)
            sample(bucket + bar_ms)
        bucket = b
        last[ev["token"]] = ev["price"]
    apply_until(float("inf"))
    if bucket is not None:
        sample(bucket + bar_ms)
    return times, equity, exposed, pnls, pf["fees_paid"], closes


def run_backtest(events: list[dict], *, workdir: Path, database_url: str, kafka_broker: str, balance: float,
                 agents: list[str], bar_seconds: float, speed: float | None = None, settings: dict | None = None,
                 progress: Callable[[int], None] = lambda n: None, keep_topics: bool = False,
                 quiet_s: float = 3.0) -> Result:
    """Replay ``events`` (SPEC JSON dicts, sorted by timestamp) through an isolated worker and
    measure the result. ``agents``: the signal agents that vote (others are weighted 0);
    ``speed``: a real-time multiple, or None for as fast as possible; ``settings``: more
    environment for the worker (``{"TRADING_RULES": "sma_cross"}``). Raises RuntimeError when the
    worker fails, TimeoutError when it does not finish."""
    if not events:
        raise ValueError("no events to replay")
    weights = {a: 1.0 for a in agents}
    weights.update({a: 0.0 for a in ("trading.rules", "trading.llm", "sentiment") if a not in agents})
    env = {"BAR_SECONDS": str(bar_seconds), "INITIAL_CASH_USD": str(balance), "EXCHANGE": "paper",
           "STORE_EVENTS": "false", "DASHBOARD_ENABLED": "false", "AGENT_WEIGHTS": json.dumps(weights), "CONSENSUS_MIN_AGENTS": str(min(2, len(agents))),
           "STORE_URL": "memory://", **(settings or {})}
    stack = Stack(workdir, database_url, **env)
    # No LLM (its answers depend on wall-clock latency) and no Discord alerts from a backtest.
    for key in ("ANTHROPIC_API_KEY", "DISCORD_WEBHOOK_URL"):
        stack.env.pop(key, None)
    broker = broker_address(kafka_broker)
    prefix = stack.env["TOPIC_PREFIX"]
    n_ticks = sum(1 for e in events if e["event_type"] == "price.tick")
    worker = stack.worker("backtest")
    try:
        worker.start()
        t0 = time.monotonic()
        asyncio.run(_produce(broker, prefix, events, speed, progress))
        # Done when the trading agent has every tick and every agent has caught up with its
        # input (consumer lag 0 on every partition, twice in a row).
        deadline, idle = time.monotonic() + 3600, 0
        while idle < 2:
            if time.monotonic() > deadline or (worker.proc and worker.proc.poll() is not None):
                raise TimeoutError(f"the backtest worker did not finish: {worker.log_tail()}")
            m = worker.metrics()
            # the run's topics only: changelogs of active tables are written, not consumed
            lags = [v for k, v in m.items() if k.startswith("moondev_consumer_lag{") and f'topic="{prefix}' in k]
            caught_up = m.get("moondev_ticks_consumed_total", 0) >= n_ticks and lags and max(lags) == 0
            idle = idle + 1 if caught_up else 0
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        fills = [e for _, e in asyncio.run(read_topics(broker, [prefix + "trade.executed"], quiet_s))
                 if e.get("event_type") == "trade.executed"]
    finally:
        worker.stop(signal.SIGKILL)  # nothing to keep: its tables are in memory, its topics go next
        if not keep_topics:
            try:
                asyncio.run(_delete_topics(broker, (prefix, stack.env["APP_ID"] + "-")))
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
    bar_ms = int(bar_seconds * 1000)
    times, equity, exposed, pnls, fees, closes = equity_curve(events, fills, balance, bar_ms)
    if len(times) < 2:
        times, equity, exposed = [events[0]["timestamp"], events[-1]["timestamp"]], [balance, balance], [False, False]
    perf = evaluate(times, equity, exposed, pnls, fees)
    params = {"agents": agents, "balance": balance, "bar_seconds": bar_seconds, "speed": speed or "max",
              "start_ms": events[0]["timestamp"], "end_ms": events[-1]["timestamp"], **(settings or {})}
    return Result(stack.run_id, params, perf, sorted(fills, key=lambda f: f["timestamp"]), list(zip(times, equity)),
                  closes, len(events), max(elapsed, 1e-9), (events[-1]["timestamp"] - events[0]["timestamp"]) / 1000.0)


def write_reports(result: Result, out_dir: Path) -> tuple[Path, Path]:
    """``report.json`` and a self-contained ``report.html`` (equity, drawdown, trades on the price
    chart; plotly with its JavaScript inlined)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    out_dir.mkdir(parents=True, exist_ok=True)
    report = result.report()
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    tokens = sorted(result.prices)
    fig = make_subplots(rows=2 + len(tokens), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=["Equity (USD)", "Drawdown (%)"] + [f"{t} close and trades" for t in tokens])
    ts = [t for t, _ in result.curve]
    eq = [e for _, e in result.curve]
    peak, dd = 0.0, []
    for e in eq:
        peak = max(peak, e)
        dd.append(-(peak - e) / peak * 100 if peak else 0.0)

    def as_dt(ms: list[int]) -> list[datetime]:
        return [datetime.fromtimestamp(x / 1000, timezone.utc) for x in ms]

    fig.add_trace(go.Scatter(x=as_dt(ts), y=eq, name="equity"), row=1, col=1)
    fig.add_trace(go.Scatter(x=as_dt(ts), y=dd, name="drawdown", fill="tozeroy"), row=2, col=1)
    for i, tok in enumerate(tokens):
        px = result.prices[tok]
        fig.add_trace(go.Scatter(x=as_dt([t for t, _ in px]), y=[p for _, p in px], name=f"{tok} close"), row=3 + i, col=1)
        for side, symbol, color in (("BUY", "triangle-up", "green"), ("SELL", "triangle-down", "red")):
            fs = [f for f in result.fills if f["token"] == tok and f["side"] == side]
            fig.add_trace(go.Scatter(x=as_dt([f["timestamp"] for f in fs]), y=[f["fill_price"] for f in fs],
                                     mode="markers", marker=dict(symbol=symbol, color=color, size=9),
                                     name=f"{tok} {side}"), row=3 + i, col=1)
    m = result.performance
    fig.update_layout(height=500 + 300 * len(tokens), title=(
        f"Backtest {result.run_id}: return {m.total_return_pct:.2f}%, max drawdown {m.max_drawdown_pct:.2f}%, "
        f"{m.trades} closed trades, Sharpe {m.sharpe if m.sharpe is None else round(m.sharpe, 2)}"))
    html_path = out_dir / "report.html"
    fig.write_html(str(html_path), include_plotlyjs=True, full_html=True)
    return json_path, html_path
