"""Consensus black-box through the real Kafka broker: ``signal.generated`` wire JSON goes into
the run's topic, decisions are read from its ``consensus`` topic.

- two agents' signals 2 s apart → one ``trade.consensus_approved`` whose score is the formula's;
- two agents' signals 6 s apart → no approval (each window fails alone);
- one agent alone → ``signal.consensus_failed``;
- a worker killed with SIGKILL in the middle of a window, replaced by a worker with an empty data
  folder (its tables come back from the changelog): the window still decides once, and the
  sentiment windows view answers with the state the first worker built.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from app.local import Stack
from tests.servers.bus import Bus

T0 = 1_723_161_280_000
TOKENS = ("AAA", "BBB", "CCC", "DDD")


def sig(token: str, ts: int, agent: str, action: str = "BUY", score: float = 90.0, confidence: float = 1.0) -> dict:
    return {"event_id": str(uuid.uuid4()), "event_type": "signal.generated", "timestamp": ts, "token": token,
            "source": agent, "agent": agent, "action": action, "score": score, "confidence": confidence,
            "price": 100.0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, database_url):
    s = Stack(tmp_path_factory.mktemp("signals"), database_url, CONSENSUS_MIN_AGENTS="2", CONSENSUS_THRESHOLD="70",
              CONTROL_TOKEN="signals-token-2b7d", AGENT_WEIGHTS='{"trading.rules": 1.0, "sentiment": 0.8, "trading.llm": 1.0}')
    yield s
    s.stop()


def update(token: str, ts: int, bullish: float) -> dict:
    return {"event_id": str(uuid.uuid4()), "event_type": "sentiment.update", "timestamp": ts, "token": token,
            "source": "test", "bullish_pct": bullish, "confidence": 1.0, "followers": 9}


def processed(w, agent: str) -> float:
    return w.metrics().get(f'moondev_processing_seconds_count{{agent="{agent}"}}', 0)


def consensus_count(w) -> float:
    return processed(w, "consensus")


def test_consensus_join_through_kafka(stack):
    prefix = stack.env["TOPIC_PREFIX"]
    w1 = stack.worker("w1").start()

    async def scenario():
        async with Bus(prefix, ("consensus",)) as bus:
            # two agents 2 s apart
            await bus.send("signal.generated", "AAA", sig("AAA", T0, "trading.rules", score=90, confidence=1.0))
            await bus.send("signal.generated", "AAA", sig("AAA", T0 + 2000, "sentiment", score=80, confidence=0.5))
            # two agents 6 s apart, and one agent alone
            await bus.send("signal.generated", "BBB", sig("BBB", T0, "trading.rules"))
            await bus.send("signal.generated", "BBB", sig("BBB", T0 + 6000, "sentiment"))
            await bus.send("signal.generated", "CCC", sig("CCC", T0, "trading.rules"))
            # event time moves on for every token: their open windows close
            for t in ("BBB", "CCC"):
                await bus.send("signal.generated", t, sig(t, T0 + 60_000, "trading.rules", "SELL", 10))
            await bus.wait(lambda: bus.of("trade.consensus_approved", token="AAA")
                           and len(bus.of("signal.consensus_failed", token="BBB")) == 2
                           and bus.of("signal.consensus_failed", token="CCC"), 90, "the decisions")

            # a restart in the middle of a window (and sentiment windows to survive it)
            await bus.send("signal.generated", "DDD", sig("DDD", T0, "trading.rules"))
            for i, bullish in enumerate((80.0, 60.0, 70.0)):
                await bus.send("sentiment.updates", "EEE", update("EEE", T0 + i * 1000, bullish))
            deadline = time.monotonic() + 30
            while (consensus_count(w1) < 8 or processed(w1, "sentiment") < 3) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # past the offset commit interval (1 s)
            w1.stop(signal.SIGKILL)
            w2 = stack.worker("w2").start()  # a fresh data folder: tables recover from the changelog
            await bus.send("signal.generated", "DDD", sig("DDD", T0 + 2000, "sentiment"))
            await bus.send("signal.generated", "DDD", sig("DDD", T0 + 3000, "trading.llm"))
            await bus.wait(lambda: bus.of("trade.consensus_approved", token="DDD"), 120, "the DDD approval")
            await bus.send("signal.generated", "DDD", sig("DDD", T0 + 60_000, "trading.rules", "SELL", 10))
            await asyncio.sleep(3)  # anything duplicated would arrive by now
            views["sentiment"] = w2.get("/sentiment/EEE/")
            q = f"/events/?start={T0}&end={T0 + 120_000}&type=signal.generated&token=BBB&limit=2"
            views["events"] = w2.get(q)
            if views["events"].get("next_cursor"):
                views["events2"] = w2.get(q + f"&cursor={views['events']['next_cursor']}")
            views["events_bad"] = w2.get("/events/?start=yesterday&end=1")
            views["indicators"] = w2.get("/indicators/EEE/")
            w2.stop()
            return list(bus.seen)

    views: dict = {}
    seen = asyncio.run(scenario())
    by = {t: [e for e in seen if e["token"] == t] for t in TOKENS}

    (a,) = by["AAA"]
    assert a["event_type"] == "trade.consensus_approved" and a["recommended_action"] == "BUY"
    expected = (1.0 * 1.0 * 90 + 0.8 * 0.5 * 80) / (1.0 * 1.0 + 0.8 * 0.5)
    assert a["consensus_score"] == pytest.approx(expected, abs=1e-4)
    assert a["contributing_agents"] == ["sentiment", "trading.rules"] and len(a["signal_ids"]) == 2
    assert a["weights"] == pytest.approx({"trading.rules": 1.0, "sentiment": 0.4})

    assert [e["event_type"] for e in by["BBB"]] == ["signal.consensus_failed"] * 2
    assert [e["window_start"] for e in by["BBB"]] == [T0, T0 + 6000]
    assert [(e["event_type"], e["window_start"]) for e in by["CCC"]] == [("signal.consensus_failed", T0)]

    d = [e for e in by["DDD"] if e["window_start"] == T0]
    assert [e["event_type"] for e in d] == ["trade.consensus_approved"], [(e["event_type"], e["window_start"] - T0, e["contributing_agents"]) for e in by["DDD"]]
    assert len({e["event_id"] for e in d}) == 1

    # the sentiment windows came back from the changelog in the new worker
    five = views["sentiment"]["windows"]["5m"]
    assert five["updates"] == 3 and five["bullish_pct"] == pytest.approx(70.0)
    assert views["indicators"]["error"] == "no closed bar for EEE"

    # the event store's query view pages through the stored signals in time order
    first, second = views["events"], views["events2"]
    assert [e["data"]["timestamp"] for e in first["events"]] == [T0, T0 + 6000]
    assert [e["data"]["timestamp"] for e in second["events"]] == [T0 + 60_000] and second["next_cursor"] is None
    assert "error" in views["events_bad"]
