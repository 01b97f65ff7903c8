"""The Faust application: the ``faust.App``, its topics (the catalogue in :mod:`models.topics`),
the emit helper and dead letters.

Every message is the flat JSON of :mod:`models.events` (value serializer ``raw``): no Faust
metadata on the wire, so producers in any language can write these topics.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import logging
import os
import signal
import ssl
import time
import weakref
from functools import partial

import faust
import mode.loop
from faust.streams import _current_event
from faust.types import TP
from faust.transport.consumer import ensure_TPset
from faust.types.tuples import Message

from app.kafka import App, PartitionAssignor, RawSchema, Topic
from app.monitor import LeanPrometheusMonitor
from core.metrics import AGENT_ERRORS, AGENT_EVENTS, DEAD_LETTERS, EVENTS_PRODUCED, REGISTRY
from core.logs import TRACE, current_event_id, logging_config
from core.redact import install_redaction
from core.settings import get_settings
from models.events import (AgentError, AgentLagging, Envelope, EventError, dead_letter_event,  # noqa: F401  (re-exported)
                           decode_checked_at, derived_id, encode_event, new_event_id)
from models.topics import TOPIC_OF_EVENT, TOPIC_SPECS, key_of  # noqa: F401  (re-exported for the app's modules)

log = logging.getLogger("moondev")
settings = get_settings()
install_redaction(settings.secrets())

# The worker's event loops on uvloop (mode creates the consumer thread's loop from the same
# policy): a worker spends a tenth or more of its main thread in asyncio's own machinery (task
# steps, futures, socket writes), and the whole path measured 6-11 % more ticks/s on uvloop in
# alternating runs, against no gain for the bare Faust agent (docs/performance.md). A loop chosen
# on the command line (``faust -L aio``) or in FAUST_LOOP stays: importing faust notes that choice
# in FAUST_LOOP, before the app is imported; the loop itself is created after.
if not os.environ.get("FAUST_LOOP"):
    mode.loop.use("uvloop")


def _broker_credentials():
    s = settings
    proto = s.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    ctx = ssl.create_default_context(cafile=s.kafka_ssl_cafile) if "SSL" in proto else None
    if proto.startswith("SASL"):
        return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                     mechanism=s.kafka_sasl_mechanism, ssl_context=ctx)
    return faust.SSLCredentials(ctx)


def aiokafka_connection() -> dict:
    """Arguments for a plain aiokafka client (outside Faust's) with the same brokers and SASL/SSL
    settings as the app (:meth:`core.settings.Settings.aiokafka_connection`)."""
    return settings.aiokafka_connection()


class _RawStrKeys:
    """Table keys typed ``str`` are serialized raw (Faust's default for them is JSON): a key's bytes
    are the topic key's bytes, so table routing (``app.table_route``) finds the partition that
    holds it, and keys recovered from a changelog equal the keys agents write."""

    def _serializer_from_type(self, typ):
        return "raw" if typ is str else super()._serializer_from_type(typ)


class RawKeyTable(_RawStrKeys, faust.Table):
    pass


class RawKeyGlobalTable(_RawStrKeys, faust.GlobalTable):
    """A global table that calls each of its ``on_change`` callables (no arguments) after a
    change: a key written or deleted here, a batch of its changelog applied (another worker's
    writes, and this worker's own read back), a rebalance, a recovery ended or the local state
    reset. For an in-memory view of the table that must not be re-read on every use nor miss
    another worker's write (``processors.base.ExposureView``, ``StoreSnapshot``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_change: list = []

    def _changed(self) -> None:
        for fn in self.on_change:
            fn()

    def on_key_set(self, key, value) -> None:
        super().on_key_set(key, value)
        self._changed()

    def on_key_del(self, key) -> None:
        super().on_key_del(key)
        self._changed()

    def apply_changelog_batch(self, batch) -> None:
        super().apply_changelog_batch(batch)
        self._changed()

    def reset_state(self) -> None:
        super().reset_state()
        self._changed()

    async def on_rebalance(self, *args, **kwargs) -> None:
        await super().on_rebalance(*args, **kwargs)
        self._changed()

    async def on_recovery_completed(self, *args, **kwargs) -> None:
        await super().on_recovery_completed(*args, **kwargs)
        self._changed()


app = App(
    settings.app_id,
    fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    idle_fetch_max_wait_ms=settings.kafka_idle_fetch_max_wait_ms,
    partial_fetch_interval_ms=settings.kafka_partial_fetch_interval_ms,
    logging_config=logging_config(settings.log_format),
    Table=RawKeyTable,
    GlobalTable=RawKeyGlobalTable,
    # A created topic is declared only once the brokers list it, and an assignment that misses a
    # global table's changelog does not fail (app.kafka).
    Topic=Topic,
    Schema=RawSchema,
    PartitionAssignor=PartitionAssignor,
    broker=settings.kafka_broker,
    broker_credentials=_broker_credentials(),
    store=settings.store_url,
    datadir=settings.data_dir,
    web_port=settings.web_port,
    web_bind=settings.web_bind or settings.web_host,
    web_host=settings.web_host,
    key_serializer="raw",
    value_serializer="raw",
    # changelogs and Faust's own topics; the catalogue's below carry the same
    topic_replication_factor=settings.topic_replication_factor,
    topic_partitions=5,
    consumer_auto_offset_reset="earliest",
    # Faust's own /table/ views serve raw table contents with no authentication; the app's views
    # replace them, and its /router/ (app.web) answers under READ_AUTH.
    web_tables_enabled=False,
    web_router_enabled=False,
    # The worker's features register themselves when Faust discovers these modules (at
    # ``faust -A app ...``), not when ``app`` is imported: agents (streams/, which lists its
    # modules), web views and CLI commands.
    autodiscover=["streams", "app.web", "app.commands"],
    origin="app",
    # Ack handling: an event's offset is committed only after every agent reading the topic
    # acked it (the event-store sink acks after its rows are committed).
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    producer_linger_ms=1,
    # Table changelog values (bar histories) run to ~12 KB: batches of many of them, not one each.
    producer_max_batch_size=1_048_576,
    producer_max_request_size=4_194_304,
    # The trading agent holds the acks of an open bar's ticks until the bar is stored, so a
    # rebalance or shutdown must not wait for every event to be acked: unacked events are simply
    # replayed by the next owner, and every agent is idempotent under replay.
    stream_wait_empty=False,
    web_in_thread=False,
    # Should a subscribed topic still be missing from the group's first assignment (app.kafka),
    # the consumer's next metadata refresh sees it and rejoins: 10 s instead of Faust's 5 minutes.
    consumer_metadata_max_age_ms=10_000,
    broker_session_timeout=settings.kafka_session_timeout_seconds,
    broker_heartbeat_interval=settings.kafka_heartbeat_interval_seconds,
)

# Faust's own sensors (messages per topic, events per stream, send latency, rebalances, ...) into
# the same registry as the domain metrics, under one fixed prefix so dashboards do not depend on
# the app id; counted cheaply per message (app.monitor).
app.monitor = LeanPrometheusMonitor(REGISTRY, "faust")

#: Catalogue topic name -> faust.Topic (names carry TOPIC_PREFIX). ``internal=True`` makes Faust
#: create them with these partitions, retention (TOPIC_RETENTION_HOURS over the catalogue's),
#: replicas and min.insync.replicas instead of the broker's defaults.
TOPICS: dict[str, faust.TopicT] = {
    name: app.topic(settings.topic(name), partitions=spec.partitions, retention=settings.topic_retention(name),
                    replicas=settings.topic_replication_factor, config=settings.topic_configs(),
                    internal=True, key_type=bytes, value_type=bytes)
    for name, spec in TOPIC_SPECS.items()
}

#: Full topic name -> the event field its messages are keyed by (``token``, ``account`` or None).
KEYED_BY: dict[str, str | None] = {settings.topic(name): spec.key for name, spec in TOPIC_SPECS.items()}

#: Where :func:`emit` sends each topic's events. Agent tests rebind entries to in-memory
#: ``app.channel()`` objects to read what an agent produced without a broker.
OUTPUTS: dict[str, faust.ChannelT] = dict(TOPICS)


async def emit(event: Envelope, topic_name: str | None = None, wait: bool = False):
    """Send an event to its event type's topic (or ``topic_name``), keyed by token or account; with
    ``wait``, return only once the broker has acknowledged it (raises the send's error). Returns
    the send's pending acknowledgement (an awaitable; see :func:`holding`). An event without a
    ``causation_id`` gets the id of the event this task is handling (core.logs)."""
    if event.causation_id is None:
        cause = current_event_id()
        if cause is not None and cause != event.event_id:
            event = event.model_copy(update={"causation_id": cause})
    name = topic_name or TOPIC_OF_EVENT[event.event_type]
    pending = await OUTPUTS[name].send(key=key_of(event, name), value=encode_event(event))
    if wait and pending is not None:
        await pending
    EVENTS_PRODUCED.labels(event.event_type).inc()
    AGENT_EVENTS.labels(event.source, "out").inc()
    return pending


class holding:
    """``async with holding(stores) as pending:`` around one handler step whose state changes wait
    for its events: ``pending`` is a list for what :func:`emit` returns; on leaving, waits until
    the broker has acknowledged those events, then writes the step's held changes (``stores``:
    :class:`processors.base.WriteBehind`), inside the event being handled. A worker killed before
    the writes replays the step and sends the same events again; one killed after them has its
    events in Kafka. A step that raised, or whose send failed, still has its writes made (in its
    own partition) and the error raised, as before. A class rather than a generator-based context
    manager: it wraps every tick, and costs half as much.

    ``waited``: a histogram child (``moondev_processing_seconds{agent="<agent>.acks"}``) given the
    seconds each step that had writes to make spent waiting for the broker's acknowledgements,
    during which the agent's stream stands still (a Kafka round trip; not observed for steps with
    nothing to write, which do not wait)."""

    __slots__ = ("stores", "pending", "waited")

    def __init__(self, stores, waited=None) -> None:
        self.stores = stores
        self.pending: list = []
        self.waited = waited

    async def __aenter__(self) -> list:
        return self.pending

    async def __aexit__(self, typ, exc, tb) -> bool:
        try:
            pending = self.pending
            if typ is None and pending and any(store.pending for store in self.stores):
                if self.waited is None:
                    await asyncio.gather(*[p for p in pending if p is not None])
                else:
                    t0 = time.perf_counter()
                    await asyncio.gather(*[p for p in pending if p is not None])
                    self.waited.observe(time.perf_counter() - t0)
        finally:
            for store in self.stores:
                store.flush()
        return False


class _Held:
    """One step's layers in :class:`StoreAfterAcks` (or, with none, callbacks to run in turn)."""

    __slots__ = ("event", "decoded", "layers", "waiting", "failed", "callbacks", "t0", "dropped")

    def __init__(self, event, decoded, layers: list) -> None:
        self.event, self.decoded, self.layers = event, decoded, layers
        self.waiting = 0
        self.failed: BaseException | None = None
        self.callbacks: list = []
        self.t0 = time.perf_counter()
        self.dropped = False


class StoreAfterAcks:
    """:class:`holding` without the wait: an agent's state changes are still written only once
    the broker has acknowledged the events of the step that made them, but the stream goes on
    to its next message meanwhile.

    ``async with queue.step(decoded) as pending:`` around one handler step, ``pending`` a list for
    what :func:`emit` returns. On leaving, the step's held changes (``stores``:
    :class:`processors.base.WriteBehind`) become a layer that reads still see, and the layer is
    written, inside the step's event (so into its partition), once every send in ``pending`` is
    acknowledged and every earlier step's layer is written: in step order, so a newer write to the
    same key lands last. Why: a step that closes a bar waited a Kafka round trip (1.7 ms on
    average at 1×, 2.3 ms at 10×, up to 10 ms), 20-26 % of the tick stream's time, and a burst's
    ticks queued behind each such wait.

    The guarantee is :class:`holding`'s: a worker killed before the write replays the step from
    the committed offset and sends the same events again (same derived ids), provided the step's
    input is not committed before its layer is written: :meth:`after` runs an ack once everything
    handed over so far is written. A send that failed is reported as the agent's error
    (``agent.error`` and a dead letter of the message) once the layer is written, as
    :class:`survive` would have. A revoked partition's layers are dropped unwritten
    (:meth:`on_revoked`): its new owner replays them. ``stored``: a histogram child given the
    seconds from each step's end until its layers were written."""

    def __init__(self, agent: str, stores, stored=None) -> None:
        self.agent, self.stores, self.stored = agent, tuple(stores), stored
        self.entries: collections.deque[_Held] = collections.deque()
        self._reports: set = set()  # error reports under way (the loop keeps only weak references)

    def __len__(self) -> int:
        """Steps (and callbacks) waiting for their turn."""
        return len(self.entries)

    def step(self, decoded=None) -> "_AfterAcks":
        return _AfterAcks(self, decoded)

    def hold(self, sends, event, decoded=None) -> None:
        """Hand over the stores' held changes of the step of ``event`` (a Faust event), to be
        written once ``sends`` (futures, None ignored) are done and the earlier layers written."""
        if not any(store.pending for store in self.stores):
            return
        entry = _Held(event, decoded, [(store, store.hand_over()) for store in self.stores if store.pending])
        self.entries.append(entry)
        for sent in sends:
            if sent is None:
                continue
            if sent.done():
                self._note(entry, sent)
            else:
                entry.waiting += 1
                sent.add_done_callback(partial(self._acked, entry))
        if entry.waiting == 0:
            self._drain()

    def after(self, fn, event=None) -> None:
        """Call ``fn()`` once every layer handed over so far is written (now, if none is waiting);
        dropped instead if ``event``'s partition is revoked before then."""
        if not self.entries:
            fn()
            return
        barrier = _Held(event, None, [])
        barrier.callbacks.append(fn)
        self.entries.append(barrier)

    def on_revoked(self, revoked) -> None:
        """Drop the layers and callbacks of the steps whose event is in a revoked partition."""
        kept: collections.deque[_Held] = collections.deque()
        for entry in self.entries:
            if entry.event is not None and entry.event.message.tp in revoked:
                entry.dropped = True
                for store, layer in entry.layers:
                    store.drop(layer)
            else:
                kept.append(entry)
        self.entries = kept
        self._drain()

    def abandon(self) -> None:
        """Drop every layer and callback still waiting (a stopping worker whose acks did not come:
        its tables are about to close)."""
        if self.entries:
            log.warning("%s: %d step(s) not stored before the stop; replayed from the committed offset at the "
                        "next start", self.agent, sum(1 for e in self.entries if e.layers))
        for entry in self.entries:
            entry.dropped = True
            for store, layer in entry.layers:
                store.drop(layer)
        self.entries = collections.deque()

    @staticmethod
    def _note(entry: _Held, sent) -> None:
        if entry.failed is None:
            if sent.cancelled():
                entry.failed = asyncio.CancelledError("the send was cancelled")
            elif sent.exception() is not None:
                entry.failed = sent.exception()

    def _acked(self, entry: _Held, sent) -> None:
        self._note(entry, sent)
        entry.waiting -= 1
        if entry.waiting == 0 and not entry.dropped:
            self._drain()

    def _drain(self) -> None:
        entries = self.entries
        while entries and entries[0].waiting == 0:
            entry = entries.popleft()
            if entry.layers:
                token = _current_event.set(weakref.ref(entry.event)) if entry.event is not None else None
                try:
                    for store, layer in entry.layers:
                        try:
                            store.apply(layer)
                        except Exception as exc:  # noqa: BLE001 - a stopping worker's closed table
                            log.warning("%s: state of %s not stored (%s: %s); replayed from the committed offset "
                                        "at the next start", self.agent, _where(entry.event), type(exc).__name__, exc)
                finally:
                    if token is not None:
                        _current_event.reset(token)
                if self.stored is not None:
                    self.stored.observe(time.perf_counter() - entry.t0)
            for fn in entry.callbacks:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - one callback must not keep the others from running
                    log.exception("%s: a callback after the stored state failed", self.agent)
            if entry.failed is not None and entry.event is not None:
                task = asyncio.ensure_future(report_error(self.agent, entry.event.message, entry.failed,
                                                          entry.decoded))
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)


def _where(event) -> str:
    m = getattr(event, "message", None)
    return f"{m.topic}[{m.partition}]@{m.offset}" if m is not None else "a step"


class _AfterAcks:
    __slots__ = ("queue", "decoded", "pending")

    def __init__(self, queue: StoreAfterAcks, decoded) -> None:
        self.queue, self.decoded = queue, decoded
        self.pending: list = []

    async def __aenter__(self) -> list:
        return self.pending

    async def __aexit__(self, typ, exc, tb) -> bool:
        # a step that raised has its writes made too, as holding does
        ref = _current_event.get(None)
        self.queue.hold(self.pending, ref() if ref is not None else None, self.decoded)
        return False


def owned_partition(topic: str, key: bytes) -> int | None:
    """The partition of ``topic`` (full name) that holds ``key`` under the default partitioner,
    if this worker is assigned it now; else None (also before the worker has started or has the
    topic's metadata, and from the start of a rebalance until its new assignment is in place)."""
    try:
        partition = app.producer.key_partition(topic, key).partition
    except Exception:  # noqa: BLE001 - not started, no metadata yet: the caller takes the normal path
        return None
    if partition is None or TP(topic, partition) not in app.owned:
        return None
    return partition


# The assignment as owned_partition sees it, kept here rather than asked of the consumer on every
# call: the consumer thread builds a new set of every partition each time, 2 % of a worker's
# event loop when every signal asked. Emptied when a rebalance revokes, set once it has assigned.
@app.on_partitions_revoked.connect
async def _forget_assignment(sender, revoked, **kwargs) -> None:
    app.owned = frozenset()


@app.on_partitions_assigned.connect
async def _keep_assignment(sender, assigned, **kwargs) -> None:
    app.owned = frozenset(ensure_TPset(app.consumer.assignment()))


async def run_as_read(topic: str, partition: int, key: bytes, value: bytes, trace, coro_fn):
    """Await ``coro_fn()`` in a task whose Faust current event is the message (``topic``,
    ``partition``, ``key``, ``value``) as an agent would have read it, and whose trace
    (``core.logs.TRACE``) is ``trace``. Why: a table write picks its changelog partition and local
    store from the current event, and Faust refuses one whose event's topic is not co-partitioned
    with the table; a step that runs another agent's processor on an event it produced itself (a
    force-close, an approval, a signal) must write that agent's tables as that agent would."""
    message = Message(topic, partition, -1, time.time(), 0, None, key, value, None, tp=TP(topic, partition))
    event = faust.Event(app, key, value, None, message)
    ctx = contextvars.copy_context()
    ctx.run(_current_event.set, weakref.ref(event))
    ctx.run(TRACE.set, trace)
    return await asyncio.get_running_loop().create_task(coro_fn(), context=ctx)


async def declare_topics(names=None) -> None:
    """Create the catalogue's topics ``names`` (all by default) with their partitions and
    retention if they do not exist yet. A feed declares only what it writes: with ACLs, its
    principal may create nothing else."""
    for name, topic in TOPICS.items():
        if names is None or name in names:
            await topic.maybe_declare()


@app.on_rebalance_complete.connect
async def _freeze_heap(sender, **kwargs) -> None:
    # Everything imported and built at start (pandas, pandas-ta, Faust, the recovered tables) lives
    # for the whole run: move it out of the collector's scans, so full collections (tens of ms over
    # this heap, stalling every agent and the dashboard push) only walk what the run allocates.
    # Faust sends this signal once a rebalance's tables are recovered and before the streams
    # resume: the full collection (~180 ms here) is paid while nothing is consumed, not on a tick
    # (timed 10 s after start, it landed on a live fill); and again after every rebalance, the
    # heap having been unfrozen when it began (_unfreeze_on_revoke).
    gc.collect()
    gc.freeze()


@app.on_worker_init.connect
def _freeze_imports(sender, **kwargs) -> None:
    # What a worker imports (pandas, pandas-ta, numba, Faust, the agents) lives for the whole run.
    # Left in the collector's scans, the first recovery's allocations set off full collections of
    # all of it, 100-140 ms each and about fifteen before the streams started.
    gc.collect()
    gc.freeze()


@app.on_partitions_revoked.connect
async def _unfreeze_on_revoke(sender, revoked, **kwargs) -> None:
    # Faust's RocksDB store closes a revoked partition's database by dropping it and collecting:
    # a frozen database that a reference cycle held would keep its lock, and the partition could
    # not be opened again when it came back (frozen once for good, a rolling restart lost table
    # state). Faust revokes the tables' partitions after this signal. Nothing revoked (a worker's
    # first assignment): no database to close, and the imports stay frozen.
    if revoked:
        gc.unfreeze()


@app.task
async def _exit_with_starter() -> None:
    # A worker started by a test or a benchmark (app.local.Stack) runs in a session of its own, so
    # that a stop signal reaches its sink child too; then nothing ends it when the process that
    # started it is killed outright (kill -9, a CI timeout), and it goes on holding its partitions,
    # a port and a core, skewing the next run's figures. Polling the parent is what works here:
    # PR_SET_PDEATHSIG fires when the starting *thread* exits, and the benchmark starts workers
    # from short-lived threads.
    pid = settings.exit_with_pid
    if pid is None:
        return
    while os.getppid() == pid:
        await asyncio.sleep(1.0)
    log.warning("the process that started this worker (pid %s) has ended: stopping", pid)
    os.kill(os.getpid(), signal.SIGTERM)


@app.task
async def _declare_on_start() -> None:
    # Agents only declare the topics they read; some (state.changes without the event-store sink)
    # are only written, and a send to a topic that does not exist stalls the producer.
    await declare_topics()


async def dead_letter(message, reason: str, agent: str) -> None:
    """Send a Kafka message (``event.message``) that failed to parse or validate to the
    dead-letter topic with the reason."""
    raw: bytes = message.value if isinstance(message.value, bytes) else bytes(str(message.value or ""), "utf-8")
    ts = message.timestamp
    dl = dead_letter_event(raw, reason, agent, message.topic, message.partition, message.offset,
                           int(ts * 1000) if ts else 0)
    log.warning("dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
    DEAD_LETTERS.labels(message.topic).inc()
    await emit(dl)


def decode_checked(raw: bytes | str, expect: tuple | None = None, key: bytes | None = None,
                   topic: str | None = None) -> Envelope:
    """:func:`models.events.decode_event` plus the event-time bounds (EVENT_MAX_AHEAD_SECONDS
    ahead of this worker's clock, EVENT_TIME_FLOOR_MS) and, given the message ``key`` and the
    ``topic`` it came from, that the key is the event's token or account, whichever the topic is
    keyed by (a token without ``topic``; nothing for a topic outside the catalogue, such as an
    in-memory channel): what every consumer in a worker accepts.

    Raises:
        EventError: as ``decode_event``, an event time out of bounds, or a key that is not the field.
    """
    return decode_checked_at(raw, int(time.time() * 1000), int(settings.event_max_ahead_seconds * 1000),
                             settings.event_time_floor_ms, expect, key,
                             KEYED_BY.get(topic) if topic is not None else "token")


class survive:
    """``async with survive(agent, event, decoded):`` around one message's handling, so that no
    single message stops an agent. Any exception (cancellation aside) is logged with its
    traceback, counted in ``moondev_agent_errors_total{agent}``, reported as an ``agent.error``
    event (agent, exception class and message, the message's location and event id) and the
    message goes to the dead letters with the exception as its reason; then the stream goes on.
    Reporting never raises: a failure to send is logged. State a handler changed before it
    raised stays changed. Each handling is counted in ``app.steps`` (:class:`app.kafka.Steps`):
    once the worker begins to stop, a new one waits there until its agent is cancelled, and the
    tables close only after those in flight."""

    def __init__(self, agent: str, event, decoded: Envelope | None = None) -> None:
        self.agent, self.event, self.decoded = agent, event, decoded
        self._token = None
        self._t0 = 0.0

    async def __aenter__(self) -> "survive":
        await app.steps.enter()  # a worker that is stopping starts no new step (app.kafka.Steps)
        # every log line and every emitted event of this handling names the event (core.logs)
        self._token = TRACE.set((self.agent, self.decoded))
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(self, typ, exc, tb) -> bool:
        try:
            elapsed_ms = (time.perf_counter() - self._t0) * 1000.0
            if elapsed_ms >= settings.agent_slow_ms:
                await slow_messages.report(self.agent, self.event.message, elapsed_ms)
            if exc is None or not isinstance(exc, Exception):
                return False  # CancelledError and KeyboardInterrupt are BaseExceptions: not ours
            await report_error(self.agent, self.event.message, exc, self.decoded)
            return True
        finally:
            TRACE.reset(self._token)
            app.steps.exit()


class SlowMessages:
    """``agent.lagging`` (reason processing_time) for a message whose handling took at least
    AGENT_SLOW_MS, at most once per ``every_s`` seconds per agent."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.reported: dict[str, float] = {}  # agent -> monotonic time of its last report

    async def report(self, agent: str, message, elapsed_ms: float) -> None:
        now = time.monotonic()
        if now - self.reported.get(agent, -self.every_s) < self.every_s:
            return
        self.reported[agent] = now
        log.warning("agent %s took %.0f ms on %s[%s]@%s", agent, elapsed_ms, message.topic, message.partition,
                    message.offset)
        try:
            await emit(AgentLagging(event_id=new_event_id(), timestamp=int(time.time() * 1000),
                                    source=f"worker:{settings.web_port}", agent=agent, reason="processing_time",
                                    topic=message.topic, partition=message.partition,
                                    processing_ms=round(elapsed_ms, 1), threshold=settings.agent_slow_ms))
        except Exception:  # noqa: BLE001 - a health report must not take the agent down
            log.exception("could not send agent.lagging for %s", agent)


#: The worker's reporter of slow messages (one per process; app/ assembles, processors hold none).
slow_messages = SlowMessages()


async def report_error(agent: str, message, exc: BaseException, decoded: Envelope | None = None) -> None:
    """The ``agent.error`` event and the dead letter of a message whose handling raised ``exc``
    (see :class:`survive`)."""
    reason = f"{type(exc).__name__} in {agent}: {exc}"[:2000]
    log.error("agent %s failed on %s[%s]@%s: %s", agent, message.topic, message.partition, message.offset, reason,
              exc_info=exc)
    AGENT_ERRORS.labels(agent).inc()
    event_id = getattr(decoded, "event_id", None)
    try:
        await emit(AgentError(
            event_id=derived_id("agent.error", agent, message.topic, message.partition, message.offset),
            timestamp=int(time.time() * 1000), token=getattr(decoded, "token", None), source=agent,
            correlation_id=getattr(decoded, "correlation_id", None), agent=agent, error=reason,
            context={"exception": type(exc).__name__, "topic": message.topic, "partition": message.partition,
                     "offset": message.offset, "event_id": str(event_id) if event_id else None}))
        await dead_letter(message, reason, agent)
    except Exception:  # noqa: BLE001 - the report must not take the agent down either
        log.exception("agent %s: could not report the error above", agent)


async def valid_events(stream, expect: tuple, agent: str):
    """Iterate ``(event, decoded)`` over a stream's events; messages that fail to decode or do not
    belong (``expect``: allowed event classes) go to the dead letters with the reason."""
    received = AGENT_EVENTS.labels(agent, "in")
    async for event in stream.events():
        received.inc()
        try:
            decoded = decode_checked(event.value, expect, event.key, event.message.topic)
        except EventError as exc:
            await dead_letter(event.message, exc.reason, agent)
            app.input_order.read(event.message.tp, event.message.offset)
            continue
        yield event, decoded
