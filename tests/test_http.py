"""alb_pcap.wire.http on literal bytes: framing, pairing, recovery, and Zeek's traces.

``talk()`` feeds a conversation one step per frame (frame n has ts_ns n * 1000)
and closes both directions, so timestamps and frames can be asserted exactly.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from alb_pcap.model import ORIG, RESP, AnomalyLog, Exchange
from alb_pcap.wire.http import HEAD_MAX, MAX_PENDING, RESYNC_KEEP, HttpConnection

from .conftest import shared_dir

ENDED = {"complete", "fin", "rst", "gap", "open", "tunnel"}


def feed(*steps) -> HttpConnection:
    """Steps: (ORIG|RESP, bytes), ("gap", direction, size), ("fin"|"rst"|"eof", direction)."""
    conn = HttpConnection(7, AnomalyLog(), "c->s")
    for frame, step in enumerate(steps, 1):
        ts = frame * 1000
        if step[0] == "gap":
            conn.gap(step[1], step[2], ts, frame)
        elif step[0] in ("fin", "rst", "eof"):
            conn.end(step[1], step[0], ts, frame)
        else:
            conn.data(step[0], step[1], ts, frame)
    return conn


def talk(*steps, close: str = "eof") -> tuple[list[Exchange], Counter[str]]:
    """Feed, end both directions with ``close``, return every exchange and anomaly count."""
    conn = feed(*steps, (close, ORIG), (close, RESP))
    exchanges = list(conn.exchanges())
    assert conn.pending() == []  # both sides ended: everything was handed out
    return exchanges, conn.anomalies.counts


def summary(exchanges: list[Exchange]) -> list[tuple]:
    return [(e.index, e.method, e.uri, e.status, e.request_body_len, e.response_body_len, e.ended)
            for e in exchanges]


GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# -- heads and pairing


def test_keepalive_exchanges_carry_heads_times_and_frames():
    exchanges, anomalies = talk(
        (ORIG, b"GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nAccept: text/html\r\n\r\n"),
        (RESP, b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 11\r\n\r\nhello"),
        (RESP, b" world"),
        (ORIG, b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        (RESP, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    )
    first, second = exchanges
    assert type(first) is Exchange  # built without the NamedTuple's constructor: the equality below checks every field
    assert first == Exchange(
        conn_id=7, index=1, method="GET", uri="/a?x=1", version="1.1",
        request_headers=(("Host", "example.com"), ("Accept", "*/*"), ("Accept", "text/html")),
        status=200, reason="OK",
        response_headers=(("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Content-Length", "11")),
        interim=(), request_body_len=0, response_body_len=11,
        request_start_ns=1000, request_end_ns=1000, response_start_ns=2000, response_end_ns=3000,
        request_frame=1, response_frame=2, ended="complete",
    )
    assert first.header("accept") == "text/html" and first.host == "example.com"
    assert (second.index, second.uri, second.status, second.reason) == (2, "/b", 404, "Not Found")
    assert (second.request_frame, second.response_frame, second.response_end_ns) == (4, 5, 5000)
    assert not anomalies


def test_exchanges_are_handed_out_once_finished():
    conn = feed((ORIG, GET), (RESP, OK5[:-2]))
    assert list(conn.exchanges()) == []
    assert [(e.uri, e.status, e.response_body_len, e.ended) for e in conn.pending()] == [
        ("/a", 200, 3, "open")
    ]
    conn.data(RESP, b"lo", 3000, 3)
    assert conn.pending() == []  # finished, though not handed out yet
    assert [e.ended for e in conn.exchanges()] == ["complete"]
    assert list(conn.exchanges()) == [] and conn.pending() == []


def test_obs_fold_and_odd_field_lines():
    (ex,), anomalies = talk(
        (ORIG, (b"GET / HTTP/1.1\r\nX-Long: one\r\n  two\r\n\tthree\r\nNoColon\r\n"
                b"Transfer-Encoding : chunked\r\nHost:  h \r\n\r\n")),
        (RESP, b"HTTP/1.1 204 No Content\r\n\r\n"),
    )
    # The spaced name is kept as sent, so it does not frame the request.
    assert ex.request_headers == (
        ("X-Long", "one two three"), ("Transfer-Encoding ", "chunked"), ("Host", "h"))
    assert (ex.request_body_len, ex.status, ex.ended) == (0, 204, "complete")
    assert anomalies == {"HTTP_bad_header_line": 2}


def test_bare_lf_lines_are_tolerated():
    (ex,), anomalies = talk(
        (ORIG, b"GET / HTTP/1.1\nHost: zeek.org\n\n"),
        (RESP, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi"),
    )
    assert (ex.host, ex.status, ex.response_body_len, ex.ended) == ("zeek.org", 200, 2, "complete")
    assert anomalies == {"line_terminated_with_single_LF": 2}


def test_pipelined_requests_pair_in_order_and_head_needs_its_method():
    exchanges, anomalies = talk(
        (ORIG, b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"),
        # Without HEAD's method the Content-Length of answer 2 would eat answer 3.
        (RESP, (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n")),
        (ORIG, b"GET /4 HTTP/1.1\r\n\r\n"),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    )
    assert summary(exchanges) == [
        (1, "GET", "/1", 200, 0, 3, "complete"),
        (2, "HEAD", "/2", 200, 0, 0, "complete"),
        (3, "GET", "/3", 304, 0, 0, "complete"),
        (4, "GET", "/4", 200, 0, 0, "complete"),
    ]
    assert [e.request_frame for e in exchanges] == [1, 1, 1, 3]
    assert not anomalies


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_204_and_304_have_no_body_whatever_they_announce(status):
    exchanges, _ = talk(
        (ORIG, GET + GET),
        (RESP, b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n" + OK5),
    )
    assert [(e.status, e.response_body_len) for e in exchanges] == [(int(status[:3]), 0), (200, 5)]


def test_100_continue_then_request_body_then_final_answer():
    (ex,), anomalies = talk(
        (ORIG, b"POST /up HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n"),
        (RESP, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (ORIG, b"abc"),
        (ORIG, b"def"),
        (RESP, b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
    )
    assert (ex.status, ex.interim, ex.request_body_len, ex.response_body_len) == (201, (100, 102), 6, 2)
    # The response starts with the final answer, not the interim one.
    assert (ex.request_end_ns, ex.response_frame, ex.response_start_ns) == (4000, 5, 5000)
    assert not anomalies


def test_chunked_with_extensions_and_trailers_counts_decoded_bytes():
    exchanges, anomalies = talk(
        (ORIG, (b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4;name=value\r\nWiki\r\n5 ; x\r\npedia\r\n0\r\nChecksum: 1\r\nMore: 2\r\n\r\n")),
        (RESP, (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"A\r\n0123456789\r\n0\r\n\r\n")),
        (ORIG, GET),
        (RESP, OK5),
    )
    assert summary(exchanges) == [
        (1, "POST", "/c", 200, 9, 10, "complete"),
        (2, "GET", "/a", 200, 0, 5, "complete"),
    ]
    assert not anomalies


@pytest.mark.parametrize(
    ("how", "ended"), [("fin", "complete"), ("rst", "rst"), ("eof", "open")])
def test_close_delimited_response_ends_with_the_connection(how, ended):
    (ex,), anomalies = talk(
        (ORIG, b"GET / HTTP/1.0\r\n\r\n"),
        (RESP, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil "),
        (RESP, b"the close"),
        (how, RESP),
    )
    assert (ex.status, ex.response_body_len, ex.ended, ex.response_end_ns) == (200, 15, ended, 3000)
    assert not anomalies


def test_response_without_framing_headers_after_te_not_chunked_reads_to_close():
    (ex,), _ = talk((ORIG, GET), (RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz"),
                    ("fin", RESP))
    assert (ex.response_body_len, ex.ended) == (3, "complete")


# -- the connection ending early


def test_request_without_answer_when_the_server_closes():
    (ex,), _ = talk((ORIG, GET), ("fin", RESP))
    assert (ex.status, ex.ended, ex.response_start_ns, ex.response_frame) == (None, "fin", None, None)


def test_request_crossing_the_servers_fin_gets_no_answer():
    # The keep-alive race: the server closes an idle connection while a request is on its way.
    exchanges, _ = talk((ORIG, GET), (RESP, OK5), ("fin", RESP), (ORIG, GET))
    assert [(e.index, e.status, e.ended) for e in exchanges] == [(1, 200, "complete"), (2, None, "fin")]


def test_request_still_unanswered_at_capture_end_is_open():
    (ex,), _ = talk((ORIG, GET))
    assert (ex.status, ex.ended, ex.request_end_ns) == (None, "open", 1000)


def test_rst_in_the_middle_of_a_request_body():
    (ex,), anomalies = talk(
        (ORIG, b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nabcd"), ("rst", ORIG), ("rst", RESP))
    assert (ex.request_body_len, ex.status, ex.ended, ex.request_end_ns) == (4, None, "rst", 1000)
    assert anomalies == {"HTTP_content_length_mismatch": 1}


def test_content_length_longer_than_the_body_then_fin():
    (ex,), anomalies = talk(
        (ORIG, GET), (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2200000000\r\n\r\n" + b"A" * 100),
        ("fin", RESP))
    assert (ex.status, ex.response_body_len, ex.ended) == (200, 100, "fin")
    assert anomalies == {"HTTP_content_length_mismatch": 1}


def test_connection_ending_inside_a_head_keeps_its_complete_lines():
    (ex,), anomalies = talk((ORIG, GET), (RESP, b"HTTP/1.1 502 Bad Gateway\r\nContent-Ty"),
                            ("fin", RESP))
    assert (ex.status, ex.reason, ex.response_headers, ex.ended) == (502, "Bad Gateway", (), "fin")
    assert anomalies == {"HTTP_truncated_head": 1}


def test_client_giving_up_mid_head():
    (ex,), anomalies = talk((ORIG, b"GET /slow HTTP/1.1\r\nHost: a\r\nUser-"), ("fin", ORIG),
                            ("fin", RESP))
    assert (ex.method, ex.uri, ex.request_headers, ex.status, ex.ended) == (
        "GET", "/slow", (("Host", "a"),), None, "fin")
    assert anomalies == {"HTTP_truncated_head": 1}


def test_data_after_end_is_reported_not_parsed():
    exchanges, anomalies = talk((ORIG, GET), ("fin", ORIG), (ORIG, GET), (RESP, OK5))
    assert len(exchanges) == 1 and anomalies == {"unexpected_client_HTTP_data": 1}


# -- tunnels


def test_connect_2xx_makes_the_rest_opaque():
    conn = feed(
        (ORIG, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01"),
        (RESP, b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03\x00\x51"),
        (ORIG, b"GET /inside HTTP/1.1\r\n\r\n"),  # tunnelled bytes are never parsed
        ("gap", RESP, 100),
        ("rst", ORIG), ("rst", RESP),
    )
    (ex,) = conn.exchanges()
    assert conn.tunnel
    assert (ex.method, ex.uri, ex.status, ex.request_body_len, ex.response_body_len, ex.ended) == (
        "CONNECT", "example.com:443", 200, 0, 0, "tunnel")
    assert (ex.response_end_ns, ex.response_frame) == (2000, 2)
    assert not conn.anomalies.counts


def test_connect_refused_parses_what_the_client_sent_meanwhile():
    exchanges, anomalies = talk(
        (ORIG, b"CONNECT example.com:443 HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n"),
        (RESP, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nauth"),
        (RESP, OK5),
    )
    assert summary(exchanges) == [
        (1, "CONNECT", "example.com:443", 407, 0, 4, "complete"),
        (2, "GET", "/next", 200, 0, 5, "complete"),
    ]
    assert exchanges[1].request_frame == 1  # replayed with the frame it came in
    assert not anomalies


def test_upgrade_101_is_a_tunnel():
    conn = feed(
        (ORIG, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        (RESP, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
        (ORIG, b"\x81\x85garbage"),
        ("fin", ORIG), ("fin", RESP),
    )
    (ex,) = conn.exchanges()
    assert conn.tunnel and (ex.status, ex.interim, ex.ended) == (101, (), "tunnel")
    assert not conn.anomalies.counts


def test_upgrade_declined_goes_on_as_http():
    exchanges, _ = talk(
        (ORIG, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"), (RESP, OK5), (ORIG, GET), (RESP, OK5))
    assert [(e.status, e.ended) for e in exchanges] == [(200, "complete"), (200, "complete")]


def test_client_flooding_before_the_connect_answer():
    exchanges, anomalies = talk(
        (ORIG, b"CONNECT h:443 HTTP/1.1\r\n\r\n"), (ORIG, b"\x17" * (HEAD_MAX + 1)),
        (RESP, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
    assert [(e.method, e.status) for e in exchanges] == [("CONNECT", 403)]
    assert anomalies == {"unexpected_client_HTTP_data": 1}


# -- HTTP/0.9


def test_http09_answer_is_a_close_delimited_body_without_status():
    (ex,), anomalies = talk(
        (ORIG, b"GET /zeek.html\n"), (RESP, b"<html>\n  The Zeek\n</html>\n"), ("fin", RESP))
    assert (ex.method, ex.uri, ex.version, ex.status, ex.response_body_len, ex.ended) == (
        "GET", "/zeek.html", "0.9", None, 26, "complete")
    assert (ex.response_start_ns, ex.response_frame) == (2000, 2)
    assert anomalies == {"line_terminated_with_single_LF": 1}


def test_http09_request_answered_with_a_status_line():
    (ex,), _ = talk((ORIG, b"GET /\r\n"), (RESP, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad"))
    assert (ex.version, ex.status, ex.response_body_len, ex.ended) == ("0.9", 400, 3, "complete")


@pytest.mark.parametrize("line", [b"T /zeek.html\r\n", b"GET \r\n", b"hello world\r\n"])
def test_lines_that_are_not_even_http09(line):
    exchanges, anomalies = talk((ORIG, line))
    assert exchanges == [] and anomalies == {"bad_HTTP_request": 1}


# -- responses without requests, garbage, resync


def test_reply_without_request():
    exchanges, anomalies = talk((ORIG, GET), (RESP, OK5 + OK5), (ORIG, GET), (RESP, OK5))
    assert [(e.index, e.method, e.status) for e in exchanges] == [
        (1, "GET", 200), (2, None, 200), (3, "GET", 200)]
    assert exchanges[1].version == "1.1"  # the response's own version
    assert anomalies == {"unmatched_HTTP_reply": 1}


def test_garbage_request_then_resync_on_the_next_request_line():
    exchanges, anomalies = talk(
        (ORIG, b"\x16\x03\x01\x02\x00garbage\r\n\r\nmore junk xGET / HTTP/1.1 "),
        (ORIG, b"JUNK\r\nPOST /real"),
        (ORIG, b" HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
        (RESP, OK5),
    )
    assert summary(exchanges) == [(1, "POST", "/real", 200, 2, 5, "complete")]
    assert exchanges[0].request_frame == 3  # where the start was recognised
    # The TLS bytes, then the decoy "GET / HTTP/1.1 JUNK" found by the scan.
    assert anomalies == {"bad_HTTP_request": 2}


def test_stray_line_before_a_status_line_does_not_hide_it():
    exchanges, anomalies = talk((ORIG, GET), (RESP, b"oops\r\n" + OK5))
    assert [(e.status, e.response_body_len, e.ended) for e in exchanges] == [(200, 5, "complete")]
    assert anomalies == {"bad_HTTP_reply": 1}


def test_garbage_reply_then_resync_on_the_next_status_line():
    exchanges, anomalies = talk(
        (ORIG, GET + GET),
        (RESP, b"SSH-2.0-OpenSSH_9.6\r\n\r\nHTTP/1.1 2"),
        (RESP, b"00 OK\r\nContent-Length: 0\r\n\r\n"),
    )
    assert [(e.uri, e.status, e.ended) for e in exchanges] == [("/a", 200, "complete"), ("/a", None, "open")]
    assert anomalies == {"bad_HTTP_reply": 1}


def test_second_status_line_in_the_wrong_place():
    exchanges, anomalies = talk((ORIG, GET), (RESP, b"HTTP/1.1 099 Odd\r\n\r\n"), ("fin", RESP))
    assert [(e.status, e.ended) for e in exchanges] == [(None, "fin")]
    assert anomalies == {"bad_HTTP_reply": 1}


def test_head_too_large_keeps_its_start_line_then_resyncs():
    big = b"GET /big HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 2 * HEAD_MAX + b"\r\n\r\n"
    exchanges, anomalies = talk(
        *[(ORIG, big[i:i + 1460]) for i in range(0, len(big), 1460)], (ORIG, GET),
        (RESP, b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n" + OK5))
    assert [(e.uri, e.request_headers, e.status, e.ended) for e in exchanges] == [
        ("/big", (("Host", "h"),), 431, "gap"), ("/a", (("Host", "example.com"),), 200, "complete")]
    assert anomalies == {"HTTP_head_too_large": 1}


def test_resync_buffer_stays_bounded():
    conn = feed(*[(RESP, b"\x00garbage, no status line\r\n\r\n" * 50)] * 100)
    assert conn.anomalies.counts == {"bad_HTTP_reply": 1}
    assert len(conn._readers[RESP].buf) <= RESYNC_KEEP


def test_version_change_on_one_connection():
    _, anomalies = talk((ORIG, GET), (RESP, OK5), (ORIG, b"GET / HTTP/1.0\r\n\r\n"),
                        (RESP, b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
    assert anomalies == {"HTTP_version_mismatch": 2}


def test_too_many_unanswered_requests_let_the_oldest_go():
    conn = feed(*[(ORIG, GET)] * (MAX_PENDING + 2))
    assert [(e.index, e.status, e.ended) for e in conn.exchanges()] == [(1, None, "open"), (2, None, "open")]
    assert conn.anomalies.counts == {"HTTP_excessive_pipelining": 2}
    conn.data(RESP, OK5, 0, 0)
    assert [(e.index, e.status) for e in conn.exchanges()] == [(3, 200)]


# -- smuggling shapes (the request bytes of Zeek's http/261 traces)


def test_te_and_cl_together_transfer_encoding_wins():
    exchanges, anomalies = talk(
        (ORIG, (b"POST / HTTP/1.1\r\nHost: target\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n"
                b"0\r\n\r\nGET /smuggled-te-cl HTTP/1.1\r\nHost: target\r\n\r\n")))
    assert [(e.method, e.uri, e.request_body_len) for e in exchanges] == [
        ("POST", "/", 0), ("GET", "/smuggled-te-cl", 0)]
    assert anomalies == {"HTTP_TE_and_CL": 1}


def test_negative_content_length():
    exchanges, anomalies = talk(
        (ORIG, (b"POST / HTTP/1.1\r\nHost: target\r\nContent-Length: -1\r\n\r\n"
                b"GET /smuggled-cl-negative HTTP/1.1\r\nHost: target\r\n\r\n")))
    assert [(e.method, e.uri) for e in exchanges] == [("POST", "/"), ("GET", "/smuggled-cl-negative")]
    assert anomalies == {"HTTP_bad_content_length": 1}


def test_chunk_size_2_pow_64_cuts_the_body_and_resyncs():
    exchanges, anomalies = talk(
        (ORIG, (b"POST / HTTP/1.1\r\nHost: target\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"10000000000000000\r\n\r\nGET /smuggled-chunk-2pow64 HTTP/1.1\r\nHost: target\r\n\r\n")))
    assert [(e.method, e.uri, e.ended) for e in exchanges] == [
        ("POST", "/", "gap"), ("GET", "/smuggled-chunk-2pow64", "open")]
    assert anomalies == {"HTTP_bad_chunk_size": 1}


@pytest.mark.parametrize("value", [b"5, 6", b"99999999999999999999", b"0x10", b"\xb2"])
def test_bad_content_length_in_a_response_reads_to_close(value):
    (ex,), anomalies = talk(
        (ORIG, GET), (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nabc"),
        ("fin", RESP))
    assert (ex.response_body_len, ex.ended) == (3, "complete")
    assert anomalies == {"HTTP_bad_content_length": 1}


@pytest.mark.parametrize("value", [b"12345678901234567890", b"99999999999999999999", b"5, 6"])
@pytest.mark.parametrize("layout", ["next-request-later", "pipelined", "one-segment"])
def test_bad_content_length_does_not_swallow_the_next_answer(value, layout):
    """Issue 10: a 20-digit Content-Length made the answer close-delimited, and the answer to
    the next request on the connection was counted as its body."""
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nabc"
    steps = {
        "next-request-later": ((ORIG, GET), (RESP, bad), (ORIG, GET), (RESP, OK5)),
        "pipelined": ((ORIG, GET + GET), (RESP, bad), (RESP, OK5)),
        "one-segment": ((ORIG, GET + GET), (RESP, bad + OK5)),
    }[layout]
    exchanges, anomalies = talk(*steps)
    assert summary(exchanges) == [(1, "GET", "/a", 200, 0, 3, "gap"), (2, "GET", "/a", 200, 0, 5, "complete")]
    assert anomalies == {"HTTP_bad_content_length": 1}


def test_bad_content_length_with_no_request_waiting_still_reads_to_close():
    """Text that looks like a status line inside that body is body while nothing waits for an answer."""
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 12345678901234567890\r\n\r\n" + OK5
    (ex,), anomalies = talk((ORIG, GET), (RESP, bad), ("fin", RESP))
    assert (ex.response_body_len, ex.ended) == (len(OK5), "complete")


def test_repeated_identical_content_lengths_are_one():
    (ex,), anomalies = talk(
        (ORIG, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc"), (RESP, OK5))
    assert (ex.request_body_len, ex.status) == (3, 200) and not anomalies


def test_request_transfer_encoding_not_ending_in_chunked():
    exchanges, anomalies = talk(
        (ORIG, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\nGET /b HTTP/1.1\r\n\r\n"))
    assert [(e.method, e.uri) for e in exchanges] == [("POST", "/"), ("GET", "/b")]
    assert anomalies == {"HTTP_bad_transfer_encoding": 1}


def test_chunk_data_longer_than_announced():
    exchanges, anomalies = talk(
        (ORIG, GET + GET),
        (RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n" + OK5))
    assert [(e.status, e.response_body_len, e.ended) for e in exchanges] == [
        (200, 3, "gap"), (200, 5, "complete")]
    assert anomalies == {"HTTP_chunk_missing_crlf": 1}


# -- gaps


def test_gap_inside_a_content_length_body_keeps_framing():
    exchanges, anomalies = talk(
        (ORIG, GET + GET),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10),
        ("gap", RESP, 50),
        (RESP, b"y" * 40 + OK5),
    )
    assert [(e.status, e.response_body_len, e.ended) for e in exchanges] == [
        (200, 100, "gap"), (200, 5, "complete")]
    assert not anomalies


def test_gap_inside_chunk_data_keeps_framing():
    exchanges, _ = talk(
        (ORIG, b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123"),
        ("gap", ORIG, 8),
        (ORIG, b"cdef\r\n0\r\n\r\n" + GET),
        (RESP, OK5 + OK5),
    )
    assert [(e.uri, e.request_body_len, e.ended) for e in exchanges] == [("/c", 16, "gap"), ("/a", 0, "complete")]


def test_gap_past_the_end_of_a_body_loses_the_next_answer():
    exchanges, anomalies = talk(
        (ORIG, GET + GET + GET),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"),
        ("gap", RESP, 5 + len(OK5)),
        (RESP, OK5),
    )
    assert [(e.status, e.response_body_len, e.ended) for e in exchanges] == [
        (200, 10, "gap"), (None, 0, "gap"), (200, 5, "complete")]
    assert anomalies == {"HTTP_content_gap": 1}


def test_gap_inside_a_response_head_resyncs_on_the_next_status_line():
    exchanges, anomalies = talk(
        (ORIG, GET + b"GET /b HTTP/1.1\r\n\r\n"),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Le"),
        ("gap", RESP, 30),
        (RESP, b"tail of the first body\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    )
    assert [(e.uri, e.status, e.ended) for e in exchanges] == [("/a", 200, "gap"), ("/b", 404, "complete")]
    assert anomalies == {"HTTP_content_gap": 1}


def test_gap_between_requests_keeps_answers_paired():
    exchanges, anomalies = talk(
        (ORIG, GET), ("gap", ORIG, 40), (ORIG, b"GET /c HTTP/1.1\r\n\r\n"),
        (RESP, OK5 + b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
               b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"),
    )
    assert [(e.index, e.method, e.uri, e.status, e.ended) for e in exchanges] == [
        (1, "GET", "/a", 200, "complete"), (2, None, None, 201, "gap"), (3, "GET", "/c", 202, "complete")]
    assert exchanges[1].request_start_ns is None
    assert anomalies == {"HTTP_content_gap": 1}


def test_a_request_and_its_answer_both_lost_leave_no_exchange():
    # An exchange needs a request or a response (issue 11); the next one is numbered 1.
    exchanges, anomalies = talk(("gap", ORIG, 40), ("gap", RESP, 60), (ORIG, GET), (RESP, OK5))
    assert summary(exchanges) == [(1, "GET", "/a", 200, 0, 5, "complete")]
    assert anomalies == {"HTTP_content_gap": 2}


def test_gap_in_a_chunk_size_line_resyncs():
    exchanges, anomalies = talk(
        (ORIG, GET + GET),
        (RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
        ("gap", RESP, 3),
        (RESP, b"\r\nabc\r\n0\r\n\r\n" + OK5),
    )
    assert [(e.status, e.response_body_len, e.ended) for e in exchanges] == [
        (200, 5, "gap"), (200, 5, "complete")]
    assert anomalies == {"HTTP_content_gap": 1}


def test_gap_in_a_close_delimited_body_is_counted():
    (ex,), _ = talk((ORIG, b"GET / HTTP/1.0\r\n\r\n"), (RESP, b"HTTP/1.0 200 OK\r\n\r\nab"),
                    ("gap", RESP, 1000), (RESP, b"cd"), ("fin", RESP))
    assert (ex.response_body_len, ex.ended) == (1004, "gap")


# -- shortcuts: each must give what the general path gives


def test_a_repeated_head_is_framed_by_its_own_request():
    # The three answers have the same head text, so the response reader
    # reuses its parse; the body framing still follows each request's method.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
    exchanges, anomalies = talk(
        (ORIG, GET), (RESP, answer + b"abc"),
        (ORIG, b"HEAD /a HTTP/1.1\r\nHost: example.com\r\n\r\n"), (RESP, answer),
        (ORIG, GET), (RESP, answer + b"xyz"),
    )
    assert [(e.method, e.status, e.response_body_len, e.ended) for e in exchanges] == [
        ("GET", 200, 3, "complete"), ("HEAD", 200, 0, "complete"), ("GET", 200, 3, "complete")]
    assert exchanges[0].response_headers is exchanges[2].response_headers  # one parse, shared
    assert not anomalies


def test_a_repeated_head_with_an_odd_line_is_reported_every_time():
    odd = b"GET /odd HTTP/1.1\r\nNoColon\r\nHost: h\r\n\r\n"
    exchanges, anomalies = talk((ORIG, odd), (RESP, OK5), (ORIG, odd), (RESP, OK5))
    assert [(e.uri, e.request_headers) for e in exchanges] == [("/odd", (("Host", "h"),))] * 2
    assert anomalies == {"HTTP_bad_header_line": 2}


def test_a_repeated_head_still_checks_the_version_and_the_pairing():
    old = b"GET / HTTP/1.0\r\n\r\n"
    exchanges, anomalies = talk(
        (ORIG, GET), (ORIG, old), (ORIG, GET), (RESP, OK5 + OK5 + OK5 + OK5))
    assert [(e.index, e.version, e.status) for e in exchanges] == [
        (1, "1.1", 200), (2, "1.0", 200), (3, "1.1", 200), (4, "1.1", 200)]
    assert anomalies == {"HTTP_version_mismatch": 2, "unmatched_HTTP_reply": 1}


@pytest.mark.parametrize("head", [
    b"GET /a HTTP/1.1\r\nA: b\nC: d\r\n\r\n",  # a bare LF inside, CRLF CRLF at the end
    b"GET /a HTTP/1.1\nA: b\nC: d\n\r\n\r\n",  # LF CRLF ends it before CRLF CRLF
])
def test_a_head_ending_in_crlf_crlf_with_bare_lfs_before(head):
    exchanges, anomalies = talk((ORIG, head + GET), (RESP, OK5 + OK5))
    assert [(e.uri, e.request_headers, e.status) for e in exchanges] == [
        ("/a", (("A", "b"), ("C", "d")), 200), ("/a", (("Host", "example.com"),), 200)]
    assert anomalies == {"line_terminated_with_single_LF": 1}


def test_line_memos_stay_bounded():
    from alb_pcap.wire import http

    conn = feed(*[(ORIG, b"GET /%d HTTP/1.1\r\nX-Id: %d\r\nX-Long: %s\r\n\r\n"
                   % (i, i, b"v" * (http._MEMO_LINE_MAX + i % 2))) for i in range(http._MEMO_SIZE + 10)])
    assert not conn.anomalies.counts["HTTP_internal_error"]
    for memo in (http._REQUEST_LINES, http._STATUS_LINES, http._FIELD_LINES):
        assert len(memo) <= http._MEMO_SIZE
        assert all(len(line) <= http._MEMO_LINE_MAX for line in memo)


def test_exchanges_is_empty_until_one_is_finished():
    conn = feed((ORIG, GET))
    assert not conn.exchanges()
    conn.data(RESP, OK5, 2000, 2)
    assert [e.status for e in conn.exchanges()] == [200] and not conn.exchanges()


# -- properties

KEEPALIVE = [
    (ORIG, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
    (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (ORIG, b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\r\n"),
    (RESP, b"HTTP/1.1 204 No Content\r\n\r\n"),
    (ORIG, b"GET /c HTTP/1.0\r\n\r\n"),
    (RESP, b"HTTP/1.0 200 OK\r\nServer: old\r\n  folded\r\n\r\nuntil the close"),
    ("fin", RESP),
]
CHUNKED = [
    (ORIG, b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (RESP, b"HTTP/1.1 100 Continue\r\n\r\n"),
    (ORIG, b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nChecksum: 1\r\n\r\n"),
    (RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\n" + bytes(range(97, 123))
           + b"\r\n0\r\n\r\n"),
    (ORIG, b"GET /x HTTP/1.1\nHost: bare-lf\n\n"),
    (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
]
PIPELINED = [
    (ORIG, b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nCONNECT h:443 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\n\r\n"),
    (RESP, (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")),
    (ORIG, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x82\x00\x00"),
    (RESP, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi"),
]
HTTP09 = [(ORIG, b"GET /old\r\n"), (RESP, b"HTTP is old <html>\n"), ("fin", RESP)]
CONVERSATIONS = [KEEPALIVE, CHUNKED, PIPELINED, HTTP09]


def replay_split(conversation, cuts) -> tuple[list[Exchange], Counter[str]]:
    """Feed each step's bytes cut at ``cuts`` (offsets into that step), same frame for every piece."""
    conn = HttpConnection(7, AnomalyLog())
    for frame, step in enumerate(conversation, 1):
        if isinstance(step[0], str):
            conn.end(step[1], step[0], frame * 1000, frame)
            continue
        direction, data = step
        edges = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
        for lo, hi in pairwise(edges):
            conn.data(direction, data[lo:hi], frame * 1000, frame)
    conn.end(ORIG, "eof", 0, 0)
    conn.end(RESP, "eof", 0, 0)
    return list(conn.exchanges()), conn.anomalies.counts


def test_corpus_parses_as_intended():
    expected = [
        [(1, "GET", "/a", 200, 0, 5, "complete"), (2, "POST", "/b", 204, 11, 0, "complete"),
         (3, "GET", "/c", 200, 0, 15, "complete")],
        [(1, "POST", "/up", 200, 9, 26, "complete"), (2, "GET", "/x", 200, 0, 3, "complete")],
        [(1, "GET", "/1", 200, 0, 3, "complete"), (2, "HEAD", "/2", 200, 0, 0, "complete"),
         (3, "CONNECT", "h:443", 403, 0, 2, "complete"), (4, "GET", "/4", 200, 0, 0, "complete"),
         (5, "GET", "/ws", 101, 0, 0, "tunnel")],
        [(1, "GET", "/old", None, 0, 19, "complete")],
    ]
    assert [summary(replay_split(c, [])[0]) for c in CONVERSATIONS] == expected


@given(st.data())
def test_splitting_the_stream_anywhere_changes_nothing(data):
    conversation = data.draw(st.sampled_from(CONVERSATIONS))
    longest = max(len(step[1]) for step in conversation if isinstance(step[1], bytes))
    cuts = data.draw(st.sets(st.integers(1, longest - 1), max_size=40))
    assert replay_split(conversation, cuts) == replay_split(conversation, [])


def test_byte_by_byte_equals_whole():
    for conversation in CONVERSATIONS:
        every = range(1, max(len(s[1]) for s in conversation if isinstance(s[1], bytes)))
        assert replay_split(conversation, every) == replay_split(conversation, [])


def _assert_sane(conn: HttpConnection) -> None:
    conn.end(ORIG, "eof", 0, 0)
    conn.end(RESP, "eof", 0, 0)
    exchanges = list(conn.exchanges())
    assert conn.pending() == []
    assert [e.index for e in exchanges] == list(range(1, len(exchanges) + 1))
    assert all(e.ended in ENDED and e.request_body_len >= 0 and e.response_body_len >= 0
               for e in exchanges)
    assert conn.anomalies.counts["HTTP_internal_error"] == 0


@given(st.sampled_from([ORIG, RESP]), st.binary())
@example(RESP, b"HTTP/1.1 200 OK\r\n\r\n")
@example(ORIG, b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n")
@example(ORIG, b"G\n\r\n\r\n \t")
def test_random_bytes_only_give_anomalies_and_exchanges(direction, blob):
    conn = HttpConnection(1, AnomalyLog())
    conn.data(direction, blob, 1, 1)
    _assert_sane(conn)


FRAGMENTS = [data for c in CONVERSATIONS for _, data in (s for s in c if isinstance(s[1], bytes))] + [
    b"\r\n", b"0\r\n\r\n", b"HTTP/1.1 ", b"GET ", b" HTTP/1.1\r\n", b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n",
]
OPS = st.one_of(
    st.tuples(st.sampled_from([ORIG, RESP]), st.sampled_from(FRAGMENTS) | st.binary(max_size=64)),
    st.tuples(st.just("gap"), st.sampled_from([ORIG, RESP]), st.integers(1, 2000)),
    st.tuples(st.sampled_from(["fin", "rst", "eof"]), st.sampled_from([ORIG, RESP])),
)


@given(st.lists(OPS, max_size=30))
def test_random_event_sequences_never_raise(ops):
    _assert_sane(feed(*ops))


# -- Zeek's traces, replayed through a minimal TCP reader

SHARED = shared_dir()  # $ALB_PCAP_SHARED, else ../shared beside the checkout
ZEEK = SHARED / "peer" / "zeek" if SHARED else None
ZEEK_TRACES = [
    "http-get-basic", "http-pipelining", "http-100-continue", "http-desync-5", "http-smuggle",
    "http261-chunk-2pow64", "http261-cl-negative", "http261-te-cl-desync", "http-cl-overflow",
    "http-09", "http-no-version", "http-11-then-cruft",
]
# trace -> (why we differ from Zeek, [(Zeek's row, ours instead)]); None: no such row.
# Rows are (trans_depth, method, uri, status, request_body_len, response_body_len).
FORMMAIL = ("/cgi-bin/formmail.pl?email=f2@aol.com&subject=www-nrg.ee/cgi-bin/formmail.pl"
            "&recipient=unknownz@buy2save.com&msg=w00t")
PHANTOM = (2, None, None, None, 0, 0)
DELIBERATE = {
    "http-pipelining": (
        ("Zeek counts bodies after undoing Content-Encoding: gzip; we count the bytes on the wire "
         "(chunk framing removed), which is what timing and truncation analysis needs"),
        [((1, "GET", "/style/enhanced.css", 200, 0, 2675), (1, "GET", "/style/enhanced.css", 200, 0, 946)),
         ((2, "GET", "/script/urchin.js", 200, 0, 21421), (2, "GET", "/script/urchin.js", 200, 0, 6716))],
    ),
    "http-smuggle": (
        ("request 1 has Content-Length: 80 and Content-Encoding: gzip; Zeek logs the 57 bytes it "
         "inflated, we the 80 on the wire"),
        [((1, "POST", "/first", 200, 57, 35), (1, "POST", "/first", 200, 80, 35))],
    ),
    "http-09": (
        ("an HTTP/0.9 answer has no status line: status None where Zeek logs 0, and no empty "
         "transaction after it (Zeek's trans_depth 2 rows)"),
        [((1, "GET", "/zeek.html", 0, 0, 51), (1, "GET", "/zeek.html", None, 0, 51)),
         ((1, "POST", "/zeek.html", 0, 0, 11), (1, "POST", "/zeek.html", None, 0, 11)),
         (PHANTOM, None), (PHANTOM, None)],
    ),
    "http-no-version": (
        "as http-09: status None instead of 0, no phantom second transaction",
        [((1, "GET", FORMMAIL, 0, 0, 323), (1, "GET", FORMMAIL, None, 0, 323)), (PHANTOM, None)],
    ),
    "http-11-then-cruft": (
        ("after the garbled 'T / HTTP' requests Zeek stops parsing; we resync and keep the "
         "server's 400 as a reply without request, the evidence a proxy diagnosis needs"),
        [(None, (2, None, None, 400, 0, 150))],
    ),
}


def replay_trace(trace: Path) -> tuple[list[Exchange], Counter[str]]:
    """TCP payloads of a simple trace, in capture order, one HttpConnection per connection.

    Retransmitted bytes are trimmed; anything fancier (holes, reordering) is the
    TCP stage's job and these traces do not need it.
    """
    from scapy.all import IP, TCP, IPv6, PcapReader

    anomalies = AnomalyLog()
    conns: dict[tuple, tuple[HttpConnection, list]] = {}
    with PcapReader(str(trace)) as packets:
        for frame, pkt in enumerate(packets, 1):
            if TCP not in pkt:
                continue
            ip, tcp = (pkt[IP] if IP in pkt else pkt[IPv6]), pkt[TCP]
            key = ((ip.src, tcp.sport), (ip.dst, tcp.dport))
            if key[::-1] in conns:
                key = key[::-1]
            elif key not in conns:
                # The client sent the SYN; without one, it is the side on the higher port.
                if tcp.flags & 0x12 == 0x12 or (not tcp.flags & 0x02 and tcp.sport < tcp.dport):
                    key = key[::-1]
                conns[key] = (HttpConnection(len(conns) + 1, anomalies), [None, None])
            http, expect = conns[key]
            d = ORIG if key[0] == (ip.src, tcp.sport) else RESP
            ts = int(pkt.time * 1_000_000_000)
            size = (ip.len - 4 * ip.ihl if IP in pkt else ip.plen) - 4 * tcp.dataofs
            payload = bytes(tcp)[4 * tcp.dataofs:][:size]  # no Ethernet padding
            seq = tcp.seq + (1 if tcp.flags & 0x02 else 0)
            if expect[d] is None:
                expect[d] = seq
            seen = (expect[d] - seq) % 2**32
            if seen < len(payload):
                http.data(d, payload[seen:], ts, frame)
                expect[d] = (seq + len(payload)) % 2**32
            if tcp.flags & 0x04:
                http.end(ORIG, "rst", ts, frame)
                http.end(RESP, "rst", ts, frame)
            elif tcp.flags & 0x01:
                http.end(d, "fin", ts, frame)
    exchanges = []
    for http, _ in conns.values():
        http.end(ORIG, "eof", 0, 0)
        http.end(RESP, "eof", 0, 0)
        exchanges += http.exchanges()
    return exchanges, anomalies.counts


@pytest.mark.skipif(ZEEK is None, reason="../shared/peer/zeek not found (set ALB_PCAP_SHARED)")
@pytest.mark.parametrize("name", ZEEK_TRACES)
def test_zeek_traces_give_the_same_transactions(name):
    spec = json.loads((ZEEK / name / "expected.json").read_text())
    exchanges, anomalies = replay_trace(ZEEK / name / spec["files"]["trace"])
    with_lengths = "request_body_len" in spec["http"]["fields"]

    def row(index, method, uri, status, req, resp):
        return (index, method, uri, status) + ((req, resp) if with_lengths else ())

    expected = Counter(row(r["trans_depth"], r["method"], r["uri"], r.get("status_code"),
                           r.get("request_body_len"), r.get("response_body_len"))
                       for r in spec["http"]["transactions_list"])
    why, differences = DELIBERATE.get(name, ("", []))
    for theirs, ours in differences:
        if theirs is not None:
            assert expected[row(*theirs)], f"{name}: Zeek no longer logs {theirs}"
            expected[row(*theirs)] -= 1
        if ours is not None:
            expected[row(*ours)] += 1
    ours = Counter(row(e.index, e.method, e.uri, e.status, e.request_body_len, e.response_body_len)
                   for e in exchanges)
    assert ours == +expected, why
    assert anomalies["HTTP_internal_error"] == 0


# -- throughput (python -m tests.test_http): a keep-alive stream in 1460-byte segments

if __name__ == "__main__":
    request = b"GET /api/items?id=42 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: b\r\nAccept: */*\r\n\r\n"
    for body in (0, 1000, 100_000):
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % body
        stream = [(ORIG, request)] + [(RESP, s) for s in (response + b"x" * body,)]
        segments = [(d, s[i:i + 1460]) for d, s in stream for i in range(0, len(s), 1460)]
        rounds = max(100, 3_000_000 // (len(request) + len(response) + body))
        best = 0.0
        for _ in range(5):
            conn = HttpConnection(1, AnomalyLog())
            start = time.perf_counter()
            for _ in range(rounds):
                for direction, segment in segments:
                    conn.data(direction, segment, 0, 0)
                for _ in conn.exchanges():
                    pass
            best = max(best, rounds / (time.perf_counter() - start))
        size = sum(len(s) for _, s in segments)
        print(f"body {body:>6} B: {best * size / 1e6:7.1f} MB/s, "
              f"{best * len(segments) / 1e3:6.0f}k segments/s, {best / 1e3:5.1f}k exchanges/s")
