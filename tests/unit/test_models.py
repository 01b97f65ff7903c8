"""Event schemas and the JSON wire format."""

from __future__ import annotations

import json
import uuid

import pytest

from models.events import (EVENT_TYPES, ConsensusDecision, EventError, PriceTick, TradeExecuted, decode_event,
                           derived_id, encode_event, new_event_id)


def tick(**kw) -> PriceTick:
    base = dict(event_id=new_event_id(), timestamp=1_723_161_256_322, token="BTC", source="test", price=61_000.5)
    return PriceTick(**{**base, **kw})


def test_every_spec_event_type_has_a_schema():
    spec = {"price.tick", "liquidation.event", "sentiment.update", "whale.activity", "signal.generated",
            "signal.error", "trade.consensus_approved", "signal.consensus_failed", "risk.ok", "risk.alert",
            "risk.critical", "risk.cascade_detected", "risk.constraint_violation", "correlation.detected",
            "trade.placed", "trade.rejected", "trade.force_close", "trade.executed", "position.closed",
            "state.snapshot", "state.changed", "agent.error", "metric.sla_violation"}
    assert spec <= set(EVENT_TYPES)


def test_round_trip_is_flat_json_with_spec_field_names():
    t = tick(volume_1m=12.5)
    wire = json.loads(encode_event(t))
    assert wire["event_type"] == "price.tick" and wire["price"] == 61_000.5 and wire["token"] == "BTC"
    assert "bid" not in wire  # None fields are omitted
    assert decode_event(encode_event(t)) == t


def test_plain_json_from_another_producer_is_accepted():
    raw = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "price.tick", "timestamp": 1, "token": "ETH",
                      "source": "go-service", "price": 3000, "volume_1m": 0, "bid": 2999.5, "ask": 3000.5})
    ev = decode_event(raw.encode(), (PriceTick,))
    assert isinstance(ev, PriceTick) and ev.bid == 2999.5


@pytest.mark.parametrize("raw, needle", [
    (b"{not json", "Invalid JSON"),
    (b"[1, 2]", "Input should be an object"),
    (b"{}", "discriminator"),
    (b'{"event_type": "price.tick"}', "Field required"),
    (b'{"event_type": "nope", "event_id": "x"}', "does not match any of the expected tags"),
    (b'{"event_type": "price.tick", "source": "a\\u0000"}', "NUL character"),
    (None, "JSON input should be string"),
])
def test_invalid_messages_raise_with_a_reason(raw, needle):
    with pytest.raises(EventError) as err:
        decode_event(raw)
    assert needle in err.value.reason


def test_field_validation():
    for bad in ({"price": -1}, {"price": float("nan")}, {"token": ""}, {"timestamp": -5}):
        with pytest.raises(EventError):
            decode_event(json.dumps({**json.loads(encode_event(tick())), **bad}).encode())
    with pytest.raises(EventError, match="does not belong on this topic"):
        decode_event(encode_event(tick()), (TradeExecuted,))
    with pytest.raises(EventError, match="Extra inputs"):
        decode_event(json.dumps({**json.loads(encode_event(tick())), "surprise": 1}).encode())


def test_derived_ids_are_stable():
    assert derived_id("consensus", "BTC", 5000) == derived_id("consensus", "BTC", 5000)
    assert derived_id("consensus", "BTC", 5000) != derived_id("consensus", "ETH", 5000)


def test_derived_ids_are_uuid5_of_the_joined_parts():
    """Ids stored by earlier versions stay valid: the value is uuid.uuid5's, bit for bit."""
    import random

    from models.events import EVENT_NAMESPACE

    rng = random.Random(5)
    for _ in range(5_000):
        parts = [rng.choice(["fill", "risk.alert", "état", ""]), rng.random() * 1e5, uuid.uuid4(),
                 rng.randint(0, 10**13), "x" * rng.randint(0, 40), None, 1.5e-300][: rng.randint(1, 7)]
        expected = uuid.uuid5(EVENT_NAMESPACE, ":".join(str(p) for p in parts))
        got = derived_id(*parts)
        assert got == expected and got.version == 5 and got.variant == uuid.RFC_4122 and str(got) == str(expected)


def test_consensus_decision_schema():
    d = ConsensusDecision(event_id=new_event_id(), event_type="trade.consensus_approved", timestamp=1, token="BTC",
                          source="consensus", consensus_score=85.0, contributing_agents=["a"],
                          recommended_action="BUY", window_start=0, window_end=5000)
    assert decode_event(encode_event(d)) == d


def test_dead_letter_of_nul_bytes_is_itself_storable():
    """A dead letter must always be a valid, storable event, or the sink would loop on it."""
    import asyncio

    from app import main

    class Msg:
        topic, partition, offset, timestamp = "price.ticks", 0, 7, 1.5
        value = b'{"source": "a\\u0000", "x": "\x00\xff"}'

    sent = []

    class Out:
        async def send(self, key=None, value=None):
            sent.append(value)

    saved = main.OUTPUTS["dead.letters"]
    main.OUTPUTS["dead.letters"] = Out()
    try:
        asyncio.run(main.dead_letter(Msg(), "contains a NUL character (U+0000)", "test"))
    finally:
        main.OUTPUTS["dead.letters"] = saved
    letter = decode_event(sent[0])
    assert letter.raw_b64 and letter.offset == 7 and "\x00" not in letter.raw


def test_table_keys_are_serialized_like_topic_keys():
    """Table keys must hash like the topic keys that feed them (table routing finds the owner)
    and survive a changelog round trip unchanged."""
    import tables  # noqa: F401  (defines the tables on the app)
    from app.main import app

    assert len(app.tables) >= 11
    for table in app.tables.values():
        assert table.key_serializer == "raw", table.name
        raw = app.serializers.dumps_key(str, "BTC", serializer=table.key_serializer)
        assert raw == b"BTC"
        assert app.serializers.loads_key(str, raw, serializer=table.key_serializer) == "BTC"


def test_a_dead_letter_is_a_valid_event_whatever_its_reason_quotes():
    """Found by the broker fuzz: a dead letter whose reason quoted pydantic's "control character
    (\\u0000-\\u001F)" message, or an input holding a NUL, was itself refused on the dead-letter
    topic, so the bad message was lost. An escaped backslash before ``u0000`` is not a NUL."""
    from models.events import dead_letter_event, decode_event, encode_event

    bad = b'{"event_type": "price.tick", "token": "BT\x01C"}'
    with pytest.raises(EventError) as exc:
        decode_event(bad)
    assert "\\u0000-\\u001F" in exc.value.reason
    for reason in (exc.value.reason, "input_value='\x00'"):
        dl = dead_letter_event(bad, reason, "test", "t", 0, 1, 1_723_161_600_000)
        assert decode_event(encode_event(dl)) == dl
    with pytest.raises(EventError, match="NUL"):
        decode_event(b'{"event_type": "price.tick", "token": "B\\u0000"}')
