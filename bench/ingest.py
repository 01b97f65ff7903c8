"""Ingest benchmark: ``faust -A app ingest binance`` (a real subprocess, the real local Kafka
broker) against a local server replaying real Binance trade frames (``../shared/data/binance/raw``,
both recordings' ``trade`` frames, repeated with shifted trade ids to make a long feed).

Two runs:
1. **paced** at ``--rate`` frames/s (1,000 by default) for ``--seconds``: the p50/p99 time from a
   frame's receipt by the adapter to the broker's acknowledgement of its tick;
2. **max**: the server sends as fast as the adapter reads; frames/s sustained into Kafka (first
   frame received → last acknowledgement), with the same latency figures.

    python bench/ingest.py [--rate 1000] [--seconds 10] [--frames 60000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.local import FAUST, Stack  # noqa: E402
from tests.servers.exchange_ws import FakeExchangeWS, binance_raw  # noqa: E402


def trade_frames(n: int) -> list[str]:
    base = [f for name in ("examples_spot_btcusdt_20240808.gz", "examples_usdm_ethusdt_20240718.gz")
            for f in binance_raw(name) if '"e":"trade"' in f]
    base = [json.loads(f) for f in base]
    for m in base:  # one symbol stream, so every frame is subscribed
        m["stream"], m["data"]["s"] = "btcusdt@trade", "BTCUSDT"
    out = []
    rep = 0
    while len(out) < n:
        for m in base:
            d = dict(m["data"], t=m["data"]["t"] + rep * 10_000_000_000)
            out.append(json.dumps({"stream": m["stream"], "data": d}, separators=(",", ":")))
        rep += 1
    return out[:n]


async def run(frames: list[str], rate: float | None, tmp: Path, seconds: float) -> str:
    server = FakeExchangeWS("binance", frames, rate=rate)
    url = await server.start()
    stack = Stack(tmp, INGEST_STALE_SECONDS="120")
    proc = await asyncio.create_subprocess_exec(
        FAUST, "-A", "app", "ingest", "binance", "--symbols", "BTCUSDT", "--url", url, "--max-seconds", str(seconds),
        cwd=ROOT, env=stack.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    await server.stop()
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if "frame -> broker ack" in ln), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(text[-3000:])
    return re.sub(r"^.*?binance: ", "", line.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=60_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moondev-bench-ingest-"))
    paced = trade_frames(int(args.rate * args.seconds))
    print(f"paced {args.rate:g} frames/s, {len(paced)} frames: "
          f"{asyncio.run(run(paced, args.rate, tmp / 'paced', args.seconds + 8))}", flush=True)
    frames = trade_frames(args.frames)
    print(f"max speed, {len(frames)} frames: {asyncio.run(run(frames, None, tmp / 'max', 30))}", flush=True)


if __name__ == "__main__":
    main()
