"""Connect failures: SYNs refused or never answered, on either side of the proxy.

Theory of operation
-------------------
The pipeline reports every connection when it closes, including the ones that
never carried a byte. ``ConnectFailures.add(conn, side)`` classifies each one
that starts with the opener's SYN (``attempt_outcome``):

* **answered**: the acceptor sent a SYN-ACK (or the handshake evidently
  completed: data or ACKs flowed both ways although the SYN-ACK was not
  captured);
* **refused**: the acceptor's only answer was RST (Zeek's ``REJ``, history
  ``Sr``): nothing listening on that port, or a firewall rejecting;
* **unanswered**: the acceptor sent nothing (``S0``, or ``RSTOS0`` when the
  opener gave up with a RST). An unanswered attempt is a *failure* when

  - the opener kept retransmitting its SYN for at least ``MIN_RETRY_SPAN_NS``
    (Linux retries at 1, 3, 7, 15 s: 3 s is two retries), or
  - the opener gave up with a RST, or
  - the capture went on for a while after the last SYN
    (``max(GIVE_UP_QUIET_NS, span + RETRY_SLACK_NS)``: longer than the next
    retransmission would have taken) and no further SYN came: it gave up.

  Otherwise it is *undecided* (a SYN seen in the capture's last moments) and
  only counted. Since the capture's end is known only at the end, undecided
  attempts are held (bounded) and judged again by ``findings()``.

Connections picked up mid-stream (no SYN) and odd ones (SYN then FIN, a reply
that is neither SYN-ACK nor RST) are not attempts and are ignored.

Findings (``KINDS``), with the fields of ``detect.Finding``:

* ``target_connect_refused`` (side target, 502): one per refused attempt of
  the proxy to a target. ALB: "the load balancer received a TCP RST from the
  target when attempting to establish a connection" -> 502.
* ``target_connect_timeout`` (side target, 504): one per failed unanswered
  attempt. ALB: "the load balancer failed to establish a connection to the
  target before the connection timeout expired (10 seconds)" -> 504.
* ``client_connect_timeout`` (side client, no status: the client got no
  connection): one per proxy address whose clients' SYNs all went unanswered
  (at least ``min_client_failures`` failed attempts, none answered) while
  another address of the same proxy answered (same listener port by default,
  or the caller's grouping). The seed KB's "load balancer node in a subnet
  without a route" case.

* ``syn_flood`` (side client, warning, no status): one per acceptor host that got
  at least ``FLOOD_MIN_ATTEMPTS`` unanswered SYNs from ``FLOOD_MIN_SPREAD`` or more
  source addresses (a SYN flood) or to as many ports (a port scan), with counts per
  source and per port (``FloodCounts``). Its attempts are not also reported one by
  one as ``target_connect_timeout`` nor as ``client_connect_timeout``: a flood is one
  finding. (The TCP stage expires such attempts early, so a flood costs a bounded
  amount of memory; see ``tcp.MAX_HALF_OPEN``.)

A failed connect is reported once, under one kind: a SYN retried and then
refused is ``target_connect_refused`` only. Each target-side finding is one
connection *attempt*: proxies that retry a failed connect on a new connection
(HAProxy ``retries``, nginx ``proxy_next_upstream``) give several attempts per
client request; the ALB does not retry connects. The client's 502/504 for it,
seen on the client side, is the caller's to fold in
(``ConnectReport.explaining``).

Roles come from the caller: ``side`` "client" (client -> proxy), "target"
(proxy -> target) or None. Unknown-side attempts are resolved by
``findings(side_of=...)``/``report(side_of=...)`` when the caller knows the roles by then, else from
what the capture showed: an opener that also *accepted* connections is a
proxy, so its connection is a target connection; an acceptor that also
*opened* connections is a proxy, so the connection is a client connection, and
so is one to a port such a proxy listens on (another address of the proxy,
which may never answer, so never show as a proxy itself); otherwise the
attempt is counted as ``unattributed`` and not reported (a plain client/server
capture has no proxy to answer 502).

Memory is bounded: counters per (side, opener host, acceptor endpoint) up to
``MAX_KEYS`` (later keys are counted in ``untracked``), at most
``MAX_ATTEMPTS`` failed attempts kept for findings (the rest counted), at most
``MAX_PENDING`` undecided ones held, two example frames per address (the
first failure, one answered SYN), ``MAX_HOSTS`` hosts remembered for role
guessing.

Times are ns inside, as everywhere in the pipeline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, NamedTuple

from ..model import ORIG, RESP, Connection, format_addr, format_endpoint
from .detect import CONNECT_KINDS, Evidence, Finding

SEC = 1_000_000_000
MIN_RETRY_SPAN_NS = 3 * SEC
"""SYNs retransmitted over at least this long are a failed connect even if the capture ends right after."""
GIVE_UP_QUIET_NS = 3 * SEC
"""No further SYN for this long while the capture went on: the opener gave up."""
RETRY_SLACK_NS = 2 * SEC
"""The next SYN retransmission is due about the span so far + the initial RTO (1 s on Linux) later."""
ALB_CONNECT_TIMEOUT_NS = 10 * SEC
"""The ALB's target connect timeout: it answers 504 this long after its first SYN."""
EXPLAIN_SLACK_NS = SEC
"""A client-side 502 this close to a refusing RST is that refusal's answer."""
EXPLAIN_TIMEOUT_NS = 75 * SEC
"""A client-side 504 up to this long after an unanswered first SYN may be its answer (nginx: 60 s)."""

MAX_KEYS = 20_000
MAX_ATTEMPTS = 1_000
MAX_PENDING = 10_000
MAX_HOSTS = 65_536
MAX_PEERS_SHOWN = 8
FLOOD_MIN_ATTEMPTS = 1_000
"""Unanswered SYNs to one host before they may be a flood or a scan."""
FLOOD_MIN_SPREAD = 32
"""... from at least this many source addresses (a flood), or to this many ports (a scan)."""
MAX_FLOOD_HOSTS = 1_024
"""Acceptor hosts whose unanswered SYNs are counted for ``syn_flood``; later ones are counted in ``untracked``."""
MAX_FLOOD_KEYS = 4_096
"""Sources (and ports) counted one by one per host; the others are counted together."""

KINDS = CONNECT_KINDS

ANSWERED, REFUSED, UNANSWERED = "answered", "refused", "unanswered"


def attempt_outcome(conn: Connection) -> str | None:
    """"answered", "refused", "unanswered", or None when ``conn`` is not a connection attempt we can judge.

    Uses the Zeek history letters (upper case from the opener): the opener must
    have sent its SYN (``syn_seen``); "refused" is the acceptor's RST as its only
    answer, "unanswered" is no packet at all from the acceptor.
    """
    if not conn.syn_seen:
        return None
    history = conn.history.lstrip("^")
    mine = {c for c in history if c.isupper()}
    theirs = {c for c in history if c.islower()}
    if "h" in theirs or (theirs - {"r"} and mine & {"A", "D"}):
        return ANSWERED  # a SYN-ACK, or a handshake whose SYN-ACK the capture missed
    if mine - {"S", "R"}:
        return None  # the opener sent more than SYNs (and a RST) with no handshake: not judged
    if theirs == {"r"} and "R" not in mine and conn.orig_bytes == 0 and conn.resp_bytes == 0:
        return REFUSED
    if not theirs and conn.resp_pkts == 0:
        return UNANSWERED
    return None


class Attempt(NamedTuple):
    """A failed connection attempt, as much as a finding needs of it."""

    kind: str  # "refused" or "timeout"
    flow: str
    opener: bytes
    acceptor: bytes
    port: int
    first_ns: int  # the first SYN
    last_ns: int  # the last SYN (or the opener's RST, or the refusing RST)
    syns: int
    syn_frame: int | None
    answer_frame: int | None  # the acceptor's RST (refused) or the opener's RST (gave up)
    answer_ns: int | None
    how: str  # refused: "rst"; timeout: "retried", "gave_up", "opener_rst"
    quiet_ns: int  # timeout: how long the capture went on after the last SYN


def judge_unanswered(conn: Connection, capture_end_ns: int) -> Attempt | None:
    """The failed attempt an unanswered ``conn`` was, or None while it is too soon to say (see module doc)."""
    syns = max(1, conn.orig_pkts - (1 if conn.rst is not None and conn.rst.by == ORIG else 0))
    flow = conn.flow
    if conn.rst is not None and conn.rst.by == ORIG:
        last = conn.rst.ts_ns
        return Attempt("timeout", flow, conn.orig, conn.resp, conn.resp_port, conn.start_ns, last, syns,
                       conn.syn_frame, conn.rst.frame, conn.rst.ts_ns, "opener_rst", 0)
    last = conn.end_ns
    span = last - conn.start_ns
    quiet = max(0, capture_end_ns - last)
    if span >= MIN_RETRY_SPAN_NS:
        how = "retried"
    elif quiet >= max(GIVE_UP_QUIET_NS, span + RETRY_SLACK_NS):
        how = "gave_up"
    else:
        return None
    return Attempt("timeout", flow, conn.orig, conn.resp, conn.resp_port, conn.start_ns, last, syns,
                   conn.syn_frame, None, None, how, quiet)


def refused_attempt(conn: Connection) -> Attempt:
    rst = conn.rst
    assert rst is not None and rst.by == RESP
    return Attempt("refused", conn.flow, conn.orig, conn.resp, conn.resp_port, conn.start_ns, rst.ts_ns,
                   max(1, conn.orig_pkts), conn.syn_frame, rst.frame, rst.ts_ns, "rst", 0)


# -- aggregated counts -------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    answered: int = 0
    refused: int = 0
    timed_out: int = 0
    undecided: int = 0
    example_answered: tuple[int | None, int] | None = None  # (SYN frame, ts) of one answered attempt
    first_failure: tuple[str, int | None, int] | None = None  # (flow, SYN frame, ts)

    def merge(self, other: _Tally) -> None:
        self.answered += other.answered
        self.refused += other.refused
        self.timed_out += other.timed_out
        self.undecided += other.undecided
        self.example_answered = self.example_answered or other.example_answered
        if other.first_failure and (self.first_failure is None or other.first_failure[2] < self.first_failure[2]):
            self.first_failure = other.first_failure


@dataclass(frozen=True, slots=True)
class AddressCounts:
    """Connection attempts to one acceptor endpoint (a target, or a proxy listener address)."""

    side: str
    """"target" (the endpoint is a target) or "client" (a proxy address clients connect to)."""
    address: str
    """ip:port of the acceptor."""
    attempts: int
    """Connection attempts seen with their SYN (answered + refused + timed_out + undecided)."""
    answered: int
    refused: int
    timed_out: int
    undecided: int
    """Unanswered when the capture ended, too soon to call a failure."""
    failures_by_peer: tuple[tuple[str, int], ...]
    """Failed attempts (refused + timed out) per opener address (a proxy's back address, or a client), most first."""

    @property
    def failures(self) -> int:
        return self.refused + self.timed_out


def address_counts_dict(a: AddressCounts) -> dict:
    """For the JSON export (e.g. a ``connect_failures[]`` list)."""
    return {"side": a.side, "address": a.address, "attempts": a.attempts, "answered": a.answered,
            "refused": a.refused, "timed_out": a.timed_out, "undecided": a.undecided,
            "failures_by_peer": dict(a.failures_by_peer)}


@dataclass(frozen=True, slots=True)
class ConnectReport:
    findings: tuple[Finding, ...]
    """At most ``keep_per_kind`` per kind, in time order."""
    kind_counts: tuple[tuple[str, int], ...]
    """Every finding per kind, kept or not."""
    addresses: tuple[AddressCounts, ...]
    """Every endpoint with at least one failed or undecided attempt, most failures first."""
    unattributed: int = 0
    """Failed attempts whose side could not be told (no proxy role known): not reported."""
    untracked: int = 0
    """Connection attempts not counted because ``MAX_KEYS`` endpoints were already tracked."""
    dropped_attempts: int = 0
    """Failed attempts counted but not kept for findings (beyond ``MAX_ATTEMPTS``)."""
    floods: tuple[FloodCounts, ...] = ()
    """Hosts that got a SYN flood or a port scan (one ``syn_flood`` finding each), most attempts first."""
    _claimed: set[int] = field(default_factory=set, compare=False, repr=False)

    def explaining(self, ts_ns: int, status: int | None, back_hosts: tuple[str, ...] = ()) -> Finding | None:
        """The target connect failure behind a proxy-made error seen on the client side, claimed once.

        For a client-side 502 (or silent close, ``status`` None) or 504 that was not
        paired with a target exchange: a ``target_connect_refused`` whose RST came at
        most ``EXPLAIN_SLACK_NS`` before it (the proxy answers as the RST arrives), or a
        ``target_connect_timeout`` whose first SYN came before it and that the proxy
        gave up on at most ``EXPLAIN_TIMEOUT_NS`` later. ``back_hosts``: the proxy's
        back addresses, when known, to keep to its own attempts. The closest unclaimed
        one wins; the caller drops its client-side finding and may set the connect
        finding's ``client_flow`` (``dataclasses.replace``): one event, one finding.
        """
        best: tuple[int, int] | None = None
        for i, f in enumerate(self.findings):
            if i in self._claimed or f.side != "target":
                continue
            if back_hosts and (f.target_flow or "").rpartition("->")[0].rpartition(":")[0].strip("[]") \
                    not in back_hosts:
                continue
            if f.kind == "target_connect_refused" and status in (502, 503, None):
                lag = ts_ns - f.ts_ns
                ok = -EXPLAIN_SLACK_NS <= lag <= EXPLAIN_SLACK_NS
            elif f.kind == "target_connect_timeout" and status in (504, 502, 503, None):
                first = f.evidence[0].ts_ns
                lag = ts_ns - f.ts_ns
                ok = first <= ts_ns <= first + EXPLAIN_TIMEOUT_NS
            else:
                continue
            if ok and (best is None or abs(lag) < best[0]):
                best = (abs(lag), i)
        if best is None:
            return None
        self._claimed.add(best[1])
        return self.findings[best[1]]


class _Flood:
    """Unanswered SYNs to one acceptor host, per source address and per port, bounded."""

    __slots__ = ("attempts", "sources", "ports", "other_sources", "other_ports", "first", "last_ns")

    def __init__(self) -> None:
        self.attempts = 0
        self.sources: Counter[bytes] = Counter()
        self.ports: Counter[int] = Counter()
        self.other_sources = 0  # attempts from sources beyond MAX_FLOOD_KEYS
        self.other_ports = 0
        self.first: tuple[str, int | None, int] | None = None  # (flow, SYN frame, ts) of the earliest
        self.last_ns = 0

    def add(self, conn: Connection) -> None:
        self.attempts += 1
        if conn.orig in self.sources or len(self.sources) < MAX_FLOOD_KEYS:
            self.sources[conn.orig] += 1
        else:
            self.other_sources += 1
        if conn.resp_port in self.ports or len(self.ports) < MAX_FLOOD_KEYS:
            self.ports[conn.resp_port] += 1
        else:
            self.other_ports += 1
        if self.first is None or conn.start_ns < self.first[2]:
            self.first = (conn.flow, conn.syn_frame, conn.start_ns)
        self.last_ns = max(self.last_ns, conn.end_ns)

    def is_flood(self) -> bool:
        spread = max(len(self.sources) + (self.other_sources > 0), len(self.ports) + (self.other_ports > 0))
        return self.attempts >= FLOOD_MIN_ATTEMPTS and spread >= FLOOD_MIN_SPREAD


@dataclass(frozen=True, slots=True)
class FloodCounts:
    """A SYN flood or port scan: unanswered SYNs to one host."""

    host: str
    attempts: int
    """Unanswered connection attempts (one SYN, or a few retransmitted) to this host."""
    sources: int
    """Source addresses counted one by one (at most ``MAX_FLOOD_KEYS``; ``sources_capped`` says when more)."""
    ports: int
    sources_capped: bool
    ports_capped: bool
    top_sources: tuple[tuple[str, int], ...]
    """The sources with the most attempts (up to ``MAX_PEERS_SHOWN`` * 4), most first."""
    top_ports: tuple[tuple[int, int], ...]
    first_ns: int
    last_ns: int
    first_frame: int | None = None
    first_flow: str | None = None

    @property
    def scan(self) -> bool:
        """More ports than sources: a port scan rather than a flood of one service."""
        return self.ports > self.sources


def flood_counts_dict(f: FloodCounts) -> dict:
    """For the JSON export (``syn_floods[]``)."""
    return {"host": f.host, "attempts": f.attempts, "kind": "port_scan" if f.scan else "syn_flood",
            "sources": f.sources, "sources_capped": f.sources_capped, "ports": f.ports,
            "ports_capped": f.ports_capped, "by_source": dict(f.top_sources),
            "by_port": {str(p): n for p, n in f.top_ports}, "first": round(f.first_ns / 1e9, 6),
            "last": round(f.last_ns / 1e9, 6)}


SideOf = Callable[[str, str], "str | None"]
"""(opener, acceptor) endpoints -> "client", "target" or None. The opener's port is 0: counts are kept per
opener host, so roles must go by the opener's host (as ``correlate.Roles.conn_side`` does)."""
GroupOf = Callable[[str], "Hashable | None"]
"""A proxy address (ip:port) -> the proxy it belongs to, or None for "group by listener port"."""


# -- the collector -----------------------------------------------------------------------------


class ConnectFailures:
    """Collects connect attempts from every closed connection; ``findings()`` at the end.

    ``add(conn, side)`` for every closed connection (side "client", "target" or
    None), ``findings()`` (or ``report()`` for the per-address counts too) once
    the capture is over.
    """

    def __init__(self, keep_per_kind: int = 200, min_client_failures: int = 2) -> None:
        self.keep_per_kind = keep_per_kind
        self.min_client_failures = min_client_failures
        self._tallies: dict[tuple[str | None, bytes, bytes, int], _Tally] = {}
        self._attempts: list[tuple[str | None, Attempt]] = []
        self._pending: list[tuple[str | None, Connection]] = []
        self._servers: set[bytes] = set()  # hosts that accepted an answered connection
        self._openers: set[bytes] = set()  # hosts that opened an answered connection
        self._endpoints: set[tuple[bytes, int]] = set()  # acceptor endpoints of answered connections
        self._floods: dict[bytes, _Flood] = {}  # acceptor host -> its unanswered SYNs
        self._end_ns = 0
        self.untracked = 0
        self.dropped_attempts = 0

    # -- input -------------------------------------------------------------------------------

    def add(self, conn: Connection, side: str | None) -> None:
        """One closed connection; ``side`` is "client", "target" or None (unknown)."""
        if side not in ("client", "target", None):
            raise ValueError(f"side must be 'client', 'target' or None, not {side!r}")
        self._end_ns = max(self._end_ns, conn.end_ns)
        outcome = attempt_outcome(conn)
        if outcome is None:
            return
        tally = self._tally(side, conn)
        if outcome == ANSWERED:
            self._remember(self._servers, conn.resp)
            self._remember(self._openers, conn.orig)
            if len(self._endpoints) < MAX_HOSTS:
                self._endpoints.add((conn.resp, conn.resp_port))
            if tally is not None:
                tally.answered += 1
                if tally.example_answered is None:
                    tally.example_answered = (conn.syn_frame, conn.start_ns)
            return
        if outcome == REFUSED:
            self._failed(side, tally, refused_attempt(conn))
            return
        flood = self._floods.get(conn.resp)
        if flood is None and len(self._floods) < MAX_FLOOD_HOSTS:
            flood = self._floods[conn.resp] = _Flood()
        if flood is not None:
            flood.add(conn)
        attempt = judge_unanswered(conn, self._end_ns)
        if attempt is not None:
            self._failed(side, tally, attempt)
        elif len(self._pending) < MAX_PENDING:
            self._pending.append((side, conn))
        elif tally is not None:
            tally.undecided += 1

    def _tally(self, side: str | None, conn: Connection) -> _Tally | None:
        key = (side, conn.orig, conn.resp, conn.resp_port)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= MAX_KEYS:
                self.untracked += 1
                return None
            tally = self._tallies[key] = _Tally()
        return tally

    @staticmethod
    def _remember(hosts: set[bytes], host: bytes) -> None:
        if len(hosts) < MAX_HOSTS:
            hosts.add(host)

    def _failed(self, side: str | None, tally: _Tally | None, attempt: Attempt) -> None:
        if tally is None:
            return  # beyond MAX_KEYS: counted in ``untracked`` only
        if attempt.kind == "refused":
            tally.refused += 1
        else:
            tally.timed_out += 1
        if tally.first_failure is None:
            tally.first_failure = (attempt.flow, attempt.syn_frame, attempt.first_ns)
        if len(self._attempts) < MAX_ATTEMPTS:
            self._attempts.append((side, attempt))
        else:
            self.dropped_attempts += 1

    # -- output ------------------------------------------------------------------------------

    def findings(self, capture_end_ns: int | None = None, side_of: SideOf | None = None,
                 group_of: GroupOf | None = None) -> tuple[Finding, ...]:
        return self.report(capture_end_ns, side_of, group_of).findings

    def report(self, capture_end_ns: int | None = None, side_of: SideOf | None = None,
               group_of: GroupOf | None = None) -> ConnectReport:
        """Findings and per-address counts. Does not change the collector (may be called again).

        ``capture_end_ns``: the capture's last timestamp if the caller knows a later
        one than the connections showed. ``side_of``: the caller's roles, for
        attempts added with side None. ``group_of``: which proxy a client-side
        address belongs to (default: addresses sharing a listener port are siblings).
        """
        end = max(self._end_ns, capture_end_ns or 0)
        tallies = {k: _copy(t) for k, t in self._tallies.items()}
        attempts = list(self._attempts)
        dropped = self.dropped_attempts
        for side, conn in self._pending:  # judged again now that the capture's end is known
            attempt = judge_unanswered(conn, end)
            tally = tallies.get((side, conn.orig, conn.resp, conn.resp_port))
            if attempt is None:
                if tally is not None:
                    tally.undecided += 1
                continue
            if tally is not None:
                tally.timed_out += 1
                if tally.first_failure is None or attempt.first_ns < tally.first_failure[2]:
                    tally.first_failure = (attempt.flow, attempt.syn_frame, attempt.first_ns)
            if len(attempts) < MAX_ATTEMPTS:
                attempts.append((side, attempt))
            else:
                dropped += 1

        resolve = self._resolver(side_of)
        by_address: dict[tuple[str, bytes, int], _Tally] = {}
        peers: dict[tuple[str, bytes, int], Counter[str]] = {}
        unattributed = 0
        for (side, opener, acceptor, port), tally in tallies.items():
            side = side or resolve(opener, acceptor, port)
            if side is None:
                unattributed += tally.refused + tally.timed_out
                continue
            key = (side, acceptor, port)
            by_address.setdefault(key, _Tally()).merge(tally)
            if tally.refused + tally.timed_out:
                peers.setdefault(key, Counter())[format_addr(opener)] += tally.refused + tally.timed_out

        addresses = {key: AddressCounts(
            key[0], format_endpoint(key[1], key[2]), t.answered + t.refused + t.timed_out + t.undecided,
            t.answered, t.refused, t.timed_out, t.undecided, tuple(peers.get(key, Counter()).most_common()))
            for key, t in by_address.items()}

        floods = sorted((_flood_counts(host, f) for host, f in self._floods.items() if f.is_flood()),
                        key=lambda f: (-f.attempts, f.host))
        flooded = {host for host, f in self._floods.items() if f.is_flood()}  # their unanswered SYNs: one finding

        findings: list[Finding] = []
        for side, attempt in sorted(attempts, key=lambda sa: sa[1].first_ns):
            side = side or resolve(attempt.opener, attempt.acceptor, attempt.port)
            if side != "target":
                continue  # client-side attempts are judged per address below
            if attempt.kind == "timeout" and attempt.acceptor in flooded:
                continue
            counts = addresses.get(("target", attempt.acceptor, attempt.port))
            if counts is not None:
                findings.append(_target_finding(attempt, counts))
        # every failure counts towards its kind, kept or not (MAX_ATTEMPTS, keep_per_kind)
        counts = Counter({"target_connect_refused": sum(t.refused for k, t in by_address.items() if k[0] == "target"),
                          "target_connect_timeout": sum(t.timed_out for k, t in by_address.items()
                                                        if k[0] == "target" and k[1] not in flooded)})
        kept: Counter[str] = Counter()
        target_findings, findings = findings, []
        for finding in target_findings:
            kept[finding.kind] += 1
            if kept[finding.kind] <= self.keep_per_kind:
                findings.append(finding)
        unflooded = {k: t for k, t in by_address.items() if k[1] not in flooded}
        for finding in _client_findings(unflooded, addresses, group_of, self.min_client_failures) + \
                [_flood_finding(f) for f in floods]:
            counts[finding.kind] += 1
            if counts[finding.kind] <= self.keep_per_kind:
                findings.append(finding)

        listed = sorted((a for a in addresses.values() if a.failures or a.undecided),
                        key=lambda a: (-a.failures, -a.undecided, a.side, a.address))
        return ConnectReport(
            findings=tuple(sorted(findings, key=lambda f: f.ts_ns)),
            kind_counts=tuple(sorted((k, n) for k, n in counts.items() if n)),
            addresses=tuple(listed), unattributed=unattributed, untracked=self.untracked,
            dropped_attempts=dropped, floods=tuple(floods),
        )

    def _resolver(self, side_of: SideOf | None) -> Callable[[bytes, bytes, int], str | None]:
        listener_ports = {port for host, port in self._endpoints if host in self._openers}

        def resolve(opener: bytes, acceptor: bytes, port: int) -> str | None:
            if side_of is not None:
                side = side_of(format_endpoint(opener, 0), format_endpoint(acceptor, port))
                if side in ("client", "target"):
                    return side
            if opener in self._servers:
                return "target"  # the opener also accepts connections: a proxy opening to a target
            if acceptor in self._openers:
                return "client"  # the acceptor also opens connections: a proxy clients connect to
            if port in listener_ports:
                return "client"  # a port a proxy listens on elsewhere: another address of it (or of its kind)
            return None
        return resolve


def _copy(t: _Tally) -> _Tally:
    return _Tally(t.answered, t.refused, t.timed_out, t.undecided, t.example_answered, t.first_failure)


# -- findings ----------------------------------------------------------------------------------


def _per_peer(counts: AddressCounts, what: str) -> str:
    shown = counts.failures_by_peer[:MAX_PEERS_SHOWN]
    text = ", ".join(f"{peer}: {n}" for peer, n in shown)
    rest = sum(n for _, n in counts.failures_by_peer[MAX_PEERS_SHOWN:])
    if rest:
        text += f", {len(counts.failures_by_peer) - MAX_PEERS_SHOWN} other(s): {rest}"
    return f"{what} {text}" if text else ""


def _address_line(counts: AddressCounts) -> str:
    parts = [f"{counts.refused} refused", f"{counts.timed_out} unanswered", f"{counts.answered} answered"]
    if counts.undecided:
        parts.append(f"{counts.undecided} still unanswered at the capture's end")
    line = f"Target {counts.address} in this capture: {counts.attempts} connection attempt(s), {', '.join(parts)}"
    by = _per_peer(counts, "; failed per proxy address:")
    return f"{line}{by}."


_REFUSED_FIX = ("Make the target listen on this port (is the application running and bound to this address and "
                "port? does the target group use the right port?), and let the load balancer's security group "
                "in: the target's security group, network ACL and host firewall must allow its subnets on the "
                "target port.")
_TIMEOUT_FIX = ("Let the load balancer reach the target: its security group must allow the load balancer's "
                "security group (or subnets) on the target port, the network ACLs of both subnets must allow the "
                "traffic and its return (ephemeral ports), and the target must be up and routable. An ALB gives "
                "up after 10 s and answers 504.")
_CLIENT_FIX = ("Check the subnet of this load balancer address: its route table must route to the clients (an "
               "internet gateway for an internet-facing load balancer, the VPN or Direct Connect for an internal "
               "one) like the subnets of its other addresses, and its network ACL must allow the clients. Until "
               "then clients resolving the load balancer's name to this address time out.")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _target_finding(a: Attempt, counts: AddressCounts) -> Finding:
    target = format_endpoint(a.acceptor, a.port)
    proxy = format_addr(a.opener)
    tries = f", sent {a.syns} times" if a.syns > 1 else ""
    evidence = [Evidence(a.syn_frame, a.first_ns, f"SYN from the proxy {proxy} to target {target}", "target")]
    if a.kind == "refused":
        evidence.append(Evidence(a.answer_frame, a.answer_ns or a.last_ns, "RST from the target: connection refused",
                                 "target"))
        summary = (f"The proxy ({proxy}) tried to connect to target {target} (SYN in frame {a.syn_frame}{tries}) "
                   f"and the target answered with a RST (frame {a.answer_frame}) {_ms(a.last_ns - a.first_ns)} "
                   f"later: connection refused (nothing listening on port {a.port}, or a firewall rejecting). An "
                   f"ALB answers the request with 502. {_address_line(counts)}")
        return Finding("target_connect_refused", "error", a.last_ns, "target", None, a.flow, 502, summary,
                       tuple(evidence), _REFUSED_FIX)
    span = (a.last_ns - a.first_ns) / SEC
    if a.syns > 1:
        evidence.append(Evidence(None, a.last_ns, f"SYN retransmitted, {a.syns} in all, the last {span:.1f} s after "
                                 "the first; no answer", "target"))
    if a.how == "opener_rst":
        evidence.append(Evidence(a.answer_frame, a.last_ns, "RST from the proxy: it gave up", "target"))
        ending = f"the proxy gave up with a RST (frame {a.answer_frame}) {span:.1f} s after its first SYN"
        ts = a.last_ns
    elif a.how == "gave_up":
        ending = (f"then no more SYNs although the capture went on {a.quiet_ns / SEC:.1f} s: the proxy gave up")
        # the ALB gives up 10 s after its first SYN; another proxy some time before its next retransmission
        ts = max(a.last_ns, min(a.first_ns + ALB_CONNECT_TIMEOUT_NS, a.last_ns + a.quiet_ns))
    else:
        ending = (f"the proxy was still retrying {span:.1f} s after its first SYN"
                  + (" when the capture ended" if a.quiet_ns < GIVE_UP_QUIET_NS else ", then stopped"))
        ts = max(a.last_ns, min(a.first_ns + ALB_CONNECT_TIMEOUT_NS, a.last_ns + a.quiet_ns))
    summary = (f"The proxy ({proxy}) sent {a.syns} SYN(s) to target {target} over {span:.1f} s (first in frame "
               f"{a.syn_frame}) and never got an answer; {ending}. An ALB gives up after 10 s and answers 504 "
               f"(a connect timeout: security group, network ACL or a target that is down). {_address_line(counts)}")
    return Finding("target_connect_timeout", "error", ts, "target", None, a.flow, 504, summary, tuple(evidence),
                   _TIMEOUT_FIX)


def _client_findings(by_address: dict[tuple[str, bytes, int], _Tally], addresses: dict[tuple, AddressCounts],
                     group_of: GroupOf | None, min_failures: int) -> list[Finding]:
    """One finding per proxy address whose clients' SYNs all went unanswered while a sibling address answered."""
    def group(key: tuple[str, bytes, int]) -> Hashable:
        named = group_of(format_endpoint(key[1], key[2])) if group_of else None
        return ("proxy", named) if named is not None else ("port", key[2])

    client = {k: t for k, t in by_address.items() if k[0] == "client"}
    out = []
    for key, t in client.items():
        if t.timed_out < min_failures or t.answered:
            continue
        siblings = [(k, s) for k, s in client.items() if k != key and s.answered and group(k) == group(key)]
        if not siblings:
            continue  # nothing answers: the whole proxy unreachable, or a one-way capture; not this case
        counts = addresses[key]
        siblings.sort(key=lambda ks: -ks[1].answered)
        sib_text = ", ".join(f"{format_endpoint(k[1], k[2])} answered {s.answered}"
                             for k, s in siblings[:MAX_PEERS_SHOWN])
        clients = _per_peer(counts, "per client:")
        flow, frame, first_ns = t.first_failure or (None, None, 0)
        evidence = [Evidence(frame, first_ns, f"first unanswered SYN to {counts.address} ({flow})", "client")]
        sk, st = siblings[0]
        if st.example_answered is not None:
            evidence.append(Evidence(st.example_answered[0], st.example_answered[1],
                                     f"a SYN to {format_endpoint(sk[1], sk[2])} that was answered", "client"))
        same = "proxy" if group(key)[0] == "proxy" else f"listener port {key[2]}"
        summary = (f"{t.timed_out} connection attempt(s) from {len(counts.failures_by_peer)} client address(es) "
                   f"to proxy address {counts.address} got no answer ({clients}), while the same {same} on other "
                   f"addresses answered ({sib_text}): a load balancer node in a subnet without a route back to "
                   "the clients (or a network ACL blocking them); clients that resolve the name to this address "
                   "time out.")
        out.append(Finding("client_connect_timeout", "error", first_ns, "client", flow, None, None, summary,
                           tuple(evidence), _CLIENT_FIX))
    return out


def _flood_counts(host: bytes, f: _Flood) -> FloodCounts:
    top = MAX_PEERS_SHOWN * 4
    return FloodCounts(
        format_addr(host), f.attempts, len(f.sources), len(f.ports), f.other_sources > 0, f.other_ports > 0,
        # most first, ties by address and port: the same whatever order the connections closed in
        tuple((format_addr(a), n) for a, n in sorted(f.sources.items(), key=lambda an: (-an[1], an[0]))[:top]),
        tuple(sorted(f.ports.items(), key=lambda pn: (-pn[1], pn[0]))[:top]),
        f.first[2] if f.first else 0, f.last_ns, f.first[1] if f.first else None, f.first[0] if f.first else None)


_FLOOD_FIX = ("Unanswered SYNs in these numbers are an attack or a scan, not a proxy's timer: check the listener's "
              "SYN backlog and SYN cookies (net.ipv4.tcp_syncookies), rate limits or AWS Shield/WAF in front of "
              "it, and the security group's sources. Findings about timers elsewhere in this capture still hold.")


def _flood_finding(f: FloodCounts) -> Finding:
    def more(capped: bool) -> str:
        return "at least " if capped else ""

    span = (f.last_ns - f.first_ns) / SEC
    sources = ", ".join(f"{a}: {n:,}" for a, n in f.top_sources[:MAX_PEERS_SHOWN])
    ports = ", ".join(f"{p}: {n:,}" for p, n in f.top_ports[:MAX_PEERS_SHOWN])
    what = "a port scan" if f.scan else "a SYN flood"
    summary = (f"{f.attempts:,} connection attempts to {f.host} went unanswered over {span:.1f} s, from "
               f"{more(f.sources_capped)}{f.sources:,} source address(es) to {more(f.ports_capped)}{f.ports:,} "
               f"port(s): {what} (or a mirror that only sees one direction). Most per source: {sources}; "
               f"per port: {ports}. They are counted here, not reported one by one.")
    evidence = (Evidence(f.first_frame, f.first_ns, f"first unanswered SYN to {f.host} ({f.first_flow})", "client"),
                Evidence(None, f.last_ns, f"last unanswered SYN to {f.host} ({f.attempts:,} in all)", "client"))
    return Finding("syn_flood", "warning", f.first_ns, "client", None, None, None, summary, evidence, _FLOOD_FIX)
