"""Pure parts of operating the app: token check, rate limit, log redaction, SLA monitor, the halt
transition, and the dashboard's WebSocket framing."""

from __future__ import annotations

import logging

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.reader import WebSocketReader  # aiohttp's own parser checks our frames

from app.control import RateLimiter
from core.redact import MASK, install_redaction, redact
from app.sla import SlaMonitor
from domain.halt import halt_transition


def test_rate_limiter_allows_a_burst_then_refills_per_client():
    rl = RateLimiter(6)  # 6 a minute: one every 10 s
    assert all(rl.allow("a", now=0.0)[0] for _ in range(6))
    ok, retry = rl.allow("a", now=0.0)
    assert not ok and retry == pytest.approx(10.0)
    assert rl.allow("b", now=0.0)[0], "buckets are per client"
    assert not rl.allow("a", now=9.9)[0]
    assert rl.allow("a", now=20.0)[0]


def test_redaction_removes_secrets_bearer_tokens_and_query_tokens():
    secrets = ["s3cret-token-xyz", "sk-ant-api03-abcdef"]
    line = ("POST /control/halt/ Authorization: Bearer s3cret-token-xyz key=sk-ant-api03-abcdef "
            "GET /dashboard/ws/?token=other-value&x=1 password=hunter22 token=BTC")
    out = redact(line, secrets)
    for s in secrets + ["other-value", "hunter22"]:
        assert s not in out
    assert out.count(MASK) >= 4 and "token=BTC" in out and "x=1" in out


def test_redaction_applies_to_every_log_record(caplog):
    install_redaction(["very-secret-value"])
    with caplog.at_level(logging.INFO):
        logging.getLogger("somewhere.else").info("connecting with %s", "very-secret-value")
        try:
            raise RuntimeError("failed with very-secret-value")
        except RuntimeError:
            logging.getLogger("x").exception("boom")
    text = caplog.text
    assert "very-secret-value" not in text and MASK in text


def test_sla_monitor_counts_every_breach_and_emits_at_most_one_event_per_interval():
    m = SlaMonitor({"risk_evaluation": 5.0}, interval_s=10.0)
    assert not m.observe("risk_evaluation", 4.9)
    assert not m.observe("unknown_metric", 1e9)
    assert m.observe("risk_evaluation", 7.0) and m.observe("risk_evaluation", 12.0)
    due = m.due(now_s=100.0)
    assert [(d[0], d[1], d[2], d[3]) for d in due] == [("risk_evaluation", 2, 12.0, 5.0)]
    m.observe("risk_evaluation", 6.0)
    assert m.due(now_s=105.0) == [], "within the interval: held back"
    assert [(d[1], d[2]) for d in m.due(now_s=110.5)] == [(1, 6.0)]
    assert m.due(now_s=200.0) == []


def _ev(event_type, violation_type=None):
    return {"event_type": event_type, "violation_type": violation_type, "timestamp": 1, "event_id": "e",
            "action_required": "x"}


def test_manual_halt_is_lifted_only_by_a_manual_resume():
    h = halt_transition({}, _ev("risk.alert", "manual"))
    assert h["halted"] and h["manual"]
    assert halt_transition(h, _ev("risk.ok")) is None, "an automatic all-clear keeps the operator's halt"
    assert halt_transition(h, _ev("risk.alert", "max_leverage")) is None
    resumed = halt_transition(h, _ev("risk.ok", "manual"))
    assert resumed["halted"] is False


def test_automatic_halt_resumes_on_risk_ok_and_can_become_manual():
    h = halt_transition({}, _ev("risk.alert", "max_leverage"))
    assert h["halted"] and not h["manual"]
    assert halt_transition(h, _ev("risk.alert", "price_move")) is None
    assert halt_transition(h, _ev("risk.ok"))["halted"] is False
    assert halt_transition(h, _ev("risk.alert", "manual"))["manual"] is True


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_dashboard_frames_parse_as_websocket_text_frames(size):
    import asyncio

    from app.dashboard import ws_text_frame

    payload = ("x" * size).encode()
    frame = ws_text_frame(payload)

    async def parse():
        loop = asyncio.get_running_loop()
        from aiohttp.base_protocol import BaseProtocol
        from aiohttp._websocket.reader import WebSocketDataQueue
        queue = WebSocketDataQueue(BaseProtocol(loop), 2 ** 20, loop=loop)
        reader = WebSocketReader(queue, 0, False, True)
        reader.feed_data(frame)
        return await queue.read()

    msg = asyncio.run(parse())
    assert msg.type == WSMsgType.TEXT and msg.data == payload.decode()


def test_global_tables_apply_each_changelog_event_as_it_arrives():
    # Every worker holds all of a global table's partitions as actives; the recovery path that
    # feeds them batches recovery_buffer_size events, so it must be 1 for live updates.
    from tables import correlations, exposures, halt, latest_prices
    for table in (correlations, exposures, halt, latest_prices):
        assert table.is_global and table.recovery_buffer_size == 1 and table.standby_buffer_size == 1


def test_light_histogram_and_counter_expose_what_prometheus_client_would():
    """The tick path's lock-free histogram and counter give the same exposition as
    prometheus-client's own for the same observations (bucket edges inclusive, +Inf, sum, count)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client import generate_latest

    from core.metrics import LightCounter, LightHistogram

    def samples(reg):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(generate_latest(reg).decode()) for s in fam.samples
                if not s.name.endswith("_created")}

    buckets = (0.001, 0.01, 0.1, 1.0)
    ours, ref = CollectorRegistry(), CollectorRegistry()
    h, rh = (LightHistogram("x_seconds", "x", ["agent"], buckets, registry=ours),
             Histogram("x_seconds", "x", ["agent"], buckets=buckets, registry=ref))
    c, rc = LightCounter("n_total", "n", registry=ours), Counter("n_total", "n", registry=ref)
    for v in (0.0, 0.001, 0.0010001, 0.05, 1.0, 7.5):
        for agent in ("a", "b"):
            h.labels(agent).observe(v)
            rh.labels(agent).observe(v)
        c.inc()
        rc.inc()
    assert samples(ours) == samples(ref)


def test_event_loop_cpu_counts_the_main_threads_cpu_and_no_other_threads():
    """``moondev_event_loop_cpu_seconds_total`` grows by the CPU the main thread (where a worker runs
    its event loop, and where pytest runs this test) burns, and not by another thread's."""
    import threading
    import time

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from core.metrics import EventLoopCPU

    reg = CollectorRegistry()
    loop_cpu = EventLoopCPU(registry=reg)

    def exported() -> float:
        return next(s.value for fam in text_string_to_metric_families(generate_latest(reg).decode())
                    for s in fam.samples if s.name == "moondev_event_loop_cpu_seconds_total")

    def burn(seconds: float) -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass

    assert threading.current_thread() is threading.main_thread()
    v0 = exported()
    burn(0.3)
    v1 = exported()
    other = threading.Thread(target=burn, args=(0.3,))
    other.start()
    other.join()
    v2 = exported()
    assert 0.29 <= v1 - v0 < 1.0
    assert v2 - v1 < 0.05
    assert abs(loop_cpu.seconds() - time.thread_time()) < 0.05


def test_lean_faust_monitor_counts_per_message_hooks_into_faust_families():
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from faust.types import TP

    from app.monitor import LeanPrometheusMonitor

    reg = CollectorRegistry()
    mon = LeanPrometheusMonitor(reg, "faust")
    tp = TP("price.ticks", 3)
    for offset in range(5):
        mon.on_message_in(tp, offset, None)
    assert mon.tp_read_offsets[tp] == 4  # what moondev_consumer_lag counts from
    mon.on_table_get(SimpleNamespace(name="halt"), "paper")
    mon.track_tp_end_offset(TP("price.ticks", 3), 42)
    text = generate_latest(reg).decode()
    assert 'faust_topic_partition_end_offset{partition="3",topic="price.ticks"} 42.0' in text
    assert "faust_messages_received_total 5.0" in text
    assert 'faust_messages_received_per_topic_total{topic="price.ticks"} 5.0' in text
    assert 'faust_table_operations_total{operation="keys_retrieved",table="table.halt"} 1.0' in text
    assert "faust_total_sent_messages_total" in text  # the rarer hooks keep Faust's own metrics


def test_client_address_believes_forwarded_for_only_from_trusted_proxies(monkeypatch):
    from types import SimpleNamespace

    from multidict import CIMultiDict

    from app import control

    def req(peer, *xff):
        headers = CIMultiDict()
        for h in xff:
            headers.add("X-Forwarded-For", h)
        return SimpleNamespace(remote=peer, headers=headers)

    monkeypatch.setattr(control.settings, "trusted_proxies", [])
    assert control.client_address(req("10.0.0.5", "1.2.3.4")) == "10.0.0.5"  # no proxy trusted
    monkeypatch.setattr(control.settings, "trusted_proxies", ["10.0.0.0/24", "127.0.0.1"])
    assert control.client_address(req("10.0.0.5", "1.2.3.4")) == "1.2.3.4"
    assert control.client_address(req("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.7")) == "1.2.3.4"  # spoofed left part ignored
    assert control.client_address(req("10.0.0.5", "6.6.6.6", "1.2.3.4")) == "1.2.3.4"  # repeated headers
    assert control.client_address(req("192.0.2.1", "1.2.3.4")) == "192.0.2.1"  # peer not a proxy
    assert control.client_address(req("10.0.0.5", "not-an-ip")) == "10.0.0.5"
    assert control.client_address(req("10.0.0.5")) == "10.0.0.5"


def test_rate_limit_refusals_are_reported_once_per_interval():
    from app.control import RateLimiter

    rl = RateLimiter(5)
    assert rl.refusals_to_report("addr:x", now=100.0) == 1
    assert [rl.refusals_to_report("addr:x", now=100.0 + i) for i in range(1, 5)] == [0, 0, 0, 0]
    assert rl.refusals_to_report("addr:x", now=110.5) == 5  # the four held back and this one
    assert rl.refusals_to_report("addr:y", now=110.5) == 1  # each client its own


def test_trusted_proxies_setting_refuses_what_is_not_an_address():
    from pydantic import ValidationError

    from core.settings import Settings

    assert Settings(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxy_networks()[0].num_addresses == 2 ** 24
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        Settings(trusted_proxies=["ingress"])


def test_dashboard_hub_keeps_bounded_accounts_and_tokens(monkeypatch):
    """Whatever is written to the topics it reads, the hub keeps at most MAX_ACCOUNTS accounts and
    MAX_TOKENS price series, dropping the one seen longest ago."""
    from app import dashboard
    from core.metrics import BOUNDS_HIT

    def hits(bound: str) -> float:
        return BOUNDS_HIT.labels(bound)._value.get()

    before = hits("dashboard_accounts"), hits("dashboard_tokens")
    monkeypatch.setattr(dashboard, "MAX_ACCOUNTS", 100)
    monkeypatch.setattr(dashboard, "MAX_TOKENS", 10)
    hub = dashboard.Hub(10)
    for i in range(150):
        hub.apply("state", {"account": f"a{i}", "timestamp": 1_000 + i})
    assert len(hub.accounts) == 100 and "a0" not in hub.accounts and "a149" in hub.accounts
    for i in range(15):
        hub.apply("price", {"token": f"T{i}", "price": 1.0, "timestamp": 1_723_161_280_000 + 1000 * i})
    assert len(hub.prices) == 10 and "T0" not in hub.prices and list(hub.prices["T14"])[-1][1] == 1.0
    assert set(hub._price_dirty) <= set(hub.prices)
    assert (hits("dashboard_accounts") - before[0], hits("dashboard_tokens") - before[1]) == (50, 5), "each drop counted"


def test_bounded_label_keeps_the_first_values_and_folds_the_rest():
    from core.metrics import BoundedLabel

    from core.metrics import BOUNDS_HIT

    label = BoundedLabel(cap=3, name="test_label")
    assert [label(a) for a in ("a", "b", "a", "c", "d", "b", "e")] == ["a", "b", "a", "c", "other", "b", "other"]
    assert BOUNDS_HIT.labels("test_label")._value.get() == 2


def test_topic_settings_are_checked_and_reach_every_created_topic():
    """TOPIC_*: min.insync.replicas above the replication factor, or a retention for a topic the
    catalogue does not have, fail when the settings load; the app's catalogue topics and its
    table changelogs carry the factor, min.insync.replicas and the retention (a fresh process, as
    a worker reads them)."""
    import json
    import subprocess
    import sys
    from datetime import timedelta

    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError, match="exceeds TOPIC_REPLICATION_FACTOR"):
        Settings(topic_replication_factor=1, topic_min_insync_replicas=2)
    with pytest.raises(ValidationError, match="not in the catalogue: price.tickz"):
        Settings(topic_retention_hours={"price.tickz": 1})
    s = Settings(topic_retention_hours={"price.ticks": 48})
    assert s.topic_retention("price.ticks") == timedelta(hours=48)
    assert s.topic_retention("orders") == timedelta(days=7)

    code = ("import json, app, tables; from app.main import TOPICS; t = TOPICS['price.ticks']; "
            "c = tables.portfolio.changelog_topic; "
            "print(json.dumps([app.app.conf.topic_replication_factor, t.replicas, dict(t.config), "
            "t.retention.total_seconds(), dict(c.config)]))")
    env = {**__import__("os").environ, "TOPIC_REPLICATION_FACTOR": "3", "TOPIC_MIN_INSYNC_REPLICAS": "2",
           "TOPIC_RETENTION_HOURS": '{"price.ticks": 48}'}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    factor, replicas, config, retention_s, changelog = json.loads(out.stdout.strip().splitlines()[-1])
    assert (factor, replicas, retention_s) == (3, 3, 48 * 3600)
    assert config == changelog == {"min.insync.replicas": "2"}


def test_the_hubs_latest_events_do_not_depend_on_arrival_order():
    """Two replicas' hubs read a topic's partitions in orders of their own: each keeps the
    latest events by (event time, id), so both show the same list once both have read them all
    (a redelivery is kept once)."""
    import random

    from app.dashboard import Hub

    events = [{"event_id": f"id{i:03d}", "timestamp": 1_000 + i // 3, "token": "BTC"} for i in range(500)]
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    a, b = Hub(100), Hub(100)
    for e in events:
        a.apply("signal", e)
    for e in shuffled + shuffled[:50]:
        b.apply("signal", e)
    assert a.recent_events("signal") == b.recent_events("signal") == events[-100:]


def test_the_hub_pushes_a_redelivered_event_or_an_older_account_state_to_no_client():
    """A producer's retry or a replay after a rebalance puts an event on a topic twice; the page
    adds every pushed row, so the hub pushes only what changed what it shows: the same signal
    twice is one row, and an account state older than the one shown does not replace it."""
    import collections
    import uuid

    from app.dashboard import Hub
    from app.main import encode_event, settings
    from models.events import SignalGenerated, StateEvent

    Record = collections.namedtuple("Record", "topic key value timestamp")
    now = 1_723_161_280_000
    sig = SignalGenerated(event_id=uuid.uuid4(), timestamp=now, token="BTC", source="trading", action="BUY",
                          score=70.0, confidence=0.8, agent="trading")

    def state(ts: int, cash: float):
        return StateEvent(event_id=uuid.uuid4(), event_type="state.changed", timestamp=ts, account="acct",
                          source="portfolio", portfolio_value=cash, cash=cash, leverage_ratio=0.0)

    hub = Hub(10)
    hub.clients = {object(): None}
    pushed: list = []
    hub.broadcast = lambda message, kind: pushed.append((kind, message)) or 1
    signals = [Record(settings.topic("signal.generated"), b"BTC", encode_event(sig), now)] * 2
    hub._apply_events("signal", signals, live=True)
    assert [k for k, _ in pushed] == ["signal"] and len(hub.recent_events("signal")) == 1

    pushed.clear()
    newer, older = state(now + 1000, 10_000.0), state(now, 9_000.0)
    states = [Record(settings.topic("state.changes"), b"acct", encode_event(e), now) for e in (newer, newer, older)]
    hub._apply_events("state", states, live=True)
    assert len(pushed) == 1 and hub.accounts["acct"]["cash"] == 10_000.0


def test_a_kept_stream_partition_resumes_only_after_its_seek_to_the_committed_offset():
    """Faust's recovery resumes stream partitions, then seeks them: records fetched in between
    from the position before the rebalance would reach the agents and come again after the seek."""
    import asyncio

    from faust.types import TP

    from app.kafka import SeekBeforeResume

    ticks, changelog = TP("run.price.ticks", 2), TP("app-bar_history-changelog", 2)
    calls: list = []

    class FaustConsumer:  # the part of faust.transport.consumer.Consumer the mixin relies on
        def __init__(self):
            self.app = type("App", (), {"rebalancing": True})()

        def resume_partitions(self, tps):
            calls.append(("resume", set(tps)))

        async def perform_seek(self):
            calls.append(("seek",))

        def assignment(self):
            return {ticks, changelog}

        def _is_changelog_tp(self, tp):
            return tp.topic.endswith("-changelog")

    class Consumer(SeekBeforeResume, FaustConsumer):
        pass

    c = Consumer()
    c.resume_partitions([ticks, changelog])
    assert calls == [("resume", {changelog})], "a changelog resumes at once, a stream partition waits"
    asyncio.run(c.perform_seek())
    assert calls[1:] == [("seek",), ("resume", {ticks})]
    c.app.rebalancing = False
    calls.clear()
    c.resume_partitions([ticks])  # flow control outside a rebalance (a drained buffer) is not held
    assert calls == [("resume", {ticks})]

    # the fetcher's own seek back, when a fetch returns while a rebalance has stopped the flow,
    # could end after the recovery's seek had resumed the streams: it is left to the recovery
    c.app.rebalancing, c.flow_active = True, False
    c._called_by_fetch = lambda: True
    calls.clear()
    asyncio.run(c.perform_seek())
    assert calls == [], "no seek from the fetch loop while the flow is stopped in a rebalance"
    c._called_by_fetch = lambda: False
    asyncio.run(c.perform_seek())
    assert calls == [("seek",)], "the recovery's seek, whenever it comes"


def test_the_committed_offset_never_passes_an_unacked_message():
    """Faust commits the first run of acked offsets when it starts one past the committed offset
    (and always before a partition's first commit): a single unacked message there, the tick
    stream's held first tick of an open bar, was committed over."""
    from collections import defaultdict
    from weakref import WeakSet

    from faust.transport.consumer import Consumer as FaustConsumer
    from faust.types import TP
    from intervaltree import IntervalTree

    from app.kafka import CommitBelowUnacked

    tp = TP("run.price.ticks", 0)

    class Faust:  # faust.transport.consumer.Consumer's commit bookkeeping, as it is
        _new_offset = FaustConsumer._new_offset
        _filter_committable_offsets = FaustConsumer._filter_committable_offsets
        _should_commit = FaustConsumer._should_commit

        def __init__(self):
            self._gap, self._acked, self._acked_index = defaultdict(IntervalTree), defaultdict(list), defaultdict(set)
            self._committed_offset = defaultdict(lambda: None)
            self._unacked_messages = WeakSet()
            self.messages = []

        def deliver(self, *offsets):
            for offset in offsets:
                m = type("Message", (), {"tp": tp, "offset": offset, "acked": False})()
                self.messages.append(m)
                self._unacked_messages.add(m)

        def ack(self, *offsets):  # as Consumer.ack
            for m in self.messages:
                if m.offset in offsets and not m.acked:
                    m.acked = True
                    self._unacked_messages.discard(m)
                    self._acked_index[tp].add(m.offset)
                    self._acked[tp].append(m.offset)

        def commit(self):
            offsets = self._filter_committable_offsets([tp])
            self._committed_offset.update(offsets)
            return offsets.get(tp)

    class Fixed(CommitBelowUnacked, Faust):
        pass

    for consumer, skips in ((Faust(), True), (Fixed(), False)):
        consumer._committed_offset[tp] = 100
        consumer.deliver(*range(100, 106))
        consumer.ack(*range(101, 106))  # 100, the first tick of an open bar, held
        assert (consumer.commit() == 106) is skips
    fixed = consumer
    assert fixed.commit() is None and fixed._acked[tp] == list(range(101, 106)), "kept for later"
    fixed.deliver(*range(106, 112))
    fixed.ack(100, 106, 107, 109, 110, 111)  # the bar closed; 108 is the next bar's first tick
    assert fixed.commit() == 108
    assert fixed.commit() is None and fixed._acked[tp] == [109, 110, 111]
    fixed.ack(108)
    assert fixed.commit() == 112

    # before a partition's first commit Faust checks nothing at all
    for consumer, skips in ((Faust(), True), (Fixed(), False)):
        consumer.deliver(0, 1, 2, 3)
        consumer.ack(1, 2, 3)
        assert (consumer.commit() == 4) is skips
    consumer.ack(0)
    assert consumer.commit() == 4

    # a message from before the last seek (below the committed offset) holds nothing back
    fixed = Fixed()
    fixed.deliver(5)
    fixed._committed_offset[tp] = 10
    fixed.deliver(10, 11)
    fixed.ack(10, 11)
    assert fixed.commit() == 12


def test_a_shortcut_waits_until_the_agent_has_read_what_its_partition_held_before():
    """After a rebalance a partition may hold records its agent has not read (another worker's
    signals, this worker's records sent the slow way): a step must not put a later record through
    the agent's processor before them."""
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from app.kafka import InputOrder

    signals, other = TP("run.signal.generated", 3), TP("run.price.ticks", 3)

    class Consumer:
        def assignment(self):
            return {signals, other}

        async def highwaters(self, *tps):
            assert set(tps) == {signals}, "only the watched topics are asked for"
            return {signals: 120}

    order = InputOrder()
    order.watch("run.signal.generated")
    assert not order.ready(signals), "nothing known before the first seek"
    asyncio.run(order.start(Consumer(), {signals: 100}))
    assert not order.ready(signals), "records 100-119 are still to be read"
    order.read(signals, 118)
    assert not order.ready(signals)
    order.read(signals, 119)
    assert order.ready(signals)

    async def sent_the_slow_way():
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        order.sent(signals, first)
        order.sent(signals, second)
        assert not order.ready(signals), "its offset is not known yet: it may be anywhere after 119"
        first.set_result(SimpleNamespace(offset=120))
        second.set_result(SimpleNamespace(offset=121))
        await asyncio.sleep(0)  # done callbacks run on the loop
        assert not order.ready(signals)
        order.read(signals, 120)
        assert not order.ready(signals)
        order.read(signals, 121)
        assert order.ready(signals), "everything before the shortcut's record has been read"
        failed = loop.create_future()
        order.sent(signals, failed)
        failed.set_exception(RuntimeError("not delivered"))
        await asyncio.sleep(0)
        assert order.ready(signals), "a send that failed put nothing in the partition"

        late = loop.create_future()
        order.sent(signals, late)
        order.reset()  # a rebalance begins
        assert not order.ready(signals)
        await order.start(Consumer(), {signals: 130})  # nothing left to read from 130 on
        assert order.ready(signals)
        late.set_result(SimpleNamespace(offset=125))
        await asyncio.sleep(0)
        assert order.ready(signals), "a send of the last generation counts in its own only"

    asyncio.run(sent_the_slow_way())


def test_the_broker_holds_a_fetch_of_every_partition_long_and_one_that_leaves_a_partition_out_short():
    """A fetch that covers every assigned partition is answered as soon as any gets a record, so it
    may wait long (an idle worker asks rarely); one that leaves out a partition whose records the
    worker has not taken yet must wait briefly, or that partition, once taken, waits behind it,
    and goes at most every interval."""
    import asyncio

    asyncio.run(_fetch_waits())  # aiokafka's SubscriptionState wants a running loop


async def _fetch_waits():
    import collections

    from aiokafka.consumer.fetcher import FetchResult
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition

    from app.kafka import WaitByFetchFetcher

    ticks, signals = TopicPartition("price.ticks", 0), TopicPartition("signal.generated", 0)
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user({ticks, signals})
    assignment = subscriptions.subscription.assignment
    for tp in (ticks, signals):
        assignment.state_value(tp).seek(0)

    class Cluster:  # one broker, leader of everything
        def leader_for_partition(self, tp):
            return 0

        def broker_metadata(self, node_id):
            return object()

    f = object.__new__(WaitByFetchFetcher)  # the fetch loop's state, without its background task
    f.__dict__.update(_client=type("Client", (), {"cluster": Cluster()})(), _records=collections.OrderedDict(),
                      _in_flight=set(), _preferred_read_replica={}, _max_partition_fetch_bytes=1 << 20,
                      _fetch_min_bytes=1, _fetch_max_bytes=50 << 20, _isolation_level=0, _client_rack=None,
                      _fetcher_timeout=0.2, whole_wait_ms=500, partial_wait_ms=10)

    def fetch():
        (requests, _reset, _timeout, _invalid, _resume) = f._get_actions_per_node(assignment)
        [(node, request)] = requests
        return request._max_wait_ms, sorted(t for t, _ in request.topics)

    assert fetch() == (500, ["price.ticks", "signal.generated"])
    # the tick partition's records fetched and not taken for longer than aiokafka's prefetch backoff
    f._records[ticks] = FetchResult(ticks, assignment=assignment, partition_records=None, backoff=0)
    assert fetch() == (10, ["signal.generated"])
    del f._records[ticks]
    changelog = TopicPartition("app-bar_history-changelog", 0)
    subscriptions.assign_from_user({ticks, signals, changelog})
    assignment = subscriptions.subscription.assignment
    for tp in (ticks, signals, changelog):
        assignment.state_value(tp).seek(0)
    subscriptions.pause(changelog)  # Faust keeps an active changelog paused once it has read it
    assert fetch() == (500, ["price.ticks", "signal.generated"]), "a paused partition is not waited for"
    subscriptions.resume(changelog)
    # records of a changelog the worker is not recovering from: Faust never takes them
    f.untaken_topics = lambda: {"app-bar_history-changelog"}
    f._records[changelog] = FetchResult(changelog, assignment=assignment, partition_records=None, backoff=0)
    assert fetch() == (500, ["price.ticks", "signal.generated"])
    # just fetched, with aiokafka's prefetch backoff (0.1 s), which would hold every fetch from the
    # broker until it ran out: the first write to a changelog stalled the tick stream for 100 ms
    f._records[changelog] = FetchResult(changelog, assignment=assignment, partition_records=None, backoff=0.1)
    assert fetch() == (500, ["price.ticks", "signal.generated"]), "untaken changelog records hold no fetch"
    del f._records[changelog]
    # a stream partition's fresh records still hold the broker's fetches for the backoff: the
    # consumer is about to take them (aiokafka's behaviour, kept)
    f._records[ticks] = FetchResult(ticks, assignment=assignment, partition_records=None, backoff=0.1)
    requests, _reset, timeout, _invalid, _resume = f._get_actions_per_node(assignment)
    assert requests == [] and 0 < timeout <= 0.1
    del f._records[ticks]
    subscriptions.pause(changelog)

    # while the tick partition's records wait, the idle others are asked for at most every interval
    f.partial_interval_s = 60.0
    f._records[ticks] = FetchResult(ticks, assignment=assignment, partition_records=None, backoff=0)
    assert fetch() == (10, ["signal.generated"])
    requests, _reset, timeout, _invalid, _resume = f._get_actions_per_node(assignment)
    assert requests == [] and timeout <= 0.2, "no second fetch of the idle partitions yet; look again soon"
    del f._records[ticks]  # the consumer took them: the next fetch covers it again, at once
    assert fetch() == (500, ["price.ticks", "signal.generated"])

    # partitions Faust paused in its own books (the worker's consumer thread names its paused
    # changelogs outside a rebalance) are named in no fetch and make none partial, and come back
    # in the next fetch once they are no longer left out
    from faust.types import TP
    subscriptions.resume(changelog)
    assert fetch() == (500, ["app-bar_history-changelog", "price.ticks", "signal.generated"])
    f.left_out = lambda: frozenset({TP("app-bar_history-changelog", 0)})  # Faust's TP, as the consumer keeps it
    assert fetch() == (500, ["price.ticks", "signal.generated"])
    f._records[ticks] = FetchResult(ticks, assignment=assignment, partition_records=None, backoff=0)
    f.partial_interval_s = 0.0
    assert fetch() == (10, ["signal.generated"])
    del f._records[ticks]
    f.left_out = frozenset
    assert fetch() == (500, ["app-bar_history-changelog", "price.ticks", "signal.generated"])


def test_the_fetches_leave_out_the_paused_changelogs_outside_a_rebalance_only():
    """Faust pauses a partition in its own books only; the worker's fetches leave out the
    changelog partitions it has paused (its own tables' active ones), but not its paused stream
    partitions, and nothing while it rebalances."""
    from types import SimpleNamespace

    from faust.types import TP

    from app.kafka import paused_changelogs

    log, ticks = TP("app-bar_history-changelog", 3), TP("price.ticks", 3)
    app = SimpleNamespace(rebalancing=False, tables=SimpleNamespace(
        changelog_topics={"app-bar_history-changelog", "app-latest_prices-changelog"}))
    consumer = SimpleNamespace(_paused_partitions={log, ticks})
    assert paused_changelogs(app, consumer) == {log}, "a resumed (global table) changelog is fetched"
    app.rebalancing = True
    assert paused_changelogs(app, consumer) == frozenset()
    app.rebalancing = False
    consumer._paused_partitions = set()
    assert paused_changelogs(app, consumer) == frozenset()


def test_raw_schema_decodes_every_key_and_value_as_fausts_own_schema_does():
    """The worker's schema hands raw untyped keys and values over without Faust's serializer
    registry; whatever it decodes, and each event it makes, must equal what Faust's own gives."""
    import asyncio

    import faust
    from faust.types import TP
    from faust.types.tuples import Message

    from app.kafka import App, RawSchema

    app = App("raw-schema-test", key_serializer="raw", value_serializer="raw", Schema=RawSchema)

    def message(key, value):
        return Message(topic="t", partition=0, offset=1, timestamp=0.0, timestamp_type=0, headers=[],
                       key=key, value=value, checksum=None, tp=TP("t", 0))

    cases = [dict(), dict(key_type=bytes, value_type=bytes), dict(key_type=str, value_type=str),
             dict(key_serializer="json", value_serializer="json"), dict(value_serializer="raw")]
    records = [(b"BTC", b'{"event_type":"price.tick"}'), (None, None), (b"", b""), (b'"k"', b'{"a": 1}')]

    async def decode_all():
        for kwargs in cases:
            ours, theirs = RawSchema(**kwargs), faust.Schema(**kwargs)
            decode_ours, decode_theirs = ours.compile(app), theirs.compile(app)
            for key, value in records:
                got, want = await decode_ours(message(key, value)), await decode_theirs(message(key, value))
                if want is None:  # not JSON: both report the error (here to a no-op) and make no event
                    assert got is None, (kwargs, key, value)
                    continue
                assert (got.key, got.value) == (want.key, want.value), (kwargs, key, value)
                assert type(got) is type(want)
                assert type(got.key) is type(want.key) and type(got.value) is type(want.value), (kwargs, key, value)

    asyncio.run(decode_all())
    assert app.conf.Schema is RawSchema


def test_a_stopping_worker_starts_no_new_step_and_closes_its_tables_after_those_in_flight():
    """Faust closes the tables before it stops the agents: a step still running would write its
    state to closed tables while its input offset is committed after."""
    import asyncio

    from app.kafka import Steps

    async def scenario():
        steps, order = Steps(), []

        async def step(name, hold):
            await steps.enter()
            order.append(f"{name} started")
            await asyncio.sleep(hold)
            order.append(f"{name} wrote its state")
            steps.exit()

        running = asyncio.create_task(step("in flight", 0.2))
        await asyncio.sleep(0)
        drained = asyncio.create_task(steps.drain(timeout=5))
        await asyncio.sleep(0)
        late = asyncio.create_task(step("late", 0))
        assert await drained
        order.append("tables closed")
        await asyncio.sleep(0.05)
        assert not late.done(), "a step that would start after the stop began waits for its cancellation"
        late.cancel()
        await running
        assert order == ["in flight started", "in flight wrote its state", "tables closed"]

        stuck = Steps()
        await stuck.enter()
        assert not await stuck.drain(timeout=0.05), "a step that never ends does not hold the stop forever"

        # state that waits for the broker's acks is written before the tables close, or dropped
        from app.main import StoreAfterAcks
        from processors.base import WriteBehind

        loop = asyncio.get_running_loop()
        table = {}
        store = WriteBehind(table)
        queue = StoreAfterAcks("ticks", (store,))
        waiting = Steps()
        waiting.writes.append(queue)
        ack = loop.create_future()
        store["BTC"] = 1
        queue.hold([ack], None)
        loop.call_later(0.1, ack.set_result, None)
        assert await waiting.drain(timeout=5) and table == {"BTC": 1} and len(queue) == 0

        never = loop.create_future()
        store["BTC"] = 2
        queue.hold([never], None)
        assert not await waiting.drain(timeout=0.1), "acks that never come do not hold the stop forever"
        assert len(queue) == 0 and table == {"BTC": 1} and store["BTC"] == 1  # dropped, not written late
        never.set_result(None)
        await asyncio.sleep(0)
        assert table == {"BTC": 1}

    asyncio.run(scenario())


class Observed:
    """A histogram child that keeps what it is given."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, seconds: float) -> None:
        self.seen.append(seconds)


def test_a_step_with_state_to_store_waits_for_its_acks_and_reports_the_wait():
    import asyncio

    from app.main import holding
    from processors.base import WriteBehind

    async def run() -> None:
        loop = asyncio.get_running_loop()
        table, waits = {}, Observed()
        store = WriteBehind(table)
        ack = loop.create_future()
        loop.call_later(0.05, ack.set_result, None)
        async with holding((store,), waits) as pending:
            store["BTC"] = {"closed": 1}
            pending.append(ack)
            assert table == {} and store["BTC"] == {"closed": 1}  # read at once, stored after the ack
        assert ack.done() and table == {"BTC": {"closed": 1}}
        assert len(waits.seen) == 1 and 0.03 < waits.seen[0] < 5.0

        # nothing to store: no wait for the sends, and none reported
        unacked = loop.create_future()
        async with holding((store,), waits) as pending:
            pending.append(unacked)
        assert not unacked.done() and len(waits.seen) == 1
        unacked.cancel()

    asyncio.run(run())


def test_write_behind_layers_are_read_until_written_and_written_in_order():
    from processors.base import WriteBehind

    table = {"BTC": 1, "ETH": 1}
    store = WriteBehind(table)
    store["BTC"] = 2
    first = store.hand_over()
    store["BTC"] = 3
    del store["ETH"]
    second = store.hand_over()
    store["SOL"] = 1  # still pending
    assert store["BTC"] == 3 and "ETH" not in store and store.get("SOL") == 1 and table == {"BTC": 1, "ETH": 1}
    assert sorted(store) == ["BTC", "SOL"] and dict(store.items()) == {"BTC": 3, "SOL": 1} and len(store) == 2
    store.apply(first)
    assert table == {"BTC": 2, "ETH": 1} and store["BTC"] == 3  # the newer layer is still read over the table
    store.apply(second)
    assert table == {"BTC": 3} and store.flying == [] and store["SOL"] == 1
    dropped = store.hand_over()
    store.drop(dropped)
    assert "SOL" not in store and table == {"BTC": 3}
    assert store.hand_over() == {} and store.flying == []  # nothing held: no layer

    # what is read from a layer in flight is changed in place by the next step: the layer is
    # still written as it was handed over
    store["BTC"] = {"ind": {"win": [1.0]}}
    layer = store.hand_over()
    state = store["BTC"]["ind"]
    state["win"].append(2.0)
    store["BTC"] = {"ind": state}
    assert layer == {"BTC": {"ind": {"win": [1.0]}}}
    store.apply(layer)
    assert table["BTC"] == {"ind": {"win": [1.0]}} and store["BTC"] == {"ind": {"win": [1.0, 2.0]}}


def test_state_is_stored_after_its_acks_in_step_order_while_the_stream_goes_on(monkeypatch):
    import asyncio
    import weakref

    from faust.streams import _current_event
    from faust.types import TP

    import app.main as main
    from processors.base import WriteBehind

    class Event:
        def __init__(self, partition: int, offset: int) -> None:
            self.message = type("M", (), {"tp": TP("t", partition), "topic": "t", "partition": partition,
                                          "offset": offset})()

    class Table(dict):
        """Notes the event each write was made in (a Faust table picks its partition from it)."""

        def __init__(self) -> None:
            super().__init__()
            self.writes: list = []

        def __setitem__(self, key, value) -> None:
            ref = _current_event.get(None)
            self.writes.append((key, value, ref() if ref is not None else None))
            super().__setitem__(key, value)

    reported: list = []

    async def report_error(agent, message, exc, decoded=None):
        reported.append((agent, message.offset, type(exc).__name__))

    monkeypatch.setattr(main, "report_error", report_error)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        table, stored = Table(), Observed()
        store = WriteBehind(table)
        queue = main.StoreAfterAcks("ticks", (store,), stored=stored)
        e1, e2, e3 = Event(0, 1), Event(1, 7), Event(0, 2)
        acks = [loop.create_future() for _ in range(3)]
        done: list = []

        async def step(event, key, value, sends):
            token = _current_event.set(weakref.ref(event))
            try:
                async with queue.step() as pending:
                    store[key] = value
                    pending.extend(sends)
            finally:
                _current_event.reset(token)

        await step(e1, "BTC", 1, [acks[0]])
        await step(e2, "ETH", 1, [acks[1]])
        queue.after(lambda: done.append("e1's bar stored"), e1)
        await step(e3, "BTC", 2, [acks[2], None])
        assert table == {} and store["BTC"] == 2 and store["ETH"] == 1 and len(queue) == 4
        acks[2].set_result(None)  # a later step's acks first: nothing is written out of turn
        acks[1].set_result(None)
        await asyncio.sleep(0)
        assert table == {} and done == []
        acks[0].set_exception(RuntimeError("broker refused"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # every layer written in step order, each inside its own step's event
        assert [(k, v, e) for k, v, e in table.writes] == [("BTC", 1, e1), ("ETH", 1, e2), ("BTC", 2, e3)]
        assert done == ["e1's bar stored"] and len(queue) == 0 and len(stored.seen) == 3
        assert reported == [("ticks", 1, "RuntimeError")]  # the failed send, reported as survive would

        # a revoked partition's layers and callbacks are dropped; the others are written
        ack4, ack5 = loop.create_future(), loop.create_future()
        await step(Event(0, 3), "BTC", 3, [ack4])
        await step(Event(1, 8), "ETH", 2, [ack5])
        queue.after(lambda: done.append("revoked"), Event(0, 3))
        queue.after(lambda: done.append("kept"), Event(1, 8))
        queue.on_revoked({TP("t", 0)})
        assert store["BTC"] == 2 and store["ETH"] == 2
        ack4.set_result(None)
        ack5.set_result(None)
        await asyncio.sleep(0)
        assert table["BTC"] == 2 and table["ETH"] == 2 and done[-1] == "kept" and "revoked" not in done
        assert len(queue) == 0 and store.flying == []

    asyncio.run(run())
