"""The two voting agents on the aggressor side of trades: order flow and whales.

Both read ``price.tick`` (only trades whose aggressor side and base size are known count:
notional = price × size, USD), gather the flow of each bar (``bar_ms``, the trading agent's bars,
on event time) in memory and, when a tick of a later bar closes it, fold it into a window kept in
their store and vote (:func:`domain.orderflow.vote`). The vote is a ``signal.generated`` stamped
at the bar's end, the time the trading agent's signal on the same bar carries, so the consensus
joins them in one window. Signal ids derive from (agent, token, bar start): a replayed bar close
yields a signal the consensus already counted. While trading is halted for any account no signal
is emitted (the windows still fill), as for the trading agent.

* :class:`OrderFlowProcessor` (agent ``orderflow``): buy/sell aggressor notional of the last
  ``window_bars`` closed bars; it votes the direction of the imbalance, scoring an imbalance of
  ``full_imbalance`` or more 100, with the imbalance's significance as confidence. The signal
  carries the window's volume delta, imbalance and the token's cumulative volume delta (CVD, since
  the agent first saw the token) as indicators.
* :class:`WhaleProcessor` (agent ``whale``): every trade of at least the token's whale notional
  (``notional_usd``, per token with a ``default``) is a ``whale.activity`` at once (id derived from
  the tick's, so a replay repeats it under the same id); at each bar close it votes the net whale
  flow of the last ``window_ms`` of event time (one-sided whale flow scores 100; significance as
  confidence, so one whale trade is weak evidence).

Like the trading processor's open bar, the flow of the open bar is not stored: a worker acks a
tick only once its bar has closed, so a restarted worker replays the open bar's ticks and rebuilds
it; ticks of bars already closed (``last_start`` in the store) are skipped, as are late ticks of
earlier bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from domain.halt import any_halted
from domain.orderflow import Flow, vote
from models.events import SignalGenerated, WhaleActivity, derived_id
from processors.base import Store

ORDERFLOW = "orderflow"
WHALE = "whale"


class _OpenFlow:
    """The open bar of one token: its start, last price, aggressor flow and whale trades."""

    __slots__ = ("start", "last_closed", "price", "flow", "whales")

    def __init__(self, last_closed: int | None):
        self.start: int | None = None
        self.last_closed = last_closed
        self.price = 0.0
        self.flow = Flow()
        self.whales: list[list] = []  # [ts ms, signed notional USD]


class _BarFlowProcessor:
    """Bar bookkeeping shared by both agents; subclasses fold ticks and vote at bar close."""

    name = ""
    topics = ("price.ticks",)

    def __init__(self, bar_ms: int, store: Store, halt: Mapping):
        self.bar_ms = bar_ms
        self.store = store
        self.halt = halt
        self.open: dict[str, _OpenFlow] = {}
        self.late = 0  # ticks of bars already closed
        self.suppressed = 0  # votes not emitted while trading was halted

    def on_revoked(self, partitions=None) -> None:
        """Forget the open bars (the partition's new owner replays them from the committed offset)."""
        self.open.clear()

    def process(self, tick, partition=None) -> list:
        return self.on_tick(tick)

    def on_tick(self, tick) -> list:
        """Fold one ``price.tick`` in; returns the events to emit (a vote when the tick closed a
        bar, a ``whale.activity`` for a whale trade)."""
        token, ts = tick.token, tick.timestamp
        ob = self.open.get(token)
        if ob is None:
            stored = self.store.get(token)
            ob = self.open[token] = _OpenFlow(stored["last_start"] if stored else None)
        start = ts - ts % self.bar_ms
        if (ob.last_closed is not None and start <= ob.last_closed) or (ob.start is not None and start < ob.start):
            self.late += 1
            return []
        out: list = []
        if ob.start is None:
            ob.start = start
        elif start > ob.start:
            vote_ = self._close(token, ob, tick)
            if vote_ is not None:
                out.append(vote_)
            ob.last_closed, ob.start, ob.flow, ob.whales = ob.start, start, Flow(), []
        ob.price = tick.price
        side, size = tick.side, tick.size
        if side is not None and size:
            reported = self._trade(ob, tick, side, size, tick.price * size)
            if reported is not None:
                out.append(reported)
        return out

    def _trade(self, ob: _OpenFlow, tick, side: str, size: float, notional: float):
        """Fold one trade of known aggressor ``side`` and ``notional`` (USD) into the open bar;
        returns an event to emit at once, or None."""
        raise NotImplementedError

    def _close(self, token: str, ob: _OpenFlow, tick) -> SignalGenerated | None:
        raise NotImplementedError

    def _signal(self, token: str, ob: _OpenFlow, tick, flow: Flow, min_score: float, full_imbalance: float,
                reasons: list[str], indicators: dict) -> SignalGenerated | None:
        v = vote(flow, full_imbalance)
        if v is None or v.score < min_score:
            return None
        if any_halted(self.halt):
            self.suppressed += 1
            return None
        bar_end = ob.start + self.bar_ms
        return SignalGenerated(
            event_id=derived_id("signal", self.name, token, ob.start), timestamp=bar_end, token=token,
            source=self.name, correlation_id=tick.correlation_id or tick.event_id, ingest_ms=tick.ingest_ms,
            action=v.action, score=v.score, confidence=v.confidence, agent=self.name, reasons=reasons,
            price=ob.price, indicators={"imbalance": round(v.imbalance, 6), **indicators})


@dataclass(frozen=True, slots=True)
class OrderFlowConfig:
    """``bar_ms`` (ms); ``window_bars`` closed bars per vote; ``full_imbalance`` the imbalance
    (0-1] that scores 100; ``min_score`` (0-100) to signal."""

    bar_ms: int = 60_000
    window_bars: int = 5
    full_imbalance: float = 0.5
    min_score: float = 40.0

    @classmethod
    def from_settings(cls, s) -> "OrderFlowConfig":
        return cls(int(s.bar_seconds * 1000), s.orderflow_window_bars, s.orderflow_full_imbalance,
                   s.signal_min_score)


class OrderFlowProcessor(_BarFlowProcessor):
    """Store ``flow``: token -> {"last_start": ms, "bars": [[start ms, buy, sell, Σv², trades], ...]
    (the last ``window_bars`` closed bars with trades of known side), "cvd": USD}."""

    name = ORDERFLOW

    def __init__(self, config: OrderFlowConfig, store: Store, halt: Mapping):
        super().__init__(config.bar_ms, store, halt)
        self.config = config

    def _trade(self, ob: _OpenFlow, tick, side: str, size: float, notional: float) -> None:
        ob.flow.add(side, notional)

    def _close(self, token: str, ob: _OpenFlow, tick) -> SignalGenerated | None:
        cfg = self.config
        stored = self.store.get(token) or {}
        bars = [b for b in stored.get("bars", ()) if b[0] > ob.start - cfg.window_bars * self.bar_ms]
        cvd = stored.get("cvd", 0.0)
        if ob.flow.trades:
            bars.append([ob.start, *ob.flow.to_list()])
            cvd += ob.flow.delta
        self.store[token] = {"last_start": ob.start, "bars": bars, "cvd": cvd}
        window = Flow()
        for b in bars:
            window.merge(Flow.from_list(b[1:]))
        if not window.trades:
            return None
        return self._signal(
            token, ob, tick, window, cfg.min_score, cfg.full_imbalance,
            [f"aggressor flow over {len(bars)} bar(s): buy {window.buy:,.0f} / sell {window.sell:,.0f} USD "
             f"({window.trades} trades)"],
            {"volume_delta": round(window.delta, 2), "cvd": round(cvd, 2)})


@dataclass(frozen=True, slots=True)
class WhaleConfig:
    """``bar_ms`` (ms); ``notional_usd`` token -> the notional (USD) from which a trade is a
    whale's (``default`` for tokens not listed); ``window_ms`` of event time for the net whale
    flow; ``min_score`` (0-100) to signal."""

    bar_ms: int = 60_000
    notional_usd: Mapping[str, float] = field(default_factory=lambda: {"default": 100_000.0})
    window_ms: int = 300_000
    min_score: float = 40.0

    @classmethod
    def from_settings(cls, s) -> "WhaleConfig":
        return cls(int(s.bar_seconds * 1000), dict(s.whale_notional_usd), int(s.whale_window_seconds * 1000),
                   s.signal_min_score)

    def threshold(self, token: str) -> float:
        got = self.notional_usd.get(token)
        return got if got is not None else self.notional_usd.get("default", float("inf"))


class WhaleProcessor(_BarFlowProcessor):
    """Store ``whales``: token -> {"last_start": ms, "trades": [[ts ms, signed notional USD], ...]}
    (the whale trades of the last ``window_ms``; buys positive)."""

    name = WHALE

    def __init__(self, config: WhaleConfig, store: Store, halt: Mapping):
        super().__init__(config.bar_ms, store, halt)
        self.config = config
        self._thresholds: dict[str, float] = {}

    def _trade(self, ob: _OpenFlow, tick, side: str, size: float, notional: float) -> WhaleActivity | None:
        limit = self._thresholds.get(tick.token)
        if limit is None:
            limit = self._thresholds[tick.token] = self.config.threshold(tick.token)
        if notional < limit:
            return None
        ob.whales.append([tick.timestamp, notional if side == "BUY" else -notional])
        return WhaleActivity(event_id=derived_id("whale.activity", tick.event_id), timestamp=tick.timestamp,
                             token=tick.token, source=WHALE, correlation_id=tick.correlation_id or tick.event_id,
                             ingest_ms=tick.ingest_ms, size=size, side=side, price=tick.price,
                             notional=round(notional, 2), trade_id=getattr(tick, "trade_id", None))

    def _close(self, token: str, ob: _OpenFlow, tick) -> SignalGenerated | None:
        cfg = self.config
        bar_end = ob.start + self.bar_ms
        stored = self.store.get(token) or {}
        trades = [t for t in stored.get("trades", ()) if t[0] >= bar_end - cfg.window_ms] + ob.whales
        # written at every close, whale trades or not: ``last_start`` is what makes a replay skip the bar
        self.store[token] = {"last_start": ob.start, "trades": trades}
        if not trades:
            return None
        flow = Flow()
        for _, signed in trades:
            flow.add("BUY" if signed > 0 else "SELL", abs(signed))
        return self._signal(
            token, ob, tick, flow, cfg.min_score, 1.0,
            [f"whale flow over {cfg.window_ms // 1000} s: {flow.trades} trade(s), net {flow.delta:+,.0f} USD"],
            {"whale_net_usd": round(flow.delta, 2), "whale_trades": float(flow.trades)})
