"""SLA monitor: the latency limits (SLA_LIMITS_MS), checked on every observation.

Observations (ms) and where they are made:

| metric | measured from → to | where |
|---|---|---|
| tick_to_publish | WebSocket frame received → broker ack | ``ingest`` command |
| tick_to_risk_alert | tick produced → its ``risk.alert`` emitted | risk agent |
| risk_evaluation | one account's evaluation on one tick | risk agent |
| signal_to_order | approving decision produced → ``trade.placed`` emitted | execution engine |
| state_to_dashboard | ``state.changed`` produced → pushed to the dashboard clients | dashboard hub |
| event_store_insert | one event-store batch write | sink |

A breach increments ``moondev_sla_violations_total{metric}`` at once and is queued; a worker task
emits the queue as ``metric.sla_violation`` events (``system`` topic) once a second, at most one
per metric per SLA_EVENT_INTERVAL_SECONDS, with the worst value and the number of breaches it
stands for. Emission never blocks the path that observed the breach.
"""

from __future__ import annotations

import time

from core.metrics import SLA_VIOLATIONS
from models.events import SlaViolation, new_event_id


class SlaMonitor:
    """Checks observations against limits; collects breaches for emission."""

    def __init__(self, limits_ms: dict[str, float], interval_s: float) -> None:
        self.limits = dict(limits_ms)
        self.interval_s = interval_s
        self._pending: dict[str, list] = {}  # metric -> [breaches, worst value ms, first breach ms]
        self._last_emit: dict[str, float] = {}

    def observe(self, metric: str, value_ms: float) -> bool:
        """Record one observation (ms); returns whether it breached its limit."""
        limit = self.limits.get(metric)
        if limit is None or value_ms <= limit:
            return False
        SLA_VIOLATIONS.labels(metric).inc()
        p = self._pending.get(metric)
        if p is None:
            self._pending[metric] = [1, value_ms, int(time.time() * 1000)]
        else:
            p[0] += 1
            p[1] = max(p[1], value_ms)
        return True

    def due(self, now_s: float | None = None) -> list[tuple[str, int, float, float, int]]:
        """Breaches ready to emit: (metric, breaches, worst value ms, limit ms, first breach ms)."""
        now_s = time.monotonic() if now_s is None else now_s
        out = []
        for metric in list(self._pending):
            if now_s - self._last_emit.get(metric, -1e18) < self.interval_s:
                continue
            breaches, worst, first_ms = self._pending.pop(metric)
            self._last_emit[metric] = now_s
            out.append((metric, breaches, worst, self.limits[metric], first_ms))
        return out

    def violations(self, source: str) -> list[SlaViolation]:
        """The due breaches as ``metric.sla_violation`` events."""
        return [SlaViolation(event_id=new_event_id(), timestamp=int(time.time() * 1000), source=source,
                             metric=metric, value=round(worst, 3), limit=limit, breaches=breaches,
                             first_breach_ms=first_ms)
                for metric, breaches, worst, limit, first_ms in self.due()]
