"""Correlation: pair each client-side exchange with the target-side exchange(s) it caused.

Theory of operation
-------------------
A proxy accepts a request on a *front* connection (client -> proxy) and sends it
on a *back* connection (proxy -> target), maybe several times (nginx retries an
idempotent request after a failure on a reused keep-alive connection), maybe
never (a 502/504/460 it made up itself). Nothing on the wire names the pair, so
it is found from what the proxy copies across, strongest key first:

1. a request id present on both sides (``X-Amzn-Trace-Id``'s ``Root=``, which
   the ALB keeps while adding ``Self=``; ``X-Request-Id``; ``X-Correlation-Id``);
2. the last hop of ``X-Forwarded-For`` (the front connection's opener) with the
   method and URI; ``X-Forwarded-Port``, when present, must be the front port;
3. causality for both: the back request starts after the front request starts
   and before the front response starts.

Exchanges arrive when they *end* (pipeline.Sink), in either order across the
two sides, so both sides wait in a small index until their partner shows up.
Memory is bounded by time, not by the capture's length: a healthy front waits
``settle_ns`` (long enough for its connection's close to be reported, which may
reveal a client abort), everything else waits ``window_ns``; then a healthy
transaction is counted and dropped, an interesting one (an error status, no
response, a cut connection) is kept in full.

Roles are learnt from the pairs: a front connection's acceptor is a proxy
listener, a back connection's opener address is that proxy's back address (an
ALB node has different addresses on its two sides), its acceptor a target.
Before any pair is seen, an ``X-Forwarded-For`` whose last hop is not the
connection's opener marks a back connection; everything else is front.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, NamedTuple
from zlib import crc32

from ..model import Close, Exchange
from .software import Hints, from_request, from_response

SEC = 1_000_000_000
# Statuses a proxy makes up itself: worth keeping the transaction for.
PROXY_STATUSES = frozenset({408, 460, 499, 502, 503, 504})
# Different captures of one incident are merged by timestamp; allow them to
# disagree by this much when checking causality.
SKEW_NS = 50_000_000
CLOCK_RESIDUE_NS = 5_000_000
"""What is left of two captures' clock offset once measured (``clocks.py``): a proxy's forwarding time."""


# -- flows ---------------------------------------------------------------------


def split_flow(flow: str) -> tuple[str, str]:
    """``"a:1->b:2"`` -> ``("a:1", "b:2")``: (opener, acceptor)."""
    opener, _, acceptor = flow.partition("->")
    return opener, acceptor


@lru_cache(maxsize=1 << 16)
def host_of(endpoint: str) -> str:
    """``1.2.3.4:80`` -> ``1.2.3.4``; ``[2001:db8::1]:80`` -> ``2001:db8::1``. Cached: asked per exchange."""
    return endpoint.rpartition(":")[0].strip("[]")


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


# -- exchanges, cut down to what diagnosis needs ---------------------------------


class ExchangeRef(NamedTuple):
    """An Exchange without its headers: what pairing, detection and the timeline use.

    A NamedTuple with its derived values worked out once in ``ref_of``: pairing
    asks for them many times per exchange, on every exchange of the capture.
    """

    flow: str
    conn_id: int
    index: int
    method: str | None
    uri: str | None
    status: int | None
    ended: str
    request_start_ns: int | None
    request_end_ns: int | None
    response_start_ns: int | None
    response_end_ns: int | None
    request_frame: int | None
    response_frame: int | None
    request_ids: tuple[tuple[str, str], ...]
    """(header name, id value) for each header whose value looks like a per-request id."""
    content: tuple
    """(method, last path segment and query, body length): what survives a proxy's rewriting."""
    fingerprint: int
    """A 64-bit sketch of the request's end-to-end headers (see ``similarity``)."""
    forwarded_for: str | None
    """Last hop of X-Forwarded-For: the address the proxy received the request from."""
    forwarded_port: int | None
    server: str | None
    """The response's Server header (``awselb/2.0`` marks an ALB's own answer)."""
    request_hint: str | None
    """The proxy software this request names, were it sent by a proxy (``software.from_request``)."""
    response_hint: str | None
    """The proxy software this response names, were it sent by a proxy (``software.from_response``)."""
    request_close: bool
    """The request asked for the connection to close (or was HTTP/1.0 without keep-alive)."""
    response_close: bool
    opener: str
    acceptor: str
    answered: bool
    """A whole response arrived (the connection was not cut inside it)."""
    interesting: bool
    """Not answered, or answered by a status proxies make up themselves: worth keeping."""
    last_ns: int
    start_ns: int

    @property
    def key(self) -> tuple[int, int]:
        return self.conn_id, self.index


def ref_of(ex: Exchange, flow: str, hints: bool = True) -> ExchangeRef:
    """``hints``: work out which proxy software the headers name (costly; only while it is not known)."""
    # One pass per header list (the last value wins, as Exchange.header): this runs per exchange.
    request = {name.lower(): value for name, value in ex.request_headers}
    response = {name.lower(): value for name, value in ex.response_headers}
    opener, _, acceptor = flow.partition("->")
    answered = ex.status is not None and ex.response_end_ns is not None and ex.ended not in ("rst", "gap")
    times = (ex.response_end_ns, ex.response_start_ns, ex.request_end_ns, ex.request_start_ns)
    last_ns = max((t for t in times if t is not None), default=0)
    return ExchangeRef(
        flow, ex.conn_id, ex.index, ex.method, ex.uri, ex.status, ex.ended,
        ex.request_start_ns, ex.request_end_ns, ex.response_start_ns, ex.response_end_ns,
        ex.request_frame, ex.response_frame,
        _request_ids(request), (ex.method, _uri_tail(ex.uri), ex.request_body_len), _fingerprint(request),
        _last_hop(request.get("x-forwarded-for")),
        _int(request.get("x-forwarded-port")), response.get("server"),
        from_request(ex.request_headers, ex.request_start_ns, request) if hints else None,
        from_response(ex.response_headers, ex.status, response) if hints or ex.status in PROXY_STATUSES else None,
        _asks_close(request.get("connection"), ex.version),
        _asks_close(response.get("connection"), None),
        opener, acceptor, answered, not answered or ex.status in PROXY_STATUSES, last_ns,
        ex.request_start_ns if ex.request_start_ns is not None else last_ns,
    )


# Headers whose values are never a per-request id (a session cookie repeats per client).
NOT_IDS = frozenset({
    "host", "cookie", "authorization", "user-agent", "referer", "origin", "date", "range", "via",
    "forwarded", "x-forwarded-for", "x-forwarded-port", "x-forwarded-proto", "x-forwarded-host",
    "x-real-ip", "connection", "keep-alive", "te", "upgrade", "cache-control", "pragma", "expect",
    "content-type", "content-length", "transfer-encoding", "content-encoding", "accept",
    "accept-encoding", "accept-language", "if-none-match", "if-modified-since", "if-match",
    "proxy-authorization", "sec-websocket-key", "tracestate", "baggage",
})
_ID_CHARS = frozenset("0123456789abcdefABCDEFghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ-_.:=+/")


def _request_ids(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Values that may name this one request, whatever the header is called.

    Which of them really cross a proxy unchanged and differ per request is learnt
    from the traffic (``Correlator``); here only the shape is judged: one token of
    16+ characters with digits in it, or the trace id inside a tracing header
    (the proxy may start a new span, so the whole value need not cross).
    """
    ids = []
    for name, value in headers.items():
        if name in NOT_IDS or len(value) < 16 or len(value) > 200:
            continue
        if name == "x-amzn-trace-id":
            value = _trace_root(value)  # the ALB appends Self=; Root= is what both sides share
        elif name == "traceparent":
            value = value.split("-")[1] if value.count("-") >= 3 else value  # version-traceid-span-flags
        elif name == "b3":
            value = value.split("-")[0]
        value = value.strip()
        if len(value) >= 16 and _ID_CHARS.issuperset(value) and any(c.isdigit() for c in value):
            ids.append((name, value))
    return tuple(ids)


# Headers a proxy adds, drops or rewrites: they say nothing about which request it is.
NOT_CONTENT = frozenset({
    "host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authorization", "content-length", "via", "forwarded",
    "x-forwarded-for", "x-forwarded-port", "x-forwarded-proto", "x-forwarded-host", "x-real-ip",
    "x-amzn-trace-id", "traceparent", "tracestate", "x-request-id", "x-request-start",
})


def _fingerprint(headers: dict[str, str]) -> int:
    """One bit per end-to-end header (name, value), in 64 bits: cheap to keep, cheap to compare."""
    bits = 0
    for item in headers.items():
        bit = _BITS.get(item)
        if bit is None:
            bit = 0 if item[0] in NOT_CONTENT else 1 << (crc32(f"{item[0]}\0{item[1]}".encode(errors="replace")) & 63)
            if len(_BITS) >= 1 << 14:  # headers repeat (User-Agent, Accept...): remember, boundedly
                _BITS.clear()
            _BITS[item] = bit
        bits |= bit
    return bits


_BITS: dict[tuple[str, str], int] = {}


def similarity(front: int, back: int) -> float:
    """The share of the front request's header bits that the back request carries too."""
    have = front.bit_count()
    return 1.0 if not have else (front & back).bit_count() / have


def _uri_tail(uri: str | None) -> str | None:
    """``/api/v1/users?id=3`` -> ``users?id=3``: a proxy strips or adds a prefix, not the tail."""
    if uri is None:
        return None
    path, q, query = uri.partition("?")
    return _origin_path(path).rstrip("/").rpartition("/")[2] + q + query


def _trace_root(value: str) -> str:
    for part in value.split(";"):
        if part.strip().lower().startswith("root="):
            return part.strip()[5:]
    return value.strip()


def _last_hop(xff: str | None) -> str | None:
    if not xff:
        return None
    hop = xff.rsplit(",", 1)[-1].strip()
    return hop.strip("[]") if hop.startswith("[") else hop


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _asks_close(connection: str | None, version: str | None) -> bool:
    if connection is None and version != "HTTP/1.0":
        return False
    tokens = {t.strip().lower() for t in (connection or "").split(",")}
    if "close" in tokens:
        return True
    # RFC 9112 §9.3: HTTP/1.0 persists only with an explicit keep-alive.
    return version == "HTTP/1.0" and "keep-alive" not in tokens


# -- what correlation produces ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cut:
    """How a connection closed while one of its exchanges was still outstanding."""

    by: str
    """"opener" or "acceptor": who sent the first FIN/RST."""
    close: Close
    rst: Close | None
    idle_before_ns: int
    """Request start minus the connection's previous HTTP data (or its start)."""


@dataclass(frozen=True, slots=True)
class Leg:
    """One exchange of a transaction, with how its connection was cut, if it was."""

    exchange: ExchangeRef
    cut: Cut | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A client exchange and the target exchange(s) it caused (retries in order)."""

    front: Leg | None
    backs: tuple[Leg, ...]
    paired_by: str | None = None
    """"request id", "x-forwarded-for" or None (one side only)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    name: str
    listeners: tuple[str, ...]
    """Front endpoints (ip:port) clients connect to."""
    back_addresses: tuple[str, ...]
    """Addresses it opens target connections from."""
    targets: tuple[str, ...]
    paired: int
    found_by: str
    """"configured", "paired requests", "forwarded requests" (seen sending requests on, none paired),
    "X-Forwarded-For" (back side only) or "Server header"."""
    paired_by: tuple[tuple[str, int], ...] = ()
    """How its pairs were made ("header x-request-id", "x-forwarded-for", "content"), with counts."""
    software: str | None = None
    """ALB, nginx, HAProxy, Apache, Caddy, Envoy: what the wire says it is (``software.py``)."""


@dataclass(frozen=True, slots=True)
class Counts:
    transactions: int = 0
    paired: int = 0
    healthy_dropped: int = 0
    """Healthy transactions counted and not kept (paired or not)."""
    unpaired_front: int = 0
    unpaired_back: int = 0
    retried: int = 0
    """Front exchanges that caused more than one back exchange."""


@dataclass(frozen=True, slots=True)
class Correlation:
    transactions: tuple[Transaction, ...]
    """Only the interesting ones; healthy ones are in ``counts``."""
    counts: Counts
    proxies: tuple[Proxy, ...]


# -- roles -----------------------------------------------------------------------


class Roles:
    """Proxy listeners, back addresses and targets: configured, then learnt from pairs."""

    def __init__(self, proxies: tuple[str, ...] = (), listeners: tuple[int, ...] = ()) -> None:
        self.configured = frozenset(proxies)
        self.listener_ports = frozenset(listeners)
        self.proxy_of: dict[str, int] = {}  # "ep:<listener>" / "ip:<back address>" -> proxy number
        self.targets: dict[str, int] = {}
        self.paired: dict[int, int] = {}
        self.xff_openers: set[str] = set()  # back-side-only evidence
        self.awselb: set[str] = set()  # front-side-only evidence
        self.version = 0
        self.paired_how: dict[int, Counter[str]] = {}
        self._sides: dict[tuple[str, str], str | None] = {}
        self.hints = Hints()
        self._numbers = 0
        """Goes up when an address gets a role: what was filed before may be on the wrong side."""

    def side(self, ref: ExchangeRef) -> str:
        """"front" (client -> proxy) or "back" (proxy -> target)."""
        known = self.conn_side(ref.opener, ref.acceptor)
        if known:
            return known
        if ref.forwarded_for and ref.forwarded_for != host_of(ref.opener):
            return "back"
        return "front"

    def conn_side(self, opener: str, acceptor: str) -> str | None:
        """"front", "back" or None (not known yet). Asked several times per exchange: remembered
        until the roles change."""
        key = (opener, acceptor)
        if key in self._sides:
            return self._sides[key]
        if len(self._sides) >= 1 << 16:
            self._sides.clear()
        side = self._sides[key] = self._conn_side(opener, acceptor)
        return side

    def _conn_side(self, opener: str, acceptor: str) -> str | None:
        if host_of(opener) in self.configured or f"ip:{host_of(opener)}" in self.proxy_of:
            return "back"
        if acceptor in self.targets:
            return "back"
        if f"ep:{acceptor}" in self.proxy_of or host_of(acceptor) in self.configured:
            return "front"
        if port_of(acceptor) in self.listener_ports:
            return "front"
        return None

    def learn(self, front: ExchangeRef, back: ExchangeRef, how: str) -> None:
        """A pair was made: the front's acceptor is a listener of the proxy that opened the back."""
        number = self.assign(front.acceptor, host_of(back.opener), back.acceptor)
        self.paired[number] = self.paired.get(number, 0) + 1
        self.paired_how.setdefault(number, Counter())[how] += 1

    def assign(self, listener: str, back_ip: str, target: str) -> int:
        keys = (f"ep:{listener}", f"ip:{back_ip}")
        known = self.proxy_of.get(keys[0])
        if known is not None and known == self.proxy_of.get(keys[1]) and self.targets.get(target) == known:
            return known  # the usual case: nothing new
        self.version += 1
        self._sides.clear()
        numbers = {self.proxy_of[k] for k in keys if k in self.proxy_of}
        if not numbers:
            self._numbers += 1
        number = min(numbers, default=self._numbers)
        for key, n in list(self.proxy_of.items()):  # one proxy seen from two sides: merge
            if n in numbers:
                self.proxy_of[key] = number
        for n in numbers - {number}:
            self.paired[number] = self.paired.get(number, 0) + self.paired.pop(n, 0)
            self.paired_how.setdefault(number, Counter()).update(self.paired_how.pop(n, Counter()))
        for key in keys:
            self.proxy_of[key] = number
        self.targets[target] = number
        return number

    def may_pair(self, front: ExchangeRef, back: ExchangeRef) -> bool:
        """Content pairing must not cross proxies the capture has already told apart."""
        return self.same_proxy(front.flow, back.flow)

    def same_proxy(self, client_flow: str, target_flow: str) -> bool:
        """Could one proxy carry both flows? (Unknown roles do not forbid it.)"""
        mine = self.proxy_of.get(f"ep:{split_flow(client_flow)[1]}")
        theirs = self.proxy_of.get(f"ip:{host_of(split_flow(target_flow)[0])}")
        return mine is None or theirs is None or mine == theirs

    def note(self, ref: ExchangeRef, side: str) -> None:
        """One-side evidence, for proxies[] when no pair says more."""
        if side == "back" and len(self.xff_openers) < 64:
            self.xff_openers.add(host_of(ref.opener))
        if side == "front" and (ref.server or "").lower().startswith("awselb") and len(self.awselb) < 64:
            self.awselb.add(ref.acceptor)

    def name_of(self, endpoint_or_ip: str) -> str:
        """The proxy's display name for one of its listeners or back addresses."""
        number = self.proxy_of.get(f"ep:{endpoint_or_ip}", self.proxy_of.get(f"ip:{endpoint_or_ip}"))
        if number is None:
            return endpoint_or_ip
        return self._proxies_by_number()[number].name

    def proxy_for_target(self, target: str) -> str | None:
        """The name of the proxy seen sending requests to this target."""
        number = self.targets.get(target)
        return None if number is None else self._proxies_by_number()[number].name

    def proxies(self) -> tuple[Proxy, ...]:
        found = list(self._proxies_by_number().values())
        paired_ips = {ip for p in found for ip in p.back_addresses}
        paired_eps = {ep for p in found for ep in p.listeners}
        for ip in sorted(self.configured - paired_ips):
            found.append(Proxy(ip, (), (ip,), (), 0, "configured", software=self._software((), (ip,))))
        for ip in sorted(self.xff_openers - paired_ips - self.configured):
            found.append(Proxy(ip, (), (ip,), (), 0, "X-Forwarded-For", software=self._software((), (ip,))))
        for ep in sorted(self.awselb - paired_eps):
            found.append(Proxy(ep, (ep,), (), (), 0, "Server header", software="ALB"))
        return tuple(found)

    def _software(self, listeners: tuple[str, ...], back_addresses: tuple[str, ...]) -> str | None:
        return self.hints.name(tuple(f"ep:{e}" for e in listeners) + tuple(f"ip:{i}" for i in back_addresses))

    def proxy_of_flows(self, client_flow: str | None, target_flow: str | None) -> Proxy | None:
        """The proxy carrying these flows, if known."""
        number = next((self.proxy_of[k] for k in self._flow_keys(client_flow, target_flow) if k in self.proxy_of),
                      None)
        return None if number is None else self._proxies_by_number()[number]

    def software_of(self, client_flow: str | None, target_flow: str | None) -> str | None:
        """The software of the proxy carrying these flows, if the wire told."""
        proxy = self.proxy_of_flows(client_flow, target_flow)
        return proxy.software if proxy else self.hints.name(self._flow_keys(client_flow, target_flow))

    @staticmethod
    def _flow_keys(client_flow: str | None, target_flow: str | None) -> tuple[str, ...]:
        keys = (f"ep:{split_flow(client_flow)[1]}",) if client_flow else ()
        return keys + ((f"ip:{host_of(split_flow(target_flow)[0])}",) if target_flow else ())

    def _proxies_by_number(self) -> dict[int, Proxy]:
        out = {}
        for number in sorted(set(self.proxy_of.values())):
            eps = tuple(sorted(k[3:] for k, n in self.proxy_of.items() if n == number and k.startswith("ep:")))
            ips = tuple(sorted(k[3:] for k, n in self.proxy_of.items() if n == number and k.startswith("ip:")))
            targets = tuple(sorted(t for t, n in self.targets.items() if n == number))
            name = eps[0] if eps else ips[0]
            paired = self.paired.get(number, 0)
            how = "configured" if set(ips) & self.configured else "paired requests" if paired else "forwarded requests"
            ways = tuple(sorted(self.paired_how.get(number, Counter()).items()))
            out[number] = Proxy(name, eps, ips, targets, paired, how, ways, self._software(eps, ips))
        return out


class RoleFinder:
    """Finds proxies from what they do, before any exchange is paired.

    A proxy accepts a request and, within milliseconds, sends the same request
    (see ``same_request``) on a connection it opens; its answer to the client
    usually comes after the target's answer to it. So of two such exchanges
    close in time, the one that started first is the client side. A proxy whose
    back address is its listener's host, or that passes an id-shaped header
    value on unchanged, is taken at the first sighting; one with a second
    address (an ALB node, the lab) when it forwarded within ``TIGHT_LAG_NS``
    or after ``VOTES`` sightings. A sighting that contradicts roles already
    known counts for nothing.
    Nothing here depends on a header name: roles come before pairing, so the
    correlator puts each exchange on the right side from the start.
    """

    VOTES = 2
    HORIZON_NS = 2 * SEC
    SAME_HOST_LAG_NS = SEC
    """How long after the client's request a proxy on the same host may forward it (it may wait to connect)."""
    OTHER_HOST_LAG_NS = SEC // 10
    PER_KEY = 16
    MAX_ACCEPTORS = 32
    TIGHT_LAG_NS = SEC // 50
    """Forwarded this soon after the client's request ended: one sighting is enough."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self._recent: dict[tuple, deque[ExchangeRef]] = {}  # (content, acceptor) -> newest last
        self._unknown: dict[tuple, deque[ExchangeRef]] = {}  # the recent ones whose connection had no role
        self._acceptors: dict[tuple, dict[str, None]] = {}  # content -> acceptors it was sent to lately
        self._version = roles.version
        self._arrivals: deque[tuple[int, tuple]] = deque()
        self._votes: dict[tuple[str, str], int] = {}

    def observe(self, ref: ExchangeRef) -> None:
        if ref.request_start_ns is None or ref.method is None:
            return
        self._forget(ref.start_ns - self.HORIZON_NS)
        if self._version != self.roles.version:  # roles were learnt: the unknown may be known now
            self._version = self.roles.version
            self._unknown = {key: deque((r for r in refs if self.roles.conn_side(r.opener, r.acceptor) is None),
                                        maxlen=self.PER_KEY) for key, refs in self._unknown.items()}
        known = self.roles.conn_side(ref.opener, ref.acceptor) is not None
        # A pair teaches something only if one of the two has no role yet (once every address has
        # one, only exchanges of unknown connections are compared), and only across two acceptors:
        # uniform traffic to one server costs nothing.
        index = self._unknown if known else self._recent
        for acceptor in self._acceptors.get(ref.content, ()):
            if acceptor == ref.acceptor:
                continue
            for other in index.get((ref.content, acceptor), ()):
                for outer, inner in ((other, ref), (ref, other)):
                    if self._encloses(outer, inner):
                        self._vote(outer, inner)
        key = (ref.content, ref.acceptor)
        self._recent.setdefault(key, deque(maxlen=self.PER_KEY)).append(ref)
        if not known:
            self._unknown.setdefault(key, deque(maxlen=self.PER_KEY)).append(ref)
        acceptors = self._acceptors.setdefault(ref.content, {})
        if ref.acceptor not in acceptors and len(acceptors) < self.MAX_ACCEPTORS:
            acceptors[ref.acceptor] = None
        self._arrivals.append((ref.start_ns, key))

    def _forget(self, before_ns: int) -> None:
        while self._arrivals and self._arrivals[0][0] < before_ns:
            _, key = self._arrivals.popleft()
            for index in (self._recent, self._unknown):
                recent = index.get(key)
                while recent and recent[0].start_ns < before_ns:
                    recent.popleft()
                if recent is not None and not recent:
                    del index[key]
            if key not in self._recent:
                acceptors = self._acceptors.get(key[0])
                if acceptors is not None:
                    acceptors.pop(key[1], None)
                    if not acceptors:
                        del self._acceptors[key[0]]

    def _encloses(self, outer: ExchangeRef, inner: ExchangeRef) -> bool:
        """``inner`` is ``outer`` sent on by a proxy: the same request, a little later."""
        if not same_request(outer, inner):
            return False
        same_host = host_of(outer.acceptor) == host_of(inner.opener)
        lag = inner.request_start_ns - (outer.request_end_ns or outer.request_start_ns)
        ahead = inner.request_start_ns - outer.request_start_ns
        answers = (outer.response_start_ns, inner.response_start_ns)
        if abs(ahead) < CLOCK_RESIDUE_NS and None not in answers and abs(answers[0] - answers[1]) <= SKEW_NS:
            # two captures' clocks agree only this well: an answer the proxy relayed comes last
            return answers[1] <= answers[0]
        if ahead <= 0:  # a proxy cannot forward what it has not got
            return False
        # No rule on the responses otherwise: when it fails, the proxy answers the client (a 504,
        # Caddy's empty 200 to a client that left) before the target answers it.
        return lag <= (self.SAME_HOST_LAG_NS if same_host else self.OTHER_HOST_LAG_NS) + SKEW_NS

    def _vote(self, outer: ExchangeRef, inner: ExchangeRef) -> None:
        listener, back_ip = outer.acceptor, host_of(inner.opener)
        inner_side = self.roles.conn_side(inner.opener, inner.acceptor)
        outer_side = self.roles.conn_side(outer.opener, outer.acceptor)
        if inner_side == "front" or outer_side == "back" or (inner_side, outer_side) == ("back", "front"):
            return  # contradicts what is known, or adds nothing
        votes = self._votes.get((listener, back_ip), 0) + 1
        if len(self._votes) < 4096 or (listener, back_ip) in self._votes:
            self._votes[(listener, back_ip)] = votes
        shared_id = bool({v for _, v in outer.request_ids} & {v for _, v in inner.request_ids})
        tight = inner.request_start_ns - (outer.request_end_ns or outer.request_start_ns) <= self.TIGHT_LAG_NS
        if host_of(listener) == back_ip or shared_id or tight or votes >= self.VOTES:
            self.roles.assign(listener, back_ip, inner.acceptor)


# -- the correlator ---------------------------------------------------------------


@dataclass(slots=True)
class _Tx:
    front: ExchangeRef | None
    backs: list[ExchangeRef] = field(default_factory=list)
    paired_by: str | None = None
    done: bool = False


def _front_keys(ref: ExchangeRef) -> list[tuple]:
    keys: list[tuple] = [("id", value) for _, value in ref.request_ids]
    keys.append(("xff", host_of(ref.opener), ref.method, ref.uri))
    keys.append(("req",) + ref.content)
    return keys


def _back_keys(ref: ExchangeRef) -> list[tuple]:
    keys: list[tuple] = [("id", value) for _, value in ref.request_ids]
    if ref.forwarded_for:
        keys.append(("xff", ref.forwarded_for, ref.method, ref.uri))
    keys.append(("req",) + ref.content)
    return keys


MIN_SIMILARITY = 0.5
"""Share of the client's own headers a proxied request must carry to pair by content alone."""


def same_request(front: ExchangeRef, back: ExchangeRef) -> bool:
    """Could ``back`` be ``front`` sent on by a proxy? Content alone, no forwarding header.

    A proxy opens the back connection to somewhere else than its own listener, from an
    address that is not the client's; it keeps most of the client's end-to-end headers.
    """
    if back.acceptor == front.acceptor or host_of(back.opener) == host_of(front.opener):
        return False
    if back.forwarded_for is not None and back.forwarded_for != host_of(front.opener):
        return False
    return similarity(front.fingerprint, back.fingerprint) >= MIN_SIMILARITY and same_target(front.uri, back.uri)


def same_target(a: str | None, b: str | None) -> bool:
    """One URI is the other with a path prefix stripped or added (``/api/users`` and ``/users``), same query.

    The content key keeps only the last path segment (what every rewrite leaves); this tells
    ``/fin/0.5`` from ``/rst/0.5``.
    """
    if a is None or b is None:
        return a == b
    a_path, _, a_query = a.partition("?")
    b_path, _, b_query = b.partition("?")
    if a_query != b_query:
        return False
    a_path, b_path = _origin_path(a_path).rstrip("/") or "/", _origin_path(b_path).rstrip("/") or "/"
    return a_path.endswith(b_path) or b_path.endswith(a_path) or "/" in (a_path, b_path)


def _origin_path(path: str) -> str:
    """The path of an absolute-form target (``http://host/path`` -> ``/path``)."""
    return "/" + path.split("://", 1)[1].partition("/")[2] if "://" in path else path


def how_paired(key: tuple, ref: ExchangeRef, ambiguous: bool = False) -> str:
    if key[0] == "id":
        name = next((n for n, v in ref.request_ids if v == key[1]), "request id")
        return f"header {name}"
    if key[0] == "xff":
        return "x-forwarded-for"
    return "content (ambiguous)" if ambiguous else "content"


def _ambiguous(front: ExchangeRef, backs: list[ExchangeRef]) -> bool:
    """Two candidates that carry the client's headers equally well: the pick was by time alone."""
    scores = sorted((similarity(front.fingerprint, b.fingerprint) for b in backs), reverse=True)
    return len(scores) > 1 and scores[0] == scores[1]


def causal(front: ExchangeRef, back: ExchangeRef, window_ns: int) -> bool:
    """The back request started after the front request and before the front response."""
    if front.request_start_ns is None or back.request_start_ns is None:
        return False
    if back.forwarded_port is not None and back.forwarded_port != port_of(front.acceptor):
        return False
    if back.request_start_ns < front.request_start_ns - SKEW_NS:
        return False
    limit = front.response_start_ns
    if limit is None:  # never answered: the proxy may have tried until it gave up
        limit = front.last_ns + window_ns
    return back.request_start_ns <= limit + SKEW_NS


class Correlator:
    """Streams ExchangeRefs in, pairs them, keeps only interesting transactions."""

    def __init__(self, roles: Roles, window_ns: int = 120 * SEC, settle_ns: int = 10 * SEC) -> None:
        self.roles = roles
        self.window_ns = window_ns
        self.settle_ns = settle_ns
        # Per pairing key, newest last. Entries are dropped lazily (see _pending): one client
        # polling one URI puts thousands of exchanges under one key.
        self._fronts: dict[tuple, deque[_Tx]] = {}
        self._backs: dict[tuple, deque[ExchangeRef]] = {}
        self._queue: list[tuple[int, int, object]] = []  # (deadline, seq, _Tx | ExchangeRef)
        self._seq = 0
        self._where: dict[tuple[int, int], _Tx | None] = {}  # exchange -> its tx (None: waiting back)
        self._cuts: dict[tuple[int, int], Cut] = {}
        self._shared_names: set[str] = set()  # headers whose id-shaped values repeat: not request ids
        self._unclaimed: dict[tuple[int, int], ExchangeRef] = {}  # backs waiting for their front
        self._settling: dict[int, _Tx] = {}  # client connection -> its last healthy transaction
        self._next_sweep = 0
        self._kept: list[_Tx] = []
        self._counts: dict[str, int] = dict.fromkeys(Counts.__dataclass_fields__, 0)

    # -- input ----------------------------------------------------------------

    def add(self, ref: ExchangeRef) -> str:
        """Take one exchange; returns the side it was put on."""
        side = self.roles.side(ref)
        self.roles.note(ref, side)
        if side == "front":
            self._add_front(ref)
        else:
            self._add_back(ref)
        return side

    def refile(self) -> None:
        """Roles were learnt: move exchanges filed as client-side that are now known to be target-side."""
        misfiled = [tx for key, tx in self._where.items()
                    if tx is not None and not tx.done and not tx.backs and tx.front.key == key
                    and self.roles.conn_side(tx.front.opener, tx.front.acceptor) == "back"]
        for tx in misfiled:
            tx.done = True  # its index entries die with it
            if self._settling.get(tx.front.conn_id) is tx:
                del self._settling[tx.front.conn_id]
            del self._where[tx.front.key]
            self._add_back(tx.front)

    def release(self, conn_id: int) -> None:
        """A client connection closed: its last healthy transaction can no longer be cut."""
        tx = self._settling.pop(conn_id, None)
        if tx is not None:
            self._close(tx)

    def cut(self, key: tuple[int, int], cut: Cut) -> None:
        """A connection closed while this exchange was outstanding (known only at its close)."""
        if key in self._where:  # else a healthy transaction already counted and dropped
            self._cuts[key] = cut

    def advance(self, now_ns: int) -> None:
        while self._queue and self._queue[0][0] < now_ns:
            _, _, item = heapq.heappop(self._queue)
            self._expire(item)
        if now_ns >= self._next_sweep:
            self._next_sweep = now_ns + SEC
            self._sweep()

    def _sweep(self) -> None:
        """Drop pairing keys whose entries are all settled (a key per client and URI adds up)."""
        for index, alive in ((self._fronts, _alive_front), (self._backs, lambda b: b.key in self._unclaimed)):
            for key in list(index):
                _pending(index, key, alive)

    def widen(self, window_ns: int) -> None:
        """An idle timeout longer than the window was seen: wait at least that long."""
        self.window_ns = max(self.window_ns, window_ns)

    def finish(self) -> Correlation:
        for conn_id in list(self._settling):
            self.release(conn_id)
        for _, _, item in sorted(self._queue):
            self._expire(item)
        self._queue.clear()
        txs = tuple(self._freeze(tx) for tx in sorted(self._kept, key=_tx_start))
        return Correlation(txs, Counts(**self._counts), self.roles.proxies())

    # -- pairing ----------------------------------------------------------------

    def _add_front(self, ref: ExchangeRef) -> None:
        tx = _Tx(ref)
        self._where[ref.key] = tx
        keys = self._usable(ref, _front_keys(ref), True)
        for key in keys:  # strongest key first; the first that pairs decides
            backs, ambiguous = self._take_backs(key, ref)
            for back in backs:
                self._attach(tx, back, how_paired(key, ref, ambiguous))
            if backs:
                break
        if not tx.backs:  # its back may still come (merged captures, a proxy still waiting)
            for key in keys:
                self._fronts.setdefault(key, deque(maxlen=MAX_PER_KEY)).append(tx)
        if ref.interesting or any(b.interesting for b in tx.backs):
            self._push(ref.last_ns + self.window_ns, tx)
        else:
            self._settle(tx)  # the usual case: memory stays flat under load

    def _usable(self, ref: ExchangeRef, keys: list[tuple], front: bool) -> list[tuple]:
        """Leave out ids of headers seen to repeat across client requests: a static token is no request id."""
        if not ref.request_ids:
            return keys
        out = []
        for key in keys:
            if key[0] == "id":
                name = next(n for n, v in ref.request_ids if v == key[1])
                if name in self._shared_names:
                    continue
                if front and any(_alive_front(tx) for tx in self._fronts.get(key, ())):
                    if len(self._shared_names) < MAX_CANDIDATES:
                        self._shared_names.add(name)
                    continue
            out.append(key)
        return out

    def _settle(self, tx: _Tx) -> None:
        """Hold a paired, healthy transaction only until its connection shows it was not cut.

        A client connection closing early (the client gave up; the proxy still relayed the
        answer) is known only when the connection closes, and only its last exchange can be
        cut: the next exchange on the connection, or its close, settles this one.
        """
        previous = self._settling.pop(tx.front.conn_id, None)
        if previous is not None:
            self._close(previous)
        self._settling[tx.front.conn_id] = tx

    def _take_backs(self, key: tuple, front: ExchangeRef) -> tuple[list[ExchangeRef], bool]:
        """The back exchange(s) this front caused, and whether content alone could not tell."""
        waiting = _pending(self._backs, key, lambda b: b.key in self._unclaimed)
        matches = [b for b in waiting if causal(front, b, self.window_ns)]
        if key[0] == "req":
            matches = [b for b in matches if same_request(front, b) and self.roles.may_pair(front, b)]
        answered = [b for b in matches if b.answered]
        if len(answered) > 1:  # same request, overlapping: keep the likeliest
            best = min(answered, key=(lambda b: _distance(front, b)) if key[0] == "req" else
                       (lambda b: b.start_ns - front.start_ns))
            matches = [b for b in matches if not b.answered or b is best]
        return matches, key[0] == "req" and _ambiguous(front, answered)

    def _add_back(self, ref: ExchangeRef) -> None:
        keys = self._usable(ref, _back_keys(ref), False)
        for key in keys:
            tx, ambiguous = self._best_front(key, ref)
            if tx is not None:
                self._attach(tx, ref, how_paired(key, ref, ambiguous))
                return
        self._where[ref.key] = None
        self._unclaimed[ref.key] = ref
        for key in keys:
            self._backs.setdefault(key, deque(maxlen=MAX_PER_KEY)).append(ref)
        # the queue holds only the key: a claimed back must not stay alive until its deadline
        self._push(ref.last_ns + (self.window_ns if ref.interesting else self.settle_ns), ref.key)

    def _best_front(self, key: tuple, back: ExchangeRef) -> tuple[_Tx | None, bool]:
        def free(tx: _Tx) -> bool:  # one answered back per front; failed tries may precede it
            return not tx.done and not (back.answered and any(b.answered for b in tx.backs))

        waiting = _pending(self._fronts, key, _alive_front)
        candidates = [tx for tx in waiting if free(tx) and causal(tx.front, back, self.window_ns)]
        if key[0] != "req":  # the key says it is the same request: the nearest in time
            return min(candidates, key=lambda tx: back.start_ns - tx.front.start_ns, default=None), False
        candidates = [tx for tx in candidates if same_request(tx.front, back) and self.roles.may_pair(tx.front, back)]
        best = min(candidates, key=lambda tx: _distance(tx.front, back), default=None)
        rivals = [tx.front for tx in candidates]
        return best, len(rivals) > 1 and _ambiguous(back, rivals)

    def _attach(self, tx: _Tx, back: ExchangeRef, how: str) -> None:
        tx.backs.append(back)
        self._unclaimed.pop(back.key, None)
        tx.paired_by = tx.paired_by or how
        self._where[back.key] = tx
        if tx.front is not None:
            self.roles.learn(tx.front, back, how)

    # -- expiry ------------------------------------------------------------------

    def _push(self, deadline: int, item: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (deadline, self._seq, item))

    def _expire(self, item: object) -> None:
        if isinstance(item, _Tx):
            if not item.done:  # else refiled to the other side
                self._close(item)
        elif (back := self._unclaimed.pop(item, None)) is not None:  # a back nobody claimed
            self._close(_Tx(None, [back]))

    def _close(self, tx: _Tx) -> None:
        """The transaction can change no more: count it, and keep it if it is interesting."""
        tx.done = True
        self._count(tx)
        refs = ([tx.front] if tx.front else []) + tx.backs
        if any(r.interesting or r.key in self._cuts for r in refs):
            self._kept.append(tx)
            for r in refs:
                self._where[r.key] = tx
            return
        self._counts["healthy_dropped"] += 1
        for r in refs:
            self._where.pop(r.key, None)

    def _count(self, tx: _Tx) -> None:
        c = self._counts
        c["transactions"] += 1
        if tx.front is None:
            c["unpaired_back"] += 1
        elif not tx.backs:
            c["unpaired_front"] += 1
        else:
            c["paired"] += 1
            c["retried"] += len(tx.backs) > 1

    def _freeze(self, tx: _Tx) -> Transaction:
        def leg(ref: ExchangeRef) -> Leg:
            return Leg(ref, self._cuts.get(ref.key))

        backs = tuple(leg(b) for b in sorted(tx.backs, key=lambda b: b.start_ns))
        return Transaction(leg(tx.front) if tx.front else None, backs, tx.paired_by)


MAX_CANDIDATES = 64
"""Pending exchanges looked at per key, newest first: the pair is nearly always the newest."""
MAX_PER_KEY = 4 * MAX_CANDIDATES
"""Pending exchanges remembered per key; older ones fall off (they would never be looked at)."""


def _alive_front(tx: _Tx) -> bool:
    return not tx.done


def _distance(front: ExchangeRef, back: ExchangeRef) -> tuple[float, int]:
    """Likelier first: more of the client's headers carried, then the back request sooner after the front."""
    return (-similarity(front.fingerprint, back.fingerprint), back.start_ns - front.start_ns)


def _pending(index: dict[tuple, deque], key: tuple, alive: Callable[[object], bool]) -> list:
    """The live entries under ``key``, newest first; dead ones are trimmed from the old end."""
    waiting = index.get(key)
    if not waiting:
        return []
    while waiting and not alive(waiting[0]):
        waiting.popleft()
    if not waiting:
        del index[key]
        return []
    out = []
    for item in reversed(waiting):
        if alive(item):
            out.append(item)
            if len(out) == MAX_CANDIDATES:
                break
    return out


def _tx_start(tx: _Tx) -> int:
    return (tx.front or tx.backs[0]).start_ns
