"""Custom commands on the app: ``faust -A app feed FILE --speed X``, ``faust -A app sentiment-feed
FILE``, ``faust -A app ingest EXCHANGE`` and ``faust -A app migrate``.

Bad arguments print one line to stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import click
from faust.cli import argument, option

from app.sla import sla, violations_due
from app.main import TOPICS, app, declare_topics, settings
from feeds.files import FeedError, encode_ticks, parse_time_ms, read_ticks, schedule
from models.events import encode_event


def _one_line_usage_error(self: click.UsageError, file=None) -> None:
    cmd = self.ctx.command_path if self.ctx else "faust"
    click.echo(f"error: {cmd}: {self.format_message()} (see --help)", err=True)


# Click prints usage errors as a usage block; the app's CLI says what is wrong in one line.
click.UsageError.show = _one_line_usage_error


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def speed_of(value: str) -> float | None:
    """``max`` → ``None`` (no pacing); a positive number → that multiple of real time.

    Raises:
        ValueError: anything else.
    """
    if value.strip().lower() == "max":
        return None
    speed = float(value)
    if not speed > 0 or speed == float("inf"):
        raise ValueError(value)
    return speed


def parse_speed(value: str) -> float | None:
    """:func:`speed_of`, or a one-line error and exit 2."""
    try:
        return speed_of(value)
    except ValueError:
        fail(f"--speed must be a positive number (a real-time multiple) or 'max', got {value!r}")


@app.command(
    argument("file"),
    option("--speed", default="max", show_default=True, help="Real-time multiple, or 'max'."),
    option("--token", default=None, help="Token for files that name no symbol (candles)."),
    option("--limit", default="0", help="Send at most this many ticks (0 = all)."),
    option("--max-gap", default="5", show_default=True,
           help="Longest wall-clock pause (s) between ticks; longer gaps between sessions shrink to it."),
)
async def feed(self, file: str, speed: str, token: str | None, limit: str, max_gap: str) -> None:
    """Replay a file of real market data as price.tick events keyed by token."""
    pace = parse_speed(speed)
    try:
        n_limit = int(limit)
        gap = float(max_gap)
        if n_limit < 0 or gap < 0:
            raise ValueError
    except ValueError:
        fail(f"--limit must be a whole number >= 0 and --max-gap a number >= 0, got {limit!r}, {max_gap!r}")
    try:
        rows = read_ticks(file, token=token.upper() if token else None, limit=n_limit or None)
        # Validated and encoded before the clock starts, so that a tick costs a splice and a send
        # (11-17 µs of CPU at --speed max; 67-75 µs with the model, the encode and Faust's topic
        # machinery in the loop). The recording's bursts have 1,000 trades within 5 ms: a feed that
        # needs 70 µs a tick stretches them over 70 ms and more, gentler than the exchange sent them.
        encoded = encode_ticks(rows, f"feed.file:{Path(file).name}")
    except FeedError as exc:
        fail(str(exc))
    if not rows:
        fail(f"{file}: no ticks in the file")
    await declare_topics(["price.ticks"])
    topic = TOPICS["price.ticks"].get_topic_name()
    producer = await app.maybe_start_producer()
    self.say(f"feeding {len(rows)} ticks of {sorted({r.token for r in rows})} from {file} "
             f"to {topic} at speed {speed}")
    t0, cpu0 = time.monotonic(), time.process_time()
    last_report = t0
    for i, ((due, _), tick) in enumerate(zip(schedule(rows, pace, gap), encoded)):
        if pace:
            wait = t0 + due - time.monotonic()
            if wait > 0.001:
                await asyncio.sleep(wait)
        # The producer directly, as the exchange feeds send (see ingest below).
        await producer.send(topic, tick.key, tick.value(int(time.time() * 1000)), partition=None, timestamp=None,
                            headers=None)
        # A turn of the loop, so that the producer ships what it holds while the rest of a burst is
        # queued, as a connection to the exchange does: the send does not suspend and a burst's
        # ticks are all due at once, so the first of 1,000 waited until the last was queued, and a
        # worker started on it 17-34 ms after it was stamped (5-18 ms with the turn).
        await asyncio.sleep(0)
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            self.say(f"  {i + 1}/{len(rows)} ticks sent ({(i + 1) / (last_report - t0):.0f}/s)")
    await producer.flush()
    elapsed, cpu_s = time.monotonic() - t0, time.process_time() - cpu0
    self.say(f"fed {len(rows)} ticks in {elapsed:.2f} s ({len(rows) / max(elapsed, 1e-9):.0f} ticks/s; "
             f"{cpu_s / len(rows) * 1e6:.0f} µs of the feed's CPU per tick)")


@app.command(
    argument("file"),
    option("--tokens", default="BTC,ETH", show_default=True, help="Tokens the texts are assigned to, round-robin."),
    option("--rate", default="50", show_default=True, help="Updates per second of event time."),
    option("--start-ms", default="now", show_default=True, help="Event time of the first text (ms), or 'now'."),
    option("--speed", default="1", show_default=True, help="Real-time multiple, or 'max'."),
)
async def sentiment_feed(self, file: str, tokens: str, rate: str, start_ms: str, speed: str) -> None:
    """Score real text with VADER and send it as sentiment.update events keyed by token."""
    from feeds.sentiment import read_updates

    pace = parse_speed(speed)
    try:
        per_s = float(rate)
        start = int(time.time() * 1000) if start_ms == "now" else int(start_ms)
        if not per_s > 0 or start < 0:
            raise ValueError
    except ValueError:
        fail(f"--rate must be a number > 0 and --start-ms a whole number >= 0 or 'now', got {rate!r}, {start_ms!r}")
    names = [t.strip().upper() for t in tokens.split(",") if t.strip()]
    try:
        updates = list(read_updates(file, names, start, per_s))
    except FeedError as exc:
        fail(str(exc))
    await declare_topics(["sentiment.updates"])
    topic = TOPICS["sentiment.updates"]
    self.say(f"feeding {len(updates)} scored texts to {topic.get_topic_name()} for {names} at {per_s}/s, speed {speed}")
    t0 = time.monotonic()
    for u in updates:
        if pace:
            wait = t0 + (u.timestamp - start) / 1000.0 / pace - time.monotonic()
            if wait > 0.001:
                await asyncio.sleep(wait)
        u = u.model_copy(update={"ingest_ms": int(time.time() * 1000)})
        await topic.send(key=u.token.encode(), value=encode_event(u))
    await app.producer.flush()
    self.say(f"fed {len(updates)} sentiment updates in {time.monotonic() - t0:.2f} s")


@app.command(
    argument("exchange"),
    option("--symbols", default=None, help="Comma-separated exchange symbols (BTCUSDT / BTC-USD / BTC)."),
    option("--url", default=None, help="WebSocket base URL (default: the exchange's, or *_WS_URL)."),
    option("--trade-stream", default="trade", show_default=True, help="Binance: 'trade' or 'aggTrade'."),
    option("--max-seconds", default="0", help="Stop after this many seconds (0 = run until stopped)."),
)
async def ingest(self, exchange: str, symbols: str | None, url: str | None, trade_stream: str, max_seconds: str) -> None:
    """Stream live trades (and liquidations) from an exchange WebSocket into price.ticks and
    liquidation.events. One process per exchange, separate from the workers, so scaling the
    workers never duplicates a feed."""
    import gc
    import signal

    from app.main import TOPIC_OF_EVENT, dead_letter_event
    from feeds.exchanges import PROTOCOLS
    from feeds.live import WsFeed

    name = exchange.strip().lower()
    if name not in PROTOCOLS:
        fail(f"unknown exchange {exchange!r}; one of {', '.join(PROTOCOLS)}")
    defaults = {"binance": "BTCUSDT,ETHUSDT", "coinbase": "BTC-USD,ETH-USD", "hyperliquid": "BTC,ETH"}
    names = [x.strip() for x in (symbols or defaults[name]).split(",") if x.strip()]
    try:
        seconds = float(max_seconds)
        if seconds < 0:
            raise ValueError
    except ValueError:
        fail(f"--max-seconds must be a number >= 0, got {max_seconds!r}")
    base = url or getattr(settings, f"{name}_ws_url")
    kwargs: dict = {"users": settings.hyperliquid_ingest_users} if name == "hyperliquid" else {}
    if name == "binance":
        if trade_stream not in ("trade", "aggTrade"):
            fail(f"--trade-stream must be 'trade' or 'aggTrade', got {trade_stream!r}")
        kwargs["trade_stream"] = trade_stream
    protocol = PROTOCOLS[name](names, settings.ingest_token_map, base, **kwargs)

    # A feed sends one tick per frame as it comes: batching by linger only adds latency here.
    # (Set before anything creates the producer.)
    app.conf.producer_linger = 0.0
    await declare_topics(["price.ticks", "liquidation.events", "dead.letters"])
    producer = await app.maybe_start_producer()

    async def publish(key: bytes, value: bytes, event_type: str):
        # The producer directly, not emit(): it returns the broker-ack future the feed times, and
        # skips Faust's per-message topic machinery on a path that runs at 20k+ frames/s.
        return await producer.send(settings.topic(TOPIC_OF_EVENT[event_type]), key, value, partition=None,
                                   timestamp=None, headers=None)

    run_id = uuid.uuid4().hex[:8]  # frame numbers restart with the process

    async def dead_letter(raw: str, reason: str, n: int) -> None:
        dl = dead_letter_event(raw, reason, f"ingest.{name}", f"ws:{name}", None, n, int(time.time() * 1000),
                               id_parts=(run_id,))
        await publish(b"", encode_event(dl), dl.event_type)

    feed = WsFeed(protocol, publish, dead_letter, encode_event, stale_seconds=settings.ingest_stale_seconds,
                  backoff_cap=settings.ingest_backoff_cap_seconds, queue_size=settings.ingest_queue_size, sla=sla)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, feed.stop)
    if seconds:
        loop.call_later(seconds, feed.stop)
    self.say(f"ingesting {name} {names} from {protocol.url()}")
    # Everything allocated so far lives for the whole run: keep it out of the collector's scans,
    # and collect young objects less often (each frame makes a few short-lived ones), which
    # takes garbage-collection pauses out of the frame-to-ack tail.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    async def report_sla() -> None:
        while True:
            await asyncio.sleep(1.0)
            for ev in violations_due(f"ingest.{name}"):
                await publish(b"", encode_event(ev), ev.event_type)

    sla_task = asyncio.ensure_future(report_sla())
    try:
        stats = await feed.run()
    finally:
        sla_task.cancel()
    await producer.flush()
    lat = sorted(feed.ack_latencies)

    def pct(p: float) -> str:
        return f"{lat[int(p / 100 * (len(lat) - 1))] * 1000:.2f} ms" if lat else "n/a"

    rate = stats.events_per_second
    self.say(f"{name}: {stats.frames} frames, {stats.events} events, {stats.parse_errors} parse errors, "
             f"{stats.reconnects} reconnects, {stats.gaps} gaps; {rate or 0:,.0f} events/s; "
             f"frame -> broker ack p50 {pct(50)} p99 {pct(99)}")


def _time_ms(value: str, name: str) -> int:
    try:
        return parse_time_ms(value)
    except ValueError:
        fail(f"{name} must be ms since epoch or an ISO-8601 time, got {value!r}")


class Speed(click.ParamType):
    """A positive real-time multiple, or ``max`` (→ None: no pacing): :func:`speed_of`."""

    name = "speed"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        try:
            return speed_of(value)
        except ValueError:
            self.fail(f"{value!r}: a positive number (a real-time multiple) or 'max'", param, ctx)


class KeyValue(click.ParamType):
    """``name=value``."""

    name = "name=value"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, sep, v = str(value).partition("=")
        if not sep or not name.strip() or not v.strip():
            self.fail(f"{value!r}: expected name=value", param, ctx)
        return name.strip(), v.strip()


def _rule_names() -> list[str]:
    from domain.signals import RULE_SETS

    return sorted(RULE_SETS)


@app.command(
    option("--start", default=None, help="Start of the range (ms or ISO-8601 UTC), from the event store."),
    option("--end", default=None, help="End of the range (exclusive)."),
    option("--file", default=None, type=click.Path(dir_okay=False),
           help="Backtest a data file instead (trades or candles CSV, optionally gzipped)."),
    option("--token", default=None, help="Token for candle files / only this token."),
    option("--engine", type=click.Choice(["inprocess", "kafka"]), default="inprocess",
           help="inprocess: the processors in this process (no Kafka, no PostgreSQL needed for --file); "
                "kafka: replay through an isolated worker (the end-to-end audit)."),
    option("--rules", type=click.Choice(_rule_names()), default=None,
           help="Rule set (default: TRADING_RULES)."),
    option("--param", "params", type=KeyValue(), multiple=True,
           help="Rule-set parameter, repeatable: --param fast=10 --param slow=30 (defaults: the rule set's)."),
    option("--sweep", "sweeps", multiple=True,
           help="Parameter grid, repeatable: --sweep fast=5:50:5 (stop included) or --sweep slow=20,50,100."),
    option("--metric", default="sharpe",
           type=click.Choice(["sharpe", "sortino", "total_return_pct", "annualised_return_pct", "max_drawdown_pct",
                              "win_rate_pct", "profit_factor", "trades"]),
           help="Sweep: the metric results are ranked by."),
    option("--processes", type=click.IntRange(min=1, max=64), default=None,
           help="Sweep: worker processes (default: the CPU count)."),
    option("--agents", default="trading.rules", help="Signal agents that vote (comma separated)."),
    option("--balance", type=click.FloatRange(min=0, min_open=True), default=100_000.0, help="Starting balance (USD)."),
    option("--bar-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
           help="Bar length (s); default: the candle interval for candle files, else BAR_SECONDS."),
    option("--speed", type=Speed(), default="max", help="Kafka engine: a real-time multiple, or 'max'."),
    option("--out", default=None, help="Report folder (default .local/backtests/RUN_ID)."),
)
async def backtest(self, start: str | None, end: str | None, file: str | None, token: str | None, engine: str,
                   rules: str | None, params: tuple, sweeps: tuple, metric: str, processes: int | None, agents: str,
                   balance: float, bar_seconds: float | None, speed: float | None, out: str | None) -> None:
    """Replay history through the same agents, isolated from live trading, and report (or sweep a
    parameter grid)."""
    from tqdm import tqdm

    from backtest import api
    from backtest.engine import INPUT_TYPES
    from backtest.report import write_reports
    from models.events import BacktestReport, derived_id
    from store.eventstore import EventStore, Row

    names = [a.strip() for a in agents.split(",") if a.strip()]
    unknown = [a for a in names if a not in api.VOTING_AGENTS]
    if not names or unknown:
        fail(f"--agents must name voting agents of {', '.join(api.VOTING_AGENTS)}, got {agents!r}")
    if sweeps and engine != "inprocess":
        fail("--sweep runs on the in-process engine only")
    store = EventStore(settings.database_url)
    try:
        if file:
            if start or end:
                fail("give --file or --start/--end, not both")
            data = api.load(file, token)
        else:
            if not (start and end):
                fail("give --start and --end (a range of the event store), or --file")
            lo, hi = _time_ms(start, "--start"), _time_ms(end, "--end")
            if hi <= lo:
                fail("--end must be after --start")
            events, cursor = [], None
            try:
                while True:
                    page, cursor = await store.query(lo, hi, token=token.upper() if token else None,
                                                     event_types=list(INPUT_TYPES), limit=10_000, cursor=cursor)
                    events += [json.loads(r["data"]) for r in page]
                    if cursor is None:
                        break
            except Exception as exc:  # noqa: BLE001 - one line, no traceback
                fail(f"cannot read the event store: {type(exc).__name__}: {exc}", 1)
            if not events:
                fail("nothing to replay in that range")
            data = api.load(events)
            data.source = f"event store {lo}..{hi}" + (f" {token.upper()}" if token else "")
        bar = bar_seconds or (data.candle_ms / 1000.0 if data.candle_ms else settings.bar_seconds)
        rule_params = dict(params)
        rule_set = rules or settings.trading_rules
        if sweeps:
            grid = api.parse_grid(sweeps)
            n = 1
            for v in grid.values():
                n *= len(v)
            self.say(f"sweeping {n} combinations of {', '.join(grid)} for {rule_set} over {len(data.events):,} "
                     f"events ({data.source}), ranked by {metric}")
            df = api.sweep(data, rule_set, grid, metric=metric, processes=processes, agents=names, balance=balance,
                           bar_seconds=bar, base_params=rule_params,
                           **{k: v for k, v in settings.model_dump().items()
                              if k not in api.NOT_RESULT and k not in ("trading_rules", "trading_params",
                                                                       "initial_cash_usd", "bar_seconds")})
            folder = Path(out) if out else Path(".local/backtests") / f"sweep-{uuid.uuid4().hex[:8]}"
            paths = api.write_sweep(df, folder)
            cols = [c for c in [*grid, metric, "total_return_pct", "max_drawdown_pct", "trades", "error"]
                    if c in df.columns]
            self.say(df[cols].head(10).to_string(index=False))
            self.say("results: " + " ".join(str(p) for p in paths.values()))
            return
        s = api.backtest_settings(settings, agents=names, balance=balance, bar_seconds=bar, rules=rule_set,
                                  params=rule_params if (rules or params) else None)
        self.say(f"replaying {len(data.events):,} events ({data.source}) through {names} with {rule_set} "
                 f"{api.resolve(s.trading_rules, s.trading_params)[1].model_dump()} on the {engine} engine "
                 f"(balance {balance:,.0f} USD)")
        with tqdm(total=len(data.events), unit="ev", unit_scale=True, desc="replay") as progress:
            result = await api.arun(data, s, engine=engine, speed=speed, progress=progress.update, agents=names,
                                    keep_outputs=engine == "inprocess")
    except api.BacktestError as exc:
        fail(str(exc))
    folder = Path(out) if out else Path(".local/backtests") / result.run_id
    paths = write_reports(result, folder)
    report = result.report()
    ev = BacktestReport(event_id=derived_id("backtest.report", result.run_id), timestamp=int(time.time() * 1000),
                        source="backtest", run_id=result.run_id, params=report["params"],
                        metrics=report["metrics"] | {"replay": report["replay"], "benchmark": {
                            k: v for k, v in report["benchmark"].items() if k != "curve"}})
    try:
        await store.write([Row(ev.event_id, ev.event_type, ev.timestamp, None, encode_event(ev).decode(), ev.source)])
        if result.kept:
            # what the run emitted, under its run id: `faust -A app trace ID --run RUN_ID` follows a decision
            await store.write_backtest(result.run_id, result.kept)
            self.say(f"kept {len(result.kept):,} events under run {result.run_id} "
                     f"(faust -A app trace <event id> --run {result.run_id})")
    except Exception as exc:  # noqa: BLE001
        self.say(f"note: report not stored in the event store ({type(exc).__name__}: {exc})")
    finally:
        await store.close()
    m = result.performance
    self.say(f"{result.events:,} events in {result.replay_seconds:.2f} s = {result.events_per_second:,.0f} events/s "
             f"({report['replay']['real_time_multiple']}x real time); return {m.total_return_pct:.2f}% "
             f"(buy and hold {result.benchmark['total_return_pct']:.2f}%), max drawdown {m.max_drawdown_pct:.2f}%, "
             f"{m.trades} round trips, win rate {m.win_rate_pct}, fees {m.fees_paid:.2f} USD")
    self.say("reports: " + " ".join(str(p) for p in paths.values()))


@app.command(
    argument("event_id"),
    option("--run", "run_id", default=None, help="A backtest run id: trace the events that run kept."),
    option("--json", "as_json", is_flag=True, default=False, help="Print the tree as JSON."),
    option("--within-hours", type=click.FloatRange(min=0, min_open=True), default=24.0, show_default=True,
           help="Look this far (event time) around the chain's first event."),
)
async def trace(self, event_id: str, run_id: str | None, as_json: bool, within_hours: float) -> None:
    """Print the chain of a decision (or any event of it: tick, signal, order, fill) from the event
    store as a tree of causes: tick -> bar -> signals -> decision -> orders -> fills -> portfolio,
    with event-time and storage timings."""
    import asyncpg

    from store.eventstore import UNAVAILABLE, EventStore
    from store.trace import as_json as tree_json
    from store.trace import build_tree, load_chain, render

    try:
        ident = uuid.UUID(event_id)
    except ValueError:
        fail(f"not an event id (a UUID): {event_id!r}")
    store = EventStore(settings.database_url)
    try:
        events = await load_chain(await store.pool(), ident, run_id, int(within_hours * 3_600_000))
    except LookupError as exc:
        fail(str(exc) + (f" in backtest run {run_id}" if run_id else ""), 1)
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        fail(f"cannot read the event store at {settings.database_url.split('@')[-1]}: {type(exc).__name__}: {exc}", 1)
    finally:
        await store.close()
    tree = build_tree(events)
    print(json.dumps(tree_json(tree), indent=2) if as_json else render(tree))


async def _running_members(group: str) -> int:
    """Members of a consumer group now (0 when it is empty or unknown)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from app.main import aiokafka_connection

    admin = AIOKafkaAdminClient(**aiokafka_connection())
    await admin.start()
    try:
        for response in await admin.describe_consumer_groups([group]):
            for g in response.groups:
                # (error_code, group_id, state, protocol_type, protocol, members, ...)
                if g[2] not in ("Empty", "Dead", "") and g[5]:
                    return len(g[5])
        return 0
    finally:
        await admin.close()


@app.command(
    option("--at", default=None, help="Rebuild the state as of this time (ms or ISO-8601 UTC; default: now)."),
    option("--dry-run", is_flag=True, default=False, help="Print the rebuilt state; write nothing."),
)
async def rebuild(self, at: str | None, dry_run: bool) -> None:
    """Rebuild the account tables (portfolio, execution state, exposures, halt flags, latest
    prices) from the event store: each account's latest state.snapshot plus the fills and orders
    stored after it; then write them to the tables' changelog topics. Stop every worker of the app
    first, and start them again with empty data folders to restore from the rebuilt changelogs."""
    import asyncpg

    from app.main import aiokafka_connection
    from processors.portfolio import PortfolioConfig
    from store.eventstore import UNAVAILABLE, EventStore
    from store.rebuild import rebuild as rebuild_state
    from store.rebuild import write_changelogs

    at_ms = _time_ms(at, "--at") if at else int(time.time() * 1000)
    if not dry_run:
        try:
            members = await _running_members(settings.app_id)
        except Exception as exc:  # noqa: BLE001 - one line, no traceback
            fail(f"cannot reach Kafka at {settings.kafka_broker}: {type(exc).__name__}: {exc}", 1)
        if members:
            fail(f"{members} worker(s) of {settings.app_id} are running: stop them before rebuilding their tables", 1)
    store = EventStore(settings.database_url)
    try:
        stores = await rebuild_state(await store.pool(), PortfolioConfig.from_settings(settings), at_ms)
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        fail(f"cannot read the event store at {settings.database_url.split('@')[-1]}: {type(exc).__name__}: {exc}", 1)
    finally:
        await store.close()
    for account, pf in sorted(stores["portfolio"].items()):
        positions = ", ".join(f"{t} {p['size']:+g} @ {p['entry_price']:.2f}" for t, p in sorted(pf["positions"].items()))
        self.say(f"{account}: cash {pf['cash']:,.2f} USD, {pf.get('fills', 0)} fills, realised {pf['realised_pnl']:,.2f} "
                 f"USD, positions {positions or 'none'}, {len(stores['execution_state'][account]['submitted'])} "
                 f"submitted order ids, halted {bool((stores['halt'].get(account) or {}).get('halted'))}")
    self.say(f"latest prices of {len(stores['latest_prices'])} token(s)")
    if dry_run:
        return
    written = await write_changelogs(stores, settings.app_id, aiokafka_connection(), settings.topic_replication_factor,
                                     settings.topic_min_insync_replicas)
    self.say("written to the changelogs: " + ", ".join(f"{t} {n}" for t, n in written.items())
             + "; start the workers with empty data folders (DATA_DIR) to restore from them")


@app.command()
async def migrate(self) -> None:
    """Create or upgrade the event-store schema in PostgreSQL (idempotent)."""
    from streams.sink import store

    try:
        version = await store.migrate(settings.store_compress_after_days, settings.store_retention_days)
    except Exception as exc:  # noqa: BLE001 - one line, no traceback
        fail(f"cannot migrate {settings.database_url.split('@')[-1]}: {type(exc).__name__}: {exc}", 1)
    finally:
        await store.close()
    self.say(f"event store at schema version {version}")


#: The ACLs of each service role (see the file's "about").
ACL_SPEC = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "acls.json"


def acl_bindings(spec: dict, prefix: str, app_id: str) -> list[tuple[str, list[str]]]:
    """``(principal, kafka-acls arguments)`` for every binding of ``spec`` (``deploy/kafka/acls.json``'s
    shape), ``{prefix}`` and ``{app_id}`` filled in: ``--add --allow-principal User:<name>``, one
    ``--operation`` per operation and the resource (``--topic``/``--group`` with
    ``--resource-pattern-type``, or ``--cluster``), as Kafka's ``kafka.admin.AclCommand`` takes them.

    Raises:
        ValueError: a binding names an unknown resource or pattern type, or no operation.
    """
    out = []
    for principal, role in spec["principals"].items():
        for b in role["bindings"]:
            if not b.get("operations"):
                raise ValueError(f"{principal}: a binding without operations: {b}")
            args = ["--add", "--allow-principal", f"User:{principal}"]
            for op in b["operations"]:
                args += ["--operation", op]
            kind = b["resource"]
            if kind == "cluster":
                args.append("--cluster")
            elif kind in ("topic", "group"):
                pattern = b.get("pattern", "literal")
                if pattern not in ("literal", "prefixed"):
                    raise ValueError(f"{principal}: pattern must be literal or prefixed, got {pattern!r}")
                name = b["name"].format(prefix=prefix, app_id=app_id)
                if not name:  # an empty prefix (no TOPIC_PREFIX): every resource of the kind
                    name, pattern = "*", "literal"
                args += [f"--{kind}", name, "--resource-pattern-type", pattern]
            else:
                raise ValueError(f"{principal}: resource must be topic, group or cluster, got {kind!r}")
            out.append((principal, args))
    return out


@app.command(
    option("--bootstrap-server", default=None, help="Brokers for kafka-acls.sh (default: KAFKA_BROKER's)."),
    option("--command-config", default="admin.properties", show_default=True,
           help="kafka-acls.sh client properties of an admin principal."),
)
async def acls(self, bootstrap_server: str | None, command_config: str) -> None:
    """Print the kafka-acls.sh commands that grant each service role (deploy/kafka/acls.json) its
    rights on this deployment's topics (TOPIC_PREFIX) and groups (APP_ID)."""
    import shlex

    try:
        bindings = acl_bindings(json.loads(ACL_SPEC.read_text()), settings.topic_prefix, settings.app_id)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{ACL_SPEC}: {exc}")
    servers = bootstrap_server or ",".join(settings.bootstrap_servers)
    for principal, args in bindings:
        print(shlex.join(["kafka-acls.sh", "--bootstrap-server", servers, "--command-config", command_config, *args]))
