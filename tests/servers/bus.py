"""A client of the real local Kafka broker for black-box tests: produces wire JSON to a run's
topics and collects what its worker emits."""

from __future__ import annotations

import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


class Bus:
    """Produces wire JSON to the run's topics and collects what the worker emits."""

    def __init__(self, prefix: str, topics: tuple[str, ...]):
        self.prefix = prefix
        self.topics = topics
        self.seen: list[dict] = []

    async def __aenter__(self):
        self.producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(*(self.prefix + t for t in self.topics), bootstrap_servers="127.0.0.1:9092",
                                         auto_offset_reset="earliest", group_id=None)
        await self.consumer.start()
        self.task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await self.consumer.stop()
        await self.producer.stop()

    async def _collect(self):
        async for msg in self.consumer:
            self.seen.append(json.loads(msg.value))

    async def send(self, topic: str, key: str, value: dict):
        await self.producer.send_and_wait(self.prefix + topic, json.dumps(value).encode(), key=key.encode())

    def of(self, kind: str, **match) -> list[dict]:
        return [e for e in self.seen if e["event_type"] == kind and all(e.get(k) == v for k, v in match.items())]

    async def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; seen: "
                             f"{[(e['event_type'], e.get('account'), e.get('token')) for e in self.seen]}")
