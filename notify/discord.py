"""Discord webhook notifier for risk events (aiohttp client).

CRITICAL events (``risk.critical``, ``risk.cascade_detected``) are posted at once; WARNING ones
(``risk.alert``) are batched, up to 10 embeds per message (Discord's limit), and posted at most
``batch_seconds`` after the first of the batch. Rate limits follow Discord's documentation
(https://discord.com/developers/docs/topics/rate-limits): a ``429`` answer's ``retry_after``
(seconds, JSON body, else the ``Retry-After`` header) is waited before the same message is
retried, and ``X-RateLimit-Remaining: 0`` defers the next post by ``X-RateLimit-Reset-After``.
Network errors and 5xx answers are retried with exponential backoff, then the message is dropped
and counted; the stream is never blocked (the queue is bounded, the oldest WARNING is dropped first).

The webhook URL contains its secret token: it is held as a ``SecretStr``-like private attribute
and never logged (errors are logged by class and status only).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import aiohttp

from core.metrics import BOUNDS_HIT, NOTIFICATIONS

log = logging.getLogger(__name__)
MAX_EMBEDS = 10
COLORS = {"CRITICAL": 0xE74C3C, "WARNING": 0xF1C40F, "INFO": 0x2ECC71}


def embed(event) -> dict:
    """A Discord embed for one risk event (``models.events.RiskEvent``)."""
    m = event.metrics or {}
    fields = [{"name": k, "value": (f"{v:.4g}" if isinstance(v, float) else str(v))[:1024], "inline": True}
              for k, v in list(m.items())[:12] if v is not None]
    return {
        "title": f"{event.event_type} · {event.account} · {event.token or ''}".strip(" ·")[:256],
        "description": f"{event.violation_type or ''} — {event.action_required or ''}".strip(" —")[:4096],
        "color": COLORS.get(event.severity, 0x95A5A6),
        "timestamp": datetime.fromtimestamp(event.timestamp / 1000, tz=timezone.utc).isoformat(),
        "fields": fields,
        "footer": {"text": f"event {event.event_id}"},
    }


class DiscordNotifier:
    def __init__(self, webhook_url: str, batch_seconds: float = 2.0, max_queue: int = 1000,
                 max_attempts: int = 5, username: str = "moondev risk", max_wait_seconds: float = 60.0):
        """``max_wait_seconds``: the longest a rate-limit answer (``retry_after``, the reset
        headers) makes the notifier wait, whatever the server says."""
        self._url = webhook_url
        self.batch_seconds, self.max_attempts, self.username = batch_seconds, max_attempts, username
        self.max_wait_seconds = max_wait_seconds
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._next_allowed = 0.0

    def _seconds(self, *candidates) -> float:
        """The first candidate that is a finite, non-negative number of seconds, capped at
        ``max_wait_seconds``; 1 s when none is (a server's header is input like any other)."""
        for value in candidates:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                continue
            if seconds == seconds and seconds >= 0:  # not NaN
                if seconds > self.max_wait_seconds:
                    BOUNDS_HIT.labels("discord_wait").inc()
                return min(seconds, self.max_wait_seconds)
        return min(1.0, self.max_wait_seconds)

    def __repr__(self) -> str:
        return "DiscordNotifier(webhook=<redacted>)"

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            self._task = asyncio.create_task(self._run(), name="discord-notifier")

    async def stop(self, drain_s: float = 2.0) -> None:
        """Send what is queued (for at most ``drain_s`` seconds), then close."""
        if self._task is None:
            return
        await self._queue.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_s)
        except asyncio.TimeoutError:
            self._task.cancel()
        self._task = None
        await self._session.close()

    def notify(self, event) -> None:
        """Queue one risk event (never blocks). When the queue is full the event is dropped."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            NOTIFICATIONS.labels("dropped").inc()
            log.warning("Discord queue full: %s %s dropped", event.event_type, event.event_id)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: list = []
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                ev = await asyncio.wait_for(self._queue.get(), timeout)
            except asyncio.TimeoutError:
                ev = "flush"
            if ev is None:  # stop: flush and leave
                if pending:
                    await self._send(pending[:MAX_EMBEDS])
                return
            if ev == "flush":
                batch, pending = pending[:MAX_EMBEDS], pending[MAX_EMBEDS:]
                deadline = loop.time() + self.batch_seconds if pending else None
                if batch:
                    await self._send(batch)
                continue
            if ev.severity == "CRITICAL":
                await self._send([ev])
                continue
            pending.append(ev)
            if deadline is None:
                deadline = loop.time() + self.batch_seconds
            if len(pending) >= MAX_EMBEDS:
                deadline = loop.time()

    async def _send(self, events: list) -> bool:
        crit = any(e.severity == "CRITICAL" for e in events)
        payload = {"username": self.username,
                   "content": ("🚨 " if crit else "⚠️ ") + f"{len(events)} risk event(s)",
                   "embeds": [embed(e) for e in events],
                   "allowed_mentions": {"parse": []}}
        loop = asyncio.get_running_loop()
        backoff = 0.5
        for _attempt in range(self.max_attempts):
            wait = self._next_allowed - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                async with self._session.post(self._url, json=payload) as resp:
                    headers = resp.headers
                    if resp.status == 429:
                        NOTIFICATIONS.labels("rate_limited").inc()
                        try:
                            body = await resp.json(content_type=None)
                        except (ValueError, aiohttp.ContentTypeError):
                            body = None
                        retry_after = self._seconds(body.get("retry_after") if isinstance(body, dict) else None,
                                                    headers.get("Retry-After"))
                        log.info("Discord rate limit: retrying in %.2fs", retry_after)
                        await asyncio.sleep(retry_after)
                        continue
                    if headers.get("X-RateLimit-Remaining") == "0":
                        self._next_allowed = loop.time() + self._seconds(headers.get("X-RateLimit-Reset-After"))
                    if 200 <= resp.status < 300:
                        NOTIFICATIONS.labels("sent").inc()
                        return True
                    if 400 <= resp.status < 500:  # our payload or the webhook is wrong: do not retry
                        log.error("Discord webhook refused a message: HTTP %s", resp.status)
                        NOTIFICATIONS.labels("dropped").inc()
                        return False
                    log.warning("Discord webhook answered HTTP %s; retrying", resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("Discord webhook unreachable (%s); retrying", type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 8.0)
        NOTIFICATIONS.labels("dropped").inc()
        log.error("Discord message with %d event(s) dropped after %d attempts", len(events), self.max_attempts)
        return False
