"""Backtests on both engines, against each other and against backtesting.py.

- Parity: the in-process engine's fills equal, field for field, those of the replay through a
  Kafka worker at full speed and of a paced (live-like) replay, on real candles and on the bundled
  real tick sample.
- Cross-check: SMA crossovers through the agents give the same closed trades (bars, sides) and win
  rate as backtesting.py (an established independent backtester), and within stated conventions
  the same return and max drawdown: on 3,000 FTX BTC-PERP one-minute candles with SMA(20)/SMA(50)
  (Kafka engine) and other periods on 1-minute and hourly bars (in-process engine).
- The ``backtest`` command reads a range from the event store and stores a ``backtest.report``.

Conventions for the cross-check: :mod:`tests.reference`. Our ticks sit at each candle's close time
(open + interval) and a bar closes when the next tick arrives, so our fills are stamped two
intervals after the candle's open time that backtesting.py reports. Closed trades only (the
position still open at the end is not counted by either).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pandas as pd
import pytest

from app.local import FAUST, ROOT
from backtest import api
from tests.reference import sma_cross_backtest

N = 3000
SETTINGS = {"consensus_threshold": 50, "position_fraction": 0.1, "slippage_bps": 0, "fee_bps": 4.5,
            "daily_loss_limit_pct": 100, "max_position_notional_usd": 1e9, "price_alert_pct": 50}
ENV = {k.upper(): str(v) for k, v in SETTINGS.items()}


@pytest.fixture(scope="module")
def candles(candles_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("candles") / "ftx_3000.csv"
    with open(candles_path) as src, open(path, "w") as dst:
        for i, line in enumerate(src):
            if i > N:
                break
            dst.write(line)
    return path


def run(path, engine: str, rules="sma_cross", params=None, bar_seconds=60.0, token="BTC", speed=None,
        agents=("trading.rules",), **extra):
    data = api.load(path, token)
    s = api.backtest_settings(agents=agents, balance=100_000, bar_seconds=bar_seconds, rules=rules,
                              params=params or {}, **{**SETTINGS, **extra})
    return asyncio.run(api.arun(data, s, engine=engine, speed=speed))


@pytest.fixture(scope="module")
def kafka_run(candles, database_url):
    return run(candles, "kafka")


@pytest.fixture(scope="module")
def inprocess_run(candles):
    return run(candles, "inprocess")


def reference(df: pd.DataFrame, fast: int, slow: int):
    return sma_cross_backtest(df, fast, slow).run()


def assert_matches_backtesting_py(ours, df: pd.DataFrame, fast: int, slow: int, interval_ms: int):
    ref = reference(df, fast, slow)
    trades = ref["_trades"]
    m = ours.performance
    # the same trades: one fill per cross, at the same bar, in the same direction
    ref_entries = [(int(t.value // 1_000_000) + 2 * interval_ms, "BUY" if s > 0 else "SELL")
                   for t, s in zip(trades["EntryTime"], trades["Size"])]
    our_entries = [(f["timestamp"], f["side"]) for f in ours.fills]
    assert our_entries[:len(ref_entries)] == ref_entries
    assert len(our_entries) == len(ref_entries) + 1  # the last entry is still open at the end
    assert m.trades == ref["# Trades"] == len(trades)
    assert m.win_rate_pct == pytest.approx(ref["Win Rate [%]"], abs=1e-9)
    # returns and drawdown within 0.05 percentage points (sizes differ by the rounding of units)
    assert m.total_return_pct == pytest.approx(ref["Return [%]"], abs=0.05)
    assert m.max_drawdown_pct == pytest.approx(-ref["Max. Drawdown [%]"], abs=0.05)
    print(f"SMA({fast})/SMA({slow}) ours: return {m.total_return_pct:.4f}%, max DD {m.max_drawdown_pct:.4f}%, "
          f"win rate {m.win_rate_pct:.2f}% over {m.trades} trades; backtesting.py: {ref['Return [%]']:.4f}%, "
          f"{-ref['Max. Drawdown [%]']:.4f}%, {ref['Win Rate [%]']:.2f}% over {ref['# Trades']}")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sma_cross_through_the_kafka_worker_matches_backtesting_py(kafka_run, candles):
    df = pd.read_csv(candles, parse_dates=["timestamp"], index_col="timestamp")
    assert_matches_backtesting_py(kafka_run, df, 20, 50, 60_000)
    print(f"kafka replay {kafka_run.events_per_second:,.0f} events/s")


def test_in_process_engine_gives_the_kafka_replays_fills_on_candles(kafka_run, inprocess_run):
    assert len(inprocess_run.fills) > 50
    assert inprocess_run.fills == kafka_run.fills  # every field of every fill
    assert inprocess_run.performance == kafka_run.performance


def test_paced_kafka_replay_gives_the_same_fills(inprocess_run, candles, database_url):
    paced = run(candles, "kafka", speed=12_000.0)  # 3,000 minutes in 15 s
    assert paced.fills == inprocess_run.fills
    assert paced.performance == inprocess_run.performance


@pytest.mark.parametrize("token, agents", [("BTC", ("trading.rules",)), ("ETH", ("trading.rules",)),
                                           ("BTC", ("trading.rules", "orderflow", "whale"))],
                         ids=["BTC-rules", "ETH-rules", "BTC-rules+orderflow+whale"])
def test_engines_agree_on_the_real_tick_sample(sample_path, database_url, token, agents):
    """Default rules on 1-second bars of real Binance trades of one token, alone or beside the
    order-flow and whale agents (two of three to agree): in process, through Kafka at full speed
    and paced at 20x real time, the same fills.

    One token at a time: approvals of two tokens at the same event time come from different
    consensus partitions and reach the execution engine in an order Kafka does not fix, and each
    is sized on an equity that includes the other's fee (a fraction of a basis point of size)."""
    kw = dict(rules="default", bar_seconds=1.0, token=token, consensus_threshold=70, agents=agents)
    ours = run(sample_path, "inprocess", **kw)
    assert len(ours.fills) >= 5 and {f["token"] for f in ours.fills} == {token}
    assert run(sample_path, "kafka", **kw).fills == ours.fills
    assert run(sample_path, "kafka", speed=20.0, **kw).fills == ours.fills


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fast, slow, rule", [(12, 40, None), (7, 26, "1h")], ids=["1m-12-40", "1h-7-26"])
def test_other_periods_and_bar_lengths_match_backtesting_py(candles_path, tmp_path, fast, slow, rule):
    df = pd.read_csv(candles_path, parse_dates=["timestamp"], index_col="timestamp")
    interval = 60_000
    if not rule:
        df = df.iloc[:8000]
    else:  # the whole month as hourly bars
        df = df.resample(rule, label="left", closed="left").agg(
            {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}).dropna()
        interval = int(pd.Timedelta(rule).total_seconds() * 1000)
    path = tmp_path / "candles.csv"
    df.to_csv(path)
    ours = run(path, "inprocess", params={"fast": fast, "slow": slow}, bar_seconds=interval / 1000)
    assert_matches_backtesting_py(ours, df, fast, slow, interval)


def test_backtest_command_from_the_event_store(candles, tmp_path, fresh_database_url):
    database_url = fresh_database_url
    from store.eventstore import EventStore, Row

    events = [{"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{i}")), "event_type": "price.tick",
               "timestamp": e.timestamp, "token": e.token, "source": "test", "price": e.price}
              for i, e in enumerate(api.load(candles, "BTC").events[:600])]

    async def load():
        store = EventStore(database_url)
        try:
            await store.migrate()
            await store.write([Row(uuid.UUID(e["event_id"]), e["event_type"], e["timestamp"], e["token"],
                                   json.dumps(e), e["source"]) for e in events])
        finally:
            await store.close()

    asyncio.run(load())
    env = {**__import__("os").environ, "DATABASE_URL": database_url, "BAR_SECONDS": "60", **ENV}
    proc = subprocess.run([FAUST, "-A", "app", "backtest", "--start", str(events[0]["timestamp"]), "--end",
                           str(events[-1]["timestamp"] + 1), "--rules", "sma_cross", "--out", str(tmp_path / "r")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["replay"]["events"] == 600 and report["params"]["rules"] == "sma_cross"
    assert report["params"]["settings"]["fee_bps"] == 4.5 and report["params"]["rule_params"] == {"fast": 20, "slow": 50}
    html = (tmp_path / "r" / "report.html").read_text()
    # self-contained, opens offline: plotly.js inlined (megabytes), no external script
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html and "<script src=" not in html

    async def stored():
        store = EventStore(database_url)
        try:
            rows, _ = await store.query(0, 2**42, event_types=["backtest.report"])
            return [json.loads(r["data"]) for r in rows]
        finally:
            await store.close()

    (saved,) = [r for r in asyncio.run(stored()) if r["run_id"] == report["run_id"]]
    assert saved["metrics"]["trades"] == report["metrics"]["trades"]

    # the run kept what it emitted: a backtest fill traces back to its tick like a live one
    run_id = report["run_id"]
    assert f"under run {run_id}" in proc.stdout + proc.stderr

    async def kept_fill() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            return str(await conn.fetchval("SELECT event_id FROM backtest_events WHERE run_id = $1 AND "
                                           "event_type = 'trade.executed' ORDER BY timestamp LIMIT 1", run_id))
        finally:
            await conn.close()

    fill_id = asyncio.run(kept_fill())
    trace = subprocess.run([FAUST, "-A", "app", "trace", fill_id, "--run", run_id], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert trace.returncode == 0, trace.stderr[-2000:]
    lines = trace.stdout.splitlines()
    assert lines[0].startswith("chain of price.tick")
    for kind in ("bar", "signal.generated", "trade.consensus_approved", "trade.executed"):
        assert any(f"{kind}: " in line for line in lines), kind
    live = subprocess.run([FAUST, "-A", "app", "trace", fill_id], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert live.returncode == 1 and "no stored event" in live.stderr  # not among the live events


def test_report_reproduces_the_run(inprocess_run, candles):
    """Every setting that shaped the run is in the report: the same run from the report's settings
    alone gives the same fills."""
    p = inprocess_run.report()["params"]
    s = api.BacktestSettings(**p["settings"])
    again = asyncio.run(api.arun(api.load(Path(p["data"]["source"]), "BTC"), s))
    assert again.fills == inprocess_run.fills
    assert p["data"]["sha256"] and p["rule_params"] == {"fast": 20, "slow": 50}
