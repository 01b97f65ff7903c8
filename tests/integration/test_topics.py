"""Topics as production needs them: a worker creates the catalogue topics and its changelogs
itself with the configured replication factor, ``min.insync.replicas`` and per-topic retention,
read back from the real broker's topic configs. (One broker here, so the factor stays 1; the
compose file and the Kubernetes config set 3 and 2, checked in tests/unit/test_deploy.py.)"""

from __future__ import annotations

import json

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.local import Stack


def _topic_configs(stack: Stack, topics: list[str]) -> dict[str, dict[str, tuple[str, bool]]]:
    """topic -> config name -> (value, set on the topic rather than a broker default)."""
    out: dict = {}

    async def describe(admin) -> None:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        for response in responses:
            for resource in response.resources:
                error, _, _, name, entries = resource[:5]
                assert error == 0, (name, resource)
                # entries: (name, value, read_only, config_source, is_sensitive, synonyms); source 1 = topic
                out[name] = {e[0]: (e[1], e[3] == 1) for e in entries}

    stack._admin(describe)
    return out


def test_a_worker_creates_its_topics_with_the_configured_retention_and_min_insync(tmp_path, database_url):
    stack = Stack(tmp_path, database_url, TOPIC_REPLICATION_FACTOR="1", TOPIC_MIN_INSYNC_REPLICAS="1",
                  TOPIC_RETENTION_HOURS=json.dumps({"price.ticks": 2, "trade.executed": 720}))
    stack.topics_declared = True  # nothing created beforehand: the worker declares every topic, as in production
    try:
        stack.worker("w1").start(wait=180)
        prefix, app_id = stack.env["TOPIC_PREFIX"], stack.env["APP_ID"]
        ticks, fills, orders = prefix + "price.ticks", prefix + "trade.executed", prefix + "orders"
        changelog = f"{app_id}-portfolio-changelog"
        configs = _topic_configs(stack, [ticks, fills, orders, changelog])
        assert configs[ticks]["retention.ms"] == (str(2 * 3_600_000), True)
        assert configs[fills]["retention.ms"] == (str(720 * 3_600_000), True)
        assert configs[orders]["retention.ms"] == (str(7 * 24 * 3_600_000), True)  # the catalogue's
        for topic in (ticks, fills, orders, changelog):
            assert configs[topic]["min.insync.replicas"] == ("1", True), topic
        assert configs[changelog]["cleanup.policy"][0] == "compact"
    finally:
        stack.stop()
