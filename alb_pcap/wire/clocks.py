"""Clock offsets between captures of one incident taken on different hosts.

Two mirror sessions (one on the client's ENI, one on the target's) stamp packets
with two clocks that may disagree by hundreds of milliseconds: more than a
proxy takes to forward a request, so read as one timeline the back request
would seem to leave before the front one arrived. The offset is measured the
way NTP does it, from exchanges that enclose each other: a front exchange
(request at a1, response at a4) and the back exchange the proxy made of it
(b2, b3) satisfy a1 < b2 and b3 < a4, so ((b2 - a1) + (b3 - a4)) / 2 is the
offset plus half the difference of the two forwarding delays, which are alike
(a few ms). Segments both files hold (the same flow mirrored twice) give the
offset directly. The median over the first requests of each file is taken.
Only request and status lines are looked at, in the first ``SCAN_PACKETS``
packets; nothing is held beyond those.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import NamedTuple

from ..model import TH_FIN, TH_RST, Packet

SCAN_PACKETS = 100_000
MAX_REQUESTS = 2_000
MATCH_WINDOW_NS = 1_000_000_000
"""Requests further apart than this (after the offset) are not the same request."""
CLUSTER_NS = 5_000_000
NEGLIGIBLE_NS = 1_000_000
"""Exact offsets below this are left alone: the analysis allows for that much."""
ROUGH_MIN_NS = 20_000_000
"""Offsets measured by one-way delays only are applied from this size: below, they may be forwarding time."""
METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"PATCH ", b"OPTIONS ")


class Sighting(NamedTuple):
    """A request and the start of its response, as one capture saw them."""

    line: bytes
    """Method and the URI's last path segment and query: what a proxy leaves alone."""
    opener: tuple[bytes, int]
    acceptor: tuple[bytes, int]
    request_ns: int
    response_ns: int | None
    """The status line, or the server's FIN/RST that ended the request unanswered (a proxy answers that at once)."""


def sightings(packets: Iterable[Packet]) -> list[Sighting]:
    """Requests (first segment of each) and what ended each: its status line or its connection's close."""
    waiting: dict[tuple, list] = {}
    out: list[list] = []
    for n, p in enumerate(packets):
        if n >= SCAN_PACKETS or len(out) >= MAX_REQUESTS:
            break
        data = p.payload
        if data.startswith(METHODS):
            line = _request_key(data)
            if line is not None:
                item = [line, (p.src, p.sport), (p.dst, p.dport), p.ts_ns, None]
                out.append(item)
                waiting.setdefault((p.src, p.sport, p.dst, p.dport), []).append(item)
        elif data.startswith(b"HTTP/1."):
            queue = waiting.get((p.dst, p.dport, p.src, p.sport))
            if queue:
                queue.pop(0)[4] = p.ts_ns
        if p.flags & (TH_FIN | TH_RST):  # the server ending requests it will not answer
            for item in waiting.pop((p.dst, p.dport, p.src, p.sport), ()):
                item[4] = p.ts_ns
    return [Sighting(*item) for item in out]


def _request_key(data: bytes) -> bytes | None:
    first = data.split(b"\r\n", 1)[0]
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    path, _, query = parts[1].partition(b"?")
    return parts[0] + b" " + path.rstrip(b"/").rpartition(b"/")[2] + b"?" + query


def offset(reference: list[Sighting], other: list[Sighting]) -> tuple[int, bool] | None:
    """How far ``other``'s clock is ahead of ``reference``'s (ns), and whether that is exact to a
    fraction of a forwarding delay; None if the captures don't tell.

    Every same-looking request within the window is a candidate; true pairs agree to within
    a few ms, chance ones (a client polling one URI) spread out: the densest cluster wins.
    Midpoints are used when they agree on one cluster, else the one-way delays, which are off
    by a proxy's forwarding time.
    """
    by_line: dict[bytes, list[Sighting]] = {}
    for s in reference:
        by_line.setdefault(s.line, []).append(s)
    exact: list[int] = []
    rough: list[int] = []
    for s in other:
        for r in by_line.get(s.line, ()):
            for theta, is_exact in _thetas(r, s):
                if abs(theta) <= MATCH_WINDOW_NS:
                    (exact if is_exact else rough).append(theta)
    for samples, is_exact, least in ((exact, True, 2), (rough, False, 1)):
        theta = _densest(sorted(samples), least)
        if theta is not None:
            return theta, is_exact
    return None


def _densest(thetas: list[int], least: int) -> int | None:
    """The median of the largest cluster (values within CLUSTER_NS), if it has ``least`` values and no
    other is as large."""
    best: list[int] = []
    tied = False
    start = 0
    for end, theta in enumerate(thetas):
        while theta - thetas[start] > CLUSTER_NS:
            start += 1
        size = end + 1 - start
        if size > len(best):
            best, tied = thetas[start:end + 1], False
        elif size == len(best) and thetas[start] > best[-1]:
            tied = True
    return None if len(best) < least or tied else round(statistics.median(best))


def _thetas(r: Sighting, s: Sighting) -> tuple[tuple[int, bool], ...]:
    """Offset estimates from one pair of sightings: (value, exact).

    The same segment mirrored into both files gives the offset itself. A proxy's two sides give
    NTP's midpoint, exact when the proxy answered the client right after the target's answer or
    close, and the requests' one-way delay, off by the proxy's forwarding time.
    """
    same_flow = (r.opener, r.acceptor) == (s.opener, s.acceptor)
    if not same_flow and (r.acceptor == s.acceptor or r.opener[0] == s.opener[0]):
        return ()  # two clients of one server, or one client twice: not a proxy's two sides
    one_way = s.request_ns - r.request_ns
    if same_flow:
        return ((one_way, True),)
    if r.response_ns is None or s.response_ns is None:
        return ((one_way, False),)
    return (one_way, False), ((one_way + s.response_ns - r.response_ns) // 2, True)


def corrections(scans: list[list[Sighting]]) -> list[int]:
    """Per capture, the ns to subtract from its times to put it on the first capture's clock.

    An offset within a proxy's forwarding time is left alone unless it is exact: correcting by a
    one-way delay would put a proxy's request before the client's.
    """
    out = [0]
    for scan in scans[1:]:
        found = offset(scans[0], scan)
        theta, exact = found if found else (0, True)
        out.append(theta if abs(theta) >= (NEGLIGIBLE_NS if exact else ROUGH_MIN_NS) else 0)
    return out
