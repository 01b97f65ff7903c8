"""The Discord notifier against a local webhook server: immediacy, batching, 429 handling, and the
webhook URL (which holds its secret token) never appearing in the logs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from models.events import RiskEvent, new_event_id
from notify.discord import DiscordNotifier
from tests.servers.discord import FakeDiscord


def risk_event(kind="risk.alert", severity="WARNING", i=0):
    return RiskEvent(event_id=new_event_id(), event_type=kind, timestamp=1_723_161_280_000 + i, token="BTC",
                     source="risk", account="paper", severity=severity, violation_type="max_leverage",
                     action_required="reduce exposure", metrics={"leverage": 3.5 + i, "equity": 100_000.0})


@pytest.fixture
async def discord():
    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()


async def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_critical_goes_at_once_and_warnings_are_batched(discord):
    n = DiscordNotifier(discord.url, batch_seconds=1.5)
    await n.start()
    for i in range(3):
        n.notify(risk_event(i=i))
    n.notify(risk_event("risk.critical", "CRITICAL"))
    await wait_for(lambda: len(discord.received) == 2)
    await n.stop()
    (t_crit, crit), (t_batch, batch) = discord.received
    assert [e["title"].split(" · ")[0] for e in crit["embeds"]] == ["risk.critical"]
    assert len(batch["embeds"]) == 3 and batch["content"].endswith("3 risk event(s)")
    assert t_batch - t_crit > 0.5  # the warnings waited for their batch window, the critical did not
    assert crit["allowed_mentions"] == {"parse": []}
    assert {f["name"] for f in batch["embeds"][0]["fields"]} == {"leverage", "equity"}


async def test_more_than_ten_warnings_split_into_messages_of_ten(discord):
    n = DiscordNotifier(discord.url, batch_seconds=0.5)
    await n.start()
    for i in range(23):
        n.notify(risk_event(i=i))
    await wait_for(lambda: sum(len(b["embeds"]) for _, b in discord.received) == 23)
    await n.stop()
    assert [len(b["embeds"]) for _, b in discord.received] == [10, 10, 3]


async def test_rate_limit_429_is_waited_out_and_the_message_delivered_once(discord, caplog):
    discord.rate_limit_next, discord.retry_after = 2, 0.25
    n = DiscordNotifier(discord.url, batch_seconds=0.2)
    await n.start()
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        n.notify(risk_event("risk.cascade_detected", "CRITICAL"))
        await wait_for(lambda: len(discord.received) == 1)
        await n.stop()
    assert discord.attempts == 3 and len(discord.received) == 1
    assert discord.received[0][0] - t0 >= 0.5  # two retry_after waits
    assert "s3cr3t-t0ken" not in caplog.text and "rate limit" in caplog.text


async def test_server_errors_are_retried_and_the_url_is_never_logged(discord, caplog):
    discord.fail_next = 2
    n = DiscordNotifier(discord.url, batch_seconds=0.2)
    await n.start()
    with caplog.at_level(logging.DEBUG):
        n.notify(risk_event("risk.critical", "CRITICAL"))
        await wait_for(lambda: len(discord.received) == 1)
        await n.stop()
        # unreachable webhook: retried, then dropped, still without the URL in the logs
        down = DiscordNotifier(discord.url.replace(discord.url.split(":")[2].split("/")[0], "1"),
                               batch_seconds=0.1, max_attempts=2)
        await down.start()
        down.notify(risk_event("risk.critical", "CRITICAL"))
        await asyncio.sleep(1.0)
        await down.stop()
    assert "s3cr3t-t0ken" not in caplog.text and "/api/webhooks" not in caplog.text
    assert "unreachable" in caplog.text
    assert "s3cr3t" not in repr(n)


@pytest.mark.parametrize("retry_after", ["soon", 1e9, float("nan"), -5])
async def test_a_hostile_rate_limit_answer_neither_kills_nor_stalls_the_notifier(discord, retry_after):
    """A 429 whose ``retry_after`` and headers are not numbers, are absurdly long, NaN or
    negative: the wait is bounded (``max_wait_seconds``) and the message still goes out."""
    from core.metrics import BOUNDS_HIT

    capped = BOUNDS_HIT.labels("discord_wait")._value.get()
    discord.rate_limit_next, discord.retry_after = 1, retry_after
    n = DiscordNotifier(discord.url, batch_seconds=0.1, max_wait_seconds=0.3)
    await n.start()
    t0 = time.monotonic()
    n.notify(risk_event("risk.critical", "CRITICAL"))
    await wait_for(lambda: len(discord.received) == 1, timeout=5.0)
    n.notify(risk_event("risk.critical", "CRITICAL", i=1))  # the task is still alive
    await wait_for(lambda: len(discord.received) == 2, timeout=5.0)
    await n.stop()
    assert discord.received[0][0] - t0 < 2.0
    if retry_after == 1e9:
        assert BOUNDS_HIT.labels("discord_wait")._value.get() > capped, "the cap counted"
