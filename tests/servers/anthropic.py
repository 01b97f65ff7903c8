"""A local Anthropic Messages API (``POST /v1/messages``) speaking the real request and response
JSON (https://docs.anthropic.com/en/api/messages, /en/api/errors).

It checks what the real API checks first (the key, ``anthropic-version``, ``model``,
``max_tokens``, ``messages``; 401/400 with the API's error body otherwise) and answers a forced
``tool_use`` with a ``trade_signal`` that follows the rule-based signal quoted in the prompt.
Modes, set per instance: ``ok``, ``overloaded`` (529 ``overloaded_error``), ``rate_limited`` (429
with ``retry-after``), ``server_error`` (500 ``api_error``), ``invalid`` (a tool call whose input
breaks the schema), ``text`` (plain text, no tool call); ``delay`` seconds before answering.

Run standalone for benchmarks: ``python -m tests.servers.anthropic --port 8787 --delay 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re

from aiohttp import web

from tests.servers import serve

API_KEY = "sk-ant-test-key"
_ids = itertools.count(1)


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status,
                             headers={"request-id": f"req_{next(_ids):024d}", **(headers or {})})


class FakeAnthropic:
    def __init__(self, mode: str = "ok", delay: float = 0.0, gate: asyncio.Event | None = None):
        """``delay``: seconds before each answer; ``gate``: answers wait until it is set too."""
        self.mode = mode
        self.delay = delay
        self.gate = gate
        self.requests: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        return app

    async def start(self) -> str:
        self.runner, self.url = await serve(self.app())
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def messages(self, request: web.Request) -> web.Response:
        # The API takes the key as ``x-api-key``; newer SDKs send ``Authorization: Bearer``.
        if API_KEY not in (request.headers.get("x-api-key"), request.headers.get("Authorization", "")[7:]):
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "request body is not valid JSON")
        for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if not isinstance(body.get(name), kind):
                return _error(400, "invalid_request_error", f"{name}: Field required")
        if not body["messages"] or body["messages"][0].get("role") != "user":
            return _error(400, "invalid_request_error", "messages: first message must use the user role")
        self.requests.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.mode == "overloaded":
            return _error(529, "overloaded_error", "Overloaded")
        if self.mode == "rate_limited":
            return _error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.",
                          {"retry-after": "1"})
        if self.mode == "server_error":
            return _error(500, "api_error", "Internal server error")
        prompt = body["messages"][-1]["content"]
        if isinstance(prompt, list):
            prompt = " ".join(b.get("text", "") for b in prompt)
        m = re.search(r"Rule-based signal: (BUY|SELL|HOLD)", prompt)
        action = m.group(1) if m else "HOLD"
        if self.mode == "text":
            content = [{"type": "text", "text": f"I would {action.lower()} here."}]
            stop = "end_turn"
        else:
            advice = {"action": action, "score": 80, "confidence": 0.7, "reasons": ["follows the rule-based trend"]}
            if self.mode == "invalid":
                advice = {"action": "MOON", "score": 150}
            content = [{"type": "tool_use", "id": f"toolu_{next(_ids):024d}", "name": "trade_signal", "input": advice}]
            stop = "tool_use"
        return web.json_response({
            "id": f"msg_{next(_ids):024d}", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": len(prompt) // 4, "output_tokens": 40}})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--mode", default="ok")
    a = p.parse_args()
    web.run_app(FakeAnthropic(a.mode, a.delay).app(), host="127.0.0.1", port=a.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
