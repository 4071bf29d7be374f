"""TCP and HTTP together: the exchanges do not depend on how the capture cut or shuffled segments."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from alb_pcap.model import AnomalyLog
from alb_pcap.pipeline import Summary, _HttpStage
from alb_pcap.tcp import TcpTracker

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


def test_a_response_captured_before_its_request_is_not_paired():
    """Known limit: reordering *across* directions (a response segment captured before the
    request it answers, as two mirror sources can deliver) is not undone; the exchange comes
    out split. Real Traffic Mirroring of one ENI keeps both directions in order."""
    packets = conversation(1460)
    first_request = next(i for i, p in enumerate(packets) if p.payload)
    packets.insert(first_request, packets.pop(first_request + 1))
    assert exchanges(packets)[0][:3] == (None, None, 200)
