"""Builders for diagnosis tests: Exchange and Connection records with keyword defaults.

Times are seconds (floats) relative to T0, for readability; the builders turn them into ns.
"""

from __future__ import annotations

import ipaddress

from alb_pcap.model import ORIG, Close, Connection, Exchange, Probe

T0 = 1_700_000_000
SEC = 1_000_000_000

CLIENT = "198.18.0.10:40000"
FRONT = "198.18.1.10:80"
BACK = "198.18.2.10:50000"
TARGET = "198.18.3.11:8080"
CLIENT_FLOW = f"{CLIENT}->{FRONT}"
TARGET_FLOW = f"{BACK}->{TARGET}"


def ns(t: float | None) -> int | None:
    return None if t is None else T0 * SEC + round(t * SEC)


def make_exchange(conn_id: int = 1, index: int = 1, method: str = "GET", uri: str = "/ok",
                  start: float = 0.0, duration: float = 0.01, status: int | None = 200,
                  ended: str = "complete", headers: dict | None = None,
                  response_headers: dict | None = None, version: str = "1.1",
                  frame: int = 10) -> Exchange:
    """A request at ``start``; a response ``duration`` later unless ``status`` is None."""
    answered = status is not None
    return Exchange(
        conn_id=conn_id, index=index, method=method, uri=uri, version=version,
        request_headers=tuple((headers or {"Host": "example"}).items()),
        status=status, reason=None, response_headers=tuple((response_headers or {}).items()),
        interim=(), request_body_len=0, response_body_len=3 if answered else 0,
        request_start_ns=ns(start), request_end_ns=ns(start),
        response_start_ns=ns(start + duration) if answered else None,
        response_end_ns=ns(start + duration) if answered and ended == "complete" else None,
        request_frame=frame, response_frame=frame + 2 if answered else None, ended=ended,
    )


def back_exchange(client: str = CLIENT, trace: str | None = None, **kw) -> Exchange:
    """What the proxy sends: X-Forwarded-For naming the client, the listener port."""
    headers = {"Host": "example", "X-Forwarded-For": client.rpartition(":")[0], "X-Forwarded-Port": "80"}
    if trace:
        headers["X-Amzn-Trace-Id"] = f"Self=1-abc;Root={trace}"
    return make_exchange(headers=headers, **kw)


def close(by: int, at: float, how: str = "fin", frame: int = 99, state: str = "established") -> Close:
    return Close(by, how, ns(at), frame, state)


def _endpoint(text: str) -> tuple[bytes, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")).packed, int(port)


def make_connection(conn_id: int = 1, flow: str = CLIENT_FLOW, start: float = -0.01, end: float | None = None,
                    first: Close | None = None, rst: Close | None = None,
                    probes: tuple[float, ...] = (), probe_by: int = ORIG) -> Connection:
    orig, oport = _endpoint(flow.split("->")[0])
    resp, rport = _endpoint(flow.split("->")[1])
    last = end if end is not None else (first.ts_ns / SEC - T0 if first else start + 1)
    fins = (first,) if first and first.how == "fin" else ()
    return Connection(
        id=conn_id, orig=orig, orig_port=oport, resp=resp, resp_port=rport,
        start_ns=ns(start), end_ns=ns(last), history="ShADadFf", conn_state="SF", syn_seen=True,
        orig_bytes=100, resp_bytes=100, missed_bytes=0, orig_pkts=5, resp_pkts=5,
        first_close=first, fins=fins, rst=rst if rst is not None else (first if first and first.how == "rst" else None),
        probes=tuple(Probe(probe_by, ns(t), 50 + i) for i, t in enumerate(probes)),
        probe_counts=(len(probes), 0) if probe_by == ORIG else (0, len(probes)),
        zero_windows=(0, 0), retransmits=(0, 0), gaps=(0, 0), vni=None,
    )
