"""Faust parts adjusted for this app: a worker's first start cannot hang on a topic it has just
created (``docs/architecture.md``, "A worker's first start"), and its consumer neither sits on a
drained partition nor keeps asking for data when idle (:class:`WaitByFetchFetcher`), nor reads a
partition it kept through a rebalance from anywhere but its committed offset
(:class:`SeekBeforeResume`), nor commits past a message not yet acknowledged
(:class:`CommitBelowUnacked`), and its producer is idempotent (:class:`_Producer`). A step that
runs another agent's processor itself on a record it produced (the consensus on a tick step's
signal, the engine on an approval or a force-close) does so only once that agent has read what its
input held before (:class:`InputOrder`).

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
import bisect
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import faust
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.metadata import MetadataRequest
from faust import transport
from faust.assignor import PartitionAssignor as FaustPartitionAssignor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TPset
from faust.transport.producer import ProducerBuffer
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("moondev")

_GETMANY_CODE = FaustConsumer.getmany.__code__

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


class RawSchema(faust.Schema):
    """``faust.Schema`` that hands over a key or value that is raw (the serializer) and untyped or
    ``bytes`` (the type) as the message's own bytes, or ``None``: what Faust's serializer registry
    returns for it after about ten calls (the raw codec, then a model lookup that leaves bytes
    alone), on every record of every stream. Other keys and values go through the registry."""

    @staticmethod
    def _as_is(typ, serializer, data) -> bool:
        return typ in (None, bytes) and serializer == "raw" and (data is None or type(data) is bytes)

    def loads_key(self, app, message, *, loads=None, serializer=None):
        key = message.key
        if self._as_is(self.key_type, serializer or self.key_serializer or app.serializers.key_serializer, key):
            return key
        return super().loads_key(app, message, loads=loads, serializer=serializer)

    def loads_value(self, app, message, *, loads=None, serializer=None):
        value = message.value
        if self._as_is(self.value_type, serializer or self.value_serializer or app.serializers.value_serializer, value):
            return value
        return super().loads_value(app, message, loads=loads, serializer=serializer)


class _AssignmentWithout:
    """An aiokafka assignment seen without some of its partitions, for the fetch planner
    (``Fetcher._get_actions_per_node`` reads ``tps`` and ``state_value`` only)."""

    __slots__ = ("_assignment", "tps")

    def __init__(self, assignment, left_out: frozenset) -> None:
        self._assignment = assignment
        self.tps = assignment.tps - left_out

    def state_value(self, tp):
        return self._assignment.state_value(tp)


class WaitByFetchFetcher(Fetcher):
    """aiokafka's fetcher, with the broker's hold on an empty fetch (``fetch_max_wait_ms``) chosen
    per fetch: ``whole_wait_ms`` when the fetch covers every partition it can (all but the paused
    ones), ``partial_wait_ms`` when it leaves one out whose records the consumer has not taken yet,
    and at most one fetch that leaves a partition out every ``partial_interval_s`` (s).

    aiokafka keeps one fetch per broker in flight and leaves out of it the partitions whose
    records the consumer has not taken yet. A fetch that leaves such a partition out may find no
    data; the broker then holds it for the wait, and the partition, taken meanwhile, is fetched
    again only after it: the wait must be short (a tick partition stalled for up to 1.5 s at
    Faust's 1,500 ms). A fetch that covers every partition is answered as soon as any of them gets
    a record, so its wait only sets how often an idle worker asks: about ``1000 / wait`` empty
    fetches a second, each built and decoded in Python (an idle worker used 31 % of a core at
    10 ms, 3 % at 500). And while a worker works through a backlog on one partition, aiokafka
    asks for the idle others back to back, a tenth of the worker's time in a profile: the interval
    spaces those out (the whole path went from 1,032 to 1,334 ticks/s at 50 ms), and once the
    consumer has taken the backlogged partition's records the next fetch, covering it again,
    goes at once.

    ``left_out()`` names partitions no fetch asks for (:class:`_ConsumerThread`: the changelog
    partitions Faust has paused, outside a rebalance). Faust pauses a partition only in its own
    books and filters the fetched records; aiokafka kept asking the broker for them. A worker on its
    own named 112 partitions in each fetch, about 70 of them its own tables' paused changelog
    partitions (those written to dropped out once their records sat untaken; the empty ones stayed
    for good). The consumer thread builds and decodes every named partition in Python, holding the
    GIL the agents need: over 72 s of the sample's busiest stretch at 1× it took 5.3 s of CPU with
    them and 3.7 s without, and the broker 6.0 s and 4.6 s."""

    whole_wait_ms = partial_wait_ms = 10
    #: () -> names of topics whose untaken records do not make a fetch partial
    untaken_topics = staticmethod(frozenset)
    #: () -> partitions left out of every fetch
    left_out = staticmethod(frozenset)
    partial_interval_s = 0.0
    _partial_at = 0.0

    def _get_actions_per_node(self, assignment):
        left_out = self.left_out()
        if left_out:
            # aiokafka's own pause would do, but its resume has to run on this thread's loop and
            # every paused partition adds a future to each round's wait
            assignment = _AssignmentWithout(assignment, left_out)
        # Paused partitions (aiokafka's, and those left out above) are in no fetch and do not
        # count: a table's active changelog partitions stay paused for good, and a stream partition
        # resumed at the end of a rebalance waits behind a fetch of the others at most once. Nor
        # do a changelog's untaken records: Faust takes them only while it recovers a table, so
        # those fetched afterwards (the worker's own table writes, when its assignment needed no
        # recovery) stay untaken for good and would keep every fetch partial.
        whole = True
        if self._records:
            untaken = self.untaken_topics()
            for tp, fetched in self._records.items():
                if tp.topic in untaken:
                    # aiokafka fetches nothing more from a broker for up to 100 ms (prefetch
                    # backoff) while any fetched partition's records have not been taken: meant
                    # for a consumer about to take them, it stalled every stream for 100 ms each
                    # time one of these partitions first got a record (the first fill's portfolio
                    # write held up the next tick by 105 ms).
                    fetched._backoff = 0
                else:
                    whole = False
        # the requests built below read this attribute
        self._fetch_max_wait_ms = self.whole_wait_ms if whole else self.partial_wait_ms
        fetches, resets, timeout, invalid, resumes = super()._get_actions_per_node(assignment)
        if fetches and not whole and self.partial_interval_s:
            now = time.monotonic()
            hold = self._partial_at + self.partial_interval_s - now
            if hold > 0:
                return [], resets, min(timeout, hold), invalid, resumes
            self._partial_at = now
        return fetches, resets, timeout, invalid, resumes


def paused_changelogs(app, consumer) -> frozenset:
    """The changelog partitions the Faust ``consumer`` has paused, or none while ``app`` is
    rebalancing: what :class:`WaitByFetchFetcher` leaves out of its fetches.

    Outside a rebalance Faust keeps paused the changelogs of its tables' active partitions (read,
    or found empty, at the assignment): only this worker writes them. Standby and global-table
    partitions are resumed, and fetched. In a rebalance nothing is left out: a recovery resumes
    changelog partitions and must not wait for a fetch that was sent without them."""
    if app.rebalancing:
        return frozenset()
    paused = frozenset(consumer._paused_partitions)  # one copy in C: the main thread changes the set
    logs = app.tables.changelog_topics
    return frozenset(tp for tp in paused if tp.topic in logs)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        await super().on_start()
        # aiokafka builds its Fetcher inside AIOKafkaConsumer.start() with no way to pass a class;
        # the fetch loop looks its method up on every round, so the subclass takes over from the
        # first fetch (the loop waits for an assignment first).
        fetcher = self._consumer._fetcher
        fetcher.__class__ = WaitByFetchFetcher
        fetcher.whole_wait_ms = self.app.idle_fetch_max_wait_ms
        fetcher.partial_wait_ms = fetcher._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        fetcher.partial_interval_s = self.app.partial_fetch_interval_ms / 1000.0
        fetcher.untaken_topics = lambda: self.app.tables.changelog_topics
        fetcher.left_out = partial(paused_changelogs, self.app, self.consumer)


class InputOrder:
    """Whether a step may run another agent's processor itself on a record instead of leaving it
    to that agent, without overtaking the records the agent has yet to read, per input partition
    of the agents that offer such a shortcut (:meth:`watch`).

    The shortcut (``streams.consensus.consensus_now``, ``streams.execution.execute_now``) is
    taken when this worker owns the partition the record belongs to. After a rebalance that
    partition may still hold records the agent has not read: a tick stream's signals or a
    consensus's approvals that another worker sent while it owned the ticks or the token, and
    records this worker sent the slow way. A signal put through the consensus before them would
    join windows in another order than the log's. So, per partition: at every seek to the
    committed offsets (:meth:`start`) the log's end is read, and the shortcut waits until the
    agent has handled the record before it (:meth:`read`) and every record this worker sent there
    meanwhile (:meth:`sent`); until then the record takes the agent's path, in log order. Every
    rebalance starts over (:meth:`reset`)."""

    def __init__(self) -> None:
        self.topics: set[str] = set()
        self._generation = 0
        self._read: dict = {}  # TP -> offset of the last record the agent handled (or start - 1)
        self._need: dict = {}  # TP -> offset the agent must have handled first
        self._outstanding: dict = {}  # TP -> records sent the slow way whose offset is not known yet

    def watch(self, *topics: str) -> None:
        """Track the partitions of ``topics`` (full names), an agent's input with a shortcut."""
        self.topics.update(topics)

    def reset(self) -> None:
        """Forget everything (the partitions are being revoked): no shortcut until :meth:`start`."""
        self._generation += 1
        self._read.clear()
        self._need.clear()
        self._outstanding.clear()

    async def start(self, consumer: Any, positions: Mapping) -> None:
        """After a seek: ``positions`` TP -> the offset each partition's agent starts reading at
        (the committed offset; ``None`` for the log's start). Reads the end offsets of the watched
        partitions among the consumer's assignment (one ListOffsets request)."""
        tps = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        if not tps:
            return
        generation = self._generation
        starts = {tp: positions.get(tp) or 0 for tp in tps}  # before the await: the agents read on
        ends = await consumer.highwaters(*tps)
        if generation != self._generation:
            return  # revoked meanwhile
        for tp in tps:
            self._read[tp] = max(self._read.get(tp, -1), starts[tp] - 1)
            self._need[tp] = max(self._need.get(tp, -1), ends.get(tp, 0) - 1)

    def read(self, tp, offset: int) -> None:
        """The agent has handled (or dropped) the record at ``offset`` of ``tp``."""
        if tp in self._read and offset > self._read[tp]:
            self._read[tp] = offset

    def ready(self, *tps) -> bool:
        """Whether a record of each of ``tps`` may skip its agent's path now."""
        return all(tp in self._read and not self._outstanding.get(tp) and self._read[tp] >= self._need[tp]
                   for tp in tps)

    def sent(self, tp, pending) -> None:
        """A record this worker sent to ``tp`` for its agent to read (``pending``: the send's
        future, whose result has the record's offset): no shortcut on ``tp`` before it is read."""
        if pending is None or tp.topic not in self.topics:
            return
        generation = self._generation
        self._outstanding[tp] = self._outstanding.get(tp, 0) + 1

        def done(future) -> None:
            if generation != self._generation:
                return
            self._outstanding[tp] -= 1
            if not future.cancelled() and future.exception() is None:
                self._need[tp] = max(self._need.get(tp, -1), future.result().offset)

        pending.add_done_callback(done)


class CommitBelowUnacked:
    """Consumer mixin: the offset committed for a partition never passes a message delivered there
    and not yet acknowledged.

    Faust commits the first run of consecutive acknowledged offsets, refusing only when that run
    starts more than one past the committed offset (``Consumer._new_offset``); the offset is the
    next one to read, so a single unacknowledged message at the committed offset was committed
    over, and with no commit yet on the partition the check is skipped altogether. Faust's own
    agents acknowledge in order, which hides this. The tick stream does not: it holds the first
    tick of each token's open bar unacknowledged until the bar closes (``streams.ticks``), and a
    restart must replay from there to rebuild the bar. Here the acknowledged offsets at or past
    the lowest unacknowledged delivered message of the partition sit out of the run Faust looks
    at, and go back once it has picked its offset."""

    _lowest_unacked: dict = {}

    def _filter_committable_offsets(self, tps):
        # one pass over the delivered, unacknowledged messages for every partition about to commit
        lowest: dict = {}
        committed = self._committed_offset
        for m in list(self._unacked_messages):
            # one delivered before the last seek (its partition revoked and given back), or one
            # Faust counts as acknowledged, holds nothing back
            if not m.acked:
                tp, offset = m.tp, m.offset
                floor = committed.get(tp)
                if (floor is None or offset >= floor) and offset < lowest.get(tp, offset + 1):
                    lowest[tp] = offset
        self._lowest_unacked = lowest
        try:
            return super()._filter_committable_offsets(tps)
        finally:
            self._lowest_unacked = {}

    def _new_offset(self, tp):
        lowest = self._lowest_unacked.get(tp)
        acked = self._acked[tp]
        if lowest is None or not acked:
            return super()._new_offset(tp)
        acked.sort()
        cut = bisect.bisect_left(acked, lowest)
        later = acked[cut:]
        del acked[cut:]
        try:
            return super()._new_offset(tp) if acked else None
        finally:
            acked.extend(later)


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
    assignment. The seek Faust's fetch loop adds when a fetch returns while a rebalance has
    stopped the flow is left out: it could end after the recovery's and set the read offsets back
    under the agents."""

    _resume_after_seek: frozenset = frozenset()

    def resume_partitions(self, tps) -> None:
        tps = ensure_TPset(tps)
        if self.app.rebalancing:
            held = {tp for tp in tps if not self._is_changelog_tp(tp)}
            if held:
                self._resume_after_seek = self._resume_after_seek | held
                tps = tps - held
        super().resume_partitions(tps)

    def _called_by_fetch(self) -> bool:
        # perform_seek's caller: Faust's Consumer.getmany (the fetch loop) or the recovery
        caller = sys._getframe(1).f_back  # None when perform_seek runs as a task of its own
        return caller is not None and caller.f_code is _GETMANY_CODE

    async def perform_seek(self) -> None:
        if self.app.rebalancing and not getattr(self, "flow_active", True) and self._called_by_fetch():
            # Faust's fetcher seeks back to the committed offsets when a fetch returns while the
            # flow is stopped. In a rebalance that seek waits for the consumer thread, and it was
            # seen to end after the recovery had sought, resumed the streams and delivered
            # records: it set the read offsets back under the agents, and records delivered just
            # before it never reached the consensus (a window decided without seven signals).
            # The recovery seeks every stream partition before it resumes any, after the flow
            # stopped, so this seek adds nothing in a rebalance.
            log.debug("the fetch loop's seek to the committed offsets is left to the recovery")
            return
        try:
            await super().perform_seek()
            order = getattr(self.app, "input_order", None)
            if order is not None:
                try:
                    await order.start(self, self._read_offset)
                except Exception as exc:  # noqa: BLE001 - no shortcut this generation, nothing lost
                    log.warning("input order not started (%s: %s): shortcuts off until the next rebalance",
                                type(exc).__name__, exc)
        finally:
            held, self._resume_after_seek = self._resume_after_seek, frozenset()
            if held:
                super().resume_partitions(held & ensure_TPset(self.assignment()))


class EagerDispatch:
    """The consumer's fetch loop (``Consumer._drain_messages``), Faust 0.15's with one change:
    each record's handler starts as an eager task (Python 3.12, ``asyncio.Task(...,
    eager_start=True)``), which runs it at once up to its first suspension, and the race against
    the consumer's ``suspend_flow`` (a rebalance stopping the flow) is only set up for a handler
    that did suspend.

    Why: Faust's loop races every record's handler against that event with ``Service.wait_first``,
    four tasks and an ``asyncio.wait`` per record: 20 µs of the event loop per record on this
    machine (against 0.6 µs for an eager task), a quarter of the bare Faust agent's cost per
    message. The handler (the conductor's ``on_message``) only
    suspends when the flow is stopped, the producer's buffer is full or a stream's queue is full;
    otherwise it decodes the record and puts it on the streams' queues without waiting, and
    nothing can have set ``suspend_flow`` in between. A handler that suspends goes through Faust's
    race as before, so a rebalance still abandons a blocked one."""

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - the worker's fetch loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        loop = self.loop
        Task = asyncio.Task
        yield_every, num_since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)  # getmany can return at once in a loop: give the loop a turn
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            handled = Task(callback(message), loop=loop, eager_start=True)
                            if not handled.done():
                                await self.wait_first(handled, self.suspend_flow.wait())
                            elif handled.exception() is not None:
                                handled.result()  # raise it, as wait_first does
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class _Consumer(EagerDispatch, CommitBelowUnacked, SeekBeforeResume, faust_aiokafka.Consumer):
    async def on_partitions_revoked(self, revoked) -> None:
        self.app.input_order.reset()
        await super().on_partitions_revoked(revoked)

    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ProducerBuffer(ProducerBuffer):
    """Faust's buffer of table changelog sends, whose ``size`` the conductor reads before every
    record it hands to the streams (``wait_until_ebb``). Faust's looks up the
    ``producer_threaded`` setting each time through its settings registry, 1.6 % of a worker's
    event loop; for a producer that is not threaded (the only kind this app makes) the size is the
    pending queue's length."""

    @property
    def size(self) -> int:
        return len(self.pending._queue)


class _Producer(faust_aiokafka.Producer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.app.conf.producer_threaded:
            self.buffer.__class__ = _ProducerBuffer

    def _settings_extra(self):
        # An idempotent producer (Kafka's KIP-98: sequence numbers per partition) keeps a
        # partition's messages in order and once through its retries. Without it, a broker outage
        # mid-feed let a retried batch land twice or behind a later one: a bar closed on another
        # tick and fills came out cents apart from the run without the outage.
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class Steps:
    """The agents' message handlings in flight in a worker (``app.main.survive`` counts them), and
    a gate that stops new ones from starting once the worker begins to stop.

    Faust's graceful stop pauses the partitions, stops the fetcher and then closes the tables,
    all before it stops the agents, and without waiting for the streams (``stream_wait_empty``
    is off: the tick stream holds a whole open bar unacked). A handling still running then writes
    its state to closed tables, and Faust flushes the producer buffer, changelog records included,
    before the agents stop, while the step's input offset is committed after. :meth:`drain` runs
    first: no new handling starts (its message stays unacked, for whoever owns the partition
    next), and the tables close only once those in flight have written their state, and the
    state of ended handlings that waits for the broker's acknowledgements (``writes``:
    ``app.main.StoreAfterAcks``) is written or, after the timeout, dropped unwritten (replayed by
    the partition's next owner)."""

    def __init__(self) -> None:
        self.running = 0
        self.closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: queues of state written after the acks (len() = what waits; abandon() drops it)
        self.writes: list = []

    async def enter(self) -> None:
        """Count a handling in; once the gate is closed, wait until the agent is cancelled."""
        if self.closed:
            await asyncio.Future()
        self.running += 1
        self._idle.clear()

    def exit(self) -> None:
        self.running -= 1
        if not self.running:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Close the gate and wait up to ``timeout`` (s) for the handlings in flight; whether they
        all ended."""
        self.closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        ended = True
        for queue in self.writes:
            while len(queue) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if len(queue):
                queue.abandon()
                ended = False
        return ended


class App(faust.App):
    """``faust.App`` whose worker consumer asks the broker to hold an empty fetch at most
    ``fetch_max_wait_ms`` (ms) when the fetch leaves out a partition whose records the worker has
    not taken yet, and ``idle_fetch_max_wait_ms`` when it covers every partition, and sends the
    former at most every ``partial_fetch_interval_ms`` (:class:`WaitByFetchFetcher`; Faust holds
    every fetch 1,500 ms and has no setting). ``steps`` counts the agents' handlings in flight
    (:class:`Steps`), which a graceful stop lets end before it closes the tables."""

    def __init__(self, *args, fetch_max_wait_ms: int = 10, idle_fetch_max_wait_ms: int = 500,
                 partial_fetch_interval_ms: int = 50, **kwargs) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.idle_fetch_max_wait_ms = idle_fetch_max_wait_ms
        self.partial_fetch_interval_ms = partial_fetch_interval_ms
        self.steps = Steps()
        self.input_order = InputOrder()
        #: The partitions this worker is assigned, from the end of a rebalance to the start of the
        #: next (empty in between); kept by ``app.main``.
        self.owned: frozenset = frozenset()
        super().__init__(*args, **kwargs)

    _event_class: type | None = None

    def create_event(self, key, value, headers, message):
        # Faust's conductor makes an event of every record it hands to a stream, and Faust looks the
        # event class up in its settings registry each time (``self.conf.Event``, about 1 µs).
        # Settings are fixed once the worker runs. With RawSchema, a record's decode and event take
        # 1.4-2.1 µs instead of 4.8-6.1 (a throwaway micro-benchmark, a tick's key and value).
        cls = self._event_class
        if cls is None:
            cls = self._event_class = self.conf.Event
        return cls(self, key, value, headers, message)

    async def _stop_consumer(self) -> None:
        if not await self.steps.drain(timeout=15.0):
            log.warning("stopping with %d agent step(s) still running after 15 s", self.steps.running)
        await super()._stop_consumer()

    def _new_transport(self):
        cls = transport.by_url(self.conf.broker_consumer[0])
        if cls is faust_aiokafka.Transport:
            cls = _Transport
        return cls(self.conf.broker_consumer, self)
