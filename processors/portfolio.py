"""Portfolio processor: ``trade.executed`` → the account's ``portfolio`` store (cash, positions,
realised PnL, fees; :mod:`domain.portfolio`) → ``state.changed``, and ``position.closed`` when a
position returns to zero.

Fill application is idempotent on the fill id (``portfolio.applied``, which also lists the client
order ids of applied orders for the execution engine), so a redelivered fill is not counted twice.
The account's positions are mirrored into the ``exposures`` store, which the risk processor reads
on every tick. Revocation changes nothing: the state is in the stores.

Snapshots: at an account's first fill ``snapshot_ms`` or more of event time after its last
snapshot (``portfolio.snapshot_ms``), a ``state.snapshot`` follows the ``state.changed``, carrying
the portfolio store's value, the execution engine's submitted client order ids and the ids of
the commands it answered without an order (read from the ``execution_state`` store) and the halt
flag: the starting point of ``faust -A app rebuild``
(:mod:`store.rebuild`), which applies the fills stored after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from domain.portfolio import apply_fill, mark, new_portfolio, roll_day
from domain.risk import DEFAULT_ASSETS, AssetSpec
from models.events import PositionClosed, StateEvent, TradeExecuted, derived_id
from processors.base import ExposureView, Store


@dataclass(frozen=True, slots=True)
class PortfolioConfig:
    """``initial_cash_usd`` of a new account; ``assets`` and ``max_leverage`` for marking."""

    initial_cash_usd: float = 100_000.0
    assets: Mapping[str, AssetSpec] = field(default_factory=lambda: dict(DEFAULT_ASSETS))
    max_leverage: float = 3.0
    #: event time (ms) between an account's snapshots; None: no snapshots
    snapshot_ms: int | None = None

    @classmethod
    def from_settings(cls, s) -> "PortfolioConfig":
        return cls(s.initial_cash_usd, dict(s.assets), s.max_leverage, int(s.snapshot_seconds * 1000))


class PortfolioProcessor:
    name = "portfolio"
    topics = ("trade.executed",)

    def __init__(self, config: PortfolioConfig, portfolio: Store, exposures: ExposureView, latest_prices: Mapping,
                 execution_state: Mapping | None = None, halt: Mapping | None = None):
        """``execution_state`` and ``halt`` (read) go into snapshots."""
        self.config = config
        self.portfolio = portfolio
        self.exposures = exposures
        self.latest_prices = latest_prices
        self.execution_state = execution_state if execution_state is not None else {}
        self.halt = halt if halt is not None else {}

    def on_revoked(self, partitions) -> None:
        pass

    def marks_for(self, pf: dict) -> dict[str, float]:
        out = {}
        for token in pf["positions"]:
            lp = self.latest_prices.get(token)
            if lp:
                out[token] = lp["price"]
        return out

    def view(self, pf: dict) -> dict:
        """JSON view of a portfolio marked to the latest prices (USD)."""
        cfg = self.config
        m = mark(pf, self.marks_for(pf), cfg.assets, cfg.max_leverage)
        return {"cash": pf["cash"], "equity": m["equity"], "gross_notional": m["gross_notional"],
                "leverage": m["leverage"] if m["leverage"] != float("inf") else None,
                "realised_pnl": pf["realised_pnl"], "unrealised_pnl": m["unrealised_pnl"],
                "fees_paid": pf["fees_paid"], "fills": pf.get("fills", 0), "updated_ms": pf["updated_ms"],
                "risk_score": m["risk_score"], "positions": m["positions"]}

    def process(self, fill, partition=None) -> list:
        if fill.event_type != "trade.executed":
            return []  # position.closed: this processor's own output
        return self.on_fill(fill)

    def on_fill(self, fill: TradeExecuted) -> list:
        """Apply one fill to its account; returns the events to emit."""
        cfg = self.config
        account = fill.account
        pf = self.portfolio.get(account) or new_portfolio(cfg.initial_cash_usd)
        key = fill.fill_key
        if key in pf["applied"]:
            return []
        # Equity before the fill opens a new day's PnL: cash plus positions at their marks.
        prior = self.marks_for(pf)
        roll_day(pf, fill.timestamp, pf["cash"] + sum(p["size"] * (prior.get(t) or p["entry_price"])
                                                      for t, p in pf["positions"].items()))
        closed = apply_fill(pf, fill.token, fill.side, fill.filled_amount, fill.fill_price, fill.fee,
                            fill.timestamp, key)
        if key != fill.client_order_id and fill.client_order_id not in pf["applied"]:
            pf["applied"].append(fill.client_order_id)  # the engine's "order already filled" check
        snapshot = cfg.snapshot_ms is not None and fill.timestamp - pf.get("snapshot_ms", -cfg.snapshot_ms) >= cfg.snapshot_ms
        if snapshot:
            pf["snapshot_ms"] = fill.timestamp
        self.portfolio[account] = pf
        self.mirror_exposure(account, pf)
        marks = {**self.marks_for(pf), fill.token: fill.fill_price}
        view = mark(pf, marks, cfg.assets, cfg.max_leverage)
        daily = roll_day(pf, fill.timestamp, view["equity"])
        lev = view["leverage"] if view["leverage"] != float("inf") else 1e9
        common = dict(timestamp=fill.timestamp, token=fill.token, source="portfolio",
                      correlation_id=fill.correlation_id, ingest_ms=fill.ingest_ms, account=account)
        out: list = []
        if closed is not None:
            out.append(PositionClosed(event_id=derived_id("closed", key), order_id=fill.order_id,
                                      exit_price=fill.fill_price, entry_price=closed.entry_price, size=closed.size,
                                      pnl_usd=closed.pnl_usd, duration_s=closed.duration_s, **common))
        out.append(StateEvent(
            event_id=derived_id("state", key), event_type="state.changed",
            portfolio_value=view["equity"], cash=pf["cash"], leverage_ratio=lev, daily_pnl=daily,
            positions={t: {k: p[k] for k in ("size", "entry_price", "mark_price", "unrealised_pnl",
                                             "liquidation_price", "liquidation_distance_pct")}
                       for t, p in view["positions"].items()},
            delta={"token": fill.token, "side": fill.side, "filled_amount": fill.filled_amount,
                   "fill_price": fill.fill_price, "fee": fill.fee, "client_order_id": fill.client_order_id,
                   "fill_id": key, "seq": pf["fills"], "risk_score": view["risk_score"]},
            **common))
        if snapshot:
            out.append(out[-1].model_copy(update={
                "event_id": derived_id("snapshot", key), "event_type": "state.snapshot",
                "snapshot": self.snapshot(account, pf)}))
        return out

    def mirror_exposure(self, account: str, pf: dict) -> None:
        """Write the account's cash and positions to the ``exposures`` store (what risk reads)."""
        self.exposures.set(account, {"cash": pf["cash"], "positions": {
            t: {"size": p["size"], "entry_price": p["entry_price"], "opened_ms": p["opened_ms"]}
            for t, p in pf["positions"].items()}})

    def snapshot(self, account: str, pf: dict) -> dict:
        """What a rebuild restores ``account`` from: the portfolio store's value, the execution
        engine's submitted client order ids and the ids of the commands it answered without an
        order, and the halt flag (JSON copies)."""
        import copy

        ex = self.execution_state.get(account) or {}
        return {"portfolio": copy.deepcopy(pf), "submitted": list(ex.get("submitted", ())),
                "answered": list(ex.get("answered", ())), "halt": copy.deepcopy(self.halt.get(account))}
