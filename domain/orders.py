"""Client order ids, derived from what caused the order so that a replayed or retried decision
never places a second order (the exchange and the execution engine refuse a reused id).

Format: ``0x`` + 32 hex digits, a 128-bit value: HyperLiquid's ``cloid``
(https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/exchange-endpoint), accepted
by the paper exchange too.
"""

from __future__ import annotations

from models.events import derived_id


def client_order_id(account: str, decision_id) -> str:
    """Client order id of the order an approving decision (``decision_id``) places for
    ``account``: equal on every retry or replay of that decision."""
    return "0x" + derived_id("order", account, decision_id).hex


def force_close_id(account: str, token: str, opened_ms: int, size: float) -> str:
    """Client order id of the force-close of one position state: the position of ``token`` opened
    at ``opened_ms`` (ms) with signed ``size`` (base units). A partial close changes ``size`` and
    so gets a new id."""
    return "0x" + derived_id("force_close", account, token, opened_ms, f"{size:.12g}").hex
