"""Wires the stages: capture -> tcp -> http -> (later) correlate -> detect.

No I/O of its own beyond what ``capture.open_capture`` does. Records leave the
pipeline through a ``Sink`` as soon as they are final (a connection when it
closes, an exchange when it ends), so memory follows the open connections and
outstanding messages, not the capture's length.
"""

from __future__ import annotations

import gc
import heapq
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

from ..model import AnomalyLog, CaptureStats, Connection, Exchange, Packet
from . import clocks
from .capture import open_capture
from .http import HttpConnection
from .tcp import TcpTracker


class AnalysisError(Exception):
    """A bug met while analysing: the exception from the stages, and the frame being handled.

    ``frame`` is the frame number in its capture file (None when no packet was being handled:
    at the end of the capture); ``capture`` is that file, when only one was given.
    """

    def __init__(self, error: Exception, frame: int | None, capture: str | None) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.frame = frame
        self.capture = capture


class Sink(Protocol):
    def connection(self, conn: Connection) -> None: ...
    def exchange(self, exchange: Exchange, flow: str) -> None: ...


@dataclass
class Summary:
    """What the terminal summary needs: counts only, whatever the capture's size."""

    captures: list[CaptureStats] = field(default_factory=list)
    anomalies: AnomalyLog = field(default_factory=AnomalyLog)
    connections: int = 0
    conn_states: Counter[str] = field(default_factory=Counter)
    exchanges: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "502", "none"
    endings: Counter[str] = field(default_factory=Counter)  # how exchanges ended
    keepalive_probes: int = 0
    peak_open_connections: int = 0
    cross_capture_duplicates: int = 0  # the same segment in two of the captures given together
    expired_attempts: int = 0  # connection attempts summarised early (tcp.MAX_HALF_OPEN, HALF_OPEN_NS)
    expired_connections: int = 0  # established ones summarised early (tcp.MAX_OPEN, IDLE_EXPIRE_NS)
    clock_offsets_ns: list[int] = field(default_factory=list)
    """Per capture, how far its clock was ahead of the first capture's (subtracted; ``clocks.py``)."""


def count_connection(s: Summary, conn: Connection) -> None:
    """The Summary's share of a finished connection (here and in ``shards``' merge)."""
    s.connections += 1
    s.conn_states[conn.conn_state] += 1
    s.keepalive_probes += sum(conn.probe_counts)


def count_exchange(s: Summary, exchange: Exchange) -> None:
    s.exchanges += 1
    s.statuses["none" if exchange.status is None else str(exchange.status)] += 1
    s.endings[exchange.ended] += 1


class _HttpStage:
    """The TCP stage's listener: one HTTP/1.x parser per connection that carried data.

    The parser is made at the connection's first byte (or gap), not when it opens: a
    connection that never carries data (a SYN flood, a port scan, an unanswered connect)
    costs its flow string here, not a parser. Stream ends seen before that are replayed
    to the parser when it is made, so it sees what it would have seen.
    """

    def __init__(self, sinks: list[Sink], summary: Summary) -> None:
        self.sinks = sinks
        self.summary = summary
        self.http: dict[int, HttpConnection] = {}
        self.flows: dict[int, str] = {}
        self._ended: dict[int, int] = {}  # streams ended per connection
        self._early_ends: dict[int, list[tuple[int, str, int, int]]] = {}  # ends before the parser was made

    def on_open(self, conn_id: int, flow: str, ts_ns: int) -> None:
        self.flows[conn_id] = flow

    def _parser(self, conn_id: int) -> HttpConnection:
        http = self.http.get(conn_id)
        if http is None:
            http = self.http[conn_id] = HttpConnection(conn_id, self.summary.anomalies, self.flows[conn_id])
            for direction, how, ts_ns, frame in self._early_ends.pop(conn_id, ()):
                http.end(direction, how, ts_ns, frame)
        return http

    def on_data(self, conn_id: int, direction: int, data: bytes, ts_ns: int, frame: int) -> None:
        http = self.http.get(conn_id) or self._parser(conn_id)
        http.data(direction, data, ts_ns, frame)
        self._emit(conn_id, http)

    def on_gap(self, conn_id: int, direction: int, size: int, ts_ns: int, frame: int) -> None:
        http = self._parser(conn_id)
        http.gap(direction, size, ts_ns, frame)
        self._emit(conn_id, http)

    def on_end(self, conn_id: int, direction: int, how: str, ts_ns: int, frame: int) -> None:
        http = self.http.get(conn_id)
        if http is not None:
            http.end(direction, how, ts_ns, frame)
            self._emit(conn_id, http)
        self._ended[conn_id] = ended = self._ended.get(conn_id, 0) + 1
        if ended == 2:  # both streams over: nothing more can come, free the parser now
            if http is not None:
                self.http.pop(conn_id).close()
            self._early_ends.pop(conn_id, None)
        elif http is None:
            self._early_ends.setdefault(conn_id, []).append((direction, how, ts_ns, frame))

    def on_close(self, conn: Connection) -> None:
        http = self.http.pop(conn.id, None)
        if http is not None:
            self._emit(conn.id, http)
            http.close()
        self._ended.pop(conn.id, None)
        self._early_ends.pop(conn.id, None)
        del self.flows[conn.id]
        count_connection(self.summary, conn)
        for sink in self.sinks:
            sink.connection(conn)

    def _emit(self, conn_id: int, http: HttpConnection) -> None:
        for exchange in http.exchanges():
            count_exchange(self.summary, exchange)
            for sink in self.sinks:
                sink.exchange(exchange, self.flows[conn_id])


SINK_BATCH = 300
"""Records handed to the sinks at a time. The reading stages and the diagnosis are each megabytes of
compiled code: interleaved record by record they evict each other from the CPU's caches; a few hundred
records at a time, each runs warm (10-20% faster end to end; benchmarks/README.md, "Batched sinks")."""


class Batched:
    """The sinks behind one Sink that hands them records ``SINK_BATCH`` at a time, in arrival order.

    ``flush`` delivers what is pending: the caller's to call once the records stop coming.
    """

    def __init__(self, sinks: list[Sink]) -> None:
        self._connection = [s.connection for s in sinks]
        self._exchange = [s.exchange for s in sinks]
        self._pending: list[tuple] = []

    def connection(self, conn: Connection) -> None:
        self._pending.append((conn, None))
        if len(self._pending) >= SINK_BATCH:
            self.flush()

    def exchange(self, exchange: Exchange, flow: str) -> None:
        self._pending.append((exchange, flow))
        if len(self._pending) >= SINK_BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for record, flow in pending:
            if flow is None:
                for sink in self._connection:
                    sink(record)
            else:
                for sink in self._exchange:
                    sink(record, flow)


CROSS_COPY_WINDOW_NS = 2_000_000


def _merged(streams: list[Iterator[Packet]], summary: Summary) -> Iterable[Packet]:
    """Several captures of one incident (front and back, say) read as one timeline, on one clock."""
    if len(streams) == 1:
        return streams[0]
    streams = [_shifted(s, off) if off else s for s, off in zip(streams, summary.clock_offsets_ns)]
    return _without_cross_copies(heapq.merge(*streams, key=lambda p: p.ts_ns), summary)


def _shifted(packets: Iterator[Packet], offset_ns: int) -> Iterator[Packet]:
    for p in packets:
        yield p._replace(ts_ns=p.ts_ns - offset_ns)


def _clock_offsets(paths: list[str | os.PathLike]) -> list[int]:
    """A first look at the start of each capture for the offsets between their clocks (stdin: none)."""
    if len(paths) < 2 or any(os.fspath(p) == "-" for p in paths):
        return [0] * len(paths)
    scans = []
    for path in paths:
        capture = open_capture(path, AnomalyLog())
        try:
            scans.append(clocks.sightings(capture.packets()))
        finally:
            capture.close()
    return clocks.corrections(scans)


def _without_cross_copies(packets: Iterable[Packet], summary: Summary) -> Iterator[Packet]:
    """Drop a segment a second capture also holds (both ENIs of a path mirrored into two files).

    Each capture already drops its own mirror copies (capture.py, with the IP id in the key);
    across files only the TCP fields can be compared, within the same 2 ms window.
    """
    seen: dict[tuple, int] = {}
    prune_at = 0
    for p in packets:
        key = (p.src, p.dst, p.sport, p.dport, p.seq, p.ack, p.flags, p.win, len(p.payload) + p.missing)
        ts = seen.get(key)
        if ts is not None and p.ts_ns - ts <= CROSS_COPY_WINDOW_NS:
            summary.cross_capture_duplicates += 1
            continue
        seen[key] = p.ts_ns
        if p.ts_ns >= prune_at:  # memory: only the last window's keys matter
            seen = {k: t for k, t in seen.items() if p.ts_ns - t <= CROSS_COPY_WINDOW_NS}
            prune_at = p.ts_ns + 100 * CROSS_COPY_WINDOW_NS
        yield p


def analyze(paths: list[str | os.PathLike], sinks: list[Sink] = (),
            progress: Callable[[int], None] | None = None, jobs: int = 1) -> Summary:
    """Run every stage over the captures; raises CaptureError for unusable input.

    ``jobs`` > 1 reads and reassembles in that many processes, sharded by connection
    (``shards.py``), when the captures are worth it; the records reach the sinks in the same
    order either way.
    """
    if jobs > 1:
        from . import shards  # multiprocessing only when asked for

        if shards.worth_sharding(paths):
            return shards.analyze(paths, sinks, progress, jobs)
    summary = Summary()
    summary.clock_offsets_ns = _clock_offsets(paths)
    captures = [open_capture(p, summary.anomalies) for p in paths]
    # Every connection leaves reference cycles behind (parser <-> readers); with the default
    # thresholds the collector re-walks the long-lived state so often it costs ~20% on
    # short-connection captures.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        summary.captures = [c.stats for c in captures]
        batched = Batched(list(sinks))
        stage = _HttpStage([batched], summary)
        tracker = TcpTracker(stage, summary.anomalies)
        count = 0
        pkt, reading = None, True
        try:
            for pkt in _merged([c.packets() for c in captures], summary):
                tracker.feed(pkt)
                count += 1
                if not count & 0xFFFF:
                    summary.peak_open_connections = max(summary.peak_open_connections,
                                                        tracker.open_connections)
                    if progress:
                        progress(count)
            pkt, reading = None, False
            summary.peak_open_connections = max(summary.peak_open_connections, tracker.open_connections)
            tracker.finish()
            batched.flush()
            summary.expired_attempts = tracker.attempts_expired
            summary.expired_connections = tracker.connections_expired
        except Exception as exc:  # a bug: say where, for the one-line report and a reproducer
            if len(captures) == 1:  # the frame being read, in the capture stage or after it
                frame = None if reading is False else captures[0].stats.frames
                raise AnalysisError(exc, frame, captures[0].stats.path) from exc
            raise AnalysisError(exc, None if pkt is None else pkt.frame, None) from exc
    finally:
        gc.set_threshold(*thresholds)
        for c in captures:
            c.close()
    return summary
