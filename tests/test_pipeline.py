"""TCP and HTTP together: the exchanges do not depend on how the capture cut or shuffled segments."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from alb_pcap.model import AnomalyLog
from alb_pcap.wire.pipeline import Summary, _HttpStage
from alb_pcap.wire.tcp import TcpTracker

from .analysis import Collected
from .factories import Conversation

REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000,
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 502 Bad Gateway\r\nServer: awselb/2.0\r\nContent-Length: 3\r\n\r\nbad",
]


def conversation(mss: int) -> list:
    c = Conversation().handshake()
    for req, resp in zip(REQUESTS, RESPONSES):
        c.send(0, req, mss=mss, dt=0.0001)
        c.send(1, resp, mss=mss, dt=0.0001)
        c.ack(0)
    c.close_both()
    return c.packets


def exchanges(packets) -> list[tuple]:
    sink = Collected()
    stage = _HttpStage([sink], Summary())
    tracker = TcpTracker(stage, AnomalyLog())
    for p in packets:
        tracker.feed(p)
    tracker.finish()
    return [(e.method, e.uri, e.status, e.request_body_len, e.response_body_len, e.ended)
            for e, _ in sink.exchanges]


EXPECTED = [("GET", "/a", 200, 0, 2000, "complete"), ("POST", "/b", 201, 5, 5, "complete"),
            ("GET", "/c", 502, 0, 3, "complete")]


def test_whole_conversation():
    assert exchanges(conversation(1460)) == EXPECTED


@settings(deadline=None)
@given(st.integers(1, 200), st.randoms(use_true_random=False), st.integers(0, 5))
def test_segmentation_duplicates_and_reordering_do_not_change_exchanges(mss, rnd, dups):
    packets = conversation(mss)
    data = [i for i, p in enumerate(packets) if p.payload]
    for _ in range(dups):  # retransmissions, and mirror copies that slipped through
        i = rnd.choice(data)
        packets.insert(i + 1, packets[i])
    for _ in range(len(packets) // 4):  # a segment overtakes the previous one of its direction
        i = rnd.choice([i for i, p in enumerate(packets) if p.payload])
        j = next((j for j in range(i + 1, len(packets)) if packets[j].payload), None)
        if j is not None and packets[j].sport == packets[i].sport:
            packets[i], packets[j] = packets[j], packets[i]
    assert exchanges(packets) == EXPECTED


def _data_runs(packets: list) -> list[list[int]]:
    """Frames of each message's data segments, in order: request, response, request, ..."""
    runs, prev = [], None
    for p in packets:
        if p.payload:
            if p.sport != prev:
                runs.append([])
            runs[-1].append(p.frame)
            prev = p.sport
    return runs


def _response_ahead_of_request(packets: list, k: int, into: int = -1) -> list:
    """The k-th response's first segment captured a microsecond before a segment of the k-th
    request (the last by default), as a second mirror source can deliver it."""
    runs = _data_runs(sorted(packets, key=lambda p: p.frame))
    request, response = runs[2 * k], runs[2 * k + 1]
    target = request[into % len(request)]
    packets = list(packets)
    moved = packets.pop(next(i for i, p in enumerate(packets) if p.frame == response[0]))
    j = next(i for i, p in enumerate(packets) if p.frame == target)
    packets.insert(j, moved._replace(ts_ns=packets[j].ts_ns - 1_000))
    return packets


def test_a_response_captured_before_its_request_is_paired_with_it():
    """Two mirror sources (ingress and egress) feeding one capture can put a response segment a
    few microseconds before the request it answers; its ACK says so, and the TCP stage delivers
    it after the request."""
    packets = _response_ahead_of_request(conversation(1460), 0)
    assert exchanges(packets) == EXPECTED


def test_every_response_captured_before_its_request():
    packets = conversation(1460)
    for k in range(len(REQUESTS)):
        packets = _response_ahead_of_request(packets, k)
    summary = Summary()
    sink = Collected()
    tracker = TcpTracker(_HttpStage([sink], summary), summary.anomalies)
    for p in packets:
        tracker.feed(p)
    tracker.finish()
    assert [(e.method, e.uri, e.status, e.ended) for e, _ in sink.exchanges] == [
        (m, u, s, end) for m, u, s, _, _, end in EXPECTED]
    assert all(e.response_start_ns >= e.request_end_ns for e, _ in sink.exchanges)
    assert summary.anomalies.counts["reordered_across_directions"] == 3
    assert "unmatched_HTTP_reply" not in summary.anomalies.counts


@settings(deadline=None)
@given(st.integers(1, 200), st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16)), max_size=3))
def test_reordering_across_directions_does_not_change_exchanges(mss, moves):
    packets = conversation(mss)
    for k, into in moves:
        packets = _response_ahead_of_request(packets, k, into)
    assert exchanges(packets) == EXPECTED


def test_batched_sinks_get_every_record_in_arrival_order():
    """Records reach the sinks SINK_BATCH at a time, connections and exchanges interleaved as they came."""
    from alb_pcap.wire import pipeline

    class Recorder:
        def __init__(self):
            self.seen = []

        def connection(self, conn):
            self.seen.append(("conn", conn))

        def exchange(self, exchange, flow):
            self.seen.append(("exchange", exchange, flow))

    first, second = Recorder(), Recorder()
    batched = pipeline.Batched([first, second])
    sent = []
    for i in range(2 * pipeline.SINK_BATCH + 7):
        if i % 3:
            batched.exchange(f"exchange {i}", f"flow {i}")
            sent.append(("exchange", f"exchange {i}", f"flow {i}"))
        else:
            batched.connection(f"connection {i}")
            sent.append(("conn", f"connection {i}"))
        if i == pipeline.SINK_BATCH - 2:
            assert first.seen == []  # held until the batch is full
    assert first.seen == sent[:2 * pipeline.SINK_BATCH]
    batched.flush()
    assert first.seen == second.seen == sent
