"""``analyze --jobs N``: the capture and TCP/HTTP stages in N processes, sharded by connection.

Theory of operation
-------------------
Every worker walks the whole capture itself (``open_capture(...).packets()``, the same merge of
several files on the clock offsets the parent measured once, the same cross-capture dedup), so
everything the capture stage decides (mirror duplicates, IP fragments reassembled, skipped
frames, stats, frame-level anomalies) comes out the same in every worker. A worker then keeps
the packets whose connection hashes to it (``shard_of``: a stable hash of the two endpoints,
symmetric so both directions land together) and runs TCP + HTTP on them alone. The parent
merges what the workers send and runs the sinks (diagnosis, exports) on one stream.

Order. Every record a worker sends carries a key that places it in the order one job produces:

    (p, phase, sub, seq)

``p`` is the merged index of the packet being handled; ``phase`` says what one job was doing
with it: 0 reading it (capture anomalies; only worker 0 sends those, every worker sees them),
1 feeding it to TCP (only the owner of its connection), 2 the TCP sweep that runs after it
(every worker sweeps its own connections at the same packets one job sweeps at; ``tick``),
3 the open-connections sample, 4 the end of the capture (connections still open, finished in
order of opening). ``sub`` orders the sweep across workers as one job's dicts order it: held
segments first, in order of holding, then closed connections in order of closing (the key each
was put in with); at the end, the key the connection was opened with. ``seq`` counts within a
worker. A worker's keys only increase, so the parent heap-merges the streams. Connection ids are
given by the parent, in the order of the "opened" records: one job's numbering.

Anomalies: each worker sends the first ``keep_per_name`` of each name it meets (one job keeps
the first of the merged stream, which are among them) and its counts at the end; the parent
keeps the first of each name in key order and sums the counts.

Timers: a connection's holds and RST waits touch only that connection (``TcpTracker.tick``), so
a shard sees them as one job does. Known differences from one job: the linger walk of a worker stops
at its own first connection not yet due, which differs only when a FIN delivered late (behind a
hole) closes a connection with an older time than one closed before it; the attempt budget
(``tcp.MAX_HALF_OPEN``) and the connection budget (``tcp.MAX_OPEN``) are per worker.

Back-pressure: records cross in pickled batches of ``BATCH`` over one pipe per worker; a worker
blocks on its pipe when the parent has not taken the previous batch, so none runs more than
about a batch ahead (memory: a worker holds its shard's open connections, the parent a batch per
worker). A worker with few records still flushes every ``FLUSH_PACKETS`` packets (a watermark),
so the merge never waits on it while the others stall.

Errors: a worker sends the exception of a bug (with the frame, as one job reports it) as its
last record; the parent raises it when the merge reaches it, so the first bug in one job's order
is the one reported. A worker that dies without a word is an error too. Workers ignore SIGINT:
Ctrl-C is the parent's, which stops them on the way out.
"""

from __future__ import annotations

import gc
import heapq
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

from ..model import Anomaly, AnomalyLog, CaptureError, Connection, Exchange, Packet, from_fields
from . import pipeline
from .capture import open_capture
from .tcp import TcpTracker

SHARD_MIN_BYTES = 8 << 20  # smaller captures take under a second in one process: workers cost more
BATCH = 1000  # records per pickled message
FLUSH_PACKETS = 8192  # a worker with few records of its own still reports its progress this often
PEAK_EVERY = 0xFFFF  # pipeline.analyze samples the open connections every 65,536 packets

# Phases of the order key (see the module docstring).
READ, FEED, SWEEP, PEAK, END, LAST = range(6)


def worth_sharding(paths: list) -> bool:
    """Regular files of some size only: stdin cannot be read N times, and small captures gain nothing."""
    names = [os.fspath(p) for p in paths]
    if any(n == "-" or not os.path.isfile(n) for n in names):
        return False  # stdin, a FIFO, a missing file (reported by the one-job path, as always)
    return sum(os.path.getsize(n) for n in names) >= SHARD_MIN_BYTES


def shard_of(pkt: Packet, jobs: int) -> int:
    """The worker of ``pkt``'s connection: the same for both directions, in every process.

    TcpTracker keys connections by the two endpoints alone (not the VNI: the two mirror copies
    of one connection can come through different sessions), so the shard must too. XOR of a
    hash per endpoint is symmetric; crc32 is stable across processes, unlike ``hash()``.
    """
    return ((zlib.crc32(pkt.src, pkt.sport) ^ zlib.crc32(pkt.dst, pkt.dport)) >> 3) % jobs


# -- the worker side --------------------------------------------------------------------------


class _Outbox:
    """Records with their order key, sent to the parent in pickled batches."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.batch: list[tuple] = []
        self.p = 0  # merged index of the packet being handled
        self.phase = READ
        self.sub: tuple = ()
        self.seq = 0

    def key(self) -> tuple:
        self.seq += 1
        return (self.p, self.phase, self.sub, self.seq)

    def put(self, kind: str, a: object = None, b: object = None) -> tuple:
        self.seq += 1
        key = (self.p, self.phase, self.sub, self.seq)
        self.batch.append((key, kind, a, b))
        if len(self.batch) >= BATCH:
            self.flush()
        return key

    def watermark(self) -> None:
        """Nothing before the current position is still to come from this worker."""
        self.batch.append(((self.p, READ - 1, (), 0), "mark", None, None))
        self.flush()

    def flush(self) -> None:
        if self.batch:
            self.conn.send_bytes(pickle.dumps(self.batch, protocol=5))
            self.batch = []


class _TaggedLog(AnomalyLog):
    """Counts every anomaly; sends the first ``keep_per_name`` of each name with its order key."""

    def __init__(self, out: _Outbox) -> None:
        super().__init__()
        self.out = out

    def add(self, name: str, frame: int | None, ts_ns: int | None,
            flow: str | None = None, detail: str = "") -> None:
        n = self.counts[name] + 1
        self.counts[name] = n
        if n <= self.keep_per_name:
            self.out.put("anomaly", Anomaly(name, frame, ts_ns, flow, detail))


class _Forward:
    """The worker's sink: finished records go to the parent."""

    def __init__(self, out: _Outbox) -> None:
        self.put = out.put

    def connection(self, conn: Connection) -> None:
        self.put("conn", conn)

    def exchange(self, exchange: Exchange, flow: str) -> None:
        self.put("exchange", tuple(exchange), flow)  # a plain tuple pickles ~3x faster (see _merge)


class _ShardStage(pipeline._HttpStage):
    """The HTTP stage, also telling the parent when a connection opens (for its id)."""

    def __init__(self, out: _Outbox, summary: pipeline.Summary) -> None:
        super().__init__([_Forward(out)], summary)
        self.out = out
        self.opened: dict[int, tuple] = {}  # local id -> the key of its "open" record

    def on_open(self, conn_id: int, flow: str, ts_ns: int) -> None:
        super().on_open(conn_id, flow, ts_ns)
        self.opened[conn_id] = self.out.put("open", conn_id)


class _ShardTracker(TcpTracker):
    """TcpTracker on one shard, sweeping when one job's tracker sweeps, its records keyed.

    One job sweeps (closed connections summarised, attempts expired) at the first packet past
    ``_next_sweep``, whoever's it is, and runs a connection's own timers (holds, RST waits) at the
    first packet past them: ``tick`` does both for the packets of other shards.
    The overrides note the key each connection entered ``_holding`` / ``_lingering`` with, the
    order one job's sweep walks them in.
    """

    def __init__(self, stage: _ShardStage, anomalies: AnomalyLog, out: _Outbox) -> None:
        super().__init__(stage, anomalies)
        self.out = out
        self.stage = stage
        self._hold_keys: dict[int, tuple] = {}
        self._linger_keys: dict[int, tuple] = {}

    def tick(self, ts_ns: int) -> None:
        out = self.out
        phase, out.phase = out.phase, SWEEP
        try:
            super().tick(ts_ns)
        finally:
            out.phase = phase

    def _set_held(self, conn, direction, held) -> None:
        if held and conn.id not in self._holding:
            self._hold_keys[conn.id] = self.out.key()
        elif not held:
            self._hold_keys.pop(conn.id, None)
        super()._set_held(conn, direction, held)

    def _linger(self, conn, ts_ns: int) -> None:
        self._linger_keys[conn.id] = self.out.key()
        super()._linger(conn, ts_ns)

    def _release(self, conn, expired: bool) -> None:
        out = self.out
        if out.phase != SWEEP or out.sub:
            return super()._release(conn, expired)
        out.sub = (0, self._hold_keys.get(conn.id, ()))
        try:
            super()._release(conn, expired)
        finally:
            out.sub = ()

    def _finalize(self, conn, how: str, ts_ns: int, frame: int) -> None:
        out = self.out
        linger_key = self._linger_keys.pop(conn.id, ())
        open_key = self.stage.opened.pop(conn.id, ())
        if out.sub or out.phase not in (SWEEP, END):
            return super()._finalize(conn, how, ts_ns, frame)
        out.sub = (1, linger_key) if out.phase == SWEEP else (2, open_key)
        try:
            super()._finalize(conn, how, ts_ns, frame)
        finally:
            out.sub = ()


def _work(paths: list[str], offsets: list[int], jobs: int, k: int, out: _Outbox) -> None:
    log = _TaggedLog(out)
    summary = pipeline.Summary(anomalies=log)
    summary.clock_offsets_ns = offsets
    # Every worker meets every frame-level anomaly; worker 0 alone reports them.
    capture_log = log if k == 0 else AnomalyLog()
    captures = []
    try:
        for path in paths:
            captures.append(open_capture(path, capture_log))
        stage = _ShardStage(out, summary)
        tracker = _ShardTracker(stage, log, out)
        count = 0
        pkt, reading = None, True
        try:
            packets = iter(pipeline._merged([c.packets() for c in captures], summary))
            while True:
                out.p, out.phase = count, READ
                if not count % FLUSH_PACKETS:
                    out.watermark()
                pkt = next(packets, None)
                if pkt is None:
                    break
                out.phase = FEED
                if shard_of(pkt, jobs) == k:
                    tracker.feed(pkt)
                else:
                    tracker.tick(pkt.ts_ns)
                count += 1
                if not count & PEAK_EVERY:
                    out.phase = PEAK
                    out.put("peak", tracker.open_connections)
            pkt, reading = None, False
            out.phase = PEAK
            out.put("peak", tracker.open_connections, True)
            out.phase = END
            tracker.finish()
        except Exception as exc:
            if len(captures) == 1:
                frame = None if reading is False else captures[0].stats.frames
                capture = captures[0].stats.path
            else:
                frame, capture = None if pkt is None else pkt.frame, None
            out.put("error", _portable(exc), (frame, capture))
            return
        out.p, out.phase, out.sub = count, LAST, ()
        out.put("end", (dict(log.counts), [c.stats for c in captures] if k == 0 else None,
                        summary.cross_capture_duplicates, tracker.attempts_expired,
                        tracker.connections_expired))
    finally:
        for c in captures:
            c.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles (its traceback as a note), else one of its name."""
    note = "in a --jobs worker:\n" + "".join(traceback.format_exception(exc))
    try:
        clone = pickle.loads(pickle.dumps(exc))
    except Exception:
        clone = type(type(exc).__name__, (Exception,), {})(str(exc))
    if hasattr(clone, "add_note"):
        clone.add_note(note)
    return clone


def _worker(paths: list[str], offsets: list[int], jobs: int, k: int, conn) -> None:
    """A process's entry point (importable, arguments plain: spawn-safe)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    gc.set_threshold(100_000, 50, 100)  # as pipeline.analyze, for the same reason
    out = _Outbox(conn)
    try:
        try:
            _work(paths, offsets, jobs, k, out)
        except CaptureError as exc:  # the file changed since the parent opened it
            out.put("capture_error", str(exc))
        except BaseException as exc:
            out.put("error", _portable(exc), (None, None))
        out.flush()
    except (BrokenPipeError, OSError):
        pass  # the parent left: nothing to tell
    finally:
        conn.close()


# -- the parent side --------------------------------------------------------------------------


def _stream(conn, w: int) -> Iterator[tuple]:
    """One worker's records, as (key, worker, kind, a, b), until its last."""
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            raise RuntimeError(f"--jobs worker {w} ended without finishing its work") from None
        for key, kind, a, b in pickle.loads(data):
            yield key, w, kind, a, b
            if kind in ("end", "error", "capture_error"):
                return


PIPE_BYTES = 1 << 20  # Linux's default cap for unprivileged pipes (/proc/sys/fs/pipe-max-size)


def _widen(conn) -> None:
    """Let a worker run a few batches ahead instead of one (64 KiB default pipe): the parent and
    the workers then stop waiting for each other at every batch. Best effort, Linux only."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


def _context():
    """fork when nothing else runs (cheap); spawn when a thread does (a progress bar's)."""
    method = os.environ.get("ALB_PCAP_START_METHOD")
    if not method:
        method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() \
            else "spawn"
    return multiprocessing.get_context(method)


def analyze(paths: list, sinks: list, progress: Callable[[int], None] | None, jobs: int) -> pipeline.Summary:
    """``pipeline.analyze`` in ``jobs`` processes: the same Summary, the same records in the same order."""
    summary = pipeline.Summary()
    summary.clock_offsets_ns = offsets = pipeline._clock_offsets(paths)
    names = [os.fspath(p) for p in paths]
    for name in names:  # unusable input fails here, as one job fails, before any worker starts
        open_capture(name, AnomalyLog()).close()
    ctx = _context()
    procs, conns, done = [], [], False
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        for k in range(jobs):
            reader, writer = ctx.Pipe(duplex=False)
            _widen(reader)
            proc = ctx.Process(target=_worker, args=(names, offsets, jobs, k, writer), daemon=True,
                               name=f"alb-pcap-shard-{k}")
            proc.start()
            writer.close()  # the worker's end: an EOF when the worker dies
            procs.append(proc)
            conns.append(reader)
        _merge([_stream(c, w) for w, c in enumerate(conns)], sinks, summary, progress, jobs)
        done = True
    finally:
        gc.set_threshold(*thresholds)
        for c in conns:
            c.close()
        for proc in procs:  # done: they have sent their last record and are exiting
            if not done:  # an error, Ctrl-C: their work is of no use any more
                proc.terminate()
        for proc in procs:
            proc.join()
    return summary


def _merge(streams: list[Iterator[tuple]], sinks: list, summary: pipeline.Summary,
           progress: Callable[[int], None] | None, jobs: int) -> None:
    ids: dict[tuple[int, int], int] = {}  # (worker, its connection id) -> one job's id
    next_id = 1
    log = summary.anomalies
    kept = Counter()  # anomalies kept per name, in merged order
    totals: Counter[str] = Counter()
    peaks: dict[int, list[int]] = {}  # sample position -> open connections reported so far
    batched = pipeline.Batched(sinks)
    count_exchange, count_connection = pipeline.count_exchange, pipeline.count_connection
    for key, w, kind, a, b in heapq.merge(*streams, key=lambda r: r[0]):
        if kind == "exchange":
            # From the worker's plain tuple, with one job's id: conn_id is Exchange's first field
            # (cheaper than unpickling the NamedTuple, then _replace).
            exchange = from_fields(Exchange, (ids[w, a[0]], *a[1:]))
            count_exchange(summary, exchange)
            batched.exchange(exchange, b)
        elif kind == "open":
            ids[w, a] = next_id
            next_id += 1
        elif kind == "conn":
            conn = a  # the parent's own unpickled copy, seen by no one yet: set one job's id in place
            object.__setattr__(conn, "id", ids.pop((w, a.id)))  # (dataclasses.replace costs ~5 µs)
            count_connection(summary, conn)
            batched.connection(conn)
        elif kind == "anomaly":
            if kept[a.name] < log.keep_per_name:
                kept[a.name] += 1
                log.counts[a.name] += 0  # the name's place: one job's Counter order
                log.kept.append(a)
        elif kind == "peak":
            seen = peaks.setdefault(key[0], [0, 0])
            seen[0] += a
            seen[1] += 1
            if seen[1] == jobs:
                del peaks[key[0]]
                summary.peak_open_connections = max(summary.peak_open_connections, seen[0])
                if progress and not b:
                    progress(key[0] + 1)
        elif kind == "end":
            counts, stats, cross, expired, expired_connections = a
            totals.update(counts)
            summary.expired_attempts += expired
            summary.expired_connections += expired_connections
            if stats is not None:
                summary.captures = stats
                summary.cross_capture_duplicates = cross
        elif kind == "error":
            frame, capture = b
            raise pipeline.AnalysisError(a, frame, capture) from a
        elif kind == "capture_error":
            raise CaptureError(a)
    batched.flush()
    for name in log.counts:
        log.counts[name] = totals[name]
