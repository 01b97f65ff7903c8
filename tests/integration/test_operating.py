"""Operating a worker on the real broker and database: the live dashboard in headless Chromium,
the control endpoints (tokens, audit, rate limit, redaction), read auth, metrics and SLA
violations."""

from __future__ import annotations

import json
import socket
import threading
import uuid
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.local import ROOT, SAMPLE, Stack, wait_until

pytestmark = pytest.mark.integration

ALICE, BOB, OPERATOR = "alice-token-7f3a9c2e1b", "bob-token-44d0e8a1c5", "operator-token-91bc33de07"
CAROL = "carol-token-3d8e61f0aa"
WRONG = "wrong-token-0c1d2e3f4a"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / ".local" / "test-artifacts"


def post(worker, path: str, body: dict | None, token: str | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(worker.url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def status_of(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def settled_fills(worker) -> int | None:
    """The portfolio's fill count once it stays the same for 2 s."""
    before = worker.get("/portfolio/")["fills"]
    time.sleep(2)
    return before if worker.get("/portfolio/")["fills"] == before else None


def events(worker, types: str) -> list[dict]:
    return worker.get(f"/events/?start=0&end=9999999999999&type={types}&limit=1000")["events"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, module_database_url):
    stack = Stack(tmp_path_factory.mktemp("operating"), database_url=module_database_url, BAR_SECONDS="1",
                  CONSENSUS_MIN_AGENTS="1", CONTROL_TOKEN=OPERATOR,
                  CONTROL_TOKENS=json.dumps({"alice": ALICE, "bob": BOB, "carol": CAROL}), CONTROL_RATE_PER_MINUTE="5",
                  TRUSTED_PROXIES=json.dumps(["127.0.0.1"]),  # as if the tests were the ingress
                  # a limit no order meets, to see breaches counted and emitted
                  SLA_LIMITS_MS=json.dumps({"signal_to_order": 0.0001}), SLA_EVENT_INTERVAL_SECONDS="1")
    worker = stack.worker("w1").start()
    try:
        yield stack, worker
    finally:
        stack.stop()


def test_a_dashboard_in_headless_chromium_shows_a_trade_appear(run):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: 'make test' installs Debian's chromium (scripts/system-deps.sh)")
    from playwright.sync_api import sync_playwright

    stack, worker = run
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(worker.url + "/dashboard/")
            page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=30_000)
            assert page.locator("#trades tbody tr").count() == 0, "no trade before the feed"

            feeder = threading.Thread(target=stack.feed, args=(SAMPLE, "max"), daemon=True)
            feeder.start()
            page.wait_for_selector("#trades tbody tr", timeout=120_000)  # pushed, not reloaded
            feeder.join(300)
            wait_until(lambda: worker.metrics().get("moondev_ticks_consumed_total", 0) >= 35_389, 300,
                       "every tick processed")
            fills = wait_until(lambda: settled_fills(worker), 120, "the portfolio settled")
            # the page converges on the worker's state by pushes alone
            page.wait_for_function(f"document.getElementById('fills').textContent === '{fills}'", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('#decisions tbody tr').length > 0", timeout=30_000)
            page.wait_for_function("document.querySelector('#chart canvas') !== null", timeout=30_000)
            page.wait_for_timeout(1500)  # the next 1 s price push
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)

            equity = page.locator("#equity").inner_text()
            trades = page.locator("#trades tbody tr").count()
            signals = page.locator("#signals tbody tr").count()
            positions = page.locator("#positions tbody tr").all_inner_texts()
            tokens = page.locator("#token option").all_inner_texts()
        finally:
            browser.close()
    assert not errors, errors
    assert equity.startswith("$") and trades >= 1 and signals >= 1
    assert positions and set(tokens) >= {"BTC", "ETH"}
    assert shot.stat().st_size > 50_000, "a populated page, not a blank one"
    assert fills >= 1 and trades >= min(fills, 50)


def test_a2_concurrent_dashboard_clients_each_receive_every_state_delta(run):
    import asyncio

    import aiohttp
    from aiokafka import AIOKafkaProducer

    stack, worker = run
    clients, n = 50, 40
    topic = stack.env["TOPIC_PREFIX"] + "state.changes"

    async def scenario() -> list[list[tuple[str, int]]]:
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(worker.url + "/dashboard/ws/") for _ in range(clients)]
            for ws in sockets:
                assert (await ws.receive_json())["type"] == "snapshot"
            producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
            await producer.start()
            try:
                for i in range(n):
                    account = f"ws-test-{i % 4}"
                    event = {"event_id": str(uuid.uuid4()), "event_type": "state.changed", "timestamp": 1_700_000_000_000 + i,
                             "source": "test", "account": account, "portfolio_value": 1e5, "cash": 1e5,
                             "leverage_ratio": 0.0, "positions": {}, "delta": {"seq": i}}
                    await producer.send_and_wait(topic, json.dumps(event).encode(), key=account.encode())
            finally:
                await producer.stop()

            async def collect(ws) -> list[tuple[str, int]]:
                got = []
                while len(got) < n:
                    msg = await asyncio.wait_for(ws.receive_json(), 30)
                    if msg["type"] == "state" and msg["event"]["account"].startswith("ws-test-"):
                        got.append((msg["event"]["account"], msg["event"]["delta"]["seq"]))
                return got
            try:
                return await asyncio.gather(*[collect(ws) for ws in sockets])
            finally:
                for ws in sockets:
                    await ws.close()

    received = asyncio.run(scenario())
    want = sorted((f"ws-test-{i % 4}", i) for i in range(n))
    for got in received:
        assert sorted(got) == want, "every client gets every delta once"
        for account in {a for a, _ in got}:
            seqs = [s for a, s in got if a == account]
            assert seqs == sorted(seqs), "in order per account (its partition's order)"


HOSTILE_TOKEN = "<img src=x onerror=alert(1)>"


def test_a3_hostile_event_fields_show_as_text_and_the_page_is_locked_down(run):
    """A schema-valid signal whose token and agent are markup shows as text: no element is made
    from it and no script runs. The page and its assets carry a CSP, and a page on another origin
    cannot open the dashboard WebSocket."""
    import asyncio

    import aiohttp
    from aiokafka import AIOKafkaProducer
    from playwright.sync_api import sync_playwright

    stack, worker = run
    with urllib.request.urlopen(worker.url + "/dashboard/", timeout=10) as r:
        headers = dict(r.headers)
    csp = headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers.get("X-Content-Type-Options") == "nosniff" and headers.get("Referrer-Policy") == "no-referrer"

    async def handshakes() -> list[int]:
        out = []
        async with aiohttp.ClientSession() as session:
            for origin in ("http://evil.example.com", worker.url, None):
                try:
                    ws = await session.ws_connect(worker.url + "/dashboard/ws/",
                                                  headers={"Origin": origin} if origin else {})
                    out.append(101)
                    await ws.close()
                except aiohttp.WSServerHandshakeError as exc:
                    out.append(exc.status)
        return out

    assert asyncio.run(handshakes()) == [403, 101, 101]

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
        await producer.start()
        try:
            event = {"event_id": str(uuid.uuid4()), "event_type": "signal.generated", "timestamp": 1_723_161_600_000,
                     "token": HOSTILE_TOKEN, "source": "test", "action": "HOLD", "score": 0, "confidence": 0.5,
                     "agent": "<script>document.title='pwned'</script>", "reasons": ["<b>bold</b>"]}
            await producer.send_and_wait(stack.env["TOPIC_PREFIX"] + "signal.generated", json.dumps(event).encode(),
                                         key=HOSTILE_TOKEN.encode())
        finally:
            await producer.stop()

    dialogs: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            # The CSP is checked above; here it is bypassed, so that the page's own escaping is what
            # is tested (and Playwright may evaluate its polling predicates).
            page = browser.new_context(bypass_csp=True).new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(worker.url + "/dashboard/")
            page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=30_000)
            producer = threading.Thread(target=lambda: asyncio.run(produce()))  # Playwright holds this thread's loop
            producer.start()
            producer.join(30)
            page.wait_for_function(f"[...document.querySelectorAll('#signals td')].some("
                                   f"td => td.textContent === {json.dumps(HOSTILE_TOKEN)})", timeout=30_000)
            page.wait_for_timeout(500)
            made = page.evaluate("document.querySelectorAll('#signals img, #signals script, #signals b').length")
            title = page.title()
            agent_shown = page.evaluate("[...document.querySelectorAll('#signals td')].some("
                                        "td => td.textContent.startsWith('<script>'))")
        finally:
            browser.close()
    assert made == 0 and agent_shown and not dialogs and title != "pwned", (made, dialogs, title)
    assert not errors, errors


def test_b_control_refuses_missing_or_wrong_token_with_401_and_logs_no_secret(run):
    stack, worker = run
    code, headers, body = post(worker, "/control/halt/", {"reason": "no token"})
    assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert post(worker, "/control/close-all/", {"reason": "wrong token"}, WRONG)[0] == 401
    assert post(worker, "/control/resume/", {"reason": "not a bearer"}, None)[0] == 401
    req = urllib.request.Request(worker.url + "/control/halt/", data=b"{}", method="POST",
                                 headers={"Authorization": f"Basic {ALICE}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 401
    assert worker.get("/halt/")["halted"] == []
    time.sleep(1)
    log = worker.log_path.read_text(errors="replace")
    assert "control halt for paper by anonymous" in log
    for secret in (ALICE, BOB, OPERATOR, WRONG):
        assert secret not in log


def test_c_halt_resume_and_close_all_are_audited_with_who_and_why(run):
    stack, worker = run
    assert worker.get("/positions/")["positions"], "the feed left open positions"
    code, _, body = post(worker, "/control/halt/", {"reason": "maintenance window"}, ALICE)
    assert code == 202 and body["who"] == "alice"
    halted = wait_until(lambda: worker.get("/halt/")["accounts"].get("paper", {}).get("halted"), 30, "halt flag")
    assert halted
    assert "alice" in worker.get("/halt/")["accounts"]["paper"]["reason"]

    assert post(worker, "/control/close-all/", {"reason": "flatten before maintenance"}, ALICE)[0] == 202
    wait_until(lambda: worker.get("/positions/")["positions"] == [], 60, "every position closed (reduce-only)")

    assert post(worker, "/control/resume/", {"reason": "maintenance over"}, OPERATOR)[0] == 202
    wait_until(lambda: worker.get("/halt/")["halted"] == [], 30, "trading resumed")

    def accepted():
        # the three accepted requests' audits (the refused ones of the test before are stored too,
        # so a count of all control.action events can be reached before the last audit is stored)
        got = [e for e in events(worker, "control.action") if e["data"]["outcome"] == "accepted"]
        return got if len(got) >= 3 else None

    audits = wait_until(accepted, 60, "audit events stored")
    trail = [(e["data"]["action"], e["data"]["who"], e["data"]["why"]) for e in audits]
    assert trail == [("halt", "alice", "maintenance window"), ("close_all", "alice", "flatten before maintenance"),
                     ("resume", "operator", "maintenance over")]
    refused = [e["data"] for e in events(worker, "control.action") if e["data"]["outcome"] == "unauthorized"]
    assert len(refused) >= 3 and all(r["who"] == "anonymous" and r["client"] == "127.0.0.1" for r in refused)
    halts = [e for e in events(worker, "risk.alert") if e["data"].get("violation_type") == "manual"]
    assert halts and str(halts[0]["data"]["correlation_id"]) == str(audits[0]["event_id"])


def test_d_control_rate_limit_per_client(run):
    stack, worker = run
    codes = [post(worker, "/control/halt/", {}, BOB)[0] for _ in range(5)]  # no reason: 400, still counted
    assert codes == [400] * 5
    code, headers, body = post(worker, "/control/halt/", {"reason": "sixth"}, BOB)
    assert code == 429 and int(headers["Retry-After"]) >= 1
    assert post(worker, "/control/halt/", {}, ALICE)[0] == 400, "another client has its own bucket"


def test_e_metrics_faust_sensors_domain_metrics_and_sla_violations(run):
    stack, worker = run
    m = worker.metrics()
    for name in ("faust_messages_received_total", "faust_total_sent_messages_total", "faust_assignment_operations_total"):
        assert any(k.startswith(name) for k in m), name
    assert m['moondev_agent_events_total{agent="risk",direction="in"}'] >= 35_000
    assert m['moondev_agent_events_total{agent="portfolio",direction="out"}'] >= 1
    assert m['moondev_processing_seconds_count{agent="trading"}'] > 0
    assert m["moondev_tick_to_decision_seconds_count"] > 0
    assert m["moondev_sink_batch_rows_count"] > 0
    assert any(k.startswith("moondev_consumer_lag{") for k in m)
    assert m['moondev_control_requests_total{action="halt",outcome="unauthorized"}'] >= 1
    assert m['moondev_control_requests_total{action="halt",outcome="rate_limited"}'] >= 1
    breaches = m['moondev_sla_violations_total{metric="signal_to_order"}']
    assert breaches > 0
    emitted = wait_until(lambda: [e["data"] for e in events(worker, "metric.sla_violation")
                                  if e["data"]["metric"] == "signal_to_order"], 30, "metric.sla_violation stored")
    assert all(v["limit"] == 0.0001 and v["value"] > v["limit"] for v in emitted)
    assert sum(v["breaches"] for v in emitted) <= breaches
    times = sorted(e["timestamp"] for e in events(worker, "metric.sla_violation")
                   if e["data"]["metric"] == "signal_to_order")
    assert all(b - a >= 900 for a, b in zip(times, times[1:])), "at most one event per metric per interval"


def test_f_read_auth_guards_views_but_not_probes(tmp_path, module_database_url):
    stack = Stack(tmp_path, database_url=module_database_url, READ_AUTH="true", CONTROL_TOKEN=OPERATOR)
    worker = stack.worker("ra").start()
    try:
        for path in ("/portfolio/", "/positions/", "/signals/", "/halt/", "/metrics/", "/dashboard/ws/", "/router/"):
            assert status_of(worker.url + path) == 401, path
            assert status_of(worker.url + path, WRONG) == 401, path
        for path in ("/portfolio/", "/positions/", "/signals/", "/halt/", "/metrics/", "/router/"):
            assert status_of(worker.url + path, OPERATOR) == 200, path
        # Faust's own table views served raw tables to anyone: they are gone
        for path in ("/table/portfolio/paper/", "/table/execution_state/paper/", "/table/portfolio/"):
            assert status_of(worker.url + path) == 404, path
            assert status_of(worker.url + path, OPERATOR) == 404, path
        for path in ("/health/", "/health/live/", "/health/ready/", "/dashboard/", "/static/dashboard.js"):
            assert status_of(worker.url + path) == 200, path
        assert status_of(worker.url + "/static/../settings.py") == 404
    finally:
        stack.stop()



def test_g_events_view_answers_400_for_every_bad_parameter(run):
    """Out-of-range times, an oversized or forged cursor, NUL or overlong filters, a bad limit: each
    a 400 with a reason, never a 500."""
    import base64
    import urllib.parse

    _, worker = run
    forged = base64.urlsafe_b64encode(f"{10**22}:{uuid.uuid4()}".encode()).decode()
    for query in ({"start": "0", "end": str(10**20)}, {"start": "-1" + "0" * 30, "end": "1"},
                  {"start": "0", "end": "1", "cursor": forged}, {"start": "0", "end": "1", "cursor": "A" * 5000},
                  {"start": "0", "end": "1", "token": "\x00"}, {"start": "0", "end": "1", "type": "x" * 500},
                  {"start": "0", "end": "1", "limit": "abc"}, {"start": "0", "end": "1", "limit": "0"},
                  {"end": "1"}):
        url = worker.url + "/events/?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {OPERATOR}"}),
                                        timeout=10) as r:
                status, body = r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        assert status == 400 and body.get("error"), (query, status, body)


def test_h_control_reads_whole_bodies_trusts_forwarded_for_only_from_proxies_escapes_logs_and_audits_429(run):
    stack, worker = run
    # a body that arrives in two TCP segments, 300 ms apart, is read whole
    body = json.dumps({"reason": "split body, then forwarded for 203.0.113.9"}).encode()
    head = (f"POST /control/resume/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {OPERATOR}\r\n"
            f"X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + body[:10])
        time.sleep(0.3)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]

    # a reason with a newline cannot start a log line of its own
    forged = "ok\n[2026-11-27 00:00:00,000] [1] [WARNING] control close_all for paper by operator: x (accepted)"
    assert post(worker, "/control/resume/", {"reason": forged}, OPERATOR)[0] == 202
    # refused requests are audited once per client per 10 s, with how many were refused
    codes = [post(worker, "/control/halt/", {}, BOB)[0] for _ in range(8)]  # no reason: 400 while allowed
    first = codes.index(429) if 429 in codes else None
    assert first is not None and first <= 5 and set(codes[:first]) <= {400} and set(codes[first:]) == {429}, codes

    def audits():
        got = {e["data"]["why"]: e["data"] for e in events(worker, "control.action")}
        limited = [e["data"] for e in events(worker, "control.action") if e["data"]["outcome"].startswith("rate_limited")]
        done = "split body, then forwarded for 203.0.113.9" in got and forged.strip() in got and limited
        return (got, limited) if done else None

    got, limited = wait_until(audits, 60, "the audits stored")
    assert got["split body, then forwarded for 203.0.113.9"]["client"] == "203.0.113.9"
    assert got[forged.strip()]["client"] == "127.0.0.1"  # no X-Forwarded-For: the peer
    assert all(a["who"] == "bob" for a in limited) and sum(int(a["outcome"].split()[1]) for a in limited) >= 1
    log = worker.log_path.read_text(errors="replace")
    assert not any(line.startswith("[2026-11-27 00:00:00,000]") for line in log.splitlines())
    # each log line is one JSON object (LOG_FORMAT=json); the reason's newline is escaped in the
    # message itself, so it stays one line in the text format too
    messages = [json.loads(line)["message"] for line in log.splitlines() if line.startswith("{")]
    assert any("ok\\n[2026-11-27 00:00:00,000]" in m for m in messages)


def test_i_event_store_views_need_a_token_by_default(run):
    """Without READ_AUTH, /events/ and /trace/ still hand out every stored event only to a token
    holder (EVENTS_AUTH defaults to true); the other read views stay open."""
    _, worker = run
    for path in ("/events/?start=0&end=1", f"/trace/{uuid.uuid4()}/"):
        assert status_of(worker.url + path) == 401, path
        assert status_of(worker.url + path, WRONG) == 401, path
    assert status_of(worker.url + "/events/?start=0&end=1", ALICE) == 200
    assert status_of(worker.url + f"/trace/{uuid.uuid4()}/", ALICE) == 404, "an id nothing stored has"
    assert status_of(worker.url + "/portfolio/") == 200


def test_j_halts_only_for_known_accounts(run):
    """A halt, resume or close-all for an account this deployment does not trade is a 400 (and
    audited); a manual halt for it written straight to risk.alerts is dead-lettered by the halt
    agent and halts nothing: signals go on."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    stack, worker = run
    for action in ("halt", "resume", "close-all"):
        code, _, body = post(worker, f"/control/{action}/", {"reason": "ghost", "account": "ghost"}, CAROL)
        assert code == 400 and "unknown account" in body["error"], (action, code, body)
    wait_until(lambda: worker.get("/halt/")["halted"] == [], 30, "nothing halted")
    ghost_id = str(uuid.uuid4())

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092")
        await producer.start()
        try:
            event = {"event_id": ghost_id, "event_type": "risk.alert", "timestamp": int(time.time() * 1000),
                     "source": "attacker", "account": "ghost", "severity": "WARNING", "violation_type": "manual",
                     "action_required": "halt everything"}
            await producer.send_and_wait(stack.env["TOPIC_PREFIX"] + "risk.alerts", json.dumps(event).encode(),
                                         key=b"ghost")
        finally:
            await producer.stop()

    asyncio.run(produce())
    letters = wait_until(lambda: [e["data"] for e in events(worker, "dead_letter")
                                  if ghost_id in e["data"]["raw"]], 60, "the ghost halt dead-lettered")
    assert "unknown account 'ghost'" in letters[0]["reason"] and letters[0]["source"] == "halt"
    assert worker.get("/halt/")["halted"] == [] and "ghost" not in worker.get("/halt/")["accounts"]
    audits = wait_until(lambda: [e["data"] for e in events(worker, "control.action")
                                 if e["data"]["outcome"].startswith("invalid: unknown account")], 30, "audited")
    assert len(audits) == 3 and all(a["who"] == "carol" for a in audits)
