"""Risk and execution black-box through the real Kafka broker: events in wire JSON go into the
topics of a running worker, and what comes out of its topics is checked.

(a) fills that build a 5× BTC long, then ticks that bring the price within 10 % of liquidation →
    ``risk.critical``, a ``trade.force_close``, reduce-only closing fills, ``position.closed``, and a
    flat position in the portfolio view; the worker owns the account, so the engine closes the
    position in the tick's own step, and the request read back from ``orders`` adds nothing;
(b) an approval that would breach MAX_LEVERAGE → ``trade.rejected`` and
    ``risk.constraint_violation`` with the reason;
(c) the same approval sent twice → one order.

Approvals go in where the consensus agent sends those for an account it does not own: the
engine's input ``execution.requests``, keyed by the account.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from app.local import Stack
from tests.servers.bus import Bus

T0 = 1_723_161_280_000
OUT_TOPICS = ("orders", "trade.executed", "risk.alerts")


def event(kind: str, **fields) -> dict:
    return {"event_id": str(uuid.uuid4()), "event_type": kind, "source": "test", **fields}


def approval(token: str, price: float, ts: int, strategy: str | None = None) -> dict:
    e = event("trade.consensus_approved", timestamp=ts, token=token, consensus_score=85.0,
              contributing_agents=["sentiment", "trading.rules"], recommended_action="BUY",
              window_start=ts - ts % 5000, window_end=ts - ts % 5000 + 5000, price=price)
    if strategy:
        e["strategy"] = strategy
    return e


@pytest.fixture(scope="module")
def worker(tmp_path_factory, database_url):
    stack = Stack(tmp_path_factory.mktemp("risk"), database_url,
                  SIZING=json.dumps({"big": {"method": "fixed", "fraction": 5.0}}),
                  MAX_POSITION_NOTIONAL_USD="1000000000", MAX_LEVERAGE="3", ACCOUNTS=json.dumps(["acct-fc"]))
    w = stack.worker("w1").start()
    yield stack, w
    stack.stop()


def test_force_close_before_liquidation_and_constraints(worker):
    stack, w = worker
    prefix = stack.env["TOPIC_PREFIX"]

    async def scenario():
        async with Bus(prefix, OUT_TOPICS) as bus:
            # (c) the same approval twice -> one order
            dup = approval("ETH", 2_500.0, T0)
            await bus.send("execution.requests", "paper", dup)
            await bus.send("execution.requests", "paper", dup)
            # (b) 5x equity in SOL would take gross leverage past 3
            big = approval("SOL", 150.0, T0 + 1000, strategy="big")
            await bus.send("execution.requests", "paper", big)
            await bus.wait(lambda: bus.of("trade.rejected", token="SOL") and bus.of("trade.executed", token="ETH"),
                           60, "the ETH fill and the SOL rejection")

            # (a) a 5x long: 10 BTC at 50,000 on 100,000 USD of equity, liquidation at 40,506.33
            fill = event("trade.executed", timestamp=T0 + 2000, token="BTC", account="acct-fc", order_id="ext-1",
                         client_order_id="0x" + uuid.uuid4().hex, side="BUY", fill_price=50_000.0,
                         filled_amount=10.0, fee=0.0)
            await bus.send("trade.executed", "acct-fc", fill)
            await bus.wait(lambda: (w.get("/portfolio/acct-fc/").get("positions") or {}).get("BTC"), 60,
                           "the 5x position in the portfolio")
            time.sleep(0.2)  # let the exposures snapshot cache expire
            for i, px in enumerate([50_000.0, 47_000.0, 45_000.0, 44_950.0]):
                tick = event("price.tick", timestamp=T0 + 3000 + 100 * i, token="BTC", price=px,
                             ingest_ms=int(time.time() * 1000))
                await bus.send("price.ticks", "BTC", tick)
            await bus.wait(lambda: bus.of("position.closed", account="acct-fc"), 60, "the force-close")
            await asyncio.sleep(1.0)  # anything duplicated would arrive by now
            return bus.seen[:], bus

    seen, bus = asyncio.run(scenario())

    # one order: the second approval gets the first one's outcome again, the same events, ids included
    placed, fills = bus.of("trade.placed", token="ETH"), bus.of("trade.executed", token="ETH")
    assert len(placed) == len(fills) == 2 and placed[0] == placed[1] and fills[0] == fills[1]

    (rej,) = bus.of("trade.rejected", token="SOL")
    assert "leverage after trade" in rej["reason"]
    (viol,) = [v for v in bus.of("risk.constraint_violation") if v["token"] == "SOL"]
    assert viol["violation_type"] == "max_leverage" and viol["metrics"]["leverage_after"] > 3

    (crit,) = bus.of("risk.critical", account="acct-fc")
    assert crit["metrics"]["liquidation_price"] == pytest.approx(40_506.33, abs=0.01)
    assert crit["metrics"]["distance_pct"] < 10 and crit["metrics"]["mark_price"] == 45_000.0
    (fc,) = bus.of("trade.force_close", account="acct-fc")
    assert fc["reduce_only"] and fc["side"] == "SELL" and fc["size"] == 10.0
    closing = [f for f in bus.of("trade.executed", account="acct-fc") if f["side"] == "SELL"]
    assert sum(f["filled_amount"] for f in closing) == pytest.approx(10.0)
    assert all(f["reduce_only"] and f["client_order_id"] == fc["client_order_id"] for f in closing)
    (closed,) = bus.of("position.closed", account="acct-fc")
    assert closed["size"] == 10.0 and closed["entry_price"] == 50_000.0
    view = w.get("/portfolio/acct-fc/")
    assert view["positions"] == {}
    # closed in the tick's step, once: one placed order for the request (the engine's second look,
    # at the request read back from orders, places nothing)
    assert len(bus.of("trade.placed", account="acct-fc", client_order_id=fc["client_order_id"])) == 1
    assert w.metrics().get('moondev_processing_seconds_count{agent="execution.force_close_now"}', 0) == 1
    # the leverage alert of the 5x position halted trading; it stays visible as a risk.alert
    assert [a for a in bus.of("risk.alert", account="acct-fc") if a["violation_type"] == "max_leverage"]
