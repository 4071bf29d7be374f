from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from alb_pcap.model import ORIG, RESP, TH_ACK, TH_FIN, TH_SYN, AnomalyLog
from alb_pcap.wire.tcp import (
    HOLD_GIVE_UP,
    HOLD_NS,
    HOLD_SEGMENTS,
    INACTIVE,
    SYN_SENT,
    TcpTracker,
    conn_state,
)

from .factories import SEC, Conversation


class Recorder:
    """A StreamListener that writes down what it is told."""

    def __init__(self) -> None:
        self.streams: dict[tuple[int, int], bytearray] = {}
        self.events: list[tuple] = []
        self.delivered: list[tuple] = []  # (direction, frame, ts_ns) of every on_data, in order
        self.order: list[tuple] = []  # ("data" or "gap", direction): what came in which order
        self.closed = []

    def on_open(self, cid, flow, ts_ns):
        self.events.append(("open", cid, flow))

    def on_data(self, cid, direction, data, ts_ns, frame):
        self.delivered.append((direction, frame, ts_ns))
        self.order.append(("data", direction))
        self.streams.setdefault((cid, direction), bytearray()).extend(data)

    def on_gap(self, cid, direction, size, ts_ns, frame):
        self.events.append(("gap", cid, direction, size))
        self.order.append(("gap", direction))
        self.streams.setdefault((cid, direction), bytearray()).extend(b"?" * min(size, 1 << 16))

    def on_end(self, cid, direction, how, ts_ns, frame):
        self.events.append(("end", cid, direction, how))

    def on_close(self, conn):
        self.closed.append(conn)


def run(packets) -> Recorder:
    rec = Recorder()
    tracker = TcpTracker(rec, AnomalyLog())
    for p in packets:
        tracker.feed(p)
    tracker.finish()
    return rec


REQ = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
RESP_BYTES = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + b"x" * 3000


def basic() -> Conversation:
    c = Conversation().handshake()
    c.send(0, REQ)
    c.ack(1)
    c.send(1, RESP_BYTES)
    c.ack(0)
    return c.close_both()


def test_clean_connection_is_sf_with_zeek_history():
    rec = run(basic().packets)
    (conn,) = rec.closed
    assert conn.conn_state == "SF"
    assert conn.history == "ShADadFf"
    assert conn.orig_bytes == len(REQ) and conn.resp_bytes == len(RESP_BYTES)
    assert bytes(rec.streams[(conn.id, ORIG)]) == REQ
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES
    assert conn.first_close.by == ORIG and conn.first_close.how == "fin"
    assert ("end", conn.id, ORIG, "fin") in rec.events


def test_reordered_and_duplicated_segments_give_the_same_stream():
    c = basic()
    pkts = list(c.packets)
    data = [i for i, p in enumerate(pkts) if p.payload and p.sport == 80]
    a, b = data[0], data[1]
    pkts[a], pkts[b] = pkts[b], pkts[a]
    pkts.insert(b + 1, pkts[b])  # a retransmission
    rec = run(pkts)
    (conn,) = rec.closed
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES
    assert conn.retransmits[RESP] >= 1
    assert not [e for e in rec.events if e[0] == "gap"]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_shuffled_data_within_the_window_reassembles(rnd, dups):
    c = Conversation().handshake()
    c.send(0, REQ)
    data_pkts = c.send(1, RESP_BYTES * 3, mss=500, dt=0.0001)
    c.ack(0)
    c.close_both()
    pkts = list(c.packets)
    first = pkts.index(data_pkts[0])
    block = pkts[first:first + len(data_pkts)]
    block += [rnd.choice(block) for _ in range(dups)]
    rnd.shuffle(block)
    pkts[first:first + len(data_pkts)] = block
    rec = run(pkts)
    (conn,) = rec.closed
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES * 3


def test_lost_segment_becomes_a_gap_and_the_stream_resumes():
    c = Conversation().handshake()
    c.send(0, REQ)
    segs = c.send(1, b"a" * 1000 + b"b" * 1000 + b"c" * 1000, mss=1000)
    c.ack(0, dt=0.02)
    c.close_both()
    pkts = [p for p in c.packets if p is not segs[1]]
    rec = run(pkts)
    (conn,) = rec.closed
    assert ("gap", conn.id, RESP, 1000) in rec.events
    assert bytes(rec.streams[(conn.id, RESP)]) == b"a" * 1000 + b"?" * 1000 + b"c" * 1000
    assert conn.missed_bytes == 1000
    assert "g" in conn.history


def test_lost_tail_acked_by_the_peer_is_a_gap():
    c = Conversation().handshake()
    c.send(0, REQ)
    segs = c.send(1, b"a" * 2000, mss=1000)
    c.ack(0, dt=0.02)
    pkts = [p for p in c.packets if p is not segs[1]]
    rec = run(pkts)
    (conn,) = rec.closed
    assert ("gap", conn.id, RESP, 1000) in rec.events
    assert conn.conn_state == "S1"


def test_truncated_segments_keep_their_bytes_and_gap_the_rest():
    c = Conversation().handshake()
    c._emit(0, 0x18, REQ[:10], missing=len(REQ) - 10)
    c.close_both()
    rec = run(c.packets)
    (conn,) = rec.closed
    assert bytes(rec.streams[(conn.id, ORIG)]) == REQ[:10] + b"?" * (len(REQ) - 10)
    assert conn.missed_bytes == len(REQ) - 10


def test_keepalive_probes_are_counted_not_data():
    c = Conversation().handshake()
    c.send(0, REQ)
    c.send(1, RESP_BYTES[:100])
    for _ in range(3):
        c.probe(0, dt=10)
        c.ack(1)
    c.fin(1, dt=30)
    c.fin(0)
    rec = run(c.packets)
    (conn,) = rec.closed
    assert conn.probe_counts == (3, 0)
    assert [p.ts_ns for p in conn.probes][1] - conn.probes[0].ts_ns > 9 * SEC
    assert bytes(rec.streams[(conn.id, ORIG)]) == REQ
    assert conn.first_close.by == RESP
    assert conn.conn_state == "SF"


def test_new_syn_on_the_same_tuple_starts_a_new_connection():
    first = basic()
    second = Conversation(cisn=999_999, sisn=777_777, t=first.t + SEC).handshake()
    second.send(0, REQ)
    second.close_both()
    rec = run(first.packets + second.packets)
    assert len(rec.closed) == 2
    assert {c.conn_state for c in rec.closed} == {"SF"}
    assert bytes(rec.streams[(2, ORIG)]) == REQ


def test_reset_by_responder_during_request():
    c = Conversation().handshake()
    c.send(0, REQ)
    c.rst(1)
    rec = run(c.packets)
    (conn,) = rec.closed
    assert conn.conn_state == "RSTR"
    assert conn.rst.by == RESP and conn.first_close.how == "rst"
    assert ("end", conn.id, ORIG, "rst") in rec.events


def test_rejected_connection():
    c = Conversation()
    c._emit(0, 0x02)
    c.rst(1)
    (conn,) = run(c.packets).closed
    assert conn.conn_state == "REJ"


def test_syn_only_is_s0_and_half_close_is_s3():
    c = Conversation()
    c._emit(0, 0x02)
    assert run(c.packets).closed[0].conn_state == "S0"
    c = Conversation().handshake()
    c.send(0, REQ)
    c.fin(1)
    (conn,) = run(c.packets).closed
    assert conn.conn_state == "S3"
    assert conn.first_close.by == RESP


def test_mid_stream_pickup_guesses_the_server_by_port():
    c = Conversation().handshake()
    c.send(0, REQ)
    c.send(1, RESP_BYTES)
    c.ack(0)
    rec = run(c.packets[4:])  # from the server's first data segment on
    (conn,) = rec.closed
    assert conn.orig_port == 40000 and conn.resp_port == 80
    assert conn.history.startswith("^")
    assert conn.conn_state == "OTH"
    assert not conn.syn_seen


def test_zeek_conn_state_table():
    assert conn_state(SYN_SENT, INACTIVE, "S", 0, 0) == "S0"


def test_many_connections_release_memory_when_closed():
    rec = Recorder()
    tracker = TcpTracker(rec, AnomalyLog())
    t = 1_700_000_000 * SEC
    for i in range(200):
        c = Conversation(cport=20000 + i, t=t + i * SEC)
        c.handshake()
        c.send(0, REQ)
        c.close_both()
        for p in c.packets:
            tracker.feed(p)
    assert tracker.open_connections < 20
    tracker.finish()
    assert len(rec.closed) == 200


def test_random_packet_soup_never_raises():
    rnd = random.Random(7)
    pkts = basic().packets
    soup = [rnd.choice(pkts)._replace(seq=rnd.getrandbits(32), flags=rnd.getrandbits(6))
            for _ in range(500)]
    run(soup)


# -- records out of order (issue 10) --------------------------------------------------


def _closed_ids(packets) -> list[int]:
    return [c.id for c in run(packets).closed]


def test_a_connection_is_closed_once_when_its_records_come_out_of_order():
    """The reproducer's shape (tests/data/crashers/records-out-of-order-close-twice.pcap): the
    server's FIN waits behind a hole, then a SYN starts a new connection on the tuple. Ending the
    old one's streams drained the FIN, which put it back in the linger set, and the sweep closed
    it a second time."""
    t = 1_700_000_000 * SEC
    c = Conversation(cisn=30701009, sisn=847125488)
    c._emit(0, TH_ACK, seq=30701219, dt=0)
    c._emit(1, TH_SYN | TH_ACK, seq=847125488, dt=0)
    c._emit(1, TH_FIN | TH_ACK, seq=847125600, dt=0)
    c._emit(0, TH_SYN, seq=30701009, dt=0)
    packets = [p._replace(ts_ns=t + dt) for p, dt in zip(c.packets, (2 * SEC, 0, 2 * SEC, 0))]
    other = Conversation(cport=40001, t=t + 3 * SEC).handshake().packets[0]
    ids = _closed_ids(packets + [other])
    assert sorted(ids) == [1, 2, 3]


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_shuffled_records_close_every_connection_exactly_once(rnd):
    packets = basic().packets + Conversation(cport=40001, cisn=9000).handshake().packets
    packets = list(packets)
    rnd.shuffle(packets)
    t = packets[0].ts_ns
    late = [p._replace(ts_ns=t + i * SEC // 2) for i, p in enumerate(packets)]  # times follow file order
    ids = _closed_ids(late)
    assert len(ids) == len(set(ids))


# -- segments captured ahead of the other direction's bytes they acknowledge -----------------


def _before(packets, moved, target, by_ns=1_000):
    """``moved`` captured ``by_ns`` before ``target`` (two mirror sources feeding one capture)."""
    packets = [p for p in packets if p is not moved]
    j = packets.index(target)
    packets.insert(j, moved._replace(ts_ns=target.ts_ns - by_ns))
    return packets


def _tracker():
    rec, anomalies = Recorder(), AnomalyLog()
    return rec, anomalies, TcpTracker(rec, anomalies)


def test_response_captured_before_its_request_is_delivered_after_it():
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    (resp,) = c.send(1, RESP_BYTES[:1000])
    c.ack(0)
    c.close_both()
    rec, anomalies, tracker = _tracker()
    for p in _before(c.packets, resp, req):
        tracker.feed(p)
    tracker.finish()
    (conn,) = rec.closed
    assert [(d, f) for d, f, _ in rec.delivered] == [(ORIG, req.frame), (RESP, resp.frame)]
    assert rec.delivered[1][2] >= rec.delivered[0][2]  # no response before its request
    assert bytes(rec.streams[(conn.id, ORIG)]) == REQ
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES[:1000]
    assert not [e for e in rec.events if e[0] == "gap"]
    (plain,) = run(c.packets).closed
    assert conn.history == plain.history and conn.conn_state == "SF"
    assert anomalies.counts == {"reordered_across_directions": 1}
    (a,) = anomalies.kept
    assert a.frame == resp.frame and str(req.frame) in a.detail


def test_the_rest_of_a_held_direction_queues_behind_it():
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    segs = c.send(1, RESP_BYTES, mss=1000, dt=0.00001)
    c.ack(0)
    pkts = list(c.packets)
    i = pkts.index(req)
    pkts[i:i + 1 + len(segs)] = [s._replace(ts_ns=req.ts_ns - 100) for s in segs] + [req]
    rec = run(pkts)
    (conn,) = rec.closed
    assert [d for d, _, _ in rec.delivered] == [ORIG] + [RESP] * len(segs)
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES


def test_acknowledged_bytes_never_captured_are_a_gap_once_the_hold_expires():
    """A real loss: the response says the request arrived, the capture never saw it. The
    response waits HOLD_NS at most (any connection's packets move the clock), then the request
    is a gap and the response follows it."""
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    (resp,) = c.send(1, RESP_BYTES[:1000])
    rec, _, tracker = _tracker()
    for p in c.packets:
        if p is not req:
            tracker.feed(p)
    assert not rec.delivered  # held
    other = Conversation(cport=40001, t=resp.ts_ns + HOLD_NS + 1).handshake().packets[0]
    tracker.feed(other)
    assert rec.order == [("gap", ORIG), ("data", RESP)]  # released by the clock, before the end
    assert ("gap", 1, ORIG, len(REQ)) in rec.events
    tracker.finish()
    conn = next(x for x in rec.closed if x.id == 1)
    assert conn.missed_bytes == len(REQ)
    assert bytes(rec.streams[(1, RESP)]) == RESP_BYTES[:1000]


def test_an_ack_implausibly_far_ahead_is_not_waited_for():
    c = Conversation().handshake()
    c.send(0, REQ)
    c.seq[0] += 1 << 24  # the response acknowledges 16 MB the client never sent
    c.send(1, RESP_BYTES[:1000])
    rec, _, tracker = _tracker()
    for p in c.packets:
        tracker.feed(p)
    assert [d for d, _, _ in rec.delivered] == [ORIG, RESP]


def test_one_sided_capture_is_not_delayed():
    """Only the server's side mirrored: its ACKs are always ahead of a direction never seen,
    and nothing may wait for it."""
    c = Conversation().handshake()
    for _ in range(3):
        c.send(0, REQ)
        c.send(1, RESP_BYTES[:500])
    server = [p for p in c.packets if p.sport == 80]
    rec, anomalies, tracker = _tracker()
    for n, p in enumerate(server, 1):
        tracker.feed(p)
        assert len(rec.delivered) == sum(1 for q in server[:n] if q.payload)
    tracker.finish()
    assert not anomalies.counts


def test_a_connection_whose_holds_keep_expiring_stops_holding():
    """The client's side is seen at the handshake only (a one-sided capture of an established
    connection): after HOLD_GIVE_UP expired holds, responses are delivered at once."""
    c = Conversation().handshake()
    for _ in range(HOLD_GIVE_UP + 2):
        c.send(0, REQ)
        c.send(1, RESP_BYTES[:500], dt=0.05)
    pkts = [p for p in c.packets if p.sport == 80 or not p.payload]
    rec, _, tracker = _tracker()
    for p in pkts[:-1]:
        tracker.feed(p)
    before = len(rec.delivered)
    tracker.feed(pkts[-1])
    assert len(rec.delivered) == before + 1  # the last response went straight through
    tracker.finish()
    (conn,) = rec.closed
    assert conn.missed_bytes == (HOLD_GIVE_UP + 2) * len(REQ)  # every request is a gap


def test_held_segments_are_bounded_per_connection():
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    segs = c.send(1, RESP_BYTES * 2, mss=100, dt=0.00001)
    assert len(segs) > HOLD_SEGMENTS + 1
    rec, _, tracker = _tracker()
    for p in c.packets:
        if p is not req:
            tracker.feed(p)
    # the first HOLD_SEGMENTS waited; the next one showed the request lost: all were delivered
    assert bytes(rec.streams[(1, RESP)]) == RESP_BYTES * 2
    assert ("gap", 1, ORIG, len(REQ)) in rec.events
    tracker.finish()


def test_a_reset_from_the_other_side_ends_the_wait():
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    c.send(1, RESP_BYTES[:300])
    c.rst(0)
    rec = run([p for p in c.packets if p is not req])
    (conn,) = rec.closed
    assert rec.order == [("gap", ORIG), ("data", RESP)]
    assert ("gap", conn.id, ORIG, len(REQ)) in rec.events
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES[:300]
    assert conn.rst.by == ORIG and conn.conn_state == "RSTO"


def test_a_fin_captured_before_the_fin_it_acknowledges():
    c = Conversation().handshake()
    c.send(0, REQ)
    c.send(1, RESP_BYTES[:300])
    fin_c = c.fin(0)
    fin_s = c.fin(1)
    c.ack(0)
    rec = run(_before(c.packets, fin_s, fin_c))
    (conn,) = rec.closed
    assert conn.conn_state == "SF"
    assert conn.first_close.by == ORIG
    assert not [e for e in rec.events if e[0] == "gap"]


def test_keepalive_probe_and_retransmission_ahead_of_the_peer_are_not_lost():
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    (resp,) = c.send(1, RESP_BYTES[:300])
    c.ack(0)
    probe = c.probe(1, dt=10)
    c.ack(0)
    pkts = _before(c.packets, resp, req)
    pkts.insert(pkts.index(req) + 1, resp._replace(ts_ns=req.ts_ns + 10))  # and again, retransmitted
    rec = run(pkts)
    (conn,) = rec.closed
    assert bytes(rec.streams[(conn.id, RESP)]) == RESP_BYTES[:300]
    assert conn.probe_counts == (0, 1) and conn.retransmits[RESP] == 1
    assert probe.frame in {p.frame for p in conn.probes}


def test_records_shuffled_across_directions_close_every_connection_once():
    """Finalizing a connection with held segments releases them first, once."""
    c = Conversation().handshake()
    (req,) = c.send(0, REQ)
    (resp,) = c.send(1, RESP_BYTES[:300])
    fin = c.fin(1)
    pkts = _before(c.packets, resp, req)
    pkts = [p for p in pkts if p is not req]  # the request lost: the response and FIN wait
    nxt = Conversation(t=fin.ts_ns + 1000, cisn=77, sisn=99).handshake().packets  # same tuple, new SYN
    rec = run(pkts + nxt)
    assert sorted(x.id for x in rec.closed) == [1, 2]
    assert bytes(rec.streams[(1, RESP)]) == RESP_BYTES[:300]
