"""Roles: which addresses are a proxy's listeners, its back addresses, its targets.

Configured (``--proxy``, ``--listener``), learnt from pairs, or found from
behaviour before any pair (``RoleFinder``): a host that accepts a request and,
within milliseconds, sends the same request on a connection it opens.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

from .refs import (
    CLOCK_RESIDUE_NS,
    SEC,
    SKEW_NS,
    ExchangeRef,
    host_of,
    port_of,
    same_request,
    split_flow,
)
from .software import Hints


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
        if len(self._sides) >= 1 << 12:
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
        how_counts = self.paired_how.get(number)
        if how_counts is None:  # not setdefault(number, Counter()): a Counter built per pair costs more than the rest
            how_counts = self.paired_how[number] = Counter()
        how_counts[how] += 1

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
    MAX_RECENT = 20_000
    """Exchanges remembered at most (the oldest go first): ``HORIZON_NS`` bounds time, this the rate."""
    TIGHT_LAG_NS = SEC // 50
    """Forwarded this soon after the client's request ended: one sighting is enough."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self._recent: dict[tuple, list[ExchangeRef]] = {}  # (content, acceptor) -> newest last
        self._unknown: dict[tuple, list[ExchangeRef]] = {}  # the recent ones whose connection had no role
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
            self._unknown = {key: [r for r in refs if self.roles.conn_side(r.opener, r.acceptor) is None]
                             for key, refs in self._unknown.items()}
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
        file_under(self._recent, key, ref, self.PER_KEY)
        if not known:
            file_under(self._unknown, key, ref, self.PER_KEY)
        acceptors = self._acceptors.setdefault(ref.content, {})
        if ref.acceptor not in acceptors and len(acceptors) < self.MAX_ACCEPTORS:
            acceptors[ref.acceptor] = None
        self._arrivals.append((ref.start_ns, key))

    def _forget(self, before_ns: int) -> None:
        arrivals = self._arrivals
        while arrivals and (arrivals[0][0] < before_ns or len(arrivals) > self.MAX_RECENT):
            ts, key = arrivals.popleft()
            upto = max(before_ns, ts + 1)  # beyond MAX_RECENT: this arrival and older ones of its key go
            for index in (self._recent, self._unknown):
                recent = index.get(key)
                if recent is not None and not drop_until(recent, lambda r: r.start_ns >= upto):
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


def file_under(index: dict[tuple, list], key: tuple, entry: object, cap: int) -> None:
    """Add ``entry`` under ``key``, newest last; beyond ``cap`` the oldest falls off.

    Lists, not deques: most keys (a request id, a rare URI) hold one entry, and an empty deque alone is
    600 bytes; so is the deque ``setdefault(key, deque())`` would build on every call.
    """
    entries = index.get(key)
    if entries is None:
        index[key] = [entry]
        return
    entries.append(entry)
    if len(entries) > cap:
        del entries[0]


def drop_until(entries: list, keep: Callable[[object], bool]) -> list:
    """Drop the oldest entries (the front) up to the first that ``keep`` accepts; returns what is left."""
    gone = 0
    for entry in entries:
        if keep(entry):
            break
        gone += 1
    if gone:
        del entries[:gone]
    return entries
