"""Event schemas: the envelope, every event type, and the JSON wire codec."""

from models.events import (  # noqa: F401
    EVENT_TYPES,
    DeadLetter,
    Event,
    EventError,
    decode_event,
    encode_event,
    new_event_id,
)
