"""A local HyperLiquid API: ``POST /info``, ``POST /exchange`` and the ``/ws`` WebSocket, with the
request and response JSON of HyperLiquid's API as its official Python SDK sends and reads them
(``hyperliquid/info.py``, ``exchange.py``, ``websocket_manager.py`` and the SDK's examples).

``/exchange`` checks the EIP-712 signature of each order action with the SDK's own
``recover_agent_or_user_from_l1_action`` (testnet domain, as the SDK signs for any URL but
mainnet's), refuses a reused ``cloid`` and orders under $10, fills IOC orders at the mid in up
to two parts, and pushes the fills on the ``userFills`` channel before answering.

``/info`` also answers ``meta`` (``universe``, editable), ``orderStatus`` by ``cloid``
(``{"status": "unknownOid"}`` for one never placed), ``userFills`` and ``clearinghouseState``
(``assetPositions`` from the fills). ``lose_answers = n`` executes the next ``n`` orders but
answers 502 (the answer lost on the way back), ``drop_orders = n`` answers 502 to the next ``n`` without
executing them (lost on the way in); ``info_down`` answers 503 to every ``/info``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from aiohttp import WSMsgType, web

from tests.servers import serve
from hyperliquid.utils.signing import recover_agent_or_user_from_l1_action

UNIVERSE = [{"name": "BTC", "szDecimals": 5, "maxLeverage": 40}, {"name": "ETH", "szDecimals": 4, "maxLeverage": 25}]


class FakeHyperliquid:
    def __init__(self, address: str, mids: dict[str, float], fee_rate: float = 0.00045, split: bool = True):
        self.address = address.lower()
        self.mids = dict(mids)
        self.fee_rate, self.split = fee_rate, split
        self.orders: list[dict] = []  # every /exchange payload received
        self.signers: list[str] = []
        self.subscriptions: list[dict] = []
        self._cloids: dict[str, int] = {}
        self._oid = itertools.count(77_747_314)
        self._tid = itertools.count(500_000_001)
        self._sockets: set = set()
        self.universe = [dict(u) for u in UNIVERSE]
        self.by_cloid: dict[str, dict] = {}  # cloid -> {"order": ..., "status": ...} (orderStatus)
        self.fills: list[dict] = []  # every fill, oldest first (userFills answers newest first)
        self.lose_answers = 0
        self.drop_orders = 0
        self.info_down = False
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/info", self.info)
        app.router.add_post("/exchange", self.exchange)
        app.router.add_get("/ws", self.ws)
        self.runner, base = await serve(app)
        self.url = base
        return self.url

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await self.runner.cleanup()

    async def info(self, request: web.Request) -> web.Response:
        body = await request.json()
        kind = body.get("type")
        if self.info_down:
            return web.Response(status=503, text="upstream unavailable")
        if kind == "meta":
            return web.json_response({"universe": self.universe})
        if kind == "orderStatus":
            found = self.by_cloid.get(body.get("oid"))
            return web.json_response({"status": "order", "order": found} if found else {"status": "unknownOid"})
        if kind == "userFills":
            return web.json_response(list(reversed(self.fills)))
        if kind == "clearinghouseState":
            sizes: dict[str, float] = {}
            for f in self.fills:
                sizes[f["coin"]] = sizes.get(f["coin"], 0.0) + float(f["sz"]) * (1 if f["side"] == "B" else -1)
            return web.json_response({"assetPositions": [
                {"type": "oneWay", "position": {"coin": c, "szi": str(round(v, 8))}} for c, v in sizes.items() if v]})
        if kind == "spotMeta":
            return web.json_response({"tokens": [], "universe": []})
        if kind == "allMids":
            return web.json_response({k: str(v) for k, v in self.mids.items()})
        return web.json_response({"error": f"unsupported info type {kind}"}, status=422)

    async def exchange(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.orders.append(body)
        if self.drop_orders > 0:  # lost on the way in: nothing executed
            self.drop_orders -= 1
            return web.Response(status=502, text="bad gateway")
        action = body["action"]
        signer = recover_agent_or_user_from_l1_action(action, body["signature"], body.get("vaultAddress"),
                                                      body["nonce"], body.get("expiresAfter"), False)
        self.signers.append(signer.lower())
        if signer.lower() != self.address:
            return web.json_response({"status": "err", "response": f"User or API Wallet {signer} does not exist."})
        if action.get("type") != "order":
            return web.json_response({"status": "err", "response": "unsupported action"})
        statuses, fills = [], []
        for o in action["orders"]:
            coin = self.universe[o["a"]]["name"]
            px, sz, is_buy = float(o["p"]), float(o["s"]), o["b"]
            mid = self.mids[coin]
            cloid = o.get("c")
            if cloid is not None and cloid in self._cloids:
                statuses.append({"error": "Duplicate cloid: order already exists."})
                continue
            if px * sz < 10:
                statuses.append({"error": "Order must have minimum value of $10."})
                continue
            if (is_buy and px < mid) or (not is_buy and px > mid):
                statuses.append({"error": "Order could not immediately match against any resting orders. asset=0"})
                continue
            oid = next(self._oid)
            if cloid is not None:
                self._cloids[cloid] = oid
            parts = [round(sz / 2, self.universe[o["a"]]["szDecimals"])] if self.split and sz > 0.001 else []
            parts.append(round(sz - sum(parts), 8))
            now = int(time.time() * 1000)
            for part in parts:
                fills.append({"coin": coin, "px": str(mid), "sz": str(part), "side": "B" if is_buy else "A",
                              "time": now, "startPosition": "0.0", "dir": "Open Long" if is_buy else "Open Short",
                              "closedPnl": "0.0", "hash": "0x" + "00" * 32, "oid": oid, "crossed": True,
                              "fee": str(round(part * mid * self.fee_rate, 6)), "tid": next(self._tid),
                              "feeToken": "USDC", **({"cloid": cloid} if cloid else {})})
            if cloid is not None:
                self.by_cloid[cloid] = {"order": {"coin": coin, "side": "B" if is_buy else "A", "limitPx": o["p"],
                                                  "sz": "0.0", "origSz": o["s"], "oid": oid, "cloid": cloid,
                                                  "timestamp": now}, "status": "filled", "statusTimestamp": now}
            statuses.append({"filled": {"totalSz": str(sz), "avgPx": str(mid), "oid": oid}})
        self.fills += fills
        if fills:
            await self.push({"channel": "userFills", "data": {"user": self.address, "fills": fills}})
        if self.lose_answers > 0:
            self.lose_answers -= 1
            return web.Response(status=502, text="bad gateway")
        return web.json_response({"status": "ok", "response": {"type": "order", "data": {"statuses": statuses}}})

    async def push(self, msg: dict) -> None:
        text = json.dumps(msg)
        for ws in list(self._sockets):
            await ws.send_str(text)

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("Websocket connection established.")
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data.get("method") == "ping":
                await ws.send_str(json.dumps({"channel": "pong"}))
            elif data.get("method") == "subscribe":
                sub = data["subscription"]
                self.subscriptions.append(sub)
                await ws.send_str(json.dumps({"channel": "subscriptionResponse", "data": data}))
                if sub.get("type") == "userFills":
                    self._sockets.add(ws)
                    await ws.send_str(json.dumps({"channel": "userFills", "data": {
                        "isSnapshot": True, "user": sub["user"].lower(), "fills": []}}))
        self._sockets.discard(ws)
        return ws

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._sockets:
            if time.monotonic() > deadline:
                raise TimeoutError("the SDK did not subscribe to userFills")
            await asyncio.sleep(0.05)
