"""The trading-halt flag of an account, as a pure transition over risk events.

A ``risk.alert`` whose ``violation_type`` is ``max_leverage`` or ``manual`` halts the account; a
``risk.ok`` resumes it, except that a manual halt (an operator's, from the control endpoint) is
lifted only by a manual ``risk.ok``: an automatic all-clear from the risk agent must not undo an
operator's decision. Used by the halt processor (the ``halt`` table) and by the dashboard hub,
which keeps its own copy of the flags from the same events.
"""

from __future__ import annotations

from collections.abc import Mapping

#: violation types of a ``risk.alert`` that halt trading
HALTING = ("max_leverage", "manual")


def halt_transition(current: Mapping, ev: Mapping) -> dict | None:
    """The halt flag after one risk event (both as JSON dicts), or None when it does not change.

    ``current``: ``{"halted", "manual", "reason", "since_ms", "event_id"}`` (empty when never
    set); ``ev``: the risk event's JSON fields. The new flag carries the event's time (ms) and id.
    """
    vt = ev.get("violation_type")
    if ev.get("event_type") == "risk.alert" and vt in HALTING:
        if current.get("halted") and (current.get("manual") or vt != "manual"):
            return None
        return {"halted": True, "manual": vt == "manual",
                "reason": f"{vt}: {ev.get('action_required') or ''}".strip(),
                "since_ms": ev.get("timestamp"), "event_id": str(ev.get("event_id")), "metrics": ev.get("metrics") or {}}
    if ev.get("event_type") == "risk.ok" and current.get("halted"):
        if current.get("manual") and vt != "manual":
            return None
        return {"halted": False, "manual": False, "reason": None, "since_ms": ev.get("timestamp"),
                "event_id": str(ev.get("event_id"))}
    return None


def halted_reason(flags: Mapping, account: str) -> str | None:
    """Why ``account`` is halted (``flags``: account -> flag, the ``halt`` table), or None."""
    h = flags.get(account)
    return (h.get("reason") or "halted") if h and h.get("halted") else None


def any_halted(flags: Mapping) -> list[str]:
    """Accounts whose trading is halted."""
    return [k.decode() if isinstance(k, bytes) else k for k, v in flags.items() if v and v.get("halted")]
