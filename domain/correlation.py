"""Sentiment–price correlation over a sliding 1-hour event-time window.

Two per-token series are aligned on 1-minute buckets (event time):

- x: the follower-weighted bullish share of the minute's sentiment updates (0-100 %, weights as
  in :mod:`domain.sentiment`);
- y: the minute's price return, close_m / close_prev − 1, close_prev being the close of the
  latest earlier minute with a price.

A minute becomes a point once both values are final: its return is known when its close arrives,
its sentiment when an update of a later minute arrives (the sentiment watermark passed it). A
minute that ends up with only one of the two is dropped, at the latest when its series is an hour
further on (so one series without the other keeps at most an hour of pending values). Points older than 1 hour behind the
newest point leave the window.

Pearson's r is kept with running sums, updated in O(1) per point added or removed:

    r = (n·Σxy − Σx·Σy) / sqrt((n·Σx² − (Σx)²)(n·Σy² − (Σy)²))

over values shifted by the window's first point (the "shifted data" algorithm; Chan, Golub and
LeVeque, "Algorithms for computing the sample variance", 1983), which keeps the cancellation in
n·Σx² − (Σx)² small. The sums restart from zero whenever the window empties, so rounding cannot
build up across windows.

State is a plain JSON dict so a Faust table can hold it and the backtester can reuse the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from domain.sentiment import BUCKET_MS, weight

WINDOW_MS = 60 * BUCKET_MS


def new_state() -> dict:
    """``s``: pending sentiment buckets {minute: [Σw, Σw·bullish]}; ``s_wm``: latest update time;
    ``ret``: pending returns {minute: return}; ``last``: [minute, close] of the latest price;
    ``pts``: points in the window {minute: [x, y]}; ``sums``: [n, kx, ky, Σx, Σy, Σx², Σy², Σxy]
    (shifted by kx, ky); ``share``: the latest complete minute's bullish share."""
    return {"s": {}, "s_wm": 0, "ret": {}, "last": None, "pts": {}, "sums": [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "share": None}


def _minute(ts_ms: int) -> int:
    return ts_ms - ts_ms % BUCKET_MS


def _push(sums: list, x: float, y: float) -> None:
    if sums[0] == 0:
        sums[1], sums[2] = x, y
    dx, dy = x - sums[1], y - sums[2]
    sums[0] += 1
    sums[3] += dx
    sums[4] += dy
    sums[5] += dx * dx
    sums[6] += dy * dy
    sums[7] += dx * dy


def _pop(sums: list, x: float, y: float) -> None:
    dx, dy = x - sums[1], y - sums[2]
    sums[0] -= 1
    if sums[0] == 0:
        sums[1:] = [0.0] * 7
        return
    sums[3] -= dx
    sums[4] -= dy
    sums[5] -= dx * dx
    sums[6] -= dy * dy
    sums[7] -= dx * dy


def pearson(sums: list) -> float | None:
    """r from the running sums; None with fewer than 3 points or a constant series."""
    n, _, _, sx, sy, sxx, syy, sxy = sums
    if n < 3:
        return None
    vx = n * sxx - sx * sx
    vy = n * syy - sy * sy
    if vx <= 0 or vy <= 0:
        return None
    return max(-1.0, min(1.0, (n * sxy - sx * sy) / math.sqrt(vx * vy)))


@dataclass(slots=True)
class Point:
    minute: int  # bucket start, ms
    r: float | None
    points: int
    bullish_pct: float  # the point's sentiment share


def add_sentiment(state: dict, ts_ms: int, bullish_pct: float, followers: int, confidence: float) -> list[Point]:
    """Fold a sentiment update in; returns the points it completed (oldest first)."""
    m = _minute(ts_ms)
    if m <= _minute(state["s_wm"]) - WINDOW_MS:
        return []  # older than the window
    w = weight(followers, confidence)
    if w > 0:
        acc = state["s"].setdefault(str(m), [0.0, 0.0])
        acc[0] += w
        acc[1] += w * bullish_pct
    state["s_wm"] = max(state["s_wm"], ts_ms)
    for key in [k for k in state["s"] if int(k) <= _minute(state["s_wm"]) - WINDOW_MS]:
        del state["s"][key]  # likewise for sentiment without prices
    return _pair(state)


def add_close(state: dict, minute_ms: int, close: float) -> list[Point]:
    """Fold the close of a finished minute in (minutes must arrive in order; a repeated or older
    minute is ignored); returns the points it completed."""
    last = state["last"]
    if last is not None and minute_ms <= last[0]:
        return []
    if last is not None and last[1] > 0:
        state["ret"][str(minute_ms)] = close / last[1] - 1.0
    state["last"] = [minute_ms, close]
    # a return an hour behind the latest close can no longer enter the window: without sentiment
    # for its minute it would wait (and be sorted on every close) forever
    ret = state["ret"]
    while ret:  # keys were added in minute order
        oldest = next(iter(ret))
        if int(oldest) > minute_ms - WINDOW_MS:
            break
        del ret[oldest]
    return _pair(state)


def _pair(state: dict) -> list[Point]:
    if not state["s"] or not state["ret"]:
        return []  # a point needs both
    s_done = _minute(state["s_wm"])  # sentiment of minutes before this one is final
    p_done = state["last"][0] if state["last"] else None  # returns up to this minute are known
    out: list[Point] = []
    for key in sorted(set(state["s"]) | set(state["ret"]), key=int):
        m = int(key)
        if m >= s_done or p_done is None or m > p_done:
            break  # not final yet (minutes are sorted, so later ones are not either)
        acc = state["s"].pop(key, None)
        ret = state["ret"].pop(key, None)
        if acc is None or ret is None or acc[0] <= 0:
            continue  # only one side had data this minute
        x = acc[1] / acc[0]
        state["pts"][key] = [x, ret]
        _push(state["sums"], x, ret)
        for old in [k for k in state["pts"] if int(k) <= m - WINDOW_MS]:
            _pop(state["sums"], *state["pts"].pop(old))
        state["share"] = x
        out.append(Point(m, pearson(state["sums"]), int(state["sums"][0]), x))
    return out


def implied_action(r: float, bullish_pct: float) -> str | None:
    """The trade the correlation points to: sentiment above 50 % with r > 0 (or below with r < 0)
    suggests BUY, the mirror cases SELL."""
    lean = bullish_pct - 50.0
    if lean == 0 or r == 0:
        return None
    return "BUY" if (lean > 0) == (r > 0) else "SELL"
