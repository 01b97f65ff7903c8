"""Trading processor: price.tick → OHLCV bars (event time) → indicators → rule-based
``signal.generated`` (agent ``trading.rules``), plus the 1-minute closes (``price.minute``) the
correlation join reads and, when an LLM advisor is given, an advice request per closed bar (never
waited for; see :mod:`processors.llm`).

Per tick it folds the tick into the token's open bar (O(1), in memory). Per closed bar it updates
the token's running indicator state (:func:`domain.indicators.update`, O(1)) in the ``bars``
store, evaluates the rule set (:mod:`domain.signals`, named with its parameters in the config)
and emits a signal when the action is BUY/SELL with a score of at least ``signal_min_score``.

A signal in the direction a live sentiment–price correlation points to (``correlations`` store,
written by the correlation processor) gets its confidence raised by (1 + ``correlation_boost`` ×
|r|), capped at 1. While trading is halted for any account (``halt`` store) bars and indicators
keep building but no signal is emitted.

The open bar is not stored: a runtime rebuilds it from the log. :meth:`TradingProcessor.on_tick`
says what the tick means for that (``HOLD``: part of the open bar; ``CLOSED``: it closed the open
bar, whose ticks may now be released, and starts the next; ``DROP``: a late tick, nothing to
keep), so a Kafka runtime commits offsets only past closed bars and a restarted worker replays
the open bar's ticks; ticks of bars already closed (``last_start``) are skipped on replay. Signal
ids derive from (agent, token, bar start), so a replayed bar close emits a signal the consensus
already counted and ignores.

Revocation: the open bars of revoked partitions are forgotten (the new owner rebuilds them from
the committed offsets).

A runtime that holds the whole input (the backtest engine) may hand the processor every token's
ticks up front (:meth:`TradingProcessor.use_series`): the closed bars' indicators are then computed
at once (:func:`domain.indicators.series`, equal bit for bit to the running values) and the rule
set is evaluated only on the bars its ``may_signal`` keeps; the signals are the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domain import indicators as ind
from domain.bars import Bar, apply_tick, bar_start
from domain.halt import any_halted
from domain.sentiment import BUCKET_MS
from domain.signals import resolve
from models.events import PriceMinute, SignalGenerated, derived_id
from processors.base import Store

AGENT = "trading.rules"
HOLD, CLOSED, DROP = "hold", "closed", "drop"


@dataclass(frozen=True, slots=True)
class TradingConfig:
    """``bar_ms``: bar length (ms); ``rules``/``params``: the rule set and its parameters
    (:func:`domain.signals.resolve`); ``signal_min_score``: minimum score (0-100) to signal;
    ``correlation_boost``: confidence multiplier per unit |r|; ``correlation_ttl_ms``: a
    correlation older than this (event time) no longer boosts."""

    bar_ms: int = 60_000
    rules: str = "default"
    params: Mapping[str, Any] = field(default_factory=dict)
    signal_min_score: float = 40.0
    correlation_boost: float = 0.25
    correlation_ttl_ms: int = 3_600_000
    #: emit ``price.minute`` (the correlation join's price input); a backtest without sentiment
    #: input turns it off, since nothing could pair with it
    minute_closes: bool = True
    #: keep each token's last bar, indicators and signal in the ``indicators`` store (for the
    #: worker's views; a backtest has no views)
    keep_view: bool = True

    @classmethod
    def from_settings(cls, s) -> "TradingConfig":
        return cls(int(s.bar_seconds * 1000), s.trading_rules, dict(s.trading_params), s.signal_min_score,
                   s.correlation_confidence_boost)


class OpenBar:
    """The open bar of one token, the last closed bar's start and the minute being tracked."""

    __slots__ = ("bar", "last_closed", "partition", "minute", "minute_close")

    def __init__(self, last_closed: int | None, partition=None):
        self.bar: Bar | None = None
        self.last_closed = last_closed
        self.partition = partition
        self.minute: int | None = None  # the 1-minute bucket being tracked for price.minute
        self.minute_close = 0.0


class BarSeries:
    """One token's ticks and closed bars over a whole input: ``starts``/``closes`` of the closed
    bars, their indicators (float64 arrays, NaN for ``None``), whether the rule set may signal on
    each (``active``, and the indices of those bars in ``active_bars``), ``close_tick`` the index of
    the tick that closes each bar; per tick ``ts``, ``px`` and ``size``. ``next`` is the next bar
    to close."""

    __slots__ = ("starts", "closes", "values", "active", "active_bars", "close_tick", "ts", "px", "size", "next")

    def __init__(self, starts: list[int], closes: list[float], values: dict, active: list[bool],
                 close_tick: list[int], ts: list[int], px: list[float], size: list):
        self.starts, self.closes, self.values, self.active, self.next = starts, closes, values, active, 0
        self.active_bars = [k for k, a in enumerate(active) if a]
        self.close_tick, self.ts, self.px, self.size = close_tick, ts, px, size

    def at(self, i: int) -> dict[str, float | None]:
        """Bar ``i``'s indicators as :func:`domain.indicators.update` gives them."""
        out = {}
        for k, v in self.values.items():
            x = float(v[i])
            out[k] = x if x == x else None
        return out


class TradingState:
    """``bars``: token -> {"last_start": ms, "ind": running indicator state}; ``indicators``: token
    -> the last closed bar, its indicators and signal (for views); ``correlations`` (read): token
    -> latest correlation; ``halt`` (read): account -> halt flag. Open bars are in memory."""

    def __init__(self, bars: Store, indicators: Store, correlations: Mapping, halt: Mapping):
        self.bars = bars
        self.indicators = indicators
        self.correlations = correlations
        self.halt = halt
        self.open: dict[str, OpenBar] = {}


class TradingProcessor:
    name = AGENT
    topics = ("price.ticks",)

    def __init__(self, config: TradingConfig, state: TradingState, advisor=None):
        self.config = config
        self.state = state
        self.advisor = advisor
        self.rule_set, self.params = resolve(config.rules, config.params)
        self.spec = self.rule_set.indicators(self.params)
        self.late = 0  # ticks of bars already closed
        self.suppressed = 0  # signals not emitted while trading was halted
        self.series: dict[str, BarSeries] = {}

    def use_series(self, ticks: Mapping[str, tuple[list, list, list]]) -> None:
        """Precompute the bars of a whole input: ``ticks`` token -> (timestamps ms, prices USD,
        sizes or None), each in the order the processor will be given them (time order). The
        ticks must then come exactly so; a closed bar that differs from the precomputed one raises
        ``RuntimeError``."""
        import numpy as np

        for token, (ts_l, px_l, size_l) in ticks.items():
            ts, px = np.asarray(ts_l, dtype=np.int64), np.asarray(px_l, dtype=np.float64)
            starts = ts - ts % self.config.bar_ms
            last = np.flatnonzero(np.diff(starts))  # the last tick of every bar a later tick closes
            closes = px[last]
            values = ind.series(closes, self.spec)
            may = self.rule_set.may_signal
            active = may(values, self.params) if may is not None else np.ones(len(closes), dtype=bool)
            self.series[token] = BarSeries(starts[last].tolist(), closes.tolist(), values, active.tolist(),
                                           (last + 1).tolist(), ts_l, px_l, size_l)

    def next_signal_tick(self, token: str) -> int | None:
        """With :meth:`use_series`: the index (among the token's ticks) of the next tick that
        closes a bar the rule set may signal on, or ``None``."""
        pre = self.series[token]
        k = bisect_left(pre.active_bars, pre.next)
        return pre.close_tick[pre.active_bars[k]] if k < len(pre.active_bars) else None

    def skip_run(self, token: str, a: int, b: int) -> None:
        """With :meth:`use_series`: take the token's ticks ``a`` to ``b - 1`` (indices among its
        ticks), none of which closes a bar the rule set may signal on, leaving the state
        :meth:`on_tick` would (bars closed, the open bar); nothing is emitted. Only for a config
        without views, LLM advice or minute closes."""
        pre = self.series[token]
        ob = self.state.open.get(token) or self._open(token, None)
        closed = bisect_left(pre.close_tick, b)  # bars whose closing tick comes before b
        if closed > pre.next:
            k = bisect_left(pre.active_bars, pre.next)
            if k < len(pre.active_bars) and pre.active_bars[k] < closed:
                raise RuntimeError(f"{token}: ticks {a}..{b - 1} close a bar the rules may signal on")
            pre.next = closed
            ob.last_closed = pre.starts[closed - 1]
            self.state.bars[token] = {"last_start": ob.last_closed}
        # the open bar: apply_tick over its ticks in this run (older ticks' bars are closed)
        first = pre.close_tick[closed - 1] if closed > 0 else 0
        ts, px, size, length = pre.ts, pre.px, pre.size, self.config.bar_ms
        bar = ob.bar
        for k in range(max(a, first), b):
            bar = apply_tick(bar, ts[k], px[k], px[k] * (size[k] or 0.0), length)[0]
        ob.bar = bar

    def process(self, tick, partition=None) -> list:
        return self.on_tick(tick, partition)[0]

    def on_revoked(self, partitions) -> None:
        for token in [t for t, ob in self.state.open.items() if ob.partition in partitions]:
            del self.state.open[token]

    def _open(self, token: str, partition) -> OpenBar:
        stored = self.state.bars.get(token)
        ob = self.state.open[token] = OpenBar(stored["last_start"] if stored else None, partition)
        return ob

    def on_tick(self, tick, partition=None) -> tuple[list, str]:
        """Fold one ``price.tick`` in. Returns (events to emit, verdict ``HOLD``/``CLOSED``/``DROP``)."""
        token = tick.token
        ob = self.state.open.get(token)
        if ob is None:
            ob = self._open(token, partition)
        out: list = []
        ts = tick.timestamp
        if self.config.minute_closes:
            # 1-minute closes for the correlation join (a replay re-emits the same id, ignored there)
            minute = ts - ts % BUCKET_MS
            if ob.minute is not None and minute > ob.minute:
                out.append(PriceMinute(event_id=derived_id("price.minute", token, ob.minute), timestamp=ob.minute,
                                       token=token, source=AGENT, close=ob.minute_close))
            if ob.minute is None or minute >= ob.minute:
                ob.minute, ob.minute_close = minute, tick.price
        length = self.config.bar_ms
        if ob.last_closed is not None and bar_start(ts, length) <= ob.last_closed:
            self.late += 1  # a bar already closed and stored: a late tick, or a replay after restart
            return out, DROP
        bar, closed, late = apply_tick(ob.bar, ts, tick.price, tick.price * (tick.size or 0.0), length)
        if late:
            self.late += 1
            return out, DROP
        ob.bar = bar
        if closed is None:
            return out, HOLD
        ob.last_closed = closed.start_ms
        signal = self.close_bar(token, closed, tick)
        if signal is not None:
            out.append(signal)
        return out, CLOSED

    def close_bar(self, token: str, closed: Bar, tick) -> SignalGenerated | None:
        """Update the token's indicators with a closed bar and apply the rules; returns the signal
        to emit (``None`` for HOLD, a score below the minimum, or while trading is halted)."""
        cfg = self.config
        pre = self.series.get(token)
        if pre is not None:
            i = pre.next
            if i >= len(pre.starts) or pre.starts[i] != closed.start_ms or pre.closes[i] != closed.close:
                raise RuntimeError(f"{token}: the bar closed at {closed.start_ms} is not the precomputed one")
            pre.next = i + 1
            self.state.bars[token] = {"last_start": closed.start_ms}
            if not pre.active[i] and not cfg.keep_view and self.advisor is None:
                return None  # the rule set holds on this bar
            return self._signal(token, closed, tick, pre.at(i))
        stored = self.state.bars.get(token)
        if stored is None or "ind" not in stored:
            # none yet, or a bar history of earlier versions (closes): warm the state from it
            st, _ = ind.warm(stored.get("closes", []) if stored else [], self.spec)
        else:
            st = stored["ind"]
        values = ind.update(st, closed.close, self.spec)
        self.state.bars[token] = {"last_start": closed.start_ms, "ind": st}
        return self._signal(token, closed, tick, values)

    def _signal(self, token: str, closed: Bar, tick, values: dict) -> SignalGenerated | None:
        cfg = self.config
        sig = self.rule_set.evaluate(values, self.params)
        bar_end = closed.start_ms + cfg.bar_ms
        corr = self.state.correlations.get(token)
        if (corr and corr.get("active") and corr.get("action") == sig.action
                and 0 <= bar_end - corr["ts"] <= cfg.correlation_ttl_ms):
            r = abs(corr["coefficient"])
            sig.confidence = round(min(1.0, sig.confidence * (1 + cfg.correlation_boost * r)), 4)
            sig.reasons.append(f"sentiment-price correlation r={corr['coefficient']:+.2f} supports {sig.action}")
        correlation_id = tick.correlation_id or tick.event_id
        if self.advisor is not None:
            self.advisor.advise(token, closed, bar_end, values, sig, correlation_id, tick.ingest_ms)
        if cfg.keep_view:
            self.state.indicators[token] = {
                "bar": closed.to_dict(), "bar_end": bar_end, "values": values,
                "signal": {"action": sig.action, "score": sig.score, "confidence": sig.confidence,
                           "reasons": sig.reasons}}
        if sig.action == "HOLD" or sig.score < cfg.signal_min_score:
            return None
        if any_halted(self.state.halt):
            self.suppressed += 1
            return None
        return SignalGenerated(
            event_id=derived_id("signal", AGENT, token, closed.start_ms),
            timestamp=bar_end, token=token, source=AGENT, correlation_id=correlation_id, ingest_ms=tick.ingest_ms,
            action=sig.action, score=sig.score, confidence=sig.confidence, agent=AGENT,
            reasons=sig.reasons, price=closed.close,
            indicators={k: v for k, v in values.items() if not k.endswith("_prev")})
