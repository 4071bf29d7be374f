"""TCP stage: packets -> connections with in-order byte streams.

Theory of operation
-------------------
A connection is keyed by its 4-tuple *and* its life: a SYN with a new ISN, or
any SYN after the old connection closed, starts a new connection on the same
tuple (ephemeral ports are reused within seconds under load).

Each direction is reassembled on its own. Bytes are handed to a listener in
order; segments that arrive early wait in a bounded out-of-order buffer.
A hole becomes a *gap* (bytes the capture never saw; common in mirror
captures) when the peer acknowledges data beyond it, when later data or a FIN
is waiting behind it and the peer has acknowledged past it, when the buffer
outgrows its bound, or when the connection ends. Acknowledgements can be
captured a little before the data they acknowledge when several ENIs are
mirrored, so an acknowledged hole is only declared once it is
``REORDER_WINDOW_NS`` old. After a gap the stream resumes.

Two mirror sources feeding one capture (ingress and egress, say) can also put a
segment *ahead of the other direction's bytes it answers*: a response captured
a few microseconds before its request. TCP says so itself: the segment's ACK
acknowledges bytes of the other direction that have not been delivered yet. Such
a segment (data, FIN or RST; pure ACKs need no help) is held back, with the rest
of its direction behind it, until the other direction's stream catches up with
its ACK, and then delivered after those bytes (anomaly
``reordered_across_directions``). The hold is bounded: ``HOLD_SEGMENTS`` per
connection, ``HOLD_NS`` of capture time. When the acknowledged bytes never come
(a capture loss), they become a gap of the other direction and the held segments
follow it. Nothing is held when the other direction has never been seen (one-sided
captures), nor when its ACK is implausibly far ahead, nor on a connection whose
holds keep expiring.

A connection *attempt* (opened by a SYN; no handshake, no data, not closed) is
summarised as the capture's end would summarise it once it has been quiet
``HALF_OPEN_NS`` (longer than Linux's SYN retries), or when more than
``MAX_HALF_OPEN`` attempts are tracked (the least recently active first): a SYN
flood or a scan costs bounded memory. A later segment of an expired attempt starts
a new connection. Established connections are bounded the same way: one quiet for
``IDLE_EXPIRE_NS`` is summarised, and beyond ``MAX_OPEN`` tracked connections (a
slowloris, a connection flood) the least recently active eighth is, each with the
anomaly ``connection_expired``; a later segment picks it up as a new connection.

The summary uses Zeek's vocabulary (``history`` letters and ``conn_state``,
derived from the two endpoint states the way ``conn/main.zeek`` does) so users
can compare with Zeek's conn.log.
"""

from __future__ import annotations

from typing import Protocol

from ..model import (
    ORIG,
    RESP,
    TH_ACK,
    TH_FIN,
    TH_RST,
    TH_SYN,
    AnomalyLog,
    Close,
    Connection,
    Packet,
    Probe,
    format_flow,
)

REORDER_WINDOW_NS = 5_000_000  # 5 ms
LINGER_NS = 1_000_000_000  # a closed connection keeps absorbing stray segments this long
MAX_BUFFERED = 1 << 20  # out-of-order bytes kept per direction before declaring a gap
MAX_PROBES_KEPT = 64
HOLD_NS = 10_000_000  # 10 ms: how long a segment acknowledging unseen bytes of the other direction waits
HOLD_SEGMENTS = 8  # segments held per connection at most
HOLD_MAX_AHEAD = 1 << 20  # an ACK further ahead of the other direction is not waited for
HOLD_GIVE_UP = 3  # holds that expired (the bytes never came) before a connection stops holding
HALF_OPEN_NS = 130_000_000_000  # an attempt with no handshake this long quiet is over (Linux retries SYNs 127 s)
MAX_HALF_OPEN = 10_000  # attempts with no handshake tracked at most; beyond, the oldest is over
MAX_OPEN = 50_000  # connections tracked at most; beyond, the least recently active eighth is summarised
IDLE_EXPIRE_NS = 7_200_000_000_000  # 2 h quiet: longer than any proxy's idle timeout (the ALB's maximum is 4,000 s)
IDLE_CHECK_NS = 60_000_000_000  # how often (capture time) quiet connections are looked for
RST_WINDOW = 1 << 23  # an RST further from its stream (either way) than any receive window is ignored
RST_WAIT_NS = 200_000_000  # how long an RST waits for its sender's direction to go on (or not);
# short beside diagnosis's 1 s look-ahead, as the exchanges the RST cuts wait with it
RST_WAIT_SEGMENTS = 32  # segments that may follow it meanwhile

# Zeek endpoint states (TCP_Endpoint.h).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

# Ports a server listens on, to guess roles when the SYN is missing (Zeek does the same).
LIKELY_SERVER_PORTS = frozenset({80, 81, 443, 3128, 5000, 8000, 8008, 8080, 8081, 8443, 8888, 9000})

_CONTROL = TH_SYN | TH_FIN | TH_RST
_SETTLED = frozenset({ESTABLISHED, PARTIAL, CLOSED, RESET})  # no ACK-only segment changes these

_HALF = 1 << 31
_MOD = 1 << 32


def _seq_diff(a: int, b: int) -> int:
    """a - b in sequence space (RFC 1982 arithmetic)."""
    return (a - b + _HALF) % _MOD - _HALF


class StreamListener(Protocol):
    """What the TCP stage tells the next stage. Directions are ORIG/RESP."""

    def on_open(self, conn_id: int, flow: str, ts_ns: int) -> None: ...
    def on_data(self, conn_id: int, direction: int, data: bytes, ts_ns: int, frame: int) -> None: ...
    def on_gap(self, conn_id: int, direction: int, size: int, ts_ns: int, frame: int) -> None: ...
    def on_end(self, conn_id: int, direction: int, how: str, ts_ns: int, frame: int) -> None: ...
    def on_close(self, conn: Connection) -> None: ...


class _Half:
    """One direction of a connection: reassembly and counters."""

    __slots__ = (
        "state", "isn", "next_seq", "next_off", "max_off", "buffer", "buffered",
        "fin_off", "ended", "hole_ack_off", "hole_since", "pkts", "missed",
        "probes", "probe_count", "zero_windows", "retransmits", "gaps", "letters", "fin_acked",
    )

    def __init__(self) -> None:
        self.state = INACTIVE
        self.isn: int | None = None
        self.next_seq: int | None = None  # next in-order sequence number (mod 2**32)
        self.next_off = 0  # the same as an offset from the stream's first byte
        self.max_off = 0  # highest offset seen (data or FIN), for Zeek's byte counts
        self.buffer: dict[int, tuple[bytes, int, int, int]] = {}  # offset -> (bytes, missing, ts, frame)
        self.buffered = 0
        self.fin_off: int | None = None
        self.ended = False
        self.hole_ack_off: int | None = None  # the peer acknowledged up to here, past a hole
        self.hole_since = 0
        self.pkts = 0
        self.missed = 0
        self.probes: list[Probe] = []
        self.probe_count = 0
        self.zero_windows = 0
        self.retransmits = 0
        self.gaps = 0
        self.letters: dict[str, int] = {}  # history letter -> times seen
        self.fin_acked = False


class _Conn:
    __slots__ = (
        "id", "orig", "orig_port", "resp", "resp_port", "flipped", "start_ns", "last_ns",
        "half", "history", "syn_seen", "syn_frame", "first_close", "fins", "rst", "vni", "closed_at",
        "held", "held_dir", "held_until", "hold_expired", "rst_wait", "rst_until", "attempt",
    )

    def __init__(self, cid: int, pkt: Packet, flipped: bool) -> None:
        self.id = cid
        if flipped:
            self.orig, self.orig_port, self.resp, self.resp_port = pkt.dst, pkt.dport, pkt.src, pkt.sport
        else:
            self.orig, self.orig_port, self.resp, self.resp_port = pkt.src, pkt.sport, pkt.dst, pkt.dport
        self.flipped = flipped
        self.start_ns = self.last_ns = pkt.ts_ns
        self.half = (_Half(), _Half())
        self.history: list[str] = ["^"] if flipped else []
        self.syn_seen = False
        self.syn_frame: int | None = None
        self.first_close: Close | None = None
        self.fins: list[Close] = []
        self.rst: Close | None = None
        self.vni = pkt.vni
        self.closed_at: int | None = None
        self.held: list[Packet] | None = None  # segments waiting for the other direction's bytes
        self.held_dir = ORIG  # the direction they were sent in
        self.held_until = 0  # capture time at which they stop waiting
        self.hold_expired = 0  # holds whose bytes never came
        self.attempt = False  # opened by a SYN, no handshake, no data, not closed yet (TcpTracker._attempts)
        # An RST in the window and what followed it, (direction, segment), until it is known
        # whether its receiver heeded it (see TcpTracker._rst_waits).
        self.rst_wait: list[tuple[int, Packet]] | None = None
        self.rst_until = 0

    @property
    def flow(self) -> str:
        return format_flow(self.orig, self.orig_port, self.resp, self.resp_port)


def _record(conn: _Conn, direction: int, letter: str, repeatable: bool = False) -> None:
    """Add a history letter: once per direction, or at 1, 10, 100... for repeatable ones."""
    letters = conn.half[direction].letters
    n = letters.get(letter, 0) + 1
    letters[letter] = n
    if n == 1 or (repeatable and _is_power_of_ten(n)):
        conn.history.append(letter.upper() if direction == ORIG else letter)


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def conn_state(orig: int, resp: int, history: str, orig_bytes: int, resp_bytes: int) -> str:
    """Zeek's ``conn_state`` from the two endpoint states (base/protocols/conn/main.zeek)."""
    o_inactive = orig in (INACTIVE, PARTIAL)
    r_inactive = resp in (INACTIVE, PARTIAL)
    if resp == RESET:
        if orig in (SYN_SENT, SYN_ACK_SENT) or (orig == RESET and orig_bytes == 0 and resp_bytes == 0):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if orig == RESET:
        if r_inactive:
            return "RSTOS0" if _syn_then_reset(history) else "OTH"
        return "RSTO"
    if orig == CLOSED and resp == CLOSED:
        return "SF"
    if orig == CLOSED:
        return "SH" if r_inactive else "S2"
    if resp == CLOSED:
        return "SHR" if o_inactive else "S3"
    if orig == SYN_SENT and resp == INACTIVE:
        return "S0"
    if orig == ESTABLISHED and resp == ESTABLISHED:
        return "S1"
    return "OTH"


def _syn_then_reset(history: str) -> bool:
    """Zeek's /^?S[^HAFGIQ]*R.*/: a SYN, then a RST with no handshake in between."""
    h = history.lstrip("^")
    if not h.startswith("S"):
        return False
    for ch in h[1:]:
        if ch == "R":
            return True
        if ch in "HAFGIQ":
            return False
    return False


class TcpTracker:
    """Feeds packets in capture order; tells a StreamListener what the streams carry."""

    def __init__(self, listener: StreamListener, anomalies: AnomalyLog) -> None:
        self.listener = listener
        self.anomalies = anomalies
        self._by_tuple: dict[tuple, tuple[_Conn, int]] = {}
        self._lingering: dict[int, _Conn] = {}  # id -> closed connection, oldest first
        self._next_id = 1
        self._next_sweep = 0  # the cadence: closed connections summarised, attempts expired, once a second
        self._next_timer = 1 << 62  # the earliest hold or RST wait due: only its own connection is touched
        self._holding: dict[int, _Conn] = {}  # id -> connection with held segments
        self._rst_waiting: dict[int, _Conn] = {}  # id -> connection whose RST waits for a verdict
        self._releasing = False
        self._attempts: dict[int, _Conn] = {}  # id -> connection attempt (see _Conn.attempt), oldest first
        self.connections_seen = 0
        self.attempts_expired = 0  # attempts summarised early: quiet HALF_OPEN_NS, or beyond MAX_HALF_OPEN
        self.connections_expired = 0  # established ones summarised early: quiet IDLE_EXPIRE_NS, or beyond MAX_OPEN
        self._next_idle_check = 0

    @property
    def open_connections(self) -> int:
        return len(self._by_tuple) // 2

    # -- packets -------------------------------------------------------------------

    def feed(self, pkt: Packet) -> None:
        found = self._by_tuple.get((pkt.src, pkt.sport, pkt.dst, pkt.dport))
        if found is not None and pkt.flags & TH_SYN and not pkt.flags & TH_ACK:
            conn, direction = found
            if self._starts_new_connection(conn, direction, pkt):
                self._finalize(conn, "eof", pkt.ts_ns, pkt.frame)
                found = None
        if found is None:
            conn, direction = self._open(pkt)
        else:
            conn, direction = found
        ts = pkt.ts_ns
        if ts > conn.last_ns:  # the latest time, not the last record's: a clock stepped back
            conn.last_ns = ts  # must not make a duration negative
        if (conn.rst_wait is not None or pkt.flags & TH_RST) and self._rst_waits(conn, direction, pkt):
            return
        self._segment(conn, direction, pkt)
        if conn.attempt:
            self._attempt_moved(conn)
        if conn.closed_at is not None and conn.half[ORIG].fin_acked and conn.half[RESP].fin_acked:
            # both FINs acknowledged: nothing more is due, so release it now rather than after
            # LINGER_NS (at thousands of connections a second that window is most of the memory)
            self._finalize(conn, "eof", ts, pkt.frame)
        self.tick(ts)

    def tick(self, ts_ns: int) -> None:
        """Time moved on to ``ts_ns``: run what is due. A connection's own timers (holds, RST waits) never
        move the cadence, so what happens to one connection does not depend on the others
        (``--jobs`` trackers see only their shard, and tick on the packets of the rest)."""
        if ts_ns >= self._next_timer:
            self._timers(ts_ns)
        if ts_ns >= self._next_sweep:
            self._sweep(ts_ns)

    def finish(self) -> None:
        """Capture end: every connection still tracked is summarised as it stands."""
        seen: set[int] = set()
        for conn, _ in list(self._by_tuple.values()):
            if conn.id not in seen:
                seen.add(conn.id)
                self._finalize(conn, "eof", conn.last_ns, 0)

    @staticmethod
    def _starts_new_connection(conn: _Conn, direction: int, pkt: Packet) -> bool:
        if conn.closed_at is not None:
            return True
        half = conn.half[direction]
        if half.isn is None:
            return half.pkts > 0  # this side spoke before: the old connection was picked up mid-stream
        return half.isn != pkt.seq

    def _open(self, pkt: Packet) -> tuple[_Conn, int]:
        conn = _Conn(self._next_id, pkt, self._guess_flipped(pkt))
        self._next_id += 1
        self.connections_seen += 1
        fwd = (conn.orig, conn.orig_port, conn.resp, conn.resp_port)
        rev = (conn.resp, conn.resp_port, conn.orig, conn.orig_port)
        self._by_tuple[fwd] = (conn, ORIG)
        self._by_tuple[rev] = (conn, RESP)
        self.listener.on_open(conn.id, conn.flow, pkt.ts_ns)
        if pkt.flags & TH_SYN and not pkt.flags & (TH_FIN | TH_RST) and not pkt.payload and not pkt.missing:
            conn.attempt = True
            self._attempts[conn.id] = conn
            if len(self._attempts) > MAX_HALF_OPEN:  # a SYN flood or a scan: the oldest attempt is over
                self._expire_attempt(next(iter(self._attempts.values())))
        if len(self._by_tuple) > 2 * MAX_OPEN:
            self._expire_quiet(pkt.ts_ns, pkt.frame, MAX_OPEN // 8, 0)
        return conn, RESP if conn.flipped else ORIG

    # -- connection attempts: bounded however many SYNs come --------------------------------------

    def _attempt_moved(self, conn: _Conn) -> None:
        """Still a mere attempt after this segment? Else it leaves the attempts (handshake, data, close)."""
        o, r = conn.half
        if (conn.closed_at is None and o.max_off == 0 and r.max_off == 0 and o.state != ESTABLISHED
                and r.state != ESTABLISHED and not o.buffer and not r.buffer):
            del self._attempts[conn.id]  # to the end: the attempts stay in the order of their last segment
            self._attempts[conn.id] = conn
            return
        conn.attempt = False
        self._attempts.pop(conn.id, None)

    def _expire_attempt(self, conn: _Conn) -> None:
        """Summarise an attempt now, as the capture's end would: a later segment of it opens a new one."""
        conn.attempt = False
        self._attempts.pop(conn.id, None)
        self.attempts_expired += 1
        self._finalize(conn, "eof", conn.last_ns, 0)

    def _expire_attempts(self, now_ns: int) -> None:
        attempts = self._attempts  # in the order of their last segment
        while attempts:
            conn = next(iter(attempts.values()))
            if now_ns - conn.last_ns < HALF_OPEN_NS:
                return
            self._expire_attempt(conn)

    def _expire_quiet(self, now_ns: int, frame: int | None, count: int, quiet_ns: int) -> None:
        """Summarise the ``count`` least recently active connections that have been quiet ``quiet_ns``, as
        the capture's end would. A sort over every connection, but only once per ``MAX_OPEN // 8``
        connections opened (or once per ``IDLE_CHECK_NS``), so nothing is paid per packet."""
        conns = [c for c, d in self._by_tuple.values() if d == ORIG and now_ns - c.last_ns >= quiet_ns]
        why = (f"quiet {quiet_ns / 1e9:.0f} s" if quiet_ns else
               f"over {MAX_OPEN:,} connections tracked: the least recently active summarised")
        for conn in sorted(conns, key=lambda c: (c.last_ns, c.id))[:count]:
            self.connections_expired += 1
            self.anomalies.add("connection_expired", frame, conn.last_ns, conn.flow, why)
            self._finalize(conn, "eof", conn.last_ns, 0)

    @staticmethod
    def _guess_flipped(pkt: Packet) -> bool:
        """Is the sender of this first packet the acceptor? (Zeek's role guess.)"""
        flags = pkt.flags
        if flags & TH_SYN:
            return bool(flags & TH_ACK)
        src_server = pkt.sport in LIKELY_SERVER_PORTS or pkt.sport < 1024
        dst_server = pkt.dport in LIKELY_SERVER_PORTS or pkt.dport < 1024
        return src_server and not dst_server

    # -- one segment -----------------------------------------------------------------

    def _segment(self, conn: _Conn, direction: int, pkt: Packet) -> None:
        # The hot path: most segments are in-order data or pure ACKs on an established
        # connection, so every rarer case is behind one cheap test.
        half = conn.half[direction]
        peer = conn.half[1 - direction]
        flags = pkt.flags
        acked = 0
        if flags & TH_ACK and peer.next_seq is not None:
            acked = (pkt.ack - peer.next_seq + _HALF) % _MOD - _HALF
            if acked > 0:  # acknowledges bytes of the other direction not seen yet (rare)
                if self._unheeded_ack(peer, pkt, acked):
                    acked = 0
                elif self._held_back(conn, direction, peer, pkt, acked):
                    return  # wait for them
                else:
                    acked = (pkt.ack - peer.next_seq + _HALF) % _MOD - _HALF  # a release may move it
        half.pkts += 1
        if flags & TH_RST and half.next_seq is not None and self._outside_window(conn, half, pkt):
            return
        size = len(pkt.payload) + pkt.missing
        control = flags & _CONTROL
        if control or pkt.win == 0 or ("d" if size else "a") not in half.letters:
            self._history(conn, direction, flags, size, pkt)
        if control or half.state not in _SETTLED:
            self._endpoint_state(conn, direction, flags)
        if flags & TH_SYN:
            fresh = half.isn is None
            self._syn(conn, half, pkt)
            if size and fresh and half.isn == pkt.seq:
                # TCP Fast Open (RFC 7413): a SYN carries data, the stream's first bytes
                # (a retransmitted SYN was counted by _syn already).
                self._data(conn, direction, half, pkt, 0, size)
            return
        if half.next_seq is None:
            half.next_seq = pkt.seq  # picked up mid-stream: the stream starts here
        if acked > 0:
            if not peer.ended:
                self._peer_ack(peer, pkt)
            elif peer.fin_off is not None and peer.next_off + acked > peer.fin_off:
                peer.fin_acked = True
        if flags & TH_RST:
            self._reset(conn, direction, pkt)
            return
        off = half.next_off + (pkt.seq - half.next_seq + _HALF) % _MOD - _HALF
        if size <= 1 and off == half.max_off - 1 and not flags & TH_FIN:
            self._probe(half, pkt, direction)
            return
        if pkt.win == 0:
            half.zero_windows += 1
        if half.ended:
            return  # nothing after a stream's end belongs to it
        if size:
            self._data(conn, direction, half, pkt, off, size)
        if flags & TH_FIN:
            self._fin(conn, direction, half, pkt, off + size)
        if half.hole_ack_off is not None or peer.hole_ack_off is not None:
            self._expire_holes(conn, pkt)
        if conn.held is not None:
            self._release_ready(conn, pkt)

    @staticmethod
    def _unheeded_ack(peer: _Half, pkt: Packet, acked: int) -> bool:
        """An ACK that says nothing about lost bytes of ``peer``.

        An RST's ACK field is not checked by its receiver (RFC 5961 §3.2), and injected RSTs carry
        any value there: one far ahead is no evidence of a 2 GB hole. And a direction picked up
        mid-stream whose first segment was a keep-alive probe (no data, at the next byte - 1) gets
        an ACK one past it: the stream starts there, no byte was lost.
        """
        if pkt.flags & TH_RST:
            return acked > HOLD_MAX_AHEAD
        if acked == 1 and peer.isn is None and peer.max_off == 0 and not peer.buffer:
            peer.next_seq = (peer.next_seq + 1) % _MOD
            return True
        return False

    # -- RSTs that may not end the connection (RFC 5961) -----------------------------------------

    def _rst_waits(self, conn: _Conn, direction: int, pkt: Packet) -> bool:
        """Hold back an RST on an established connection, and what follows it, until its sender's
        direction says whether it was the sender's: an endpoint that sent an RST sends nothing
        more, so in-sequence data or a FIN from that direction after it means the RST was
        injected by a third party or refused by its receiver (a TCP-MD5 signature that did not
        verify), and the connection went on. Otherwise it ends the connection, as before, once
        ``RST_WAIT_NS`` have passed or ``RST_WAIT_SEGMENTS`` segments followed it."""
        wait = conn.rst_wait
        if wait is None:
            if conn.rst is not None or conn.held is not None or not self._established(conn):
                return False
            if abs(_seq_diff(pkt.seq, conn.half[direction].next_seq)) > RST_WINDOW:
                return False  # no wait: _segment drops it (_outside_window)
            conn.rst_wait, conn.rst_until = [(direction, pkt)], pkt.ts_ns + RST_WAIT_NS
            self._rst_waiting[conn.id] = conn
            self._next_timer = min(self._next_timer, conn.rst_until)
            return True
        rst = wait[0][1]
        if pkt.ts_ns > conn.rst_until or len(wait) >= RST_WAIT_SEGMENTS:
            self._rst_verdict(conn, heeded=True)
            return False
        if (direction == wait[0][0] and not pkt.flags & TH_RST and (pkt.payload or pkt.flags & TH_FIN)
                and _seq_diff(pkt.seq, rst.seq) >= 0):
            self._rst_verdict(conn, heeded=False)
            return False
        wait.append((direction, pkt))
        return True

    @staticmethod
    def _established(conn: _Conn) -> bool:
        return all(half.state in (ESTABLISHED, PARTIAL) and half.next_seq is not None for half in conn.half)

    def _rst_verdict(self, conn: _Conn, heeded: bool) -> None:
        """Play the held RST (heeded) or drop it, then what followed it."""
        wait, conn.rst_wait = conn.rst_wait, None
        self._rst_waiting.pop(conn.id, None)
        assert wait is not None
        direction, rst = wait[0]
        if not heeded:
            wait = wait[1:]
            conn.half[direction].pkts += 1
            self.anomalies.add("RST_ignored", rst.frame, rst.ts_ns, conn.flow,
                               "its sender's stream went on after it: injected, or refused by its receiver")
        for d, pkt in wait:
            self._segment(conn, d, pkt)

    def _outside_window(self, conn: _Conn, half: _Half, pkt: Packet) -> bool:
        """An RST whose sequence number is far from its direction's stream: its receiver drops it
        (RFC 5961 §3.2: only an RST in the window ends a connection), and so do we."""
        rel = _seq_diff(pkt.seq, half.next_seq)
        if -RST_WINDOW <= rel <= RST_WINDOW:
            return False
        self.anomalies.add("RST_outside_window", pkt.frame, pkt.ts_ns, conn.flow,
                           f"{rel:+} from the next sequence number: ignored by the receiver")
        return True

    # -- segments captured ahead of the bytes they acknowledge ----------------------------------

    def _held_back(self, conn: _Conn, direction: int, peer: _Half, pkt: Packet, acked: int) -> bool:
        """Hold ``pkt``: its ACK is ``acked`` bytes past what the other direction has delivered."""
        if self._releasing:
            return False
        held = conn.held
        if held is not None:
            if pkt.ts_ns >= conn.held_until:  # their time is up before this segment's: the bytes
                self._release(conn, expired=True)  # they wait for are lost; decide afresh
                acked = _seq_diff(pkt.ack, peer.next_seq)
                if acked <= 0:
                    return False
            elif conn.held_dir != direction:
                return False  # this is the direction the held segments wait for
            elif len(held) >= HOLD_SEGMENTS:  # that many segments past the bytes: they are lost
                self._release(conn, expired=True)
                return False
            else:
                held.append(pkt)  # the rest of the direction queues behind, in order
                return True
        flags = pkt.flags
        if flags & TH_SYN or not (pkt.payload or pkt.missing or flags & (TH_FIN | TH_RST)) or peer.ended:
            return False  # a pure ACK waits for nothing; the existing hole logic covers it
        if acked > HOLD_MAX_AHEAD and not flags & TH_RST:  # an RST's ACK is no evidence (RFC 5961)
            # too far ahead to be a reordering: the acknowledged bytes are lost (a sequence hole).
            # They become a gap now, before this segment, so what follows the hole keeps its order
            # (a response must not reach the HTTP stage before the gap that holds its request)
            self._skip_acknowledged(conn, 1 - direction, peer, pkt)
            return False
        if conn.hold_expired >= HOLD_GIVE_UP:
            return False
        self._set_held(conn, direction, [pkt])
        return True

    def _set_held(self, conn: _Conn, direction: int, held: list[Packet] | None) -> None:
        if held:
            conn.held, conn.held_dir = held, direction
            conn.held_until = held[0].ts_ns + HOLD_NS
            self._holding[conn.id] = conn
            self._next_timer = min(self._next_timer, conn.held_until)
        else:
            conn.held = None
            self._holding.pop(conn.id, None)

    @staticmethod
    def _ahead(peer: _Half, pkt: Packet) -> int:
        """How far ``pkt`` acknowledges past ``peer``'s delivered stream (a FIN counts no byte)."""
        if peer.ended:
            return 0
        rel = _seq_diff(pkt.ack, peer.next_seq)
        if peer.fin_off is not None and rel > peer.fin_off - peer.next_off:
            rel = peer.fin_off - peer.next_off
        return rel

    def _release_ready(self, conn: _Conn, trigger: Packet) -> None:
        """Deliver the held segments whose acknowledged bytes have now been delivered."""
        if self._releasing:
            return  # the outer release looks again once its segments are in
        while conn.held is not None:
            held, direction = conn.held, conn.held_dir
            peer = conn.half[1 - direction]
            n = 0
            while n < len(held) and self._ahead(peer, held[n]) <= 0:
                n += 1
            if not n:
                return
            first = held[0]
            self._set_held(conn, direction, held[n:])
            self.anomalies.add(
                "reordered_across_directions", first.frame, first.ts_ns, conn.flow,
                f"captured {(trigger.ts_ns - first.ts_ns) / 1000:.0f} us before frame {trigger.frame} "
                f"whose bytes it acknowledges; {n} segment(s) delivered after them")
            # delivered at the time of the bytes they answer (their frame numbers stay): the order
            # the endpoints saw, so no response starts before its request
            ts = trigger.ts_ns
            self._replay(conn, direction, [p if p.ts_ns >= ts else p._replace(ts_ns=ts) for p in held[:n]],
                         None)

    def _release(self, conn: _Conn, expired: bool) -> None:
        """The held segments stop waiting: the bytes they acknowledge are a gap, then they follow."""
        held, direction = conn.held, conn.held_dir
        self._set_held(conn, direction, None)
        if expired:
            conn.hold_expired += 1
        self._replay(conn, direction, held, conn.half[1 - direction])

    def _replay(self, conn: _Conn, direction: int, held: list[Packet], lost: _Half | None) -> None:
        was, self._releasing = self._releasing, True
        try:
            for pkt in held:
                if lost is not None:
                    self._skip_acknowledged(conn, 1 - direction, lost, pkt)
                self._segment(conn, direction, pkt)
        finally:
            self._releasing = was

    def _skip_acknowledged(self, conn: _Conn, direction: int, half: _Half, pkt: Packet) -> None:
        """What ``pkt`` acknowledges of ``half`` and was never captured becomes a gap now."""
        for _ in range(8):  # each pass moves the stream on; a few suffice
            if self._ahead(half, pkt) <= 0:
                return
            self._peer_ack(half, pkt)
            if half.hole_ack_off is None:
                return
            self._skip_hole(conn, direction, half, pkt.ts_ns, pkt.frame)

    def _history(self, conn: _Conn, direction: int, flags: int, size: int, pkt: Packet) -> None:
        if flags & TH_SYN:
            _record(conn, direction, "h" if flags & TH_ACK else "s")
            if flags & (TH_FIN | TH_RST):
                _record(conn, direction, "q")
        if size:
            _record(conn, direction, "d")
        elif flags & TH_ACK and not flags & (TH_SYN | TH_FIN | TH_RST):
            _record(conn, direction, "a")
        if flags & TH_FIN:
            _record(conn, direction, "f")
        if flags & TH_RST:
            _record(conn, direction, "r")
        if pkt.win == 0 and not flags & (TH_SYN | TH_FIN | TH_RST):
            _record(conn, direction, "w", repeatable=True)

    @staticmethod
    def _endpoint_state(conn: _Conn, direction: int, flags: int) -> None:
        half = conn.half[direction]
        peer = conn.half[1 - direction]
        if flags & TH_RST:
            half.state = RESET
        elif half.state == RESET:
            return
        elif flags & TH_FIN:
            half.state = CLOSED
        elif flags & TH_SYN:
            if half.state in (INACTIVE, SYN_SENT, SYN_ACK_SENT):
                half.state = SYN_ACK_SENT if flags & TH_ACK else SYN_SENT
        elif half.state == INACTIVE:
            half.state = PARTIAL
        elif half.state in (SYN_SENT, SYN_ACK_SENT) and flags & TH_ACK:
            if peer.state != INACTIVE:
                half.state = ESTABLISHED
                if peer.state == SYN_ACK_SENT:
                    peer.state = ESTABLISHED

    def _syn(self, conn: _Conn, half: _Half, pkt: Packet) -> None:
        if half.isn is None:
            if not pkt.flags & TH_ACK and not conn.syn_seen:
                conn.syn_seen, conn.syn_frame = True, pkt.frame
            half.isn = pkt.seq
            half.next_seq = (pkt.seq + 1) % _MOD
        elif half.isn == pkt.seq:
            half.retransmits += 1

    def _data(self, conn: _Conn, direction: int, half: _Half, pkt: Packet, off: int, size: int) -> None:
        rel = off - half.next_off
        end = off + size
        if end > half.max_off:
            half.max_off = end
        if end <= half.next_off:
            half.retransmits += 1
            _record(conn, direction, "t", repeatable=True)
            return
        if rel > 0:
            self._hold(conn, direction, half, off, pkt)
            return
        if rel < 0:
            half.retransmits += 1
            _record(conn, direction, "t", repeatable=True)
        self._deliver(conn, direction, half, pkt.payload[-rel:] if rel else pkt.payload,
                      pkt.missing, pkt.ts_ns, pkt.frame)
        if half.buffer or half.fin_off is not None or half.hole_ack_off is not None:
            self._drain(conn, direction, half)

    @staticmethod
    def _probe(half: _Half, pkt: Packet, direction: int) -> None:
        """Wireshark's keep-alive: 0 or 1 byte at next-1; carries no stream data."""
        half.probe_count += 1
        if len(half.probes) < MAX_PROBES_KEPT:
            half.probes.append(Probe(direction, pkt.ts_ns, pkt.frame))

    def _deliver(self, conn: _Conn, direction: int, half: _Half, data: bytes, missing: int,
                 ts_ns: int, frame: int) -> None:
        if data:
            self.listener.on_data(conn.id, direction, data, ts_ns, frame)
        if missing:
            self._gap(conn, direction, half, missing, ts_ns, frame)
        size = len(data) + missing
        half.next_off += size
        half.next_seq = (half.next_seq + size) % _MOD

    def _hold(self, conn: _Conn, direction: int, half: _Half, off: int, pkt: Packet) -> None:
        if off not in half.buffer:
            half.buffer[off] = (pkt.payload, pkt.missing, pkt.ts_ns, pkt.frame)
            half.buffered += len(pkt.payload)
        if half.buffered > MAX_BUFFERED:
            self._skip_hole(conn, direction, half, pkt.ts_ns, pkt.frame)

    def _drain(self, conn: _Conn, direction: int, half: _Half) -> None:
        """Deliver buffered segments that the stream has caught up with."""
        while half.buffer:
            nxt = min(half.buffer)
            if nxt > half.next_off:
                break
            payload, missing, ts_ns, frame = half.buffer.pop(nxt)
            half.buffered -= len(payload)
            skip = half.next_off - nxt
            if skip >= len(payload) + missing:
                continue
            if skip > len(payload):
                missing -= skip - len(payload)
            self._deliver(conn, direction, half, payload[skip:], missing, ts_ns, frame)
        if half.hole_ack_off is not None and half.hole_ack_off <= half.next_off:
            half.hole_ack_off = None
        self._maybe_end(conn, direction, half)

    def _gap(self, conn: _Conn, direction: int, half: _Half, size: int, ts_ns: int, frame: int) -> None:
        half.gaps += 1
        half.missed += size
        _record(conn, direction, "g", repeatable=True)
        self.listener.on_gap(conn.id, direction, size, ts_ns, frame)

    def _skip_hole(self, conn: _Conn, direction: int, half: _Half, ts_ns: int, frame: int) -> None:
        """Give up on the bytes in front of the stream: they are a gap."""
        targets = [o for o in (half.hole_ack_off, half.fin_off) if o is not None]
        if half.buffer:
            targets.append(min(half.buffer))
        upto = min(targets) if targets else half.next_off
        if upto > half.next_off:
            size = upto - half.next_off
            self._gap(conn, direction, half, size, ts_ns, frame)
            half.next_off = upto
            half.next_seq = (half.next_seq + size) % _MOD
        half.hole_ack_off = None
        self._drain(conn, direction, half)

    @staticmethod
    def _peer_ack(half: _Half, pkt: Packet) -> None:
        """The peer acknowledged ``pkt.ack``, beyond what this half's stream has delivered."""
        rel = _seq_diff(pkt.ack, half.next_seq)
        ack_off = half.next_off + rel
        if half.fin_off is not None and ack_off > half.fin_off:
            ack_off = half.fin_off  # the FIN takes one sequence number but carries no byte
        if ack_off <= half.next_off:
            return
        if half.hole_ack_off is None:
            half.hole_since = pkt.ts_ns
        half.hole_ack_off = max(half.hole_ack_off or 0, ack_off)

    def _expire_holes(self, conn: _Conn, pkt: Packet) -> None:
        for direction, half in enumerate(conn.half):
            if conn.held is not None and direction == conn.held_dir:
                continue  # the held segments may be what fills it
            if half.hole_ack_off is not None and pkt.ts_ns - half.hole_since >= REORDER_WINDOW_NS:
                self._skip_hole(conn, direction, half, pkt.ts_ns, pkt.frame)

    def _fin(self, conn: _Conn, direction: int, half: _Half, pkt: Packet, fin_off: int) -> None:
        if half.fin_off is None:
            half.fin_off = fin_off
            if fin_off > half.max_off:
                half.max_off = fin_off
            close = self._close_record(conn, direction, "fin", pkt)
            conn.fins.append(close)
            if conn.first_close is None:
                conn.first_close = close
        self._maybe_end(conn, direction, half)

    def _maybe_end(self, conn: _Conn, direction: int, half: _Half) -> None:
        """The stream ends at its FIN once every byte before the FIN is accounted for."""
        if half.ended or half.fin_off is None or half.next_off < half.fin_off:
            return
        half.ended = True
        fin = next(c for c in conn.fins if c.by == direction)
        self.listener.on_end(conn.id, direction, "fin", fin.ts_ns, fin.frame)
        if conn.half[1 - direction].ended and conn.closed_at is None:
            self._linger(conn, fin.ts_ns)

    def _reset(self, conn: _Conn, direction: int, pkt: Packet) -> None:
        if conn.rst is not None:
            return
        if conn.held is not None and conn.held_dir != direction:
            self._release(conn, expired=False)  # captured before this RST, which ends the wait
        close = self._close_record(conn, direction, "rst", pkt)
        conn.rst = close
        if conn.first_close is None:
            conn.first_close = close
        for d in (direction, 1 - direction):
            self._end_stream(conn, d, "rst", pkt.ts_ns, pkt.frame)
        if conn.closed_at is None:
            self._linger(conn, pkt.ts_ns)

    @staticmethod
    def _close_record(conn: _Conn, direction: int, how: str, pkt: Packet) -> Close:
        peer = conn.half[1 - direction]
        if peer.fin_off is not None:
            state = "half_closed"
        elif conn.half[direction].state in (SYN_SENT, SYN_ACK_SENT) or peer.state in (SYN_SENT, SYN_ACK_SENT):
            state = "handshake"
        else:
            state = "established"
        return Close(direction, how, pkt.ts_ns, pkt.frame, state)

    # -- connection life -------------------------------------------------------------------

    def _linger(self, conn: _Conn, ts_ns: int) -> None:
        conn.closed_at = ts_ns
        self._lingering[conn.id] = conn

    def _timers(self, now_ns: int) -> None:
        """RST waits and holds that are due."""
        for conn in [c for c in self._rst_waiting.values() if c.rst_until <= now_ns]:
            self._rst_verdict(conn, heeded=True)
        for conn in [c for c in self._holding.values() if c.held_until <= now_ns]:
            self._release(conn, expired=True)
        due = [c.rst_until for c in self._rst_waiting.values()] + [c.held_until for c in self._holding.values()]
        self._next_timer = min(due, default=1 << 62)

    def _sweep(self, now_ns: int) -> None:
        self._next_sweep = now_ns + 1_000_000_000
        if self._attempts:
            self._expire_attempts(now_ns)
        if now_ns >= self._next_idle_check:
            self._next_idle_check = now_ns + IDLE_CHECK_NS
            self._expire_quiet(now_ns, None, len(self._by_tuple), IDLE_EXPIRE_NS)
        while self._lingering:
            conn = next(iter(self._lingering.values()))
            if now_ns - conn.closed_at < LINGER_NS:
                break
            self._finalize(conn, "eof", conn.last_ns, 0)

    def _end_stream(self, conn: _Conn, direction: int, how: str, ts_ns: int, frame: int) -> None:
        """End a direction now: whatever it still waits for is a gap."""
        half = conn.half[direction]
        while not half.ended and (
            half.buffer or half.hole_ack_off is not None
            or (half.fin_off is not None and half.next_off < half.fin_off)
        ):
            self._skip_hole(conn, direction, half, ts_ns, frame)
        if not half.ended:
            half.ended = True
            self.listener.on_end(conn.id, direction, how, ts_ns, frame)

    def _finalize(self, conn: _Conn, how: str, ts_ns: int, frame: int) -> None:
        # Mark it closed before ending its streams: ending a stream can drain a buffered FIN
        # (_maybe_end), which would otherwise put the connection back in the linger set for
        # the sweep to finalize a second time. The linger entry goes after the streams end.
        if conn.attempt:
            conn.attempt = False
            self._attempts.pop(conn.id, None)
        if conn.rst_wait is not None:  # no verdict came: the RST ended the connection
            self._rst_verdict(conn, heeded=True)
        if conn.held is not None:  # before anything ends: held segments still belong to the streams
            self._release(conn, expired=False)
        if conn.closed_at is None:
            conn.closed_at = ts_ns
        for direction in (ORIG, RESP):
            self._end_stream(conn, direction, how, ts_ns, frame)
        self._lingering.pop(conn.id, None)
        fwd = (conn.orig, conn.orig_port, conn.resp, conn.resp_port)
        if self._by_tuple.get(fwd, (None,))[0] is conn:
            del self._by_tuple[fwd]
            del self._by_tuple[(conn.resp, conn.resp_port, conn.orig, conn.orig_port)]
        self.listener.on_close(self._summary(conn))

    @staticmethod
    def _summary(conn: _Conn) -> Connection:
        o, r = conn.half
        history = "".join(conn.history)
        orig_bytes, resp_bytes = o.max_off, r.max_off
        return Connection(
            id=conn.id, orig=conn.orig, orig_port=conn.orig_port, resp=conn.resp,
            resp_port=conn.resp_port, start_ns=conn.start_ns, end_ns=conn.last_ns,
            history=history,
            conn_state=conn_state(o.state, r.state, history, orig_bytes, resp_bytes),
            syn_seen=conn.syn_seen, orig_bytes=orig_bytes, resp_bytes=resp_bytes,
            missed_bytes=o.missed + r.missed, orig_pkts=o.pkts, resp_pkts=r.pkts,
            first_close=conn.first_close, fins=tuple(conn.fins), rst=conn.rst,
            probes=tuple(sorted(o.probes + r.probes, key=lambda p: p.ts_ns)),
            probe_counts=(o.probe_count, r.probe_count),
            zero_windows=(o.zero_windows, r.zero_windows),
            retransmits=(o.retransmits, r.retransmits),
            gaps=(o.gaps, r.gaps), vni=conn.vni, syn_frame=conn.syn_frame,
        )

