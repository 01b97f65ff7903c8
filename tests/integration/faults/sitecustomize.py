"""Fault injection for a worker started with this folder on ``PYTHONPATH`` (tests only).

``FAULT_LATE_TOPIC_SUFFIX``: topics whose name ends with it are created ``FAULT_LATE_TOPIC_DELAY_S``
seconds after Faust asked for them, and ``app.kafka`` does not wait for them to be listed: the
group's first assignment misses them, as when a broker's metadata lags its controller.
"""

import asyncio
import os
import sys

_SUFFIX = os.environ.get("FAULT_LATE_TOPIC_SUFFIX")

# Only in the worker itself (not in its event-store sink process, which inherits PYTHONPATH).
if _SUFFIX and sys.argv[0].endswith("faust") and "worker" in sys.argv:
    import faust.transport.drivers.aiokafka as _driver

    import app.kafka as _app_kafka

    _create = _driver.Transport._really_create_topic
    _wait = _app_kafka.wait_until_listed
    _delay = float(os.environ.get("FAULT_LATE_TOPIC_DELAY_S", "3"))
    _late: set = set()

    async def _late_create(self, owner, client, topic, *args, **kwargs):
        if not topic.endswith(_SUFFIX):
            return await _create(self, owner, client, topic, *args, **kwargs)
        if topic not in _late:
            _late.add(topic)

            async def later():
                await asyncio.sleep(_delay)
                await _create(self, owner, client, topic, *args, **kwargs)

            asyncio.ensure_future(later())

    async def _wait_except_late(client, topics, *args, **kwargs):
        await _wait(client, [t for t in topics if not t.endswith(_SUFFIX)], *args, **kwargs)

    _driver.Transport._really_create_topic = _late_create
    _app_kafka.wait_until_listed = _wait_except_late
