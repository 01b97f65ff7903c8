"""Backtests from Python and the CLI: one entry point over both engines, parameter sweeps.

>>> from backtest.api import run_backtest
>>> bt = run_backtest("candles.csv", token="BTC", rules="sma_cross", params={"fast": 10, "slow": 30}, fee_bps=4.5)
>>> bt.metrics["sharpe"], bt.trades.head(), bt.equity.plot()

``engine="inprocess"`` (default) runs the processors in this process (:mod:`backtest.engine`): no
Kafka, no PostgreSQL. ``engine="kafka"`` replays through an isolated worker (:mod:`backtest.runner`),
the end-to-end audit; it needs the local broker. Both take the same settings and give the same
fills.

Settings: a backtest starts from the settings' defaults (not the environment), then the keyword
arguments (any :class:`core.settings.Settings` field: ``fee_bps``, ``slippage_bps``,
``position_fraction``, ``max_leverage``, ...), so a run is reproducible from its report alone:
``report["params"]["settings"]`` holds every setting that can change the result. The CLI starts
from the worker's settings (environment) instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from backtest.engine import InProcessEngine, Tick, as_input, tick_id
from backtest.report import Result, result
from core.settings import Settings
from domain.signals import ParamError, resolve

#: agents that vote in the consensus; those not chosen for a run are weighted 0
VOTING_AGENTS = ("trading.rules", "trading.llm", "sentiment", "orderflow", "whale")
#: settings that cannot change a backtest's result (infrastructure, credentials, web, the live path)
NOT_RESULT = {
    "app_id", "kafka_broker", "topic_prefix", "store_url", "data_dir", "database_url", "web_host", "web_bind",
    "web_port", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
    "kafka_ssl_cafile", "kafka_session_timeout_seconds", "kafka_heartbeat_interval_seconds", "anthropic_api_key",
    "anthropic_base_url", "llm_model", "llm_timeout_seconds", "llm_concurrency", "llm_queue_size", "llm_max_tokens",
    "exchange", "hyperliquid_base_url", "hyperliquid_secret_key", "hyperliquid_account_address", "paper_latency_ms",
    "discord_webhook_url", "discord_batch_seconds", "ingest_token_map", "binance_ws_url", "coinbase_ws_url",
    "hyperliquid_ws_url", "hyperliquid_ingest_users", "ingest_stale_seconds", "ingest_backoff_cap_seconds",
    "ingest_queue_size", "store_compress_after_days", "store_retention_days", "store_events", "sink_batch_size",
    "sink_batch_seconds", "control_token", "control_tokens", "read_auth",
    "control_rate_per_minute", "dashboard_enabled", "dashboard_max_clients", "dashboard_history",
    "dashboard_client_buffer_bytes", "dashboard_allowed_origins", "sla_limits_ms", "sla_event_interval_seconds",
    "event_max_ahead_seconds", "event_time_floor_ms",
}


class BacktestError(ValueError):
    """Bad data or arguments for a backtest; the message is one line."""


class BacktestSettings(Settings):
    """:class:`core.settings.Settings` from its arguments only (no environment)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):
        return (init_settings,)


def backtest_settings(base: BaseSettings | None = None, *, agents: Sequence[str] = ("trading.rules",),
                      balance: float = 100_000.0, bar_seconds: float = 60.0, rules: str | None = None,
                      params: Mapping[str, Any] | None = None, **overrides) -> Settings:
    """The settings of a run: ``base`` (default: the settings' defaults) with the run's choices.

    Raises:
        BacktestError: an unknown setting, an invalid value, an unknown rule set or parameter.
    """
    fields: dict[str, Any] = base.model_dump() if base is not None else {}
    unknown = set(overrides) - set(Settings.model_fields)
    if unknown:
        raise BacktestError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    if "position_fraction" in overrides and "sizing" not in overrides and fields.get("sizing"):
        fields["sizing"] = {k: v for k, v in fields["sizing"].items() if k != "default"}  # rebuilt from the fraction
    fields.update(overrides)
    if not agents:
        raise BacktestError("at least one voting agent is needed")
    weights = dict(fields.get("agent_weights") or {})
    weights.update({a: weights.get(a, 1.0) or 1.0 for a in agents})
    weights.update({a: 0.0 for a in VOTING_AGENTS if a not in agents})
    fields.update(initial_cash_usd=balance, bar_seconds=bar_seconds, agent_weights=weights,
                  consensus_min_agents=min(2, len(agents)), exchange="paper", store_events=False,
                  dashboard_enabled=False, anthropic_api_key=None, discord_webhook_url=None)
    if rules is not None:
        fields["trading_rules"] = rules
    if params is not None:
        fields["trading_params"] = dict(params)
    try:
        resolve(fields.get("trading_rules", "default"), fields.get("trading_params"))
    except ParamError as exc:
        raise BacktestError(str(exc)) from None
    try:
        return BacktestSettings(**fields)
    except ParamError as exc:
        raise BacktestError(str(exc)) from None
    except Exception as exc:  # pydantic.ValidationError: say which setting, in one line
        errors = getattr(exc, "errors", None)
        if errors:
            e = errors(include_url=False)[0]
            raise BacktestError(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}") from None
        raise


def result_settings(s: Settings) -> dict:
    """Every setting that can change a backtest's result, as JSON."""
    return {k: v for k, v in s.model_dump(mode="json").items() if k not in NOT_RESULT}


# ------------------------------------------------------------------ data
@dataclass
class Data:
    """Input events in timestamp order (ticks as :class:`backtest.engine.Tick`), and where they came
    from: ``source`` (file path or a description), ``sha256`` of the file, ``candle_ms`` (the
    candle interval of a candle file, else None)."""

    events: list
    source: str
    sha256: str | None = None
    candle_ms: int | None = None
    _types: frozenset | None = None

    @property
    def event_types(self) -> frozenset:
        """The event types in ``events`` (computed once)."""
        if self._types is None:
            self._types = frozenset(e.event_type for e in self.events)
        return self._types

    @property
    def span_ms(self) -> int:
        return self.events[-1].timestamp - self.events[0].timestamp if self.events else 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(data, token: str | None = None) -> Data:
    """Input of a backtest from ``data``: a trades or candles file (CSV, optionally gzipped; see
    :mod:`feeds.files`), a pandas DataFrame of candles (a ``close`` column, times in a
    ``timestamp`` column or the index; ``token`` required), a list of events (wire JSON dicts or
    models), or a :class:`Data`.

    Raises:
        BacktestError: unreadable file, unknown format, no token for candles, no events.
    """
    from feeds.files import FeedError, candle_interval_ms, is_candle_file, read_ticks

    if isinstance(data, Data):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            candles = is_candle_file(path)
            # a trades file names its symbols: there ``token`` only selects one
            rows = read_ticks(path, token=token.upper() if token and candles else None)
            candle_ms = candle_interval_ms(rows) if candles else None
        except FeedError as exc:
            raise BacktestError(str(exc)) from None
        events = [Tick(r.token, r.ts_ms, r.price, r.size, event_id=tick_id(str(path), i), side=r.side,
                       trade_id=r.trade_id) for i, r in enumerate(rows)]
        if token and not candle_ms:
            events = [e for e in events if e.token == token.upper()]
        out = Data(events, str(path), _sha256(path), candle_ms)
    elif hasattr(data, "columns"):  # a pandas DataFrame of candles
        import pandas as pd

        if not token:
            raise BacktestError("a DataFrame of candles names no symbol: give token=")
        df = data.reset_index() if "timestamp" not in data.columns else data
        tcol = "timestamp" if "timestamp" in df.columns else df.columns[0]
        col = "close" if "close" in df.columns else "Close"
        if col not in df.columns:
            raise BacktestError("the DataFrame needs a 'close' column")
        times = (pd.to_datetime(df[tcol], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        step = int(times.diff().dropna().min()) if len(times) > 1 else 60_000
        digest = hashlib.sha256(pd.util.hash_pandas_object(df[[tcol, col]], index=False).values.tobytes()).hexdigest()
        events = [Tick(token.upper(), int(t) + step, float(c), event_id=tick_id(f"dataframe:{digest}", i))
                  for i, (t, c) in enumerate(zip(times, df[col]))]
        out = Data(events, f"DataFrame ({len(df)} candles)", digest, step)
    else:
        events = [as_input(e) for e in data]
        out = Data(events, f"{len(events)} events")
    out.events.sort(key=lambda e: e.timestamp)
    if not out.events:
        raise BacktestError(f"{out.source}: nothing to replay")
    return out


def _ticks(events: list) -> tuple[list[int], list[str], list[float]]:
    """The input ticks as columns: times (ms), tokens, prices (USD)."""
    ticks = [e for e in events if e.event_type == "price.tick"]
    return [e.timestamp for e in ticks], [e.token for e in ticks], [e.price for e in ticks]


def _as_dict(ev) -> dict:
    if isinstance(ev, Tick):
        d = {"event_id": str(ev.event_id), "event_type": "price.tick", "timestamp": ev.timestamp, "token": ev.token,
             "source": "backtest.file", "price": ev.price}
        for name in ("size", "side", "trade_id"):
            value = getattr(ev, name)
            if value is not None:
                d[name] = value
        return d
    return ev.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------------ runs
async def arun(data: Data, settings: Settings, *, engine: str = "inprocess", speed: float | None = None,
               progress: Callable[[int], None] | None = None, agents: Sequence[str] = ("trading.rules",),
               keep_outputs: bool = False, workdir: Path | None = None) -> Result:
    """Run one backtest of ``data`` with ``settings`` (:func:`backtest_settings`) and measure it.
    ``keep_outputs`` (in-process engine): keep every emitted event in the result (``kept``).
    ``workdir`` (Kafka engine): the worker's folder (data, log), kept; without it the run uses a
    temporary folder and removes it afterwards."""
    import orjson

    from models.events import encode_event

    run_id = f"bt-{uuid.uuid4().hex[:8]}"
    if engine == "inprocess":
        sentiment = "sentiment.update" in data.event_types
        run = await InProcessEngine(settings, keep_outputs=keep_outputs, sentiment_input=sentiment).run(
            data.events, progress)
        fills = sorted((orjson.loads(encode_event(f)) for f in run.fills),
                       key=lambda f: (f["timestamp"], f.get("fill_id") or ""))
        seconds, counts = run.seconds, run.counts
        kept = _kept(data.events, run.outputs) if keep_outputs else []
    elif engine == "kafka":
        import tempfile

        from backtest.runner import run_kafka

        wd = workdir or Path(tempfile.mkdtemp(prefix="moondev-backtest-"))
        events = [_as_dict(e) for e in data.events]
        try:
            fills, seconds, run_id = await asyncio.get_running_loop().run_in_executor(
                None, lambda: run_kafka(events, settings, workdir=wd, speed=speed,
                                        progress=progress or (lambda n: None)))
        finally:
            if workdir is None:  # a folder of our own (a failure's message carries the worker log's tail)
                shutil.rmtree(wd, ignore_errors=True)
        counts = {"trade.executed": len(fills)}
        kept = []
    else:
        raise BacktestError(f"unknown engine {engine!r}: inprocess or kafka")
    rules_set, params = resolve(settings.trading_rules, settings.trading_params)
    report_params = {
        "engine": engine, "rules": rules_set.name, "rule_params": params.model_dump(),
        "agents": list(agents), "balance": settings.initial_cash_usd, "bar_seconds": settings.bar_seconds,
        "fee_bps": settings.fee_bps, "slippage_bps": settings.slippage_bps,
        "sizing": {k: v.model_dump() for k, v in settings.sizing.items()},
        "data": {"source": data.source, "sha256": data.sha256, "candle_ms": data.candle_ms,
                 "events": len(data.events), "start_ms": data.events[0].timestamp,
                 "end_ms": data.events[-1].timestamp},
        "speed": speed or "max", "settings": result_settings(settings)}
    res = result(run_id, report_params, _ticks(data.events), fills, settings.initial_cash_usd,
                 int(settings.bar_seconds * 1000), len(data.events), seconds, counts)
    res.kept = kept
    return res


def _kept(inputs: list, outputs: list) -> list[dict]:
    """The run's outputs and the inputs that started their chains (their correlation ids), as
    wire JSON dicts."""
    out = [e.model_dump(mode="json", exclude_none=True) for e in outputs]  # the wire JSON, as dicts
    roots = {e.get("correlation_id") for e in out} - {None}
    started = [_as_dict(ev) for ev in inputs if str(ev.event_id) in roots]
    return started + out


def run_sync(coro):
    """Run ``coro`` to completion and return its value, also from inside a running event loop
    (Jupyter): then in a thread of its own.

    The value is passed back outside the loop's main task: when ``asyncio.run`` (Python 3.12)
    restores its SIGINT handler, ``signal`` formats the handler's repr, which holds the main task
    and so the repr of its result; for a backtest's result that costs as much as the run."""
    box: dict = {}

    async def main():
        box["value"] = await coro

    def target():
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return box["value"]
    t = threading.Thread(target=target, name="backtest")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class BacktestResult:
    """A run as pandas objects: ``metrics`` (Series), ``benchmark`` (Series, buy and hold),
    ``trades`` (round trips, DataFrame), ``fills`` (DataFrame), ``equity`` (Series of USD at each
    bar close, UTC DatetimeIndex), ``report`` (the JSON report) and ``result``."""

    result: Result

    @property
    def report(self) -> dict:
        return self.result.report()

    @property
    def metrics(self):
        import pandas as pd

        return pd.Series(self.result.performance.to_dict(), name=self.result.run_id)

    @property
    def benchmark(self):
        import pandas as pd

        return pd.Series({k: v for k, v in self.result.benchmark.items() if k != "curve"})

    @property
    def trades(self):
        import pandas as pd

        cols = ["token", "side", "size", "entry_ms", "exit_ms", "entry_price", "exit_price", "pnl_usd", "return_pct"]
        df = pd.DataFrame([t.to_dict() for t in self.result.trades], columns=cols)
        df["entry_time"] = pd.to_datetime(df["entry_ms"], unit="ms", utc=True)
        df["exit_time"] = pd.to_datetime(df["exit_ms"], unit="ms", utc=True)
        return df

    @property
    def fills(self):
        import pandas as pd

        df = pd.DataFrame(self.result.fills)
        if not df.empty:
            df["time"] = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
        return df

    @property
    def equity(self):
        import pandas as pd

        t, e = zip(*self.result.curve) if self.result.curve else ((), ())
        return pd.Series(e, index=pd.to_datetime(list(t), unit="ms", utc=True), name="equity_usd")

    def write(self, out_dir) -> dict:
        """Write the reports (:func:`backtest.report.write_reports`) into ``out_dir``."""
        from backtest.report import write_reports

        return write_reports(self.result, Path(out_dir))


def run_backtest(data, rules: str = "default", params: Mapping[str, Any] | None = None, *, token: str | None = None,
                 engine: str = "inprocess", agents: Sequence[str] = ("trading.rules",), balance: float = 100_000.0,
                 bar_seconds: float | None = None, speed: float | None = None, **settings) -> BacktestResult:
    """Backtest ``rules`` with ``params`` on ``data`` (see :func:`load`); ``settings``: any
    setting (``fee_bps=4.5``, ``slippage_bps=0``, ``position_fraction=0.1``, ...).

    ``bar_seconds`` defaults to the candle interval for candles, 60 s for trades. Works inside a
    running event loop (Jupyter). Raises :class:`BacktestError` for bad data or arguments.
    """
    d = load(data, token)
    bar = bar_seconds or ((d.candle_ms or 60_000) / 1000.0)
    s = backtest_settings(agents=agents, balance=balance, bar_seconds=bar, rules=rules, params=params or {},
                          **settings)
    return BacktestResult(run_sync(arun(d, s, engine=engine, speed=speed, agents=agents)))


# ------------------------------------------------------------------ sweeps
def parse_grid(specs: Sequence[str]) -> dict[str, list]:
    """``["fast=5:50:5", "slow=20,50,100"]`` → {"fast": [5, 10, ..., 50], "slow": [20, 50, 100]}.
    ``start:stop:step`` includes ``stop`` when the steps land on it; numbers stay ints when all
    parts are ints.

    Raises:
        BacktestError: a spec not of the form ``name=start:stop:step`` or ``name=a,b,c``.
    """
    grid: dict[str, list] = {}

    def num(x: str):
        try:
            return int(x)
        except ValueError:
            return float(x)

    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            if ":" in values:
                start, stop, step = (num(v) for v in values.split(":"))
                if step <= 0 or stop < start:
                    raise ValueError
                n = int((stop - start) / step + 1e-9) + 1
                vals = [start + i * step for i in range(n)]
                vals = [round(v, 12) if isinstance(v, float) else v for v in vals]
            else:
                vals = [num(v) for v in values.split(",") if v.strip()]
            if not vals:
                raise ValueError
        except ValueError:
            raise BacktestError(f"--sweep {spec!r}: expected name=start:stop:step (step > 0) or name=a,b,c") from None
        grid[name] = vals
    return grid


_worker_data: Data | None = None


def _init_worker(data: Data) -> None:
    global _worker_data
    _worker_data = data


def _sweep_one(args) -> dict:
    base, rules, params, agents, balance, bar = args
    row = dict(params)
    try:
        s = backtest_settings(agents=agents, balance=balance, bar_seconds=bar, rules=rules, params=params, **base)
    except BacktestError as exc:
        return row | {"error": str(exc)}
    t0 = time.perf_counter()
    res = run_sync(arun(_worker_data, s, agents=agents))
    return row | res.performance.to_dict() | {
        "buy_and_hold_return_pct": res.benchmark["total_return_pct"], "seconds": time.perf_counter() - t0}


#: metrics where smaller is better
LOWER_IS_BETTER = {"max_drawdown_pct", "max_drawdown_duration_s", "fees_paid"}


def sweep(data, rules: str, grid: Mapping[str, Sequence], *, metric: str = "sharpe", processes: int | None = None,
          token: str | None = None, agents: Sequence[str] = ("trading.rules",), balance: float = 100_000.0,
          bar_seconds: float | None = None, progress: bool | Callable[[int], None] = True, base_params=None,
          **settings):
    """Run every combination of ``grid`` (parameter name -> values) over ``data`` with the
    in-process engine in ``processes`` worker processes (default: the CPU count) and return a
    DataFrame with one row per combination (parameters, metrics), best ``metric`` first.
    Combinations the rule set refuses (e.g. fast ≥ slow) get an ``error`` and no metrics."""
    import concurrent.futures as cf
    import multiprocessing as mp

    import pandas as pd
    from tqdm import tqdm

    d = load(data, token)
    bar = bar_seconds or ((d.candle_ms or 60_000) / 1000.0)
    rs = resolve(rules, base_params or {})[0]
    unknown = set(grid) - set(rs.params.model_fields)
    if unknown:
        raise BacktestError(f"rule set {rules!r} has no parameter {', '.join(sorted(unknown))}; "
                            f"it has {', '.join(rs.params.model_fields)}")
    names = list(grid)
    combos = [dict(base_params or {}, **dict(zip(names, values))) for values in itertools.product(*grid.values())]
    jobs = [(settings, rules, p, tuple(agents), balance, bar) for p in combos]
    rows: list[dict] = []
    workers = max(1, min(processes or os.cpu_count() or 1, len(jobs)))
    bar_ = tqdm(total=len(jobs), unit="run", desc="sweep") if progress is True else None
    # spawn: the caller may be a Faust command with an event loop and threads, which fork would copy
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                initargs=(d,)) as pool:
        for row in pool.map(_sweep_one, jobs, chunksize=max(1, len(jobs) // (workers * 4))):
            rows.append(row)
            if bar_ is not None:
                bar_.update(1)
            elif callable(progress):
                progress(1)
    if bar_ is not None:
        bar_.close()
    df = pd.DataFrame(rows)
    if metric in df.columns:
        df = df.sort_values(metric, ascending=metric in LOWER_IS_BETTER, na_position="last", kind="stable")
    df.attrs.update(rules=rules, metric=metric, data=d.source, sha256=d.sha256, grid={k: list(v) for k, v in grid.items()},
                    settings=result_settings(backtest_settings(agents=agents, balance=balance, bar_seconds=bar,
                                                               rules=rules, params=base_params or {}, **settings)))
    return df.reset_index(drop=True)


def write_sweep(df, out_dir: Path) -> dict[str, Path]:
    """``sweep.csv``, ``sweep.json`` (rows and the sweep's settings) and, for two parameters, a
    self-contained ``heatmap.html`` of the ranking metric."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "sweep.csv", "json": out_dir / "sweep.json"}
    df.to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps({**df.attrs, "rows": json.loads(df.to_json(orient="records"))}, indent=2,
                                        default=str))
    grid = df.attrs.get("grid") or {}
    metric = df.attrs.get("metric")
    if len(grid) == 2 and metric in df.columns:
        import plotly.graph_objects as go

        x, y = list(grid)
        pivot = df.pivot_table(index=y, columns=x, values=metric, aggfunc="first")
        fig = go.Figure(go.Heatmap(z=pivot.values, x=list(pivot.columns), y=list(pivot.index), colorbar=dict(title=metric)))
        fig.update_layout(title=f"{df.attrs.get('rules')}: {metric} by {x} and {y} ({df.attrs.get('data')})",
                          xaxis_title=x, yaxis_title=y)
        paths["heatmap"] = out_dir / "heatmap.html"
        fig.write_html(str(paths["heatmap"]), include_plotlyjs=True, full_html=True)
    return paths
