"""Access control for the web port: bearer tokens, a per-client rate limit, and the audited
control actions (halt, resume, close-all).

Tokens come from the environment (CONTROL_TOKEN, CONTROL_TOKENS); a request's token is compared
with every configured one by ``hmac.compare_digest`` (constant time, and no early exit on a
match). The control endpoints always require a token; the event-store views too unless
EVENTS_AUTH=false; the other read views when READ_AUTH is set. Refusals are 401 with ``WWW-Authenticate: Bearer``; the token itself is never logged (see
:mod:`core.redact`).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import time

from app.main import settings

#: Control requests are bodies of at most this many bytes.
MAX_BODY = 4096


def bearer(request) -> str | None:
    """The bearer token of a request: the ``Authorization: Bearer`` header, or for a WebSocket
    (browsers cannot set headers on one) the ``token`` query parameter."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def authenticate(request) -> str | None:
    """The name of the token holder the request authenticates as, or None."""
    given = bearer(request)
    if not given:
        return None
    who = None
    given_b = given.encode()
    for name, token in settings.control_holders().items():
        if hmac.compare_digest(given_b, token.encode()) and who is None:
            who = name
    return who


def unauthorized(view, message: str = "missing or wrong bearer token"):
    return view.json({"error": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="moondev"'})


def read_auth(method):
    """Decorator for read views: 401 without a valid token when READ_AUTH is set."""
    @functools.wraps(method)
    async def wrapper(self, request, *args, **kwargs):
        if settings.read_auth and authenticate(request) is None:
            return unauthorized(self)
        return await method(self, request, *args, **kwargs)
    return wrapper


def events_auth(method):
    """Decorator for the event-store views: 401 without a valid token unless EVENTS_AUTH=false
    (and READ_AUTH is not set)."""
    @functools.wraps(method)
    async def wrapper(self, request, *args, **kwargs):
        if (settings.events_auth or settings.read_auth) and authenticate(request) is None:
            return unauthorized(self, "the event store needs a bearer token (CONTROL_TOKEN; EVENTS_AUTH=false opens it)")
        return await method(self, request, *args, **kwargs)
    return wrapper


def client_address(request) -> str:
    """The client's address: the peer's, unless the peer is one of TRUSTED_PROXIES (addresses or
    CIDR networks: the ingress, a load balancer), in which case the right-most address of
    ``X-Forwarded-For`` that is not itself a trusted proxy (RFC 7239 §5.2's reasoning: only the
    hops we trust may name the one before them; whatever a client writes on the left is not
    believed)."""
    peer = request.remote or "unknown"
    proxies = settings.trusted_proxy_networks()
    if not proxies or not _in(peer, proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, proxies):
            return hop if _is_ip(hop) else peer
    return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _in(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class RateLimiter:
    """Token bucket per client: ``rate_per_minute`` requests a minute, bursts up to that many."""

    #: A client's refused requests are reported (audited) at most once per this many seconds.
    REPORT_EVERY_S = 10.0

    def __init__(self, rate_per_minute: int) -> None:
        self.capacity = float(rate_per_minute)
        self.refill_per_s = rate_per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, updated monotonic s)
        self._refused: dict[str, list] = {}  # client -> [refused since last report, last report s]

    def refusals_to_report(self, client: str, now: float | None = None) -> int:
        """Count one refused request of ``client``; returns how many to report now (0 while the
        client's last report is younger than REPORT_EVERY_S)."""
        now = time.monotonic() if now is None else now
        entry = self._refused.setdefault(client, [0, -self.REPORT_EVERY_S])
        entry[0] += 1
        if now - entry[1] < self.REPORT_EVERY_S:
            return 0
        n, entry[0], entry[1] = entry[0], 0, now
        if len(self._refused) > 10_000:  # forget clients not refused lately
            for k in [k for k, (c, t) in self._refused.items() if c == 0 and now - t >= self.REPORT_EVERY_S]:
                del self._refused[k]
        return n

    def allow(self, client: str, now: float | None = None) -> tuple[bool, float]:
        """Take one request from the client's bucket: (allowed, seconds until the next is)."""
        now = time.monotonic() if now is None else now
        tokens, updated = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_s)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return True, 0.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > 10_000:  # forget clients whose bucket has refilled
            full = [k for k, (t, u) in self._buckets.items() if t + (now - u) * self.refill_per_s >= self.capacity]
            for k in full:
                del self._buckets[k]
        return False, (1.0 - tokens) / self.refill_per_s


limiter = RateLimiter(settings.control_rate_per_minute)
