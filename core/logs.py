"""Structured logs: one JSON object per line, each carrying the event being handled.

While an agent handles one message (``app.main.survive``), :data:`TRACE` holds the agent and
that event; every line logged meanwhile carries the event's ``event_id``, ``correlation_id`` (the chain it belongs to: the id of the tick or update that
started it), ``causation_id`` (the event that caused it), ``event_type``, ``token``, ``account``
and the ``agent``. :class:`JsonFormatter` (python-json-logger) writes them on every line logged
meanwhile, by any logger (the agents', Faust's, aiokafka's), so ``grep`` on a correlation id
gives a decision's whole story. Lines logged outside a message carry ``correlation_id: null``.

A context variable rather than a logging filter on one logger: each asyncio task has its own
context, so concurrent agents in one worker never see each other's event, and a task started
while handling a message (the LLM advisor's request) keeps that message's fields.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

#: (agent, the decoded event or None) being handled in this task (see the module docstring), or
#: None. The event itself, not its fields: they are worked out only when a line is logged, so a
#: message that logs nothing (nearly every tick) costs a context-variable set and reset.
TRACE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("moondev_trace", default=None)

#: Fields every JSON line has, in this order, after time, level, logger and message.
TRACE_FIELDS = ("agent", "event_id", "event_type", "correlation_id", "causation_id", "token", "account")


def trace_fields(agent: str, event) -> dict:
    """The :data:`TRACE` fields of a decoded event (an ``Envelope``; ``None`` for one that did not
    decode): ids as strings, the correlation id falling back to the event's own id (an event
    without one starts its chain)."""
    if event is None:
        return {"agent": agent}
    event_id = getattr(event, "event_id", None)
    correlation = getattr(event, "correlation_id", None) or event_id
    causation = getattr(event, "causation_id", None)
    return {"agent": agent, "event_id": str(event_id) if event_id else None,
            "event_type": getattr(event, "event_type", None),
            "correlation_id": str(correlation) if correlation else None,
            "causation_id": str(causation) if causation else None,
            "token": getattr(event, "token", None), "account": getattr(event, "account", None)}


@contextmanager
def tracing(agent: str, event) -> Iterator[None]:
    """Set :data:`TRACE` to ``(agent, event)`` for the ``with`` block (this task only)."""
    token = TRACE.set((agent, event))
    try:
        yield
    finally:
        TRACE.reset(token)


def current_event_id():
    """The id (a UUID) of the event this task is handling, or None."""
    ctx = TRACE.get()
    return getattr(ctx[1], "event_id", None) if ctx else None


class JsonFormatter(_JsonFormatter):
    """python-json-logger's formatter with ``time`` (ISO-8601 UTC), ``level``, ``logger``,
    ``message`` and the :data:`TRACE` fields on every line (null when not handling an event);
    exceptions as ``exc_info`` text."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        super().__init__("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s", *args, **kwargs)

    def formatTime(self, record, datefmt=None) -> str:  # noqa: N802 - logging's name
        import datetime

        return datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds")

    def add_fields(self, log_record: dict, record, message_dict: dict) -> None:
        super().add_fields(log_record, record, message_dict)
        ctx = TRACE.get()
        ctx = trace_fields(*ctx) if ctx else {}
        for name in TRACE_FIELDS:
            log_record.setdefault(name, ctx.get(name))


def logging_config(fmt: str) -> dict | None:
    """Faust's ``logging_config`` for LOG_FORMAT ``json`` (merged into the worker's own set-up,
    keeping its handler, level and ``-f`` log file, with both of its formatters JSON), or None
    for ``text`` (Faust's own lines)."""
    if fmt != "json":
        return None
    formatter = {"()": "core.logs.JsonFormatter"}
    return {"version": 1, "merge": True, "disable_existing_loggers": False,
            "formatters": {"default": formatter, "colored": formatter}}
