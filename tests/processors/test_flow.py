"""The order-flow and whale agents: the domain formulas, the processors over dicts, the consensus
confidence bound, and both agents voting beside the rules on real trades (the bundled sample and
recordings the sample does not contain)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path

import pytest

from backtest import api
from backtest.engine import InProcessEngine, Tick
from core.settings import Settings
from domain import consensus as cs
from domain.orderflow import Flow, imbalance, significance, vote
from feeds.files import read_ticks
from models.events import SignalGenerated, derived_id, new_event_id
from processors.consensus import ConsensusConfig, ConsensusProcessor, ConsensusState
from processors.flow import OrderFlowConfig, OrderFlowProcessor, WhaleConfig, WhaleProcessor

T0 = 1_723_161_280_000  # a bar boundary for 1 s and 60 s bars
SHARED_TRADES = Path(__file__).resolve().parents[3] / "shared" / "data" / "binance" / "trades.csv.gz"


# ------------------------------------------------------------------ domain
def test_imbalance_and_volume_delta():
    f = Flow()
    f.add("BUY", 300.0)
    f.add("SELL", 100.0)
    assert (f.buy, f.sell, f.delta, f.trades) == (300.0, 100.0, 200.0, 2)
    assert imbalance(f) == pytest.approx(0.5)
    assert imbalance(Flow()) == 0.0


def test_significance_is_the_normal_level_of_the_coin_flip_null():
    one = Flow()
    one.add("BUY", 1e6)  # one trade, however large: z = 1
    assert significance(one) == pytest.approx(math.erf(1 / math.sqrt(2)))  # 0.6827
    many = Flow()
    for _ in range(16):
        many.add("BUY", 10.0)  # 16 equal buys: z = 4
    assert significance(many) == pytest.approx(math.erf(4 / math.sqrt(2)))
    balanced = Flow()
    balanced.add("BUY", 5.0)
    balanced.add("SELL", 5.0)
    assert significance(balanced) == 0.0 and significance(Flow()) == 0.0


def test_vote_scores_the_imbalance_against_the_full_one():
    f = Flow(buy=100.0, sell=300.0, sq=100.0**2 + 300.0**2, trades=2)  # imbalance -0.5
    v = vote(f, full_imbalance=0.5)
    assert (v.action, v.score) == ("SELL", 100.0)
    assert vote(f, full_imbalance=1.0).score == 50.0
    assert vote(f, min_notional=401.0) is None
    assert vote(Flow(buy=1.0, sell=1.0, sq=2.0, trades=2)) is None
    with pytest.raises(ValueError):
        vote(f, full_imbalance=0.0)


def test_decision_confidence_is_confidence_weighted_and_bounds_a_lone_weak_signal():
    sigs = [{"agent": "a", "action": "BUY", "score": 100, "confidence": 0.9},
            {"agent": "b", "action": "BUY", "score": 100, "confidence": 0.3}]
    assert cs.confidence(sigs, {}) == pytest.approx((0.81 + 0.09) / 1.2)
    assert cs.confidence(sigs, {"b": 0.0}) == pytest.approx(0.9)  # a switched-off agent counts for nothing
    state = cs.new_state()
    weak = {"ts": T0, "agent": "a", "action": "BUY", "score": 100.0, "confidence": 0.3}
    decisions, accepted = cs.add(state, "1", weak, 5000, {}, 70.0, 1, min_confidence=0.5)
    assert accepted and decisions == []  # ±100 alone, but not confident enough
    strong = {"ts": T0 + 1, "agent": "b", "action": "BUY", "score": 100.0, "confidence": 0.9}
    decisions, _ = cs.add(state, "2", strong, 5000, {}, 70.0, 1, min_confidence=0.5)
    assert [k for k, _ in decisions] == ["approved"]


# ------------------------------------------------------------------ processors
class T:
    """A tick as the processors read it."""

    def __init__(self, ts, price, size, side, token="BTC"):
        self.token, self.timestamp, self.price, self.size, self.side = token, ts, price, size, side
        self.event_id, self.correlation_id, self.ingest_ms, self.trade_id = new_event_id(), None, None, None


def _orderflow(store=None, halt=None, **kw):
    return OrderFlowProcessor(OrderFlowConfig(bar_ms=1000, window_bars=3, full_imbalance=0.5, min_score=40, **kw),
                              {} if store is None else store, halt or {})


def test_orderflow_votes_at_bar_close_on_the_windows_flow():
    p = _orderflow()
    assert p.on_tick(T(T0 + 10, 100.0, 3.0, "BUY")) == []
    assert p.on_tick(T(T0 + 20, 101.0, 1.0, "SELL")) == []
    assert p.on_tick(T(T0 + 30, 102.0, 5.0, None)) == []  # no aggressor: not counted
    out = p.on_tick(T(T0 + 1500, 103.0, 1.0, "SELL"))  # closes the first bar
    [sig] = out
    assert isinstance(sig, SignalGenerated) and sig.agent == "orderflow"
    assert (sig.timestamp, sig.action, sig.price) == (T0 + 1000, "BUY", 102.0)
    # buy 300, sell 101: imbalance 0.4963 -> score 99.3
    assert sig.score == pytest.approx(100 * (300 - 101) / 401 / 0.5, abs=1e-3)
    assert sig.indicators["volume_delta"] == pytest.approx(199.0)
    assert sig.event_id == derived_id("signal", "orderflow", "BTC", T0)


def test_orderflow_window_keeps_the_last_bars_and_cvd_accumulates():
    store = {}
    p = _orderflow(store)
    for k in range(5):  # five bars of one 10-USD buy each
        p.on_tick(T(T0 + k * 1000, 10.0, 1.0, "BUY"))
    p.on_tick(T(T0 + 5000, 10.0, 1.0, "SELL"))
    assert [b[0] for b in store["BTC"]["bars"]] == [T0 + 2000, T0 + 3000, T0 + 4000]  # 3 bars
    assert store["BTC"]["cvd"] == pytest.approx(50.0)


def test_orderflow_replay_after_restart_and_late_ticks_add_nothing():
    store = {}
    ticks = [T(T0 + 100, 10.0, 1.0, "BUY"), T(T0 + 1100, 10.0, 1.0, "BUY"), T(T0 + 2100, 10.0, 1.0, "SELL")]
    p = _orderflow(store)
    first = [e for t in ticks for e in p.on_tick(t)]
    assert len(first) == 2
    assert p.on_tick(T(T0 + 500, 10.0, 1.0, "SELL")) == [] and p.late == 1  # a bar already closed
    again = _orderflow(store)  # a restarted worker replays from the last committed tick
    assert [e for t in ticks for e in again.on_tick(t)] == [] and again.late == 2
    assert store["BTC"]["cvd"] == pytest.approx(20.0)


def test_no_vote_while_trading_is_halted():
    p = _orderflow(halt={"paper": {"halted": True}})
    p.on_tick(T(T0, 10.0, 1.0, "BUY"))
    assert p.on_tick(T(T0 + 1000, 10.0, 1.0, "BUY")) == [] and p.suppressed == 1


def test_whale_trades_are_reported_and_their_net_flow_votes_over_the_window():
    store = {}
    p = WhaleProcessor(WhaleConfig(bar_ms=1000, notional_usd={"default": 1000.0, "ETH": 5000.0}, window_ms=3000,
                                   min_score=40), store, {})
    big = T(T0 + 10, 100.0, 20.0, "BUY")
    [whale] = p.on_tick(big)
    assert (whale.event_type, whale.side, whale.notional, whale.size) == ("whale.activity", "BUY", 2000.0, 20.0)
    assert whale.event_id == derived_id("whale.activity", big.event_id)
    assert p.on_tick(T(T0 + 20, 100.0, 2.0, "SELL")) == []  # 200 USD: not a whale
    assert p.on_tick(T(T0 + 30, 100.0, 20.0, "SELL", token="ETH")) == []  # ETH's threshold is 5,000
    [sig] = p.on_tick(T(T0 + 1100, 100.0, 1.0, "SELL"))
    assert (sig.agent, sig.action, sig.score, sig.timestamp) == ("whale", "BUY", 100.0, T0 + 1000)
    assert sig.confidence == pytest.approx(math.erf(1 / math.sqrt(2)), abs=1e-4)  # one trade: weak
    [sig, _] = p.on_tick(T(T0 + 2100, 100.0, 60.0, "SELL"))  # the close, then a 6,000 USD whale sell
    assert sig.action == "BUY"  # the bar of the sell is still open: the window has the buy only
    [sig] = p.on_tick(T(T0 + 3100, 100.0, 1.0, "BUY"))
    assert (sig.action, sig.score) == ("SELL", 50.0) and sig.indicators["whale_net_usd"] == pytest.approx(-4000.0)
    p.on_tick(T(T0 + 4100, 100.0, 1.0, "BUY"))  # the buy at T0 leaves the 3 s window
    assert [t[1] for t in store["BTC"]["trades"]] == [-6000.0]


def test_consensus_ignores_a_switched_off_agents_signals():
    p = ConsensusProcessor(ConsensusConfig(min_agents=1, weights={"whale": 0.0}), ConsensusState({}))
    sig = SignalGenerated(event_id=new_event_id(), timestamp=T0, token="BTC", source="whale", action="BUY",
                          score=100, confidence=1.0, agent="whale")
    assert p.process(sig, 0) == [] and p.state.windows == {}


# ------------------------------------------------------------------ on real trades
def _run(path: Path, bar_seconds: float, **settings):
    rows = read_ticks(path)
    s = Settings(_env_file=None, bar_seconds=bar_seconds, **settings)
    engine = InProcessEngine(s, keep_outputs=True, sentiment_input=False)
    ticks = [Tick(r.token, r.ts_ms, r.price, r.size, event_id=r.event_id, side=r.side, trade_id=r.trade_id)
             for r in rows]
    return asyncio.run(engine.run(ticks))


@pytest.mark.parametrize("source, bar_seconds", [("sample", 1.0), ("shared", 1.0), ("shared", 60.0)])
def test_two_agents_back_every_approval_on_real_trades(source, bar_seconds, sample_path):
    """The default settings (CONSENSUS_MIN_AGENTS=2, CONSENSUS_MIN_CONFIDENCE=0.5): on the bundled
    sample as `make run` feeds it (1 s bars) and on Binance recordings it does not contain (other
    days, spot and coin-margined markets; 1 s and 60 s bars), the rules, order flow and whale
    agents all vote, and approvals come, each backed by at least two agents."""
    path = sample_path if source == "sample" else SHARED_TRADES
    if not path.exists():
        pytest.skip(f"{path} is not here")
    run = _run(path, bar_seconds)
    signals = Counter(o.agent for o in run.outputs if o.event_type == "signal.generated")
    approvals = [o for o in run.outputs if o.event_type == "trade.consensus_approved"]
    assert set(signals) == {"trading.rules", "orderflow", "whale"}
    assert run.counts.get("whale.activity", 0) > 0
    assert approvals and all(len(a.contributing_agents) >= 2 for a in approvals)
    assert all(a.confidence >= 0.5 for a in approvals)
    assert run.fills
    print(f"{source} {bar_seconds:g}s bars: signals {dict(signals)}, {len(approvals)} approvals, "
          f"{len(run.fills)} fills, {run.counts['whale.activity']} whale trades")
