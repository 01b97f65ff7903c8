"""Follower-weighted sentiment over sliding event-time windows (the sentiment agent).

Updates are folded into 1-minute buckets (event time) of ``[Σw, Σw·bullish_pct, n, Σconfidence]``;
the 5 min, 30 min and 1 h windows are the sums of the last 5, 30 and 60 buckets ending at the
current bucket, i.e. hopping windows with a 1-minute hop. Each update's weight is

    w = confidence × (1 + log10(1 + followers))

so a post from a large account counts more, with diminishing returns (one celebrity account does
not own the window). The bullish share of a window is Σw·bullish_pct / Σw (0-100 %), and the
velocity is the 5-minute share minus the 1-hour share (percentage points): positive when
sentiment is turning bullish faster than its hourly norm.

Pure functions over plain dicts, so the state is JSON for a Faust table and the backtester can
reuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BUCKET_MS = 60_000
#: window name -> buckets (minutes)
WINDOWS = {"5m": 5, "30m": 30, "1h": 60}


def weight(followers: int, confidence: float) -> float:
    return confidence * (1.0 + math.log10(1.0 + max(0, followers)))


def bucket_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % BUCKET_MS


def new_state() -> dict:
    """``buckets``: {bucket start ms (str): [Σw, Σw·bullish, n, Σconfidence]}; ``watermark``: the
    latest update time seen (ms); ``signalled``: the bucket of the last signal."""
    return {"buckets": {}, "watermark": 0, "signalled": None}


def add(state: dict, ts_ms: int, bullish_pct: float, followers: int, confidence: float) -> bool:
    """Fold one update into ``state``. Returns False (and changes nothing) for an update older
    than the 1-hour window behind the watermark."""
    b = bucket_of(ts_ms)
    if b <= bucket_of(state["watermark"]) - WINDOWS["1h"] * BUCKET_MS:
        return False
    w = weight(followers, confidence)
    acc = state["buckets"].setdefault(str(b), [0.0, 0.0, 0, 0.0])
    acc[0] += w
    acc[1] += w * bullish_pct
    acc[2] += 1
    acc[3] += confidence
    if ts_ms > state["watermark"]:
        state["watermark"] = ts_ms
        oldest = bucket_of(ts_ms) - (WINDOWS["1h"] - 1) * BUCKET_MS
        for key in [k for k in state["buckets"] if int(k) < oldest]:
            del state["buckets"][key]
    return True


@dataclass(slots=True)
class WindowStats:
    bullish_pct: float | None  # follower-weighted bullish share, 0-100 (None: no updates)
    updates: int
    weight: float
    mean_confidence: float | None


def windows(state: dict) -> dict[str, WindowStats]:
    """Stats of the 5m, 30m and 1h windows ending at the watermark's bucket."""
    end = bucket_of(state["watermark"])
    out = {}
    for name, n in WINDOWS.items():
        sw = swb = conf = 0.0
        cnt = 0
        for k, (w, wb, c, cs) in state["buckets"].items():
            if end - int(k) < n * BUCKET_MS:
                sw += w
                swb += wb
                cnt += c
                conf += cs
        out[name] = WindowStats(swb / sw if sw > 0 else None, cnt, sw, conf / cnt if cnt else None)
    return out


def velocity(stats: dict[str, WindowStats]) -> float | None:
    """5-minute share minus 1-hour share, percentage points."""
    cur, hour = stats["5m"].bullish_pct, stats["1h"].bullish_pct
    return None if cur is None or hour is None else cur - hour


@dataclass(slots=True)
class SentimentSignal:
    action: str  # BUY | SELL
    score: float  # 0-100
    confidence: float  # 0-1
    reasons: list[str]


def evaluate(stats: dict[str, WindowStats], bullish_pct: float, velocity_pp: float, min_updates: int
             ) -> SentimentSignal | None:
    """BUY when the 5-minute share is at least ``bullish_pct`` and the velocity at least
    ``velocity_pp``; SELL when the share is at most ``100 - bullish_pct`` and the velocity at most
    ``-velocity_pp``; otherwise None.

    score = min(100, 2·|share − 50| + 2·|velocity|); confidence = mean update confidence ×
    min(1, updates / ``min_updates``), so a thin window carries less weight in the consensus.
    """
    cur = stats["5m"]
    vel = velocity(stats)
    if cur.bullish_pct is None or vel is None:
        return None
    share = cur.bullish_pct
    if share >= bullish_pct and vel >= velocity_pp:
        action = "BUY"
    elif share <= 100.0 - bullish_pct and vel <= -velocity_pp:
        action = "SELL"
    else:
        return None
    score = min(100.0, 2 * abs(share - 50.0) + 2 * abs(vel))
    conf = (cur.mean_confidence or 0.0) * min(1.0, cur.updates / min_updates)
    reasons = [f"5m bullish share {share:.1f}% over {cur.updates} updates",
               f"velocity {vel:+.1f} pp vs 1h share {stats['1h'].bullish_pct:.1f}%"]
    return SentimentSignal(action, round(score, 2), round(min(1.0, conf), 4), reasons)
