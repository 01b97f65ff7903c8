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
    ``prices`` token -> [(ms, close)], replay figures."""

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


def build(ticks: list[tuple[int, str, float]], fills: list[dict], balance: float, bar_ms: int
          ) -> tuple[list[int], list[float], list[bool], list[RoundTrip], float, dict, dict]:
    """Rebuild the account from its fills and mark it at each bar close.

    ``ticks``: (ms, token, price) in time order. Returns (times ms, equity USD, exposed flags,
    round trips, fees USD, closes per token, buy-and-hold equity per sample)."""
    pf = new_portfolio(balance)
    fills = sorted(fills, key=lambda f: (f["timestamp"], f.get("fill_id") or ""))  # as both engines give them
    times: list[int] = []
    equity: list[float] = []
    exposed: list[bool] = []
    hold: list[float] = []
    trips: list[RoundTrip] = []
    closes: dict[str, list[tuple[int, float]]] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    positions = pf["positions"]
    fi, n_fills = 0, len(fills)

    def apply_until(t: float) -> None:
        nonlocal fi
        while fi < n_fills and fills[fi]["timestamp"] <= t:
            f = fills[fi]
            closed = apply_fill(pf, f["token"], f["side"], f["filled_amount"], f["fill_price"], f["fee"],
                                f["timestamp"], f.get("fill_id") or f["client_order_id"])
            if closed is not None:
                entry_ms = f["timestamp"] - int(closed.duration_s * 1000)
                notional = abs(closed.size) * closed.entry_price
                trips.append(RoundTrip(closed.token, "LONG" if closed.size > 0 else "SHORT", abs(closed.size),
                                       entry_ms, f["timestamp"], closed.entry_price, closed.exit_price, closed.pnl_usd,
                                       closed.pnl_usd / notional * 100.0 if notional else 0.0))
            fi += 1

    def sample(t: int) -> None:
        for tok, px in last.items():
            closes.setdefault(tok, []).append((t, px))
            if tok not in first:
                first[tok] = px
        times.append(t)
        equity.append(pf["cash"] + sum(p["size"] * last.get(tok, p["entry_price"]) for tok, p in positions.items()))
        exposed.append(bool(positions))
        # buy and hold: equal parts of the balance in every token seen so far, from its first close
        hold.append(balance / len(first) * sum(last[tok] / p0 for tok, p0 in first.items()))

    bucket = None
    for ts, token, price in ticks:
        b = ts - ts % bar_ms
        if bucket is not None and b > bucket:
            apply_until(bucket + bar_ms)
            sample(bucket + bar_ms)
        bucket = b
        last[token] = price
    if bucket is not None:
        apply_until(float("inf"))  # the last sample takes every fill left
        sample(bucket + bar_ms)
    return times, equity, exposed, trips, pf["fees_paid"], closes, {"equity": hold}


def result(run_id: str, params: dict, ticks: list[tuple[int, str, float]], fills: list[dict], balance: float,
           bar_ms: int, events: int, seconds: float, counts: dict | None = None) -> Result:
    """Measure a run (see the module's conventions)."""
    times, equity, exposed, trips, fees, closes, hold = build(ticks, fills, balance, bar_ms)
    start = ticks[0][0] if ticks else 0
    end = ticks[-1][0] if ticks else 0
    if len(times) < 2:
        times, equity, exposed, hold = [start, end or start + 1], [balance, balance], [False, False], \
            {"equity": [balance, balance]}
    perf = evaluate(times, equity, exposed, [t.pnl_usd for t in trips], fees)
    h = hold["equity"]
    dd, _ = drawdown(h, [t / 1000.0 for t in times])
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
