"""Signal sources: LLM advice against a local Messages API, the sentiment agent, the correlation
join and its effect on the trading agent's confidence."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import anthropic
import pytest

from app import main, runtime
from domain import indicators as ind
from domain import signals as rules
from domain.bars import Bar
from models.events import PriceMinute, PriceTick, SentimentUpdate, encode_event, new_event_id
from processors import llm
from streams.ticks import ticks
from streams.correlation import correlation
from streams.sentiment import sentiment
from tables import correlations
from tests.servers.anthropic import API_KEY, FakeAnthropic

T0 = 1_723_161_240_000  # a minute boundary


async def _advisor(fake: FakeAnthropic, timeout: float = 2.0, concurrency: int = 2) -> llm.LLMAdvisor:
    url = await fake.start()
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=url, max_retries=0, timeout=timeout)
    return llm.LLMAdvisor(client, "claude-test", timeout, concurrency, 8, 256, main.emit)


def _request(token="BTC", bar=T0, rule="BUY") -> llm.Request:
    b = Bar(bar, 100.0, 101.0, 99.0, 100.5, 12_345.0, 17).to_dict()
    prompt = llm.prompt_for(token, b, {"sma_20": 100.1, "rsi_14": 55.0, "sma_20_prev": 1.0},
                            {"action": rule, "score": 70.0, "confidence": 0.8, "reasons": ["SMA20 > SMA50"]})
    return llm.Request(token, bar, bar + 1000, prompt, 100.5)


async def _drain(adv: llm.LLMAdvisor, outputs, n: int, timeout: float = 10.0) -> list[dict]:
    rec = outputs["signal.generated"]
    for _ in range(int(timeout / 0.02)):
        if len(rec.sent) >= n and not adv.pending:
            break
        await asyncio.sleep(0.02)
    await adv.stop()
    return [v for _, v in rec.sent]


async def _one_answer(outputs, fake: FakeAnthropic, timeout: float = 2.0) -> dict:
    """Submit one bar's request to a fresh advisor and return the single event it produces."""
    adv = await _advisor(fake, timeout=timeout)
    try:
        adv.submit(_request())
        (event,) = await _drain(adv, outputs, 1)
    finally:
        await fake.stop()
    return event


async def test_llm_advice_is_a_signal_of_its_own_stamped_with_the_bar(outputs):
    fake = FakeAnthropic()
    sig = await _one_answer(outputs, fake)
    assert sig["event_type"] == "signal.generated" and sig["agent"] == "trading.llm", sig.get("error")
    assert (sig["action"], sig["score"], sig["confidence"], sig["timestamp"]) == ("BUY", 80, 0.7, T0 + 1000)
    (body,) = fake.requests
    assert body["tool_choice"] == {"type": "tool", "name": "trade_signal"} and body["model"] == "claude-test"
    assert body["tools"][0]["input_schema"]["required"] == ["action", "score", "confidence", "reasons"]
    assert "Rule-based signal: BUY" in body["messages"][0]["content"] and "sma_20_prev" not in body["messages"][0]["content"]


@pytest.mark.parametrize("mode, error", [
    ("overloaded", "HTTP 529 overloaded_error"), ("rate_limited", "HTTP 429 rate_limit_error"),
    ("server_error", "HTTP 500 api_error"), ("invalid", "invalid trade_signal: action"),
    ("text", "no trade_signal tool call"),
])
async def test_llm_errors_become_signal_errors_and_the_rule_signal_stands(outputs, mode, error):
    fake = FakeAnthropic(mode)
    err = await _one_answer(outputs, fake)
    assert err["event_type"] == "signal.error" and err["agent"] == "trading.llm"
    assert err["error"].startswith(error) and err["timestamp"] == T0 + 1000
    assert len(fake.requests) == 1  # no SDK retries: a retry would answer about an old bar


async def test_llm_slow_answers_time_out(outputs):
    err = await _one_answer(outputs, FakeAnthropic(delay=1.5), timeout=0.3)
    assert err["event_type"] == "signal.error" and "no answer within 0.3 s" in err["error"]


async def test_llm_queue_keeps_the_newest_bar_per_token_and_drops_late_answers(outputs):
    fake = FakeAnthropic(delay=0.4)
    adv = await _advisor(fake, concurrency=1)
    try:
        adv.submit(_request(bar=T0))
        adv.submit(_request(bar=T0 + 1000))  # replaces the pending request of T0 before it is sent
        await asyncio.sleep(0.1)  # T0+1000 is now in flight
        adv.submit(_request(bar=T0 + 2000))  # closes a newer bar: the in-flight answer will be late
        sent = await _drain(adv, outputs, 2)
    finally:
        await fake.stop()
    assert [("Bar start %d" % b) in r["messages"][0]["content"] for r, b in zip(fake.requests, (T0 + 1000, T0 + 2000))] == [True, True]
    assert [(s["event_type"], s["timestamp"]) for s in sent] == [("signal.error", T0 + 2000), ("signal.generated", T0 + 3000)]
    assert "newer bar" in sent[0]["error"]


async def test_trading_agent_never_waits_for_the_llm(outputs, sample_path, monkeypatch):
    """With the LLM not answering at all until released, a minute of real ticks goes through the
    trading agent and every rule-based signal is out before a single LLM answer. (It was an answer
    after 3 s: on a slow machine the ticks took longer than that, and answers came in between.)"""
    from feeds.files import read_ticks

    fake = FakeAnthropic(gate=asyncio.Event())
    url = await fake.start()
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=url, max_retries=0, timeout=10.0)
    adv = llm.LLMAdvisor(client, "claude-test", 10.0, main.settings.llm_concurrency, 8, 256, main.emit)
    monkeypatch.setattr(runtime.trading, "advisor", adv)
    rows = [r for r in read_ticks(sample_path) if r.token == "BTC"][:6000]
    try:
        async def feed():
            async with ticks.test_context() as agent:
                for r in rows:
                    t = PriceTick(event_id=new_event_id(), timestamp=r.ts_ms, token=r.token, source="test",
                                  price=r.price, size=r.size)
                    await agent.put(value=encode_event(t), key=b"BTC")

        # an agent that waited for an answer would never get through the ticks
        await asyncio.wait_for(feed(), 120)
        sent = [v for _, v in outputs["signal.generated"].sent]
        assert sent and all(s["agent"] == "trading.rules" for s in sent)
        assert fake.requests, "bar closes were sent to the LLM"
        assert len(fake.requests) <= main.settings.llm_concurrency  # the rest waited, newest per token
        fake.gate.set()
        await adv.stop()
    finally:
        await fake.stop()


# ---------------------------------------------------------------- sentiment
SENTIMENT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sentiment" / "vader_tweets_ground_truth.tsv"


def update(ts: int, bullish: float, followers=1000, token="BTC", conf=0.9) -> SentimentUpdate:
    return SentimentUpdate(event_id=new_event_id(), timestamp=ts, token=token, source="test", bullish_pct=bullish,
                           confidence=conf, followers=followers)


async def test_sentiment_agent_signals_a_bullish_turn_once_per_minute(outputs):
    async with sentiment.test_context() as agent:
        for m in range(60):
            for k in range(3):
                await agent.put(value=encode_event(update(T0 + m * 60_000 + k * 1000, 50.0)), key=b"BTC")
        for k in range(40):  # a bullish burst in minute 60
            await agent.put(value=encode_event(update(T0 + 60 * 60_000 + k * 1000, 95.0)), key=b"BTC")
        await agent.put(value=b'{"event_type": "sentiment.update", "bullish_pct": 140}', key=b"BTC")
    sigs = outputs["signal.generated"].of("signal.generated")
    assert len(sigs) == 1, "one signal per token and minute"
    s = sigs[0]
    assert s["agent"] == "sentiment" and s["action"] == "BUY" and 0 < s["score"] <= 100
    assert s["indicators"]["bullish_pct_5m"] > 60 and s["indicators"]["velocity_pp"] >= 5
    (dead,) = outputs["dead.letters"].of("dead_letter")
    assert "validation error" in dead["reason"]


def test_sentiment_feed_scores_real_text_with_vader():
    from feeds.sentiment import read_updates

    if not SENTIMENT_DATA.exists():
        pytest.skip("../shared/data not present")
    ups = list(read_updates(SENTIMENT_DATA, tokens=("BTC", "ETH"), start_ms=T0, rate_per_s=50))
    with SENTIMENT_DATA.open() as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert len(ups) == len(rows)
    assert {u.token for u in ups} == {"BTC", "ETH"}
    assert ups[-1].timestamp - ups[0].timestamp == pytest.approx((len(ups) - 1) * 20, abs=2)
    # the scorer agrees in sign with the human ratings on clearly rated texts
    agree = sum((u.bullish_pct > 50) == (float(r[1]) > 0) for u, r in zip(ups, rows) if abs(float(r[1])) >= 2)
    total = sum(1 for r in rows if abs(float(r[1])) >= 2)
    assert agree / total > 0.8


# ---------------------------------------------------------------- correlation
async def test_correlation_join_detects_and_boosts_the_trading_signal(outputs):
    import numpy as np

    rng = np.random.default_rng(3)
    price = 60_000.0
    async with correlation.test_context() as agent:
        await agent.put(value=encode_event(PriceMinute(event_id=new_event_id(), timestamp=T0 - 60_000, token="BTC",
                                                       source="test", close=price)), key=b"BTC")
        for m in range(40):
            minute = T0 + m * 60_000
            share = float(rng.uniform(30, 90))
            await agent.put(value=encode_event(update(minute + 5_000, share)), key=b"BTC")
            price *= 1 + (share - 50) * 2e-5 + float(rng.normal(0, 1e-4))
            await agent.put(value=encode_event(PriceMinute(event_id=new_event_id(), timestamp=minute, token="BTC",
                                                           source="test", close=price)), key=b"BTC")
        await agent.put(value=encode_event(update(T0 + 40 * 60_000 + 1, 80.0)), key=b"BTC")
    dets = outputs["correlation"].of("correlation.detected")
    assert dets and dets[0]["points"] == main.settings.correlation_min_points
    assert all(d["coefficient"] > 0.7 and d["direction"] == "positive" and d["window"] == "1h" for d in dets)
    last = correlations.get("BTC")
    assert last["active"] and last["coefficient"] == dets[-1]["coefficient"]

    # the trading agent raises the confidence of a signal in the correlated direction
    length = int(main.settings.bar_seconds * 1000)
    base = last["ts"] - last["ts"] % length + length
    closes = [100 + i * 0.5 for i in range(31)]  # too few bars for MACD and SMA(50): confidence 0.3
    plain = rules.evaluate(ind.compute(closes))
    correlations.data["BTC"] = dict(last, action=plain.action)
    async with ticks.test_context() as agent:
        for i, p in enumerate(closes + [200.0]):
            t = PriceTick(event_id=new_event_id(), timestamp=base + i * length, token="BTC", source="t", price=p)
            await agent.put(value=encode_event(t), key=b"BTC")
    sig = outputs["signal.generated"].of("signal.generated")[-1]
    assert sig["timestamp"] == base + 31 * length
    assert sig["action"] == plain.action and any("correlation" in r for r in sig["reasons"])
    assert plain.confidence == 0.3
    assert sig["confidence"] == pytest.approx(0.3 * (1 + 0.25 * abs(last["coefficient"])), abs=1e-4)
