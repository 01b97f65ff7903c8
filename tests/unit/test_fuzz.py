"""Property-based fuzzing (Hypothesis) of the event schemas and the decode path every consumer
uses (``decode_checked_at``): real events, from the bundled sample run through the in-process
engine, mutated (a field set to any JSON value, dropped, added, made huge; timestamps far out of
range; integers beyond 64 bits; raw and corrupted bytes; non-UTF-8 keys). Whatever comes in, the
decode path either accepts an event that round-trips through the wire format and lies within the
event-time bounds and its key, or raises ``EventError`` with a reason, and the dead letter made
of it is always storable. 136,000 generated messages in all (36,000 by Hypothesis, 100,000 by a
seeded mutator), derandomized so CI is repeatable. The first run found decoded events that could
not be written back out (integers beyond 64 bits, infinite floats in free-form fields): the
schemas now refuse them."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest import api
from models.events import EVENT_TYPES, EventError, decode_checked_at, decode_event, dead_letter_event, encode_event

NOW = 1_723_161_600_000  # the sample's end
AHEAD = 300_000
FLOOR = 1_230_940_800_000


def _corpus() -> list[dict]:
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "data/sample/binance_usdm_trades_20240808.csv.gz"
    data = api.load(sample, "BTC")
    s = api.backtest_settings(agents=("trading.rules", "orderflow", "whale"), bar_seconds=1.0)
    res = asyncio.run(api.arun(data, s, keep_outputs=True, agents=("trading.rules", "orderflow", "whale")))
    by_type: dict[str, list] = {}
    for e in res.kept:
        by_type.setdefault(e["event_type"], []).append(e)
    # a few of each type the run produced, and ticks with every optional field
    return [e for events in by_type.values() for e in events[:20]]


CORPUS = _corpus()

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=8)


@st.composite
def messages(draw) -> tuple[bytes, bytes | None]:
    base = dict(draw(st.sampled_from(CORPUS)))
    field = draw(st.sampled_from(sorted(base)))
    op = draw(st.sampled_from(["keep", "set", "drop", "add", "timestamp", "huge", "type", "raw", "corrupt",
                               "number_text"]))
    if op == "set":
        base[field] = draw(json_values)
    elif op == "drop":
        del base[field]
    elif op == "add":
        base[draw(st.text(max_size=16))] = draw(json_values)
    elif op == "timestamp":
        base["timestamp"] = draw(st.integers(min_value=-(2**64), max_value=2**70) | st.floats(allow_nan=False))
    elif op == "huge":
        base[field] = "x" * draw(st.sampled_from([0, 1, 100, 4_096, 150_000]))
    elif op == "type":
        base["event_type"] = draw(st.sampled_from(sorted(EVENT_TYPES)) | st.text(max_size=20))
    raw = json.dumps(base).encode()  # json, not orjson: integers beyond 64 bits too
    if op == "raw":
        raw = draw(st.binary(max_size=400))
    elif op == "corrupt" and raw:
        i = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(min_value=0, max_value=255))]) + raw[i + 1:]
    elif op == "number_text":
        raw = raw.replace(b"1", draw(st.sampled_from([b"1e400", b"-1e400", b"NaN", b"Infinity", b"1" * 40])), 1)
    token = base.get("token")
    key = draw(st.none() | st.binary(max_size=12)
               | st.just(token.encode() if isinstance(token, str) else b"BTC"))
    return raw, key


FUZZ = settings(max_examples=12_000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check(raw: bytes, key: bytes | None) -> str:
    try:
        event = decode_checked_at(raw, NOW, AHEAD, FLOOR, key=key)
    except EventError as exc:
        assert exc.reason, raw[:200]
        dl = dead_letter_event(raw, exc.reason, "fuzz", "t", 0, 1, NOW)
        stored = orjson.loads(encode_event(dl))  # always serializable and storable (no NUL in jsonb text)
        assert "\x00" not in stored["raw"] and "\x00" not in stored["reason"] and stored["reason"]
        # and a valid event on the dead-letter topic (the broker fuzz found reasons quoting a NUL)
        assert decode_event(encode_event(dl)) == dl
        return "refused"
    again = decode_event(encode_event(event))
    assert again == event, raw[:200]
    assert FLOOR <= event.timestamp <= NOW + AHEAD
    if key is not None and event.token is not None:
        assert key == event.token.encode()
    return "accepted"


@pytest.mark.parametrize("part", range(3))
def test_the_decode_path_accepts_a_valid_event_or_refuses_with_a_reason(part):
    seen = {"accepted": 0, "refused": 0}

    @FUZZ
    @given(messages())
    def check(message):
        seen[_check(*message)] += 1

    check()
    # both outcomes are exercised: mutations of real events are often still valid
    n = FUZZ.max_examples
    assert seen["accepted"] > 0.04 * n and seen["refused"] > 0.4 * n, seen


VALUES = [None, True, False, 0, -1, 2**63, 2**70, -(2**70), 1e308, -1e-308, 0.5, "", "x", "BTC", "é\u0000",
          "\udcff", [], {}, [1, "a"], {"a": None}, "9" * 400, "<img src=x onerror=alert(1)>"]


def seeded_mutation(rng, base: dict) -> bytes:
    """One seeded mutation of the event ``base`` (a copy is changed): a field set to an odd value or
    dropped, the timestamp out of range, another event type, a huge field, random or corrupted
    bytes, a number that JSON cannot hold, or nothing (a still valid event)."""
    import time

    base = dict(base)
    field = rng.choice(sorted(base))
    op = rng.randrange(10)
    if op == 0:
        base[field] = rng.choice(VALUES)
    elif op == 1:
        del base[field]
    elif op == 2:
        base["timestamp"] = rng.choice([rng.randrange(-(2**64), 2**70), NOW + rng.randrange(-10**6, 10**6),
                                        int(time.time() * 1000) + 10**9, rng.uniform(-1e20, 1e20), 10**13, 10**17])
    elif op == 3:
        base["event_type"] = rng.choice(sorted(EVENT_TYPES))
    elif op == 4:
        base[field] = "x" * rng.choice([4_096, 150_000])
    raw = json.dumps(base).encode()  # json, not orjson: integers beyond 64 bits too
    if op == 5:
        raw = rng.randbytes(rng.randrange(0, 300))
    elif op == 6 and raw:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
    elif op == 7:
        raw = raw.replace(b"1", rng.choice([b"1e400", b"NaN", b"Infinity", b"1" * 40]), 1)
    return raw


def test_a_hundred_thousand_seeded_mutations_more():
    """The same property over 100,000 more messages from a seeded mutator (plain ``random``, far
    faster per message than Hypothesis' shrinking machinery, so the count fits the suite)."""
    import random

    rng = random.Random(20261128)
    seen = {"accepted": 0, "refused": 0}
    for _ in range(100_000):
        base = rng.choice(CORPUS)
        raw = seeded_mutation(rng, base)
        token = base.get("token")
        key = rng.choice([None, rng.randbytes(rng.randrange(0, 8)), b"\xff\xfe",
                          token.encode("utf-8", "surrogatepass") if isinstance(token, str) else b"BTC"])
        seen[_check(raw, key)] += 1
    assert seen["accepted"] > 10_000 and seen["refused"] > 10_000, seen


def test_regressions_events_that_could_not_be_written_back_are_refused():
    """What the first fuzz run found: each decoded, then failed to encode (orjson: integers beyond
    64 bits) or changed on the way back (an infinite float written as null)."""
    decision = next(e for e in CORPUS if e["event_type"] == "trade.consensus_approved")
    signal = next(e for e in CORPUS if e["event_type"] == "signal.generated")
    state = next(e for e in CORPUS if e["event_type"] == "state.changed")
    for bad in (decision | {"window_start": 10**30},
                state | {"delta": {"seq": 2**70}},
                state | {"positions": {"BTC": {"size": 1e400}}},
                signal | {"indicators": {"rsi": 1e400}}):
        with pytest.raises(EventError):
            decode_event(json.dumps(bad).replace("Infinity", "1e400").encode())
    for good in (decision, signal, state):
        assert decode_event(json.dumps(good).encode()) is not None
