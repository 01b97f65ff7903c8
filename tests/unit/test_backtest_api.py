"""The in-process backtest engine from Python and from the CLI: no Kafka, no PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pandas as pd
import pytest

from app.local import FAUST, ROOT
from backtest import api


@pytest.fixture(scope="module")
def candles(candles_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "ftx_2000.csv"
    pd.read_csv(candles_path, nrows=2000).to_csv(path, index=False)
    return path


def test_run_backtest_returns_pandas_objects_and_records_its_settings(candles):
    bt = api.run_backtest(candles, "sma_cross", {"fast": 10, "slow": 30}, token="BTC", fee_bps=2.0, slippage_bps=0)
    assert bt.metrics["trades"] == len(bt.trades) > 10
    assert list(bt.trades.columns[:4]) == ["token", "side", "size", "entry_ms"]
    assert bt.equity.index.tz is not None and len(bt.equity) == 2000
    assert set(bt.fills["side"]) == {"BUY", "SELL"}
    p = bt.report["params"]
    assert p["rule_params"] == {"fast": 10, "slow": 30} and p["settings"]["fee_bps"] == 2.0
    assert p["bar_seconds"] == 60.0 and p["data"]["candle_ms"] == 60_000 and len(p["data"]["sha256"]) == 64
    assert "total_return_pct" in bt.benchmark


async def test_run_backtest_works_inside_a_running_event_loop(candles):
    """As in a Jupyter cell: the loop is running, the call still completes."""
    asyncio.get_running_loop()
    bt = api.run_backtest(candles, "sma_cross", token="BTC")
    assert bt.metrics["trades"] > 0


def test_a_dataframe_and_the_file_give_the_same_fills(candles):
    df = pd.read_csv(candles, parse_dates=["timestamp"], index_col="timestamp")
    a = api.run_backtest(df, "sma_cross", token="BTC")
    b = api.run_backtest(candles, "sma_cross", token="BTC")
    key = ("timestamp", "side", "fill_price", "filled_amount", "fee", "client_order_id")
    assert [tuple(f[k] for k in key) for f in a.result.fills] == [tuple(f[k] for k in key) for f in b.result.fills]


@pytest.mark.parametrize("kwargs, needle", [
    ({"params": {"fast": 30, "slow": 10}}, "must be below"),
    ({"params": {"speed": 3}}, "Extra inputs"),
    ({"rules": "nope"}, "unknown rule set"),
    ({"fee_bpz": 1}, "unknown setting"),
    ({"fee_bps": -1}, "fee_bps"),
])
def test_bad_arguments_raise_one_line_errors(candles, kwargs, needle):
    kwargs = {"rules": "sma_cross", **kwargs}
    with pytest.raises(api.BacktestError, match=needle) as exc:
        api.run_backtest(candles, token="BTC", **kwargs)
    assert "\n" not in str(exc.value)


def test_parse_grid():
    assert api.parse_grid(["fast=5:20:5", "slow=30,60"]) == {"fast": [5, 10, 15, 20], "slow": [30, 60]}
    assert api.parse_grid(["bb_std=1.5:2.5:0.5"]) == {"bb_std": [1.5, 2.0, 2.5]}
    for bad in ("fast", "fast=5:1:1", "fast=1:5:0", "=1,2", "fast=a,b"):
        with pytest.raises(api.BacktestError):
            api.parse_grid([bad])


def _cli(*args, **env):
    return subprocess.run([FAUST, "-A", "app", "backtest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_cli_sweep_writes_a_ranked_table_and_a_heat_map(candles, tmp_path):
    out = tmp_path / "sweep"
    proc = _cli("--file", str(candles), "--token", "BTC", "--rules", "sma_cross", "--sweep", "fast=5:15:5",
                "--sweep", "slow=10,30", "--processes", "2", "--metric", "total_return_pct", "--out", str(out),
                DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 6
    refused = df[df["error"].notna()]
    assert set(zip(refused["fast"], refused["slow"])) == {(10, 10), (15, 10)}  # fast must be below slow
    ok = df[df["error"].isna()]["total_return_pct"].tolist()
    assert ok == sorted(ok, reverse=True)
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"fast": [5, 10, 15], "slow": [10, 30]}
    assert "Plotly.newPlot" in (out / "heatmap.html").read_text()


def test_cli_runs_without_kafka_or_postgresql_and_writes_every_report(candles, tmp_path):
    proc = _cli("--file", str(candles), "--token", "BTC", "--rules", "sma_cross", "--param", "fast=10",
                "--param", "slow=30", "--out", str(tmp_path / "r"),
                DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", KAFKA_BROKER="kafka://127.0.0.1:1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report not stored" in proc.stdout + proc.stderr
    for name in ("report.json", "trades.csv", "fills.csv", "equity.csv", "report.html"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    trades = pd.read_csv(tmp_path / "r" / "trades.csv")
    assert len(trades) == json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["trades"]


@pytest.mark.parametrize("args, needle", [
    (["--rules", "sma_cross", "--param", "fast"], "expected name=value"),
    (["--rules", "sma_cross", "--param", "fast=90"], "must be below"),
    (["--engine", "spark"], "'--engine'"),
    (["--sweep", "fast=1:2"], "--sweep"),
])
def test_cli_bad_arguments_get_one_line_and_exit_2(candles, args, needle):
    proc = _cli("--file", str(candles), "--token", "BTC", *args)
    assert proc.returncode == 2 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
