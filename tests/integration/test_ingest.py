"""``faust -A app ingest binance`` against a local server replaying the real Binance recording,
into the real Kafka broker: every trade lands in ``price.ticks`` once (across a forced
disconnect with resent frames), and a garbage frame lands in ``dead.letters`` with the raw
frame."""

from __future__ import annotations

import asyncio
import json
import sys

from app.local import FAUST, ROOT, Stack
from backtest.runner import read_topics
from tests.servers.exchange_ws import DATA, FakeExchangeWS, binance_raw


async def test_ingest_command_publishes_every_trade_once(tmp_path):
    assert DATA.exists(), "../shared/data is needed"
    frames = binance_raw("examples_usdm_ethusdt_20240718.gz")[:4000]
    trade_ids = [json.loads(f)["data"]["t"] for f in frames if '"e":"trade"' in f]
    server = FakeExchangeWS("binance", frames, overlap=30)
    server.drop_after = {2000}
    server.garbage_before = {1000}
    url = await server.start()
    stack = Stack(tmp_path, INGEST_STALE_SECONDS="60")  # only the forced drop reconnects
    prefix = stack.env["TOPIC_PREFIX"]
    proc = await asyncio.create_subprocess_exec(
        FAUST, "-A", "app", "ingest", "binance", "--symbols", "ETHUSDT", "--url", url, "--max-seconds", "20",
        cwd=ROOT, env=stack.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await server.stop()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert server.finished.is_set() and server.connections == 2, text[-3000:]
    seen = await read_topics({"bootstrap_servers": "127.0.0.1:9092"}, [prefix + "price.ticks", prefix + "dead.letters"], 3.0)
    ticks = [e for t, e in seen if t.endswith("price.ticks")]
    assert len(ticks) == len({e["event_id"] for e in ticks}) == len(trade_ids)
    assert {e["token"] for e in ticks} == {"ETH"} and all(e["source"] == "binance" for e in ticks)
    (dead,) = [e for t, e in seen if t.endswith("dead.letters")]
    assert dead["raw"] == '{"this is": not json' and dead["topic"] == "ws:binance" and "not JSON" in dead["reason"]
    assert "1 reconnects" in text and "frame -> broker ack p50" in text, text[-2000:]
    print(text.strip().splitlines()[-1], file=sys.stderr)
