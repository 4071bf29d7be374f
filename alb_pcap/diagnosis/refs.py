"""Exchanges cut down to what diagnosis needs, and how two of them are compared.

``ExchangeRef`` is an Exchange without its headers: what the headers say is read
once (``ref_of``): the id-shaped values that may name the request, the
forwarding headers, a 64-bit sketch of the client's own headers, which proxy
software they name. ``same_request`` tells whether one exchange could be the
other sent on by a proxy, by content alone.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple
from zlib import crc32

from ..model import Exchange, from_fields
from .software import from_request, from_response

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


@lru_cache(maxsize=1 << 12)
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
    key: tuple[int, int]
    """(conn_id, index): a field, not a property: pairing asks for it a dozen times per exchange."""


def ref_of(ex: Exchange, flow: str, hints: bool = True) -> ExchangeRef:
    """``hints``: work out which proxy software the headers name (costly; only while it is not known)."""
    # One pass per header list (the last value wins, as Exchange.header): this runs per exchange.
    request = {name.lower(): value for name, value in ex.request_headers}
    response = {name.lower(): value for name, value in ex.response_headers}
    opener, _, acceptor = flow.partition("->")
    answered = ex.status is not None and ex.response_end_ns is not None and ex.ended not in ("rst", "gap")
    last_ns = None
    for t in (ex.response_end_ns, ex.response_start_ns, ex.request_end_ns, ex.request_start_ns):
        if t is not None and (last_ns is None or t > last_ns):
            last_ns = t
    if last_ns is None:
        last_ns = 0
    return from_fields(ExchangeRef, (  # every field, in order
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
        ex.request_start_ns if ex.request_start_ns is not None else last_ns, (ex.conn_id, ex.index),
    ))


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
_DIGITS = frozenset("0123456789")


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
        if len(value) >= 16 and _ID_CHARS.issuperset(value) and not _DIGITS.isdisjoint(value):
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


@lru_cache(maxsize=1 << 13)  # a service's URIs repeat: worked out once each
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
    # ``version`` as the parser gives it: "1.1", "1.0" (never "HTTP/1.0").
    if connection is None and version != "1.0":
        return False
    tokens = {t.strip().lower() for t in (connection or "").split(",")}
    if "close" in tokens:
        return True
    # RFC 9112 §9.3: HTTP/1.0 persists only with an explicit keep-alive.
    return version == "1.0" and "keep-alive" not in tokens


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
