"""The worker's SLA monitor (:class:`core.sla.SlaMonitor` with the configured limits) and the
task step that emits its due ``metric.sla_violation`` events."""

from __future__ import annotations

from app.main import emit, settings
from core.sla import SlaMonitor

sla = SlaMonitor(settings.sla_limits_ms, settings.sla_event_interval_seconds)


def violations_due(source: str) -> list:
    """The due breaches as ``metric.sla_violation`` events."""
    return sla.violations(source)


async def emit_due(source: str) -> int:
    """Emit the due ``metric.sla_violation`` events; returns how many."""
    events = violations_due(source)
    for ev in events:
        await emit(ev)
    return len(events)
