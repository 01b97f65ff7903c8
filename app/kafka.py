"""Faust parts adjusted for this app: a worker's first start cannot hang on a topic it has just
created (``docs/architecture.md``, "A worker's first start"), and its consumer does not sit on a
drained partition (:class:`App`), nor reads a partition it kept through a rebalance from
anywhere but its committed offset (:class:`SeekBeforeResume`), and its producer is idempotent
(:class:`_Producer`).

* :class:`Topic` returns from ``declare()`` only once every broker's metadata lists the topic.
  Faust creates its internal topics (table changelogs, the assignor's leader topic) right before
  the consumer subscribes; the broker acknowledges a CreateTopics request once its controller has
  committed the topic, which can be a few milliseconds before the broker's own metadata cache
  shows it, so the group's first assignment could be computed without it.
* :class:`PartitionAssignor` assigns what it can when a global table's changelog is missing from
  the metadata anyway (several brokers, a deleted topic), instead of raising ``KeyError`` inside
  the group coordinator, which left the worker joined to nothing and never ready. The consumer's
  next metadata refresh (``consumer_metadata_max_age_ms``) sees the topic appear and rejoins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

import faust
from aiokafka.protocol.metadata import MetadataRequest
from faust import transport
from faust.assignor import PartitionAssignor as FaustPartitionAssignor
from faust.transport.consumer import ensure_TPset
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("moondev")

#: How long ``declare()`` waits for a created topic to show in every broker's metadata (seconds).
TOPIC_VISIBLE_TIMEOUT_S = 30.0


async def wait_until_listed(client, topics: Iterable[str], timeout: float = TOPIC_VISIBLE_TIMEOUT_S) -> None:
    """Wait until every broker the aiokafka ``client`` knows answers a Metadata request with all
    ``topics``, each partition with a leader. The request does not allow auto-creation, so a topic
    nobody created is not made behind the caller's back.

    Raises ``TimeoutError`` after ``timeout`` seconds, naming the topics still missing."""
    names = sorted(set(topics))
    if not names:
        return
    request = MetadataRequest(names, allow_auto_topic_creation=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        missing: set[str] = set()
        for node_id in [b.nodeId for b in client.cluster.brokers()] or ["bootstrap"]:
            response = await client.send(node_id, request)
            missing |= set(names) - _listed(response)
        if not missing:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics not in the brokers' metadata after {timeout} s: {sorted(missing)}")
        await asyncio.sleep(0.05)


def _listed(response) -> set[str]:
    """Topics of a Metadata response that exist and have a leader for every partition."""
    listed = set()
    for topic_data in response.topics:
        if response.API_VERSION == 0:
            error_code, topic, partitions = topic_data
        else:
            error_code, topic, _internal, partitions = topic_data
        if error_code == 0 and partitions and all(p[2] != -1 for p in partitions):
            listed.add(topic)
    return listed


class Topic(faust.Topic):
    """``faust.Topic`` whose ``declare()`` also waits until the brokers list the topic."""

    async def declare(self) -> None:
        await super().declare()
        if self.app.conf.topic_allow_declare:
            producer = await self._get_producer()
            # The aiokafka client Faust's producer created the topic with.
            await wait_until_listed(producer._ensure_producer().client, self.topics)


class PartitionAssignor(FaustPartitionAssignor):
    """Faust's assignor, but a global table whose changelog the metadata does not list yet gets no
    partitions in this generation instead of failing the whole assignment."""

    def _global_table_standby_assignments(self, assignments, partitions_by_topic: Mapping[str, int]):
        missing = {table._changelog_topic_name() for table in self._table_manager.data.values()
                   if table.is_global and table._changelog_topic_name() not in partitions_by_topic}
        if not missing:
            return super()._global_table_standby_assignments(assignments, partitions_by_topic)
        log.warning("assignment without global table changelogs missing from the metadata: %s; the group "
                    "rejoins when the metadata lists them", sorted(missing))
        assignments = super()._global_table_standby_assignments(
            assignments, {**partitions_by_topic, **dict.fromkeys(missing, 0)})
        for assignment in assignments.values():
            for topic in missing:
                assignment.actives.pop(topic, None)
                assignment.standbys.pop(topic, None)
        return assignments


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes 1,500 ms and offers no setting; the aiokafka consumer reads this
        # attribute when it starts its fetcher.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class SeekBeforeResume:
    """Consumer mixin: during a rebalance, a stream partition is resumed only once it has been
    sought to its committed offset.

    Faust's recovery resumes the flow of messages while it reads the changelogs, then resumes the
    stream partitions and only then seeks them to their committed offsets
    (``Recovery.on_recovery_completed``, ``_resume_streams``). A partition this worker kept through
    the rebalance still has aiokafka's fetch position from before it, past the committed offset;
    records fetched from there in between reach the agents under the new generation, and the seek
    then delivers them again. A tick counted twice in an open bar changed an order-flow vote; a
    signal decided before the earlier ones replayed closed a consensus window without them (a
    rolling restart ended one run in four with another portfolio). Holding the resume until
    :meth:`perform_seek` makes every partition start at its committed offset, as on a fresh
    assignment."""

    _resume_after_seek: frozenset = frozenset()

    def resume_partitions(self, tps) -> None:
        tps = ensure_TPset(tps)
        if self.app.rebalancing:
            held = {tp for tp in tps if not self._is_changelog_tp(tp)}
            if held:
                self._resume_after_seek = self._resume_after_seek | held
                tps = tps - held
        super().resume_partitions(tps)

    async def perform_seek(self) -> None:
        try:
            await super().perform_seek()
        finally:
            held, self._resume_after_seek = self._resume_after_seek, frozenset()
            if held:
                super().resume_partitions(held & ensure_TPset(self.assignment()))


class _Consumer(SeekBeforeResume, faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Producer(faust_aiokafka.Producer):
    def _settings_extra(self):
        # An idempotent producer (Kafka's KIP-98: sequence numbers per partition) keeps a
        # partition's messages in order and once through its retries. Without it, a broker outage
        # mid-feed let a retried batch land twice or behind a later one: a bar closed on another
        # tick and fills came out cents apart from the run without the outage.
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class App(faust.App):
    """``faust.App`` whose worker consumer asks the broker to hold an empty fetch at most
    ``fetch_max_wait_ms`` (ms; Faust's own: 1,500).

    Why it matters: aiokafka sends one fetch per broker at a time, and leaves out the partitions
    that still hold unread records. A fetch sent while the tick partition's records were being
    processed covers only idle partitions, and the broker holds it for the whole wait; the tick
    partition, drained meanwhile, is fetched again only after it. With 1,500 ms a live tick
    stream stalled for up to 1.5 s at a time (force-close p99 26 s at 1,000 ticks/s while the
    worker used under half a core). The cost of a short wait is the empty fetches of an idle
    worker: about ``1000 / fetch_max_wait_ms`` a second."""

    def __init__(self, *args, fetch_max_wait_ms: int = 10, **kwargs) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self):
        cls = transport.by_url(self.conf.broker_consumer[0])
        if cls is faust_aiokafka.Transport:
            cls = _Transport
        return cls(self.conf.broker_consumer, self)
