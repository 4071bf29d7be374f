"""Diagnosis: the pipeline Sink that pairs, detects, infers timers and gives a verdict.

Theory of operation
-------------------
``Diagnosis`` receives every exchange as it ends and every connection as it
closes (exchanges of a connection always come first). Per *open* connection it
keeps only the time of its last HTTP data, its last exchange and its failing
ones. When the connection closes it learns whether an exchange was cut (the
first FIN/RST came before the response ended), hands that to the correlator,
runs the connection detectors (idle closes, keep-alive closes, probes, maximum
age) and records timer observations. Healthy transactions are counted and
dropped by the correlator, so memory follows open connections and the pairing
window, not the capture's length; findings of one kind beyond
``keep_per_kind`` are counted, not kept.

``finish()`` clusters the timer observations, classifies the kept transactions
(a target FIN is a keep-alive race or a reset depending on the target's
keep-alive timeout), and writes the verdict.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, replace

from ..model import ORIG, RESP, Connection, Exchange
from .connect import AddressCounts, ConnectFailures, FloodCounts, attempt_outcome
from .correlate import Correlation, Correlator, Counts, Cut, Transaction
from .detect import (
    CONNECT_KINDS,
    CONNECTION_DETECTORS,
    MIN_IDLE_NS,
    TRANSACTION_DETECTORS,
    ConnectionEnd,
    Finding,
    Timer,
    TimerBook,
    gave_up_after,
    merge_views,
)
from .refs import SEC, ExchangeRef, host_of, ref_of, split_flow
from .roles import Proxy, RoleFinder, Roles
from .selection import Selection
from .software import ALB_ANSWERS, WORDS, words


@dataclass(frozen=True, slots=True)
class DiagnosisResult:
    proxies: tuple[Proxy, ...]
    transactions: tuple[Transaction, ...]
    """Only failing or unpaired-and-interesting ones; healthy ones are counted in ``counts``."""
    findings: tuple[Finding, ...]
    finding_counts: tuple[tuple[str, int], ...]
    """Every finding per kind, including those not kept beyond ``keep_per_kind``."""
    timers: tuple[Timer, ...]
    verdict: tuple[str, ...]
    counts: Counts
    connections: tuple[Connection, ...] = ()
    """The connections of kept findings and failing exchanges, for their timelines."""
    connect_failures: tuple[AddressCounts, ...] = ()
    """Per address: connection attempts refused or unanswered."""
    idle_closes: tuple[tuple[float, str, str, str], ...] = ()
    """(idle seconds, closed by "client"/"proxy"/"target", side "client"/"target", flow) of quiet closes,
    the first ``MAX_IDLE_CLOSES``: what the HTML report plots against the timers."""
    idle_closes_total: int = 0
    """All quiet closes, including those beyond ``MAX_IDLE_CLOSES``."""
    syn_floods: tuple[FloodCounts, ...] = ()
    """Hosts that got a SYN flood or a port scan: the counts behind each ``syn_flood`` finding."""

    def connection(self, flow: str | None) -> Connection | None:
        return next((c for c in self.connections if c.flow == flow), None)


class _Activity:
    """What an open connection's exchanges said, until the connection closes."""

    __slots__ = ("last_http_ns", "last", "failing", "side", "answered", "spare")

    def __init__(self) -> None:
        self.last_http_ns: int | None = None
        self.last: tuple[ExchangeRef, int | None] | None = None  # (exchange, HTTP data before it)
        self.failing: list[tuple[ExchangeRef, int | None]] = []
        self.side = "front"
        self.answered = False
        self.spare: ExchangeRef | None = None  # unanswered, beyond MAX_FAILING_PER_CONN: kept only if it is the last


_SIDE = {"front": "client", "back": "target"}
_FIXES = {"keepalive_race": "fix_race", "target_keepalive_close": "fix_race", "gateway_timeout": "fix_timeout"}


def _serverless(text: str) -> str:
    """With no proxy in the capture, what detectors call the proxy is the server the clients talk to."""
    return re.sub(r"\b([Tt])he proxy\b", r"\1he server", text).replace("proxy's", "server's")
MAX_FAILING_PER_CONN = 8
MAX_KEPT_CONNECTIONS = 2000
MAX_IDLE_CLOSES = 2000
LOOKAHEAD_NS = SEC
"""Records wait this long (capture time) before diagnosis, so roles seen in the next second apply to them."""
MAX_LOOKAHEAD = 20_000


class Diagnosis:
    """A pipeline Sink. ``proxies``: proxy addresses; ``listeners``: client-facing ports."""

    def __init__(self, proxies: tuple[str, ...] = (), listeners: tuple[int, ...] = (),
                 keep_per_kind: int | None = 200, selection: Selection = Selection()) -> None:
        """``keep_per_kind``: findings kept per kind (the rest counted), None for all; ``selection``: the
        findings wanted (the others are neither kept nor counted, nor are their transactions)."""
        self.selection = selection
        self.roles = Roles(tuple(proxies), tuple(listeners))
        self.correlator = Correlator(self.roles)
        self.finder = RoleFinder(self.roles)
        self.connects = ConnectFailures(keep_per_kind=keep_per_kind or 10**9)
        self._ahead: deque[tuple[int, ExchangeRef | Connection]] = deque()
        self._clock = 0
        self._start_ns: int | None = None
        self.keep_per_kind = keep_per_kind
        self.timers = TimerBook()
        self._open: dict[int, _Activity] = {}
        self._findings: list[Finding] = []
        self._kinds: Counter[str] = Counter()
        self._conns: list[Connection] = []
        self._idle_closes: list[tuple[float, str, str, str]] = []
        self._idle_closes_total = 0
        self._not_kept = 0  # Counts.unanswered_not_kept
        self._now = 0

    # -- Sink ---------------------------------------------------------------------

    def exchange(self, exchange: Exchange, flow: str) -> None:
        opener, _, acceptor = flow.partition("->")
        side = self.roles.conn_side(opener, acceptor)
        if side == "back":
            keys = (f"ip:{host_of(opener)}",)
        elif side == "front":
            keys = (f"ep:{acceptor}",)
        else:
            keys = (f"ip:{host_of(opener)}", f"ep:{acceptor}")
        ref = ref_of(exchange, flow, self.roles.hints.hungry(*keys))
        known = self.roles.version
        self.finder.observe(ref)
        if self.roles.version != known:
            self.correlator.refile()
        self._wait(ref.last_ns, ref)

    def connection(self, conn: Connection) -> None:
        self._wait(conn.end_ns, conn)

    def _wait(self, ts_ns: int, item: ExchangeRef | Connection) -> None:
        """Diagnose records a look-ahead after they arrive: the roles they need have been seen by then.

        Arrival, not the record's own time: an exchange is reported when it ends, which for a
        request cut by a close can be long after its last data.
        """
        self._clock = max(self._clock, ts_ns)
        if self._start_ns is None or ts_ns < self._start_ns:
            self._start_ns = ts_ns
        ahead = self._ahead
        ahead.append((self._clock, item))
        while ahead and (ahead[0][0] < self._clock - LOOKAHEAD_NS or len(ahead) > MAX_LOOKAHEAD):
            self._diagnose(ahead.popleft()[1])

    def _diagnose(self, item: ExchangeRef | Connection) -> None:
        if isinstance(item, Connection):
            self._connection(item)
        else:
            self._exchange(item)

    def _exchange(self, ref: ExchangeRef) -> None:
        act = self._open.get(ref.conn_id)
        if act is None:  # (setdefault would build one per exchange)
            act = self._open[ref.conn_id] = _Activity()
        if act.spare is not None:  # not the connection's last after all: no close can cut it
            act.spare = None
            self._not_kept += 1
        if ref.status is None and not ref.answered and len(act.failing) >= MAX_FAILING_PER_CONN:
            # a pipelining flood: an unanswered exchange matters only if a close cuts it, and only
            # the failing ones already kept and the last can be cut (_cut)
            act.spare = ref
            side = act.side
        else:
            side = self.correlator.add(ref)
        if side == "back":
            act.side = "back"
            self.roles.hints.add(f"ip:{host_of(ref.opener)}", ref.request_hint)
        else:
            self.roles.hints.add(f"ep:{ref.acceptor}", ref.response_hint)
        act.answered = act.answered or ref.status is not None
        entry = (ref, act.last_http_ns)
        if ref.interesting and len(act.failing) < MAX_FAILING_PER_CONN:
            act.failing.append(entry)
        act.last = entry
        act.last_http_ns = max(act.last_http_ns or 0, ref.last_ns)
        self._advance(ref.last_ns)

    def _connection(self, conn: Connection) -> None:
        act = self._open.pop(conn.id, None) or _Activity()
        if act.spare is not None:  # the last exchange: a close may cut it
            self.correlator.add(act.spare)
            act.spare = None
        opener, acceptor = split_flow(conn.flow)
        known = self.roles.conn_side(opener, acceptor) or (act.side if act.last else None)
        self.connects.add(conn, _SIDE.get(known))
        if attempt_outcome(conn) in ("refused", "unanswered"):
            # a failed connect is its own finding: no idle or keep-alive close, no timer
            self.correlator.release(conn.id)
            if len(self._conns) < MAX_KEPT_CONNECTIONS:
                self._conns.append(conn)
            self._advance(conn.end_ns)
            return
        side = self._conn_side(conn, act)
        outstanding = self._cut(conn, act, side)
        self.correlator.release(conn.id)
        end = ConnectionEnd(conn, "client" if side == "front" else "target", act.last_http_ns,
                            act.last[0] if act.last else None, outstanding)
        found = [f for f in (d(end) for d in CONNECTION_DETECTORS) if f is not None]
        if any(f.kind == "tcp_keepalive_ignored" for f in found):  # a refinement replaces its base kind
            found = [f for f in found if f.kind not in ("idle_timeout_close", "target_keepalive_close")]
        for f in found:
            self._add(f)
        if (found or act.failing) and len(self._conns) < MAX_KEPT_CONNECTIONS:
            self._conns.append(conn)
        self._observe(end, {f.kind for f in found})
        self._advance(conn.end_ns)

    def finish(self) -> DiagnosisResult:
        while self._ahead:
            self._diagnose(self._ahead.popleft()[1])
        for act in self._open.values():  # connections never reported closed: their last stays
            if act.spare is not None:
                self.correlator.add(act.spare)
                act.spare = None
        correlation = self.correlator.finish()
        timers = self.timers.renamed(self._subject)
        _observe_give_ups(correlation.transactions, timers)
        tx_findings = merge_views([f for tx in correlation.transactions for f in _detect(tx, timers)],
                                  self.roles.same_proxy)
        connect = self.connects.report(
            capture_end_ns=self._now,
            side_of=lambda o, a: _SIDE.get(self.roles.conn_side(o, a)),
            group_of=lambda ep: self.roles.proxy_of.get(f"ep:{ep}"))
        client_of: dict[int, str | None] = {}
        for f in tx_findings:  # a client-side 502/504 that a refused or unanswered connect explains: one finding
            cause = connect.explaining(f.ts_ns, f.status) if f.target_flow is None and f.side == "target" else None
            if cause is None:
                self._add(f)
            else:
                client_of[id(cause)] = f.client_flow
        for f in connect.findings:
            self._add(replace(f, client_flow=client_of.get(id(f), f.client_flow)))
        _observe_transactions(tx_findings, correlation.transactions, timers)
        proxies = self.roles.proxies()
        findings = tuple(sorted(self._selected(self._worded(f, bool(proxies)) for f in self._findings),
                                key=lambda f: f.ts_ns))
        transactions = correlation.transactions
        if self.selection.active:  # only the transactions of the findings asked for
            keys = {f.exchange for f in findings}
            transactions = tuple(tx for tx in transactions
                                 if any(leg.exchange.key in keys for leg in (tx.front, *tx.backs) if leg))
        return DiagnosisResult(
            proxies=proxies, transactions=transactions, findings=findings,
            finding_counts=tuple(sorted(self._kinds.items())), timers=timers.timers(),
            verdict=verdict(timers, self._kinds, correlation, self.roles, findings),
            counts=replace(correlation.counts,
                           unanswered_not_kept=correlation.counts.unanswered_not_kept + self._not_kept),
            connections=tuple(self._conns), connect_failures=connect.addresses,
            idle_closes=tuple(self._idle_closes), idle_closes_total=self._idle_closes_total,
            syn_floods=connect.floods,
        )

    # -- connections ---------------------------------------------------------------

    def _conn_side(self, conn: Connection, act: _Activity) -> str:
        opener, acceptor = split_flow(conn.flow)
        return self.roles.conn_side(opener, acceptor) or act.side

    def _cut(self, conn: Connection, act: _Activity, side: str) -> bool:
        """Tell the correlator which exchanges the first FIN/RST cut; True if any."""
        close = conn.first_close
        if close is None:
            return False
        if side == "front" and close.by == ORIG and conn.resp_bytes and not act.answered:
            return False  # the server sent bytes but never an HTTP response: leaving it is no abort
        entries = {ref.key: (ref, before) for ref, before in act.failing}
        if act.last:
            entries[act.last[0].key] = act.last
        cut_any = False
        for ref, before in entries.values():
            if ref.request_start_ns is None or (ref.response_end_ns is not None and ref.response_end_ns <= close.ts_ns):
                continue
            if ref.ended == "gap":
                continue  # its response fell into a capture gap: not captured, not cut
            since = conn.start_ns if before is None else before
            by = "opener" if close.by == ORIG else "acceptor"
            self.correlator.cut(ref.key, Cut(by, close, conn.rst, ref.request_start_ns - since))
            cut_any = True
        return cut_any

    def _observe(self, end: ConnectionEnd, kinds: set[str]) -> None:
        """Timer observations from one closed connection."""
        quiet = end.quiet_close()
        opener, acceptor = split_flow(end.conn.flow)
        proxy_key = acceptor if end.side == "client" else host_of(opener)
        if quiet is not None:
            self._idle_closes_total += 1
            if len(self._idle_closes) < MAX_IDLE_CLOSES:
                by = "proxy" if quiet.by == end.proxy_direction else ("client" if end.side == "client" else "target")
                self._idle_closes.append((round(end.idle_ns / SEC, 6), by, end.side, end.conn.flow))
        if quiet is not None and quiet.by == end.proxy_direction:
            name = "proxy_idle_timeout" if end.side == "client" else "proxy_target_idle_timeout"
            self.timers.observe(name, proxy_key, end.idle_ns)
            self.correlator.widen(end.idle_ns + 10 * SEC)
        elif quiet is not None and end.side == "target" and quiet.by == RESP:
            self.timers.observe("target_keepalive_timeout", acceptor, end.idle_ns)
        if "client_keepalive_expiry" in kinds and end.conn.syn_seen:
            # the age of the request that got Connection: close: the duration is at most this
            self.timers.observe("client_keepalive_duration", proxy_key, end.last.start_ns - end.conn.start_ns)

    def _worded(self, f: Finding, proxied: bool) -> Finding:
        """Advice in the proxy's own settings where the wire named it; "server" where there is no proxy.

        Detectors word findings for a generic proxy: the software is known only once
        enough of the capture has been read, and whether there is a proxy at all only
        at its end.
        """
        if not proxied:
            return replace(f, summary=_serverless(f.summary), recommendation=_serverless(f.recommendation))
        software = self.roles.software_of(f.client_flow, f.target_flow)
        fix = _FIXES.get(f.kind)
        if fix and software in WORDS:
            f = replace(f, recommendation=WORDS[software][fix])
        if software == "ALB" and f.client_flow is None and f.status is None and f.kind in ALB_ANSWERS:
            status = ALB_ANSWERS[f.kind]
            f = replace(f, status=status, status_inferred=True,
                        summary=f"{f.summary} The client side is not in the capture; an ALB answers this with "
                                f"{status} (inferred from its documented behaviour, not seen).")
        return f

    def _selected(self, findings) -> list[Finding]:
        """The selection again, now that inferred statuses are known; what it drops is uncounted."""
        out = []
        for f in findings:
            if self.selection.wants(f, self._start_ns or 0):
                out.append(f)
            else:
                self._kinds[f.kind] -= 1
        self._kinds = +self._kinds  # drop kinds counted down to nothing
        return out

    def _subject(self, name: str, raw: str) -> str:
        if name.startswith("proxy_") or name == "client_keepalive_duration":
            return self.roles.name_of(raw)
        return raw

    # -- findings --------------------------------------------------------------------

    def _add(self, finding: Finding | None) -> None:
        if finding is None or not self.selection.wants(finding, self._start_ns or 0, final=False):
            return
        self._kinds[finding.kind] += 1
        if self.keep_per_kind is None or self._kinds[finding.kind] <= self.keep_per_kind:
            self._findings.append(finding)

    def _advance(self, ts_ns: int) -> None:
        if ts_ns > self._now:
            self._now = ts_ns
            self.correlator.advance(ts_ns)


def _detect(tx: Transaction, timers: TimerBook) -> list[Finding]:
    found = [d(tx, timers) for d in TRANSACTION_DETECTORS]
    return [f for f in found if f is not None]


def _observe_give_ups(txs: tuple[Transaction, ...], timers: TimerBook) -> None:
    """Target-side-only waits before the proxy closed: the longest tell its timeout from client aborts."""
    for tx in txs:
        for leg in tx.backs if tx.front is None else ():
            waited = gave_up_after(leg)
            if waited is not None:
                timers.observe("_proxy_gave_up", host_of(leg.exchange.opener), int(waited * SEC))


def _observe_transactions(findings: list[Finding], txs: tuple[Transaction, ...], timers: TimerBook) -> None:
    """Response timeouts: the proxy's (504s) and the clients' (aborts), from when they gave up."""
    by_key = {leg.exchange.key: tx for tx in txs for leg in ([tx.front] if tx.front else []) + list(tx.backs)}
    for f in findings:
        tx = by_key.get(f.exchange)
        if tx is None:
            continue
        leg = tx.front if f.side == "client" and tx.front else (tx.backs[-1] if tx.backs else tx.front)
        ex = leg.exchange
        waited = f.ts_ns - (ex.request_end_ns or ex.start_ns)
        if f.kind == "gateway_timeout" and waited >= MIN_IDLE_NS:
            proxy = host_of(ex.opener) if leg is not tx.front else ex.acceptor
            timers.observe("proxy_response_timeout", proxy, waited)
        elif f.kind == "client_abort" and tx.front is not None and leg is tx.front and waited >= MIN_IDLE_NS:
            timers.observe("client_response_timeout", host_of(ex.opener), waited)
        elif f.kind == "keepalive_race" and leg.cut is not None and leg is not tx.front:
            # the race is the target's keep-alive timer firing: measured from the HTTP data before it
            idle_at_close = leg.cut.close.ts_ns - (ex.start_ns - leg.cut.idle_before_ns)
            timers.observe("target_keepalive_timeout", ex.acceptor, idle_at_close)


# -- verdict --------------------------------------------------------------------------------


def verdict(timers: TimerBook, kinds: Counter[str], correlation: Correlation, roles: Roles,
            findings: tuple[Finding, ...] = ()) -> tuple[str, ...]:
    """One line per misaligned timer, then what failed: per proxy when the capture holds several."""
    lines = _alignment_lines(timers, roles, kinds["keepalive_race"])
    proxies = roles.proxies()
    if len(proxies) > 1:
        for proxy in proxies:
            mine = Counter(f.kind for f in findings
                           if (p := roles.proxy_of_flows(f.client_flow, f.target_flow)) and p.name == proxy.name)
            name = f"{proxy.software} {proxy.name}" if proxy.software else f"proxy {proxy.name}"
            lines += [f"{name}: {line}" for line in _kind_lines(mine, timers)]
    else:
        lines += _kind_lines(kinds, timers)
    failures = ("keepalive_race", "target_reset", "gateway_timeout", "client_abort") + tuple(
        k for k in CONNECT_KINDS if k != "syn_flood")
    if not any(kinds[k] for k in failures):
        c = correlation.counts
        lines.append(f"no 502/504/460 causes found in {c.transactions} transactions ({c.paired} paired "
                     "client <-> target)")
    return tuple(lines)


def _alignment_lines(timers: TimerBook, roles: Roles, races: int) -> list[str]:
    lines = []
    for t in timers.timers():
        if t.name != "target_keepalive_timeout":
            continue
        proxy = roles.proxy_for_target(t.subject)
        w = words(next((p.software for p in roles.proxies() if p.name == proxy), None))
        lines.append(_keepalive_line(t, _proxy_idle(timers, proxy), races, w))
    return lines


def _proxy_idle(timers: TimerBook, proxy: str | None) -> float | None:
    """How long the proxy keeps idle connections: the longer of what its two sides show."""
    values = [timers.value(n, proxy) if proxy else timers.any_value(n)
              for n in ("proxy_idle_timeout", "proxy_target_idle_timeout")]
    return max((v for v in values if v is not None), default=None)


def _keepalive_line(t: Timer, idle: float | None, races: int, w: dict[str, str]) -> str:
    head = f"target {t.subject} closes idle connections after {t.seconds:.1f} s ({t.observations} seen)"
    if idle is None and races:
        return (f"{head}, {w['proxy']} kept them longer ({races} race{plural(races)['s']} seen): expect 502s. "
                f"{w['fix_race']}")
    if idle is None:
        return (f"{head}; if {w['proxy']} keeps them longer ({w['target_idle']}), expect 502s. "
                f"{w['fix_race']}")
    if t.seconds <= idle:
        return (f"{head}, {w['proxy']} keeps them {idle:.1f} s ({w['target_idle']}): expect 502s; set the "
                f"target's keep-alive timeout above it ({_fmt(idle + 1)}-{_fmt(idle + 2)} s)")
    return f"{head}, longer than {w['proxy']}'s idle timeout ({idle:.1f} s): aligned"


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds == int(seconds) else f"{seconds:.1f}"


_KIND_LINES = {
    "keepalive_race": "{n} request{s} crossed a target's keep-alive FIN (502, silent close or hidden retry)",
    "target_reset": "{n} request{s} {were} dropped by the target (FIN/RST with the request outstanding): 502",
    "gateway_timeout": "{n} request{s} timed out waiting for the target: 504{timer}",
    "client_abort": "{n} request{s} {were} abandoned by {their} client{s} before the response (460/499){timer}",
    "tcp_keepalive_ignored": "{n} connection{s} {were} closed idle although TCP keep-alive probes flowed: "
                             "probes do not reset HTTP idle timers",
    "client_keepalive_expiry": "{n} client connection{s} {were} closed at {their} maximum age with Connection: "
                               "close{timer}",
    "idle_timeout_close": "{n} idle connection{s} {were} closed by the proxy{timer}",
    "target_keepalive_close": "{n} idle target connection{s} {were} closed by the target's keep-alive timer",
    "target_connect_refused": "{n} connection attempt{s} to targets {were} refused (RST to the SYN): 502",
    "target_connect_timeout": "{n} connection attempt{s} to targets went unanswered: 504",
    "client_connect_timeout": "{n} proxy address{es} left clients' SYNs unanswered while others answered",
    "syn_flood": "{n} host{s} got a SYN flood or a port scan (unanswered SYNs from many sources or to many "
                 "ports; counted, not reported one by one)",
}


def plural(n: int) -> dict[str, str]:
    """Words that follow a count: "1 request was", "2 requests were"."""
    one = n == 1
    return {"n": f"{n:,}", "s": "" if one else "s", "es": "" if one else "es", "were": "was" if one else "were",
            "their": "its" if one else "their"}


_KIND_TIMER = {
    "gateway_timeout": ("proxy_response_timeout", "; the proxy gives up after {s:.1f} s"),
    "client_abort": ("client_response_timeout", "; clients give up after {s:.1f} s"),
    "client_keepalive_expiry": ("client_keepalive_duration", " (client keep-alive duration at most {s:.1f} s)"),
    "idle_timeout_close": ("proxy_idle_timeout", " after {s:.1f} s idle"),
}


def _kind_lines(kinds: Counter[str], timers: TimerBook) -> list[str]:
    lines = []
    for kind, template in _KIND_LINES.items():
        if kinds[kind]:
            name, text = _KIND_TIMER.get(kind, ("", ""))
            value = timers.any_value(name) if name else None
            lines.append(template.format(**plural(kinds[kind]), timer=text.format(s=value) if value else ""))
    return lines
