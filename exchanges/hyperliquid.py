"""HyperLiquid through its official Python SDK (``hyperliquid-python-sdk``).

Orders: ``Exchange.order`` with an IOC limit at the reference price ± ``slippage`` (the SDK's own
market-order convention, rounded by its tick rules), ``reduce_only`` for closing orders and the
client order id as ``cloid``; the SDK signs the action with the account's key (EIP-712 over the
msgpack action hash). Fills: the ``userFills`` WebSocket channel of ``Info``, matched to the order
by ``oid``; each carries HyperLiquid's trade id (``tid``), price, size and fee. If the fills do not
arrive within ``fill_timeout_s``, the order response's ``totalSz``/``avgPx`` are used with the fee
estimated at ``taker_fee_bps``, and the log says so.

Asset metadata: at start, ``Info.meta()``'s universe gives each listed perpetual's
``maxLeverage`` and ``szDecimals`` (:attr:`HyperliquidExchange.assets`), so margin and size
increments follow the venue. An order whose answer was lost is looked up by its ``cloid``
(``Info.query_order_by_cloid``: ``{"status": "unknownOid"}`` when it was never placed) and its fills
in ``Info.user_fills``; open positions come from ``Info.user_state``'s ``assetPositions``
(``szi``, signed size).

The SDK is synchronous (``requests`` and a ``websocket-client`` thread): HTTP calls run in a worker
thread and WebSocket callbacks are handed to the event loop with ``call_soon_threadsafe``.

Response formats (from the SDK's docs and examples)::

    {"status": "ok", "response": {"type": "order", "data": {"statuses": [
        {"filled": {"totalSz": "0.02", "avgPx": "1891.4", "oid": 77747314}}]}}}
    {"status": "ok", "response": {"type": "order", "data": {"statuses": [{"error": "..."}]}}}
    {"status": "err", "response": "..."}
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from core.metrics import BOUNDS_HIT
from domain.risk import AssetSpec
from exchanges.base import ExchangeError, Fill, Order, OrderResult

#: Orders whose unclaimed fills the adapter keeps (see ``HyperliquidExchange._fills``).
MAX_UNCLAIMED_ORDERS = 10_000

log = logging.getLogger(__name__)


class HyperliquidExchange:
    name = "hyperliquid"

    def __init__(self, secret_key: str, base_url: str, account_address: str | None = None,
                 slippage: float = 0.05, fill_timeout_s: float = 5.0, taker_fee_bps: float = 4.5,
                 timeout_s: float = 10.0):
        self._secret_key = secret_key
        self.base_url = base_url.rstrip("/")
        self.account_address = account_address
        self.slippage, self.fill_timeout_s, self.taker_fee_bps = slippage, fill_timeout_s, taker_fee_bps
        self.timeout_s = timeout_s
        self._exchange = None
        self._info = None
        #: token -> the venue's max leverage and size decimals, from ``Info.meta()`` at start
        self.assets: dict[str, AssetSpec] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # oid -> fills received (WebSocket fills may arrive before the HTTP answer); fills of orders
        # nobody waits for (placed elsewhere on the account, or after a timeout) are kept for the
        # MAX_UNCLAIMED_ORDERS most recent orders only
        self._fills: collections.OrderedDict[int, list[dict]] = collections.OrderedDict()
        self._waiters: dict[int, asyncio.Event] = {}

    def __repr__(self) -> str:  # never show the key
        return f"HyperliquidExchange(base_url={self.base_url!r}, account={self.account_address!r})"

    async def start(self) -> None:
        import eth_account
        from hyperliquid.exchange import Exchange
        from hyperliquid.info import Info

        self._loop = asyncio.get_running_loop()
        wallet = eth_account.Account.from_key(self._secret_key)
        self.account_address = self.account_address or wallet.address
        try:
            self._info = await asyncio.to_thread(Info, self.base_url, False, None, None, None, self.timeout_s)
            self._exchange = await asyncio.to_thread(
                Exchange, wallet, self.base_url, None, None, self.account_address, None, None, self.timeout_s)
            meta = await asyncio.to_thread(self._info.meta)
        except Exception as exc:  # requests errors carry no secret; the key is never in them
            raise ExchangeError(f"HyperLiquid at {self.base_url} unreachable: {type(exc).__name__}") from None
        self.assets = asset_specs(meta)
        # Subscribing once the WebSocket is open: a subscription queued while the SDK's thread is
        # opening it can be missed by the SDK's replay of its queue, and a stop() before the socket
        # is up is lost (see stop()).
        ws = self._info.ws_manager
        deadline = time.monotonic() + self.timeout_s
        while not ws.ws_ready and ws.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not ws.ws_ready:
            log.warning("HyperLiquid WebSocket at %s not open after %.0f s: fills come from order answers "
                        "until it is", self.base_url, self.timeout_s)
        self._info.subscribe({"type": "userFills", "user": self.account_address}, self._on_ws_fills)
        log.info("HyperLiquid adapter started for %s at %s", self.account_address, self.base_url)

    async def stop(self) -> None:
        """Close the WebSocket and wait (at most ``timeout_s``) for the SDK's thread to end."""
        if self._info is not None:
            info, self._info = self._info, None
            if not await asyncio.to_thread(_close_websocket, info.ws_manager, self.timeout_s):
                log.warning("HyperLiquid WebSocket thread still running %.0f s after close", self.timeout_s)

    # Called from the SDK's WebSocket thread.
    def _on_ws_fills(self, msg: dict) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._record_fills, msg)

    def _record_fills(self, msg: dict) -> None:
        data = msg.get("data") or {}
        if data.get("isSnapshot"):
            return  # fills from before this session
        for f in data.get("fills", []):
            oid = f.get("oid")
            if oid is None:
                continue
            self._fills.setdefault(oid, []).append(f)
            self._fills.move_to_end(oid)
            ev = self._waiters.get(oid)
            if ev is not None:
                ev.set()
        excess = len(self._fills) - MAX_UNCLAIMED_ORDERS
        if excess > 0:  # the oldest orders nobody waits for
            for stale in [o for o in self._fills if o not in self._waiters][:excess]:
                del self._fills[stale]
                BOUNDS_HIT.labels("hyperliquid_unclaimed_fills").inc()

    async def _await_fills(self, oid: int, total: float) -> list[dict] | None:
        deadline = time.monotonic() + self.fill_timeout_s
        ev = self._waiters.setdefault(oid, asyncio.Event())
        try:
            while sum(float(f["sz"]) for f in self._fills.get(oid, [])) < total - 1e-12:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), left)
                except asyncio.TimeoutError:
                    return None
            return self._fills.pop(oid, [])
        finally:
            self._waiters.pop(oid, None)

    async def _ask(self, what: str, fn, *args):
        if self._info is None:
            raise ExchangeError("HyperLiquid adapter not started")
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            raise ExchangeError(f"HyperLiquid {what} failed: {type(exc).__name__}") from None

    async def order_status(self, order: Order) -> OrderResult | None:
        """The outcome of an order by its ``cloid`` (see :meth:`exchanges.base.Exchange.order_status`).
        Raises :class:`ExchangeError` when HyperLiquid cannot be asked or answers something unreadable."""
        from hyperliquid.utils.types import Cloid

        resp = await self._ask("order status", self._info.query_order_by_cloid, self.account_address,
                               Cloid.from_str(order.client_order_id))
        if not isinstance(resp, dict) or "status" not in resp:
            raise ExchangeError(f"HyperLiquid answered an unreadable order status: {str(resp)[:200]}")
        if resp["status"] == "unknownOid":
            return None
        try:
            oid, state = int(resp["order"]["order"]["oid"]), str(resp["order"]["status"])
        except (KeyError, TypeError, ValueError):
            raise ExchangeError(f"HyperLiquid answered an unreadable order status: {str(resp)[:200]}") from None
        history = await self._ask("user fills", self._info.user_fills, self.account_address)
        raw = [f for f in history if isinstance(f, dict) and f.get("oid") == oid] if isinstance(history, list) else []
        self._fills.pop(oid, None)
        fills = [Fill(f"hl-{f['tid']}", float(f["sz"]), float(f["px"]), float(f.get("fee", 0.0)),
                      int(f.get("time", order.ts_ms))) for f in raw]
        total = sum(f.size for f in fills)
        if not fills:
            return OrderResult("rejected", str(oid), [], f"HyperLiquid: order {state}, nothing filled")
        st = "filled" if total >= order.size - 1e-12 else "partially_filled"
        return OrderResult(st, str(oid), fills, None if st == "filled" else
                           f"IOC remainder {order.size - total:g} cancelled (order {state})")

    async def positions(self) -> dict[str, float]:
        """Open positions, coin -> signed size (``assetPositions[].position.szi``)."""
        state = await self._ask("user state", self._info.user_state, self.account_address)
        try:
            out = {p["position"]["coin"]: float(p["position"]["szi"]) for p in state.get("assetPositions", [])}
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ExchangeError(f"HyperLiquid answered an unreadable user state: {str(state)[:200]}") from None
        return {coin: size for coin, size in out.items() if size != 0.0}

    async def submit(self, order: Order) -> OrderResult:
        from hyperliquid.utils.types import Cloid

        if self._exchange is None:
            raise ExchangeError("HyperLiquid adapter not started")
        is_buy = order.side == "BUY"
        try:
            px = self._exchange._slippage_price(order.token, is_buy, self.slippage, order.reference_price)
            resp = await asyncio.to_thread(
                self._exchange.order, order.token, is_buy, order.size, px, {"limit": {"tif": "Ioc"}},
                order.reduce_only, Cloid.from_str(order.client_order_id))
        except KeyError:
            return OrderResult("rejected", None, [], f"unknown coin {order.token!r} on HyperLiquid")
        except ValueError as exc:  # the SDK refuses sizes/prices it cannot put on the wire exactly
            return OrderResult("rejected", None, [], f"invalid order for HyperLiquid: {exc}")
        except Exception as exc:
            raise ExchangeError(f"HyperLiquid order failed: {type(exc).__name__}") from None
        if not isinstance(resp, dict) or resp.get("status") != "ok":
            reason = resp.get("response") if isinstance(resp, dict) else resp
            if "duplicate" in str(reason).lower():
                return OrderResult("duplicate", None, [], str(reason))
            return OrderResult("rejected", None, [], f"HyperLiquid: {reason}")
        try:
            status = resp["response"]["data"]["statuses"][0]
        except (KeyError, IndexError, TypeError):
            raise ExchangeError(f"HyperLiquid answered an unreadable order response: {str(resp)[:200]}") from None
        if "error" in status:
            err = str(status["error"])
            if "duplicate" in err.lower():
                return OrderResult("duplicate", None, [], err)
            return OrderResult("rejected", None, [], f"HyperLiquid: {err}")
        if "filled" not in status:  # an IOC never rests; anything else is unexpected
            return OrderResult("rejected", str(status.get("resting", {}).get("oid")), [],
                               f"HyperLiquid: unexpected status {status}")
        filled = status["filled"]
        oid, total = int(filled["oid"]), float(filled["totalSz"])
        raw = await self._await_fills(oid, total)
        if raw is None:
            avg = float(filled["avgPx"])
            log.warning("HyperLiquid fills of oid %s not received within %.1fs: using the order response, "
                        "fee estimated", oid, self.fill_timeout_s)
            fills = [Fill(f"hl-{oid}", total, avg, avg * total * self.taker_fee_bps / 1e4, order.ts_ms)]
        else:
            fills = [Fill(f"hl-{f['tid']}", float(f["sz"]), float(f["px"]), float(f.get("fee", 0.0)),
                          int(f.get("time", order.ts_ms))) for f in raw]
        st = "filled" if total >= order.size - 1e-12 else "partially_filled"
        return OrderResult(st, str(oid), fills, None if st == "filled" else
                           f"IOC remainder {order.size - total:g} cancelled")


def asset_specs(meta) -> dict[str, AssetSpec]:
    """Max leverage and size decimals per listed perpetual from an ``Info.meta()`` answer
    (``{"universe": [{"name", "szDecimals", "maxLeverage", "isDelisted"?}, ...]}``); delisted and
    unreadable entries are left out.

    Raises:
        ExchangeError: the answer has no universe list.
    """
    universe = meta.get("universe") if isinstance(meta, dict) else None
    if not isinstance(universe, list):
        raise ExchangeError(f"HyperLiquid answered an unreadable meta: {str(meta)[:200]}")
    out: dict[str, AssetSpec] = {}
    for u in universe:
        try:
            if u.get("isDelisted"):
                continue
            lev, dec = float(u["maxLeverage"]), int(u["szDecimals"])
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
        if lev >= 1 and 0 <= dec <= 8:
            out[str(u["name"])] = AssetSpec(lev, dec)
    return out


def _close_websocket(manager, timeout_s: float) -> bool:
    """Close the SDK's WebSocket and wait for its thread; False if it still runs after ``timeout_s``.

    Not ``Info.disconnect_websocket``: it closes the socket from this thread while the SDK's thread
    waits on it in ``select``, and when both read the server's close frame the close gives up
    before shutting the socket down, leaving that thread waiting on a closed descriptor forever
    (and a test server's shutdown waiting on the connection). Shutting the socket down is what
    websocket-client offers to wake a waiting reader (``WebSocket.abort``).
    """
    manager.stop_event.set()  # the SDK's ping thread
    app = manager.ws
    app.keep_running = False
    conn = app.sock
    if conn is not None:
        try:
            conn.send_close()
        except Exception:  # noqa: BLE001 - already closed by the venue: nothing to say goodbye to
            pass
        conn.abort()
    manager.join(timeout_s)
    return not manager.is_alive()
