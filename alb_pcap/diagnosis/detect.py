"""Detectors: wire patterns -> named findings, and the timers the capture shows.

Theory of operation
-------------------
Two kinds of detector, each a small pure function whose docstring gives the
wire pattern, what the proxy does and the fix:

* connection detectors look at one closed connection (``ConnectionEnd``): who
  closed it, how long after its last HTTP data, whether TCP keep-alive probes
  were flowing, whether the last response said ``Connection: close``. They run
  as connections close and need no pairing.
* transaction detectors look at one kept ``Transaction`` (a client exchange and
  the target exchange(s) it caused, each with how its connection was cut) and
  at the timers inferred from the whole capture. They run at the end, so a
  target FIN can be told apart as a keep-alive race or a reset once the
  target's keep-alive timeout is known.

TCP keep-alive probes never count as activity: idle time is measured from the
last HTTP data (RFC 9293 §3.8.4 probes carry none; the ALB, nginx, HAProxy and
Envoy all ignore them for their HTTP idle timers).

Times are ns inside; findings' ``ts`` is exported as float seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..model import ORIG, RESP, Close, Connection
from .correlate import Leg, Transaction
from .refs import ExchangeRef, host_of

SEC = 1_000_000_000
MIN_IDLE_NS = 500_000_000
"""An idle close needs at least this much silence; shorter is a close after a response."""
RACE_SLACK_NS = 300_000_000
"""A target FIN this soon after a request on an idle connection was its keep-alive timer, not the request."""

CONNECT_KINDS = ("target_connect_refused", "target_connect_timeout", "client_connect_timeout", "syn_flood")
"""Failed connects (``connect.py``)."""
KINDS = (
    "idle_timeout_close", "target_keepalive_close", "keepalive_race", "target_reset",
    "gateway_timeout", "client_abort", "client_keepalive_expiry", "tcp_keepalive_ignored",
) + CONNECT_KINDS


@dataclass(frozen=True, slots=True)
class Evidence:
    frame: int | None
    ts_ns: int
    what: str
    side: str | None = None
    """"client" or "target": the connection it was seen on (places it in the timeline)."""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    severity: str
    """"error" (the client got an error or nothing), "warning" (a latent failure), "info"."""
    ts_ns: int
    """The closing FIN/RST for closes; when the proxy gave up or answered for 5xx/460."""
    side: str
    """"client" or "target": the connection where it happened."""
    client_flow: str | None
    target_flow: str | None
    status: int | None
    """What the client got; None for nothing or unknown."""
    summary: str
    evidence: tuple[Evidence, ...]
    recommendation: str
    exchange: tuple[int, int] | None = None
    """(conn_id, index) of the exchange it is about, to find its transaction; not exported."""
    status_inferred: bool = False
    """``status`` was not seen but follows from the proxy's documented behaviour (target side only)."""


# -- timers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timer:
    name: str
    """proxy_idle_timeout (client connections), proxy_target_idle_timeout, target_keepalive_timeout,
    client_keepalive_duration, client_response_timeout, proxy_response_timeout."""
    subject: str
    """The proxy's name, a target ip:port or a client address."""
    seconds: float
    observations: int
    """Observations within a few tens of ms of ``seconds``."""
    total: int
    """All observations of this timer for this subject (the rest scatter)."""
    low: float
    high: float


class _Cluster:
    __slots__ = ("sum", "n", "lo", "hi")

    def __init__(self, v: float, n: int = 1) -> None:
        self.sum, self.n, self.lo, self.hi = v * n, n, v, v

    @property
    def mean(self) -> float:
        return self.sum / self.n


class Clusterer:
    """Groups repeated measurements (timers fire within tens of ms of their setting)."""

    MAX_CLUSTERS = 16

    def __init__(self) -> None:
        self.clusters: list[_Cluster] = []
        self.total = 0

    def add(self, v: float, n: int = 1, lo: float | None = None, hi: float | None = None) -> None:
        self.total += n
        for c in self.clusters:
            if abs(c.mean - v) <= max(0.05, 0.02 * c.mean):
                c.sum, c.n = c.sum + v * n, c.n + n
                c.lo, c.hi = min(c.lo, v if lo is None else lo), max(c.hi, v if hi is None else hi)
                return
        c = _Cluster(v, n)
        c.lo, c.hi = (v, v) if lo is None else (lo, hi)
        self.clusters.append(c)
        if len(self.clusters) > self.MAX_CLUSTERS:  # bounded: the rarest value goes
            self.clusters.remove(min(self.clusters, key=lambda x: x.n))

    def merge(self, other: Clusterer) -> None:
        for c in other.clusters:
            self.add(c.mean, c.n, c.lo, c.hi)
        self.total += other.total - sum(c.n for c in other.clusters)

    def dominant(self) -> _Cluster | None:
        # most observations; on a tie the longest: a timer never fires before its setting, while
        # other causes close early (HAProxy's pool purge closes idle target connections in waves)
        return max(self.clusters, key=lambda c: (c.n, c.mean), default=None)


class TimerBook:
    """Observations per (timer, subject); subjects may be renamed once roles are known."""

    def __init__(self) -> None:
        self.book: dict[tuple[str, str], Clusterer] = {}

    def observe(self, name: str, subject: str, ns: int) -> None:
        clusterer = self.book.get((name, subject))
        if clusterer is None:  # (setdefault would build one per observation)
            clusterer = self.book[name, subject] = Clusterer()
        clusterer.add(ns / SEC)

    def renamed(self, rename: Callable[[str, str], str]) -> TimerBook:
        out = TimerBook()
        for (name, subject), clusterer in self.book.items():
            out.book.setdefault((name, rename(name, subject)), Clusterer()).merge(clusterer)
        return out

    def value(self, name: str, subject: str) -> float | None:
        c = self.book.get((name, subject))
        best = c.dominant() if c else None
        return None if best is None else best.mean

    def any_value(self, name: str) -> float | None:
        """When the subject is unknown: the best-supported value over all subjects."""
        best = [c.dominant() for (n, _), c in self.book.items() if n == name]
        best = [b for b in best if b is not None]
        return max(best, key=lambda b: b.n).mean if best else None

    def longest(self, name: str) -> tuple[float, int] | None:
        """(longest value, observations) over all subjects."""
        found = [c for (n, _), c in self.book.items() if n == name and c.clusters]
        if not found:
            return None
        return max(cl.hi for c in found for cl in c.clusters), sum(c.total for c in found)

    def timers(self) -> tuple[Timer, ...]:
        out = []
        for (name, subject), c in sorted(self.book.items()):
            best = c.dominant()
            if best is not None and not name.startswith("_"):  # "_" names are working notes
                out.append(Timer(name, subject, round(best.mean, 3), best.n, c.total,
                                 round(best.lo, 3), round(best.hi, 3)))
        return tuple(out)


def near(value_s: float, timer_s: float | None) -> bool:
    return timer_s is not None and abs(value_s - timer_s) <= max(0.1, 0.05 * timer_s)


# -- connection detectors ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionEnd:
    """A closed connection with what its exchanges said about it."""

    conn: Connection
    side: str
    """"client" (client -> proxy) or "target" (proxy -> target)."""
    last_http_ns: int | None
    last: ExchangeRef | None
    outstanding: bool
    """An exchange was still waiting for (the end of) its response when it closed."""

    @property
    def proxy_direction(self) -> int:
        return RESP if self.side == "client" else ORIG

    @property
    def idle_ns(self) -> int:
        close = self.conn.first_close
        since = self.last_http_ns if self.last_http_ns is not None else self.conn.start_ns
        return 0 if close is None else close.ts_ns - since

    @property
    def flows(self) -> tuple[str | None, str | None]:
        return (self.conn.flow, None) if self.side == "client" else (None, self.conn.flow)

    def quiet_close(self) -> Close | None:
        """The first close, if it ended a quiet connection (nothing outstanding, no Connection: close)."""
        close = self.conn.first_close
        if close is None or self.outstanding or self.idle_ns < MIN_IDLE_NS:
            return None
        if self.last is not None and (self.last.request_close or self.last.response_close):
            return None
        return close


def idle_timeout_close(end: ConnectionEnd) -> Finding | None:
    """The proxy closed a connection that carried no HTTP data for its idle timeout.

    Wire: FIN (or RST) from the proxy (the acceptor on the client side, the opener
    on the target side), nothing outstanding, no HTTP data for ~the idle timeout;
    TCP keep-alive probes in between do not count. The proxy is doing its job;
    the fix, if any, is alignment: targets keep idle connections longer than the
    proxy (else keepalive_race), clients expect the close (ALB default 60 s).
    """
    close = end.quiet_close()
    if close is None or close.by != end.proxy_direction:
        return None
    idle = end.idle_ns / SEC
    whose = "client" if end.side == "client" else "target"
    return _close_finding(
        "idle_timeout_close", "info", end, close,
        f"The proxy closed the idle {whose} connection with a {close.how.upper()} (frame {close.frame}) "
        f"{idle:.2f} s after its last HTTP data: its idle timeout.",
        "Nothing to fix on its own; keep targets' keep-alive timeouts above this idle timeout, and let "
        "clients expect the close (TCP keep-alive probes do not reset it).",
    )


def target_keepalive_close(end: ConnectionEnd) -> Finding | None:
    """The target closed an idle keep-alive connection after its keep-alive timeout.

    Wire: on a target connection, FIN from the target (the acceptor) with nothing
    outstanding, ~its keep-alive timeout after the last response, which did not
    say ``Connection: close``. Harmless when the proxy saw the FIN first; if the
    proxy's idle timeout is longer, a request will one day cross the FIN
    (keepalive_race -> 502). Fix: target keep-alive timeout > proxy idle timeout.
    """
    close = end.quiet_close()
    if end.side != "target" or close is None or close.by != RESP:
        return None
    return _close_finding(
        "target_keepalive_close", "warning", end, close,
        f"The target closed its idle keep-alive connection with a {close.how.upper()} (frame {close.frame}) "
        f"{end.idle_ns / SEC:.2f} s after the last HTTP data: its keep-alive timeout.",
        "Set the target's keep-alive timeout above the proxy's idle timeout (ALB: 60 s -> 61-62 s), so the "
        "proxy, not the target, closes idle connections.",
    )


def tcp_keepalive_ignored(end: ConnectionEnd) -> Finding | None:
    """An idle close although TCP keep-alive probes were flowing.

    Wire: keep-alive probes (seq = next - 1, 0/1 byte) after the last HTTP data,
    then the proxy's or target's idle FIN. HTTP idle timers (ALB, nginx,
    HAProxy, Envoy) count HTTP data only. Fix: send HTTP requests (a health
    ping) more often than the idle timeout, or raise the idle timeout.
    """
    close = end.quiet_close()
    if close is None or (end.side == "client" and close.by == ORIG):
        return None  # a client closing its own connection is not an idle timer
    probes = _probes_between(end.conn, end.last_http_ns or end.conn.start_ns, close.ts_ns)
    if not probes:
        return None
    first = end.conn.probes[0] if end.conn.probes else None
    evidence = (Evidence(first.frame, first.ts_ns, "first TCP keep-alive probe"),) if first else ()
    return _close_finding(
        "tcp_keepalive_ignored", "warning", end, close,
        f"{probes} TCP keep-alive probe(s) flowed on the idle {end.side} connection, yet it was closed "
        f"{end.idle_ns / SEC:.2f} s after its last HTTP data (frame {close.frame}): probes are not HTTP activity.",
        "Keep the connection busy with HTTP (a periodic request) within the idle timeout, or raise the "
        "timeout; TCP keep-alive only keeps NAT and firewall state.",
        evidence,
    )


def client_keepalive_expiry(end: ConnectionEnd) -> Finding | None:
    """The proxy ended a busy client connection at its maximum age.

    Wire: on a client connection, the proxy's response carries ``Connection:
    close`` although the request did not ask for it, then the proxy's FIN: the
    connection's age reached the client keep-alive duration (ALB
    ``client_keep_alive.seconds``, nginx ``keepalive_time``), not idleness.
    Fix: clients must reopen on ``Connection: close`` (they do) and not pipeline
    a next request onto the closing connection.
    """
    close, last = end.conn.first_close, end.last
    if end.side != "client" or close is None or last is None or close.by != RESP:
        return None
    if not last.response_close or last.request_close or last.index < 2 or end.outstanding:
        return None
    if last.status is None or last.status >= 500:
        return None  # errors close for their own reasons
    age = (last.start_ns - end.conn.start_ns) / SEC
    evidence = (Evidence(last.response_frame, last.response_start_ns or close.ts_ns,
                         f"{last.status} with Connection: close, request #{last.index}"),)
    return _close_finding(
        "client_keepalive_expiry", "info", end, close,
        f"The proxy answered request #{last.index} with Connection: close (frame {last.response_frame}) and "
        f"closed the client connection (frame {close.frame}) at age {age:.2f} s: its client keep-alive "
        "duration, not idleness.",
        "Expected behaviour; clients must reconnect after Connection: close. Raise the client keep-alive "
        "duration if reconnects are costly.",
        evidence, status=last.status,
    )


CONNECTION_DETECTORS = (idle_timeout_close, target_keepalive_close, tcp_keepalive_ignored, client_keepalive_expiry)


def _probes_between(conn: Connection, after_ns: int, before_ns: int) -> int:
    seen = sum(1 for p in conn.probes if after_ns < p.ts_ns < before_ns)
    if seen or sum(conn.probe_counts) <= len(conn.probes):
        return seen
    # only the first probes are kept: if they all came before the idle spell, more may have followed
    return sum(conn.probe_counts) - len(conn.probes)


def _close_finding(kind: str, severity: str, end: ConnectionEnd, close: Close, summary: str,
                   recommendation: str, extra: tuple[Evidence, ...] = (), status: int | None = None) -> Finding:
    client_flow, target_flow = end.flows
    evidence = list(extra)
    if end.last is not None:
        evidence.insert(0, _last_data(end.last))
    evidence.append(Evidence(close.frame, close.ts_ns, f"{close.how.upper()} from the {_closer(end, close)}"))
    evidence = [replace(e, side=end.side) for e in evidence]
    return Finding(kind, severity, close.ts_ns, end.side, client_flow, target_flow, status, summary,
                   tuple(evidence), recommendation)


def _last_data(ref: ExchangeRef) -> Evidence:
    if ref.response_frame is not None:
        return Evidence(ref.response_frame, ref.response_start_ns or 0,
                        f"last response ({ref.status} to {ref.method} {ref.uri}), ends {_s(ref.last_ns)}")
    return Evidence(ref.request_frame, ref.request_start_ns or 0, f"last request ({ref.method} {ref.uri})")


def _closer(end: ConnectionEnd, close: Close) -> str:
    if close.by == end.proxy_direction:
        return "proxy"
    return "client" if end.side == "client" else "target"


def _s(ns: int | None) -> str:
    return "?" if ns is None else f"{ns / SEC:.3f}"


# -- transaction detectors ------------------------------------------------------------------


def _target_closed(leg: Leg) -> bool:
    # a cut is a close before the response's end: from the target, the response is lost
    return leg.cut is not None and leg.cut.by == "acceptor"


def _proxy_gave_up(leg: Leg) -> bool:
    """The proxy closed before the response started (a slow target may still answer into the close)."""
    if leg.cut is None or leg.cut.by != "opener":
        return False
    started = leg.exchange.response_start_ns
    return started is None or started > leg.cut.close.ts_ns


def is_race(leg: Leg, timers: TimerBook) -> bool:
    """The target's close was its keep-alive timer firing as the request arrived, not a reaction to it.

    The connection must have been idle before the request; then either the close
    came within RACE_SLACK of the request (too soon to be about it), or it came
    exactly the target's keep-alive timeout after the previous HTTP data.
    """
    cut, ex = leg.cut, leg.exchange
    if cut is None or ex.request_start_ns is None or cut.idle_before_ns < MIN_IDLE_NS:
        return False
    if cut.close.ts_ns - ex.request_start_ns <= RACE_SLACK_NS:
        return True
    idle_at_close = (cut.close.ts_ns - ex.request_start_ns + cut.idle_before_ns) / SEC
    return near(idle_at_close, timers.value("target_keepalive_timeout", ex.acceptor))


def _explained(tx: Transaction) -> bool:
    """Something on the target side accounts for the client's outcome."""
    return any(leg.cut is not None for leg in tx.backs)


def _front_only(tx: Transaction, timers: TimerBook) -> str | None:
    """What a proxy-made error on the client side alone says: race, reset or timeout.

    A 502 (or a silent close by the proxy) soon after the request looks like a
    dead keep-alive connection (the proxy's RST came back within a round trip);
    a later one like a target that failed while working on it, unless it came
    when one of the proxy's timers fires (Apache answers its ProxyTimeout with 502).
    """
    front = tx.front
    if front is None or _explained(tx) or any(b.exchange.answered for b in tx.backs):
        return None
    ex = front.exchange
    silent = front.cut is not None and front.cut.by == "acceptor" and ex.status is None
    if ex.status == 504:
        return "gateway_timeout"
    if ex.status not in (502, 503) and not silent:
        return None
    answered_at = ex.response_start_ns if ex.status is not None else front.cut.close.ts_ns
    took = answered_at - (ex.request_end_ns or ex.start_ns)
    if took <= RACE_SLACK_NS:
        return "keepalive_race"
    proxy = ex.acceptor
    if any(near(took / SEC, timers.value(n, proxy) or timers.any_value(n)) for n in PROXY_WAIT_TIMERS):
        return "gateway_timeout"
    return "target_reset"


def keepalive_race(tx: Transaction, timers: TimerBook) -> Finding | None:
    """The target's FIN for an idle keep-alive connection crossed the proxy's next request.

    Wire (target side): a reused connection idle for ~the target's keep-alive
    timeout; the proxy sends a request; the target's FIN arrives just before or
    after it (within a round trip, or after a "deaf" moment), then RST for the
    request it will not read. The proxy answers 502 (ALB, nginx without retry),
    closes the client connection silently (HAProxy, when not the first request),
    or retries elsewhere (nginx, idempotent methods) and the client gets 200.
    Fix: target keep-alive timeout > proxy idle timeout (ALB 60 s -> 61-62 s).
    """
    leg = next((b for b in tx.backs if _target_closed(b) and is_race(b, timers)), None)
    if leg is None:
        return _front_only_finding(tx, "keepalive_race") if _front_only(tx, timers) == "keepalive_race" else None
    cut, ex = leg.cut, leg.exchange
    order = "before" if cut.close.ts_ns <= (ex.request_start_ns or 0) else "after"
    lag_ms = abs(cut.close.ts_ns - (ex.request_start_ns or 0)) / 1e6
    summary = (f"The proxy sent {ex.method} {ex.uri} to target {ex.acceptor} in frame {ex.request_frame} on a "
               f"connection idle for {cut.idle_before_ns / SEC:.2f} s; the target's {cut.close.how.upper()} "
               f"(frame {cut.close.frame}) came {lag_ms:.1f} ms {order} it, from its keep-alive timer, so the "
               f"request was never processed and {_client_got(tx)}.")
    return _back_finding("keepalive_race", tx, leg, cut.close.ts_ns, summary,
                         "Set the target's keep-alive timeout above the proxy's idle timeout (ALB 60 s -> "
                         "61-62 s) so the proxy always closes idle connections first.")


def target_reset(tx: Transaction, timers: TimerBook) -> Finding | None:
    """The target sent FIN or RST while a request it had received was outstanding.

    Wire (target side): request on the target connection, then, before (the end
    of) the response, FIN or RST from the target, not explained by its
    keep-alive timer. The proxy answers 502 (HAProxy SH/SD, Envoy UC/UR, ALB
    "target closed the connection"). Fix: the target's request/script timeouts
    and crashes: it must answer every request it reads.
    """
    leg = next((b for b in tx.backs if _target_closed(b) and not is_race(b, timers)), None)
    if leg is None:
        return _front_only_finding(tx, "target_reset") if _front_only(tx, timers) == "target_reset" else None
    cut, ex = leg.cut, leg.exchange
    after = (cut.close.ts_ns - (ex.request_end_ns or ex.start_ns)) / SEC
    summary = (f"The proxy sent {ex.method} {ex.uri} to target {ex.acceptor} in frame {ex.request_frame}; "
               f"{after:.2f} s later the target sent {cut.close.how.upper()} (frame {cut.close.frame}) instead "
               f"of a whole response, and {_client_got(tx)}.")
    return _back_finding("target_reset", tx, leg, cut.close.ts_ns, summary,
                         "Find why the target closes with a request outstanding (worker timeout, crash, "
                         "max requests per connection) and make it answer every request it reads.")


def gateway_timeout(tx: Transaction, timers: TimerBook) -> Finding | None:
    """The proxy stopped waiting for the target's response and closed that connection -> 504.

    Wire: request on the target connection, no response, FIN/RST from the proxy
    ~its response (idle) timeout later; 504 on the client connection at the
    same moment (502 from Apache, whose ProxyTimeout answers so). Fix: make the
    target answer sooner, or raise the proxy's idle timeout above the longest
    request.
    """
    leg = next((b for b in tx.backs if _proxy_gave_up(b)), None)
    status = tx.front.exchange.status if tx.front is not None else None
    if leg is None:
        if tx.front is not None and (status == 504 or _front_only(tx, timers) == "gateway_timeout"):
            return _front_only_finding(tx, "gateway_timeout")
        return None
    # the kind follows the wire, the status the proxy: Apache answers its ProxyTimeout with 502
    if status not in (502, 503, 504) and not (tx.front is None and _timed_out(leg, timers)):
        return None
    ex, cut = leg.exchange, leg.cut
    waited = (cut.close.ts_ns - (ex.request_end_ns or ex.start_ns)) / SEC
    summary = (f"The proxy sent {ex.method} {ex.uri} to target {ex.acceptor} in frame {ex.request_frame}; "
               f"with no response it gave up {waited:.2f} s later, closing the target connection "
               f"(frame {cut.close.frame}), and {_client_got(tx)}.")
    return _back_finding("gateway_timeout", tx, leg, cut.close.ts_ns, summary,
                         "Make the target answer within the proxy's idle timeout, or raise that timeout "
                         "above the longest request.")


def client_abort(tx: Transaction, timers: TimerBook) -> Finding | None:
    """The client closed before the response (ALB 460, nginx 499, HAProxy CH/CD).

    Wire: request on the client connection, then FIN/RST from the client before
    the response (or its end); the proxy usually closes the target connection
    too. Back side alone: the proxy closed a waiting target connection well
    before its own timeout. Fix: the client's response timeout is shorter than
    the slowest request: raise it, or make the target faster.
    """
    front = tx.front
    if front is not None and front.cut is not None and front.cut.by == "opener":
        return _client_abort_front(tx, front)
    if front is not None and front.exchange.status in (460, 499):
        return _front_only_finding(tx, "client_abort")
    leg = next((b for b in tx.backs if _proxy_gave_up(b)), None)
    if front is None and leg is not None and not _timed_out(leg, timers):
        return _back_finding("client_abort", tx, leg, leg.cut.close.ts_ns,
                             f"The proxy closed target connection {leg.exchange.flow} (frame "
                             f"{leg.cut.close.frame}) while {leg.exchange.method} {leg.exchange.uri} was "
                             "outstanding, well before its timeout: the client most likely gave up.",
                             _ABORT_FIX, side="client")
    return None


_ABORT_FIX = ("The client's response timeout is shorter than this request takes: raise it, or make the "
              "target answer sooner.")

TRANSACTION_DETECTORS = (keepalive_race, target_reset, gateway_timeout, client_abort)


def _client_abort_front(tx: Transaction, front: Leg) -> Finding:
    ex, cut = front.exchange, front.cut
    waited = (cut.close.ts_ns - (ex.request_end_ns or ex.start_ns)) / SEC
    summary = (f"The client sent {ex.method} {ex.uri} in frame {ex.request_frame} and closed its connection "
               f"with a {cut.close.how.upper()} (frame {cut.close.frame}) {waited:.2f} s later, before the "
               "response: a client abort (ALB 460, nginx 499).")
    return Finding("client_abort", "warning", cut.close.ts_ns, "client", ex.flow, _target_flow(tx), None,
                   summary, _evidence(tx, front), _ABORT_FIX, ex.key)


def _timed_out(leg: Leg, timers: TimerBook) -> bool:
    """Did the proxy give up after about its timeout (rather than because the client left)?"""
    ex, cut = leg.exchange, leg.cut
    waited = (cut.close.ts_ns - (ex.request_end_ns or ex.start_ns)) / SEC
    proxy = host_of(ex.opener)
    limits = [timers.value(n, proxy) or timers.any_value(n) for n in PROXY_WAIT_TIMERS]
    limits = [t for t in limits if t is not None]
    if not limits:
        return _longest_wait(waited, timers)
    # an idle close seen on the target side alone may be early (HAProxy's pool purge): at or past
    # the longest timer is a timeout too
    return any(near(waited, t) for t in limits) or waited >= max(limits)


PROXY_WAIT_TIMERS = ("proxy_response_timeout", "proxy_idle_timeout", "proxy_target_idle_timeout")


def _longest_wait(waited: float, timers: TimerBook) -> bool:
    """No timer known: of several give-ups, the longest are timeouts and shorter ones clients leaving."""
    longest = timers.longest("_proxy_gave_up")
    if longest is None or longest[1] < 2:
        return waited >= 1.0  # a client gives up sooner, usually; nothing better to go on
    return near(waited, longest[0])


def gave_up_after(leg: Leg) -> float | None:
    """Seconds the proxy waited for a response before closing the target connection, if it did."""
    if not _proxy_gave_up(leg):
        return None
    return (leg.cut.close.ts_ns - (leg.exchange.request_end_ns or leg.exchange.start_ns)) / SEC


def _client_got(tx: Transaction) -> str:
    if tx.front is None:
        return "what the client got is not in the capture"
    ex = tx.front.exchange
    if ex.status is None:
        return "the proxy closed the client connection without a response"
    if len(tx.backs) > 1 and ex.answered and ex.status < 500:
        return f"the proxy retried it on another connection and the client got {ex.status}"
    return f"the client got {ex.status} (frame {ex.response_frame})"


def _target_flow(tx: Transaction) -> str | None:
    return tx.backs[-1].exchange.flow if tx.backs else None


def _severity(tx: Transaction) -> str:
    if tx.front is None or tx.front.exchange.status is None or tx.front.exchange.status >= 500:
        return "error"
    return "warning"  # hidden by a retry, or a late answer: latent


def _back_finding(kind: str, tx: Transaction, leg: Leg, ts_ns: int, summary: str, fix: str,
                  side: str = "target") -> Finding:
    front = tx.front.exchange if tx.front else None
    return Finding(kind, _severity(tx), ts_ns, side, front.flow if front else None, leg.exchange.flow,
                   front.status if front else None, summary, _evidence(tx, leg), fix, leg.exchange.key)


_FRONT_ONLY = {
    "keepalive_race": ("the proxy answered within a round trip, as it does when a reused target connection "
                       "was already closed by the target", "Set the target's keep-alive timeout above the "
                       "proxy's idle timeout (ALB 60 s -> 61-62 s)."),
    "target_reset": ("the proxy answered after a while, as it does when the target closes with the request "
                     "outstanding", "Check the target for requests it drops (timeouts, crashes)."),
    "gateway_timeout": ("the proxy gave up waiting for the target", "Make the target answer within the "
                        "proxy's idle timeout, or raise that timeout."),
    "client_abort": ("the proxy logged the client leaving", _ABORT_FIX),
}


def _front_only_finding(tx: Transaction, kind: str) -> Finding:
    """A finding from the client side alone; the target side was not captured or not paired."""
    front = tx.front
    ex = front.exchange
    why, fix = _FRONT_ONLY[kind]
    ts = ex.response_start_ns if ex.response_start_ns is not None else (front.cut.close.ts_ns if front.cut else ex.last_ns)
    got = f"{ex.status} (frame {ex.response_frame}" + (f", Server: {ex.server})" if ex.server else ")")
    what = got if ex.status is not None else "no response: the proxy closed the connection"
    summary = (f"The client sent {ex.method} {ex.uri} in frame {ex.request_frame} and got {what} "
               f"{(ts - (ex.request_end_ns or ex.start_ns)) / SEC:.3f} s later; the target side is not in the "
               f"capture, but {why}.")
    side = "client" if kind == "client_abort" else "target"
    status = ex.status if kind != "client_abort" else None
    return Finding(kind, "error", ts, side, ex.flow, _target_flow(tx), status, summary, _evidence(tx, front),
                   fix, ex.key)


# -- one event, one finding ---------------------------------------------------------------------

_EVENT = {"keepalive_race": "target failed", "target_reset": "target failed",
          "gateway_timeout": "someone gave up", "client_abort": "someone gave up"}
MERGE_WINDOW_NS = SEC
"""A proxy relays a target's failure, or a give-up, to the other side within this."""


def merge_views(findings: list[Finding], may_pair: Callable[[str, str], bool]) -> list[Finding]:
    """The two one-sided views of one event that no pair joined become one finding.

    A target's FIN/RST with a request outstanding and the proxy's 502 (or silent
    close) to a client moments later; the proxy closing a waiting target
    connection and the client's 504 or its own early close. Which side decides
    the kind: the target side tells a race from a reset (only it sees the
    connection's idleness), the client side tells a timeout from a client leaving
    (only it sees who left). Each view is used once, the nearest in time first.
    """
    fronts = [f for f in findings if f.kind in _EVENT and f.target_flow is None and f.client_flow]
    backs = [f for f in findings if f.kind in _EVENT and f.client_flow is None and f.target_flow]
    used: set[int] = set()
    merged: dict[int, Finding] = {}
    for front in sorted(fronts, key=lambda f: f.ts_ns):
        views = [b for b in backs if id(b) not in used and _EVENT[b.kind] == _EVENT[front.kind]
                 and abs(b.ts_ns - front.ts_ns) <= MERGE_WINDOW_NS and may_pair(front.client_flow, b.target_flow)]
        back = min(views, key=lambda b: abs(b.ts_ns - front.ts_ns), default=None)
        if back is not None:
            used.add(id(back))
            merged[id(front)] = _one_event(front, back)
    return [merged.get(id(f), f) for f in findings if id(f) not in used]


def _one_event(front: Finding, back: Finding) -> Finding:
    lead = front if _EVENT[front.kind] == "someone gave up" else back
    failed = front.status is None or front.status >= 500
    return replace(
        lead, severity="error" if failed else "warning", client_flow=front.client_flow, target_flow=back.target_flow, status=front.status,
        summary=f"{back.summary} On the client side, moments later: {front.summary}",
        evidence=tuple(sorted(front.evidence + back.evidence, key=lambda e: e.ts_ns)),
    )


def _evidence(tx: Transaction, focus: Leg) -> tuple[Evidence, ...]:
    """Frames in time order: requests, closes and responses of both sides."""
    items: list[Evidence] = []
    for leg, where in _legs(tx):
        items.extend(_leg_evidence(leg, where))
    items.sort(key=lambda e: e.ts_ns)
    return tuple(items)


def _legs(tx: Transaction) -> list[tuple[Leg, str]]:
    legs = [(tx.front, "client")] if tx.front else []
    return legs + [(b, "target") for b in tx.backs]


def _leg_evidence(leg: Leg, where: str) -> list[Evidence]:
    ex, out = leg.exchange, []
    if ex.request_frame is not None:
        out.append(Evidence(ex.request_frame, ex.request_start_ns or 0,
                            f"{ex.method} {ex.uri} on the {where} connection {ex.flow} (request #{ex.index})",
                            where))
    if ex.response_frame is not None:
        out.append(Evidence(ex.response_frame, ex.response_start_ns or 0,
                            f"{ex.status} response on the {where} connection", where))
    if leg.cut is not None:
        who = _who(leg.cut.by, where)
        out.append(Evidence(leg.cut.close.frame, leg.cut.close.ts_ns,
                            f"{leg.cut.close.how.upper()} from the {who}", where))
        if leg.cut.rst is not None and leg.cut.rst is not leg.cut.close:
            out.append(Evidence(leg.cut.rst.frame, leg.cut.rst.ts_ns, f"RST from the {_rst_who(leg, where)}", where))
    return out


def _who(by: str, where: str) -> str:
    if where == "client":
        return "client" if by == "opener" else "proxy"
    return "proxy" if by == "opener" else "target"


def _rst_who(leg: Leg, where: str) -> str:
    return _who("opener" if leg.cut.rst.by == ORIG else "acceptor", where)
