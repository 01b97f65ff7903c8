"""Processors without Faust: each built from its config over plain dicts, fed events, answering
events. No broker, no Faust test context, no module state to reset."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from domain.orders import client_order_id
from exchanges.paper import PaperExchange
from feeds.files import read_ticks
from models.events import ConsensusDecision, PriceTick, RiskEvent, SignalGenerated, new_event_id
from processors.base import ExposureView, WriteBehind
from processors.consensus import ConsensusConfig, ConsensusProcessor, ConsensusState
from processors.execution import ExecutionConfig, ExecutionProcessor, ExecutionState
from processors.portfolio import PortfolioConfig, PortfolioProcessor
from processors.risk import HaltProcessor, RiskConfig, RiskProcessor, RiskState
from processors.trading import CLOSED, DROP, HOLD, TradingConfig, TradingProcessor, TradingState

T0 = 1_723_161_280_000
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_importing_processors_domain_models_and_adapters_loads_no_faust_and_reads_no_settings():
    code = ("import sys, domain, models, processors, processors.trading, processors.risk, processors.consensus, "
            "processors.execution, processors.portfolio, processors.sentiment, processors.correlation, "
            "processors.llm, feeds.live, feeds.exchanges, feeds.files, exchanges.paper, exchanges.hyperliquid, "
            "notify.discord, store.eventstore, core.settings, core.sla, backtest.engine, backtest.api; "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('faust', 'mode', 'app', 'streams', 'tables'))))")
    # A broken environment variable would make reading the settings fail: nothing here may read them.
    env = {"PATH": "/usr/bin:/bin", "MAX_LEVERAGE": "not a number", "KAFKA_BROKER": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == []


def trading(rules="sma_cross", params=None, halt=None, **cfg) -> TradingProcessor:
    state = TradingState(bars={}, indicators={}, correlations={}, halt=halt if halt is not None else {})
    return TradingProcessor(TradingConfig(bar_ms=1000, rules=rules, params=params or {"fast": 3, "slow": 5}, **cfg),
                            state)


def tick(ts, price, token="BTC", size=1.0):
    return PriceTick(event_id=new_event_id(), timestamp=ts, token=token, source="t", price=price, size=size)


def test_trading_processor_bars_verdicts_and_a_cross_signal():
    p = trading()
    prices = [100, 99, 98, 97, 96, 95, 96, 98, 101, 104, 108]
    verdicts, signals = [], []
    for i, px in enumerate(prices):
        out, v = p.on_tick(tick(T0 + i * 1000, px))
        verdicts.append(v)
        signals += [e for e in out if e.event_type == "signal.generated"]
        if i == 3:
            assert p.on_tick(tick(T0 + 500, 1.0))[1] == DROP  # a tick of a bar already closed: late
    assert verdicts[0] == HOLD and set(verdicts[1:]) == {CLOSED}
    (sig,) = signals  # SMA(3) crosses above SMA(5) once
    assert sig.action == "BUY" and sig.score == 100 and sig.timestamp % 1000 == 0
    assert p.state.bars["BTC"]["ind"]["n"] == len(prices) - 1 and p.late == 1
    assert p.state.indicators["BTC"]["values"]["sma_3"] is not None


def test_trading_processor_suppresses_signals_while_halted_and_forgets_revoked_open_bars():
    halt = {"paper": {"halted": True, "reason": "manual"}}
    p = trading(halt=halt)
    for i, px in enumerate([100, 99, 98, 97, 96, 95, 96, 98, 101, 104, 108]):
        assert not [e for e in p.on_tick(tick(T0 + i * 1000, px), partition=("price.ticks", 3))[0]
                    if e.event_type == "signal.generated"]
    assert p.suppressed == 1
    p.on_revoked({("price.ticks", 3)})
    assert p.state.open == {}


def test_write_behind_reads_its_held_writes_and_flushes_them():
    table = {"BTC": {"n": 1}, "ETH": {"n": 2}}
    store = WriteBehind(table)
    store["BTC"] = {"n": 3}
    store["SOL"] = {"n": 4}
    del store["ETH"]
    assert store["BTC"] == {"n": 3} and store.get("ETH") is None and "ETH" not in store and "SOL" in store
    assert dict(store.items()) == {"BTC": {"n": 3}, "SOL": {"n": 4}} and len(store) == 2
    assert table == {"BTC": {"n": 1}, "ETH": {"n": 2}}  # nothing written yet
    with pytest.raises(KeyError):
        store["ETH"]
    store.flush()
    assert table == {"BTC": {"n": 3}, "SOL": {"n": 4}} and store.pending == {}


def test_a_bar_close_whose_writes_were_held_replays_into_the_same_signal():
    """A worker killed after a bar close's state writes but before its signal reached Kafka: with
    the writes made at once, the replayed bar is skipped as closed and the signal is lost; with
    them held until the signal is acknowledged (WriteBehind, never flushed here), the replay
    closes the bar again and sends the same signal, same id."""
    prices = [100, 99, 98, 97, 96, 95, 96, 98, 101, 104, 108]
    ticks = [tick(T0 + i * 1000, px) for i, px in enumerate(prices)]

    class Table(dict):
        """Values kept serialized, as a worker's RocksDB table keeps them: a read is a copy."""

        def __setitem__(self, key, value):
            super().__setitem__(key, json.dumps(value))

        def __getitem__(self, key):
            return json.loads(super().__getitem__(key))

        def get(self, key, default=None):
            return self[key] if key in self else default

    def run(held: bool):
        bars, indicators = Table(), Table()
        state = lambda: TradingState(bars=WriteBehind(bars) if held else bars,  # noqa: E731
                                     indicators=WriteBehind(indicators) if held else indicators,
                                     correlations={}, halt={})
        cfg = TradingConfig(bar_ms=1000, rules="sma_cross", params={"fast": 3, "slow": 5})
        p = TradingProcessor(cfg, state())
        for i, t in enumerate(ticks):
            out, verdict = p.on_tick(t)
            sent = [e for e in out if e.event_type == "signal.generated"]
            if sent:
                break  # killed: the signal still in the producer's buffer
            for store in (p.state.bars, p.state.indicators):
                if held:
                    store.flush()  # acknowledged: this step's writes go through
        # restarted on what the stores hold; the committed offset is the closed bar's first tick
        again = TradingProcessor(cfg, state())
        replayed = [e for t in ticks[i - 1:] for e in again.on_tick(t)[0] if e.event_type == "signal.generated"]
        return sent, replayed

    sent, replayed = run(held=False)
    assert sent and replayed == []  # the signal lost for good
    sent, replayed = run(held=True)
    assert [e.event_id for e in replayed] == [sent[0].event_id] and replayed[0].action == sent[0].action


def test_rule_parameters_are_validated():
    from domain.signals import ParamError

    with pytest.raises(ParamError, match="must be below"):
        trading(params={"fast": 10, "slow": 5})
    with pytest.raises(ParamError, match="Extra inputs"):
        trading(params={"fats": 10})


def sig(ts, token="BTC", agent="trading.rules", action="BUY", score=90.0):
    return SignalGenerated(event_id=new_event_id(), timestamp=ts, token=token, source=agent, action=action,
                           score=score, confidence=1.0, agent=agent, price=100.0)


def test_consensus_processor_closes_windows_by_partition_stream_time():
    p = ConsensusProcessor(ConsensusConfig(min_agents=2, weights={"sentiment": 0.8}), ConsensusState({}))
    assert p.process(sig(T0, "ETH"), 1) == []
    out = p.process(sig(T0 + 1000), 1) + p.process(sig(T0 + 2000, agent="sentiment"), 1)
    assert [d.event_type for d in out] == ["trade.consensus_approved"]
    # stream time of partition 1 passes ETH's window: it fails; partition 2 does not move it
    assert p.process(sig(T0 + 9000, "SOL"), 2) == []
    (failed,) = p.process(sig(T0 + 9000, "XRP"), 1)
    assert failed.event_type == "signal.consensus_failed" and failed.token == "ETH"


def test_consensus_processor_drops_a_second_copy_of_a_signal_silently():
    """A worker takes its tick step's signals at once and reads their copies from Kafka later: the
    copy changes nothing and is not counted late, even once its window has closed."""
    p = ConsensusProcessor(ConsensusConfig(min_agents=2), ConsensusState({}))
    first, second = sig(T0), sig(T0 + 1000, agent="orderflow")
    (approved,) = p.process(first, 0) + p.process(second, 0)
    assert approved.event_type == "trade.consensus_approved"
    assert p.process(sig(T0 + 9000, "ETH"), 0) == []  # stream time closes BTC's window
    windows = json.dumps(p.state.windows, sort_keys=True)
    assert p.process(first, 0) == [] and p.process(second, 0) == []
    assert p.late == 0 and json.dumps(p.state.windows, sort_keys=True) == windows
    # one it no longer remembers is a late signal, as any signal before a closed window
    p.state.recent.clear()
    assert p.process(first, 0) == [] and p.late == 1

def engine_and_portfolio(**portfolio_config):
    """An execution engine on a paper exchange without slippage and a portfolio processor, over
    one set of plain dicts: ``(stores, engine, portfolio)``."""
    stores = {k: {} for k in ("execution_state", "portfolio", "halt", "latest_prices", "exposures")}
    exposures = ExposureView(stores["exposures"])
    ex = ExecutionProcessor(ExecutionConfig(), ExecutionState(stores["execution_state"], stores["portfolio"],
                                                              stores["halt"], stores["latest_prices"]),
                            PaperExchange(slippage_bps=0.0))
    pf = PortfolioProcessor(PortfolioConfig(**portfolio_config), stores["portfolio"], exposures,
                            stores["latest_prices"], stores["execution_state"], stores["halt"])
    return stores, ex, pf


async def test_execution_and_portfolio_processors_place_fill_and_account_once():
    stores, ex, pf = engine_and_portfolio()
    d = ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0, token="BTC",
                          source="consensus", consensus_score=85, contributing_agents=["trading.rules"],
                          recommended_action="BUY", window_start=T0, window_end=T0 + 5000, price=50_000.0)
    out = await ex.process(d, account="paper")
    assert [e.event_type for e in out] == ["trade.placed", "trade.executed"]
    assert out[0].client_order_id == client_order_id("paper", d.event_id)
    # the same decision again: no second order, the first one's outcome sent again, ids included
    assert await ex.process(d, account="paper") == out
    assert len(ex.state.execution_state["paper"]["submitted"]) == 1
    fill = out[1]
    states = pf.process(fill) + pf.process(fill)  # a redelivered fill is applied once
    assert [e.event_type for e in states] == ["state.changed"]
    assert stores["portfolio"]["paper"]["positions"]["BTC"]["size"] == pytest.approx(0.2)  # 10 % of 100k at 50k
    assert pf.exposures.items()[0][0] == "paper"


async def test_a_redelivered_approval_gets_the_answer_it_had_even_after_the_position_turned():
    """A kill -9 run traded where the run without kills did not: a SELL approval found the account
    short (no order), a BUY approval then turned it long, and the worker, killed, replayed its
    input from before the SELL, which now found it long and sold. Every approval is answered once:
    no order, or a denial, is an answer a redelivery gets again."""
    stores, ex, pf = engine_and_portfolio()

    def approval(dt: int, action: str) -> ConsensusDecision:
        return ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0 + dt,
                                 token="BTC", source="consensus", consensus_score=85 if action == "BUY" else -85,
                                 contributing_agents=["a", "b"], recommended_action=action, window_start=T0 + dt,
                                 window_end=T0 + dt + 5000, price=50_000.0)

    async def handle(d: ConsensusDecision) -> list:
        out = await ex.process(d, account="paper")
        for e in out:
            if e.event_type == "trade.executed":
                pf.process(e)
        return out

    def size() -> float:
        return stores["portfolio"]["paper"]["positions"].get("BTC", {}).get("size", 0.0)

    assert [e.event_type for e in await handle(approval(0, "SELL"))] == ["trade.placed", "trade.executed"]
    sell_again = approval(10_000, "SELL")
    assert await handle(sell_again) == []  # already short: no order
    assert [e.event_type for e in await handle(approval(20_000, "BUY"))] == ["trade.placed", "trade.executed"]
    long = size()
    assert long > 0
    assert await handle(sell_again) == [], "redelivered, it answers as it did when the account was short"
    assert size() == long and stores["portfolio"]["paper"]["fills"] == 2

    # a denial is an answer too: lifting the halt does not turn its redelivery into an order
    stores["halt"]["paper"] = {"halted": True, "reason": "manual: test"}
    denied = approval(30_000, "SELL")
    first = await handle(denied)
    assert [e.event_type for e in first] == ["risk.constraint_violation", "trade.rejected"]
    stores["halt"].clear()
    assert await handle(denied) == first
    assert size() == long
    assert stores["execution_state"]["paper"]["answered"] == [client_order_id("paper", sell_again.event_id),
                                                              client_order_id("paper", denied.event_id)]


async def test_a_redelivered_force_close_gets_the_answer_it_had_not_a_close_of_later_positions():
    """A close-all is answered once, under its own id: redelivered after a new position opened
    (a worker killed before its offset was committed, so a new engine over the same stores), it
    sends its first answer again and closes nothing opened after it. A token's force-close that
    found the position flat is remembered too. A second copy to the same engine (the tick step
    ran it, then the engine read it back from ``orders``) is dropped."""
    from models.events import OrderEvent

    stores, ex, pf = engine_and_portfolio()
    engines = [ex]

    async def handle(e) -> list:
        out = await engines[-1].process(e, account="paper")
        for f in out:
            if f.event_type == "trade.executed":
                pf.process(f)
        return out

    def buy(dt: int) -> ConsensusDecision:
        return ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0 + dt,
                                 token="BTC", source="consensus", consensus_score=85, contributing_agents=["a", "b"],
                                 recommended_action="BUY", window_start=T0 + dt, window_end=T0 + dt + 5000,
                                 price=50_000.0)

    def close(dt: int, token: str | None, cloid: str) -> OrderEvent:
        return OrderEvent(event_id=uuid.uuid4(), event_type="trade.force_close", timestamp=T0 + dt, account="paper",
                          source="web.control", token=token, client_order_id=cloid, side="SELL", size=0.0,
                          reduce_only=True)

    def size() -> float:
        return stores["portfolio"]["paper"]["positions"].get("BTC", {}).get("size", 0.0)

    assert [e.event_type for e in await handle(buy(0))] == ["trade.placed", "trade.executed"]
    close_all = close(10_000, None, "0xclose-all-1")
    first = await handle(close_all)
    assert [e.event_type for e in first] == ["trade.placed", "trade.executed"] and size() == 0.0
    assert [e.event_type for e in await handle(buy(20_000))] == ["trade.placed", "trade.executed"]
    reopened = size()
    assert reopened > 0
    assert await handle(close_all) == [], "the same engine's second copy: dropped"
    engines.append(ExecutionProcessor(ExecutionConfig(), ExecutionState(
        stores["execution_state"], stores["portfolio"], stores["halt"], stores["latest_prices"]),
        PaperExchange(slippage_bps=0.0)))  # a restarted worker
    assert await handle(close_all) == first, "redelivered, it answers as it did, ids included"
    assert size() == reopened and stores["portfolio"]["paper"]["fills"] == 3

    flat_eth = close(30_000, "ETH", "0xclose-eth-1")
    assert await handle(flat_eth) == []
    assert "0xclose-eth-1" in stores["execution_state"]["paper"]["answered"]


async def test_portfolio_snapshots_on_event_time_carry_what_a_rebuild_needs():
    """The first fill and the first one SNAPSHOT_SECONDS of event time after the last snapshot are
    followed by a state.snapshot: the portfolio store's value, the submitted order ids, the halt
    flag."""
    stores, ex, pf = engine_and_portfolio(snapshot_ms=60_000)
    kinds = []
    for i, (dt, action) in enumerate([(0, "BUY"), (30_000, "SELL"), (61_000, "BUY")]):
        d = ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0 + dt,
                              token="BTC", source="consensus", consensus_score=85, contributing_agents=["a", "b"],
                              recommended_action=action, window_start=T0 + dt, window_end=T0 + dt + 5000,
                              price=50_000.0)
        fill = (await ex.process(d, account="paper"))[-1]
        out = pf.process(fill)
        kinds.append([e.event_type for e in out if e.event_type.startswith("state.")])
        if out[-1].event_type == "state.snapshot":
            snap = out[-1].snapshot
            assert snap["portfolio"] == stores["portfolio"]["paper"]
            assert snap["submitted"] == stores["execution_state"]["paper"]["submitted"]
            assert snap["portfolio"]["snapshot_ms"] == fill.timestamp
    assert kinds == [["state.changed", "state.snapshot"], ["state.changed"], ["state.changed", "state.snapshot"]]


def test_risk_processor_force_closes_once_and_halt_processor_keeps_the_flag():
    exposures = ExposureView({})
    exposures.set("acct", {"cash": -400_000.0, "positions": {"BTC": {"size": 10.0, "entry_price": 50_000.0,
                                                                      "opened_ms": T0}}})
    risk = RiskProcessor(RiskConfig(), RiskState({}, exposures))
    halt = HaltProcessor({})
    events = []
    for i, px in enumerate([50_000.0, 46_000.0, 45_000.0, 44_900.0]):
        events += risk.process(tick(T0 + (i + 1) * 1000, px))
    kinds = [e.event_type for e in events]
    assert kinds.count("risk.critical") == 1 and kinds.count("trade.force_close") == 1
    lev = next(e for e in events if e.event_type == "risk.alert" and e.violation_type == "max_leverage")
    assert halt.apply(lev) and halt.halt["acct"]["halted"]
    ok = RiskEvent(event_id=new_event_id(), event_type="risk.ok", severity="INFO", timestamp=T0 + 9000, source="t",
                   account="acct")
    assert halt.apply(ok) and not halt.halt["acct"]["halted"]


def test_processors_give_the_same_events_for_the_same_input_in_two_runs(sample_path):
    """Event time throughout: two runs over the same real ticks answer identical events (ids
    included)."""
    rows = [r for r in read_ticks(sample_path) if r.token == "ETH"][:4000]
    ticks = [PriceTick(event_id=uuid.uuid5(uuid.NAMESPACE_URL, str(i)), timestamp=r.ts_ms, token="ETH", source="t",
                       price=r.price, size=r.size) for i, r in enumerate(rows)]

    def run():
        p = trading(rules="default", params={})
        return [e.model_dump() for t in ticks for e in p.process(t)]

    first = run()
    assert first and first == run()


START = {"BTC": 50_000.0, "ETH": 2_500.0}


def _leveraged_risk(rng, tokens) -> RiskProcessor:
    """A risk processor over one account holding each token (entered at ``START``) at a random
    leverage of 1 to 17 per position, long or short."""
    exposures = ExposureView({})
    sizes = {tok: rng.choice([1.0, 5.0, 6.0, 6.5, 17.0]) * rng.choice([1, -1]) * 50_000.0 / START[tok]
             for tok in tokens}
    exposures.set("a", {"cash": 100_000.0 - sum(sz * START[tok] for tok, sz in sizes.items()),
                        "positions": {tok: {"size": sz, "entry_price": START[tok], "opened_ms": T0}
                                      for tok, sz in sizes.items()}})
    return RiskProcessor(RiskConfig(), RiskState({}, exposures))


@pytest.mark.parametrize("tokens", [("BTC",), ("BTC", "ETH")])
def test_risk_processor_shortcut_answers_as_the_full_evaluation(tokens):
    """The shortcut (no report built while nothing is due) gives exactly the events of the full
    evaluation, over random walks that cross the leverage, price-move and liquidation thresholds,
    long and short, for accounts with one position and with two (ticks of either token)."""
    import random

    rng = random.Random(7)
    start = START

    def run(shortcut: bool) -> list:
        out = []
        for walk in range(40):
            risk = _leveraged_risk(rng, tokens)
            if not shortcut:
                risk._quiet = lambda *a: False
            px = dict(start)
            for i in range(300):
                tok = rng.choice(tokens)
                px[tok] *= 1 + rng.gauss(0, 0.004)
                t = PriceTick(event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{walk}:{i}"), timestamp=T0 + i * 1000,
                              token=tok, source="t", price=px[tok])
                out += [e.model_dump() for e in risk.process(t)]
        return out

    rng.seed(7)
    fast = run(True)
    rng.seed(7)
    full = run(False)
    kinds = {e["event_type"] for e in full} | {e.get("violation_type") for e in full}
    assert {"risk.alert", "risk.ok", "risk.critical", "max_leverage", "price_move"} <= kinds
    assert fast == full


@pytest.mark.parametrize("tokens", [("BTC",), ("BTC", "ETH")])
def test_risk_quiet_runs_stop_at_the_first_tick_that_emits(tokens):
    """``quiet_run`` over arrays finds the first tick on which ``on_tick`` would emit anything, and
    ``skip_run`` leaves the state ``on_tick`` would: the engine's way (skip the quiet run, process
    the next tick, repeat) answers the events of the tick-by-tick loop, over random walks through
    the leverage, price-move and liquidation thresholds."""
    import random

    import numpy as np

    rng = random.Random(11)
    names = sorted(tokens)

    skipped = [0]

    def run(runs: bool) -> list:
        out = []
        for walk in range(30):
            risk = _leveraged_risk(rng, tokens)
            px = dict(START)
            ticks = []
            for i in range(400):
                tok = rng.choice(tokens)
                px[tok] *= 1 + rng.gauss(0, 0.004)
                ticks.append(PriceTick(event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{walk}:{i}"),
                                       timestamp=T0 + i * 150, token=tok, source="t", price=px[tok]))
            ts = np.array([t.timestamp for t in ticks], dtype=np.int64)
            prices = np.array([t.price for t in ticks])
            codes = np.array([names.index(t.token) for t in ticks], dtype=np.int64)
            i = 0
            while i < len(ticks):
                if runs:
                    q = risk.quiet_run(ts[i:], prices[i:], codes[i:], names)
                    seg = ticks[i:i + q]
                    risk.skip_run([t.timestamp for t in seg], [t.price for t in seg], [0.0] * q, [t.token for t in seg])
                    i += q
                    skipped[0] += q
                    if i >= len(ticks):
                        break
                out += [e.model_dump() for e in risk.process(ticks[i])]
                i += 1
            out.append((dict(risk.state.latest_prices), dict(risk.state.seen)))
        return out

    rng.seed(11)
    fast = run(True)
    rng.seed(11)
    slow = run(False)
    kinds = {e["event_type"] for e in slow if isinstance(e, dict)}
    assert {"risk.alert", "risk.critical", "trade.force_close"} <= kinds
    assert fast == slow
    assert skipped[0] > 30 * 400 // 2, "most ticks were taken in quiet runs"


def test_risk_quiet_band_holds_only_quiet_prices():
    """Every price strictly inside :meth:`RiskProcessor.quiet_band` is quiet under the exact
    per-tick check, for longs and shorts on borrowed or spare cash, leverage from 0.1 to 20,
    several leverage limits and alert thresholds; and the band is not vacuous."""
    import random

    import numpy as np

    rng = random.Random(17)
    checked = wide = 0
    for case in range(3_000):
        entry = rng.choice([0.05, 2_500.0, 50_000.0]) * rng.uniform(0.5, 2.0)
        equity = rng.uniform(1e3, 1e6)
        size = rng.choice([1, -1]) * rng.uniform(0.1, 20.0) * equity / entry
        exposures = ExposureView({})
        exposures.set("a", {"cash": equity - size * entry,
                            "positions": {"BTC": {"size": size, "entry_price": entry, "opened_ms": T0}}})
        risk = RiskProcessor(RiskConfig(max_leverage=rng.choice([1.5, 3.0, 10.0]),
                                        price_alert_pct=rng.choice([0.5, 5.0, 50.0])),
                             RiskState({}, exposures))
        (account, exp), = exposures.items()
        band = risk.quiet_band(account, exp, "BTC")
        if band is None:
            continue
        lo, hi = band
        if lo >= hi:
            continue
        wide += 1
        near = [lo * (1 + 1e-12), hi * (1 - 1e-12), np.nextafter(lo, np.inf), np.nextafter(hi, -np.inf)]
        for price in near + [rng.uniform(lo, hi) for _ in range(5)]:
            if not lo < price < hi:
                continue
            tick = PriceTick(event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{case}:{price}"), timestamp=T0 + 1000,
                             token="BTC", source="t", price=float(price))
            assert risk._quiet(account, exp, tick), (case, size, exp["cash"], price, band)
            checked += 1
    assert wide > 1_000 and checked > 5_000


@pytest.mark.parametrize("sign", [1, -1])
def test_correlation_processor_boosts_only_a_positive_correlation(sign):
    """Prices that follow sentiment (r > 0.7) make an active correlation with an implied trade;
    prices that move against it (r < -0.7) are reported as a negative correlation with no trade
    and nothing active for the trading processor to boost with."""
    import numpy as np

    from models.events import PriceMinute, SentimentUpdate
    from processors.correlation import CorrelationConfig, CorrelationProcessor

    t0 = T0 - T0 % 60_000  # minute closes are on minute boundaries
    rng = np.random.default_rng(3)
    correlations: dict = {}
    proc = CorrelationProcessor(CorrelationConfig(0.7, 20), {}, correlations)
    price, dets = 60_000.0, []
    dets += proc.process(PriceMinute(event_id=new_event_id(), timestamp=t0 - 60_000, token="BTC", source="t", close=price))
    for m in range(40):
        minute = t0 + m * 60_000
        share = float(rng.uniform(30, 90))
        dets += proc.process(SentimentUpdate(event_id=new_event_id(), timestamp=minute + 5_000, token="BTC", source="t",
                                             bullish_pct=share, confidence=0.9, followers=1000))
        price *= 1 + sign * (share - 50) * 2e-5 + float(rng.normal(0, 1e-4))
        dets += proc.process(PriceMinute(event_id=new_event_id(), timestamp=minute, token="BTC", source="t", close=price))
    assert dets
    if sign > 0:
        assert all(d.coefficient > 0.7 and d.direction == "positive" and d.action in ("BUY", "SELL") for d in dets)
        assert correlations["BTC"]["active"]
    else:
        assert all(d.coefficient < -0.7 and d.direction == "negative" and d.action is None for d in dets)
        assert not correlations["BTC"]["active"] and correlations["BTC"]["direction"] == "negative"


def test_store_snapshot_reads_a_copy_until_invalidated():
    from processors.base import StoreSnapshot

    store = {b"paper": {"halted": True}}
    snap = StoreSnapshot(store)
    assert dict(snap) == {"paper": {"halted": True}} and snap.get("other") is None and len(snap) == 1
    store["acct"] = {"halted": False}
    assert "acct" not in snap, "a copy: writes to the store are not seen until invalidated"
    snap.invalidate()
    assert sorted(snap) == ["acct", "paper"] and snap["acct"] == {"halted": False}
