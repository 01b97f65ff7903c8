"""A backtest's result from its fills: the account rebuilt with :mod:`domain.portfolio`, marked
at every bar close with the input prices, measured with :mod:`domain.performance`, beside a
buy-and-hold benchmark of the same tokens over the same bars; and the reports (JSON, CSV of trades
and equity, a self-contained HTML page).

Conventions: the equity curve is sampled at each bar close (``bar_ms``) where any input tick fell;
fills apply at their event time; positions are marked at the last input price of their token.
Buy and hold puts the starting balance in equal parts into each token at its first bar close and
holds to the end, without fees. Round-trip trades are positions from open to flat (a reversal
closes one and opens the next); their PnL is net of their fees.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from domain.performance import Performance, drawdown, evaluate
from domain.portfolio import apply_fill, new_portfolio

#: How each metric is defined, for the stats table.
CONVENTIONS = {
    "total_return_pct": "equity end / start − 1, %",
    "annualised_return_pct": "(1 + total)^(365 d / span) − 1, %",
    "sharpe": "mean / std of bar returns × √(bars a year), risk-free 0",
    "sortino": "mean / downside deviation of bar returns × √(bars a year), target 0",
    "max_drawdown_pct": "largest peak-to-trough fall of equity, %",
    "max_drawdown_duration_s": "longest time from a peak to its recovery (or the end), s",
    "trades": "closed round trips",
    "win_rate_pct": "winning round trips / round trips, %",
    "profit_factor": "gross profit / gross loss of round trips",
    "exposure_pct": "share of time with an open position, %",
    "fees_paid": "USD",
    "start_equity": "USD",
    "end_equity": "USD",
}


@dataclass
class RoundTrip:
    token: str
    side: str  # LONG | SHORT
    size: float  # the position's largest size, base units
    entry_ms: int
    exit_ms: int
    entry_price: float  # USD, average
    exit_price: float  # USD, of the closing fill
    pnl_usd: float  # net of the position's fees
    return_pct: float  # pnl / entry notional, %

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Result:
    """One backtest: ``params`` (every setting that shaped it), ``performance``, ``benchmark``
    (buy and hold), ``fills`` (dicts), ``trades`` (round trips), ``curve`` [(ms, equity USD)],
    ``prices`` token -> [(ms, close)], replay figures, ``kept`` events."""

    run_id: str
    params: dict
    performance: Performance
    benchmark: dict
    fills: list[dict]
    trades: list[RoundTrip]
    curve: list[tuple[int, float]]
    prices: dict[str, list[tuple[int, float]]]
    events: int
    replay_seconds: float
    data_span_s: float
    counts: dict = field(default_factory=dict)
    #: With ``keep_outputs``: every event the run emitted and the input events that started their
    #: chains, as wire JSON dicts, for the event store's ``backtest_events`` (not in the report).
    kept: list[dict] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.replay_seconds if self.replay_seconds > 0 else 0.0

    def report(self) -> dict:
        return {"run_id": self.run_id, "params": self.params, "metrics": self.performance.to_dict(),
                "conventions": CONVENTIONS, "benchmark": self.benchmark,
                "replay": {"events": self.events, "seconds": round(self.replay_seconds, 3),
                           "events_per_second": round(self.events_per_second, 1),
                           "data_span_seconds": self.data_span_s,
                           "real_time_multiple": round(self.data_span_s / self.replay_seconds, 1)
                           if self.replay_seconds > 0 else None,
                           "emitted": self.counts},
                "round_trips": [t.to_dict() for t in self.trades],
                "trades": [{k: f.get(k) for k in ("timestamp", "token", "side", "fill_price", "filled_amount", "fee",
                                                  "client_order_id")} for f in self.fills]}


def build(ticks: tuple[list[int], list[str], list[float]], fills: list[dict], balance: float, bar_ms: int
          ) -> tuple[list[int], list[float], list[bool], list[RoundTrip], float, dict, dict]:
    """Rebuild the account from its fills and mark it at each bar close.

    ``ticks``: columns (times ms, tokens, prices USD) in time order. Returns (times ms, equity USD, exposed flags,
    round trips, fees USD, closes per token, buy-and-hold equity per sample). The account is
    rebuilt fill by fill; the marking is done for all bar closes at once (numpy)."""
    pf = new_portfolio(balance)
    fills = sorted(fills, key=lambda f: (f["timestamp"], f.get("fill_id") or ""))  # as both engines give them
    trips: list[RoundTrip] = []
    tick_ts, tick_tokens, tick_px = ticks
    if not tick_ts:
        return [], [], [], trips, 0.0, {}, {"equity": []}
    tokens = sorted(set(tick_tokens))
    col = {tok: j for j, tok in enumerate(tokens)}
    # the account after 0, 1, ..., n fills: cash, and per token signed size and entry price
    n = len(fills)
    cash = np.empty(n + 1)
    size = np.zeros((n + 1, len(tokens)))
    entry = np.zeros((n + 1, len(tokens)))
    cash[0] = balance
    for i, f in enumerate(fills, start=1):
        closed = apply_fill(pf, f["token"], f["side"], f["filled_amount"], f["fill_price"], f["fee"],
                            f["timestamp"], f.get("fill_id") or f["client_order_id"])
        if closed is not None:
            entry_ms = f["timestamp"] - int(closed.duration_s * 1000)
            notional = abs(closed.size) * closed.entry_price
            trips.append(RoundTrip(closed.token, "LONG" if closed.size > 0 else "SHORT", abs(closed.size),
                                   entry_ms, f["timestamp"], closed.entry_price, closed.exit_price, closed.pnl_usd,
                                   closed.pnl_usd / notional * 100.0 if notional else 0.0))
        cash[i] = pf["cash"]
        for tok, p in pf["positions"].items():
            j = col.get(tok)
            if j is not None:
                size[i, j], entry[i, j] = p["size"], p["entry_price"]
            else:  # a fill of a token without ticks is marked at its entry price
                cash[i] += p["size"] * p["entry_price"]
    ts = np.array(tick_ts, dtype=np.int64)
    px = np.array(tick_px, dtype=np.float64)
    if len(tokens) == 1:
        tk = np.zeros(len(ts), dtype=np.int64)
    else:
        tk = np.array([col[tok] for tok in tick_tokens], dtype=np.int64)
    bucket = ts - ts % bar_ms
    # a sample at each bar close where a tick fell: after the last tick of each bucket
    last = np.append(np.flatnonzero(np.diff(bucket)), len(ts) - 1)
    times = bucket[last] + bar_ms
    # fills up to each sample's time are applied (the last sample takes every fill left)
    fill_ts = np.array([f["timestamp"] for f in fills], dtype=np.int64)
    applied = np.searchsorted(fill_ts, times, side="right")
    applied[-1] = n
    marks = np.full((len(last), len(tokens)), np.nan)
    idx = np.arange(len(ts))
    for j in range(len(tokens)):
        seen = np.where(tk == j, idx, -1)
        latest = np.maximum.accumulate(seen)[last]  # the token's last tick at each sample
        marks[:, j] = np.where(latest >= 0, px[np.maximum(latest, 0)], np.nan)
    held, at = size[applied], entry[applied]
    equity = cash[applied] + (held * np.where(np.isnan(marks), at, marks)).sum(axis=1)
    exposed = (held != 0).any(axis=1)
    seen_tok = ~np.isnan(marks)
    first_idx = seen_tok.argmax(axis=0)
    first = marks[first_idx, np.arange(len(tokens))]
    count = seen_tok.sum(axis=1)
    ratio = np.where(seen_tok, marks / first, 0.0).sum(axis=1)
    hold = balance / np.maximum(count, 1) * ratio
    t_list = times.tolist()
    closes = {}
    for j, tok in enumerate(tokens):
        where = seen_tok[:, j]
        closes[tok] = list(zip(times[where].tolist(), marks[where, j].tolist()))
    return (t_list, equity.tolist(), exposed.tolist(), trips, pf["fees_paid"], closes, {"equity": hold.tolist()})


def result(run_id: str, params: dict, ticks: tuple[list[int], list[str], list[float]], fills: list[dict],
           balance: float, bar_ms: int, events: int, seconds: float, counts: dict | None = None) -> Result:
    """Measure a run (see the module's conventions); ``ticks`` as :func:`build` takes them."""
    times, equity, exposed, trips, fees, closes, hold = build(ticks, fills, balance, bar_ms)
    start = ticks[0][0] if ticks[0] else 0
    end = ticks[0][-1] if ticks[0] else 0
    if len(times) < 2:
        times, equity, exposed, hold = [start, end or start + 1], [balance, balance], [False, False], \
            {"equity": [balance, balance]}
    perf = evaluate(times, equity, exposed, [t.pnl_usd for t in trips], fees)
    h = hold["equity"]
    dd, _ = drawdown(h, [t / 1000.0 for t in times] if len(times) < 1000 else np.asarray(times) / 1000.0)
    benchmark = {"name": "buy and hold (equal parts, no fees)", "total_return_pct": (h[-1] / h[0] - 1.0) * 100.0,
                 "max_drawdown_pct": dd, "excess_return_pct": perf.total_return_pct - (h[-1] / h[0] - 1.0) * 100.0,
                 "curve": list(zip(times, h))}
    return Result(run_id, params, perf, benchmark, fills, trips,
                  list(zip(times, equity)), closes, events, max(seconds, 1e-9), (end - start) / 1000.0, counts or {})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def write_reports(res: Result, out_dir: Path) -> dict[str, Path]:
    """``report.json``, ``trades.csv`` (round trips), ``fills.csv``, ``equity.csv`` (with the
    benchmark) and a self-contained ``report.html`` (stats table, equity against buy and hold,
    drawdown, trades on the price chart; plotly with its JavaScript inlined, so it opens offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    out_dir.mkdir(parents=True, exist_ok=True)
    report = res.report()
    paths = {"json": out_dir / "report.json", "trades": out_dir / "trades.csv", "fills": out_dir / "fills.csv",
             "equity": out_dir / "equity.csv", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    with paths["trades"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["token", "side", "size", "entry_time", "exit_time", "entry_price", "exit_price", "pnl_usd",
                    "return_pct"])
        for t in res.trades:
            w.writerow([t.token, t.side, t.size, _iso(t.entry_ms), _iso(t.exit_ms), t.entry_price, t.exit_price,
                        t.pnl_usd, t.return_pct])
    with paths["fills"].open("w", newline="") as fh:
        keys = ["timestamp", "token", "side", "fill_price", "filled_amount", "fee", "slippage", "client_order_id",
                "fill_id"]
        w = csv.writer(fh)
        w.writerow(["time", *keys])
        for f in res.fills:
            w.writerow([_iso(f["timestamp"]), *(f.get(k) for k in keys)])
    hold = dict(res.benchmark["curve"])
    with paths["equity"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "equity_usd", "buy_and_hold_usd"])
        for t, e in res.curve:
            w.writerow([_iso(t), e, hold.get(t)])

    tokens = sorted(res.prices)
    fig = make_subplots(rows=3 + len(tokens), cols=1, vertical_spacing=0.03,
                        specs=[[{"type": "table"}]] + [[{"type": "xy"}]] * (2 + len(tokens)),
                        row_heights=[0.9] + [1.0] * (2 + len(tokens)),
                        subplot_titles=["Statistics", "Equity (USD) against buy and hold", "Drawdown (%)"]
                        + [f"{t} close and fills" for t in tokens])
    m = res.performance.to_dict()

    def fmt(v):
        return "n/a" if v is None else f"{v:,.4g}" if isinstance(v, float) else str(v)

    names = list(m) + ["buy and hold return %", "buy and hold max drawdown %", "excess return %"]
    values = [fmt(m[k]) for k in m] + [fmt(res.benchmark[k]) for k in
                                       ("total_return_pct", "max_drawdown_pct", "excess_return_pct")]
    notes = [CONVENTIONS.get(k, "") for k in m] + [res.benchmark["name"], "", "strategy − buy and hold"]
    fig.add_trace(go.Table(header=dict(values=["metric", "value", "convention"]),
                           cells=dict(values=[names, values, notes])), row=1, col=1)
    ts = [datetime.fromtimestamp(t / 1000, timezone.utc) for t, _ in res.curve]
    eq = [e for _, e in res.curve]
    fig.add_trace(go.Scatter(x=ts, y=eq, name="equity"), row=2, col=1)
    fig.add_trace(go.Scatter(x=ts, y=[hold.get(t) for t, _ in res.curve], name="buy and hold",
                             line=dict(dash="dot")), row=2, col=1)
    peak, dd = 0.0, []
    for e in eq:
        peak = max(peak, e)
        dd.append(-(peak - e) / peak * 100 if peak else 0.0)
    fig.add_trace(go.Scatter(x=ts, y=dd, name="drawdown", fill="tozeroy"), row=3, col=1)
    for i, tok in enumerate(tokens):
        px = res.prices[tok]
        fig.add_trace(go.Scatter(x=[datetime.fromtimestamp(t / 1000, timezone.utc) for t, _ in px],
                                 y=[p for _, p in px], name=f"{tok} close"), row=4 + i, col=1)
        for side, symbol, color in (("BUY", "triangle-up", "green"), ("SELL", "triangle-down", "red")):
            fs = [f for f in res.fills if f["token"] == tok and f["side"] == side]
            fig.add_trace(go.Scatter(x=[datetime.fromtimestamp(f["timestamp"] / 1000, timezone.utc) for f in fs],
                                     y=[f["fill_price"] for f in fs], mode="markers",
                                     marker=dict(symbol=symbol, color=color, size=9), name=f"{tok} {side}"),
                          row=4 + i, col=1)
    p = res.performance
    fig.update_layout(height=900 + 300 * len(tokens), title=(
        f"Backtest {res.run_id}: return {p.total_return_pct:.2f}% (buy and hold "
        f"{res.benchmark['total_return_pct']:.2f}%), max drawdown {p.max_drawdown_pct:.2f}%, {p.trades} round trips, "
        f"Sharpe {p.sharpe if p.sharpe is None else round(p.sharpe, 2)}"))
    fig.write_html(str(paths["html"]), include_plotlyjs=True, full_html=True)
    return paths
