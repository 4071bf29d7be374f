"""Join proxy log lines with the diagnosis: which finding explains each error line, which line each finding has.

Theory of operation
-------------------
The capture is read first (``Coverage`` is a pipeline Sink that only notes which clients and
targets the capture holds and the time it spans); then the log lines are streamed past the
diagnosis. The diagnosis keeps only failing or unanswered transactions (healthy ones are counted
and dropped), which is exactly what an error line can join to, so the join costs no more memory
than the lines it reports: error lines and, with ``detail="all"``, healthy lines that joined.

A line joins a kept transaction, strongest key first:

1. its trace id / request id (the ALB's ``Root=...``, HAProxy's ``%ID``, nginx's ``$request_id``)
   equals one the wire carried (``ExchangeRef.request_ids``);
2. the client connection (ip:port as logged: the front connection's opener), or the proxy's source
   ip:port (HAProxy ``%bi:%bp``), with the same method and URI (or its tail) and time;
3. the target ip:port with X-Forwarded-For naming the logged client (a target-side capture), or the
   client's address alone (nginx error.log, combined without ``$remote_port``), same method, URI, time.

Time: a line's stamp is the request's start (HAProxy, the ALB's request_creation_time) or its end
(the ALB's time, nginx): starts are compared with the request's first byte, ends must fall within
the request's life on the wire (to its response or its cut); ``SKEW_S`` allows for the logging host's
clock and the capture's disagreeing, plus the stamp's own resolution (1 s for nginx's $time_local).

Findings without a transaction (a refused connect, a connection closed at its maximum age) are
found by the client connection and time. What joins nothing gets a ``why_not``: outside the
capture's time span, that side not captured, or no failing transaction on the wire.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..diagnosis.correlate import Leg, Transaction
from ..diagnosis.detect import Finding
from ..diagnosis.diagnose import DiagnosisResult
from ..diagnosis.refs import SEC, ExchangeRef, host_of, same_target, split_flow
from ..model import Connection, Exchange
from .files import expand, read_lines
from .model import LogLine
from .parse import LineParser, trace_root

SKEW_S = 1.0
"""Clock skew allowed between the logging host and the capture."""
MAX_HOSTS = 200_000


class Coverage:
    """A pipeline Sink: which client and target endpoints the capture holds, and its time span."""

    def __init__(self) -> None:
        self.openers: set[str] = set()
        self.opener_hosts: set[str] = set()
        self.acceptors: set[str] = set()
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def connection(self, conn: Connection) -> None:
        opener, acceptor = split_flow(conn.flow)
        if len(self.openers) < MAX_HOSTS:
            self.openers.add(opener)
            self.opener_hosts.add(host_of(opener))
            self.acceptors.add(acceptor)
        if self.first_ns is None or conn.start_ns < self.first_ns:
            self.first_ns = conn.start_ns
        if self.last_ns is None or conn.end_ns > self.last_ns:
            self.last_ns = conn.end_ns

    def exchange(self, exchange: Exchange, flow: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Joined:
    """A reported log line and what the wire says about it."""

    record: LogLine
    finding: int | None
    """Index into ``DiagnosisResult.findings`` of the finding that explains it."""
    transaction: str | None
    """``T<conn>.<n>`` of the wire transaction it joined, if any."""
    matched_by: str | None
    why_not: str | None
    """Why no finding explains it (None when one does)."""


@dataclass
class LogReport:
    lines: list[Joined] = field(default_factory=list)
    """Error lines (and joined healthy ones with detail "all"), in reading order."""
    finding_lines: dict[int, Joined] = field(default_factory=dict)
    """Finding index -> its log line (an error line where there is one)."""
    files: list[str] = field(default_factory=list)
    parsed: int = 0
    unparsed: int = 0
    unparsed_examples: list[tuple[str, int]] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    healthy: int = 0

    def categories(self) -> Counter:
        """error lines explained / no wire evidence (by reason), findings logged / not logged."""
        out: Counter = Counter()
        for j in self.lines:
            if not j.record.error:
                continue
            out["explained" if j.finding is not None else "no wire evidence: " + _reason(j.why_not)] += 1
        return out


def _reason(why_not: str | None) -> str:
    return (why_not or "").split(":")[0].split(" (")[0]


def transaction_id(tx: Transaction) -> str:
    ref = (tx.front or tx.backs[0]).exchange
    return f"T{ref.conn_id}.{ref.index}"


class _Index:
    """The kept transactions and findings, looked up by what log lines carry."""

    def __init__(self, result: DiagnosisResult) -> None:
        self.result = result
        self.by_id: dict[str, list[tuple[Leg, Transaction]]] = {}
        self.by_opener: dict[str, list[tuple[Leg, Transaction]]] = {}
        self.by_opener_host: dict[str, list[tuple[Leg, Transaction]]] = {}
        self.by_acceptor: dict[str, list[tuple[Leg, Transaction]]] = {}
        for tx in result.transactions:
            for leg in (tx.front, *tx.backs):
                if leg is None:
                    continue
                ref = leg.exchange
                entry = (leg, tx)
                for _, value in ref.request_ids:
                    root = trace_root(value)
                    if root:
                        self.by_id.setdefault(root, []).append(entry)
                self.by_opener.setdefault(ref.opener, []).append(entry)
                self.by_opener_host.setdefault(host_of(ref.opener), []).append(entry)
                self.by_acceptor.setdefault(ref.acceptor, []).append(entry)
        self.by_key: dict[tuple[int, int], list[int]] = {}
        self.by_client: dict[str, list[int]] = {}
        for n, f in enumerate(result.findings):
            if f.exchange is not None:
                self.by_key.setdefault(f.exchange, []).append(n)
            if f.client_flow and f.exchange is None:  # a transaction's finding joins through it, URI checked
                opener = split_flow(f.client_flow)[0]
                self.by_client.setdefault(opener, []).append(n)
                self.by_client.setdefault(host_of(opener), []).append(n)

    def finding_of(self, tx: Transaction) -> int | None:
        found = [n for leg in (tx.front, *tx.backs) if leg for n in self.by_key.get(leg.exchange.key, ())]
        return _best(found, self.result.findings)

    def finding_by_flow(self, line: LogLine) -> int | None:
        """A finding with no transaction on the logged client connection at the line's time."""
        if not line.client:
            return None
        lo, hi = _life(line)
        tol = SKEW_S + line.ts_resolution
        found = [n for n in self.by_client.get(line.client, ())
                 if lo - tol <= self.result.findings[n].ts_ns / SEC <= hi + tol]
        return _best(found, self.result.findings)

    def candidates(self, line: LogLine) -> Iterator[tuple[int, str, Leg, Transaction]]:
        """(priority, how, leg, transaction) for every kept exchange the line may be."""
        root = trace_root(line.trace_id)
        if root:
            for leg, tx in self.by_id.get(root, ()):
                yield 0, "trace id", leg, tx
        if line.client and ":" in line.client:
            for leg, tx in self.by_opener.get(line.client, ()):
                yield 1, "client ip:port", leg, tx
        if line.backend_src:
            for leg, tx in self.by_opener.get(line.backend_src, ()):
                yield 1, "proxy source ip:port", leg, tx
        client_host = host_of(line.client) if line.client and ":" in line.client else line.client
        if line.target:
            for leg, tx in self.by_acceptor.get(line.target, ()):
                if client_host and leg.exchange.forwarded_for == client_host:
                    yield 2, "target ip:port + X-Forwarded-For", leg, tx
        if line.client and ":" not in line.client:
            for leg, tx in self.by_opener_host.get(line.client, ()):
                yield 3, "client ip", leg, tx


def _best(found: list[int], findings: tuple[Finding, ...]) -> int | None:
    if not found:
        return None
    order = {"error": 0, "warning": 1}
    return min(found, key=lambda n: (order.get(findings[n].severity, 2), n))


def _life(line: LogLine) -> tuple[float, float]:
    """The span the line says its request lived: start (or end) to end (or start)."""
    start = line.start if line.start is not None else line.ts
    end = line.end if line.end is not None else line.ts
    lo = start if start is not None else end
    hi = end if end is not None else start
    return (lo or 0.0), (hi or 0.0)


def _same_request(line: LogLine, ref: ExchangeRef) -> bool:
    if line.method and ref.method and line.method != ref.method:
        return False
    return not (line.uri and ref.uri and line.uri != ref.uri and not same_target(line.uri, ref.uri))


def _distance(line: LogLine, leg: Leg) -> float | None:
    """Seconds between the line's time and the exchange's, None when too far apart."""
    ref = leg.exchange
    tol = SKEW_S + line.ts_resolution
    begin = ref.start_ns / SEC
    finish = max(ref.last_ns, leg.cut.close.ts_ns if leg.cut else 0) / SEC
    if line.start is not None:
        lo, hi = _life(line)
        # the request reached the wire after the proxy got it (a back leg: after connecting, queueing)
        if not lo - tol <= begin <= hi + tol:
            return None
        return abs(begin - lo)
    if line.ts is None:
        return None
    if not begin - tol <= line.ts <= finish + tol:
        return None
    return abs(line.ts - finish)


def join_line(line: LogLine, index: _Index, coverage: Coverage) -> Joined:
    best: tuple[int, float, str, Leg, Transaction] | None = None
    for priority, how, leg, tx in index.candidates(line):
        if priority == 0:
            dt = 0.0
        else:
            if not _same_request(line, leg.exchange):
                continue
            dt = _distance(line, leg)
            if dt is None:
                continue
        if best is None or (priority, dt) < best[:2]:
            best = (priority, dt, how, leg, tx)
    if best is not None:
        _, _, how, leg, tx = best
        n = index.finding_of(tx)
        if n is None:
            n = index.finding_by_flow(line)
        why = None if n is not None else _matched_no_finding(line, tx)
        return Joined(line, n, transaction_id(tx), how, why)
    n = index.finding_by_flow(line)
    if n is not None:
        return Joined(line, n, None, "client connection and time", None)
    return Joined(line, None, None, None, _why_not(line, coverage))


def _matched_no_finding(line: LogLine, tx: Transaction) -> str:
    statuses = [leg.exchange.status for leg in tx.backs if leg.exchange.status is not None]
    if line.code is not None and line.code in statuses:
        return (f"no finding explains it: the wire shows {transaction_id(tx)} and the target answered "
                f"{line.code} itself (passed through)")
    return f"no finding explains it: the wire shows {transaction_id(tx)} with nothing the proxy failed at"


def _why_not(line: LogLine, coverage: Coverage) -> str:
    tol = SKEW_S + line.ts_resolution
    lo, hi = _life(line)
    if coverage.first_ns is None:
        return "that side not captured: the capture holds no TCP connection"
    first, last = coverage.first_ns / SEC, coverage.last_ns / SEC
    if hi + tol < first or lo - tol > last:
        return f"outside the capture's time span ({_clock(first)} to {_clock(last)})"
    client_seen = line.client is not None and (
        line.client in coverage.openers if ":" in line.client else line.client in coverage.opener_hosts)
    target_seen = line.target is not None and line.target in coverage.acceptors
    if not client_seen and not target_seen:
        sides = [f"no connection from client {line.client}" if line.client else "no client logged"]
        if line.target:
            sides.append(f"none to target {line.target}")
        return "that side not captured: " + ", ".join(sides)
    what = " ".join(filter(None, (line.method, line.uri))) or "request"
    side = f"client connection {line.client}" if client_seen else f"target {line.target}"
    return (f"no matching transaction: the capture has the {side} but no failing or unanswered {what} "
            f"near {_clock(lo)}")


def _clock(ts: float) -> str:
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return f"{ts:.3f}"


def join_lines(records: Iterable[LogLine], result: DiagnosisResult, coverage: Coverage,
               detail: str = "errors", report: LogReport | None = None) -> LogReport:
    """Join parsed lines (streamed) with the diagnosis; keeps error lines and, with detail "all",
    healthy lines that joined."""
    report = report or LogReport()
    index = _Index(result)
    for record in records:
        report.formats[record.format] += 1
        joined = join_line(record, index, coverage)
        if not record.error:
            report.healthy += 1
            if joined.transaction is None and joined.finding is None:
                continue  # a healthy line that joined nothing: counted, not kept
        if record.error or detail == "all":
            report.lines.append(joined)
        if joined.finding is not None:
            held = report.finding_lines.get(joined.finding)
            if held is None or _rank(joined) < _rank(held):
                report.finding_lines[joined.finding] = joined
    return report


def _rank(j: Joined) -> tuple[int, int]:
    """An error line before a healthy one, an access log before error.log."""
    return (0 if j.record.error else 1, 1 if j.record.format == "nginx_error" else 0)


def read_logs(paths: list[str], result: DiagnosisResult, coverage: Coverage, log_format: str | None = None,
              detail: str = "errors") -> LogReport:
    """Every line of every file (plain or gzip; directories and globs expanded), parsed and joined."""
    parser = LineParser(log_format)
    report = LogReport(files=expand(paths))

    def records() -> Iterator[LogLine]:
        for path in report.files:
            for number, text in read_lines(path):
                record = parser.parse(text, path, number)
                if record is not None:
                    yield record

    join_lines(records(), result, coverage, detail, report)
    report.parsed, report.unparsed, report.unparsed_examples = parser.parsed, parser.unparsed, parser.examples
    return report


# -- records for the JSON ----------------------------------------------------------------------


def log_line_dict(j: Joined, result: DiagnosisResult) -> dict:
    r = j.record
    f = result.findings[j.finding] if j.finding is not None else None
    return {"file": r.file, "line": r.line, "format": r.format,
            "ts": None if r.ts is None else round(r.ts, 6), "ts_is": r.ts_is, "status": r.status,
            "client": r.client, "target": r.target, "trace_id": r.trace_id, "termination": r.termination,
            "timers": dict(r.timers), "error": r.error,
            "finding": f.kind if f else None, "finding_id": f"F{j.finding + 1}" if f else None,
            "transaction": j.transaction, "matched_by": j.matched_by, "why_not": j.why_not}


def logs_dict(report: LogReport, result: DiagnosisResult) -> dict:
    """What ``analyze --log`` adds to the JSON: ``log_lines[]``, ``log_summary``; and per finding ``log``."""
    return {
        "log_lines": [log_line_dict(j, result) for j in report.lines],
        "log_summary": {"files": report.files, "parsed": report.parsed, "unparsed": report.unparsed,
                        "unparsed_examples": [{"file": f, "line": n} for f, n in report.unparsed_examples],
                        "formats": dict(report.formats), "categories": dict(report.categories()),
                        "findings_logged": len(report.finding_lines),
                        "findings_not_logged": len(result.findings) - len(report.finding_lines)},
    }


def finding_log(report: LogReport, n: int) -> dict | None:
    """``findings[].log``: the file and line of finding ``n``'s log line and what it says, or None (not logged)."""
    j = report.finding_lines.get(n)
    return None if j is None else {"file": j.record.file, "line": j.record.line, "says": j.record.describe()}


def finding_logs(report: LogReport, result: DiagnosisResult) -> list[dict | None]:
    """``finding_log`` of every finding, in ``result.findings`` order: what the other outputs show."""
    return [finding_log(report, n) for n in range(len(result.findings))]
