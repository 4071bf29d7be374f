"""The verdict: one per proxy when a capture holds several."""

from __future__ import annotations

from alb_pcap.diagnosis.diagnose import Diagnosis
from alb_pcap.model import ORIG, RESP

from .diag_builders import back_exchange, close, make_connection, make_exchange

A_CLIENT, A_TARGET = "198.18.0.10:40000->198.18.1.10:80", "198.18.2.10:50000->198.18.3.11:8080"
B_CLIENT, B_TARGET = "198.18.0.20:40000->198.18.1.20:80", "198.18.2.20:50000->198.18.3.12:8080"


def test_two_proxies_get_a_verdict_each():
    sink = Diagnosis()
    # proxy A: the target resets a request after 0.5 s -> 502
    sink.exchange(back_exchange(conn_id=2, start=0.001, status=None, ended="rst"), A_TARGET)
    sink.exchange(make_exchange(conn_id=1, start=0.0, duration=0.502, status=502), A_CLIENT)
    sink.connection(make_connection(2, A_TARGET, start=-0.01, first=close(RESP, 0.5, "rst")))
    sink.connection(make_connection(1, A_CLIENT, start=-0.01, first=close(ORIG, 0.6)))
    # proxy B: it gives up on a silent target after 10 s -> 504
    sink.exchange(back_exchange(client="198.18.0.20:40000", conn_id=4, start=5.001, status=None, ended="fin"),
                  B_TARGET)
    sink.exchange(make_exchange(conn_id=3, start=5.0, duration=10.002, status=504), B_CLIENT)
    sink.connection(make_connection(4, B_TARGET, start=4.99, first=close(ORIG, 15.0)))
    sink.connection(make_connection(3, B_CLIENT, start=4.99, first=close(ORIG, 15.1)))
    result = sink.finish()
    assert sorted(p.name for p in result.proxies) == ["198.18.1.10:80", "198.18.1.20:80"]
    a = [line for line in result.verdict if line.startswith("proxy 198.18.1.10:80:")]
    b = [line for line in result.verdict if line.startswith("proxy 198.18.1.20:80:")]
    assert len(a) == 1 and "dropped by the target" in a[0] and "504" not in a[0]
    assert len(b) == 1 and "timed out" in b[0]
