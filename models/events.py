"""Event schemas and their JSON wire format.

The wire format is one flat JSON object per Kafka message: the envelope fields
(``event_id``, ``event_type``, ``timestamp``, ``token``, ``source``, ``correlation_id``) next to the
payload fields of the event type, with the field names below. No Faust metadata is added or
expected, so any producer (another service, another language) can write these topics.

``correlation_id`` is the id of the event that started the chain (a tick, a sentiment update),
``causation_id`` the id of the event whose handling produced this one; together they make a
decision traceable back to its tick. ``timestamp`` is event time in milliseconds since the Unix
epoch (UTC). ``ingest_ms`` (optional) is
the wall-clock time in ms at which the tick that started the chain was produced to Kafka; it is
carried along the chain so tick-to-fill latency can be measured on replayed (historical) data.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

#: Namespace for deterministic event ids (uuid5): a replayed decision gets the same id again.
EVENT_NAMESPACE = uuid.UUID("6f1c0d0e-9a51-4d5e-9a55-3c1f0b7a1d01")


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


_NAMESPACE_SHA1 = hashlib.sha1(EVENT_NAMESPACE.bytes)
#: RFC 4122 version 5 and variant bits, as uuid.uuid5 sets them
_V5_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V5_SET = (0x8000 << 48) | (5 << 76)


def derived_id(*parts: object) -> uuid.UUID:
    """Deterministic UUID (uuid5 in ``EVENT_NAMESPACE`` of the parts joined by ``:``), for ids
    that must be equal on retry and replay.

    The value of ``uuid.uuid5`` (tested), computed with fewer steps since every event a processor
    emits derives its id here: the namespace is hashed once, and the UUID is filled in as
    ``UUID.__init__`` would after its argument checks, which a SHA-1 digest always passes."""
    h = _NAMESPACE_SHA1.copy()
    h.update(":".join([p if p.__class__ is str else str(p) for p in parts]).encode())
    u = object.__new__(uuid.UUID)
    object.__setattr__(u, "int", (int.from_bytes(h.digest()[:16]) & _V5_CLEAR) | _V5_SET)
    object.__setattr__(u, "is_safe", uuid.SafeUUID.unknown)
    return u


#: JSON integers as the wire format carries them (orjson encodes 64-bit integers only)
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I64 = Annotated[int, Field(ge=I64_MIN, le=I64_MAX)]
NonNegI64 = Annotated[int, Field(ge=0, le=I64_MAX)]


def _wire_safe(value: Any) -> Any:
    """``value`` (JSON) if every integer in it fits 64 bits and every float is finite, so that
    the event can be written back out; else ``ValueError``."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if isinstance(v, int):
            if not I64_MIN <= v <= I64_MAX:
                raise ValueError("integer outside the 64-bit range")
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError("non-finite number")
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return value


#: A JSON object field of free shape (metrics, context, positions, ...), wire-safe.
JsonDict = Annotated[dict[str, Any], AfterValidator(_wire_safe)]

Side = Literal["BUY", "SELL"]
Action = Literal["BUY", "SELL", "HOLD"]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Envelope(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID
    event_type: str
    timestamp: Annotated[int, Field(ge=0, le=I64_MAX, description="event time, ms since epoch UTC")]
    token: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    source: Annotated[str, Field(min_length=1, max_length=64)]
    correlation_id: uuid.UUID | None = None
    #: The event whose handling produced this one (set by the runtime that routes it).
    causation_id: uuid.UUID | None = None
    ingest_ms: NonNegI64 | None = None


class TokenEvent(Envelope):
    token: Annotated[str, Field(min_length=1, max_length=32)]


class AccountEvent(Envelope):
    account: Annotated[str, Field(min_length=1, max_length=64)]


# ---------------------------------------------------------------- market data
class PriceTick(TokenEvent):
    """One trade or quote. ``price`` in quote currency (USD); ``volume_1m`` quote volume (USD) of the
    last 60 s of event time; ``size`` base-currency size of this trade when it is one; ``side`` the
    aggressor's (taker's) side of a trade, when the venue says; ``trade_id`` the venue's id of it."""

    event_type: Literal["price.tick"] = "price.tick"
    price: PositiveFloat
    volume_1m: NonNegFloat = 0.0
    size: NonNegFloat | None = None
    side: Side | None = None
    trade_id: Annotated[str, Field(max_length=128)] | None = None
    bid: PositiveFloat | None = None
    ask: PositiveFloat | None = None


class PriceMinute(TokenEvent):
    """Close of one finished 1-minute bucket of ticks (internal, for the correlation join);
    ``timestamp`` is the minute's start (ms), ``close`` its last trade price (USD)."""

    event_type: Literal["price.minute"] = "price.minute"
    close: PositiveFloat


class LiquidationEvent(TokenEvent):
    event_type: Literal["liquidation.event"] = "liquidation.event"
    liquidation_count: NonNegI64
    notional: NonNegFloat
    side: Side
    cascade_indicator: Finite = 0.0


class SentimentUpdate(TokenEvent):
    event_type: Literal["sentiment.update"] = "sentiment.update"
    bullish_pct: Annotated[float, Field(ge=0, le=100)]
    velocity: Finite = 0.0
    confidence: Annotated[float, Field(ge=0, le=1)]
    followers: NonNegI64 = 0
    text_source: str | None = None


class WhaleActivity(TokenEvent):
    """A trade of at least the token's whale notional: ``size`` (base units), ``side`` (the
    aggressor's), ``price`` and ``notional`` (USD), the venue's ``trade_id`` and the trader's
    ``address`` where the venue publishes them (public trade feeds mostly do not)."""

    event_type: Literal["whale.activity"] = "whale.activity"
    size: PositiveFloat
    side: Side
    address: Annotated[str, Field(max_length=128)] | None = None
    price: PositiveFloat | None = None
    notional: NonNegFloat | None = None
    trade_id: Annotated[str, Field(max_length=128)] | None = None


# ---------------------------------------------------------------- signals and consensus
class SignalGenerated(TokenEvent):
    """A BUY/SELL/HOLD view of one agent. ``score`` 0-100 is its strength, ``confidence`` 0-1 how
    much the agent trusts it; ``price`` the price it was formed at (USD)."""

    event_type: Literal["signal.generated"] = "signal.generated"
    action: Action
    score: Annotated[float, Field(ge=0, le=100)]
    confidence: Annotated[float, Field(ge=0, le=1)]
    agent: str
    reasons: list[str] = Field(default_factory=list)
    price: PositiveFloat | None = None
    indicators: dict[str, Finite | None] = Field(default_factory=dict)


class SignalError(TokenEvent):
    event_type: Literal["signal.error"] = "signal.error"
    agent: str
    error: str


class ConsensusDecision(TokenEvent):
    """Outcome of one consensus window. ``consensus_score`` is signed (-100..100, + = BUY)."""

    event_type: Literal["trade.consensus_approved", "signal.consensus_failed"]
    consensus_score: Annotated[float, Field(ge=-100, le=100)]
    contributing_agents: list[str]
    recommended_action: Action
    signal_ids: list[uuid.UUID] = Field(default_factory=list)
    weights: dict[str, Finite] = Field(default_factory=dict)
    window_start: I64
    window_end: I64
    price: PositiveFloat | None = None
    reason: str | None = None
    #: Confidence (0-1): the confidence-weighted mean of the signals' confidences (domain.consensus);
    #: above 0.8 sizes the trade up.
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None
    #: Sizing strategy name (settings SIZING); ``default`` when absent.
    strategy: str | None = None


# ---------------------------------------------------------------- risk
class RiskEvent(AccountEvent):
    event_type: Literal[
        "risk.ok", "risk.alert", "risk.critical", "risk.cascade_detected", "risk.constraint_violation"
    ]
    severity: Literal["INFO", "WARNING", "CRITICAL"]
    violation_type: str | None = None
    action_required: str | None = None
    metrics: JsonDict = Field(default_factory=dict)


class CorrelationDetected(TokenEvent):
    event_type: Literal["correlation.detected"] = "correlation.detected"
    coefficient: Annotated[float, Field(ge=-1, le=1)]
    window: str
    direction: Literal["positive", "negative"]
    points: NonNegI64 = 0
    #: The trade the correlation points to given the latest sentiment (BUY/SELL), if any.
    action: Action | None = None
    #: Follower-weighted bullish share (%) of the latest point.
    bullish_pct: Annotated[float, Field(ge=0, le=100)] | None = None


# ---------------------------------------------------------------- orders and fills
class OrderEvent(AccountEvent):
    """``size`` in base units (coins), ``price`` the decision price (USD). A ``trade.force_close``
    asks the execution engine to close ``token``'s whole position (every position when ``token``
    is absent) with reduce-only orders; ``size`` and ``side`` then describe the position seen by
    the requester. A ``trade.outcome_unknown`` is an order whose answer was lost and which the
    exchange could not be asked about: it may have been placed, and is never sent again."""

    event_type: Literal["trade.placed", "trade.rejected", "trade.force_close", "trade.outcome_unknown"]
    order_id: str | None = None
    client_order_id: str
    side: Side
    size: NonNegFloat
    order_type: Literal["market", "limit"] = "market"
    price: PositiveFloat | None = None
    reason: str | None = None
    decision_id: uuid.UUID | None = None
    reduce_only: bool = False


class TradeExecuted(AccountEvent):
    """A fill. ``fill_price`` USD, ``filled_amount`` base units, ``fee`` USD, ``slippage`` USD per
    unit against the decision price (positive = adverse). The token is required: a fill of
    nothing would open a position no order can close."""

    event_type: Literal["trade.executed"] = "trade.executed"
    token: Annotated[str, Field(min_length=1, max_length=32)]
    order_id: str
    client_order_id: str
    side: Side
    fill_price: PositiveFloat
    filled_amount: PositiveFloat
    fee: NonNegFloat
    slippage: Finite = 0.0
    decision_price: PositiveFloat | None = None
    #: Unique per execution (an order may fill in parts); the portfolio's idempotency key.
    #: Defaults to ``client_order_id`` for producers that send one fill per order.
    fill_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    reduce_only: bool = False

    @property
    def fill_key(self) -> str:
        return self.fill_id or self.client_order_id


class PositionClosed(AccountEvent):
    """A position returned to zero: ``pnl_usd`` realised over its life net of fees; ``size`` its
    largest signed size (base units), ``entry_price`` its average entry (USD)."""

    event_type: Literal["position.closed"] = "position.closed"
    token: Annotated[str, Field(min_length=1, max_length=32)]
    order_id: str
    exit_price: PositiveFloat
    entry_price: PositiveFloat
    size: Finite
    pnl_usd: Finite
    duration_s: NonNegFloat


# ---------------------------------------------------------------- state and system
class StateEvent(AccountEvent):
    """Portfolio state: ``portfolio_value`` (equity, USD), ``positions`` per token,
    ``leverage_ratio`` gross notional / equity, ``daily_pnl`` USD since 00:00 UTC (event time).
    A ``state.snapshot`` also carries ``snapshot``: everything a rebuild restores the account from
    (``portfolio``: the portfolio store's value, ``submitted``: the execution engine's client
    order ids, ``halt``: the account's halt flag)."""

    event_type: Literal["state.snapshot", "state.changed"]
    portfolio_value: Finite
    cash: Finite
    positions: dict[str, JsonDict] = Field(default_factory=dict)
    leverage_ratio: NonNegFloat
    daily_pnl: Finite = 0.0
    delta: JsonDict = Field(default_factory=dict)
    snapshot: JsonDict | None = None


class AgentError(Envelope):
    event_type: Literal["agent.error"] = "agent.error"
    agent: str
    error: str
    context: JsonDict = Field(default_factory=dict)


class StartupFailure(Envelope):
    """A worker not ready ``waited_s`` seconds after it started: which of its health checks
    (``checks``, name -> passed) still fail, and where it runs (``worker``, host:port)."""

    event_type: Literal["system.startup_failure"] = "system.startup_failure"
    worker: str
    reason: str
    checks: dict[str, bool] = Field(default_factory=dict)
    waited_s: NonNegFloat = 0.0


class AgentLagging(Envelope):
    """An agent falling behind, for one of two ``reason``s: ``consumer_lag``, a partition of
    ``topic`` whose agent is ``lag`` messages behind its high watermark, at least ``threshold``
    (AGENT_LAG_THRESHOLD; at most once a minute per partition while it stays behind); or
    ``processing_time``, one message whose handling took ``processing_ms`` (ms), at least
    ``threshold`` (AGENT_SLOW_MS; at most once a minute per agent)."""

    event_type: Literal["agent.lagging"] = "agent.lagging"
    agent: str
    reason: Literal["consumer_lag", "processing_time"] = "consumer_lag"
    topic: str
    partition: NonNegI64 | None = None
    lag: NonNegI64 | None = None
    processing_ms: NonNegFloat | None = None
    threshold: Annotated[float, Field(gt=0)]


class SlaViolation(Envelope):
    """An observation over its SLA limit (``value`` and ``limit`` in ms); ``breaches`` is how
    many breaches since the previous event of this metric this one stands for (the worst value)."""

    event_type: Literal["metric.sla_violation"] = "metric.sla_violation"
    metric: str
    value: Finite
    limit: Finite
    breaches: Annotated[int, Field(ge=1, le=I64_MAX)] = 1
    first_breach_ms: I64 | None = None


class ControlAction(Envelope):
    """An operator's control request (audit trail): ``who`` is the token holder (or ``anonymous``
    for a refused request), ``why`` the reason given, ``outcome`` ``accepted`` or the refusal."""

    event_type: Literal["control.action"] = "control.action"
    action: Literal["halt", "resume", "close_all"]
    account: str | None = None
    who: str
    why: str
    client: str
    outcome: str


class BacktestReport(Envelope):
    """The outcome of one backtest run: its parameters and the metrics of
    :class:`domain.performance.Performance`."""

    event_type: Literal["backtest.report"] = "backtest.report"
    run_id: str
    params: JsonDict
    metrics: JsonDict


class DeadLetter(Envelope):
    """A message that failed to parse or validate: ``raw`` is its value as text (UTF-8 with
    replacement; ``raw_b64`` holds the exact bytes when they are not UTF-8). ``topic``,
    ``partition`` and ``offset`` locate a Kafka message; for a WebSocket frame ``topic`` names the
    feed (``ws:binance``) and ``offset`` is the frame's number on that connection."""

    event_type: Literal["dead_letter"] = "dead_letter"
    raw: str
    raw_b64: str | None = None
    topic: str
    partition: I64 | None = None
    offset: I64 | None = None
    reason: str


Event = Annotated[
    Union[
        PriceTick,
        PriceMinute,
        LiquidationEvent,
        SentimentUpdate,
        WhaleActivity,
        SignalGenerated,
        SignalError,
        ConsensusDecision,
        RiskEvent,
        CorrelationDetected,
        OrderEvent,
        TradeExecuted,
        PositionClosed,
        StateEvent,
        AgentError,
        StartupFailure,
        AgentLagging,
        SlaViolation,
        ControlAction,
        BacktestReport,
        DeadLetter,
    ],
    Field(discriminator="event_type"),
]

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

#: event_type -> model class
EVENT_TYPES: dict[str, type[Envelope]] = {}
for _cls in Event.__origin__.__args__:  # type: ignore[attr-defined]
    for _t in _cls.model_fields["event_type"].annotation.__args__:
        EVENT_TYPES[_t] = _cls


#: A JSON-escaped NUL: valid JSON, but PostgreSQL's jsonb cannot store it.
NUL_ESCAPE = b"\\u0000"
#: The escape itself, not an escaped backslash followed by the text ``u0000`` (which a reason
#: quoting pydantic's "control character (\\u0000-\\u001F)" message holds): an even run of
#: backslashes before it.
_NUL_ESCAPED = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class EventError(ValueError):
    """A message that is not a valid event; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_event(raw: bytes | str, expect: tuple[type[Envelope], ...] | None = None) -> Envelope:
    """Parse and validate one wire message.

    Args:
        raw: the Kafka message value (UTF-8 JSON object).
        expect: event classes allowed on this topic; ``None`` allows any.

    Raises:
        EventError: not JSON, not an object, unknown ``event_type``, a field invalid, or an event
            type that does not belong on this topic, or a NUL character (``\\u0000``, which
            PostgreSQL's jsonb cannot store); ``reason`` names the first problem.
    """
    if isinstance(raw, str):
        raw = raw.encode()
    if isinstance(raw, bytes) and NUL_ESCAPE in raw and _NUL_ESCAPED.search(raw):
        raise EventError("contains a NUL character (U+0000), which the event store cannot keep")
    try:
        event = _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "tagged-")))
        # Keep the discriminator's own message for unknown types: it lists what is allowed.
        raise EventError(f"{exc.error_count()} validation error(s); first: {loc or '<root>'}: {err['msg']}") from None
    if expect is not None and not isinstance(event, expect):
        raise EventError(f"event_type {event.event_type!r} does not belong on this topic")
    return event


#: 2009-01-03 00:00 UTC, Bitcoin's first block: no crypto market event is older.
EVENT_TIME_FLOOR_MS = 1_230_940_800_000


def check_event_time(event: Envelope, now_ms: int, max_ahead_ms: int, floor_ms: int = EVENT_TIME_FLOOR_MS) -> None:
    """Refuse an event whose ``timestamp`` (ms) is before ``floor_ms`` or more than
    ``max_ahead_ms`` after ``now_ms`` (a runtime's watermark: the wall clock in a worker). One
    tick from the future would otherwise make every real tick after it late, and hold marks and
    bars at its price.

    Raises:
        EventError: the timestamp is out of bounds; ``reason`` says which bound and by how much.
    """
    ts = event.timestamp
    if ts < floor_ms:
        raise EventError(f"event time {ts} ms is before the floor {floor_ms} ms")
    if ts > now_ms + max_ahead_ms:
        raise EventError(f"event time {ts} ms is {(ts - now_ms) / 1000:.0f} s ahead of the clock "
                         f"(at most {max_ahead_ms / 1000:.0f} s allowed)")


def decode_checked_at(raw: bytes | str, now_ms: int, max_ahead_ms: int, floor_ms: int = EVENT_TIME_FLOOR_MS,
                      expect: tuple | None = None, key: bytes | None = None, keyed_by: str | None = "token"
                      ) -> Envelope:
    """:func:`decode_event` plus :func:`check_event_time` against ``now_ms`` and, given the
    message ``key`` of a topic keyed by ``keyed_by`` (``token`` or ``account``, the topic's key:
    :data:`models.topics.TOPIC_SPECS`), that the key is the event's field of that name when it
    has one: what every consumer of a topic accepts. A key that is not the field would put the
    event in another partition than its own, where the tables of another key live.

    Raises:
        EventError: as ``decode_event``, an event time out of bounds, or a key that is not the field.
    """
    event = decode_event(raw, expect)
    if key is not None and keyed_by is not None:
        value = getattr(event, keyed_by, None)
        if value is not None and key != value.encode():
            raise EventError(f"message key {key!r} does not match {keyed_by} {value!r}")
    check_event_time(event, now_ms, max_ahead_ms, floor_ms)
    return event


def dead_letter_event(raw: bytes | str, reason: str, source: str, topic: str, partition: int | None,
                      offset: int | None, timestamp_ms: int, id_parts: tuple = ()) -> DeadLetter:
    """The dead letter of a message or frame that failed to parse or validate, always storable.

    ``topic``/``partition``/``offset`` locate it (for a WebSocket frame: ``ws:<feed>``, no
    partition, the frame's number); the id derives from them (and ``id_parts``, for locations that
    are not unique on their own), so a redelivered bad message is stored once.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    # NUL cannot be stored in jsonb: replace it too, and keep the exact bytes in base64.
    text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    b64 = None
    if text.encode("utf-8") != raw or NUL_ESCAPE in raw:
        b64 = base64.b64encode(raw).decode()
        text = text.replace(NUL_ESCAPE.decode(), "\\ufffd")
    # a validation error quotes the input, NUL characters included: the dead letter must itself
    # be a valid event on the dead-letter topic
    reason = reason.replace("\x00", "\ufffd")
    return DeadLetter(event_id=derived_id("dead_letter", topic, partition, offset, *id_parts), timestamp=timestamp_ms,
                      source=source, raw=text[:100_000], raw_b64=b64, topic=topic, partition=partition,
                      offset=offset, reason=reason[:2000])


def encode_event(event: Envelope) -> bytes:
    """JSON bytes of an event, the wire format (``None`` fields omitted)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
