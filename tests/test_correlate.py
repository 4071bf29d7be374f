from __future__ import annotations

from alb_pcap.model import ORIG, RESP, AnomalyLog
from alb_pcap.wire.http import HttpConnection
from alb_pcap.diagnosis.correlate import Correlator, Cut
from alb_pcap.diagnosis.refs import SEC, ExchangeRef, host_of, ref_of, split_flow
from alb_pcap.diagnosis.roles import RoleFinder, Roles

from .diag_builders import (
    CLIENT_FLOW,
    TARGET_FLOW,
    back_exchange,
    close,
    make_exchange,
    ns,
)

OTHER_CLIENT_FLOW = "198.18.0.11:40001->198.18.1.10:80"
ROOT = "1-67a1b2c3-0123456789abcdef01234567"
REQUEST_ID = "7f3a9c1e-55aa-4b1e-9d0c-2a1b3c4d5e6f"


def correlator(**kw) -> Correlator:
    return Correlator(Roles(**kw))


def diagnosed(*records: tuple) -> Correlator:
    """As Diagnosis does: roles are looked for in every exchange before any is paired."""
    c = correlator()
    finder = RoleFinder(c.roles)
    refs = [ref_of(ex, flow) for ex, flow in records]
    for ref in refs:
        finder.observe(ref)
    for ref in refs:
        c.add(ref)
    return c


def test_flow_parts_ipv4_and_ipv6():
    assert split_flow("1.2.3.4:5->6.7.8.9:80") == ("1.2.3.4:5", "6.7.8.9:80")
    assert host_of("[2001:db8::1]:80") == "2001:db8::1"
    assert host_of("1.2.3.4:80") == "1.2.3.4"


def test_ref_reads_forwarding_headers():
    ref = ref_of(back_exchange(client="198.18.0.10:1", trace=ROOT), TARGET_FLOW)
    assert ref.forwarded_for == "198.18.0.10"
    assert ref.forwarded_port == 80
    assert ref.request_ids == (("x-amzn-trace-id", ROOT),)  # Root= only: the ALB adds Self=


def test_ref_is_a_whole_exchange_ref():
    """ref_of builds the tuple without the NamedTuple's constructor, which would have checked the field count."""
    ref = ref_of(back_exchange(client="198.18.0.10:1", trace=ROOT), TARGET_FLOW)
    assert type(ref) is ExchangeRef and len(ref) == len(ExchangeRef._fields)
    assert ref._asdict()["key"] == (ref.conn_id, ref.index)  # the last field, in its place


def test_ref_xff_last_hop_and_close():
    ex = make_exchange(headers={"X-Forwarded-For": "10.0.0.1, 198.18.0.10", "Connection": "close"})
    ref = ref_of(ex, TARGET_FLOW)
    assert ref.forwarded_for == "198.18.0.10"
    assert ref.request_close


def test_http10_without_keepalive_asks_close():
    """RFC 9112 §9.3, on versions as the HTTP parser gives them (it once compared with "HTTP/1.0",
    which the parser never gives, so ab's and old clients' HTTP/1.0 closes looked unasked for)."""
    conn = HttpConnection(1, AnomalyLog(), CLIENT_FLOW)
    conn.data(ORIG, b"GET /a HTTP/1.0\r\nHost: x\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1000, 1)
    conn.data(RESP, b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n" * 2, 2000, 2)
    first, second = (ref_of(ex, CLIENT_FLOW) for ex in conn.exchanges())
    assert first.request_close and not second.request_close
    assert not ref_of(make_exchange(), CLIENT_FLOW).request_close


def test_side_from_xff_before_any_pair():
    roles = Roles()
    assert roles.side(ref_of(back_exchange(), TARGET_FLOW)) == "back"
    assert roles.side(ref_of(make_exchange(), CLIENT_FLOW)) == "front"


def test_configured_proxy_and_listener_override():
    roles = Roles(proxies=("198.18.2.10",), listeners=(80,))
    assert roles.conn_side("198.18.2.10:5", "198.18.3.11:8080") == "back"
    assert roles.conn_side("198.18.0.10:5", "198.18.1.10:80") == "front"


def test_back_first_then_front_pairs_and_learns_roles():
    c = correlator()
    c.add(ref_of(back_exchange(conn_id=2, start=0.001, status=None, ended="rst"), TARGET_FLOW))
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, status=502), CLIENT_FLOW))
    result = c.finish()
    (tx,) = result.transactions
    assert tx.front.exchange.status == 502 and len(tx.backs) == 1
    assert tx.paired_by == "x-forwarded-for"
    (proxy,) = result.proxies
    assert proxy.listeners == ("198.18.1.10:80",) and proxy.back_addresses == ("198.18.2.10",)
    assert proxy.targets == ("198.18.3.11:8080",)


def test_front_first_then_back_pairs():
    c = correlator()
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, status=504, duration=60), CLIENT_FLOW))
    c.add(ref_of(back_exchange(conn_id=2, start=0.001, status=None, ended="fin"), TARGET_FLOW))
    (tx,) = c.finish().transactions
    assert [b.exchange.conn_id for b in tx.backs] == [2]


def test_request_id_pairs_even_when_uri_is_rewritten():
    c = correlator()
    front = make_exchange(conn_id=1, status=502, headers={"X-Request-Id": REQUEST_ID})
    back = make_exchange(conn_id=2, uri="/rewritten", start=0.001, status=None, ended="rst",
                         headers={"X-Request-Id": REQUEST_ID, "X-Forwarded-For": "198.18.0.10"})
    c.add(ref_of(back, TARGET_FLOW))
    c.add(ref_of(front, CLIENT_FLOW))
    (tx,) = c.finish().transactions
    assert tx.paired_by == "header x-request-id" and tx.backs


def test_retry_gives_one_front_two_backs():
    # nginx: the reused connection failed, the request went again on another one
    c = correlator()
    c.add(ref_of(back_exchange(conn_id=2, start=0.001, status=None, ended="rst"), TARGET_FLOW))
    c.add(ref_of(back_exchange(conn_id=3, start=0.003, duration=0.005), "198.18.2.10:50001->198.18.3.11:8080"))
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, duration=0.01), CLIENT_FLOW))
    result = c.finish()
    (tx,) = result.transactions
    assert [b.exchange.conn_id for b in tx.backs] == [2, 3]
    assert result.counts.retried == 1


def test_causality_rejects_back_request_after_front_response():
    c = correlator()
    c.add(ref_of(back_exchange(conn_id=2, start=0.5), TARGET_FLOW))
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, duration=0.1), CLIENT_FLOW))
    counts = c.finish().counts
    assert counts.paired == 0 and counts.unpaired_front == 1 and counts.unpaired_back == 1


def test_same_client_same_uri_overlapping_pairs_by_time():
    c = correlator()
    c.add(ref_of(back_exchange(conn_id=3, start=0.001, duration=0.05), TARGET_FLOW))
    c.add(ref_of(back_exchange(conn_id=4, start=0.021, duration=0.05), "198.18.2.10:50001->198.18.3.11:8080"))
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, duration=0.06), CLIENT_FLOW))
    c.add(ref_of(make_exchange(conn_id=2, start=0.02, duration=0.06), "198.18.0.10:40002->198.18.1.10:80"))
    counts = c.finish().counts
    assert counts.paired == 2 and counts.unpaired_back == 0


def test_healthy_pairs_are_counted_not_kept():
    c = correlator()
    for i in range(50):
        c.add(ref_of(back_exchange(conn_id=1000 + i, start=i + 0.001), TARGET_FLOW))
        c.add(ref_of(make_exchange(conn_id=i, start=float(i)), CLIENT_FLOW))
    result = c.finish()
    assert result.transactions == ()
    assert result.counts.paired == 50 and result.counts.healthy_dropped == 50


def test_memory_is_bounded_by_the_window():
    # a client-side-only capture: nothing ever pairs, yet little is held at any time; a healthy
    # exchange waits only until its connection's next exchange or close (here: each closes)
    c = correlator()
    for i in range(3000):
        c.add(ref_of(make_exchange(conn_id=i, start=i * 0.1), CLIENT_FLOW))
        c.advance(ns(i * 0.1))
        c.release(i)
    assert len(c._queue) < 200 and len(c._where) < 200
    assert sum(len(q) for q in c._fronts.values()) < 300
    assert c.finish().counts.unpaired_front == 3000


def test_healthy_exchanges_on_one_connection_settle_each_other():
    c = correlator()
    for i in range(1, 3001):
        c.add(ref_of(make_exchange(conn_id=1, index=i, start=i * 0.01), CLIENT_FLOW))
        c.advance(ns(i * 0.01))
    assert len(c._settling) == 1 and len(c._where) < 10
    assert c.finish().counts.transactions == 3000


def test_cut_marks_an_exchange_interesting():
    # HAProxy without abortonclose: the client left, the response came anyway
    c = correlator()
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, duration=3.0), CLIENT_FLOW))
    c.cut((1, 1), Cut("opener", close(0, 1.0), None, 10 * SEC))
    (tx,) = c.finish().transactions
    assert tx.front.cut.by == "opener"


def test_unpaired_failing_back_is_kept():
    c = correlator()
    c.add(ref_of(back_exchange(conn_id=2, status=None, ended="fin"), TARGET_FLOW))
    (tx,) = c.finish().transactions
    assert tx.front is None and tx.backs[0].exchange.conn_id == 2


def test_other_clients_do_not_pair():
    c = correlator()
    c.add(ref_of(back_exchange(conn_id=2, start=0.001), TARGET_FLOW))
    c.add(ref_of(make_exchange(conn_id=1, start=0.0), OTHER_CLIENT_FLOW))
    assert c.finish().counts.paired == 0


# -- without forwarding headers ----------------------------------------------------------------

UA = {"Host": "shop.example", "User-Agent": "curl/8.1", "Accept": "*/*", "Cookie": "s=42"}


def test_uri_tail_survives_a_prefix_rewrite():
    front = ref_of(make_exchange(uri="/api/v1/users?id=3", headers=UA), CLIENT_FLOW)
    back = ref_of(make_exchange(uri="/users?id=3", headers={k.lower(): v for k, v in UA.items()}), TARGET_FLOW)
    assert front.content == back.content
    assert back.fingerprint == front.fingerprint  # names lower-cased (HAProxy): same sketch


def test_learned_request_id_under_any_name():
    headers = dict(UA, **{"X-Shop-Trace": REQUEST_ID})
    c = diagnosed((make_exchange(conn_id=2, start=0.001, status=None, ended="rst", headers=headers), TARGET_FLOW),
                  (make_exchange(conn_id=1, start=0.0, status=502, headers=headers), CLIENT_FLOW))
    (tx,) = c.finish().transactions
    assert tx.paired_by == "header x-shop-trace"


def test_a_repeated_token_is_not_a_request_id():
    # a static API key has an id's shape but repeats: pairing must not rely on it
    c = correlator()
    key = {"X-Api-Key": "k9f83hf8a7sd6f5a4s3d2f1"}
    c.add(ref_of(make_exchange(conn_id=1, start=0.0, status=None, ended="fin", headers=key), CLIENT_FLOW))
    c.add(ref_of(make_exchange(conn_id=3, start=1.0, status=None, ended="fin", headers=key), OTHER_CLIENT_FLOW))
    assert "x-api-key" in c._shared_names


def test_content_pairs_without_any_forwarding_header():
    # one sighting is enough when the proxy opens its target connection from its listener's address
    same_host = "198.18.1.10:50000->198.18.3.11:8080"
    c = diagnosed((make_exchange(conn_id=2, uri="/cart", start=0.001, status=None, ended="rst",
                                 headers={k.lower(): v for k, v in UA.items()}), same_host),
                  (make_exchange(conn_id=1, uri="/shop/cart", start=0.0, status=502, headers=UA), CLIENT_FLOW))
    (tx,) = c.finish().transactions
    assert tx.paired_by == "content" and tx.backs[0].exchange.conn_id == 2


def test_content_pairing_needs_the_clients_headers():
    c = diagnosed((make_exchange(conn_id=2, start=0.001, status=None, ended="rst",
                                 headers={"User-Agent": "python-requests/2.31", "Accept": "text/html"}), TARGET_FLOW),
                  (make_exchange(conn_id=1, start=0.0, status=502, headers=UA), CLIENT_FLOW))
    assert c.finish().counts.paired == 0


def test_identical_concurrent_requests_pair_one_to_one():
    # two clients, the same request at nearly the same time, multiplexed onto two target connections
    other_back = "198.18.2.10:50001->198.18.3.11:8080"
    c = diagnosed((make_exchange(conn_id=3, start=0.0011, duration=0.02, headers=UA), TARGET_FLOW),
                  (make_exchange(conn_id=4, start=0.0021, duration=0.02, headers=UA), other_back),
                  (make_exchange(conn_id=1, start=0.0, duration=0.03, headers=UA), CLIENT_FLOW),
                  (make_exchange(conn_id=2, start=0.001, duration=0.03, headers=UA), OTHER_CLIENT_FLOW))
    result = c.finish()
    assert result.counts.paired == 2 and result.counts.unpaired_back == 0 and result.counts.unpaired_front == 0
    assert "content (ambiguous)" in dict(result.proxies[0].paired_by)  # the same request twice: by time


def test_roles_found_from_behaviour_alone():
    roles = Roles()
    finder = RoleFinder(roles)
    for i in range(2):  # a proxy with a second address needs two sightings
        finder.observe(ref_of(make_exchange(conn_id=10 + i, start=i, duration=0.03, headers=UA), CLIENT_FLOW))
        finder.observe(ref_of(make_exchange(conn_id=20 + i, start=i + 0.001, duration=0.02, headers=UA),
                              TARGET_FLOW))
    assert roles.conn_side("198.18.2.10:50000", "198.18.3.11:8080") == "back"
    assert roles.conn_side("198.18.0.10:40000", "198.18.1.10:80") == "front"


def test_two_clients_of_one_server_are_not_a_proxy():
    roles = Roles()
    finder = RoleFinder(roles)
    for i in range(5):
        finder.observe(ref_of(make_exchange(conn_id=10 + i, start=i, duration=0.03, headers=UA), CLIENT_FLOW))
        finder.observe(ref_of(make_exchange(conn_id=20 + i, start=i + 0.001, duration=0.02, headers=UA),
                              OTHER_CLIENT_FLOW))
    assert roles.proxies() == ()


def test_same_target_allows_a_prefix_stripped_or_added_but_not_another_path():
    from alb_pcap.diagnosis.refs import same_target

    assert same_target("/api/v1/users?id=3", "/users?id=3") and same_target("/users", "/v1/users")
    assert same_target("http://shop.example/api/cart", "/cart") and same_target("/api/", "/")
    assert not same_target("/fin/0.5", "/rst/0.5")  # the same last segment is not the same request
    assert not same_target("/users?id=3", "/users?id=4")
