"""The exchange adapter interface the execution engine talks to.

An adapter takes one market (IOC) order at a time and answers with its fills. Orders carry a client
order id derived from the approving event; an adapter must never execute the same client order id
twice (the paper exchange remembers them, HyperLiquid rejects a reused ``cloid``), and reports a
reuse as ``status="duplicate"`` with the original fills when it knows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class Order:
    """A market order. ``size`` base units (already rounded to the asset's increment),
    ``reference_price`` USD (the decision's price: the paper exchange fills around it, HyperLiquid
    bounds its IOC limit price by it), ``client_order_id`` 128-bit hex ``0x…``, ``ts_ms`` event time."""

    account: str
    token: str
    side: Literal["BUY", "SELL"]
    size: float
    reference_price: float
    client_order_id: str
    ts_ms: int
    reduce_only: bool = False


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution: ``size`` base units at ``price`` USD, ``fee`` USD, ``fill_id`` unique per
    exchange (idempotency key of the portfolio), ``ts_ms`` fill time."""

    fill_id: str
    size: float
    price: float
    fee: float
    ts_ms: int


@dataclass(slots=True)
class OrderResult:
    """``status``: ``filled``, ``partially_filled`` (IOC remainder cancelled), ``rejected`` (by
    the exchange: ``reason``), ``duplicate`` (client order id seen before)."""

    status: Literal["filled", "partially_filled", "rejected", "duplicate"]
    order_id: str | None
    fills: list[Fill] = field(default_factory=list)
    reason: str | None = None

    @property
    def filled_size(self) -> float:
        return sum(f.size for f in self.fills)


class ExchangeError(RuntimeError):
    """The exchange could not be reached or answered something unreadable (retryable)."""


class Exchange(Protocol):
    name: str
    #: Asset metadata the venue published at start (token -> max leverage and size decimals), or
    #: None when it publishes none (the configured table applies).
    assets: "dict | None"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, order: Order) -> OrderResult:
        """Send one order and return its outcome. Raises :class:`ExchangeError` when the outcome
        is unknown (network); the caller may retry with the same client order id."""
        ...

    async def order_status(self, order: Order) -> OrderResult | None:
        """What became of an order sent before whose answer was lost, looked up by its client
        order id: None when the exchange has no order with that id (it was never placed, so the id
        may be released), else its outcome with the fills the exchange reports. Raises
        :class:`ExchangeError` when the exchange cannot be asked either."""
        ...

    async def positions(self) -> dict[str, float] | None:
        """The account's open positions on the venue, token -> signed size (base units), or None
        for a venue that keeps none of its own (the paper exchange). Raises :class:`ExchangeError`."""
        ...
