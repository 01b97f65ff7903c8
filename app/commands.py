"""Custom commands on the app: ``faust -A app feed FILE --speed X``, ``faust -A app sentiment-feed
FILE`` and ``faust -A app migrate``.

Bad arguments print one line to stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import click
from faust.cli import argument, option

from app.main import TOPICS, app, declare_topics, settings
from feeds.files import FeedError, RollingVolume, read_ticks, schedule
from models.events import PriceTick, encode_event


def _one_line_usage_error(self: click.UsageError, file=None) -> None:
    cmd = self.ctx.command_path if self.ctx else "faust"
    click.echo(f"error: {cmd}: {self.format_message()} (see --help)", err=True)


# Click prints usage errors as a usage block; the app's CLI says what is wrong in one line.
click.UsageError.show = _one_line_usage_error


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse_speed(value: str) -> float | None:
    """``max`` → ``None`` (no pacing); a positive number → that multiple of real time."""
    if value.strip().lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        speed = -1.0
    if not speed > 0 or speed == float("inf"):
        fail(f"--speed must be a positive number (a real-time multiple) or 'max', got {value!r}")
    return speed


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
    except FeedError as exc:
        fail(str(exc))
    if not rows:
        fail(f"{file}: no ticks in the file")
    await declare_topics()
    topic = TOPICS["price.ticks"]
    vol = RollingVolume()
    feed_id = uuid.uuid4().hex[:8]
    self.say(f"feeding {len(rows)} ticks of {sorted({r.token for r in rows})} from {file} "
             f"to {topic.get_topic_name()} at speed {speed}")
    t0 = time.monotonic()
    last_report = t0
    for i, (due, row) in enumerate(schedule(rows, pace, gap)):
        if pace:
            wait = t0 + due - time.monotonic()
            if wait > 0.001:
                await asyncio.sleep(wait)
        now_ms = int(time.time() * 1000)
        tick = PriceTick(event_id=uuid.uuid4(), timestamp=row.ts_ms, token=row.token, source=f"feed.file:{feed_id}",
                         price=row.price, size=row.size,
                         volume_1m=vol.add(row.token, row.ts_ms, row.quote_volume), ingest_ms=now_ms)
        await topic.send(key=row.token.encode(), value=encode_event(tick))
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            self.say(f"  {i + 1}/{len(rows)} ticks sent ({(i + 1) / (last_report - t0):.0f}/s)")
    await app.producer.flush()
    elapsed = time.monotonic() - t0
    self.say(f"fed {len(rows)} ticks in {elapsed:.2f} s ({len(rows) / max(elapsed, 1e-9):.0f} ticks/s)")


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
    await declare_topics()
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


@app.command()
async def migrate(self) -> None:
    """Create or upgrade the event-store schema in PostgreSQL (idempotent)."""
    from streams.sink import store

    try:
        version = await store.migrate()
    except Exception as exc:  # noqa: BLE001 - one line, no traceback
        fail(f"cannot migrate {settings.database_url.split('@')[-1]}: {type(exc).__name__}: {exc}", 1)
    finally:
        await store.close()
    self.say(f"event store at schema version {version}")
