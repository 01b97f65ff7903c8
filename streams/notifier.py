"""Discord notifier of ``risk.alerts`` (when DISCORD_WEBHOOK_URL is set), fed by the ``halt``
agent (:mod:`streams.risk`), the topic's one reader.

``risk.critical`` and ``risk.cascade_detected`` are sent at once, ``risk.alert`` batched within
DISCORD_BATCH_SECONDS (≤ 5 s); see :mod:`notify.discord`. ``risk.ok`` and constraint violations
are not notified (they are on the dashboard and in the event store).
"""

from __future__ import annotations

from app.main import settings

NOTIFIED = ("risk.critical", "risk.cascade_detected", "risk.alert")
_notifier: dict = {"n": None}


async def notifier():
    """The started :class:`notify.discord.DiscordNotifier`, or ``None`` without a webhook URL."""
    if settings.discord_webhook_url is None:
        return None
    if _notifier["n"] is None:
        # Imported here: notify.discord uses core.metrics, whose package imports the agents.
        from notify.discord import DiscordNotifier

        n = DiscordNotifier(settings.discord_webhook_url.get_secret_value(), settings.discord_batch_seconds)
        await n.start()
        _notifier["n"] = n
    return _notifier["n"]
