"""A local Discord webhook endpoint (``POST /api/webhooks/{id}/{token}``) that records what it
receives and answers like Discord: ``204 No Content`` with the ``X-RateLimit-*`` headers, or, when
told to, ``429`` with Discord's JSON body (``message``, ``retry_after`` in seconds, ``global``)
and a ``Retry-After`` header (https://discord.com/developers/docs/topics/rate-limits)."""

from __future__ import annotations

import time

from aiohttp import web

from tests.servers import serve


class FakeDiscord:
    def __init__(self):
        self.received: list[tuple[float, dict]] = []  # (monotonic time, JSON body)
        self.attempts = 0
        self.rate_limit_next = 0  # answer this many requests with 429
        self.retry_after = 0.3
        self.fail_next = 0  # answer this many with 500
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, webhook_id: str = "1234567890", token: str = "s3cr3t-t0ken") -> str:
        app = web.Application()
        app.router.add_post("/api/webhooks/{id}/{token}", self.execute)
        self.runner, base = await serve(app)
        self.url = f"{base}/api/webhooks/{webhook_id}/{token}"
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def execute(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            return web.json_response(
                {"message": "You are being rate limited.", "retry_after": self.retry_after, "global": False},
                status=429, headers={"Retry-After": str(self.retry_after), "X-RateLimit-Limit": "5",
                                     "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": str(self.retry_after),
                                     "X-RateLimit-Scope": "user"})
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500, text="internal error")
        body = await request.json()
        self.received.append((time.monotonic(), body))
        return web.Response(status=204, headers={"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
                                                 "X-RateLimit-Reset-After": "0.4"})
